"""The rollback floor comes from the ledger's policy.activated history, not the local file
(issue #12 item 5). A real SQLite ledger; bundles are stand-ins (no OPA needed here;
tests/integration/test_rollback_floor.py runs the same through a real Stack and OPA)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from l7.errors import BundleError
from l7.policy import BuiltBundle, activate, read_activations
from l7.policy.activation import activate_recorded, activation_stream, ledger_activations
from l7.policy.signing import Signer
from ledger import Confirmation, EventType, NewEvent, SqlLedger, open_ledger

ENV = "production"


def _fake(revision: str) -> BuiltBundle:
    return BuiltBundle(
        env=ENV,
        revision=revision * 64,
        path=Path("/nonexistent"),
        bundle_sha256="f" * 64,
        signer=Signer(kid="l7b-aaaaaaaaaaaaaaaa", public_key_pem=""),
        digest="e" * 64,
    )


@pytest.fixture
def led(tmp_path: Path) -> Iterator[SqlLedger]:
    with open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        yield ledger


def _activated(led: SqlLedger) -> list[dict[str, object]]:
    return [dict(e.payload) for e in led.get_stream(activation_stream(ENV))]


def test_deleting_the_activations_file_does_not_allow_a_rollback(
    led: SqlLedger, tmp_path: Path
) -> None:
    a, b = _fake("a"), _fake("b")
    assert activate_recorded(ENV, a, led, work_dir=tmp_path) is not None
    assert activate_recorded(ENV, b, led, work_dir=tmp_path) is not None
    cache = tmp_path / "activations" / f"{ENV}.json"
    assert [x.revision for x in read_activations(ENV, tmp_path)] == [a.revision, b.revision]

    cache.unlink()  # the attack: the old floor was this file
    with pytest.raises(BundleError, match=r"is a rollback.*newest revision ever activated is b"):
        activate_recorded(ENV, a, led, work_dir=tmp_path)
    # The file-only check, for contrast, is fooled by the deletion.
    cache.unlink()
    assert activate(ENV, a, work_dir=tmp_path) is not None

    cache.unlink()
    rec = activate_recorded(ENV, a, led, work_dir=tmp_path, allow_rollback=True)
    assert rec is not None
    assert (rec["rollback"], rec["previous_revision"]) == (True, b.revision)
    recorded = _activated(led)
    assert [(p["revision"], p["rollback"], p["previous_revision"]) for p in recorded] == [
        (a.revision, False, None),
        (b.revision, False, a.revision),
        (a.revision, True, b.revision),
    ]
    # The cache was rebuilt from the ledger.
    assert [x.revision for x in read_activations(ENV, tmp_path)] == [
        a.revision,
        b.revision,
        a.revision,
    ]


def test_a_cache_that_disagrees_is_logged_and_the_ledger_wins(
    led: SqlLedger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = _fake("a"), _fake("b"), _fake("c")
    activate_recorded(ENV, a, led, work_dir=tmp_path)
    activate_recorded(ENV, b, led, work_dir=tmp_path)
    # An edited cache that claims only a was ever active, then c on top of it.
    cache = tmp_path / "activations" / f"{ENV}.json"
    cache.unlink()
    activate(ENV, a, work_dir=tmp_path)
    with (
        caplog.at_level(logging.WARNING, logger="l7.policy.activation"),
        pytest.raises(BundleError, match="rollback"),
    ):
        activate_recorded(ENV, a, led, work_dir=tmp_path)
    assert "disagrees with the ledger" in caplog.text
    assert "the cache has 1 activations" in caplog.text and "the ledger 2" in caplog.text

    cache.write_text("{not json")  # damaged: logged and rebuilt, never the authority
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="l7.policy.activation"):
        rec = activate_recorded(ENV, c, led, work_dir=tmp_path)
    assert "damaged" in caplog.text
    assert rec is not None and rec["previous_revision"] == b.revision and not rec["rollback"]
    assert [x.revision[0] for x in read_activations(ENV, tmp_path)] == ["a", "b", "c"]


def test_a_restart_of_the_active_revision_records_nothing(led: SqlLedger, tmp_path: Path) -> None:
    a = _fake("a")
    activate_recorded(ENV, a, led, work_dir=tmp_path)
    (tmp_path / "activations" / f"{ENV}.json").unlink()
    assert activate_recorded(ENV, a, led, work_dir=tmp_path) is None
    assert len(_activated(led)) == 1
    assert [x.revision for x in read_activations(ENV, tmp_path)] == [a.revision]


class _Racing:
    """A ledger where another replica activates ``other`` just before our first append."""

    def __init__(self, inner: SqlLedger, other: BuiltBundle, work_dir: Path) -> None:
        self.inner, self.other, self.work_dir, self.raced = inner, other, work_dir, False

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        if not self.raced:
            self.raced = True
            activate_recorded(ENV, self.other, self.inner, work_dir=self.work_dir / "replica")
        return self.inner.append(events)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_replicas_activating_at_once_append_one_history(led: SqlLedger, tmp_path: Path) -> None:
    a, b = _fake("a"), _fake("b")
    activate_recorded(ENV, a, led, work_dir=tmp_path)
    racing = _Racing(led, b, tmp_path)
    # Both replicas read [a] and want b at position 2: one append wins, the other re-reads
    # the history, finds b active and records nothing.
    assert activate_recorded(ENV, b, racing, work_dir=tmp_path) is None  # type: ignore[arg-type]
    assert racing.raced
    assert [p["revision"] for p in _activated(led)] == [a.revision, b.revision]


def test_a_malformed_activation_in_the_ledger_refuses_activation(
    led: SqlLedger, tmp_path: Path
) -> None:
    activate_recorded(ENV, _fake("a"), led, work_dir=tmp_path)
    led.append(
        [
            NewEvent(
                activation_stream(ENV),
                EventType.POLICY_ACTIVATED,
                "l7-engine",
                "x",
                {"env": ENV, "revision": "not-hex", "bundle_sha256": "f" * 64},
            )
        ]
    )
    with pytest.raises(BundleError, match=r"global_seq 2 .* revision='not-hex'"):
        activate_recorded(ENV, _fake("b"), led, work_dir=tmp_path)


def test_only_the_env_stream_counts(led: SqlLedger, tmp_path: Path) -> None:
    """Activations of another environment, or events elsewhere, are not this floor."""
    activate_recorded("staging", BuiltBundle(**{**_fake("b").__dict__, "env": "staging"}), led,
                      work_dir=tmp_path)  # fmt: skip
    assert ledger_activations(led, ENV) == ()
    assert activate_recorded(ENV, _fake("a"), led, work_dir=tmp_path) is not None
