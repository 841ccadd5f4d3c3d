"""``SqlLedger``: the LedgerClient on SQLAlchemy, SQLite or PostgreSQL (psycopg 3).

Writes go through one writer thread (group commit, ``ledger._writer``): every
caller's batch that is pending when the writer wakes is committed in ONE
transaction, each batch inside its own SAVEPOINT so a failing batch (e.g.
DuplicateKey) rolls back alone. Each caller blocks until its own batch is
durably committed or failed. Reads use separate connections (WAL on SQLite).

SQLite (engines in ``ledger._engine``): WAL, ``synchronous=FULL``, ``busy_timeout``; pysqlite's own
transaction handling is disabled and the writer emits ``BEGIN IMMEDIATE``.
PostgreSQL: every writer transaction first takes the advisory write lock
(``ledger._engine.write_lock``), then reads ``max(global_seq)`` and the stream
heads, so ``global_seq`` and the per-stream chains stay gap-free across
processes; readers are not blocked.

The schema is checked on every open and migrated with ``create=True``
(``ledger.schema``, Alembic).

Every SQLAlchemy / driver / Alembic exception is translated to the ledger error
tree in exactly one place, ``ledger._dberrors.db_errors``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, LargeBinary, cast, func, select
from sqlalchemy.engine import make_url

from ledger._dberrors import db_errors
from ledger._engine import make_engine, write_lock
from ledger._writer import GroupWriter, Prepared, WriterStats
from ledger.canonical import canonical_body, chain_hash
from ledger.errors import DuplicateKey, InvalidEvent, LedgerError, LedgerUnavailable
from ledger.interface import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    Confirmation,
    EventHash,
    EventType,
    NewEvent,
    ProgressFn,
    StoredEvent,
    VerifyReport,
)
from ledger.models import events_table
from ledger.schema import ensure_schema
from ledger.verify import verify_rows

__all__ = ["SqlLedger", "WriterStats", "open_ledger"]

_READ_CHUNK = 2_000
_VERIFY_CHUNK = 10_000
_T = events_table.c
_STORED_COLS = (
    _T.event_id,
    _T.decision_id,
    _T.event_type,
    _T.policy_version,
    _T.actor,
    _T.unique_key,
    _T.at,
    _T.sequence,
    _T.prev_hash,
    _T.hash,
    _T.global_seq,
    _T.body,
)


def _utc(now: datetime) -> str:
    if now.tzinfo is None:
        raise InvalidEvent("the ledger clock returned a naive datetime; it must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stored(row: Any) -> StoredEvent:
    eid, did, etype, pv, actor, ukey, at, seq, prev, h, g, body = row
    parsed = json.loads(body)
    return StoredEvent(
        event_id=eid,
        decision_id=did,
        event_type=etype,
        schema_version=parsed["schema_version"],
        policy_version=pv,
        actor=actor,
        payload=parsed["payload"],
        unique_key=ukey,
        at=at,
        sequence=seq,
        prev_hash=EventHash(prev),
        hash=EventHash(h),
        global_seq=g,
    )


class SqlLedger:
    """A LedgerClient over a SQL database. Thread-safe; ``close()`` flushes pending writes."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout_s: float = 2.0,
        create: bool = True,
    ) -> None:
        self._url = url
        self._clock = clock or (lambda: datetime.now(UTC))
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        with self._db_errors():
            parsed = make_url(url)
        self._dialect = parsed.get_backend_name()
        if self._dialect == "sqlite":
            db = parsed.database
            if not db or db == ":memory:" or parsed.query.get("mode") == "memory":
                raise LedgerUnavailable(
                    f"in-memory SQLite ({url!r}) cannot be shared by the writer and readers; "
                    "use a file URL such as sqlite:////var/lib/layer7/ledger.sqlite"
                )
            if not create and not Path(db).exists():
                raise LedgerUnavailable(f"no ledger file at {db}; check the --ledger path")
        elif self._dialect != "postgresql" or parsed.get_driver_name() != "psycopg":
            raise LedgerUnavailable(
                f"unsupported ledger URL scheme {parsed.drivername!r}: use sqlite:/// or "
                "postgresql+psycopg:// (psycopg 3)"
            )
        with self._db_errors():
            try:
                self._wengine = make_engine(url, writer=True, busy_timeout_s=busy_timeout_s)
                self._rengine = make_engine(url, writer=False, busy_timeout_s=busy_timeout_s)
            except ImportError as e:
                raise LedgerUnavailable(
                    f"a PostgreSQL ledger needs psycopg 3 ({e}); install layer7[postgres]"
                ) from e
            try:
                self.schema_revision = ensure_schema(
                    self._rengine, self._wengine, create=create, where=self._where
                )
            except BaseException:
                self._wengine.dispose()
                self._rengine.dispose()
                raise
        self._writer = GroupWriter(self._commit_group, name=f"ledger-writer:{parsed.database}")

    # -- the one place driver errors become ledger errors --------------------------------------

    @property
    def _where(self) -> str:
        return make_url(self._url).render_as_string(hide_password=True)

    def _db_errors(self, keys: Sequence[str] = ()) -> AbstractContextManager[None]:
        return db_errors(self._url, keys=keys, busy_timeout_s=self._busy_timeout_s)

    # -- writes --------------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        """Durably append ``events`` atomically (see LedgerClient.append)."""
        if self._closed:
            raise LedgerUnavailable("ledger is closed; open it again with open_ledger(url)")
        if not events:
            return []
        at = _utc(self._clock())
        prepared = [self._prepare(ev, at) for ev in events]
        return self._writer.submit(prepared)

    def _prepare(self, ev: NewEvent, at: str) -> Prepared:
        """Fields known before the write lock: ids, timestamp, canonical body bytes."""
        if not isinstance(ev, NewEvent):
            raise InvalidEvent(f"expected a NewEvent, got {type(ev).__name__}")
        try:
            etype = EventType(ev.event_type).value
        except ValueError as e:
            raise InvalidEvent(f"event_type: {ev.event_type!r} is not a ledger EventType") from e
        event_id = str(uuid.uuid4())
        body = canonical_body(
            event_id=event_id,
            decision_id=ev.decision_id,
            event_type=etype,
            schema_version=SCHEMA_VERSION,
            policy_version=ev.policy_version,
            actor=ev.actor,
            payload=ev.payload,
            unique_key=ev.unique_key,
            at=at,
        )
        return Prepared(
            event_id=event_id,
            decision_id=ev.decision_id,
            event_type=etype,
            at=at,
            actor=ev.actor,
            policy_version=ev.policy_version,
            unique_key=ev.unique_key,
            body=body,
        )

    def _commit_group(
        self, batches: Sequence[Sequence[Prepared]]
    ) -> list[list[Confirmation] | LedgerError]:
        """Writer thread: one transaction, one SAVEPOINT per batch. Raises for the whole group."""
        results: list[list[Confirmation] | LedgerError] = []
        with self._db_errors(), self._wengine.connect() as conn, conn.begin():
            write_lock(conn)  # before ANY read: max(global_seq) and the heads come after it
            next_g = (
                int(conn.execute(select(func.coalesce(func.max(_T.global_seq), 0))).scalar_one())
                + 1
            )
            heads: dict[str, tuple[int, EventHash]] = {}
            for batch in batches:
                keys = [p.unique_key for p in batch if p.unique_key is not None]
                try:
                    with self._db_errors(keys), conn.begin_nested():
                        confs, rows, new_heads = self._place(conn, batch, keys, heads, next_g)
                        conn.execute(events_table.insert(), rows)
                except LedgerError as err:
                    results.append(err)
                    continue
                heads.update(new_heads)
                next_g += len(rows)
                results.append(confs)
        return results

    def _place(
        self,
        conn: Connection,
        batch: Sequence[Prepared],
        keys: list[str],
        heads: dict[str, tuple[int, EventHash]],
        next_g: int,
    ) -> tuple[list[Confirmation], list[dict[str, Any]], dict[str, tuple[int, EventHash]]]:
        """Assign sequence, chain and global_seq to one batch (inside the write lock)."""
        seen: set[str] = set()
        for k in keys:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
        if keys:
            taken = conn.execute(select(_T.unique_key).where(_T.unique_key.in_(keys))).first()
            if taken is not None:
                raise DuplicateKey(str(taken[0]))
        local: dict[str, tuple[int, EventHash]] = {}
        confs: list[Confirmation] = []
        rows: list[dict[str, Any]] = []
        for i, p in enumerate(batch):
            head = local.get(p.decision_id) or heads.get(p.decision_id)
            if head is None:
                found = conn.execute(
                    select(_T.sequence, _T.hash)
                    .where(_T.decision_id == p.decision_id)
                    .order_by(_T.sequence.desc())
                    .limit(1)
                ).first()
                head = (int(found[0]), EventHash(found[1])) if found else (0, GENESIS_HASH)
            seq, prev = head[0] + 1, head[1]
            h = chain_hash(prev, p.body)
            g = next_g + i
            local[p.decision_id] = (seq, h)
            rows.append(
                {
                    "global_seq": g,
                    "event_id": p.event_id,
                    "decision_id": p.decision_id,
                    "sequence": seq,
                    "event_type": p.event_type,
                    "at": p.at,
                    "actor": p.actor,
                    "policy_version": p.policy_version,
                    "unique_key": p.unique_key,
                    "prev_hash": prev,
                    "hash": h,
                    "body": p.body.decode("utf-8"),
                }
            )
            confs.append(Confirmation(p.event_id, p.decision_id, seq, g, h))
        return confs, rows, local

    def stats(self) -> WriterStats:
        """Group-commit counters (commits, batches, events, pending) for metrics and tests."""
        return self._writer.stats()

    # -- reads ---------------------------------------------------------------------------------

    def _read(self, stmt: Any) -> list[Any]:
        if self._closed:
            raise LedgerUnavailable("ledger is closed; open it again with open_ledger(url)")
        with self._db_errors(), self._rengine.connect() as conn:
            return list(conn.execute(stmt).all())

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        stmt = select(*_STORED_COLS).where(_T.decision_id == decision_id).order_by(_T.sequence)
        return [_stored(r) for r in self._read(stmt)]

    def find_by_unique_key(self, unique_key: str) -> StoredEvent | None:
        rows = self._read(select(*_STORED_COLS).where(_T.unique_key == unique_key))
        return _stored(rows[0]) if rows else None

    def iter_events(self, *, after_global_seq: int = 0) -> Iterator[StoredEvent]:
        cursor = after_global_seq
        while True:
            rows = self._read(
                select(*_STORED_COLS)
                .where(_T.global_seq > cursor)
                .order_by(_T.global_seq)
                .limit(_READ_CHUNK)
            )
            for r in rows:
                yield _stored(r)
            if len(rows) < _READ_CHUNK:
                return
            cursor = rows[-1][10]

    def count(self) -> int:
        return int(self._read(select(func.count()).select_from(events_table))[0][0])

    def _verify_rows(self) -> Iterator[Any]:
        """Rows for verify_rows, in keyset pages, with ``body`` as the stored bytes."""
        body: Any = (
            func.convert_to(_T.body, "UTF8")
            if self._dialect == "postgresql"
            else cast(_T.body, LargeBinary)
        )
        cols = [
            _T.global_seq,
            _T.decision_id,
            _T.sequence,
            _T.event_id,
            _T.event_type,
            _T.at,
            _T.actor,
            _T.policy_version,
            _T.unique_key,
            _T.prev_hash,
            _T.hash,
            body,
        ]
        page = select(*cols).order_by(_T.global_seq).limit(_VERIFY_CHUNK)
        rows = self._read(page)
        while True:
            yield from rows
            if len(rows) < _VERIFY_CHUNK:
                return
            rows = self._read(page.where(_T.global_seq > rows[-1][0]))

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        return verify_rows(self._verify_rows(), total=self.count(), progress=progress)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending, stop the writer, release connections. Idempotent."""
        if self._closed:
            return
        self._writer.close()
        self._closed = True
        self._wengine.dispose()
        self._rengine.dispose()

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger(url: str, *, create: bool = True) -> SqlLedger:
    """Open (and with ``create``, initialise) the ledger at ``url``."""
    return SqlLedger(url, create=create)
