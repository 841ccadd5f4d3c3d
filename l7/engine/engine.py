"""Boundary A: judge a request, record every step, answer only after the ledger confirms.

    validate (edge) -> idempotency check -> OPA judgement -> outcome/status
        -> one atomic ledger batch -> confirmation -> Decision

Fail closed: OPA unusable -> DENY ``policy_store_degraded`` (recorded);
ledger unusable -> ``LedgerDegraded`` (the caller gets UNAVAILABLE, never ALLOW).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from l7.domain import Decision, DecisionId, DecisionRequest, Judgement
from l7.engine.events import decision_events, idempotency_unique_key
from l7.engine.interface import Clock, PolicyEvaluator
from l7.engine.restriction import Restriction
from l7.engine.state import fold_decision
from l7.errors import DecisionNotFound, IdempotencyConflict, LedgerDegraded, PolicyStoreDegraded
from ledger import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    Confirmation,
    DuplicateKey,
    LedgerClient,
    LedgerError,
    NewEvent,
    StoredEvent,
)

__all__ = ["Engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_stored(e: NewEvent, c: Confirmation, at: str) -> StoredEvent:
    """What the ledger now holds for an event it just confirmed (saves a read-back)."""
    return StoredEvent(
        event_id=c.event_id,
        decision_id=e.decision_id,
        event_type=e.event_type.value,
        schema_version=SCHEMA_VERSION,
        policy_version=e.policy_version,
        actor=e.actor,
        payload=e.payload,
        unique_key=e.unique_key,
        at=at,
        sequence=c.sequence,
        prev_hash=GENESIS_HASH,
        hash=c.hash,
        global_seq=c.global_seq,
    )


class _KeyLocks:
    """Serializes work per key inside this process (idempotent retries racing each other)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class Engine:
    def __init__(
        self, policy: PolicyEvaluator, ledger: LedgerClient, *, clock: Clock = _utcnow
    ) -> None:
        self.policy = policy
        self.ledger = ledger
        self.clock = clock
        self.restriction = Restriction(ledger)
        self._keys = _KeyLocks()

    # -- Decide --------------------------------------------------------------------------

    def decide(self, request: DecisionRequest) -> tuple[Decision, bool]:
        """Judge ``request``; returns (decision, replayed)."""
        if not request.idempotency_key:
            return self._decide_new(request), False
        unique = idempotency_unique_key(request.context.actor.id, request.idempotency_key)
        with self._keys.hold(unique):
            existing = self._read(lambda: self.ledger.find_by_unique_key(unique))
            if existing is not None:
                return self._replay(existing, request), True
            try:
                return self._decide_new(request), False
            except DuplicateKey:
                # Another engine process recorded the same key between our read and write.
                existing = self._read(lambda: self.ledger.find_by_unique_key(unique))
                if existing is None:
                    raise LedgerDegraded(
                        f"idempotency key {request.idempotency_key!r} is taken but its "
                        "decision cannot be read; retry shortly"
                    ) from None
                return self._replay(existing, request), True

    def _replay(self, created: StoredEvent, request: DecisionRequest) -> Decision:
        if created.payload.get("request_sha256") != request.fingerprint():
            raise IdempotencyConflict(request.idempotency_key, created.decision_id)
        return self.get_decision(created.decision_id)

    def _decide_new(self, request: DecisionRequest) -> Decision:
        decision_id = DecisionId(str(uuid.uuid4()))
        now = self.clock()
        created_at = now.isoformat().replace("+00:00", "Z")
        judgement, reason_code, reasons = self._judge(decision_id, request)
        events = decision_events(
            decision_id,
            request,
            created_at=created_at,
            judgement=judgement,
            reason_code=reason_code,
            reasons=reasons,
            now=int(now.timestamp()),
        )
        try:
            confirmations = self.ledger.append(events)
        except DuplicateKey:
            raise  # handled by decide(): a concurrent retry won the idempotency key
        except LedgerError as e:
            raise LedgerDegraded(
                f"the ledger did not confirm decision {decision_id}: {e}; "
                "nothing was allowed. Check the ledger store and retry"
            ) from e
        return fold_decision(
            [_as_stored(e, c, created_at) for e, c in zip(events, confirmations, strict=True)]
        )

    def _judge(
        self, decision_id: str, request: DecisionRequest
    ) -> tuple[Judgement | None, str, tuple[str, ...]]:
        """Policy's judgement, or None with the reason policy was not (or could not be) asked."""
        restricted = self.restriction.state()
        if restricted.active:
            return (
                None,
                "ledger_integrity_failed",
                (
                    f"restriction mode since {restricted.since}: the ledger failed verification "
                    f"({restricted.reason}); governed actions are denied until an L4 clears it",
                ),
            )
        try:
            judgement = self.policy.evaluate(request.to_dict())
        except PolicyStoreDegraded as e:
            log.warning("decision %s denied: policy store degraded: %s", decision_id, e)
            return None, PolicyStoreDegraded.reason, (str(e),)
        return judgement, "policy", judgement.reasons

    # -- reads ---------------------------------------------------------------------------

    def get_decision(self, decision_id: str) -> Decision:
        events = self._read(lambda: self.ledger.get_stream(decision_id))
        if not events:
            raise DecisionNotFound(decision_id)
        return fold_decision(events)

    def _read(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger could not be read: {e}") from e

    def close(self) -> None:
        self.policy.close()
