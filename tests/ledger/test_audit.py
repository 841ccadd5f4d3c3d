"""Auditing the global log against the signed, chained, cosigned checkpoints.

Each tampering below keeps every stream's chain valid (``verify_rows`` passes),
so only the signed Merkle checkpoints can catch it: a deleted whole stream with
global_seq renumbered, a cut tail, a history rewritten with recomputed chain
hashes, two events of different streams swapped in global order, and a rewrite
re-signed with the checkpoint key but contradicting earlier witnessed heads. Then the
chain itself (a deleted or replaced checkpoint), witness cosignatures, a witness's view
of a longer or different log, and ``require_witnessed``.

Logs are built in memory with ``canonical_body`` / ``chain_hash``: three streams
dealt round-robin, so global_seq 1, 4, 7, ... is dec-A, 2, 5, 8, ... is dec-B.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import (
    GENESIS_HASH,
    EventType,
    IntegrityViolation,
    NewEvent,
    SqlLedger,
    VerifyRow,
    canonical_body,
    chain_hash,
    verify_rows,
)
from ledger.audit import verify_log
from ledger.checkpoint import Checkpoint, Ed25519CheckpointSigner, sign_checkpoint
from ledger.merkle import MerkleTree, ProofInvalid
from ledger.note import ALG_COSIGNATURE_V1, Cosignature, VerifierKey, cosign

AT = "2026-11-25T20:44:12.123456Z"
NOW = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)
STREAMS = ("dec-A", "dec-B", "dec-C")
ORIGIN = "layer7.local/ledger/test"
WITNESS = "layer7.local/witness/test"


def make_log(order: Sequence[str], *, tag: str = "orig") -> list[VerifyRow]:
    """Rows for events of the given decision ids, in this global order."""
    return rechain(
        [
            (did, {"gate": f"g{g}", "result": "pass", "tag": tag})
            for g, did in enumerate(order, start=1)
        ]
    )


def rechain(events: Sequence[tuple[str, Mapping[str, object]]]) -> list[VerifyRow]:
    """Honest rows (sequence, prev_hash, hash, global_seq all recomputed) for these events."""
    heads: dict[str, tuple[int, str]] = {}
    rows: list[VerifyRow] = []
    for g, (did, payload) in enumerate(events, start=1):
        seq, prev = heads.get(did, (0, GENESIS_HASH))
        eid = f"ev-{did}-{seq + 1}-{payload.get('tag')}"
        body = canonical_body(
            event_id=eid,
            decision_id=did,
            event_type="policy.gate",
            policy_version="rev-1",
            actor="alice",
            payload=payload,
            unique_key=None,
            at=AT,
        )
        h = chain_hash(prev, body)  # type: ignore[arg-type]
        rows.append(
            VerifyRow(
                g, did, seq + 1, eid, "policy.gate", AT, "alice", "rev-1", None, prev, h, body
            )
        )
        heads[did] = (seq + 1, h)
    return rows


def renumber(rows: Sequence[VerifyRow]) -> list[VerifyRow]:
    return [r._replace(global_seq=g) for g, r in enumerate(rows, start=1)]


def checkpoints_for(
    rows: Sequence[tuple[Any, ...]],
    sizes: Sequence[int],
    signer: Ed25519CheckpointSigner,
    *,
    prev: Checkpoint | None = None,
) -> list[Checkpoint]:
    """A chain of checkpoints at ``sizes`` over ``rows``, continuing after ``prev``."""
    tree = MerkleTree.from_event_hashes(VerifyRow(*r).hash for r in rows)
    out: list[Checkpoint] = []
    for i, s in enumerate(sizes):
        prev = sign_checkpoint(
            s, tree.root(s), signer, NOW + timedelta(minutes=i), origin=ORIGIN, prev=prev
        )
        out.append(prev)
    return out


ORDER = [STREAMS[i % 3] for i in range(15)]  # 5 events per stream, interleaved


@pytest.fixture
def signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


@pytest.fixture
def log() -> list[VerifyRow]:
    return make_log(ORDER)


@pytest.fixture
def witnessed(log: list[VerifyRow], signer: Ed25519CheckpointSigner) -> list[Checkpoint]:
    """The chain of checkpoints 0, 1, 2 at sizes 1, 6 and 15 (through their note text)."""
    return [Checkpoint.decode(c.note) for c in checkpoints_for(log, (1, 6, 15), signer)]


@pytest.fixture
def witness_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def wkey(witness_key: Ed25519PrivateKey) -> VerifierKey:
    return VerifierKey.for_private(WITNESS, ALG_COSIGNATURE_V1, witness_key)


def cosigs(cps: Sequence[Checkpoint], key: Ed25519PrivateKey) -> dict[int, list[Cosignature]]:
    return {c.index: [cosign(c.body, WITNESS, key, 1_700_000_000 + c.index)] for c in cps}


def test_untampered_log_passes(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    report = verify_log(log, witnessed, signer.public_key_raw)
    assert (report.events, report.streams, report.checkpoints) == (15, 3, 3)
    assert report.witnessed_size == 15
    assert report.witnessed_root == witnessed[-1].root_hash
    assert report.unwitnessed_events == 0
    assert report.head_hash == log[-1].hash
    assert report.key_id == witnessed[-1].key_id
    assert report.key_id.startswith(ORIGIN + "+")


def test_events_after_the_newest_checkpoint_are_counted(
    witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    longer = make_log([*ORDER, "dec-D", "dec-A"])
    assert verify_log(longer, witnessed, signer.public_key_raw).unwitnessed_events == 2


def test_delete_whole_stream_and_renumber(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    tampered = renumber([r for r in log if r.decision_id != "dec-B"])
    verify_rows(tampered)  # invisible to the per-stream chains
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(tampered, witnessed, signer.public_key_raw)
    e = exc.value
    assert e.what == "checkpoint_root_mismatch"
    assert (e.decision_id, e.global_seq) == ("-", 2)  # global_seq 1 still matches checkpoint 1
    assert "global_seq 2..6" in str(e)
    assert witnessed[1].root_hash in str(e)


def test_delete_whole_stream_with_only_the_final_checkpoint(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    tampered = renumber([r for r in log if r.decision_id != "dec-B"])
    only = checkpoints_for(log, (15,), signer)
    with pytest.raises(IntegrityViolation, match=r"\(truncated\).*5 missing") as exc:
        verify_log(tampered, only, signer.public_key_raw)
    assert exc.value.global_seq == 11


def test_truncated_tail(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    tampered = log[:12]
    verify_rows(tampered)
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(tampered, witnessed, signer.public_key_raw)
    e = exc.value
    assert e.what == "truncated"
    assert e.global_seq == 13
    assert "at least 15 events" in e.expected
    assert "12 events: 3 missing" in e.actual
    assert "global_seq 1..6 still match" in e.actual


def test_rewrite_after_event_n_with_recomputed_hashes(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    n = 7
    events = [
        (
            r.decision_id,
            {
                "gate": f"g{r.global_seq}",
                "result": "pass" if r.global_seq <= n else "fail",
                "tag": "orig",
            },
        )
        for r in log
    ]
    tampered = rechain(events)
    assert tampered[:n] == log[:n]
    assert tampered[n].hash != log[n].hash
    verify_rows(tampered)
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(tampered, witnessed, signer.public_key_raw)
    e = exc.value
    assert e.what == "checkpoint_root_mismatch"
    assert e.global_seq == 7  # checkpoint 6 still matches, so the change is in 7..15
    assert "global_seq 7..15" in e.actual
    assert e.expected.startswith(f"root {witnessed[2].root_hash} over global_seq 1..15")


def test_reorder_two_global_events(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    swapped = list(log)
    swapped[7], swapped[8] = swapped[8], swapped[7]  # dec-B #3 and dec-C #3
    assert swapped[7].decision_id != swapped[8].decision_id
    tampered = renumber(swapped)
    verify_rows(tampered)  # each stream is still in order
    with pytest.raises(IntegrityViolation, match=r"checkpoint_root_mismatch.*global_seq 7\.\.15"):
        verify_log(tampered, witnessed, signer.public_key_raw)


def test_rewrite_resigned_with_the_key_contradicts_witnessed_heads(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    # The attacker also holds the checkpoint key: rewrites from global_seq 3 and signs a
    # fresh head for the new history. The witness still has the old heads for 1 and 6.
    events = [
        (
            r.decision_id,
            {
                "gate": "x" if r.global_seq >= 3 else f"g{r.global_seq}",
                "result": "pass",
                "tag": "orig",
            },
        )
        for r in log
    ]
    tampered = rechain(events)
    resigned = checkpoints_for(tampered, (15,), signer, prev=witnessed[1])[0]
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(tampered, [*witnessed[:2], resigned], signer.public_key_raw)
    e = exc.value
    assert e.what == "checkpoint_inconsistent"
    assert e.global_seq == 2
    assert "which matches the log" in e.expected


def test_forged_checkpoint_signature(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    other = Ed25519CheckpointSigner.generate()
    forged = checkpoints_for(log, (15,), other, prev=witnessed[1])[0]
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(log, [*witnessed[:2], forged], signer.public_key_raw)
    assert exc.value.what == "checkpoint_signature"
    assert exc.value.global_seq == 15


def test_a_deleted_checkpoint_breaks_the_chain(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(log, [witnessed[0], witnessed[2]], signer.public_key_raw)
    assert exc.value.what == "checkpoint_missing"
    assert "checkpoints 1..1 were deleted" in exc.value.actual
    with pytest.raises(IntegrityViolation, match=r"checkpoint_missing.*0\.\.0 were deleted"):
        verify_log(log, witnessed[1:], signer.public_key_raw)


def test_a_replaced_checkpoint_breaks_the_chain(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    # Checkpoint 1 re-signed for another size: checkpoint 2 still names the original.
    other = checkpoints_for(log, (7,), signer, prev=witnessed[0])[0]
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(log, [witnessed[0], other, witnessed[2]], signer.public_key_raw)
    assert exc.value.what == "checkpoint_chain_broken"
    assert "the predecessor was replaced" in exc.value.actual


def test_checkpoints_going_backwards(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    with pytest.raises(IntegrityViolation, match="checkpoint_missing|checkpoint_chain_broken"):
        verify_log(log, [witnessed[0], witnessed[2], witnessed[1]], signer.public_key_raw)


def test_stream_tampering_is_still_named_by_verify_rows(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    edited = list(log)
    edited[4] = edited[4]._replace(body=edited[4].body.replace(b"pass", b"fail"))
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(edited, witnessed, signer.public_key_raw)
    assert (exc.value.what, exc.value.decision_id, exc.value.global_seq) == (
        "hash_mismatch",
        "dec-B",
        5,
    )


def test_an_audit_needs_a_checkpoint(log: list[VerifyRow], signer: Ed25519CheckpointSigner) -> None:
    with pytest.raises(ProofInvalid, match="at least one signed checkpoint"):
        verify_log(log, [], signer.public_key_raw)


def test_audit_of_a_sqlite_ledger(tmp_path: Path, signer: Ed25519CheckpointSigner) -> None:
    db = tmp_path / "ledger.sqlite"
    with SqlLedger(f"sqlite:///{db}", clock=lambda: NOW) as led:
        for did in STREAMS:
            led.append(
                [NewEvent(did, EventType.POLICY_GATE, "alice", "rev-1", {"i": i}) for i in range(3)]
            )
    con = sqlite3.connect(db)
    rows = con.execute(
        "SELECT global_seq, decision_id, sequence, event_id, event_type, at, actor, "
        "policy_version, unique_key, prev_hash, hash, CAST(body AS BLOB) FROM events "
        "ORDER BY global_seq"
    ).fetchall()
    cps = checkpoints_for(rows, (4, 9), signer)  # type: ignore[arg-type]
    assert verify_log(rows, cps, signer.public_key_raw).events == 9
    # Delete the middle stream (g 4..6) and renumber, as someone with the file could.
    tampered = [(g, *r[1:]) for g, r in enumerate((r for r in rows if r[1] != "dec-B"), 1)]
    with pytest.raises(IntegrityViolation, match=r"checkpoint_root_mismatch.*global_seq 1\.\.4"):
        verify_log(tampered, cps, signer.public_key_raw)
    con.close()


def test_cosignatures_count_and_a_bad_one_fails(
    log: list[VerifyRow],
    witnessed: list[Checkpoint],
    signer: Ed25519CheckpointSigner,
    witness_key: Ed25519PrivateKey,
    wkey: VerifierKey,
) -> None:
    cs = cosigs(witnessed[:2], witness_key)
    report = verify_log(log, witnessed, signer.public_key_raw, cosignatures=cs, witness_keys=[wkey])
    assert (report.cosigned_size, report.cosignatures) == (6, 2)
    # A cosignature of checkpoint 0 moved to checkpoint 1 does not verify there.
    moved = {1: cs[0]}
    with pytest.raises(IntegrityViolation, match="cosignature_invalid") as exc:
        verify_log(log, witnessed, signer.public_key_raw, cosignatures=moved, witness_keys=[wkey])
    assert exc.value.global_seq == 6


def test_require_witnessed_fails_beyond_the_newest_cosigned_checkpoint(
    log: list[VerifyRow],
    witnessed: list[Checkpoint],
    signer: Ed25519CheckpointSigner,
    witness_key: Ed25519PrivateKey,
    wkey: VerifierKey,
) -> None:
    cs = cosigs(witnessed[:2], witness_key)
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(
            log,
            witnessed,
            signer.public_key_raw,
            cosignatures=cs,
            witness_keys=[wkey],
            require_witnessed=True,
        )
    assert exc.value.what == "unwitnessed_events"
    assert exc.value.global_seq == 7
    assert "9 events lie beyond it" in exc.value.actual
    everything = cosigs(witnessed, witness_key)
    report = verify_log(
        log,
        witnessed,
        signer.public_key_raw,
        cosignatures=everything,
        witness_keys=[wkey],
        require_witnessed=True,
    )
    assert report.cosigned_size == 15


def test_a_tail_cut_below_the_witnessed_size_is_truncation(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    # The insider cut the events AND the checkpoints past size 6; the witness still has 15.
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(log[:6], witnessed[:2], signer.public_key_raw, witnessed=[witnessed[2]])
    assert exc.value.what == "checkpoint_missing"
    assert "its newest checkpoints were deleted" in exc.value.actual
    # Only the events cut (the chain kept): truncated below the witnessed size.
    with pytest.raises(IntegrityViolation, match=r"\(truncated\).*at least 15 events"):
        verify_log(log[:12], witnessed, signer.public_key_raw, witnessed=[witnessed[2]])


def test_a_fork_against_the_witnessed_checkpoint(
    log: list[VerifyRow], witnessed: list[Checkpoint], signer: Ed25519CheckpointSigner
) -> None:
    # The key holder rewrote history and re-signed a chain from scratch; the witness kept
    # the original checkpoint 2.
    forked_log = make_log(ORDER, tag="forked")
    forked = checkpoints_for(forked_log, (1, 6, 15), signer)
    with pytest.raises(IntegrityViolation) as exc:
        verify_log(forked_log, forked, signer.public_key_raw, witnessed=[witnessed[2]])
    assert exc.value.what == "witness_fork"
    assert "(replaced)" in exc.value.actual
    # Even with the chain cut back to before the witnessed one, the witness's head wins.
    with pytest.raises(IntegrityViolation) as exc2:
        verify_log(forked_log, forked[:2], signer.public_key_raw, witnessed=[witnessed[2]])
    assert exc2.value.what in {"checkpoint_missing", "checkpoint_inconsistent", "witness_fork"}
