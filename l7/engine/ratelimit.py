"""Token-bucket rate limits per caller and per approver, with limits from the signed bundle.

``data.l7.config.rate_limits`` names buckets like ``{"decide_per_actor": {"rate_per_s": 20,
"burst": 40}, "approve_per_approver": {...}}``. A call over its limit is refused with
RESOURCE_EXHAUSTED (reason ``rate_limited``) and a retry-after; nothing is judged or
recorded for it. Buckets live in this engine process, or in PostgreSQL shared by every
replica (``l7.engine.ratelimit_store``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from l7.engine.ratelimit_store import BucketStore, MemoryBuckets
from l7.errors import L7Error

__all__ = ["RateLimited", "RateLimiter"]


class RateLimited(L7Error):
    reason = "rate_limited"

    def __init__(self, bucket: str, key: str, retry_after_s: float) -> None:
        super().__init__(f"{bucket} limit reached for {key!r}; retry after {retry_after_s:.1f}s")
        self.bucket = bucket
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(
        self,
        limits: Callable[[], Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
        store: BucketStore | None = None,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self.store: BucketStore = store or MemoryBuckets()

    def check(self, bucket: str, key: str) -> None:
        """Take one token from ``bucket`` for ``key`` or raise RateLimited."""
        cfg = self._limits().get(bucket)
        if not isinstance(cfg, Mapping):
            return  # no limit configured for this bucket
        rate, burst = float(cfg.get("rate_per_s", 0)), float(cfg.get("burst", 0))
        if rate <= 0 or burst < 1 or not math.isfinite(rate + burst):
            return
        retry_after = self.store.take(bucket, key, rate, burst, self._clock())
        if retry_after is not None:
            raise RateLimited(bucket, key, retry_after)

    def close(self) -> None:
        self.store.close()
