"""Approval anomaly detection (DESIGN §9): signals that an approval may not be what it seems.

Kinds, with their parameters in ``data.l7.config.anomalies`` (versioned with the bundle):

    approval_too_fast          within ``min_seconds_after_request`` of the request
    approval_burst             over ``burst.max`` approvals by one approver in ``burst.window_s``
    approval_outside_hours     outside ``hours_utc`` [start, end) (absent: no hours rule)
    repeated_bad_signatures    ``bad_signatures.max`` refused signatures in its ``window_s``
    approver_manages_requester ``reports_to[requester] == approver``

Every detected kind is recorded as ``anomaly.detected``; the kinds listed in ``block``
also refuse the approval (``Forbidden`` reason ``anomaly_blocked``).

Refused signatures are counted by a ``RefusedSignatures`` store. The engine's store is the
ledger (``l7.engine.shared_state.LedgerRefusals``: every refusal is an ``anomaly.detected``
of kind ``signature_refused``), so every replica spends the same budget; ``MemoryRefusals``
is the per-process default for unit use. The burst window is still kept in this process.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from ledger import EventType, NewEvent

__all__ = ["AnomalyDetector", "MemoryRefusals", "RefusedSignatures", "anomaly_event"]


def anomaly_event(
    decision_id: str, policy_version: str, kind: str, subject: str, detail: str
) -> NewEvent:
    """The ``anomaly.detected`` event for ``kind`` by ``subject`` in a decision's stream."""
    return NewEvent(
        decision_id,
        EventType.ANOMALY_DETECTED,
        subject,
        policy_version,
        {"kind": kind, "subject": subject, "detail": detail},
    )


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    v = cfg.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


class RefusedSignatures(Protocol):
    """Where refused approval signatures are recorded and counted."""

    def record(self, approver: str, now: int, *, decision_id: str, policy_version: str) -> None:
        """Put one refused signature by ``approver`` at ``now`` on the record."""
        ...

    def count(self, approver: str, now: int, window_s: int) -> int:
        """Refused signatures by ``approver`` in ``(now - window_s, now]``."""
        ...


class MemoryRefusals:
    """Refused signatures counted in this process only (unit use; the engine uses the ledger)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bad: dict[str, deque[int]] = defaultdict(deque)

    def record(self, approver: str, now: int, *, decision_id: str, policy_version: str) -> None:
        with self._lock:
            self._bad[approver].append(now)

    def count(self, approver: str, now: int, window_s: int) -> int:
        with self._lock:
            return AnomalyDetector._count(self._bad[approver], now, window_s)


class AnomalyDetector:
    def __init__(
        self,
        config: Callable[[], Mapping[str, Any]],
        refusals: RefusedSignatures | None = None,
    ) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._approvals: dict[str, deque[int]] = defaultdict(deque)
        self.refusals: RefusedSignatures = refusals if refusals is not None else MemoryRefusals()

    def blocking(self) -> frozenset[str]:
        block = self._config().get("block", [])
        return frozenset(str(k) for k in block) if isinstance(block, list) else frozenset()

    @staticmethod
    def _count(q: deque[int], now: int, window: int) -> int:
        while q and q[0] <= now - window:
            q.popleft()
        return len(q)

    def bad_signature(
        self, approver: str, now: int, *, decision_id: str = "", policy_version: str = ""
    ) -> list[tuple[str, str]]:
        """Record a refused signature; returns the anomaly when the threshold is reached."""
        cfg = self._config().get("bad_signatures", {})
        cfg = cfg if isinstance(cfg, Mapping) else {}
        limit, window = _int(cfg, "max", 3), _int(cfg, "window_s", 600)
        self.refusals.record(approver, now, decision_id=decision_id, policy_version=policy_version)
        n = self.refusals.count(approver, now, window)
        if n >= limit:
            return [("repeated_bad_signatures", f"{n} refused signatures in {window}s")]
        return []

    def approval(
        self, approver: str, requester: str, requested_at: int, now: int
    ) -> list[tuple[str, str]]:
        """The anomalies of an approval that passed every rule (kind, detail)."""
        cfg = self._config()
        found: list[tuple[str, str]] = []
        fast = _int(cfg, "min_seconds_after_request", 30)
        if now - requested_at < fast:
            found.append(("approval_too_fast", f"{now - requested_at}s after the request"))
        burst = cfg.get("burst", {})
        burst = burst if isinstance(burst, Mapping) else {}
        limit, window = _int(burst, "max", 10), _int(burst, "window_s", 300)
        with self._lock:
            q = self._approvals[approver]
            q.append(now)
            n = self._count(q, now, window)
        if n > limit:
            found.append(("approval_burst", f"{n} approvals in {window}s"))
        hours = cfg.get("hours_utc")
        if isinstance(hours, list) and len(hours) == 2 and all(isinstance(h, int) for h in hours):
            hour = datetime.fromtimestamp(now, UTC).hour
            start, end = hours
            inside = start <= hour < end if start <= end else hour >= start or hour < end
            if not inside:
                found.append(("approval_outside_hours", f"at {hour:02d}h UTC"))
        bad = cfg.get("bad_signatures", {})
        bad = bad if isinstance(bad, Mapping) else {}
        bad_limit, bad_window = _int(bad, "max", 3), _int(bad, "window_s", 600)
        n_bad = self.refusals.count(approver, now, bad_window)
        if n_bad >= bad_limit:
            found.append(("repeated_bad_signatures", f"{n_bad} refused signatures recently"))
        reports = cfg.get("reports_to", {})
        if isinstance(reports, Mapping) and reports.get(requester) == approver:
            found.append(("approver_manages_requester", f"{requester} reports to {approver}"))
        return found
