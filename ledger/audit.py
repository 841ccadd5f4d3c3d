"""Audit the whole global log against signed checkpoints: a pure function, no database.

``verify_rows`` (``ledger.verify``) proves each stream's chain and a gap-free
global sequence, but rows alone cannot show a deleted *whole* stream (with
global_seq renumbered), a truncated tail, events reordered between streams, or a
history rewritten with recomputed chain hashes. A signed checkpoint can: it fixes
the Merkle root (``ledger.merkle``) over the event hashes of global_seq
1..tree_size. ``verify_log``, in order:

1. every checkpoint's signature verifies                    -> ``checkpoint_signature``
2. checkpoint tree sizes never go backwards, and one size
   never has two roots                                      -> ``checkpoint_inconsistent``
3. ``verify_rows`` over all rows (stream chains, global sequence, bodies)
                                                           -> its own ``what`` values
4. for each checkpoint, oldest first:
   a. the log holds at least ``tree_size`` events           -> ``truncated``
   b. the Merkle root of the first ``tree_size`` event hashes
      is the signed root                                    -> ``checkpoint_root_mismatch``,
      or ``checkpoint_inconsistent`` when a *later* checkpoint does match the log (the
      signed heads disagree with each other: rewritten and re-signed, or a forked signer)
   c. a consistency proof computed from the log's leaves, from the previous checkpoint
      to this one, verifies against both signed roots      -> ``checkpoint_inconsistent``

Each violation names where: ``global_seq`` is the first event that may differ,
bounded below by the newest checkpoint that still matches the log (events up to it
are proven intact). No event is implicated by a checkpoint failure itself, so
``decision_id`` is ``-`` and ``sequence`` is 0 there.

Events after the newest checkpoint are verified by step 3 only; the report counts
them as ``unwitnessed_events`` so callers can sign a fresh checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ledger.checkpoint import Checkpoint, check_order, verify_checkpoint
from ledger.errors import IntegrityViolation
from ledger.interface import EventHash, ProgressFn
from ledger.merkle import MerkleTree, ProofInvalid, verify_consistency
from ledger.verify import verify_rows

__all__ = ["AuditReport", "verify_log"]

_HASH_COLUMN = 10  # VerifyRow.hash


@dataclass(frozen=True)
class AuditReport:
    """Result of an audit that passed (a failure raises IntegrityViolation)."""

    events: int
    streams: int
    head_hash: EventHash
    checkpoints: int
    witnessed_size: int
    """tree_size of the newest checkpoint: events 1..witnessed_size are signed."""
    witnessed_root: str
    unwitnessed_events: int
    key_id: str


def _violation(what: str, global_seq: int, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what, decision_id="-", sequence=0, global_seq=global_seq, expected=expected, actual=actual
    )


def _intact(good: Checkpoint | None) -> str:
    if good is None:
        return "no earlier checkpoint matches the log"
    return f"global_seq 1..{good.tree_size} still match the checkpoint of {good.timestamp}"


def verify_log(
    rows: Iterable[tuple[Any, ...]],
    checkpoints: Sequence[Checkpoint],
    public_key_raw: bytes,
    *,
    key_id: str | None = None,
    total: int | None = None,
    progress: ProgressFn | None = None,
) -> AuditReport:
    """Verify ``rows`` (``VerifyRow`` tuples in global order) against signed ``checkpoints``
    (oldest first, e.g. ``read_witness``). Raises IntegrityViolation at the first failure,
    ProofInvalid if no checkpoint is given (an audit without one cannot see truncation)."""
    if not checkpoints:
        raise ProofInvalid("an audit needs at least one signed checkpoint; none was given")
    # 1. Signatures.
    for cp in checkpoints:
        try:
            verify_checkpoint(cp, public_key_raw, key_id=key_id)
        except ProofInvalid as e:
            raise _violation(
                "checkpoint_signature",
                cp.tree_size,
                f"a valid signature by the checkpoint key over tree_size {cp.tree_size} "
                f"at {cp.timestamp}",
                str(e),
            ) from e
    # 2. Order of the signed heads.
    for prev, cp in pairwise(checkpoints):
        check_order(prev, cp, "checkpoint list")
    # 3. Streams and the global sequence, collecting the event hashes on the way.
    hashes: list[str] = []

    def tap(it: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        for row in it:
            hashes.append(row[_HASH_COLUMN])
            yield row

    report = verify_rows(tap(rows), total=total, progress=progress)
    # 4. Each checkpoint against the Merkle tree of the log.
    tree = MerkleTree.from_event_hashes(hashes)
    n = tree.size
    good: Checkpoint | None = None
    for i, cp in enumerate(checkpoints):
        first_unproven = (good.tree_size if good else 0) + 1
        # 4a.
        if cp.tree_size > n:
            raise _violation(
                "truncated",
                n + 1,
                f"at least {cp.tree_size} events (signed checkpoint of {cp.timestamp})",
                f"{n} events: {cp.tree_size - n} missing; {_intact(good)}, so events were "
                f"removed from global_seq {first_unproven} on (deleted stream or cut tail)",
            )
        # 4b.
        computed = tree.root(cp.tree_size)
        if computed != cp.root:
            later = next(
                (
                    c
                    for c in checkpoints[i + 1 :]
                    if c.tree_size <= n and tree.root(c.tree_size) == c.root
                ),
                None,
            )
            if later is not None:
                proof = tree.consistency_proof(cp.tree_size, later.tree_size)
                try:
                    verify_consistency(cp.tree_size, later.tree_size, cp.root, later.root, proof)
                except ProofInvalid as e:
                    raise _violation(
                        "checkpoint_inconsistent",
                        first_unproven,
                        f"checkpoint of {cp.timestamp} (tree_size {cp.tree_size}, root "
                        f"{cp.root_hash}) to be a prefix of the checkpoint of "
                        f"{later.timestamp} (tree_size {later.tree_size}), which matches the log",
                        f"no consistency: {e}",
                    ) from e
            raise _violation(
                "checkpoint_root_mismatch",
                first_unproven,
                f"root {cp.root_hash} over global_seq 1..{cp.tree_size} "
                f"(checkpoint of {cp.timestamp})",
                f"root {computed.hex()}; {_intact(good)}, so an event in global_seq "
                f"{first_unproven}..{cp.tree_size} was changed, inserted, removed or moved",
            )
        # 4c.
        if good is not None:
            proof = tree.consistency_proof(good.tree_size, cp.tree_size)
            try:
                verify_consistency(good.tree_size, cp.tree_size, good.root, cp.root, proof)
            except ProofInvalid as e:  # pragma: no cover - both roots matched the log above
                raise _violation(
                    "checkpoint_inconsistent",
                    first_unproven,
                    f"checkpoint of {good.timestamp} to be a prefix of that of {cp.timestamp}",
                    str(e),
                ) from e
        good = cp
    newest = checkpoints[-1]
    return AuditReport(
        events=report.events,
        streams=report.streams,
        head_hash=report.head_hash,
        checkpoints=len(checkpoints),
        witnessed_size=newest.tree_size,
        witnessed_root=newest.root_hash,
        unwitnessed_events=n - newest.tree_size,
        key_id=newest.key_id,
    )
