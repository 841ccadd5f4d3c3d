"""The ledger's schema revision: checked on every open, migrated with ``create=True``.

Revisions are Alembic scripts in ``ledger/migrations/versions``; the Alembic
``Config`` is built here in code (no alembic.ini at runtime). ``ensure_schema``:

1. reads the stamped revision (``alembic_version``) and whether ``events``
   exists, on a read-only connection;
2. refuses a revision this build does not know (a newer layer7 migrated the
   database, or it is not a ledger) -> LedgerUnavailable;
3. if the schema is at head, done. Otherwise, without ``create`` it refuses
   (a missing or older schema is never written by a reader); with ``create``
   it takes the migration lock (``BEGIN IMMEDIATE`` / an advisory lock) and, in
   that one transaction, re-reads the state, stamps a pre-migration ledger
   (``events`` without ``alembic_version``) at the baseline, and upgrades to
   head. Concurrent openers wait on the lock and then find the schema at head;
4. at head, checks the database's own walls (``ledger._guards.check_guards``): the
   append-only triggers and, on PostgreSQL, the session role's privileges are exactly
   as migrated, or the ledger refuses to serve (SchemaTampered, naming what changed).

SQLAlchemy and Alembic exceptions propagate; ``ledger.store`` translates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

from ledger._engine import migration_lock
from ledger._guards import check_guards
from ledger.errors import LedgerUnavailable

__all__ = ["BASELINE", "MIGRATIONS", "SchemaState", "ensure_schema", "head", "read_state"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
"""The revision whose schema ledgers created before migrations already have."""


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        cfg.attributes["connection"] = conn
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@cache
def _known() -> frozenset[str]:
    return frozenset(s.revision for s in _scripts().walk_revisions())


def head() -> str:
    """The newest revision this build knows."""
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise LedgerUnavailable(f"ledger migrations have {len(heads)} heads {heads}; expected one")
    return heads[0]


@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its stamped revision (None if unstamped) and the events table."""

    revision: str | None
    has_events: bool


def read_state(conn: Connection) -> SchemaState:
    """The stamped revision and whether ``events`` exists (reads only)."""
    revision = MigrationContext.configure(conn).get_current_revision()
    return SchemaState(revision, inspect(conn).has_table("events"))


def _check_known(state: SchemaState, where: str) -> None:
    if state.revision is not None and state.revision not in _known():
        raise LedgerUnavailable(
            f"ledger {where} has schema revision {state.revision!r}, which this build of "
            f"layer7 does not know (its newest is {head()!r}); it was probably migrated by a "
            "newer layer7 - upgrade layer7, or point --ledger at the right database"
        )


def ensure_schema(reader: Engine, writer: Engine, *, create: bool, where: str) -> str:
    """Check (and with ``create``, migrate) the schema and its walls; return its revision."""
    target = _ensure_revision(reader, writer, create=create, where=where)
    with reader.connect() as conn:
        check_guards(conn, where)
    return target


def _ensure_revision(reader: Engine, writer: Engine, *, create: bool, where: str) -> str:
    target = head()
    with reader.connect() as conn:
        state = read_state(conn)
    _check_known(state, where)
    if state.revision == target:
        return target
    if not create:
        if state.revision is None and not state.has_events:
            raise LedgerUnavailable(
                f"no ledger (table 'events') in {where}; create it with open_ledger(url) "
                "(create=True) as a role that may create tables"
            )
        found = state.revision or f"{BASELINE} (unstamped)"
        raise LedgerUnavailable(
            f"ledger {where} has schema revision {found}; this build needs {target!r} - "
            "open it once with create=True (as the schema owner) to migrate it"
        )
    with writer.connect() as conn, conn.begin():
        migration_lock(conn)
        state = read_state(conn)  # again, under the lock: another process may have migrated
        _check_known(state, where)
        cfg = _config(conn)
        if state.revision is None and state.has_events:
            command.stamp(cfg, BASELINE)
        if state.revision != target:
            command.upgrade(cfg, "head")
    return target
