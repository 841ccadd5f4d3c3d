"""SQLAlchemy engines for the ledger: one for the writer thread, one for readers.

SQLite (the pysqlite recipe from the SQLAlchemy docs): pysqlite's own
transaction handling is disabled (``isolation_level = None``) and the writer
engine emits ``BEGIN IMMEDIATE`` on begin, so the write lock is taken at the
start of the transaction and ``max(global_seq) + 1`` is read under it. Every
connection sets ``busy_timeout``; writer connections set WAL and
``synchronous=FULL``; reader connections are ``query_only``. WAL lets readers
run beside the writer.

PostgreSQL (``postgresql+psycopg://``, psycopg 3): the writer serialises itself
across processes with ``SELECT ledger_write_lock(wait_ms)`` as the first statement
of each transaction (``write_lock``). That SECURITY DEFINER function (revision 0004,
owned by the schema owner, EXECUTE for the app role only) takes an EXCLUSIVE lock on
the table ``ledger_write_lock``, on which no other role holds any privilege, and
fences a holder that sits on it (see the revision). It replaced
``pg_advisory_xact_lock``, which any session of any role - the auditor's included -
could take to stop every append. Under READ COMMITTED every later statement sees
what the previous lock holder committed. Writer connections set ``lock_timeout`` to
the busy timeout; reader connections are read-only. ``pool_pre_ping`` replaces
connections a restarted server dropped.

Migrations (``ledger.schema``) still serialise on the advisory lock
``MIGRATION_LOCK_KEY``: they run as the owner, before the function may exist.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

__all__ = [
    "MIGRATION_LOCK_KEY",
    "WRITE_LOCK_SQL",
    "make_engine",
    "migration_lock",
    "write_lock",
    "write_lock_ms",
]

MIGRATION_LOCK_KEY = 0x4C375F4C45444752
"""Advisory lock key (bigint) schema migrations take ("L7_LEDGR"; the writers' key before 0004)."""
WRITE_LOCK_SQL = "SELECT ledger_write_lock(%s)"
"""The writers' lock on PostgreSQL (revision 0004), in psycopg's paramstyle: the wait in ms."""

_CONNECT_TIMEOUT_S = 5


def make_engine(url: str, *, writer: bool, busy_timeout_s: float) -> Engine:
    """An engine for ``url``; ``writer`` engines serialise writes (see the module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql(url, writer=writer, busy_timeout_s=busy_timeout_s)
    eng = create_engine(
        url,
        connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        pool_size=1 if writer else 5,
    )
    busy_ms = max(1, int(busy_timeout_s * 1000))

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # no implicit BEGIN from pysqlite; we emit our own
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
        cur.execute("PRAGMA foreign_keys = ON")
        if writer:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
        else:
            cur.execute("PRAGMA query_only = ON")
        cur.close()

    if writer:

        @event.listens_for(eng, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


def _postgresql(url: str, *, writer: bool, busy_timeout_s: float) -> Engine:
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    if "application_name" not in parsed.query:
        connect_args["application_name"] = "layer7-ledger-" + ("writer" if writer else "reader")
    eng = create_engine(
        url, pool_pre_ping=True, pool_size=1 if writer else 5, connect_args=connect_args
    )
    lock_ms = max(1, int(busy_timeout_s * 1000))

    @event.listens_for(eng, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        with dbapi_conn.cursor() as cur:
            if writer:
                cur.execute(f"SET lock_timeout = {lock_ms}")
            else:
                cur.execute("SET default_transaction_read_only = on")
        dbapi_conn.autocommit = autocommit

    return eng


def write_lock_ms(busy_timeout_s: float) -> int:
    """The wait ``ledger_write_lock`` is given: the busy timeout, in whole milliseconds."""
    return max(1, int(busy_timeout_s * 1000))


def write_lock(conn: Connection, busy_timeout_s: float) -> None:
    """Take the cross-process write lock for the current transaction (PostgreSQL only).

    On SQLite the writer engine's ``BEGIN IMMEDIATE`` already holds it.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(WRITE_LOCK_SQL, (write_lock_ms(busy_timeout_s),))


def migration_lock(conn: Connection) -> None:
    """Serialise schema migrations across processes (PostgreSQL; SQLite: BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
