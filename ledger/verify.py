"""Ledger verification: a pure, one-pass function over stored rows.

``verify_rows`` knows nothing of SQLAlchemy: it takes ``VerifyRow`` tuples in
``global_seq`` order (any tuple with the same field order will do) and keeps,
per decision stream, the last sequence and hash. For every row, in order:

1. the stream ``sequence`` is the stream's last + 1 (first is 1)  -> ``sequence_gap``
2. ``prev_hash`` is the stream's last hash (GENESIS for the first) -> ``chain_break``
3. sha256(prev_hash || stored body bytes) is the stored ``hash``    -> ``hash_mismatch``
4. the body is a JSON object with exactly the hashed fields, a known
   schema version and event type, and the indexed columns (event_id,
   decision_id, event_type, actor, unique_key, policy_version, at) equal
   the body's fields                                               -> ``body_mismatch``
5. ``global_seq`` is exactly the previous one + 1 (first is 1)
                                                 -> ``global_gap`` / ``global_order``

The stream checks come first so that a hole inside a stream is reported as
that stream's ``sequence_gap``; a ``global_gap`` names the event found after
the hole (the missing event itself cannot be named from rows alone).

The first failure raises ``IntegrityViolation``; success returns a
``VerifyReport``. Bodies are hashed as stored (never re-canonicalized), so
verification runs at hashlib + ``json.loads`` speed.

Not detectable from rows alone (DESIGN §4 signed checkpoints will close these):
a truncated global tail, and a reordering of events *between* streams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ledger.canonical import BODY_FIELDS
from ledger.errors import IntegrityViolation
from ledger.interface import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    EventHash,
    EventType,
    ProgressFn,
    VerifyReport,
)

__all__ = ["RowVerifier", "VerifyRow", "verify_file", "verify_rows"]

PROGRESS_EVERY = 10_000
_EVENT_TYPES = frozenset(t.value for t in EventType)
_INDEXED = ("event_id", "decision_id", "event_type", "actor", "unique_key", "policy_version")


class VerifyRow(NamedTuple):
    """The columns verification reads, in this order (``body`` as the stored bytes)."""

    global_seq: int
    decision_id: str
    sequence: int
    event_id: str
    event_type: str
    at: str
    actor: str
    policy_version: str
    unique_key: str | None
    prev_hash: str
    hash: str
    body: bytes


def _body_problem(row: VerifyRow, body: bytes) -> tuple[str, str] | None:
    """(expected, found) for the first way ``body`` disagrees with ``row``, or None."""
    try:
        parsed: Any = json.loads(body)
    except ValueError as e:
        return "a JSON object body", f"unparseable body ({e})"
    if not isinstance(parsed, dict):
        return "a JSON object body", type(parsed).__name__
    if parsed.keys() != BODY_FIELDS:
        return f"body fields {sorted(BODY_FIELDS)}", f"{sorted(parsed)}"
    if parsed["schema_version"] != SCHEMA_VERSION:
        return f"schema_version {SCHEMA_VERSION}", f"{parsed['schema_version']!r}"
    if parsed["event_type"] not in _EVENT_TYPES:
        return "a known event_type", f"{parsed['event_type']!r}"
    ts = parsed["timestamps"]
    if not isinstance(ts, dict) or ts.keys() != {"at"}:
        return 'timestamps {"at"}', f"{ts!r}"
    for name in _INDEXED:
        if parsed[name] != getattr(row, name):
            return f"{name}={parsed[name]!r} (from body)", f"{getattr(row, name)!r} in column"
    if ts["at"] != row.at:
        return f"at={ts['at']!r} (from body)", f"{row.at!r} in column"
    return None


def _fail(row: VerifyRow, what: str, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what,
        decision_id=row.decision_id,
        sequence=row.sequence,
        global_seq=row.global_seq,
        expected=expected,
        actual=actual,
    )


class RowVerifier:
    """``verify_rows`` as a stateful, incremental checker: ``feed`` rows in global order
    (one call or many: the stream heads and the expected global_seq carry over), then
    ``report``. The integrity monitor keeps one across checks so each check reads only
    the rows appended since the last one."""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self.expected_g = 1
        self.head_hash: str = GENESIS_HASH
        self.events = 0

    def feed(
        self,
        rows: Iterable[tuple[Any, ...]],
        *,
        total: int | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Check each row; raise IntegrityViolation at the first failure."""
        heads = self.heads
        sha256 = hashlib.sha256
        loads = json.loads
        genesis = (0, GENESIS_HASH)
        expected_g = self.expected_g
        n = self.events
        try:
            for raw in rows:
                g, did, seq, eid, etype, at, actor, pv, ukey, prev, stored, body = raw
                if isinstance(body, str):  # tolerate callers that pass the TEXT column as str
                    body = body.encode("utf-8", "surrogateescape")
                last_seq, last_hash = heads.get(did, genesis)
                # 1. stream sequence
                if seq != last_seq + 1:
                    raise _fail(
                        VerifyRow(*raw), "sequence_gap", f"sequence {last_seq + 1}", f"{seq}"
                    )
                # 2. chain link
                if prev != last_hash:
                    raise _fail(VerifyRow(*raw), "chain_break", f"prev_hash {last_hash}", f"{prev}")
                # 3. hash of the stored bytes
                try:
                    recomputed = sha256(prev.encode("ascii") + body).hexdigest()
                except (UnicodeEncodeError, AttributeError, TypeError) as e:
                    raise _fail(
                        VerifyRow(*raw), "hash_mismatch", "hashable prev_hash/body", repr(e)
                    ) from e
                if recomputed != stored:
                    raise _fail(VerifyRow(*raw), "hash_mismatch", f"hash {recomputed}", f"{stored}")
                # 4. indexed columns against the body (fast path, then the slow path names
                #    the field)
                try:
                    b = loads(body)
                    ok = (
                        b.keys() == BODY_FIELDS
                        and b["event_id"] == eid
                        and b["decision_id"] == did
                        and b["event_type"] == etype
                        and b["actor"] == actor
                        and b["unique_key"] == ukey
                        and b["policy_version"] == pv
                        and b["timestamps"] == {"at": at}
                        and b["schema_version"] == SCHEMA_VERSION
                        and etype in _EVENT_TYPES
                    )
                except (ValueError, TypeError, AttributeError, KeyError):
                    ok = False
                if not ok:
                    row = VerifyRow(*raw)
                    problem = _body_problem(row, body) or (
                        "body consistent with columns",
                        "mismatch",
                    )
                    raise _fail(row, "body_mismatch", *problem)
                # 5. global sequence (after the stream checks, so a hole inside a stream is
                #    reported as that stream's sequence_gap, which names the stream)
                if g != expected_g:
                    what = "global_gap" if g > expected_g else "global_order"
                    raise _fail(
                        VerifyRow(*raw), what, f"global_seq {expected_g}", f"global_seq {g}"
                    )
                heads[did] = (seq, stored)
                self.head_hash = stored
                expected_g = g + 1
                n += 1
                if progress is not None and n % PROGRESS_EVERY == 0:
                    progress(n, max(total or 0, n))
        finally:
            self.expected_g, self.events = expected_g, n
        if progress is not None:
            progress(n, max(total or 0, n))

    def report(self) -> VerifyReport:
        return VerifyReport(
            events=self.events,
            streams=len(self.heads),
            last_global_seq=self.expected_g - 1,
            head_hash=EventHash(self.head_hash),
        )


def verify_rows(
    rows: Iterable[tuple[Any, ...]],
    *,
    total: int | None = None,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Check every row (in global_seq order); raise IntegrityViolation at the first failure."""
    checker = RowVerifier()
    checker.feed(rows, total=total, progress=progress)
    return checker.report()


def verify_file(path_or_url: str | Path, progress: ProgressFn | None = None) -> VerifyReport:
    """Open an existing ledger (SQLite file path or database URL) and verify all of it.

    Never creates a ledger: a missing file or schema raises LedgerUnavailable.
    """
    from ledger.store import open_ledger

    target = str(path_or_url)
    url = target if "://" in target else f"sqlite:///{Path(target).resolve()}"
    led = open_ledger(url, create=False)
    try:
        return led.verify(progress)
    finally:
        led.close()
