"""Fixtures for the ledger tests: both backends, a fixed clock, an attacker, a lock holder.

``backend`` runs a test once on a SQLite file and once on a fresh PostgreSQL
database (marked ``integration``; the cluster from ``tests.ledger.postgres`` is
started only when a PostgreSQL test runs). On PostgreSQL the ledger uses the
least-privileged application role; the attacker is the superuser, who first
disables the append-only triggers, like someone with DBA access. On SQLite the
attacker has the file and drops the triggers. Either puts them back when done (as
a careful insider would): a wall left down makes the next open refuse to serve
(``ledger._guards``), so what these attacks test is what the chain and the
checkpoints catch on their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from ledger import EventType, NewEvent, SqlLedger
from ledger._guards import PG_TRIGGERS, SQLITE_TRIGGERS
from ledger.pg_roles import provision
from tests.ledger.postgres import (
    APP_PASSWORD,
    APP_ROLE,
    TEMPLATE_DB,
    PostgresCluster,
    pg_app_url,
    pg_cluster,
    pg_url,
)

__all__ = ["pg_app_url", "pg_cluster", "pg_url"]  # re-exported fixtures

FIXED_AT = datetime(2026, 11, 25, 20, 44, 12, 123456, tzinfo=UTC)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


def ev(
    decision_id: str,
    i: int = 0,
    *,
    key: str | None = None,
    kind: EventType = EventType.POLICY_GATE,
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    return NewEvent(
        decision_id,
        kind,
        "alice",
        "rev-1",
        payload if payload is not None else {"gate": f"g{i}", "result": "pass"},
        key,
    )


class Attacker:
    """Raw SQL on the ledger's database with the append-only triggers out of the way."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def walls_down(self) -> None:
        """Drop (SQLite) or disable (PostgreSQL) the append-only triggers of ``events``."""
        if self._conn.dialect.name == "sqlite":
            for (name,) in self._conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type='trigger'"
            ).all():
                self._conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        else:
            self._conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER ALL")

    def walls_up(self) -> None:
        """Put the triggers back as migrated, so the ledger opens again."""
        restore_triggers(self._conn)

    def execute(self, sql: str, **params: Any) -> list[Any]:
        result = self._conn.execute(text(sql), params)
        return list(result.all()) if result.returns_rows else []


def restore_triggers(conn: Connection) -> None:
    """Put the append-only triggers back as migrated: dropped ones re-created, and on
    PostgreSQL each enabled ALWAYS."""
    if conn.dialect.name == "sqlite":
        have = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master").all()}
        for name, (_table, sql) in SQLITE_TRIGGERS.items():
            if name not in have:
                conn.exec_driver_sql(sql)
    else:
        have = {r[0] for r in conn.exec_driver_sql("SELECT tgname FROM pg_trigger").all()}
        for name, (table, ddl) in PG_TRIGGERS.items():
            if name not in have:
                conn.exec_driver_sql(ddl)
            conn.exec_driver_sql(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")


class WriteLock:
    """Holds the ledger's write lock from outside (BEGIN EXCLUSIVE / LOCK TABLE), as the
    admin: a superuser's session the lock function cannot fence."""

    def __init__(self, engine: Engine, kind: str) -> None:
        self._engine = engine
        self._conn = engine.connect()
        if kind == "sqlite":
            self._conn.exec_driver_sql("BEGIN EXCLUSIVE")
        else:  # autocommit engine: an explicit transaction keeps the xact lock
            self._conn.exec_driver_sql("BEGIN")
            self._conn.exec_driver_sql("LOCK TABLE ledger_write_lock IN EXCLUSIVE MODE")

    def release(self) -> None:
        self._conn.exec_driver_sql("COMMIT")
        self._conn.close()
        self._engine.dispose()


@dataclass(frozen=True)
class Backend:
    """One ledger database. ``url`` is what the engine uses; ``admin_url`` owns the schema."""

    kind: str
    url: str
    admin_url: str

    def engine(self) -> Engine:
        """An autocommit engine with the admin's (file owner's / superuser's) rights."""
        if self.kind == "sqlite":
            # pysqlite's own transaction handling off, like the ledger's engine
            eng = create_engine(self.admin_url, connect_args={"isolation_level": None})
        else:
            eng = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        return eng

    def sql(self, sql: str, **params: Any) -> list[Any]:
        """One statement as the admin, triggers in place."""
        eng = self.engine()
        try:
            with eng.connect() as conn:
                return Attacker(conn).execute(sql, **params)
        finally:
            eng.dispose()

    def attacker(self) -> _AttackerSession:
        return _AttackerSession(self)

    def lock(self) -> WriteLock:
        return WriteLock(self.engine(), self.kind)


class _AttackerSession:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._engine = backend.engine()

    def __enter__(self) -> Attacker:
        self._conn = self._engine.connect()
        attacker = Attacker(self._conn)
        attacker.walls_down()
        return attacker

    def __exit__(self, *exc: object) -> None:
        restore_triggers(self._conn)
        self._conn.close()
        self._engine.dispose()


def new_backend(request: pytest.FixtureRequest, kind: str, tmp: Path) -> Backend:
    """A fresh, migrated ledger database of ``kind`` (dropped at the end of ``request``)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'ledger.sqlite'}"
        SqlLedger(url).close()
        return Backend("sqlite", url, url)
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = cluster.create_database(template=TEMPLATE_DB)
    request.addfinalizer(lambda: cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin = cluster.url(name)
    return Backend("postgresql", provision(admin, APP_ROLE, APP_PASSWORD), admin)


def attacker(db: Path) -> sqlite3.Connection:
    """SQLite only: someone with write access to the file, triggers dropped first (put them
    back with ``restore_sqlite_triggers`` before the ledger is opened again)."""
    con = sqlite3.connect(db, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    return con


def restore_sqlite_triggers(con: sqlite3.Connection) -> None:
    """The attacker's sqlite3 connection puts the dropped append-only triggers back."""
    have = {r[0] for r in con.execute("SELECT name FROM sqlite_master").fetchall()}
    for name, (_table, sql) in SQLITE_TRIGGERS.items():
        if name not in have:
            con.execute(sql)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """SQLite only: a ledger file path (nothing created yet)."""
    return tmp_path / "ledger.sqlite"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return new_backend(request, request.param, tmp_path)


@pytest.fixture
def led(backend: Backend) -> Iterator[SqlLedger]:
    ledger = SqlLedger(backend.url, clock=lambda: FIXED_AT)
    yield ledger
    ledger.close()
