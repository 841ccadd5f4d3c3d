"""Audit the whole global log against signed, chained, cosigned checkpoints: a pure
function, no database.

``verify_rows`` (``ledger.verify``) proves each stream's chain and a gap-free
global sequence, but rows alone cannot show a deleted *whole* stream (with
global_seq renumbered), a truncated tail, events reordered between streams, or a
history rewritten with recomputed chain hashes. A signed checkpoint can: it fixes
the Merkle root (``ledger.merkle``) over the event hashes of global_seq
1..tree_size; its ``l7.prev`` line chains it to the one before, and a witness's
cosignature puts it beyond the database's reach. ``verify_log``, in order:

1. every checkpoint's note signature verifies with the log key -> ``checkpoint_signature``
2. the checkpoints form one chain from index 0: no index missing, each naming its
   predecessor, sizes never going backwards            -> ``checkpoint_missing``,
                                                          ``checkpoint_chain_broken``,
                                                          ``checkpoint_inconsistent``
3. every stored cosignature by a pinned witness key verifies over its checkpoint
                                                        -> ``cosignature_invalid``
4. every checkpoint known from outside the database (a witness's latest, one an
   earlier audit saw) is signed by the log and, where the chain has its index, is the
   same checkpoint; one newer than the chain means the chain lost its tail
                                                        -> ``checkpoint_signature``,
                                                           ``checkpoint_missing``
5. ``verify_rows`` over all rows (stream chains, global sequence, bodies)
                                                        -> its own ``what`` values
6. for each checkpoint (chain and outside ones), oldest first:
   a. the log holds at least ``tree_size`` events       -> ``truncated`` (for a witnessed
      one: the tail was cut below the witnessed size)
   b. the Merkle root of the first ``tree_size`` event hashes
      is the signed root                                -> ``checkpoint_root_mismatch``
      (``witness_fork`` for an outside checkpoint), or ``checkpoint_inconsistent`` when a
      *later* checkpoint does match the log
   c. a consistency proof computed from the log's leaves, from the previous checkpoint
      to this one, verifies against both signed roots -> ``checkpoint_inconsistent``
7. with ``require_witnessed``: some pinned witness cosigned a checkpoint covering every
   event                                                -> ``unwitnessed_events``

Each violation names where: ``global_seq`` is the first event that may differ,
bounded below by the newest checkpoint that still matches the log (events up to it
are proven intact). No event is implicated by a checkpoint failure itself, so
``decision_id`` is ``-`` and ``sequence`` is 0 there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.checkpoint import Checkpoint, verify_chain, verify_checkpoint
from ledger.errors import IntegrityViolation
from ledger.interface import EventHash, ProgressFn
from ledger.merkle import MerkleTree, ProofInvalid, verify_consistency
from ledger.note import Cosignature, VerifierKey, verify_cosignature
from ledger.verify import verify_rows

__all__ = [
    "AuditReport",
    "newest_cosigned",
    "verify_checkpoint_chain",
    "verify_cosignatures",
    "verify_log",
]

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
    cosigned_size: int = 0
    """tree_size of the newest checkpoint a pinned witness cosigned (0: none)."""
    cosignatures: int = 0
    """Cosignatures by pinned witness keys that verified."""


def _violation(what: str, global_seq: int, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what, decision_id="-", sequence=0, global_seq=global_seq, expected=expected, actual=actual
    )


def _intact(good: Checkpoint | None) -> str:
    if good is None:
        return "no earlier checkpoint matches the log"
    return f"global_seq 1..{good.tree_size} still match the checkpoint of {good.timestamp}"


def verify_cosignatures(
    checkpoints: Sequence[Checkpoint],
    cosignatures: Mapping[int, Sequence[Cosignature]],
    witness_keys: Sequence[VerifierKey],
) -> dict[int, list[Cosignature]]:
    """The cosignatures by pinned ``witness_keys``, verified, per checkpoint index.

    A cosignature by a pinned key that does not verify raises ``cosignature_invalid``;
    one by an unknown key is ignored (C2SP: clients ignore unknown signatures).
    """
    keys = {(k.name, k.key_hash): k for k in witness_keys}
    by_index = {cp.index: cp for cp in checkpoints}
    out: dict[int, list[Cosignature]] = {}
    for index, cosigs in cosignatures.items():
        cp = by_index.get(index)
        for c in cosigs:
            key = keys.get((c.name, c.key_hash))
            if key is None:
                continue
            if cp is None:
                continue  # a cosignature of a checkpoint not in the chain: step 2 reports
            try:
                verify_cosignature(cp.body, c, key)
            except ProofInvalid as e:
                raise _violation(
                    "cosignature_invalid",
                    cp.tree_size,
                    f"a valid cosignature by witness {key.key_id} over checkpoint {cp.index} "
                    f"(tree_size {cp.tree_size})",
                    str(e),
                ) from e
            out.setdefault(index, []).append(c)
    return out


def newest_cosigned(
    checkpoints: Sequence[Checkpoint], verified: Mapping[int, Sequence[Cosignature]]
) -> Checkpoint | None:
    """The newest checkpoint with at least one verified cosignature."""
    return next((cp for cp in reversed(checkpoints) if verified.get(cp.index)), None)


def _check_known(
    chain: Sequence[Checkpoint], known: Sequence[Checkpoint], witnessed: Sequence[Checkpoint]
) -> list[Checkpoint]:
    """Step 4: checkpoints known from outside; returns those the chain does not hold."""
    by_index = {cp.index: cp for cp in chain}
    newest = chain[-1] if chain else None
    extra: list[Checkpoint] = []
    for k in known:
        mine = by_index.get(k.index)
        if mine is not None:
            if mine != k:
                raise _violation(
                    "witness_fork" if k in witnessed else "checkpoint_chain_broken",
                    k.tree_size,
                    f"checkpoint {k.index} as witnessed: tree_size {k.tree_size}, root "
                    f"{k.root_hash}, {k.timestamp}",
                    f"the stored checkpoint {mine.index}: tree_size {mine.tree_size}, root "
                    f"{mine.root_hash}, {mine.timestamp} (replaced)",
                )
            continue
        if newest is None or k.index > newest.index:
            raise _violation(
                "checkpoint_missing",
                k.tree_size,
                f"checkpoint {k.index} (tree_size {k.tree_size}, {k.timestamp}), which a "
                "witness cosigned or an earlier audit saw",
                "no such checkpoint in the ledger"
                if newest is None
                else f"the ledger's chain ends at checkpoint {newest.index} (tree_size "
                f"{newest.tree_size}): its newest checkpoints were deleted",
            )
        extra.append(k)  # pragma: no cover - an older index the chain lacks fails step 2
    return extra


def verify_checkpoint_chain(
    checkpoints: Sequence[Checkpoint],
    public_key_raw: bytes,
    *,
    origin: str | None = None,
    cosignatures: Mapping[int, Sequence[Cosignature]] | None = None,
    witness_keys: Sequence[VerifierKey] = (),
    known: Sequence[Checkpoint] = (),
    witnessed: Sequence[Checkpoint] = (),
) -> dict[int, list[Cosignature]]:
    """Steps 1-4 of ``verify_log`` (no rows needed): signatures, the chain, cosignatures,
    the outside checkpoints (``witnessed``: cosigned by a witness; ``known``: seen before).
    Returns the verified cosignatures per checkpoint index."""
    outside = [*witnessed, *known]
    if not checkpoints and not outside:
        return {}
    pinned = origin or (checkpoints[0] if checkpoints else outside[0]).origin
    # 1. Signatures (of the chain and of the outside checkpoints).
    for cp in (*checkpoints, *outside):
        try:
            verify_checkpoint(cp, public_key_raw, origin=pinned)
        except ProofInvalid as e:
            raise _violation(
                "checkpoint_signature",
                cp.tree_size,
                f"a valid signature by the log key over checkpoint {cp.index} (tree_size "
                f"{cp.tree_size}, {cp.timestamp})",
                str(e),
            ) from e
    # 2. One unbroken chain from index 0.
    verify_chain(checkpoints)
    # 3. Cosignatures by pinned witnesses.
    verified = verify_cosignatures(checkpoints, cosignatures or {}, witness_keys)
    # 4. Checkpoints known from outside the database.
    _check_known(checkpoints, [*witnessed, *known], witnessed)
    return verified


def verify_log(
    rows: Iterable[tuple[Any, ...]],
    checkpoints: Sequence[Checkpoint],
    public_key_raw: bytes,
    *,
    origin: str | None = None,
    cosignatures: Mapping[int, Sequence[Cosignature]] | None = None,
    witness_keys: Sequence[VerifierKey] = (),
    witnessed: Sequence[Checkpoint] = (),
    seen: Sequence[Checkpoint] = (),
    require_witnessed: bool = False,
    total: int | None = None,
    progress: ProgressFn | None = None,
) -> AuditReport:
    """Verify ``rows`` (``VerifyRow`` tuples in global order) against the signed checkpoint
    chain (oldest first), its ``cosignatures`` (per checkpoint index) by ``witness_keys``,
    and checkpoints known from outside the database: ``witnessed`` (each a witness's
    latest, its cosignature already verified by the caller) and ``seen`` (verified by an
    earlier audit). Raises IntegrityViolation at the
    first failure, ProofInvalid if there is no checkpoint at all (an audit without one
    cannot see truncation) or ``require_witnessed`` without any witness key."""
    known = [*witnessed, *seen]
    if not checkpoints and not known:
        raise ProofInvalid("an audit needs at least one signed checkpoint; none was given")
    if require_witnessed and not witness_keys:
        raise ProofInvalid("require_witnessed needs at least one pinned witness key")
    verified = verify_checkpoint_chain(
        checkpoints,
        public_key_raw,
        origin=origin,
        cosignatures=cosignatures,
        witness_keys=witness_keys,
        known=seen,
        witnessed=witnessed,
    )
    cosigned = newest_cosigned(checkpoints, verified)
    # 5. Streams and the global sequence, collecting the event hashes on the way.
    hashes: list[str] = []

    def tap(it: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        for row in it:
            hashes.append(row[_HASH_COLUMN])
            yield row

    report = verify_rows(tap(rows), total=total, progress=progress)
    # 6. Each checkpoint against the Merkle tree of the log; the outside ones too (a
    #    witness's view is checked against the log even when the chain agrees with it).
    tree = MerkleTree.from_event_hashes(hashes)
    n = tree.size
    in_chain = {cp.index for cp in checkpoints}
    by_witness = {k.index for k in witnessed} - in_chain
    merged = {cp.index: cp for cp in known} | {cp.index: cp for cp in checkpoints}
    ordered = sorted(merged.values(), key=lambda c: c.index)
    good: Checkpoint | None = None
    for i, cp in enumerate(ordered):
        first_unproven = (good.tree_size if good else 0) + 1
        outside_note = " (as cosigned by a witness)" if cp.index in by_witness else ""
        # 6a.
        if cp.tree_size > n:
            raise _violation(
                "truncated",
                n + 1,
                f"at least {cp.tree_size} events (signed checkpoint {cp.index} of "
                f"{cp.timestamp}{outside_note})",
                f"{n} events: {cp.tree_size - n} missing; {_intact(good)}, so events were "
                f"removed from global_seq {first_unproven} on (deleted stream or cut tail)",
            )
        # 6b.
        computed = tree.root(cp.tree_size)
        if computed != cp.root:
            later = next(
                (
                    c
                    for c in ordered[i + 1 :]
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
                        f"checkpoint {cp.index} of {cp.timestamp} (tree_size {cp.tree_size}, "
                        f"root {cp.root_hash}) to be a prefix of checkpoint {later.index} "
                        f"(tree_size {later.tree_size}), which matches the log",
                        f"no consistency: {e}",
                    ) from e
            raise _violation(
                "witness_fork" if cp.index in by_witness else "checkpoint_root_mismatch",
                first_unproven,
                f"root {cp.root_hash} over global_seq 1..{cp.tree_size} "
                f"(checkpoint {cp.index} of {cp.timestamp}{outside_note})",
                f"root {computed.hex()}; {_intact(good)}, so an event in global_seq "
                f"{first_unproven}..{cp.tree_size} was changed, inserted, removed or moved",
            )
        # 6c.
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
    newest = ordered[-1]
    cosigned_size = max(
        [cosigned.tree_size if cosigned is not None else 0, *(w.tree_size for w in witnessed)]
    )
    # 7. Everything witnessed.
    if require_witnessed and cosigned_size < n:
        raise _violation(
            "unwitnessed_events",
            cosigned_size + 1,
            f"every event covered by a checkpoint a pinned witness cosigned (all {n})",
            f"the newest cosigned checkpoint covers global_seq 1..{cosigned_size}; "
            f"{n - cosigned_size} events lie beyond it",
        )
    return AuditReport(
        events=report.events,
        streams=report.streams,
        head_hash=report.head_hash,
        checkpoints=len(checkpoints),
        witnessed_size=newest.tree_size,
        witnessed_root=newest.root_hash,
        unwitnessed_events=n - newest.tree_size,
        key_id=newest.key_id,
        cosigned_size=cosigned_size,
        cosignatures=sum(len(v) for v in verified.values()),
    )
