"""Least-privilege PostgreSQL (issue 14 item 6): owner, app and auditor roles, provisioned by
``ledger.pg_roles``; each runtime role logs in and tries every statement it must not run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from ledger import LedgerUnavailable, SqlLedger
from ledger._engine import MIGRATION_LOCK_KEY
from ledger.pg_roles import DEFAULT_OWNER, provision, role_url
from tests.ledger.conftest import ev
from tests.ledger.postgres import APP_PASSWORD, APP_ROLE

pytestmark = pytest.mark.integration

AUDITOR_ROLE = "l7_auditor"
AUDITOR_PASSWORD = "auditor-secret-for-tests"


@dataclass(frozen=True)
class Roles:
    admin: str
    app: str
    auditor: str


@pytest.fixture
def roles(pg_url: str) -> Roles:
    app = provision(
        pg_url,
        APP_ROLE,
        APP_PASSWORD,
        auditor_role=AUDITOR_ROLE,
        auditor_password=AUDITOR_PASSWORD,
    )
    with SqlLedger(app) as led:  # something to protect, and a bucket
        led.append([ev("d1")])
    _run(app, "SELECT l7_rate_take('decide_per_actor', 'alice', 0.001, 5)")
    return Roles(pg_url, app, role_url(pg_url, AUDITOR_ROLE, AUDITOR_PASSWORD))


def _run(url: str, sql: str, **params: Any) -> list[Any]:
    """``sql`` as ``url``'s role, in a transaction of its own (LOCK TABLE needs one)."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        eng.dispose()


def _tokens(admin: str, key: str = "alice") -> float:
    ((tokens,),) = _run(admin, "SELECT tokens FROM l7_rate_buckets WHERE key = :k", k=key)
    return float(tokens)


FORBIDDEN_TO_BOTH = [
    ("UPDATE events SET actor = 'mallory'", "permission denied for table events"),
    ("DELETE FROM events", "permission denied for table events"),
    ("TRUNCATE events", "permission denied for table events"),
    ("UPDATE checkpoints SET key_id = 'x'", "permission denied for table checkpoints"),
    ("DELETE FROM checkpoints", "permission denied for table checkpoints"),
    ("TRUNCATE checkpoints", "permission denied for table checkpoints"),
    ("ALTER TABLE events DISABLE TRIGGER ALL", "must be owner of table events"),
    ("ALTER TABLE events DISABLE TRIGGER events_refuse_truncate", "must be owner of table"),
    ("ALTER TABLE checkpoints DISABLE TRIGGER USER", "must be owner of table checkpoints"),
    ("DROP TRIGGER events_refuse_truncate ON events", "must be owner of (table|relation) events"),
    ("ALTER TABLE events ADD COLUMN x int", "must be owner of table events"),
    ("DROP TABLE events", "must be owner of table events"),
    ("DROP TABLE checkpoints", "must be owner of table checkpoints"),
    ("CREATE TABLE evil (x int)", "permission denied for schema public"),
    ("DELETE FROM alembic_version", "permission denied for table alembic_version"),
    ("SET session_replication_role = replica", "permission denied to set parameter"),
    (f"SET ROLE {DEFAULT_OWNER}", "permission denied to set role"),
    # rate buckets: no direct statement reaches them
    ("UPDATE l7_rate_buckets SET tokens = 5", "permission denied for table l7_rate_buckets"),
    ("DELETE FROM l7_rate_buckets", "permission denied for table l7_rate_buckets"),
    ("TRUNCATE l7_rate_buckets", "permission denied for table l7_rate_buckets"),
    (
        "INSERT INTO l7_rate_buckets VALUES ('decide_per_actor', 'alice', 5, 0, 1, 5) "
        "ON CONFLICT (bucket, key) DO UPDATE SET tokens = 5",
        "permission denied for table l7_rate_buckets",
    ),
    ("ALTER FUNCTION l7_rate_take(text, text, float8, float8) OWNER TO l7_app", "must be owner"),
    (
        "CREATE OR REPLACE FUNCTION l7_rate_take(text, text, float8, float8) RETURNS float8 "
        "LANGUAGE sql AS 'SELECT NULL::float8'",
        "permission denied for schema public|must be owner of function l7_rate_take",
    ),
    # the write lock: neither the table nor its settings
    ("LOCK TABLE ledger_write_lock IN EXCLUSIVE MODE", "permission denied for table"),
    ("LOCK TABLE ledger_write_lock IN ACCESS SHARE MODE", "permission denied for table"),
    ("SELECT * FROM ledger_write_lock FOR UPDATE", "permission denied for table"),
    ("UPDATE ledger_write_lock SET max_hold_ms = 1", "permission denied for table"),
    ("LOCK TABLE events IN SHARE MODE", "permission denied for table events"),
]


@pytest.mark.parametrize(("sql", "match"), FORBIDDEN_TO_BOTH, ids=[s for s, _ in FORBIDDEN_TO_BOTH])
@pytest.mark.parametrize("who", ["app", "auditor"])
def test_runtime_roles_are_refused_every_change(
    roles: Roles, who: str, sql: str, match: str
) -> None:
    with pytest.raises(ProgrammingError, match=match):
        _run(getattr(roles, who), sql)
    assert _run(roles.admin, "SELECT actor FROM events") == [("alice",)]
    assert _tokens(roles.admin) == 4


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("INSERT INTO events SELECT * FROM events", "permission denied for table events"),
        ("SELECT ledger_write_lock(1000)", "permission denied for function ledger_write_lock"),
        ("SELECT l7_rate_take('b', 'k', 1, 1)", "permission denied for function l7_rate_take"),
        ("SELECT * FROM l7_rate_buckets", "permission denied for table l7_rate_buckets"),
    ],
)
def test_auditor_only_reads(roles: Roles, sql: str, match: str) -> None:
    with pytest.raises(ProgrammingError, match=match):
        _run(roles.auditor, sql)
    with SqlLedger(roles.auditor, create=False) as led:
        assert led.verify().events == 1
        with pytest.raises(LedgerUnavailable, match=r"lack of a privilege"):
            led.append([ev("d2")])


