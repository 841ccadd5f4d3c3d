"""``SqlLedger``: the LedgerClient on SQLAlchemy, SQLite or PostgreSQL (psycopg 3).

Writes go through one writer thread (group commit, ``ledger._writer``): every
caller's batch that is pending when the writer wakes is committed in ONE
transaction, each batch inside its own SAVEPOINT so a failing batch (e.g.
DuplicateKey) rolls back alone. Each caller blocks until its own batch is
durably committed or failed. Reads use separate connections (WAL on SQLite).

SQLite (engines in ``ledger._engine``): WAL, ``synchronous=FULL``, ``busy_timeout``; pysqlite's own
transaction handling is disabled and the writer emits ``BEGIN IMMEDIATE``.
PostgreSQL: every writer transaction first takes the write lock
(``ledger._engine.write_lock``), then reads ``max(global_seq)`` and the stream
heads, so ``global_seq`` and the per-stream chains stay gap-free across
processes; readers are not blocked.

The schema is checked on every open and migrated with ``create=True``
(``ledger.schema``, Alembic), and so are the database's own walls: append-only
triggers and role privileges (``ledger._guards``). A SQLite file is created 0600 in a
0700 directory, and a database, ``-wal`` or ``-shm`` file that group or others may read
is refused at open (``ledger.files``).

Every SQLAlchemy / driver / Alembic exception is translated to the ledger error
tree in exactly one place, ``ledger._dberrors.db_errors``.

Beyond ``LedgerClient`` it implements ``AuditableLedger`` (DESIGN §4):

* ``iter_rows`` / ``query``: rows for audit and export; filtered pages of events.
* An in-memory ``MerkleTree`` over the global log, built lazily from the stored
  hashes on first need, extended by the writer thread *after* each group commits
  (never before), and caught up from the database whenever it has more rows than
  the tree (another process appended). Proofs and checkpoints use it.
* ``sign_checkpoint``: signs (``checkpoint_signer``) the tree head over the whole log as
  a C2SP checkpoint note chained to the previous one (``ledger.checkpoint``), stores it
  in ``checkpoint_notes`` (append-only, revision 0003) under the write lock, then sends
  it to every configured witness (``witnesses``) and stores their cosignatures.
* Continuous checkpoints: with a signer, a ``Checkpointer`` thread signs one at least
  every ``checkpoint_every_s`` (default 1 s) while events arrive, and as soon as
  ``checkpoint_every_events`` events were appended since the last one.
* ``audit``: ``ledger.audit.verify_log`` over every row against the stored checkpoint
  chain and cosignatures, with ``checkpoint_public_key`` (default: the signer's public
  key) and ``witness_keys`` (default: the witnesses' keys); plus ``verify_dual_write``
  when dual-write is on.
* ``export`` / ``export_stream``: the audit pack (``ledger.export``) against the latest
  checkpoint, streamed from keyset pages in bounded memory.
* ``dual_write="jsonl:///path"``: a group is confirmed only after the database commit
  AND the sink's fsync (``ledger.dualwrite``).

Every ``Confirmation`` carries ``checkpoint = global_seq``: the event is covered by the
first checkpoint whose ``tree_size >= global_seq``.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import LargeBinary, cast, func, select
from sqlalchemy.engine import make_url

from ledger._checkpoints import CheckpointLog
from ledger._dberrors import db_errors
from ledger._engine import make_engine, write_lock
from ledger._fastwrite import FastSql
from ledger._writer import GroupWriter, Prepared, WriterStats
from ledger.attestation import check_placement
from ledger.audit import AuditReport, verify_log
from ledger.canonical import canonical_body, chain_hash
from ledger.checkpoint import (
    Checkpoint,
    CheckpointSigner,
    default_origin,
    verify_checkpoint,
)
from ledger.checkpoint import sign_checkpoint as _sign
from ledger.checkpointer import Checkpointer
from ledger.dualwrite import JsonlSink, verify_dual_write
from ledger.errors import (
    DuplicateKey,
    IntegrityViolation,
    InvalidEvent,
    LedgerError,
    LedgerUnavailable,
)
from ledger.export import ExportReport, PackWriter, assemble_export, pack_event, pack_header
from ledger.files import check_private, create_private
from ledger.interface import (
    SCHEMA_VERSION,
    Confirmation,
    EventHash,
    EventType,
    NewEvent,
    ProgressFn,
    StoredEvent,
    VerifyReport,
)
from ledger.merkle import MerkleTree, ProofInvalid, event_leaf_hash
from ledger.models import events_table
from ledger.note import Cosignature, VerifierKey
from ledger.schema import ensure_schema
from ledger.verify import VerifyRow, verify_rows
from ledger.witness_client import WitnessClient, WitnessEndpoint

__all__ = ["QUERY_LIMIT_MAX", "SqlLedger", "WriterStats", "open_ledger"]

QUERY_LIMIT_MAX = 1_000
"""``query`` returns at most this many events per page."""

log = logging.getLogger(__name__)

_READ_CHUNK = 2_000
_VERIFY_CHUNK = 10_000
_TREE_CHUNK = 50_000
_IN_CHUNK = 500  # decision ids per IN (...) list
_EXPORT_PAGE = 1_000  # events per export page (one tree lock hold)
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


def _rfc3339(name: str, value: str) -> str:
    """``value`` in the ledger's ``at`` form, so string comparison is time order."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} {value!r} is not an RFC 3339 time; use e.g. 2026-01-02T03:04:05Z"
        ) from e
    if parsed.tzinfo is None:
        raise ValueError(f"{name} {value!r} has no time zone; add Z or an offset")
    return _utc(parsed)


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


