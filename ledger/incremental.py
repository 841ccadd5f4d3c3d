"""The integrity monitor's incremental audit: each check reads only what is new.

``verify_log`` (``ledger.audit``) re-reads the whole ledger; run every few seconds on a
growing log it costs more each time. ``IncrementalAudit`` keeps, between checks, what a
full audit would rebuild — the per-stream heads and the expected global_seq
(``RowVerifier``), the Merkle tree of every event verified so far, the tier-attestation
state (``AttestationChecker``), and which checkpoint signatures and cosignatures already
verified — so a check costs the new rows and the new checkpoints:

1. every checkpoint not verified before: its signature (log key, pinned origin)
                                                        -> ``checkpoint_signature``
2. the stored chain is still one unbroken chain from index 0 (no crypto: links only)
                                                        -> ``checkpoint_missing`` ...
3. new cosignatures by pinned witnesses verify           -> ``cosignature_invalid``
4. checkpoints known from outside (witnesses' latest, ones seen before) agree with the
   chain, and none is newer than it                     -> ``witness_fork``, ...
5. the rows after the last verified global_seq: stream chains, bodies, a gap-free global
   sequence continuing from the last check; their hashes extend the tree; their tier
   attestations are checked and no authority event stays unsigned
                                                        -> ``verify_rows``'s kinds,
                                                           ``authority_unsigned`` ...
6. the log holds at least every event already verified (``count``) -> ``truncated``
7. each checkpoint (chain and outside) not yet proven: it covers no more than the log
   holds, and its root is the tree's root at its size  -> ``truncated``,
                                                          ``checkpoint_root_mismatch``,
                                                          ``witness_fork``

What a check does NOT re-read: events it verified before. An event rewritten in place
after it was verified keeps its old hash in the monitor's tree; it is caught by the next
full audit (the monitor runs one every ``full_every`` checks), by any reader of its
stream (``SignedLedger`` refuses a stream whose chain or signed content no longer holds),
and by an auditor's ``l7 ledger verify``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ledger.attestation import AttestationChecker, TierKeys
from ledger.audit import _check_known, _violation, verify_cosignatures
from ledger.checkpoint import Checkpoint, verify_chain, verify_checkpoint
from ledger.interface import AuditableLedger, EventHash, StoredEvent
from ledger.merkle import MerkleTree, ProofInvalid, event_leaf_hash
from ledger.note import Cosignature, VerifierKey
from ledger.verify import RowVerifier, VerifyRow

__all__ = ["IncrementalAudit"]


def _stored(row: VerifyRow) -> StoredEvent:
    body = json.loads(row.body)
    return StoredEvent(
        event_id=row.event_id,
        decision_id=row.decision_id,
        event_type=row.event_type,
        schema_version=int(body["schema_version"]),
        policy_version=row.policy_version,
        actor=row.actor,
        payload=body["payload"],
        unique_key=row.unique_key,
        at=row.at,
        sequence=row.sequence,
        prev_hash=EventHash(row.prev_hash),
        hash=EventHash(row.hash),
        global_seq=row.global_seq,
    )


class IncrementalAudit:
    """State carried from one check to the next (module docstring). Not thread-safe: the
    monitor holds its lock around ``advance``."""

    def __init__(
        self,
        public_key_raw: bytes,
        *,
        origin: str | None,
        witness_keys: Sequence[VerifierKey] = (),
        tier_keys: TierKeys | None = None,
    ) -> None:
        self.public_key_raw = public_key_raw
        self.origin = origin
        self.witness_keys = list(witness_keys)
        self.tier_keys = tier_keys
        self._reset()

    def _reset(self) -> None:
        """Forget everything verified: the next ``advance`` is a full audit."""
        self.rows = RowVerifier()
        self.tree = MerkleTree()
        self.attestations = (
            AttestationChecker(self.tier_keys) if self.tier_keys is not None else None
        )
        self._signed: set[tuple[int, str, str]] = set()
        self._cosigned: set[tuple[int, str]] = set()
        self._proven: dict[int, str] = {}
        """checkpoint index -> root hex already proven against the tree."""

    @property
    def verified(self) -> int:
        """Events verified so far (the tree's size)."""
        return self.tree.size

    def _signatures(self, cps: Sequence[Checkpoint], origin: str) -> None:
        for cp in cps:
            key = (cp.index, cp.root_hash, cp.timestamp)
            if key in self._signed:
                continue
            try:
                verify_checkpoint(cp, self.public_key_raw, origin=origin)
            except ProofInvalid as e:
                raise _violation(
                    "checkpoint_signature",
                    cp.tree_size,
                    f"a valid signature by the log key over checkpoint {cp.index} (tree_size "
                    f"{cp.tree_size}, {cp.timestamp})",
                    str(e),
                ) from e
            self._signed.add(key)

    def _new_cosignatures(
        self, cps: Sequence[Checkpoint], cosigs: Mapping[int, Sequence[Cosignature]]
    ) -> None:
        fresh = {
            i: [c for c in lines if (i, c.line()) not in self._cosigned]
            for i, lines in cosigs.items()
        }
        verify_cosignatures(cps, {i: v for i, v in fresh.items() if v}, self.witness_keys)
        for i, lines in fresh.items():
            self._cosigned.update((i, c.line()) for c in lines)

    def _tap(self, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        leaves: list[bytes] = []
        for raw in rows:
            row = VerifyRow(*raw)
            yield raw  # RowVerifier checks it before the next one is taken
            leaves.append(event_leaf_hash(row.hash))
            if self.attestations is not None:
                self.attestations.feed(_stored(row))
            if len(leaves) >= 10_000:
                self.tree.extend(leaves)
                leaves = []
        self.tree.extend(leaves)

    def advance(
        self,
        ledger: AuditableLedger,
        checkpoints: Sequence[Checkpoint],
        *,
        cosignatures: Mapping[int, Sequence[Cosignature]] | None = None,
        witnessed: Sequence[Checkpoint] = (),
        seen: Sequence[Checkpoint] = (),
    ) -> int:
        """One incremental check (steps in the module docstring); returns the number of
        events verified so far. Raises IntegrityViolation at the first failure."""
        outside = [*witnessed, *seen]
        first = checkpoints[0] if checkpoints else outside[0] if outside else None
        origin = self.origin or (first.origin if first is not None else None)
        # 1-4. The signed evidence; crypto only for what was not verified before.
        if origin is not None:
            self._signatures([*checkpoints, *outside], origin)
        verify_chain(checkpoints)
        self._new_cosignatures(checkpoints, cosignatures or {})
        _check_known(checkpoints, outside, witnessed)
        # 5. The rows appended since the last check.
        before = self.tree.size
        try:
            self.rows.feed(self._tap(iter(ledger.iter_rows(after_global_seq=before))))
        except BaseException:
            self._reset()  # never keep half a check: the next one starts from scratch
            raise
        if self.attestations is not None:
            self.attestations.finish()
        n = self.tree.size
        # 6. Nothing already verified went missing.
        held = ledger.count()
        if held < n:
            raise _violation(
                "truncated",
                held + 1,
                f"at least the {n} events this monitor already verified",
                f"{held} events: events were deleted",
            )
        # 7. Each checkpoint not yet proven, against the tree.
        by_witness = {k.index for k in witnessed} - {cp.index for cp in checkpoints}
        for cp in sorted({c.index: c for c in (*outside, *checkpoints)}.values(), key=_idx):
            if self._proven.get(cp.index) == cp.root_hash:
                continue
            where = " (as cosigned by a witness)" if cp.index in by_witness else ""
            if cp.tree_size > n:
                raise _violation(
                    "truncated",
                    n + 1,
                    f"at least {cp.tree_size} events (signed checkpoint {cp.index} of "
                    f"{cp.timestamp}{where})",
                    f"{n} events: the tail was cut",
                )
            computed = self.tree.root(cp.tree_size)
            if computed != cp.root:
                raise _violation(
                    "witness_fork" if cp.index in by_witness else "checkpoint_root_mismatch",
                    min(before, cp.tree_size) + 1 if before else 1,
                    f"root {cp.root_hash} over global_seq 1..{cp.tree_size} (checkpoint "
                    f"{cp.index} of {cp.timestamp}{where})",
                    f"root {computed.hex()}: an event was changed, inserted, removed or moved",
                )
            self._proven[cp.index] = cp.root_hash
        return n


def _idx(cp: Checkpoint) -> int:
    return cp.index
