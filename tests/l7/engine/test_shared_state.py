"""State read from the ledger through its Query API (issue #12 item 5): the Tail cursor, the
pending and break-glass indexes and the shared refused-signature count, on a real SQLite
ledger. Two ``SqlLedger`` handles on one file stand for two replicas."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import l7.ledger_query
from l7.engine.shared_state import (
    SIGNATURE_REFUSED,
    BreakGlassIndex,
    LedgerRefusals,
    OpenBreakGlass,
    PendingIndex,
)
from l7.errors import ConfigError, LedgerDegraded
from l7.ledger_query import Tail, query_all, queryable
from ledger import EventType, LedgerUnavailable, NewEvent, SqlLedger, StoredEvent, open_ledger
from tests.fakes import MemoryLedger

_E = EventType
T0 = 1_790_000_000


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SqlLedger, SqlLedger]]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with open_ledger(url) as a, open_ledger(url) as b:
        yield a, b


def _ev(decision: str, kind: EventType, payload: dict[str, Any], actor: str = "x") -> NewEvent:
    return NewEvent(decision, kind, actor, "rev", payload)


def test_a_tail_returns_only_what_is_new_in_global_order(
    two: tuple[SqlLedger, SqlLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two
    monkeypatch.setattr(l7.ledger_query, "PAGE", 2)  # several pages per poll
    tail = Tail(b, (_E.BREAKGLASS_REVIEWED, _E.OVERRIDE_BREAKGLASS))
    assert tail.poll() == [] and tail.cursor == 0
    a.append([_ev(f"d{i}", _E.OVERRIDE_BREAKGLASS, {"i": i}) for i in range(5)])
    a.append([_ev("d0", _E.DECISION_CREATED, {}), _ev("d0", _E.BREAKGLASS_REVIEWED, {})])
    got = tail.poll()
    assert [e.event_type for e in got] == ["override.breakglass"] * 5 + ["breakglass.reviewed"]
    assert [e.global_seq for e in got] == [1, 2, 3, 4, 5, 7]  # decision.created is not read
    assert tail.cursor == 7
    assert tail.poll() == []
    a.append([_ev("d9", _E.OVERRIDE_BREAKGLASS, {})])
    assert [e.decision_id for e in tail.poll()] == ["d9"]


class _Flaky:
    """A ledger whose queries for one event type fail."""

    def __init__(self, inner: SqlLedger, broken: EventType) -> None:
        self.inner, self.broken = inner, broken

    def query(self, **kw: Any) -> list[StoredEvent]:
        if kw.get("event_type") == self.broken.value:
            raise LedgerUnavailable("database is locked")
        return self.inner.query(**kw)


def test_a_failed_poll_advances_nothing(two: tuple[SqlLedger, SqlLedger]) -> None:
    a, _ = two
    a.append([_ev("d", _E.BREAKGLASS_REVIEWED, {}), _ev("d", _E.OVERRIDE_BREAKGLASS, {})])
    flaky = _Flaky(a, _E.OVERRIDE_BREAKGLASS)
    tail = Tail(flaky, (_E.BREAKGLASS_REVIEWED, _E.OVERRIDE_BREAKGLASS))
    with pytest.raises(LedgerDegraded, match="could not be read: database is locked"):
        tail.poll()
    assert tail.cursor == 0
    flaky.broken = _E.LEDGER_ACCESSED  # fixed
    assert len(tail.poll()) == 2


def test_a_ledger_without_query_is_refused_not_guessed() -> None:
    with pytest.raises(ConfigError, match="MemoryLedger has no query"):
        queryable(MemoryLedger())
    with pytest.raises(ConfigError):
        PendingIndex(MemoryLedger()).sync()


def test_query_all_filters_by_stream_and_actor(two: tuple[SqlLedger, SqlLedger]) -> None:
    a, _ = two
    a.append([_ev("s1", _E.ANOMALY_DETECTED, {}, "m"), _ev("s2", _E.ANOMALY_DETECTED, {}, "n")])
    assert [e.decision_id for e in query_all(a, event_type=_E.ANOMALY_DETECTED)] == ["s1", "s2"]
    assert [e.actor for e in query_all(a, event_type=_E.ANOMALY_DETECTED, actor="n")] == ["n"]
    assert list(query_all(a, event_type=_E.ANOMALY_DETECTED, decision_id="s3")) == []


def _enf(d: str, status: str) -> NewEvent:
    return _ev(d, _E.ENFORCEMENT_RESULT, {"status": status})


def test_the_pending_index_follows_the_ledger(two: tuple[SqlLedger, SqlLedger]) -> None:
    a, b = two
    idx = PendingIndex(b)
    a.append([_enf("p1", "pending_authority"), _enf("p2", "pending_authority")])
    a.append([_enf("p3", "pending_authority"), _enf("ok", "authorized")])
    idx.sync()
    assert sorted(idx.candidates()) == ["p1", "p2", "p3"]
    assert sorted(idx.due(T0)) == ["p1", "p2", "p3"]  # deadlines unknown: read each once
    for d in ("p1", "p2", "p3"):
        idx.track(d, T0 + 100)  # what a fold of each stream said
    assert idx.due(T0) == []
    assert idx.due(T0 + 100) == ["p1", "p2", "p3"]
    a.append([_ev("p1", _E.AUTHORITY_ESCALATED, {})])  # another replica moved p1's deadline
    a.append([_ev("p2", _E.DECISION_CANCELLED, {"status": "cancelled"})])
    a.append([_enf("p3", "authorized")])
    a.append([_ev("p9", _E.AUTHORITY_ESCALATED, {})])  # not pending here: ignored
    idx.sync()
    assert idx.candidates() == ["p1"] and idx.due(T0) == ["p1"]
    idx.track("p1", None)
    assert idx.candidates() == []


def test_the_break_glass_index_follows_the_ledger(two: tuple[SqlLedger, SqlLedger]) -> None:
    a, b = two
    idx = BreakGlassIndex(b)

    def opened(d: str, who: str, deadline: int) -> NewEvent:
        return _ev(d, _E.OVERRIDE_BREAKGLASS, {"opened_by": who, "review_deadline": deadline})

    a.append(
        [opened("g1", "sec1", T0), opened("g2", "sec2", T0 + 10), opened("g3", "sec1", T0 + 99)]
    )
    a.append([_ev("g2", _E.BREAKGLASS_REVIEWED, {"reviewer": "sec1"})])
    idx.sync()
    assert [x.decision_id for x in idx.unreviewed()] == ["g1", "g3"]
    assert idx.overdue(T0 + 10, "sec1") == [OpenBreakGlass("g1", "sec1", T0)]
    assert idx.overdue(T0 + 10, "sec2") == []
    a.append([_ev("g1", _E.BREAKGLASS_REVIEWED, {})])
    idx.sync()
    assert idx.overdue(T0 + 10) == []


def test_an_unreadable_break_glass_refuses_rather_than_forgets(
    two: tuple[SqlLedger, SqlLedger],
) -> None:
    a, b = two
    a.append([_ev("g1", _E.OVERRIDE_BREAKGLASS, {"opened_by": "sec1"})])
    with pytest.raises(LedgerDegraded, match=r"global_seq 1 \(decision g1\).*review_deadline"):
        BreakGlassIndex(b).sync()


def test_refused_signatures_are_counted_across_replicas(two: tuple[SqlLedger, SqlLedger]) -> None:
    a, b = two
    ra, rb = LedgerRefusals(a), LedgerRefusals(b)
    ra.record("mallory", T0, decision_id="d1", policy_version="rev")
    rb.record("mallory", T0 + 5, decision_id="d2", policy_version="rev")
    ra.record("eve", T0 + 5, decision_id="d1", policy_version="rev")
    assert ra.count("mallory", T0 + 10, 60) == rb.count("mallory", T0 + 10, 60) == 2
    assert rb.count("mallory", T0 + 62, 60) == 1  # the first one left the window
    assert ra.count("eve", T0 + 10, 60) == 1 and ra.count("nobody", T0, 60) == 0
    (ev,) = [e for e in a.get_stream("d2") if e.event_type == "anomaly.detected"]
    assert (ev.actor, dict(ev.payload)) == (
        "mallory",
        {
            "kind": SIGNATURE_REFUSED,
            "subject": "mallory",
            "detail": "an approval signature by this approver was refused",
            "what": {"refused_at": T0 + 5},
        },
    )


def test_other_or_malformed_anomalies_are_not_counted(
    two: tuple[SqlLedger, SqlLedger], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two
    bad: Sequence[dict[str, Any]] = [
        {"kind": "approval_too_fast", "subject": "mallory"},
        {"kind": SIGNATURE_REFUSED, "subject": "mallory", "what": "yesterday"},
        {"kind": SIGNATURE_REFUSED, "what": {"refused_at": T0}},
    ]
    a.append([_ev("d", _E.ANOMALY_DETECTED, p, "mallory") for p in bad])
    assert LedgerRefusals(b).count("mallory", T0, 600) == 0
    assert caplog.text.count("is malformed") == 2
