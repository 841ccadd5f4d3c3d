"""Token-bucket rate limits per caller and per approver, with limits from the signed bundle.

``data.l7.config.rate_limits`` names buckets like ``{"decide_per_actor": {"rate_per_s": 20,
"burst": 40}, "approve_per_approver": {...}}``. A call over its limit is refused with
RESOURCE_EXHAUSTED (reason ``rate_limited``) and a retry-after; nothing is judged or
recorded for it. Buckets live in this engine process (replicas each keep their own).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from l7.errors import L7Error

__all__ = ["RateLimited", "RateLimiter"]

_MAX_KEYS = 100_000


class RateLimited(L7Error):
    reason = "rate_limited"

    def __init__(self, bucket: str, key: str, retry_after_s: float) -> None:
        super().__init__(f"{bucket} limit reached for {key!r}; retry after {retry_after_s:.1f}s")
        self.bucket = bucket
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(
        self,
        limits: Callable[[], Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def check(self, bucket: str, key: str) -> None:
        """Take one token from ``bucket`` for ``key`` or raise RateLimited."""
        cfg = self._limits().get(bucket)
        if not isinstance(cfg, Mapping):
            return  # no limit configured for this bucket
        rate, burst = float(cfg.get("rate_per_s", 0)), float(cfg.get("burst", 0))
        if rate <= 0 or burst < 1 or not math.isfinite(rate + burst):
            return
        now = self._clock()
        with self._lock:
            b = self._buckets.get((bucket, key))
            if b is None:
                if len(self._buckets) >= _MAX_KEYS:  # bounded memory: forget the idle
                    self._buckets = {k: v for k, v in self._buckets.items() if v.tokens < burst}
                b = self._buckets[(bucket, key)] = _Bucket(burst, now)
            b.tokens = min(burst, b.tokens + (now - b.at) * rate)
            b.at = now
            if b.tokens < 1:
                raise RateLimited(bucket, key, (1 - b.tokens) / rate)
            b.tokens -= 1
