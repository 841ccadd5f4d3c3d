"""Rate-limit buckets shared by engine replicas through a real PostgreSQL (issue #7 item 4).

Each ``SqlBuckets`` below has its own connection pool, exactly like two engine processes
pointing at the same database; the per-process ``MemoryBuckets`` is the contrast that
shows the test can fail (two replicas would each grant the whole burst).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from l7.engine.ratelimit import RateLimited, RateLimiter
from l7.engine.ratelimit_store import MemoryBuckets, RateLimitDegraded, SqlBuckets
from l7.errors import ConfigError
from l7.stack import Stack, StackConfig
from ledger.pg_roles import provision
from tests.ledger.postgres import APP_PASSWORD, APP_ROLE, PostgresCluster

pytestmark = pytest.mark.integration

LIMITS: dict[str, Any] = {"decide_per_actor": {"rate_per_s": 0.001, "burst": 5}}


@pytest.fixture
def replicas(pg_url: str) -> Iterator[tuple[RateLimiter, RateLimiter]]:
    a, b = SqlBuckets(pg_url), SqlBuckets(pg_url)
    try:
        yield RateLimiter(lambda: LIMITS, store=a), RateLimiter(lambda: LIMITS, store=b)
    finally:
        a.close()
        b.close()


def _granted(limiter: RateLimiter, n: int, key: str = "agent-1") -> int:
    ok = 0
    for _ in range(n):
        try:
            limiter.check("decide_per_actor", key)
            ok += 1
        except RateLimited:
            pass
    return ok


def test_two_replicas_share_one_burst(replicas: tuple[RateLimiter, RateLimiter]) -> None:
    a, b = replicas
    assert _granted(a, 3) == 3
    assert _granted(b, 3) == 2  # only what a left over
    with pytest.raises(RateLimited) as err:
        a.check("decide_per_actor", "agent-1")
    assert err.value.reason == "rate_limited"
    assert err.value.retry_after_s > 100  # 1 token at 0.001/s: most of 1000 s away
    assert _granted(b, 5, key="agent-2") == 5  # another actor has its own bucket


def test_per_process_buckets_would_each_grant_the_burst() -> None:
    a = RateLimiter(lambda: LIMITS, store=MemoryBuckets())
    b = RateLimiter(lambda: LIMITS, store=MemoryBuckets())
    assert _granted(a, 5) + _granted(b, 5) == 10  # what sharing prevents


def test_concurrent_takes_never_exceed_the_burst(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    stores = [SqlBuckets(pg_url) for _ in range(4)]
    limiters = [RateLimiter(lambda: LIMITS, store=s) for s in stores]
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: _granted(limiters[i % 4], 5), range(8)))
    finally:
        for s in stores:
            s.close()
    assert sum(results) == 5


def test_store_down_fails_closed(pg_cluster: PostgresCluster, pg_url: str) -> None:
    store = SqlBuckets(pg_url)
    limiter = RateLimiter(lambda: LIMITS, store=store)
    try:
        limiter.check("decide_per_actor", "agent-9")
        pg_cluster.stop()
        try:
            with pytest.raises(RateLimitDegraded) as err:
                limiter.check("decide_per_actor", "agent-9")
            assert err.value.reason == "rate_limit_degraded"
        finally:
            pg_cluster.start()
        limiter.check("decide_per_actor", "agent-9")  # back without a restart
    finally:
        store.close()


def test_sqlite_is_refused_for_shared_buckets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need PostgreSQL"):
        SqlBuckets(f"sqlite:///{tmp_path / 'x.sqlite'}")


def test_stack_on_postgresql_shares_buckets(pg_url: str, tmp_path: Path) -> None:
    cfg = StackConfig(env="local", ledger_url=pg_url, work_dir=tmp_path, sweep_interval_s=0)
    with Stack(cfg) as stack:
        assert stack.engine is not None
        assert isinstance(stack.engine.rate_limiter.store, SqlBuckets)


def test_engine_on_the_least_privileged_app_role_starts_and_limits(
    pg_url: str, tmp_path: Path
) -> None:
    """The app role from ``ledger.pg_roles`` (no UPDATE anywhere, EXECUTE on l7_rate_take):
    the engine starts on it, and the replicas' shared burst still holds."""
    app_url = provision(pg_url, APP_ROLE, APP_PASSWORD)
    cfg = StackConfig(env="local", ledger_url=app_url, work_dir=tmp_path, sweep_interval_s=0)
    with Stack(cfg) as stack:
        assert stack.engine is not None
        assert isinstance(stack.engine.rate_limiter.store, SqlBuckets)
    a, b = SqlBuckets(app_url), SqlBuckets(app_url)
    try:
        ra, rb = RateLimiter(lambda: LIMITS, store=a), RateLimiter(lambda: LIMITS, store=b)
        assert _granted(ra, 3) + _granted(rb, 3) == 5
    finally:
        a.close()
        b.close()


def test_a_database_without_the_take_function_is_a_config_error(
    pg_cluster: PostgresCluster,
) -> None:
    name = pg_cluster.create_database()  # empty: never migrated
    try:
        with pytest.raises(ConfigError, match=r"l7_rate_take is missing: migrate this database"):
            SqlBuckets(pg_cluster.url(name))
    finally:
        pg_cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
