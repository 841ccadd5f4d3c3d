"""Dual-write to a JSON-lines sink on SQLite and PostgreSQL: a confirmation needs the
database commit AND the sink's fsync; ``verify_dual_write`` finds any divergence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import IntegrityViolation, LedgerUnavailable, SqlLedger, verify_dual_write
from ledger.checkpoint import Ed25519CheckpointSigner
from ledger.dualwrite import JsonlSink
from tests.ledger.conftest import Backend, ev


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    return tmp_path / "second" / "ledger.jsonl"


@pytest.fixture
def led(backend: Backend, sink: Path) -> Iterator[SqlLedger]:
    sink.parent.mkdir()
    ledger = SqlLedger(
        backend.url,
        dual_write=f"jsonl://{sink}",
        checkpoint_signer=Ed25519CheckpointSigner.generate(),
    )
    yield ledger
    ledger.close()


def fill(led: SqlLedger, n: int) -> None:
    for i in range(0, n, 2):
        led.append([ev(f"d{i % 3}", i), ev(f"d{(i + 1) % 3}", i + 1)])


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def test_the_sink_holds_exactly_the_stored_rows(led: SqlLedger, sink: Path) -> None:
    fill(led, 10)
    expected = [
        {
            "global_seq": r.global_seq,
            "decision_id": r.decision_id,
            "sequence": r.sequence,
            "prev_hash": r.prev_hash,
            "hash": r.hash,
            "body": r.body.decode(),
        }
        for r in led.iter_rows()
    ]
    assert lines(sink) == expected
    report = verify_dual_write(led, sink)
    assert (report.lines, report.last_global_seq) == (10, 10)
    led.sign_checkpoint()
    assert led.audit().events == 10


def test_confirmation_comes_after_the_commit_and_the_sink(
    led: SqlLedger, sink: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    real_write = JsonlSink.write

    def spy(self: JsonlSink, rows: list[dict[str, Any]]) -> None:
        # The database has committed the group before the sink is written ...
        ((committed,),) = backend.sql("SELECT count(*) FROM events")
        seen.append((int(committed), len(rows)))
        real_write(self, rows)

    monkeypatch.setattr(JsonlSink, "write", spy)
    confs = led.append([ev("d1"), ev("d2")])
    # ... and the caller is answered only after the sink was written.
    assert seen == [(2, 2)]
    assert [line["hash"] for line in lines(sink)] == [c.hash for c in confs]


def test_removed_altered_and_extra_lines_are_detected(led: SqlLedger, sink: Path) -> None:
    fill(led, 6)
    original = sink.read_bytes()
    rows = original.splitlines(keepends=True)

    sink.write_bytes(b"".join(rows[:2] + rows[3:]))
    with pytest.raises(IntegrityViolation, match=r"dual_write_missing.*global_seq 3\)") as exc:
        verify_dual_write(led, sink)
    assert exc.value.decision_id == "d2"

    sink.write_bytes(original.replace(b'\\"result\\":\\"pass\\"', b'\\"result\\":\\"fail\\"', 1))
    with pytest.raises(IntegrityViolation, match=r"dual_write_mismatch.*global_seq 1\).*body="):
        verify_dual_write(led, sink)

    sink.write_bytes(original + rows[4])
    with pytest.raises(IntegrityViolation, match=r"dual_write_duplicate.*global_seq 5\)"):
        verify_dual_write(led, sink)

    late = json.loads(rows[5])
    late["global_seq"] = 7
    sink.write_bytes(original + json.dumps(late).encode() + b"\n")
    with pytest.raises(IntegrityViolation, match=r"dual_write_extra.*global_seq 7\)"):
        verify_dual_write(led, sink)

    sink.write_bytes(original[:-1])
    with pytest.raises(IntegrityViolation, match=r"dual_write_malformed.*torn last line"):
        verify_dual_write(led, sink)

    sink.write_bytes(original)
    assert verify_dual_write(led, sink).lines == 6


def test_lines_may_interleave_between_processes(led: SqlLedger, sink: Path) -> None:
    fill(led, 6)
    rows = sink.read_bytes().splitlines(keepends=True)
    rows[2], rows[3] = rows[3], rows[2]
    sink.write_bytes(b"".join(rows))
    assert verify_dual_write(led, sink).lines == 6


def test_audit_includes_the_dual_write_check(led: SqlLedger, sink: Path) -> None:
    fill(led, 4)
    led.sign_checkpoint()
    sink.write_bytes(b"".join(sink.read_bytes().splitlines(keepends=True)[1:]))
    with pytest.raises(IntegrityViolation, match=r"dual_write_missing.*global_seq 1\)"):
        led.audit()


def test_a_truncated_database_leaves_extra_lines(
    led: SqlLedger, sink: Path, backend: Backend
) -> None:
    fill(led, 6)
    with backend.attacker() as a:
        a.execute("DELETE FROM events WHERE global_seq > 4")
    with pytest.raises(IntegrityViolation, match=r"dual_write_extra.*global_seq 5\)"):
        verify_dual_write(led, sink)


def test_a_failing_sink_refuses_confirmation(led: SqlLedger, sink: Path, backend: Backend) -> None:
    fill(led, 2)
    assert led._sink is not None
    led._sink._file.close()  # the next write raises, after the database has committed
    with pytest.raises(
        LedgerUnavailable,
        match=r"dual-write sink .* failed .* after the database committed global_seq 3\.\.3: "
        r".*NOT confirmed",
    ):
        led.append([ev("d9")])
    assert led.count() == 3  # committed but never confirmed: the sink lacks it
    with pytest.raises(IntegrityViolation, match=r"dual_write_missing.*global_seq 3\)"):
        verify_dual_write(led, sink)
    with pytest.raises(LedgerUnavailable, match=r"further appends are refused"):
        led.append([ev("d10")])
    assert led.count() == 3  # refused before the database


def test_a_sink_that_cannot_be_opened_or_is_torn_is_refused(
    backend: Backend, tmp_path: Path
) -> None:
    with pytest.raises(LedgerUnavailable, match=r"cannot open dual-write sink"):
        SqlLedger(backend.url, dual_write=f"jsonl://{tmp_path}")  # a directory
    with pytest.raises(LedgerUnavailable, match=r"unsupported dual-write sink 's3://x'"):
        SqlLedger(backend.url, dual_write="s3://x")
    with pytest.raises(LedgerUnavailable, match=r"must name an absolute path"):
        SqlLedger(backend.url, dual_write="jsonl://relative.jsonl")
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"global_seq": 1')
    torn.chmod(0o600)  # (a readable one is refused before it is read: tests/ledger/test_files.py)
    with pytest.raises(LedgerUnavailable, match=r"unterminated line"):
        SqlLedger(backend.url, dual_write=f"jsonl://{torn}")
