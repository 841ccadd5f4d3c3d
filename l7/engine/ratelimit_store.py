"""Where token buckets live: this process (``MemoryBuckets``) or a PostgreSQL table shared
by every engine replica (``SqlBuckets``).

Replicas behind a load balancer must not each grant the full burst: with the ledger on
PostgreSQL, ``l7 serve`` keeps the buckets in that database and every take is one
atomic ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` on the row for (bucket, key),
timed by the database's clock so replicas with skewed clocks still agree. The table is
``l7_rate_buckets`` (created if missing; a least-privileged role needs SELECT, INSERT and
UPDATE on it). It holds actor and approver ids and counters, never request content.

If the database cannot answer, the take fails closed with ``RateLimitDegraded``
(UNAVAILABLE): a limit we cannot check is not a limit we may skip.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Column, Float, MetaData, String, Table, create_engine, text
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


_META = MetaData()
_TABLE = Table(
    "l7_rate_buckets",
    _META,
    Column("bucket", String(64), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("tokens", Float(53), nullable=False),
    Column("at", Float(53), nullable=False),
)

# One statement: refill from the elapsed database time, take a token only if one is there.
_TAKE = text(
    """
    INSERT INTO l7_rate_buckets AS b (bucket, key, tokens, at)
    VALUES (:bucket, :key, :burst - 1, extract(epoch FROM clock_timestamp()))
    ON CONFLICT (bucket, key) DO UPDATE
        SET tokens = LEAST(:burst, b.tokens + (EXCLUDED.at - b.at) * :rate) - 1,
            at = EXCLUDED.at
        WHERE LEAST(:burst, b.tokens + (EXCLUDED.at - b.at) * :rate) >= 1
    RETURNING b.tokens
    """
)
_LEVEL = text(
    """
    SELECT LEAST(:burst, tokens + (extract(epoch FROM clock_timestamp()) - at) * :rate)
    FROM l7_rate_buckets WHERE bucket = :bucket AND key = :key
    """
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
            _META.create_all(engine, checkfirst=True)
        except SQLAlchemyError as e:
            engine.dispose()
            raise ConfigError(
                "cannot create the shared rate-limit table l7_rate_buckets "
                f"({type(e).__name__}); create it as the database owner or grant the role "
                "CREATE, then SELECT/INSERT/UPDATE on it"
            ) from e
        self._engine = engine

    def take(self, bucket: str, key: str, rate: float, burst: float, now: float) -> float | None:
        args = {"bucket": bucket, "key": key, "rate": rate, "burst": burst}
        try:
            with self._engine.begin() as conn:
                if conn.execute(_TAKE, args).first() is not None:
                    return None
                level = conn.execute(_LEVEL, args).scalar_one_or_none()
        except SQLAlchemyError as e:
            raise RateLimitDegraded(
                f"the shared rate-limit store is unreachable ({type(e).__name__}); refusing "
                "rather than skipping the limit"
            ) from e
        tokens = float(level) if level is not None else 0.0
        return max(0.0, (1 - tokens) / rate)

    def close(self) -> None:
        self._engine.dispose()
