"""In-memory fakes of the real protocols, for unit tests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from l7.domain import Authority, Band, Clause, Gate, Judgement, Outcome, Risk
from l7.errors import PolicyStoreDegraded
from ledger import (
    GENESIS_HASH,
    Confirmation,
    DuplicateKey,
    EventHash,
    LedgerUnavailable,
    NewEvent,
    ProgressFn,
    StoredEvent,
    VerifyReport,
)


class MemoryLedger:
    """A LedgerClient kept in a list. ``fail`` makes every call raise LedgerUnavailable."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.fail = False
        self.appends = 0
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.fail:
            raise LedgerUnavailable("fake ledger is down")

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        with self._lock:
            self._check()
            taken = {e.unique_key for e in self.events if e.unique_key}
            for e in events:
                if e.unique_key and e.unique_key in taken:
                    raise DuplicateKey(e.unique_key)
            out = []
            for e in events:
                stream = [x for x in self.events if x.decision_id == e.decision_id]
                prev = stream[-1].hash if stream else GENESIS_HASH
                g = len(self.events) + 1
                h = EventHash(hashlib.sha256(f"{prev}{g}".encode()).hexdigest())
                stored = StoredEvent(
                    event_id=f"ev-{g}",
                    decision_id=e.decision_id,
                    event_type=e.event_type.value,
                    schema_version=1,
                    policy_version=e.policy_version,
                    actor=e.actor,
                    payload=dict(e.payload),
                    unique_key=e.unique_key,
                    at="2026-11-25T00:00:00.000000Z",
                    sequence=len(stream) + 1,
                    prev_hash=prev,
                    hash=h,
                    global_seq=g,
                )
                self.events.append(stored)
                out.append(Confirmation(stored.event_id, e.decision_id, stored.sequence, g, h))
            self.appends += 1
            return out

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        self._check()
        return [e for e in self.events if e.decision_id == decision_id]

    def find_by_unique_key(self, unique_key: str) -> StoredEvent | None:
        self._check()
        return next((e for e in self.events if e.unique_key == unique_key), None)

    def iter_events(self, *, after_global_seq: int = 0) -> Iterator[StoredEvent]:
        self._check()
        return iter([e for e in self.events if e.global_seq > after_global_seq])

    def count(self) -> int:
        return len(self.events)

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        last = self.events[-1] if self.events else None
        return VerifyReport(
            len(self.events),
            len({e.decision_id for e in self.events}),
            last.global_seq if last else 0,
            last.hash if last else GENESIS_HASH,
        )

    def close(self) -> None:
        self.fail = True


def judgement(
    outcome: Outcome = Outcome.ALLOW, *, revision: str = "rev-1", mode: str = "enforced"
) -> Judgement:
    clauses = () if outcome is Outcome.ALLOW else (Clause("managers", 3, 2),)
    return Judgement(
        outcome=outcome,
        environment="dev",
        enforcement_mode=mode,
        gates=(
            Gate("input_complete", "Input complete", outcome is not Outcome.DENY, "ok", "high"),
        ),
        risk=Risk(10, Band.LOW, ("base 10",)),
        authority=Authority((3,) if clauses else (), 2 if clauses else 0, (), clauses),
        reasons=(f"{outcome.value} by fake",),
        policy_version=revision,
    )


class FakePolicy:
    """A PolicyEvaluator that returns a fixed judgement, or raises when ``down``."""

    def __init__(self, result: Judgement | None = None) -> None:
        self.result = result or judgement()
        self.down = False
        self.calls: list[Mapping[str, Any]] = []

    def evaluate(self, policy_input: Mapping[str, Any]) -> Judgement:
        self.calls.append(policy_input)
        if self.down:
            raise PolicyStoreDegraded("fake OPA is down")
        return self.result

    def query(self, package: str, rule: str, policy_input: Mapping[str, Any]) -> tuple[Any, str]:
        if self.down:
            raise PolicyStoreDegraded("fake OPA is down")
        return {}, self.result.policy_version

    def close(self) -> None:
        pass
