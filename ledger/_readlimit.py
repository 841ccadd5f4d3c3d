"""The budget of costly reads (a full Verify) in one ledger service process.

Each caller (the authenticated subject) may run ``per_caller`` at a time and start at
most ``per_minute`` a minute (a token bucket refilled continuously); the service runs at
most ``total`` at once whoever asks. Over budget, ``ReadLimited`` at once (no queueing:
a caller that waits holds a worker thread). Nothing here is read from the request, so a
caller cannot choose the key it is counted under.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ledger.errors import ReadLimited

__all__ = ["ReadBudget"]


@dataclass
class _Caller:
    tokens: float
    stamp: float
    running: int = 0


class ReadBudget:
    """Per-caller and service-wide limits on one kind of costly read."""

    def __init__(
        self,
        *,
        per_caller: int = 1,
        per_minute: float = 6.0,
        total: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_caller < 1 or total < 1 or per_minute <= 0:
            raise ValueError("read budget limits must be positive")
        self.per_caller = per_caller
        self.per_minute = per_minute
        self.total = total
        self._clock = clock
        self._lock = threading.Lock()
        self._callers: dict[str, _Caller] = {}
        self._running = 0

    def _refill(self, c: _Caller, now: float) -> None:
        c.tokens = min(self.per_minute, c.tokens + (now - c.stamp) * self.per_minute / 60.0)
        c.stamp = now

    @contextmanager
    def hold(self, who: str, what: str, *, per_minute: bool = True) -> Iterator[None]:
        """Run one ``what`` for caller ``who`` within the budget, or raise ReadLimited.
        ``per_minute=False`` (an engine's integrity monitor, paced by its own interval)
        skips the per-minute bucket; one at a time and the service-wide cap still hold."""
        now = self._clock()
        with self._lock:
            c = self._callers.setdefault(who, _Caller(tokens=self.per_minute, stamp=now))
            self._refill(c, now)
            if c.running >= self.per_caller:
                raise ReadLimited(
                    f"{what} for {who}: at most {self.per_caller} at a time per caller, "
                    f"{c.running} running; wait for it to finish",
                    retry_after_s=5.0,
                )
            if per_minute and c.tokens < 1.0:
                wait = (1.0 - c.tokens) * 60.0 / self.per_minute
                raise ReadLimited(
                    f"{what} for {who}: at most {self.per_minute:g} a minute per caller; "
                    f"try again in {wait:.0f} s",
                    retry_after_s=wait,
                )
            if self._running >= self.total:
                raise ReadLimited(
                    f"{what}: the service runs at most {self.total} at once and is busy; "
                    "try again shortly",
                    retry_after_s=5.0,
                )
            if per_minute:
                c.tokens -= 1.0
            c.running += 1
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                c.running -= 1
                self._running -= 1
                if len(self._callers) > 10_000:  # forget idle callers with a full bucket
                    for k in [
                        k
                        for k, v in self._callers.items()
                        if not v.running and v.tokens >= self.per_minute
                    ]:
                        del self._callers[k]
