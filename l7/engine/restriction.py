"""Restriction mode: after a failed ledger integrity check, governed actions are denied.

The state is a ledger stream of its own (``restriction/ledger``) so every engine and
gateway process sees the same answer: the last ``anomaly.detected`` in it with kind
``restriction_entered`` or ``restriction_cleared`` decides. Entering is automatic (the
integrity monitor); clearing needs an L4+ identity and a reason, and is recorded too.

``health`` (set by the host to the integrity monitor's ``degraded``) reports a monitor
that has not completed a check for too long: then ``degraded()`` gives the reason, the
engine denies governed actions with ``ledger_degraded`` and ``state()`` raises
LedgerDegraded, so every other reader (the gateway) refuses too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from l7.errors import Forbidden, LedgerDegraded, LedgerIntegrityFailed, RequestInvalid
from ledger import EventType, LedgerClient, LedgerError, NewEvent

__all__ = ["CLEAR_MIN_LEVEL", "STREAM", "Restriction", "RestrictionState"]

STREAM = "restriction/ledger"
CLEAR_MIN_LEVEL = 4
_ENTERED, _CLEARED = "restriction_entered", "restriction_cleared"


@dataclass(frozen=True)
class RestrictionState:
    active: bool
    reason: str = ""
    since: str = ""
    cleared_by: str = ""


class Restriction:
    """Reads are cached for ``ttl_s`` so the Decide path costs one indexed read a second."""

    def __init__(self, ledger: LedgerClient, *, ttl_s: float = 1.0) -> None:
        self.ledger = ledger
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, RestrictionState] | None = None
        self.health: Callable[[], str | None] | None = None
        """Why the ledger cannot be trusted now (monitor blind too long), or None."""

    def degraded(self) -> str | None:
        """The reason governed actions are denied ``ledger_degraded``, or None."""
        health = self.health
        return health() if health is not None else None

    def state(self) -> RestrictionState:
        why = self.degraded()
        if why is not None:
            raise LedgerDegraded(why)
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1]
        try:
            events = self.ledger.get_stream(STREAM)
        except LedgerError as err:
            raise LedgerDegraded(f"the ledger could not be read: {err}") from err
        except LedgerIntegrityFailed as err:  # the restriction stream itself was forged
            return RestrictionState(True, str(err))
        st = RestrictionState(active=False)
        for e in events:
            kind = e.payload.get("kind")
            if kind == _ENTERED:
                st = RestrictionState(True, str(e.payload.get("detail", "")), e.at)
            elif kind == _CLEARED:
                st = RestrictionState(False, "", "", e.actor)
        with self._lock:
            self._cached = (time.monotonic(), st)
        return st

    def _append(self, actor: str, kind: str, detail: str) -> None:
        try:
            self.ledger.append(
                [
                    NewEvent(
                        STREAM,
                        EventType.ANOMALY_DETECTED,
                        actor,
                        "",
                        {"kind": kind, "subject": actor, "detail": detail[:2000]},
                    )
                ]
            )
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm the restriction change: {e}") from e
        with self._lock:
            self._cached = None

    def enter(self, detail: str) -> None:
        """Called by the integrity monitor (or an operator) when verification fails."""
        self._append("l7-integrity-monitor", _ENTERED, detail)

    def clear(self, subject: str, level: int, reason: str) -> None:
        if level < CLEAR_MIN_LEVEL:
            raise Forbidden(
                f"clearing restriction mode needs L{CLEAR_MIN_LEVEL}+ (security); "
                f"{subject} is L{level}",
                reason="insufficient_level",
            )
        if not reason.strip():
            raise RequestInvalid("reason", "is required: what was checked and found")
        self._append(subject, _CLEARED, reason)
