"""The ledger as a tier sees it: every batch it writes is signed, every stream it reads
is checked for signed authority (``ledger.attestation``, docs/0012-tier-attestations.md).

``SignedLedger`` wraps any ``LedgerClient`` (the in-process ``SqlLedger`` or the gRPC
``RemoteLedger``):

* ``append``: for each stream in the batch, read its head (a batch that starts with
  ``decision.created`` opens a new stream: no read), sign a statement over the head and
  the content digests of that stream's events with the tier's key, and append the
  events plus one ``batch.attested`` per stream atomically. If a stream moved in
  between, the ledger refuses the batch (``StaleHead``) and it is signed again.
* ``get_stream``: a stream comes back only if every authority event in it is covered by
  an attestation of a tier that owns that event type, signed by a key pinned in the
  trust file. Otherwise ``LedgerIntegrityFailed`` names the event and ``on_violation``
  is told (the stack enters restriction mode). A database writer who inserts a
  well-hashed authority event it could not sign gains nothing. The attestations
  themselves are left out of what ``get_stream``, ``iter_events`` and ``query`` return,
  and an authority event a ``query`` returns is checked through its whole stream.

Everything else (queries, proofs, checkpoints) is delegated unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from l7.crypto import Signer
from l7.errors import ConfigError, LedgerIntegrityFailed
from ledger import (
    GENESIS_HASH,
    Confirmation,
    EventType,
    IntegrityViolation,
    LedgerClient,
    NewEvent,
    StaleHead,
    StoredEvent,
)
from ledger.attestation import (
    Statement,
    Tier,
    TierKeys,
    attestation_event,
    is_authority,
    new_event_digest,
    require_authority,
)

__all__ = ["SignedLedger"]

log = logging.getLogger(__name__)
_RETRIES = 8
_ATTESTED = EventType.BATCH_ATTESTED.value


class SignedLedger:
    """A ``LedgerClient`` that signs as ``tier`` and honours only signed authority."""

    def __init__(
        self,
        inner: LedgerClient,
        *,
        keys: TierKeys,
        tier: Tier | None = None,
        signer: Signer | None = None,
        on_violation: Callable[[IntegrityViolation], None] | None = None,
    ) -> None:
        self.inner = inner
        self.tier = tier
        self.signer = signer
        self.keys = keys
        self.on_violation = on_violation

    # -- writes --------------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        if not events:
            return []
        if self.signer is None or self.tier is None:
            raise ConfigError(
                "this ledger view is read-only (no tier key): a tier appends only what it signs"
            )
        for attempt in range(_RETRIES):
            signed = [*events, *self._attestations(events, fresh=attempt == 0)]
            try:
                return self.inner.append(signed)[: len(events)]
            except StaleHead:
                if attempt == _RETRIES - 1:
                    raise
                log.info("stream moved while signing a batch; signing again")
        raise AssertionError("unreachable")  # pragma: no cover

    def _attestations(self, events: Sequence[NewEvent], *, fresh: bool) -> list[NewEvent]:
        assert self.signer is not None and self.tier is not None
        streams: dict[str, list[NewEvent]] = {}
        for e in events:
            streams.setdefault(e.decision_id, []).append(e)
        out = []
        for decision_id, mine in streams.items():
            head: tuple[int, str]
            if fresh and mine[0].event_type == EventType.DECISION_CREATED:
                head = (0, GENESIS_HASH)  # a new stream: the ledger refuses it if it is not
            else:
                head = self._head(decision_id)
            st = Statement(
                decision_id=decision_id,
                tier=self.tier,
                key_id=self.signer.key_id,
                prev_sequence=head[0],
                prev_hash=head[1],
                events=tuple(new_event_digest(e) for e in mine),
            )
            out.append(attestation_event(st, self.signer.sign(st.signed_bytes())))
        return out

    def _head(self, decision_id: str) -> tuple[int, str]:
        stream = self.inner.get_stream(decision_id)
        return (stream[-1].sequence, stream[-1].hash) if stream else (0, GENESIS_HASH)

    # -- reads ---------------------------------------------------------------------------------

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        """The stream's events once its authority is checked, without the attestations
        (ledger metadata: nothing above the ledger folds them)."""
        events = self.inner.get_stream(decision_id)
        if events:
            self.check(events)
        return [e for e in events if e.event_type != _ATTESTED]

    def iter_events(self, *, after_global_seq: int = 0) -> Iterator[StoredEvent]:
        """Every event but the attestations, in global order (not checked: a reader that
        acts on one reads its stream through ``get_stream``)."""
        for e in self.inner.iter_events(after_global_seq=after_global_seq):
            if e.event_type != _ATTESTED:
                yield e

    def query(self, **filters: Any) -> list[StoredEvent]:
        """``query`` of the wrapped ledger (a page, in global order), without attestations,
        and with every authority event in the page checked through its whole stream: the
        shared state replicas derive from queries (rollback floor, break-glass reviews,
        pending index) honours only signed authority."""
        page: list[StoredEvent] = self.inner.query(**filters)  # type: ignore[attr-defined]
        out = [e for e in page if e.event_type != _ATTESTED]
        checked: set[str] = set()
        for e in out:
            if e.decision_id not in checked and is_authority(e.event_type, e.payload):
                self.get_stream(e.decision_id)  # raises LedgerIntegrityFailed
                checked.add(e.decision_id)
        return out

    def check(self, events: Sequence[StoredEvent]) -> None:
        """Raise LedgerIntegrityFailed unless every authority event in this whole stream
        is signed by a tier that owns it (and tell ``on_violation``)."""
        try:
            require_authority(events, self.keys)
        except IntegrityViolation as e:
            if self.on_violation is not None:
                try:
                    self.on_violation(e)
                except Exception:  # recording must not hide the refusal
                    log.exception("could not record the integrity violation")
            raise LedgerIntegrityFailed(
                f"{e}; nothing this stream would authorize is honoured and restriction mode "
                "is entered: run `l7 ledger verify` and have an L4 investigate"
            ) from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
