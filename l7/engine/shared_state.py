"""State every engine replica must agree on, read from the ledger (issue #12, item 5).

Each class is a per-process cache fed by a ``l7.ledger_query.Tail``: before it answers,
it reads what the ledger gained since its cursor (``global_seq``), so a fresh replica
converges on its first call and every replica answers from the same events. The ledger
is the source of truth; nothing here survives a restart or needs to.

    PendingIndex       decisions waiting for authority, with the next time each is due
                       (escalation or expiry), from enforcement.result, decision.expired,
                       decision.cancelled and authority.escalated
    BreakGlassIndex    break-glass still owed a review (override.breakglass minus
                       breakglass.reviewed): overdue reviews block the opener's next one
    LedgerRefusals     refused approval signatures per approver (anomaly.detected with
                       kind ``signature_refused``), the repeated-bad-signature budget
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from l7.domain import Status
from l7.errors import LedgerDegraded
from l7.ledger_query import Tail
from ledger import EventType, LedgerClient, LedgerError, NewEvent, StoredEvent

__all__ = [
    "SIGNATURE_REFUSED",
    "BreakGlassIndex",
    "LedgerRefusals",
    "OpenBreakGlass",
    "PendingIndex",
]

log = logging.getLogger(__name__)
_E = EventType
SIGNATURE_REFUSED = "signature_refused"
"""``anomaly.detected`` kind recorded for every refused approval signature."""


class PendingIndex:
    """Decision id -> the unix time its next escalation or expiry is due (None: unknown,
    read its stream). A candidate list: callers confirm each from the decision's stream,
    so a stale entry costs one read and never changes an answer."""

    # Effects first (l7.ledger_query): what closes or changes a pending decision, then
    # the enforcement.result that made it pending.
    TYPES = (
        _E.DECISION_EXPIRED,
        _E.DECISION_CANCELLED,
        _E.AUTHORITY_ESCALATED,
        _E.ENFORCEMENT_RESULT,
    )

    def __init__(self, ledger: object) -> None:
        self._tail = Tail(ledger, self.TYPES)
        self._due: dict[str, int | None] = {}
        self._lock = threading.Lock()

    @property
    def cursor(self) -> int:
        return self._tail.cursor

    def sync(self) -> None:
        """Apply what the ledger gained since the cursor (LedgerDegraded if unreadable)."""
        with self._lock:
            for e in self._tail.poll():
                self._apply(e)

    def _apply(self, e: StoredEvent) -> None:
        d = e.decision_id
        if e.event_type == _E.ENFORCEMENT_RESULT.value:
            status = e.payload.get("status") if isinstance(e.payload, Mapping) else None
            if status is None or status == Status.PENDING_AUTHORITY.value:
                self._due[d] = None  # (re)judged pending, or unreadable: read the stream
            else:
                self._due.pop(d, None)
        elif e.event_type == _E.AUTHORITY_ESCALATED.value:
            if d in self._due:
                self._due[d] = None  # the deadline moved: read the stream once
        else:  # expired, cancelled
            self._due.pop(d, None)

    def track(self, decision_id: str, due: int | None) -> None:
        """What this engine just folded: pending with its next deadline, or (None) not pending."""
        with self._lock:
            if due is None:
                self._due.pop(decision_id, None)
            else:
                self._due[decision_id] = due

    def candidates(self) -> list[str]:
        with self._lock:
            return list(self._due)

    def due(self, now: int) -> list[str]:
        """Candidates whose deadline has come, or whose deadline this process does not know
        (changed by another replica, or never read)."""
        with self._lock:
            return [d for d, at in self._due.items() if at is None or at <= now]


@dataclass(frozen=True)
class OpenBreakGlass:
    decision_id: str
    opened_by: str
    review_deadline: int


class BreakGlassIndex:
    """Break-glass owed a review, from the ledger."""

    TYPES = (_E.BREAKGLASS_REVIEWED, _E.OVERRIDE_BREAKGLASS)  # effects first

    def __init__(self, ledger: object) -> None:
        self._tail = Tail(ledger, self.TYPES)
        self._open: dict[str, OpenBreakGlass] = {}
        self._lock = threading.Lock()

    @property
    def cursor(self) -> int:
        return self._tail.cursor

    def sync(self) -> None:
        with self._lock:
            for e in self._tail.poll():
                if e.event_type == _E.BREAKGLASS_REVIEWED.value:
                    self._open.pop(e.decision_id, None)
                else:
                    self._open[e.decision_id] = self._entry(e)

    @staticmethod
    def _entry(e: StoredEvent) -> OpenBreakGlass:
        p = e.payload
        try:
            return OpenBreakGlass(e.decision_id, str(p["opened_by"]), int(p["review_deadline"]))
        except (KeyError, TypeError, ValueError) as err:
            # Fail closed: a break-glass we cannot read might be an overdue one.
            raise LedgerDegraded(
                f"override.breakglass at global_seq {e.global_seq} (decision {e.decision_id}) "
                f"has no readable opened_by / review_deadline ({err!r}); expected the payload "
                "the engine writes. Break-glass is refused until the record is explained "
                "(is the engine's ledger token a writer, with payload access?)"
            ) from err

    def opened(self, entry: OpenBreakGlass) -> None:
        with self._lock:
            self._open[entry.decision_id] = entry

    def reviewed(self, decision_id: str) -> None:
        with self._lock:
            self._open.pop(decision_id, None)

    def unreviewed(self) -> list[OpenBreakGlass]:
        """Every break-glass still owed a review, oldest deadline first."""
        with self._lock:
            return sorted(self._open.values(), key=lambda b: (b.review_deadline, b.decision_id))

    def overdue(self, now: int, actor: str | None = None) -> list[OpenBreakGlass]:
        return [
            b
            for b in self.unreviewed()
            if b.review_deadline <= now and (actor is None or b.opened_by == actor)
        ]


class LedgerRefusals:
    """Refused approval signatures, shared by every replica through the ledger.

    ``record`` appends ``anomaly.detected`` {kind: signature_refused, subject: approver,
    what: {refused_at: <engine time>}} to the decision's stream; ``count`` reads every
    such event since its cursor and counts the approver's inside the window. Engine time
    (not the ledger's ``at``) is recorded so the window follows the engine's clock."""

    TYPES = (_E.ANOMALY_DETECTED,)
    _PRUNE_OVER = 1024
    """Approvers tracked before entries older than the last window are dropped."""

    def __init__(self, ledger: LedgerClient) -> None:
        self._ledger = ledger
        self._tail = Tail(ledger, self.TYPES)
        self._times: dict[str, deque[int]] = {}
        self._lock = threading.Lock()

    def record(self, approver: str, now: int, *, decision_id: str, policy_version: str) -> None:
        """Put one refused signature on the record. A ledger that cannot confirm is logged,
        not raised: the approval is refused either way (and nothing is approved while the
        ledger is down), but that refusal then goes uncounted."""
        try:
            self._ledger.append(
                [
                    NewEvent(
                        decision_id,
                        _E.ANOMALY_DETECTED,
                        approver,
                        policy_version,
                        {
                            "kind": SIGNATURE_REFUSED,
                            "subject": approver,
                            "detail": "an approval signature by this approver was refused",
                            "what": {"refused_at": now},
                        },
                    )
                ]
            )
        except LedgerError:
            log.exception("could not record a refused signature by %s", approver)

    def count(self, approver: str, now: int, window_s: int) -> int:
        """Refused signatures by ``approver`` in ``(now - window_s, now]``, read from the
        ledger (LedgerDegraded if it cannot be read)."""
        with self._lock:
            for e in self._tail.poll():
                self._apply(e)
            floor = now - window_s
            if len(self._times) > self._PRUNE_OVER:
                for who in [w for w, q in self._times.items() if not q or q[-1] <= floor]:
                    del self._times[who]
            times = self._times.get(approver)
            if not times:
                return 0
            while times and times[0] <= floor:
                times.popleft()
            return sum(1 for t in times if t <= now)

    def _apply(self, e: StoredEvent) -> None:
        p: Mapping[str, Any] = e.payload if isinstance(e.payload, Mapping) else {}
        if p.get("kind") != SIGNATURE_REFUSED:
            return
        what = p.get("what")
        at = what.get("refused_at") if isinstance(what, Mapping) else None
        subject = p.get("subject")
        if not isinstance(subject, str) or not isinstance(at, int) or isinstance(at, bool):
            log.warning(
                "anomaly.detected %s at global_seq %d is malformed (expected subject and "
                "what.refused_at); not counted",
                SIGNATURE_REFUSED,
                e.global_seq,
            )
            return
        q = self._times.setdefault(subject, deque())
        if q and q[-1] > at:  # replicas' clocks may disagree slightly: keep it sorted
            items = sorted([*q, at])
            q.clear()
            q.extend(items)
        else:
            q.append(at)