def test_owner_never_logs_in(roles: Roles, pg_url: str) -> None:
    _run(pg_url, f"ALTER ROLE {DEFAULT_OWNER} PASSWORD 'guess'")  # even with a password
    owner = make_url(pg_url).set(username=DEFAULT_OWNER, password="guess")
    with pytest.raises(OperationalError, match=r"not permitted to log in"):
        _run(owner.render_as_string(hide_password=False), "SELECT 1")
    ((events_owner,),) = _run(
        roles.admin, "SELECT tableowner FROM pg_tables WHERE tablename='events'"
    )
    assert events_owner == DEFAULT_OWNER


def test_app_role_cannot_refill_a_bucket_through_the_function(roles: Roles) -> None:
    take = "SELECT l7_rate_take('decide_per_actor', 'alice', :rate, :burst)"
    for _ in range(4):  # the rest of the burst of 5
        assert _run(roles.app, take, rate=0.001, burst=5) == [(None,)]
    ((wait,),) = _run(roles.app, take, rate=0.001, burst=5)
    assert wait > 100  # empty: one token at 0.001/s is most of 1000 s away
    # a caller claiming a huge rate and burst gets no more than the bucket's own limits
    ((wait,),) = _run(roles.app, take, rate=1e9, burst=1e9)
    assert wait is not None and wait > 100
    ((wait,),) = _run(roles.app, take, rate=0.001, burst=5)
    assert wait is not None and wait > 100
    for bad in ({"rate": float("nan"), "burst": 5}, {"rate": 1, "burst": float("inf")}):
        with pytest.raises(DBAPIError, match=r"rate must be > 0 and burst >= 1"):
            _run(roles.app, take, **bad)


class _Holder:
    """A session of ``url`` in an open transaction that ran ``sql`` and then sits there."""

    def __init__(self, url: str, sql: str) -> None:
        self.engine: Engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.conn = self.engine.connect()
        self.conn.exec_driver_sql("BEGIN")
        self.conn.execute(text(sql))
        self.pid = int(self.conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.engine.dispose()


@pytest.fixture
def holders() -> Iterator[list[_Holder]]:
    made: list[_Holder] = []
    yield made
    for h in made:
        h.close()


@pytest.mark.parametrize("who", ["app", "auditor"])
def test_old_advisory_key_held_by_the_app_or_auditor_does_not_block_appends(
    roles: Roles, holders: list[_Holder], who: str
) -> None:
    holders.append(
        _Holder(getattr(roles, who), f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    )
    with SqlLedger(roles.app, busy_timeout_s=30) as led:
        assert led.append([ev("d1", 1)])[0].global_seq == 2


def test_app_session_sitting_on_the_write_lock_is_fenced(
    roles: Roles, holders: list[_Holder]
) -> None:
    # the owner's bounds, small for the test: a writer waits 300 ms, then fences any
    # holder whose transaction is older than 300 + 300 ms
    _run(roles.admin, "UPDATE ledger_write_lock SET max_wait_ms = 300, max_hold_ms = 300")
    squatter = _Holder(roles.app, "SELECT ledger_write_lock(1000)")
    holders.append(squatter)
    time.sleep(0.7)  # (a wait, not an assertion: the squatter's transaction gets old)
    with SqlLedger(roles.app, busy_timeout_s=30) as led:
        (conf,) = led.append([ev("d1", 1)])  # fenced the squatter, then appended
        assert conf.global_seq == 2
    with pytest.raises(OperationalError, match=r"terminat"):
        squatter.conn.execute(text("SELECT 1"))


def test_a_fresh_lock_holder_is_waited_for_not_fenced(roles: Roles, holders: list[_Holder]) -> None:
    """The other side of the fence: a writer that holds the lock for less than the bound
    (a legitimate group commit of another process) is waited for, and keeps its session."""
    _run(roles.admin, "UPDATE ledger_write_lock SET max_wait_ms = 30000, max_hold_ms = 30000")
    holder = _Holder(roles.app, "SELECT ledger_write_lock(1000)")
    holders.append(holder)
    done = threading.Event()
    with SqlLedger(roles.app, busy_timeout_s=30) as led:
        t = threading.Thread(target=lambda: (led.append([ev("d1", 1)]), done.set()))
        t.start()
        assert not done.wait(0.5)  # blocked behind the holder
        holder.conn.exec_driver_sql("COMMIT")
        t.join(30)
        assert done.is_set()
    assert holder.conn.execute(text("SELECT 1")).scalar_one() == 1  # not terminated


def test_superuser_lock_holder_is_not_fenced_and_appends_fail_closed(
    roles: Roles, holders: list[_Holder]
) -> None:
    _run(roles.admin, "UPDATE ledger_write_lock SET max_wait_ms = 200, max_hold_ms = 100")
    holders.append(_Holder(roles.admin, "LOCK TABLE ledger_write_lock IN EXCLUSIVE MODE"))
    time.sleep(0.4)
    with SqlLedger(roles.app, busy_timeout_s=30) as led:
        with pytest.raises(LedgerUnavailable, match=r"is locked by another connection"):
            led.append([ev("d1", 1)])
        assert led.count() == 1
