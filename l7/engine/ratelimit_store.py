"""Where token buckets live: this process (``MemoryBuckets``) or a PostgreSQL table shared
by every engine replica (``SqlBuckets``).

Replicas behind a load balancer must not each grant the full burst: with the ledger on
PostgreSQL, ``l7 serve`` keeps the buckets in that database and every take is one
call of ``l7_rate_take(bucket, key, rate, burst)``, which refills and takes under a row
lock, timed by the database's clock so replicas with skewed clocks still agree. The table
``l7_rate_buckets`` and that SECURITY DEFINER function belong to the ledger database's
owner (ledger migration 0004); the least-privileged app role may only EXECUTE the
function, so it cannot UPDATE or DELETE a bucket back to full, and a caller's rate and
burst never refill a bucket faster than the limits it was last taken with. The table
holds actor and approver ids and counters, never request content.

If the database cannot answer, the take fails closed with ``RateLimitDegraded``
(UNAVAILABLE): a limit we cannot check is not a limit we may skip.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from l7.errors import ConfigError, LedgerDegraded

__all__ = ["BucketStore", "MemoryBuckets", "RateLimitDegraded", "SqlBuckets"]

_MAX_KEYS = 100_000


class RateLimitDegraded(LedgerDegraded):
    """The shared bucket store (the ledger's PostgreSQL) did not answer: refuse the call."""

    reason = "rate_limit_degraded"


class BucketStore(Protocol):
    def take(self, bucket: str, key: str, rate: float, burst: float, now: float) -> float | None:
        """Take one token; None when granted, else the seconds until one is available.
        ``now`` is this process's monotonic clock (stores with their own clock ignore it)."""
        ...

    def close(self) -> None: ...


@dataclass
class _Bucket:
    tokens: float
    at: float


class MemoryBuckets:
    """Buckets in this process: each engine replica keeps its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def take(self, bucket: str, key: str, rate: float, burst: float, now: float) -> float | None:
        with self._lock:
            b = self._buckets.get((bucket, key))
            if b is None:
                if len(self._buckets) >= _MAX_KEYS:  # bounded memory: forget the idle
                    self._buckets = {k: v for k, v in self._buckets.items() if v.tokens < burst}
                b = self._buckets[(bucket, key)] = _Bucket(burst, now)
            b.tokens = min(burst, b.tokens + (now - b.at) * rate)
            b.at = now
            if b.tokens < 1:
                return (1 - b.tokens) / rate
            b.tokens -= 1
            return None

    def close(self) -> None:
        pass


# The ledger's migrations (revision 0004) own the table and this function; the app role
# may only EXECUTE it (ledger.pg_roles), so no session of it can UPDATE a bucket back to full.
_TAKE = text("SELECT l7_rate_take(:bucket, :key, :rate, :burst)")
_HAS_TAKE = text(
    "SELECT has_function_privilege(p.oid, 'EXECUTE') FROM pg_proc p "
    "WHERE p.proname = 'l7_rate_take' AND p.pronamespace = 'public'::regnamespace"
)


class SqlBuckets:
    """Buckets in PostgreSQL, shared by every engine that points at the same database."""

    def __init__(self, url: str) -> None:
        engine = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
        if engine.dialect.name != "postgresql":
            engine.dispose()
            raise ConfigError(
                f"shared rate limits need PostgreSQL, not {engine.dialect.name} "
                "(leave them per process, or point them at the ledger's PostgreSQL)"
            )
        try:
            with engine.connect() as conn:
                may = conn.execute(_HAS_TAKE).scalar_one_or_none()
        except SQLAlchemyError as e:
            engine.dispose()
            raise ConfigError(
                f"cannot reach the shared rate-limit store ({type(e).__name__}); check the "
                "ledger URL and that the database is up"
            ) from e
        if not may:
            engine.dispose()
            raise ConfigError(
                "the shared rate-limit function l7_rate_take "
                + ("is missing" if may is None else "may not be executed by this role")
                + ": migrate this database with the ledger's migrations (open the ledger "
                "once as its owner, or run python -m ledger.pg_roles ADMIN_URL APP_ROLE, "
                "which also grants the app role EXECUTE on it)"
            )
        self._engine = engine

    def take(self, bucket: str, key: str, rate: float, burst: float, now: float) -> float | None:
        args = {"bucket": bucket, "key": key, "rate": rate, "burst": burst}
        try:
            with self._engine.begin() as conn:
                wait = conn.execute(_TAKE, args).scalar_one()
        except SQLAlchemyError as e:
            raise RateLimitDegraded(
                f"the shared rate-limit store is unreachable ({type(e).__name__}); refusing "
                "rather than skipping the limit"
            ) from e
        return None if wait is None else max(0.0, float(wait))

    def close(self) -> None:
        self._engine.dispose()