def _checkpoint_violation(
    what: str, tree_size: int, expected: str, actual: str
) -> IntegrityViolation:
    return IntegrityViolation(
        what, decision_id="-", sequence=0, global_seq=tree_size, expected=expected, actual=actual
    )


class _InsertFailed(Exception):
    """The group's single insert failed and its transaction was rolled back."""


class SqlLedger:
    """An AuditableLedger over a SQL database. Thread-safe; ``close()`` flushes pending writes.

    ``checkpoint_signer`` signs checkpoints (continuously, and on ``sign_checkpoint`` /
    ``export``) for the log ``origin`` (default: the stored chain's, else
    ``layer7.local/ledger/<database name>``); ``witnesses`` cosign each one;
    ``checkpoint_public_key`` (raw Ed25519, default: the signer's ``public_key_raw``) and
    ``witness_keys`` (default: the witnesses') verify them; ``dual_write`` is a
    ``jsonl:///path`` sink URL. ``checkpoint_every_s`` <= 0 turns continuous
    checkpoints off (``sign_checkpoint`` still works).
    """

    rows_are_local = True
    """``iter_rows`` reads the database itself (a monitor may audit the rows here)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], datetime] | None = None,
        busy_timeout_s: float = 2.0,
        create: bool = True,
        checkpoint_signer: CheckpointSigner | None = None,
        checkpoint_public_key: bytes | None = None,
        origin: str | None = None,
        witnesses: Sequence[WitnessEndpoint] = (),
        witness_keys: Sequence[VerifierKey] | None = None,
        checkpoint_every_s: float = 1.0,
        checkpoint_every_events: int = 1000,
        dual_write: str | None = None,
    ) -> None:
        self._url = url
        self._clock = clock or (lambda: datetime.now(UTC))
        self._busy_timeout_s = busy_timeout_s
        self._closed = False
        self._signer = checkpoint_signer
        if checkpoint_public_key is None and checkpoint_signer is not None:
            raw = getattr(checkpoint_signer, "public_key_raw", None)
            checkpoint_public_key = raw if isinstance(raw, bytes) else None
        self._public_key = checkpoint_public_key
        self._origin = origin
        self.witness_keys: list[VerifierKey] = (
            list(witness_keys) if witness_keys is not None else [w.key for w in witnesses]
        )
        self._checkpoint_every_events = checkpoint_every_events
        self._since_checkpoint = 0
        self._checkpointer: Checkpointer | None = None
        self._tree: MerkleTree | None = None
        self._tree_lock = threading.Lock()  # guards the tree object (short holds only)
        self._sync_lock = threading.Lock()  # one catch-up from the database at a time
        self._checkpoint_lock = threading.Lock()
        self._sink_lock = threading.Lock()  # held from a group's commit to its sink fsync
        self._sink: JsonlSink | None = None
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
            if create:  # 0600 in a 0700 directory before SQLite opens it (ledger.files)
                try:
                    create_private(Path(db))
                except OSError as e:
                    raise LedgerUnavailable(f"cannot create the ledger file {db}: {e}") from e
            for suffix in ("", "-wal", "-shm"):
                check_private(Path(db + suffix), "ledger file")
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
                self._sink = JsonlSink(dual_write) if dual_write is not None else None
            except BaseException:
                self._wengine.dispose()
                self._rengine.dispose()
                raise
        self._fast = FastSql(self._wengine.dialect, busy_timeout_s=busy_timeout_s)
        self._dbname = Path(parsed.database or "ledger").stem
        self._cplog = CheckpointLog(
            read=self._read,
            wengine=self._wengine,
            db_errors=self._db_errors,
            witnesses=[WitnessClient(w) for w in witnesses],
            busy_timeout_s=busy_timeout_s,
        )
        self._writer = GroupWriter(self._commit_group, name=f"ledger-writer:{parsed.database}")
        if checkpoint_signer is not None and checkpoint_every_s > 0:
            self._checkpointer = Checkpointer(
                self,
                every_s=checkpoint_every_s,
                every_events=checkpoint_every_events,
                poll_s=min(0.25, checkpoint_every_s),
                size=self._head_size,
            )
            self._checkpointer.start()

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
            attestation=ev.payload if etype == EventType.BATCH_ATTESTED.value else None,
        )

    def _commit_group(
        self, batches: Sequence[Sequence[Prepared]]
    ) -> list[list[Confirmation] | LedgerError]:
        """Writer thread: commit, then extend the tree, then write the dual-write sink.

        Raising fails every batch of the group (LedgerUnavailable to each caller).
        """
        sink = self._sink
        with self._sink_lock if sink is not None else nullcontext():
            if sink is not None and sink.failed is not None:
                raise LedgerUnavailable(sink.failed)
            results, rows = self._commit_db(batches)
            self._extend_tree(rows)  # after the commit: the tree never holds uncommitted events
            if rows and self._checkpointer is not None:
                self._since_checkpoint += len(rows)
                if self._since_checkpoint >= self._checkpoint_every_events:
                    self._since_checkpoint = 0
                    self._checkpointer.nudge()
            if sink is not None and rows:
                try:
                    sink.write(rows)
                except (OSError, ValueError) as e:
                    first, last = rows[0]["global_seq"], rows[-1]["global_seq"]
                    sink.failed = (
                        f"dual-write sink {sink.path} failed ({type(e).__name__}: {e}) after "
                        f"the database committed global_seq {first}..{last}: those events are "
                        "in the database but not in the sink and were NOT confirmed; further "
                        "appends are refused until the ledger is reopened - compare with "
                        "ledger.dualwrite.verify_dual_write and repair the sink"
                    )
                    raise LedgerUnavailable(sink.failed) from e
        return results

    def _commit_db(
        self, batches: Sequence[Sequence[Prepared]]
    ) -> tuple[list[list[Confirmation] | LedgerError], list[dict[str, Any]]]:
        """Commit a group; returns each batch's confirmations or error, and the rows written."""
        try:
            return self._commit_db_fast(batches)
        except _InsertFailed:
            # Rolled back; again with a SAVEPOINT per batch, so only the failing one fails.
            return self._commit_db_savepoints(batches)

    def _commit_db_fast(
        self, batches: Sequence[Sequence[Prepared]]
    ) -> tuple[list[list[Confirmation] | LedgerError], list[dict[str, Any]]]:
        """The group in one transaction with ONE insert, no savepoints, on the pooled DBAPI
        connection (``ledger._fastwrite``: SQLAlchemy's per-transaction work was most of
        the writer's CPU). A batch refused before its rows are placed (DuplicateKey found
        by ``_place``) fails alone; if the insert fails, _InsertFailed after rollback."""
        results: list[list[Confirmation] | LedgerError] = []
        committed: list[dict[str, Any]] = []
        fast = self._fast
        with self._db_errors():
            raw = fast.connect(self._wengine)  # pool checkout (pre-ping on PostgreSQL)
        try:
            with self._db_errors():
                fast.begin_write(raw)  # the write lock, before ANY read
                next_g = fast.max_global_seq(raw) + 1
                heads = fast.stream_heads(raw, (p.decision_id for b in batches for p in b))
            for batch in batches:
                keys = [p.unique_key for p in batch if p.unique_key is not None]
                try:
                    with self._db_errors(keys):
                        confs, rows, new_heads = self._place(
                            functools.partial(fast.taken_key, raw), batch, keys, heads, next_g
                        )
                except LedgerError as err:
                    results.append(err)
                    continue
                heads.update(new_heads)
                next_g += len(rows)
                committed += rows
                results.append(confs)
            try:
                with self._db_errors():
                    fast.insert(raw, committed)
            except LedgerError as e:
                fast.rollback(raw)
                raise _InsertFailed from e
            with self._db_errors():
                fast.commit(raw)
        except BaseException:
            fast.rollback(raw)
            raise
        finally:
            raw.close()  # back to the pool
        return results, committed

    def _commit_db_savepoints(
        self, batches: Sequence[Sequence[Prepared]]
    ) -> tuple[list[list[Confirmation] | LedgerError], list[dict[str, Any]]]:
        """One transaction, one SAVEPOINT per batch; returns results and the committed rows."""
        results: list[list[Confirmation] | LedgerError] = []
        committed: list[dict[str, Any]] = []
        fast = self._fast
        with self._db_errors(), self._wengine.connect() as conn, conn.begin():
            # before ANY read: max(global_seq) and the heads come after it
            write_lock(conn, self._busy_timeout_s)
            next_g = fast.max_global_seq(conn.connection) + 1
            heads = fast.stream_heads(conn.connection, (p.decision_id for b in batches for p in b))
            for batch in batches:
                keys = [p.unique_key for p in batch if p.unique_key is not None]
                try:
                    with self._db_errors(keys), conn.begin_nested():
                        taken = functools.partial(fast.taken_key, conn.connection)
                        confs, rows, new_heads = self._place(taken, batch, keys, heads, next_g)
                        fast.insert(conn.connection, rows)
                except LedgerError as err:
                    results.append(err)
                    continue
                heads.update(new_heads)
                next_g += len(rows)
                committed += rows
                results.append(confs)
        return results, committed

    def _place(
        self,
        taken_key: Callable[[list[str]], str | None],
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
            taken = taken_key(keys)
            if taken is not None:
                raise DuplicateKey(taken)
        if any(p.attestation is not None for p in batch):
            check_placement(
                ((p.decision_id, p.event_type, p.attestation or {}) for p in batch),
                {p.decision_id: heads[p.decision_id] for p in batch},
            )
        local: dict[str, tuple[int, EventHash]] = {}
        confs: list[Confirmation] = []
        rows: list[dict[str, Any]] = []
        for i, p in enumerate(batch):
            head = local.get(p.decision_id) or heads[p.decision_id]  # heads: every stream
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
            confs.append(Confirmation(p.event_id, p.decision_id, seq, g, h, checkpoint=g))
        return confs, rows, local

    def stats(self) -> WriterStats:
        """Group-commit counters (commits, batches, events, pending) for metrics and tests."""
        return self._writer.stats()

    # -- reads ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerUnavailable("ledger is closed; open it again with open_ledger(url)")

    def _read(self, stmt: Any) -> list[Any]:
        self._check_open()
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

    def _head_size(self) -> int:
        """max(global_seq): the log's size, from the primary key (cheap, unlike count)."""
        return int(self._read(select(func.coalesce(func.max(_T.global_seq), 0)))[0][0])

    def query(
        self,
        *,
        decision_id: str | None = None,
        event_type: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_global_seq: int = 0,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events matching every given filter, in global order, after ``after_global_seq``.

        ``since`` (inclusive) and ``until`` (exclusive) are RFC 3339 times compared with
        the events' ``at``; ``limit`` is capped at QUERY_LIMIT_MAX. For the next page pass
        the last event's ``global_seq`` as ``after_global_seq``. ValueError for a bad
        time or a limit below 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        stmt = select(*_STORED_COLS).where(_T.global_seq > after_global_seq)
        if decision_id is not None:
            stmt = stmt.where(_T.decision_id == decision_id)
        if event_type is not None:
            etype = event_type.value if isinstance(event_type, EventType) else str(event_type)
            stmt = stmt.where(_T.event_type == etype)
        if actor is not None:
            stmt = stmt.where(_T.actor == actor)
        if since is not None:
            stmt = stmt.where(_T.at >= _rfc3339("since", since))
        if until is not None:
            stmt = stmt.where(_T.at < _rfc3339("until", until))
        stmt = stmt.order_by(_T.global_seq).limit(min(limit, QUERY_LIMIT_MAX))
        return [_stored(r) for r in self._read(stmt)]

    def _row_select(self) -> Any:
        """SELECT of the VerifyRow columns, with ``body`` as the stored bytes."""
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
        return select(*cols)

    def _pages(
        self, stmt: Any, after_global_seq: int, chunk: int = _VERIFY_CHUNK
    ) -> Iterator[VerifyRow]:
        """``stmt`` (a _row_select) in keyset pages of global order."""
        page = stmt.order_by(_T.global_seq).limit(chunk)
        cursor = after_global_seq
        while True:
            rows = self._read(page.where(_T.global_seq > cursor))
            for r in rows:
                yield VerifyRow._make(r)
            if len(rows) < chunk:
                return
            cursor = rows[-1][0]

    def iter_rows(self, *, after_global_seq: int = 0) -> Iterator[VerifyRow]:
        """Every row after ``after_global_seq`` in global order, as ``VerifyRow`` (body bytes)."""
        return self._pages(self._row_select(), after_global_seq)

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        return verify_rows(self.iter_rows(), total=self.count(), progress=progress)

    # -- the Merkle tree -----------------------------------------------------------------------

    def _extend_tree(self, rows: list[dict[str, Any]]) -> None:
        """Writer thread, after a commit: append the group's leaves if the tree is current."""
        if not rows:
            return
        with self._tree_lock:
            tree = self._tree
            if tree is None:
                return  # built lazily, from the database, on first need
            skip = tree.size + 1 - rows[0]["global_seq"]
            if skip < 0:
                return  # another process appended in between: caught up on next need
            try:
                tree.extend(event_leaf_hash(r["hash"]) for r in rows[skip:])
            except Exception:  # never fail a committed group for the tree's sake
                log.exception("ledger Merkle tree extension failed; rebuilding it on next need")
                self._tree = None

    def _sync_tree(self) -> MerkleTree:
        """The tree, built if needed and caught up with every row in the database now."""
        with self._sync_lock:
            with self._tree_lock:
                tree = self._tree
            if tree is None:
                tree = MerkleTree()
                self._catch_up(tree)  # not shared yet: the writer skips while _tree is None
                with self._tree_lock:
                    self._tree = tree
            self._catch_up(tree)
            return tree

    def _catch_up(self, tree: MerkleTree) -> None:
        while True:
            with self._tree_lock:
                size = tree.size
            rows = self._read(
                select(_T.global_seq, _T.hash)
                .where(_T.global_seq > size)
                .order_by(_T.global_seq)
                .limit(_TREE_CHUNK)
            )
            leaves = []
            for i, (g, h) in enumerate(rows):
                if g != size + 1 + i:
                    raise IntegrityViolation(
                        "global_gap",
                        decision_id="-",
                        sequence=0,
                        global_seq=int(g),
                        expected=f"global_seq {size + 1 + i} (building the Merkle tree)",
                        actual=f"global_seq {g}",
                    )
                leaves.append(event_leaf_hash(h))
            with self._tree_lock:
                skip = tree.size - size  # the writer may have extended it meanwhile
                if skip < len(leaves):
                    tree.extend(leaves[skip:])
            if len(rows) < _TREE_CHUNK:
                return

    def inclusion_proof(self, global_seq: int, tree_size: int) -> list[bytes]:
        """Audit path of event ``global_seq`` in the tree of the first ``tree_size`` events
        (leaf-side first; verify with ``ledger.merkle.verify_inclusion(leaf, global_seq - 1,
        tree_size, proof, root)``). ValueError unless 1 <= global_seq <= tree_size <= size."""
        tree = self._sync_tree()
        with self._tree_lock:
            n = tree.size
            if not 1 <= tree_size <= n:
                raise ValueError(f"tree_size {tree_size} outside 1..{n} (the log's size)")
            if not 1 <= global_seq <= tree_size:
                raise ValueError(f"global_seq {global_seq} outside 1..{tree_size}")
            return tree.inclusion_proof(global_seq - 1, tree_size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 6962 proof that the tree of ``size1`` events is a prefix of that of ``size2``.
        ValueError unless 0 <= size1 <= size2 <= the log's size."""
        tree = self._sync_tree()
        with self._tree_lock:
            n = tree.size
            if not 0 <= size2 <= n:
                raise ValueError(f"size2 {size2} outside 0..{n} (the log's size)")
            if not 0 <= size1 <= size2:
                raise ValueError(f"size1 {size1} outside 0..{size2}")
            return tree.consistency_proof(size1, size2)

    # -- checkpoints ---------------------------------------------------------------------------

    def _origin_for(self, latest: Checkpoint | None) -> str:
        if latest is not None:
            if self._origin is not None and self._origin != latest.origin:
                raise LedgerUnavailable(
                    f"this ledger's checkpoints are for log {latest.origin!r}, but it was opened "
                    f"with origin {self._origin!r}; open it with the log's own origin"
                )
            return latest.origin
        return self._origin or default_origin(self._dbname)

    @property
    def origin(self) -> str:
        """The log's origin: the stored chain's, else the configured or default one."""
        return self._origin_for(self._cplog.latest())

    def sign_checkpoint(self) -> Checkpoint:
        """Sign the tree head over the whole log now as the next checkpoint of the chain,
        store it, have it cosigned by the witnesses, and return it.

        If the newest stored checkpoint already covers the whole log, it is returned
        instead. LedgerUnavailable without a signer or when the signer fails;
        IntegrityViolation if the log no longer matches the newest stored checkpoint's size.
        """
        self._check_open()
        if self._signer is None:
            raise LedgerUnavailable(
                "no checkpoint signer is configured; open the ledger with "
                "SqlLedger(url, checkpoint_signer=...) to sign checkpoints"
            )
        with self._checkpoint_lock:
            for _attempt in range(5):
                tree = self._sync_tree()
                with self._tree_lock:
                    size = tree.size
                    root = tree.root(size)
                latest = self._cplog.latest()
                if latest is not None and latest.tree_size >= size:
                    if latest.tree_size > size:
                        raise _checkpoint_violation(
                            "truncated",
                            size + 1,
                            f"at least {latest.tree_size} events (checkpoint {latest.index})",
                            f"{size} events in the log",
                        )
                    if latest.root != root:
                        raise _checkpoint_violation(
                            "checkpoint_root_mismatch",
                            1,
                            f"root {latest.root_hash} (checkpoint {latest.index})",
                            f"root {root.hex()} over the log's {size} events",
                        )
                    return latest
                origin = self._origin_for(latest)
                try:
                    cp = _sign(size, root, self._signer, self._clock(), origin=origin, prev=latest)
                except Exception as e:
                    raise LedgerUnavailable(
                        f"checkpoint signer failed ({type(e).__name__}: {e}); no checkpoint "
                        "was stored"
                    ) from e
                if self._public_key is not None:
                    try:
                        verify_checkpoint(cp, self._public_key)
                    except ProofInvalid as e:
                        raise LedgerUnavailable(
                            "the checkpoint signer's signature does not verify with "
                            f"checkpoint_public_key ({e}); fix the key configuration"
                        ) from e
                if self._cplog.append(cp, latest):
                    break
            else:
                raise LedgerUnavailable(
                    "the checkpoint chain kept moving (other writers signing); try again"
                )
            self._cplog.witness(cp, self.consistency_proof)
            return cp

    def checkpoints(self) -> list[Checkpoint]:
        """The stored checkpoint chain, oldest first (IntegrityViolation for a malformed row)."""
        return self._cplog.checkpoints()

    def cosignatures(self) -> dict[int, list[Cosignature]]:
        """Stored witness cosignatures per checkpoint index (parsed, not verified)."""
        return self._cplog.cosignatures()

    @property
    def witness_errors(self) -> dict[str, str]:
        """The last error of each witness that failed (empty when all cosigned)."""
        return dict(self._cplog.witness_errors)

    def audit(
        self,
        progress: ProgressFn | None = None,
        *,
        require_witnessed: bool = False,
        witnessed: Sequence[Checkpoint] = (),
    ) -> AuditReport:
        """``verify_log`` over every row against the stored checkpoint chain and
        cosignatures (``witnessed``: checkpoints witnesses reported, already verified),
        then ``verify_dual_write`` if dual-write is on. Raises IntegrityViolation;
        ProofInvalid when there is no checkpoint at all; LedgerUnavailable without a
        public key."""
        if self._public_key is None:
            raise LedgerUnavailable(
                "no checkpoint public key is configured; open the ledger with "
                "checkpoint_public_key=<raw Ed25519 key> (or a checkpoint_signer) to audit"
            )
        checkpoints = self.checkpoints()
        cosigs = self.cosignatures()
        horizon = self._dual_write_horizon()
        report = verify_log(
            self.iter_rows(),
            checkpoints,
            self._public_key,
            origin=self._origin,
            cosignatures=cosigs,
            witness_keys=self.witness_keys,
            witnessed=witnessed,
            require_witnessed=require_witnessed,
            total=self.count(),
            progress=progress,
        )
        if self._sink is not None:
            verify_dual_write(self, self._sink.path, upto=horizon)
        return report

    def _dual_write_horizon(self) -> int:
        """The last global_seq whose group has passed the sink (no group is in flight)."""
        if self._sink is None:
            return 0
        with self._sink_lock:
            return int(self._read(select(func.coalesce(func.max(_T.global_seq), 0)))[0][0])

    # -- export --------------------------------------------------------------------------------

    def export(
        self, *, decision_ids: Sequence[str] = (), since: str | None = None
    ) -> dict[str, Any]:
        """The offline audit pack (``ledger.export``) as one dict: ``export_stream`` collected
        and checked. For large selections write ``export_stream`` with a ``PackWriter``."""
        header, events = self.export_stream(decision_ids=decision_ids, since=since)
        return assemble_export(header, events, public_key_raw=self._public_key)

    def export_to(
        self, out: BinaryIO, *, decision_ids: Sequence[str] = (), since: str | None = None
    ) -> ExportReport:
        """Write the pack for the selection to ``out`` as it is read (``export_stream``
        through a ``PackWriter``, checked with the log key if configured)."""
        header, events = self.export_stream(decision_ids=decision_ids, since=since)
        writer = PackWriter(out, public_key_raw=self._public_key)
        writer.header(header)
        for ev in events:
            writer.event(ev)
        return writer.finish()

    def export_stream(
        self,
        *,
        decision_ids: Sequence[str] = (),
        since: str | None = None,
        anchor_tree_size: int | None = None,
        after_global_seq: int = 0,
    ) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
        """The pack's header and a lazy iterator of its events (``ledger.export``), read from
        the database in keyset pages by global_seq: memory stays bounded by a page (plus the
        stream ids already started, for ``since``), whatever the selection's size.

        Selection: whole streams ``decision_ids`` and/or the events ``at >= since`` (each
        stream from its first such event on; all events if neither is given). The anchor
        is the latest checkpoint (signing a new one first if the log has grown and a signer
        is configured), or the stored checkpoint of ``anchor_tree_size``: pass the header's
        anchor and the last global_seq received as ``after_global_seq`` to resume an
        interrupted export with the same header. ValueError if nothing matches or there is
        no checkpoint of that size."""
        checkpoints = self.checkpoints()
        if anchor_tree_size is not None:
            found = [cp for cp in checkpoints if cp.tree_size == anchor_tree_size]
            if not found:
                raise ValueError(
                    f"anchor_tree_size: no stored checkpoint has tree_size {anchor_tree_size}; "
                    "start the export again without a cursor"
                )
            latest: Checkpoint | None = found[-1]
        else:
            latest = checkpoints[-1] if checkpoints else None
            if self._signer is not None and (
                latest is None or self._sync_tree().size > latest.tree_size
            ):
                latest = self.sign_checkpoint()
                checkpoints = self.checkpoints()
        if latest is None:
            raise LedgerUnavailable(
                "no checkpoint to prove against: none is stored and no checkpoint_signer "
                "is configured to sign one"
            )
        ids = tuple(sorted(set(decision_ids)))
        at_from = _rfc3339("since", since) if since is not None else None
        first = self._export_first(ids, at_from, latest.tree_size)
        if first is None:
            raise ValueError(
                f"no events match decision_ids={list(decision_ids)!r:.200} since={since!r} "
                f"within the checkpoint (tree_size {latest.tree_size})"
            )
        chain = [cp for cp in checkpoints if cp.index <= latest.index]
        start = max((i for i, cp in enumerate(chain) if cp.tree_size < first), default=0)
        tree = self._sync_tree()
        with self._tree_lock:
            header = pack_header(tree, chain[start:], self.cosignatures())
        size = latest.tree_size

        def events() -> Iterator[dict[str, Any]]:
            page: list[VerifyRow] = []
            rows = self._export_rows(ids, at_from, first, size)
            while True:
                page = list(islice(rows, _EXPORT_PAGE))
                wanted = [r for r in page if r.global_seq > after_global_seq]
                with self._tree_lock:  # brief: the writer extends the tree between pages
                    out = [pack_event(r, tree, size) for r in wanted]
                yield from out
                if len(page) < _EXPORT_PAGE:
                    return

        return header, events()

    def _export_first(self, ids: tuple[str, ...], at_from: str | None, upto: int) -> int | None:
        """The first global_seq of the selection, or None if it is empty."""
        found: list[int] = []
        if ids:
            for i in range(0, len(ids), _IN_CHUNK):
                stmt = select(func.min(_T.global_seq)).where(
                    _T.decision_id.in_(ids[i : i + _IN_CHUNK]), _T.global_seq <= upto
                )
                g = self._read(stmt)[0][0]
                if g is not None:
                    found.append(int(g))
        if at_from is not None:
            stmt = select(func.min(_T.global_seq)).where(_T.at >= at_from, _T.global_seq <= upto)
            g = self._read(stmt)[0][0]
            if g is not None:
                found.append(int(g))
        if not ids and at_from is None:
            return 1 if upto >= 1 else None
        return min(found) if found else None

    def _export_rows(
        self, ids: tuple[str, ...], at_from: str | None, first: int, upto: int
    ) -> Iterator[VerifyRow]:
        """The selection's rows in global order from ``first`` on, in keyset pages."""
        base = self._row_select().where(_T.global_seq <= upto)
        if ids and at_from is None:
            chunks = [ids[i : i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK)]
            per = max(100, _VERIFY_CHUNK // len(chunks))
            yield from heapq.merge(
                *(self._pages(base.where(_T.decision_id.in_(c)), first - 1, per) for c in chunks),
                key=lambda r: r.global_seq,
            )
            return
        if at_from is None:
            yield from self._pages(base, first - 1)
            return
        wanted = set(ids)
        started: set[str] = set()  # a stream is taken whole from its first event >= since
        for r in self._pages(base, first - 1):
            if r.decision_id in wanted or r.decision_id in started or r.at >= at_from:
                started.add(r.decision_id)
                yield r

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending, stop the writer, release connections. Idempotent."""
        if self._closed:
            return
        self._writer.close()
        if self._checkpointer is not None:
            self._checkpointer.stop(final=True)  # covers what the writer just flushed
        self._closed = True
        if self._sink is not None:
            self._sink.close()
        self._wengine.dispose()
        self._rengine.dispose()

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger(url: str, *, create: bool = True, **options: Any) -> SqlLedger:
    """Open (and with ``create``, initialise) the ledger at ``url``; ``options`` go to
    ``SqlLedger`` (checkpoint_signer, origin, witnesses, checkpoint_public_key, dual_write...)."""
    return SqlLedger(url, create=create, **options)
