"""Fixtures for the ledger tests: both backends, a fixed clock, an attacker, a lock holder.

``backend`` runs a test once on a SQLite file and once on a fresh PostgreSQL
database (marked ``integration``; the cluster from ``tests.ledger.postgres`` is
started only when a PostgreSQL test runs). On PostgreSQL the ledger uses the
least-privileged application role; the attacker is the superuser, who first
disables the append-only triggers, like someone with DBA access. On SQLite the
attacker has the file and drops the triggers.
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
from ledger._engine import WRITE_LOCK_KEY
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

    def execute(self, sql: str, **params: Any) -> list[Any]:
        result = self._conn.execute(text(sql), params)
        return list(result.all()) if result.returns_rows else []


class WriteLock:
    """Holds the ledger's write lock from outside (BEGIN EXCLUSIVE / the advisory lock)."""

    def __init__(self, engine: Engine, kind: str) -> None:
        self._engine = engine
        self._conn = engine.connect()
        if kind == "sqlite":
            self._conn.exec_driver_sql("BEGIN EXCLUSIVE")
        else:  # autocommit engine: an explicit transaction keeps the xact lock
            self._conn.exec_driver_sql("BEGIN")
            self._conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK_KEY})

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
        if self._backend.kind == "sqlite":
            for (name,) in self._conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type='trigger'"
            ).all():
                self._conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        else:
            self._conn.exec_driver_sql("ALTER TABLE events DISABLE TRIGGER ALL")
        return Attacker(self._conn)

    def __exit__(self, *exc: object) -> None:
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
    """SQLite only: someone with write access to the file, triggers dropped first."""
    con = sqlite3.connect(db, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    return con


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
