"""SQLAlchemy engines for the ledger: one for the writer thread, one for readers.

SQLite (the pysqlite recipe from the SQLAlchemy docs): pysqlite's own
transaction handling is disabled (``isolation_level = None``) and the writer
engine emits ``BEGIN IMMEDIATE`` on begin, so the write lock is taken at the
start of the transaction and ``max(global_seq) + 1`` is read under it. Every
connection sets ``busy_timeout``; writer connections set WAL and
``synchronous=FULL``; reader connections are ``query_only``. WAL lets readers
run beside the writer.

PostgreSQL (``postgresql://`` uses psycopg 3): plain engines; the writer
serialises itself with a table lock (``ledger.store``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["make_engine"]


def make_engine(url: str, *, writer: bool, busy_timeout_s: float) -> Engine:
    """An engine for ``url``; ``writer`` engines take the write lock when they begin."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
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
