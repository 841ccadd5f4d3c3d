"""SqlLedger as an AuditableLedger on SQLite and PostgreSQL: checkpoints, cosignatures,
proofs, audit, export, query, and the background Checkpointer / IntegrityMonitor.

A witness (``ledger.witness``, its HTTP server in a thread here; as its own process in
``tests/integration/test_witness_process.py``) cosigns every checkpoint. The tampering
below is done as an attacker with database access (triggers dropped or disabled first,
as in ``conftest``) and keeps every stream's chain valid, so ``verify`` passes and only
the signed, chained, witnessed checkpoints can catch it. Three streams are dealt
round-robin: global_seq 1, 4, 7, 10 is dec-A; 2, 5, 8, 11 dec-B; 3, 6, 9, 12 dec-C.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import DBAPIError

from ledger import (
    AuditableLedger,
    Checkpointer,
    EventType,
    IntegrityMonitor,
    IntegrityViolation,
    LedgerUnavailable,
    SqlLedger,
    canonical_body,
    chain_hash,
)
from ledger.checkpoint import Ed25519CheckpointSigner, log_key, verify_checkpoint
from ledger.checkpointer import MONITOR_STREAM
from ledger.export import dump_export, verify_export
from ledger.interface import EventHash
from ledger.merkle import ProofInvalid, event_leaf_hash, verify_consistency, verify_inclusion
from ledger.note import ALG_COSIGNATURE_V1, VerifierKey
from ledger.witness import Witness, create_witness_server
from ledger.witness_client import WitnessClient, WitnessEndpoint
from tests.ledger.conftest import Backend, ev

STREAMS = ("dec-A", "dec-B", "dec-C")
ORIGIN = "layer7.local/ledger/test"


class StepClock:
    """One second later on every call, from a fixed start."""

    def __init__(self) -> None:
        self.t = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.t += timedelta(seconds=1)
            return self.t


@pytest.fixture
def signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


@pytest.fixture
def witness(tmp_path: Path, signer: Ed25519CheckpointSigner) -> Iterator[WitnessEndpoint]:
    """A witness trusting the test log, served over HTTP on a free loopback port."""
    w = Witness(
        "layer7.local/witness/test",
        Ed25519PrivateKey.generate(),
        [log_key(ORIGIN, signer.public_key_raw)],
        tmp_path / "witness",
    )
    server, port = create_witness_server("127.0.0.1:0", w)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield WitnessEndpoint(f"http://127.0.0.1:{port}", w.vkey)
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def led(
    backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> Iterator[SqlLedger]:
    """A writer that signs only when told (no background checkpoints: deterministic)."""
    ledger = SqlLedger(
        backend.url,
        checkpoint_signer=signer,
        origin=ORIGIN,
        witnesses=[witness],
        checkpoint_every_s=0,
    )
    yield ledger
    ledger.close()


def reader(
    backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> SqlLedger:
    """The ledger as a monitor or auditor opens it: public keys only."""
    return SqlLedger(
        backend.url,
        checkpoint_public_key=signer.public_key_raw,
        witness_keys=[witness.key],
        create=False,
    )


def drop_guards(backend: Backend, *tables: str) -> None:
    """What an insider does first: the append-only triggers out of the way."""
    for table in tables:
        if backend.kind == "sqlite":
            for op in ("update", "delete"):
                backend.sql(f"DROP TRIGGER IF EXISTS {table}_refuse_{op}")
        else:
            backend.sql(f"ALTER TABLE {table} DISABLE TRIGGER ALL")


def fill(led: SqlLedger, n: int, start: int = 0) -> None:
    """``n`` events dealt round-robin over STREAMS, one batch of three at a time."""
    events = [ev(STREAMS[(start + i) % 3], start + i) for i in range(n)]
    for i in range(0, n, 3):
        led.append(events[i : i + 3])


def _wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_sql_ledger_is_an_auditable_ledger(led: SqlLedger) -> None:
    auditable: AuditableLedger = led
    assert auditable.count() == 0


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoints_are_stored_chained_cosigned_and_referenced(
    led: SqlLedger, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint, backend: Backend
) -> None:
    confs = led.append([ev("dec-A"), ev("dec-B")])
    assert [(c.global_seq, c.checkpoint) for c in confs] == [(1, 1), (2, 2)]
    fill(led, 3, start=2)
    first = led.sign_checkpoint()
    assert (first.index, first.tree_size, first.prev) == (0, 5, None)
    assert led.sign_checkpoint() == first  # nothing grew: the same one, not a new row
    fill(led, 4, start=5)
    second = led.sign_checkpoint()
    assert (second.index, second.tree_size, second.prev) == (1, 9, first.ref)
    assert led.checkpoints() == [first, second]
    for cp in (first, second):
        verify_checkpoint(cp, signer.public_key_raw, origin=ORIGIN)
    ((note,),) = backend.sql("SELECT note FROM checkpoint_notes WHERE idx = 1")
    assert note == second.note
    cosigs = led.cosignatures()
    assert sorted(cosigs) == [0, 1] and all(
        c.key_id == witness.key.key_id for v in cosigs.values() for c in v
    )
    assert led.witness_errors == {}
    # The witness's own latest view is the second checkpoint.
    latest = WitnessClient(witness).latest(ORIGIN)
    assert latest is not None and latest[0] == second
    # Each confirmation's checkpoint reference is covered by the first checkpoint >= it.
    assert all(c.checkpoint <= first.tree_size for c in confs)
    for table, msg in (
        ("checkpoint_notes", "ledger checkpoint notes are append-only"),
        ("cosignatures", "ledger cosignatures are append-only"),
    ):
        for sql in (f"UPDATE {table} SET idx = 99", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match=msg):
                backend.sql(sql)


def test_sign_without_a_signer_is_unavailable(backend: Backend) -> None:
    with SqlLedger(backend.url) as led:
        led.append([ev("d1")])
        with pytest.raises(LedgerUnavailable, match=r"no checkpoint signer is configured"):
            led.sign_checkpoint()
        with pytest.raises(LedgerUnavailable, match=r"no checkpoint to prove against"):
            led.export(decision_ids=["d1"])
        with pytest.raises(LedgerUnavailable, match=r"no checkpoint public key"):
            led.audit()
        assert led.checkpoints() == [] and led.cosignatures() == {}


def test_inclusion_and_consistency_proofs_verify_against_stored_checkpoints(
    led: SqlLedger,
) -> None:
    fill(led, 13)
    cp1 = led.sign_checkpoint()
    fill(led, 20, start=13)
    cp2 = led.sign_checkpoint()
    assert (cp1.tree_size, cp2.tree_size) == (13, 33)
    hashes = {e.global_seq: e.hash for e in led.iter_events()}
    rng = random.Random(7)
    for cp in led.checkpoints():
        for g in [*rng.sample(range(1, cp.tree_size + 1), 8), 1, cp.tree_size]:
            proof = led.inclusion_proof(g, cp.tree_size)
            verify_inclusion(event_leaf_hash(hashes[g]), g - 1, cp.tree_size, proof, cp.root)
            if g < cp.tree_size:
                with pytest.raises(ProofInvalid):  # the proof is for g, not for its neighbour
                    verify_inclusion(
                        event_leaf_hash(hashes[g + 1]), g, cp.tree_size, proof, cp.root
                    )
    proof = led.consistency_proof(cp1.tree_size, cp2.tree_size)
    verify_consistency(cp1.tree_size, cp2.tree_size, cp1.root, cp2.root, proof)
    with pytest.raises(ValueError, match=r"tree_size 34 outside 1..33"):
        led.inclusion_proof(1, 34)
    with pytest.raises(ValueError, match=r"global_seq 14 outside 1..13"):
        led.inclusion_proof(14, 13)
    with pytest.raises(ValueError, match=r"size1 20 outside 0..13"):
        led.consistency_proof(20, 13)


def test_the_tree_catches_up_with_another_process(
    led: SqlLedger, backend: Backend, signer: Ed25519CheckpointSigner
) -> None:
    fill(led, 4)
    assert led.sign_checkpoint().tree_size == 4
    with SqlLedger(backend.url) as other:  # another writer on the same database
        fill(other, 5, start=4)
    fill(led, 2, start=9)  # our writer's group now starts after rows our tree has not seen
    cp = led.sign_checkpoint()
    assert cp.tree_size == 11
    with SqlLedger(backend.url, checkpoint_public_key=signer.public_key_raw) as auditor:
        report = auditor.audit()
    assert (report.events, report.witnessed_size, report.unwitnessed_events) == (11, 11, 0)
    assert report.checkpoints == 2


# -- audit against witnessed checkpoints -------------------------------------------------------


def _renumber(a: Any) -> None:
    """Make global_seq gap-free again after a deletion (as a careful attacker would)."""
    a.execute("UPDATE events SET global_seq = global_seq + 1000000")
    a.execute(
        "UPDATE events SET global_seq = r.rn FROM (SELECT global_seq AS g, "
        "row_number() OVER (ORDER BY global_seq) AS rn FROM events) AS r "
        "WHERE events.global_seq = r.g"
    )


def _rewrite_after(a: Any, n: int) -> None:
    """Change every event after global_seq ``n`` and recompute the stream chains."""
    rows = a.execute(
        "SELECT global_seq, decision_id, prev_hash, hash, body FROM events ORDER BY global_seq"
    )
    heads: dict[str, str] = {}
    for g, did, prev, h, body in rows:
        if g <= n:
            heads[did] = h
            continue
        b = json.loads(body)
        b["payload"] = {**b["payload"], "result": "fail"}
        new_body = canonical_body(
            event_id=b["event_id"],
            decision_id=did,
            event_type=b["event_type"],
            policy_version=b["policy_version"],
            actor=b["actor"],
            payload=b["payload"],
            unique_key=b["unique_key"],
            at=b["timestamps"]["at"],
        )
        new_prev = heads.get(did, prev)
        new_hash = chain_hash(EventHash(new_prev), new_body)
        a.execute(
            "UPDATE events SET body = :b, prev_hash = :p, hash = :h WHERE global_seq = :g",
            b=new_body.decode(),
            p=new_prev,
            h=new_hash,
            g=g,
        )
        heads[did] = new_hash


def _delete_stream(a: Any) -> None:
    a.execute("DELETE FROM events WHERE decision_id = 'dec-B'")
    _renumber(a)


def _swap(a: Any, g1: int, g2: int) -> None:
    a.execute("UPDATE events SET global_seq = -1 WHERE global_seq = :g", g=g1)
    a.execute("UPDATE events SET global_seq = :g1 WHERE global_seq = :g2", g1=g1, g2=g2)
    a.execute("UPDATE events SET global_seq = :g2 WHERE global_seq = -1", g2=g2)


TAMPERING: list[tuple[str, Callable[[Any], None], str, str]] = [
    (
        "deleted_stream",
        _delete_stream,
        "checkpoint_root_mismatch",
        r"\(global_seq 1\).*over global_seq 1\.\.6 .*no earlier checkpoint matches the log",
    ),
    (
        "truncated_tail",
        lambda a: a.execute("DELETE FROM events WHERE global_seq > 9"),
        "truncated",
        r"\(global_seq 10\): expected at least 12 events .* found 9 events: 3 missing",
    ),
    (
        "rewritten_after_8",
        lambda a: _rewrite_after(a, 8),
        "checkpoint_root_mismatch",
        r"\(global_seq 7\).*global_seq 1\.\.6 still match .* global_seq 7\.\.12 was changed",
    ),
    (
        "reordered",
        lambda a: _swap(a, 10, 11),
        "checkpoint_root_mismatch",
        r"an event in global_seq 7\.\.12 was changed, inserted, removed or moved",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "what", "match"),
    [pytest.param(t, w, m, id=name) for name, t, w, m in TAMPERING],
)
def test_audit_detects_tampering_against_witnessed_checkpoints(
    led: SqlLedger,
    backend: Backend,
    tamper: Callable[[Any], None],
    what: str,
    match: str,
) -> None:
    fill(led, 6)
    led.sign_checkpoint()
    fill(led, 6, start=6)
    led.sign_checkpoint()
    assert [c.tree_size for c in led.checkpoints()] == [6, 12]
    report = led.audit(require_witnessed=True)
    assert (report.witnessed_size, report.cosigned_size) == (12, 12)
    with backend.attacker() as a:
        tamper(a)
    led.verify()  # every stream's chain still holds: only the checkpoints can tell
    with pytest.raises(IntegrityViolation, match=match) as exc:
        led.audit()
    assert exc.value.what == what


def test_deleted_checkpoint_rows_and_rewritten_events_are_caught_by_the_witness(
    led: SqlLedger, backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> None:
    fill(led, 6)
    led.sign_checkpoint()
    fill(led, 3, start=6)
    led.sign_checkpoint()
    # The insider removes every checkpoint and cosignature, rewrites what they covered, and
    # (without the key) can sign nothing new: the database alone now looks unsigned.
    drop_guards(backend, "checkpoint_notes", "cosignatures")
    backend.sql("DELETE FROM cosignatures")
    backend.sql("DELETE FROM checkpoint_notes")
    with backend.attacker() as a:
        _rewrite_after(a, 2)
    led.verify()
    assert led.checkpoints() == []
    got = WitnessClient(witness).latest(ORIGIN)
    assert got is not None
    with reader(backend, signer, witness) as r:
        with pytest.raises(IntegrityViolation) as exc:
            r.audit(witnessed=[got[0]])
        assert exc.value.what == "checkpoint_missing"
        assert "no such checkpoint in the ledger" in str(exc.value)


def test_a_deleted_middle_checkpoint_breaks_the_chain(
    led: SqlLedger, backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> None:
    for i in range(3):
        fill(led, 3, start=3 * i)
        led.sign_checkpoint()
    drop_guards(backend, "checkpoint_notes", "cosignatures")
    backend.sql("DELETE FROM checkpoint_notes WHERE idx = 1")
    with reader(backend, signer, witness) as r, pytest.raises(IntegrityViolation) as exc:
        r.audit()
    assert exc.value.what == "checkpoint_missing"
    assert "checkpoints 1..1 were deleted" in str(exc.value)


def test_a_tail_cut_below_the_witnessed_size(
    led: SqlLedger, backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> None:
    fill(led, 6)
    led.sign_checkpoint()
    fill(led, 6, start=6)
    led.sign_checkpoint()
    drop_guards(backend, "checkpoint_notes", "cosignatures")
    backend.sql("DELETE FROM cosignatures WHERE idx = 1")
    backend.sql("DELETE FROM checkpoint_notes WHERE idx = 1")
    with backend.attacker() as a:
        a.execute("DELETE FROM events WHERE global_seq > 8")
    got = WitnessClient(witness).latest(ORIGIN)
    assert got is not None and got[0].tree_size == 12
    with reader(backend, signer, witness) as r:
        r.audit()  # the database alone is self-consistent now
        with pytest.raises(IntegrityViolation, match="its newest checkpoints were deleted"):
            r.audit(witnessed=[got[0]])
        with pytest.raises(IntegrityViolation) as exc:
            r.audit(require_witnessed=True)
        assert exc.value.what == "unwitnessed_events"


def test_stored_checkpoint_columns_must_match_the_note(led: SqlLedger, backend: Backend) -> None:
    fill(led, 3)
    led.sign_checkpoint()
    drop_guards(backend, "checkpoint_notes")
    backend.sql("UPDATE checkpoint_notes SET tree_size = 4")
    with pytest.raises(IntegrityViolation, match=r"checkpoint_body_mismatch"):
        led.checkpoints()


# -- export ----------------------------------------------------------------------------------


def test_export_of_one_decision_verifies_offline(
    backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> None:
    with SqlLedger(
        backend.url,
        checkpoint_signer=signer,
        origin=ORIGIN,
        witnesses=[witness],
        checkpoint_every_s=0,
        clock=StepClock(),
    ) as led:
        fill(led, 9)
        led.sign_checkpoint()
        fill(led, 1, start=9)
        doc = led.export(decision_ids=["dec-B"])
        assert led.checkpoints()[-1].tree_size == 10  # signed first: the log had grown
        report = verify_export(dump_export(doc), signer.public_key_raw, witness_keys=[witness.key])
        assert report.decision_ids == ("dec-B",) == report.streams_from_genesis
        assert report.cosigned_by == (witness.key.key_id,)
        assert [c.index for c in report.chain] == [0, 1]
        assert [e["global_seq"] for e in doc["events"]] == [2, 5, 8]
        # since: each stream from its first event at or after that time
        since = led.get_stream("dec-A")[2].at  # global_seq 7
        doc2 = led.export(since=since)
        assert [e["global_seq"] for e in doc2["events"]] == [7, 8, 9, 10]
        assert [c.index for c in verify_export(doc2, signer.public_key_raw).chain] == [0, 1]
        with pytest.raises(ValueError, match=r"no events match"):
            led.export(decision_ids=["nope"])
    stranger = VerifierKey("layer7.local/witness/x", ALG_COSIGNATURE_V1, bytes(32))
    with pytest.raises(IntegrityViolation, match="unwitnessed_events"):
        verify_export(dump_export(doc), signer.public_key_raw, witness_keys=[stranger])
    text = dump_export(doc)
    body_at = text.index(b'\\"result\\":\\"pass\\"')
    rng = random.Random(3)
    keys = [witness.key]
    proven = verify_export(text, signer.public_key_raw, witness_keys=keys)
    for pos in [body_at + 12, *rng.sample(range(len(text)), 60)]:
        altered = bytearray(text)
        altered[pos] ^= 0x01
        if bytes(altered) == text:
            continue
        try:
            got = verify_export(bytes(altered), signer.public_key_raw, witness_keys=keys)
        except (IntegrityViolation, ProofInvalid):
            continue
        # A flipped byte may only be inert where it changes nothing proven: JSON layout, or
        # the cosignature line of a witness nobody pinned (C2SP: unknown signatures ignored).
        assert (got.checkpoint, got.chain, got.cosigned_by, got.decision_ids) == (
            proven.checkpoint,
            proven.chain,
            proven.cosigned_by,
            proven.decision_ids,
        ), f"byte {pos} went unnoticed"
        assert json.loads(bytes(altered))["events"] == doc["events"]
    with pytest.raises(IntegrityViolation, match=r"hash_mismatch"):
        verify_export(text.replace(b'\\"pass\\"', b'\\"pasS\\"', 1), signer.public_key_raw)


# -- query -----------------------------------------------------------------------------------


def test_query_filters_in_global_order(backend: Backend) -> None:
    with SqlLedger(backend.url, clock=StepClock()) as led:
        led.append([ev("d1", 0), ev("d2", 0, kind=EventType.RISK_SCORED)])
        led.append([ev("d1", 1, kind=EventType.RISK_SCORED)])
        led.append([ev("d3", 0)])
        every = list(led.iter_events())
        assert [e.global_seq for e in led.query()] == [1, 2, 3, 4]
        assert [e.global_seq for e in led.query(decision_id="d1")] == [1, 3]
        assert [e.global_seq for e in led.query(event_type="risk.scored")] == [2, 3]
        assert [e.global_seq for e in led.query(event_type=EventType.RISK_SCORED)] == [2, 3]
        assert led.query(actor="bob") == []
        assert len(led.query(actor="alice")) == 4
        t2, t3 = every[2].at, every[3].at  # batches 2 and 3 were timed 1 s apart
        assert [e.global_seq for e in led.query(since=t2)] == [3, 4]
        assert [e.global_seq for e in led.query(until=t2)] == [1, 2]
        assert [e.global_seq for e in led.query(since=t2, until=t3)] == [3]
        # another spelling of the same instant compares as a time, not as a string
        whole = t2.replace(".000000Z", "+00:00")
        assert [e.global_seq for e in led.query(since=whole)] == [3, 4]
        assert [e.global_seq for e in led.query(after_global_seq=1, limit=2)] == [2, 3]
        assert led.query(decision_id="d1", event_type="risk.scored") == [every[2]]
        with pytest.raises(ValueError, match=r"limit must be at least 1"):
            led.query(limit=0)
        with pytest.raises(ValueError, match=r"no time zone"):
            led.query(since="2026-11-25T20:00:00")


def test_query_limit_is_capped(tmp_path: Path) -> None:
    with SqlLedger(f"sqlite:///{tmp_path / 'l.sqlite'}") as led:
        for i in range(0, 1100, 100):
            led.append([ev(f"d{j}") for j in range(i, i + 100)])
        assert len(led.query(limit=5000)) == 1000


# -- background threads ----------------------------------------------------------------------


def test_checkpointer_signs_after_n_events(led: SqlLedger) -> None:
    cpr = Checkpointer(led, every_s=3600, every_events=5, poll_s=0.01)
    cpr.start()
    try:
        fill(led, 3)
        time.sleep(0.2)
        assert led.checkpoints() == []  # neither threshold reached
        fill(led, 3, start=3)
        _wait_until(lambda: bool(led.checkpoints()), "a checkpoint")
        assert led.checkpoints()[-1].tree_size == 6
    finally:
        led.append([ev("dec-A", 99)])
        cpr.stop()  # signs the last one on the way out
    assert [c.tree_size for c in led.checkpoints()] == [6, 7]
    assert cpr.signed == 2


def test_checkpointer_signs_after_every_s(led: SqlLedger) -> None:
    cpr = Checkpointer(led, every_s=0.05, every_events=1000, poll_s=0.01)
    cpr.start()
    try:
        led.append([ev("d1")])
        _wait_until(lambda: bool(led.checkpoints()), "a timed checkpoint")
    finally:
        cpr.stop(final=False)


def test_integrity_monitor_reports_tampering_once(
    led: SqlLedger, backend: Backend, signer: Ed25519CheckpointSigner
) -> None:
    failures: list[IntegrityViolation] = []
    mon = IntegrityMonitor(
        led, every_s=0.02, on_failure=failures.append, public_key=signer.public_key_raw
    )
    fill(led, 6)
    assert mon.check_now() is None  # no checkpoint yet: verify() alone, which passes
    led.sign_checkpoint()
    assert mon.check_now() is None
    with backend.attacker() as a:
        a.execute("DELETE FROM events WHERE global_seq > 4")
    mon.start()
    try:
        _wait_until(lambda: bool(failures), "the monitor to report")
        time.sleep(0.1)  # several more ticks: the same kind of failure is not re-reported
    finally:
        mon.stop()
    assert [f.what for f in failures] == ["truncated"]
    (anomaly,) = led.get_stream(MONITOR_STREAM)
    assert anomaly.event_type == "anomaly.detected"
    assert anomaly.payload["kind"] == "ledger_integrity_failed"
    assert anomaly.payload["what"] == "truncated"


def test_the_writer_checkpoints_continuously_and_each_is_cosigned(
    backend: Backend, signer: Ed25519CheckpointSigner, witness: WitnessEndpoint
) -> None:
    with SqlLedger(
        backend.url,
        checkpoint_signer=signer,
        origin=ORIGIN,
        witnesses=[witness],
        checkpoint_every_s=0.05,
        checkpoint_every_events=5,
    ) as led:
        led.append([ev("d1")])
        _wait_until(lambda: bool(led.checkpoints()), "a checkpoint within every_s")
        fill(led, 6, start=1)
        _wait_until(lambda: led.checkpoints()[-1].tree_size == 7, "a checkpoint of all 7")
        _wait_until(
            lambda: max(led.cosignatures(), default=-1) == led.checkpoints()[-1].index,
            "the newest checkpoint cosigned",
        )
        led.append([ev("d2")])
    with reader(backend, signer, witness) as r:  # close() signed (and had cosigned) the last
        report = r.audit(require_witnessed=True)
    assert (report.events, report.cosigned_size) == (8, 8)


def _edit_after_checkpoint(backend: Backend) -> None:
    with backend.attacker() as a:
        _rewrite_after(a, 8)


def _cut_below_witnessed(backend: Backend) -> None:
    drop_guards(backend, "checkpoint_notes", "cosignatures")
    backend.sql("DELETE FROM cosignatures WHERE idx = 1")
    backend.sql("DELETE FROM checkpoint_notes WHERE idx = 1")
    with backend.attacker() as a:
        a.execute("DELETE FROM events WHERE global_seq > 8")


def _delete_checkpoints_and_rewrite(backend: Backend) -> None:
    drop_guards(backend, "checkpoint_notes", "cosignatures")
    backend.sql("DELETE FROM cosignatures")
    backend.sql("DELETE FROM checkpoint_notes")
    with backend.attacker() as a:
        _rewrite_after(a, 2)


INSIDER: list[tuple[str, Callable[[Backend], None], str]] = [
    ("edit_after_checkpoint", _edit_after_checkpoint, "checkpoint_root_mismatch"),
    ("cut_below_witnessed", _cut_below_witnessed, "checkpoint_missing"),
    ("delete_checkpoints_and_rewrite", _delete_checkpoints_and_rewrite, "checkpoint_missing"),
]


@pytest.mark.parametrize(
    ("attack", "what"), [pytest.param(a, w, id=name) for name, a, w in INSIDER]
)
@pytest.mark.parametrize("remembers", [True, False], ids=["monitor-ran-before", "fresh-monitor"])
def test_the_monitor_with_public_keys_only_catches_the_insider(
    led: SqlLedger,
    backend: Backend,
    signer: Ed25519CheckpointSigner,
    witness: WitnessEndpoint,
    attack: Callable[[Backend], None],
    what: str,
    remembers: bool,
) -> None:
    fill(led, 6)
    led.sign_checkpoint()
    fill(led, 6, start=6)
    led.sign_checkpoint()
    failures: list[IntegrityViolation] = []
    # The monitor's ledger has no signer and no key of its own: the monitor brings the
    # public keys (the log's and the witness's).
    with SqlLedger(backend.url, create=False, checkpoint_every_s=0) as plain:
        mon = IntegrityMonitor(
            plain,
            every_s=0.02,
            on_failure=failures.append,
            public_key=signer.public_key_raw,
            origin=ORIGIN,
            witnesses=[witness],
        )
        if remembers:
            assert mon.check_now() is None
        attack(backend)
        plain.verify()  # every stream still chains: only the signed evidence tells
        mon.start()
        try:
            _wait_until(lambda: bool(failures), "the monitor to report")
        finally:
            mon.stop()
        assert failures[0].what == what
        (anomaly,) = plain.get_stream(MONITOR_STREAM)
        assert anomaly.payload["what"] == what
        assert mon.checks >= 1


def test_a_monitor_that_cannot_run_degrades_and_recovers(
    led: SqlLedger, signer: Ed25519CheckpointSigner
) -> None:
    fill(led, 3)
    led.sign_checkpoint()
    now = [100.0]
    failures: list[IntegrityViolation] = []
    mon = IntegrityMonitor(
        led,
        every_s=10,
        on_failure=failures.append,
        degraded_after_s=30,
        clock=lambda: now[0],
    )
    assert mon.check_now() is None  # signed checkpoints, but no public key: cannot run
    assert mon.degraded() is None  # not for long yet
    now[0] = 131.0
    why = mon.degraded()
    assert why is not None
    assert "has not completed a check for 31s (bound 30s)" in why
    assert "no checkpoint public key" in why
    mon.public_key = signer.public_key_raw
    assert mon.check_now() is None
    assert mon.degraded() is None
    assert failures == []
