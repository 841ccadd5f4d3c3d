"""The writer thread's group commit on the pooled DBAPI connection.

Profiling ``make bench`` showed SQLAlchemy's per-transaction and per-statement work
(Connection objects, begin/commit events, compiling, cache keys, parameter processing,
savepoints) costing more of the writer's CPU than SQLite itself. The few statements of a
group commit are therefore written once, in the dialect's paramstyle, and run on a
DBAPI connection checked out from the writer engine's pool (so ``pool_pre_ping`` and the
connect-time settings - WAL, ``synchronous=FULL``, ``busy_timeout``, ``lock_timeout`` -
still apply). ``begin_write`` takes the same write lock the SQLAlchemy path takes
(``BEGIN IMMEDIATE`` on SQLite, ``ledger_write_lock()`` on PostgreSQL).

Driver exceptions are wrapped back into SQLAlchemy's ``DBAPIError`` family
(``DBAPIError.instance``), so ``ledger._dberrors.db_errors`` stays the one place that
turns them into ledger errors (DuplicateKey, LedgerUnavailable ...).

This module knows the ``events`` table from ``ledger.models``; ``SqlLedger._commit_db``
decides what to run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Dialect, Engine
from sqlalchemy.exc import DBAPIError

from ledger._engine import WRITE_LOCK_SQL, write_lock_ms
from ledger.interface import GENESIS_HASH, EventHash
from ledger.models import events_table

__all__ = ["INSERT_COLUMNS", "FastSql"]

INSERT_COLUMNS: tuple[str, ...] = tuple(c.name for c in events_table.columns)
"""Every column of ``events``, in table order (the order of the INSERT's values)."""

_IN_CHUNK = 500


class FastSql:
    """Pre-rendered writer statements for one dialect (``sqlite`` or ``postgresql``)."""

    def __init__(self, dialect: Dialect, *, busy_timeout_s: float) -> None:
        self.dialect = dialect
        self.lock_ms = write_lock_ms(busy_timeout_s)
        self.sqlite = dialect.name == "sqlite"
        self.ph = "?" if self.sqlite else "%s"
        # Only constants go into the SQL text (table and column names from ledger.models,
        # placeholders); every value is a bound parameter.
        table = events_table.name
        cols = ", ".join(INSERT_COLUMNS)
        values = ", ".join([self.ph] * len(INSERT_COLUMNS))
        self.insert_sql = f"INSERT INTO {table} ({cols}) VALUES ({values})"  # noqa: S608
        self.max_sql = f"SELECT coalesce(max(global_seq), 0) FROM {table}"  # noqa: S608
        self._heads_head = (
            f"SELECT e.decision_id, e.sequence, e.hash FROM {table} e "  # noqa: S608
            "WHERE e.decision_id IN ("
        )
        self._heads_tail = (
            f") AND e.sequence = (SELECT max(h.sequence) FROM {table} h "  # noqa: S608
            "WHERE h.decision_id = e.decision_id)"
        )

    def _heads_sql(self, n: int) -> str:
        return self._heads_head + ", ".join([self.ph] * n) + self._heads_tail

    def _run(self, raw: Any, sql: str, params: Any, *, many: bool = False) -> list[tuple[Any, ...]]:
        """``sql`` on the DBAPI connection ``raw``; driver errors as SQLAlchemy's."""
        dbapi: Any = self.dialect.loaded_dbapi
        try:
            cur = raw.cursor()
            try:
                if many:
                    cur.executemany(sql, params)
                    return []
                cur.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()] if cur.description else []
            finally:
                cur.close()
        except dbapi.Error as e:
            # Back into SQLAlchemy's exception tree, for ledger._dberrors.db_errors.
            raise DBAPIError.instance(sql, params, e, dbapi.Error, dialect=self.dialect) from e

    def connect(self, engine: Engine) -> Any:
        """A DBAPI connection from ``engine``'s pool (driver errors as SQLAlchemy's)."""
        dbapi: Any = self.dialect.loaded_dbapi
        try:
            return engine.raw_connection()
        except dbapi.Error as e:  # Engine.connect() wraps these; raw_connection() does not
            raise DBAPIError.instance(None, None, e, dbapi.Error, dialect=self.dialect) from e

    def begin_write(self, raw: Any) -> None:
        """Start the group's transaction holding the cross-process write lock."""
        if self.sqlite:
            self._run(raw, "BEGIN IMMEDIATE", ())
        else:  # psycopg begins implicitly; the lock is held until commit or rollback
            self._run(raw, WRITE_LOCK_SQL, (self.lock_ms,))

    def commit(self, raw: Any) -> None:
        dbapi: Any = self.dialect.loaded_dbapi
        try:
            raw.commit()
        except dbapi.Error as e:
            raise DBAPIError.instance("COMMIT", (), e, dbapi.Error, dialect=self.dialect) from e

    def rollback(self, raw: Any) -> None:
        """Best effort: the connection may be gone (the pool replaces it)."""
        try:
            raw.rollback()
        except Exception:
            raw.invalidate()

    def taken_key(self, raw: Any, keys: list[str]) -> str | None:
        """One of ``keys`` that is already some event's unique_key, or None."""
        t = events_table.name
        marks = ", ".join([self.ph] * len(keys))
        sql = f"SELECT unique_key FROM {t} WHERE unique_key IN ({marks}) LIMIT 1"  # noqa: S608
        rows = self._run(raw, sql, tuple(keys))
        return str(rows[0][0]) if rows else None

    def max_global_seq(self, raw: Any) -> int:
        rows = self._run(raw, self.max_sql, ())
        return int(rows[0][0])

    def stream_heads(
        self, raw: Any, decision_ids: Iterable[str]
    ) -> dict[str, tuple[int, EventHash]]:
        """(sequence, hash) of each stream's last event; (0, GENESIS_HASH) for a new one."""
        ids = sorted(set(decision_ids))
        heads = dict.fromkeys(ids, (0, GENESIS_HASH))
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            for did, seq, h in self._run(raw, self._heads_sql(len(chunk)), tuple(chunk)):
                heads[did] = (int(seq), EventHash(h))
        return heads

    def insert(self, raw: Any, rows: Sequence[dict[str, Any]]) -> None:
        """One executemany for every row of the group."""
        if rows:
            params = [tuple(r[c] for c in INSERT_COLUMNS) for r in rows]
            self._run(raw, self.insert_sql, params, many=True)
