"""Verification on SQLite and PostgreSQL: an untouched ledger passes, every tampering fails.

The tamperer works with raw SQL after getting the append-only triggers out of
the way: on SQLite it has the file and drops them; on PostgreSQL it is the
superuser and runs ``ALTER TABLE events DISABLE TRIGGER ALL`` (DBA access).
Each violation must name the event (decision id, stream sequence, global_seq)
with expected vs found values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger import (
    GENESIS_HASH,
    IntegrityViolation,
    SqlLedger,
    VerifyRow,
    canonical_body,
    verify_file,
    verify_rows,
)
from tests.ledger.conftest import BACKENDS, FIXED_AT, Attacker, Backend, ev, new_backend

STREAMS = ("dec-A", "dec-B", "dec-C")  # 5 events each: A = g1..5, B = g6..10, C = g11..15
HEX = "[0-9a-f]{64}"


def _fill(url: str) -> None:
    with SqlLedger(url, clock=lambda: FIXED_AT) as led:
        for did in STREAMS:
            led.append([ev(did, i, key=f"nonce-{did}-{i}") for i in range(5)])


@pytest.fixture
def filled(backend: Backend) -> Backend:
    _fill(backend.url)
    return backend


def _row(con: Attacker, did: str, seq: int) -> tuple[int, str, str, str]:
    ((g, body, h, prev),) = con.execute(
        "SELECT global_seq, body, hash, prev_hash FROM events WHERE decision_id=:d AND sequence=:s",
        d=did,
        s=seq,
    )
    return int(g), str(body), str(h), str(prev)


def _edit_payload(con: Attacker) -> None:
    g, body, _, _ = _row(con, "dec-B", 3)
    assert '"result":"pass"' in body
    con.execute(
        "UPDATE events SET body=:b WHERE global_seq=:g", b=body.replace("pass", "fail"), g=g
    )


def _delete_middle(con: Attacker) -> None:
    con.execute("DELETE FROM events WHERE global_seq=:g", g=_row(con, "dec-B", 3)[0])


def _swap_sequences(con: Attacker) -> None:
    g3, g4 = _row(con, "dec-B", 3)[0], _row(con, "dec-B", 4)[0]
    con.execute("UPDATE events SET sequence=-1 WHERE global_seq=:g", g=g3)
    con.execute("UPDATE events SET sequence=3 WHERE global_seq=:g", g=g4)
    con.execute("UPDATE events SET sequence=4 WHERE global_seq=:g", g=g3)


def _swap_bodies(con: Attacker) -> None:
    g3, b3, h3, _ = _row(con, "dec-B", 3)
    g4, b4, h4, _ = _row(con, "dec-B", 4)
    con.execute("UPDATE events SET body=:b, hash=:h WHERE global_seq=:g", b=b4, h=h4, g=g3)
    con.execute("UPDATE events SET body=:b, hash=:h WHERE global_seq=:g", b=b3, h=h3, g=g4)


def _insert_forged(con: Attacker) -> None:
    """A forged dec-B sequence 3 at global_seq 8, hash correctly recomputed, rest shifted."""
    g2, _, h2, _ = _row(con, "dec-B", 2)
    con.execute("UPDATE events SET global_seq = -global_seq WHERE global_seq > :g", g=g2)
    con.execute("UPDATE events SET global_seq = 1 - global_seq WHERE global_seq < 0")
    con.execute("UPDATE events SET sequence = -sequence WHERE decision_id='dec-B' AND sequence > 2")
    con.execute("UPDATE events SET sequence = 1 - sequence WHERE sequence < 0")
    at = "2026-11-25T20:44:12.123456Z"
    body = canonical_body(
        event_id="forged-0001",
        decision_id="dec-B",
        event_type="policy.gate",
        policy_version="rev-1",
        actor="alice",
        payload={"gate": "forged", "result": "pass"},
        unique_key=None,
        at=at,
    )
    forged = hashlib.sha256(h2.encode() + body).hexdigest()
    con.execute(
        "INSERT INTO events (global_seq, event_id, decision_id, sequence, event_type, at, actor,"
        " policy_version, unique_key, prev_hash, hash, body)"
        " VALUES (:g, 'forged-0001', 'dec-B', 3, 'policy.gate', :at, 'alice', 'rev-1', NULL,"
        " :prev, :h, :body)",
        g=g2 + 1,
        at=at,
        prev=h2,
        h=forged,
        body=body.decode(),
    )


def _delete_stream_tail(con: Attacker) -> None:
    con.execute("DELETE FROM events WHERE global_seq=:g", g=_row(con, "dec-B", 5)[0])


def _edit_indexed_actor(con: Attacker) -> None:
    con.execute("UPDATE events SET actor='mallory' WHERE global_seq=:g", g=_row(con, "dec-B", 3)[0])


TAMPERING: list[tuple[Callable[[Attacker], None], str, str, int, int, str]] = [
    # (tamper, what, decision, sequence, global_seq, message pattern after the location)
    (_edit_payload, "hash_mismatch", "dec-B", 3, 8, f"expected hash {HEX}, found {HEX}$"),
    (_delete_middle, "sequence_gap", "dec-B", 4, 9, "expected sequence 3, found 4$"),
    (_swap_sequences, "sequence_gap", "dec-B", 4, 8, "expected sequence 3, found 4$"),
    (_swap_bodies, "hash_mismatch", "dec-B", 3, 8, f"expected hash {HEX}, found {HEX}$"),
    # the forged event itself is self-consistent; the displaced original after it breaks
    (_insert_forged, "chain_break", "dec-B", 4, 9, f"expected prev_hash {HEX}, found {HEX}$"),
    # the deleted event is referenced by nothing: the hole is found at the next global row
    (
        _delete_stream_tail,
        "global_gap",
        "dec-C",
        1,
        11,
        "expected global_seq 10, found global_seq 11$",
    ),
    (
        _edit_indexed_actor,
        "body_mismatch",
        "dec-B",
        3,
        8,
        "expected actor='alice' \\(from body\\), found 'mallory' in column$",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "what", "decision", "sequence", "global_seq", "detail"),
    TAMPERING,
    ids=[t[0].__name__.lstrip("_") for t in TAMPERING],
)
def test_tampering_is_detected_and_named(
    filled: Backend,
    tamper: Callable[[Attacker], None],
    what: str,
    decision: str,
    sequence: int,
    global_seq: int,
    detail: str,
) -> None:
    with filled.attacker() as con:
        tamper(con)
    where = (
        rf"^ledger integrity violation \({what}\) at decision {decision} "
        rf"sequence {sequence} \(global_seq {global_seq}\): "
    )
    with pytest.raises(IntegrityViolation, match=where + detail) as info:
        verify_file(filled.url)
    err = info.value
    assert (err.what, err.decision_id, err.sequence, err.global_seq) == (
        what,
        decision,
        sequence,
        global_seq,
    )


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("event_type", "'approval.added'", "event_type='policy.gate'"),
        ("policy_version", "'rev-2'", "policy_version='rev-1'"),
        ("unique_key", "NULL", "unique_key='nonce-dec-B-2'"),
        ("at", "'2026-01-01T00:00:00.000000Z'", "at='2026-11-25T20:44:12.123456Z'"),
        ("event_id", "'other-id'", "event_id='[0-9a-f-]{36}'"),
    ],
)
def test_changing_an_indexed_column_only_is_a_body_mismatch(
    filled: Backend, column: str, value: str, expected: str
) -> None:
    with filled.attacker() as con:
        con.execute(f"UPDATE events SET {column}={value} WHERE global_seq=8")
    with pytest.raises(
        IntegrityViolation,
        match=rf"\(body_mismatch\) at decision dec-B sequence 3 \(global_seq 8\): "
        rf"expected {expected} \(from body\)",
    ):
        verify_file(filled.url)


def test_untampered_ledger_verifies_with_progress(filled: Backend) -> None:
    calls: list[tuple[int, int]] = []
    with SqlLedger(filled.url) as led:
        report = led.verify(lambda done, total: calls.append((done, total)))
        head = led.get_stream("dec-C")[-1].hash
    assert (report.events, report.streams, report.last_global_seq) == (15, 3, 15)
    assert report.head_hash == head
    assert calls and calls[-1] == (15, 15)
    assert verify_file(filled.url) == report
    if filled.kind == "sqlite":  # a bare path means a SQLite file
        assert verify_file(Path(filled.url.removeprefix("sqlite:///"))) == report


def test_verify_rows_is_pure() -> None:
    assert verify_rows([]).head_hash == GENESIS_HASH
    body = canonical_body(
        event_id="e1",
        decision_id="d",
        event_type="policy.gate",
        policy_version="",
        actor="a",
        payload={},
        unique_key=None,
        at="2026-11-25T20:44:12.123456Z",
    )
    h = hashlib.sha256(GENESIS_HASH.encode() + body).hexdigest()
    row = VerifyRow(
        1, "d", 1, "e1", "policy.gate", "2026-11-25T20:44:12.123456Z", "a", "", None,
        GENESIS_HASH, h, body,
    )  # fmt: skip
    assert verify_rows([row]).head_hash == h
    with pytest.raises(IntegrityViolation, match=r"\(global_gap\) .* expected global_seq 1"):
        verify_rows([row._replace(global_seq=2)])
    with pytest.raises(IntegrityViolation, match=r"\(body_mismatch\) .* unparseable body"):
        bad = b"not json"
        verify_rows(
            [row._replace(body=bad, hash=hashlib.sha256(GENESIS_HASH.encode() + bad).hexdigest())]
        )


# -- property: any single-byte change of a stored body or hash fails verification ------------


@pytest.fixture(scope="module", params=BACKENDS)
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, Attacker]]:
    """One filled ledger per backend for the module, with an attacker session held open."""
    backend = new_backend(request, request.param, tmp_path_factory.mktemp("template"))
    _fill(backend.url)
    with backend.attacker() as con:
        yield backend, con


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.integers(1, 15),
    column=st.sampled_from(["body", "hash"]),
    offset=st.integers(0, 10_000),
    mask=st.integers(1, 255),
)
def test_any_single_byte_flip_fails_verification(
    template: tuple[Backend, Attacker], row: int, column: str, offset: int, mask: int
) -> None:
    backend, con = template
    ((original,),) = con.execute(f"SELECT {column} FROM events WHERE global_seq=:g", g=row)
    data = bytearray(original.encode("utf-8"))
    data[offset % len(data)] ^= mask
    try:
        value: str | bytes = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        # not valid UTF-8 any more: SQLite stores it as a BLOB; PostgreSQL text cannot hold it
        assume(backend.kind == "sqlite")
        value = bytes(data)
    assume(backend.kind == "sqlite" or "\x00" not in value)  # nor can it hold NUL
    con.execute(f"UPDATE events SET {column}=:v WHERE global_seq=:g", v=value, g=row)
    con.walls_up()  # as the careful insider leaves them: else the open itself refuses
    try:
        with pytest.raises(IntegrityViolation):
            verify_file(backend.url)
    finally:
        con.walls_down()
        con.execute(f"UPDATE events SET {column}=:v WHERE global_seq=:g", v=original, g=row)
