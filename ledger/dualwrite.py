"""Optional dual-write: a second, append-only copy of every committed event (DESIGN §4).

Configured with ``SqlLedger(url, dual_write="jsonl:///var/lib/layer7/ledger.jsonl")``.
The sink is a JSON-lines file; each line is one stored row, keys sorted, ASCII::

    {"body": "<the stored JCS body text>", "decision_id", "global_seq", "hash",
     "prev_hash", "sequence"}

The ledger's writer appends the lines of a committed group in global order, then
flushes and fsyncs, and only then confirms the group's events to their callers:
a confirmation means the event is in the database AND in the sink. The sink holds
every raw payload, like the database: it is created 0600 in a 0700 directory, and one
that group or others may read is refused (``ledger.files``).

If the sink fails *after* the database committed (disk full, file replaced by a
directory, volume gone), the callers of that group get LedgerUnavailable, and the
database then holds events the sink lacks (committed, never confirmed). The sink is
then marked failed and every later append is refused before it reaches the database,
so the divergence cannot grow, until the ledger is reopened. ``verify_dual_write``
detects any divergence, whatever its cause: a line missing for a database row, an
extra line for a row that does not exist, a line that differs from its row, a
duplicated line, or a malformed or torn line (IntegrityViolation, kinds
``dual_write_missing``, ``dual_write_extra``, ``dual_write_mismatch``,
``dual_write_duplicate``, ``dual_write_malformed``).

Every process that writes the ledger must dual-write to the same file (lines are
matched by ``global_seq``, so their order in the file may interleave between
processes); a process that does not leaves rows the file lacks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ledger.errors import IntegrityViolation, LedgerUnavailable
from ledger.files import check_private, open_private_append
from ledger.verify import VerifyRow

__all__ = ["SINK_FIELDS", "DualWriteReport", "JsonlSink", "parse_sink_url", "verify_dual_write"]

SINK_FIELDS = frozenset({"global_seq", "decision_id", "sequence", "prev_hash", "hash", "body"})
_SCHEME = "jsonl://"
_REORDER_WINDOW = 100_000
"""Lines held while waiting for an earlier one (interleaving between writer processes)."""


class _RowSource(Protocol):
    """What ``verify_dual_write`` reads from a ledger (``SqlLedger`` or a remote client)."""

    def iter_rows(self, *, after_global_seq: int = 0) -> Iterator[tuple[object, ...]]: ...

    def count(self) -> int: ...


@dataclass(frozen=True)
class DualWriteReport:
    """Result of a dual-write comparison that passed (a divergence raises)."""

    lines: int
    """Lines of the file compared with database rows."""
    last_global_seq: int
    """The comparison covered global_seq 1..last_global_seq."""


def parse_sink_url(url: str) -> Path:
    """The file path of a ``jsonl:///absolute/path`` sink URL (LedgerUnavailable otherwise)."""
    if not url.startswith(_SCHEME):
        raise LedgerUnavailable(
            f"unsupported dual-write sink {url!r}: use jsonl:///absolute/path/to/file.jsonl"
        )
    path = Path(url[len(_SCHEME) :])
    if not path.is_absolute():
        raise LedgerUnavailable(
            f"dual-write sink {url!r} must name an absolute path (jsonl:///var/lib/...)"
        )
    return path


def sink_line(row: Mapping[str, Any]) -> bytes:
    """One sink line (with its newline) for a stored row (a dict with ``SINK_FIELDS``)."""
    obj = {k: row[k] for k in SINK_FIELDS}
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        + b"\n"
    )


class JsonlSink:
    """The append-only JSON-lines sink; used by the ledger's writer thread only."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = parse_sink_url(url)
        self.failed: str | None = None
        """Why the sink failed after a database commit; appends are refused from then on."""
        try:
            check_private(self.path, "dual-write sink")
            self._file = open_private_append(self.path)  # 0600 in 0700, held open
            size = os.fstat(self._file.fileno()).st_size
            if size:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    last = f.read(1)
                if last != b"\n":
                    self._file.close()
                    raise LedgerUnavailable(
                        f"dual-write sink {self.path} ends in an unterminated line (a torn "
                        "write); compare it with verify_dual_write and repair it before "
                        "opening the ledger"
                    )
        except OSError as e:
            raise LedgerUnavailable(f"cannot open dual-write sink {self.path}: {e}") from e

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append the lines of one committed group, flush and fsync (OSError/ValueError raise)."""
        data = memoryview(b"".join(sink_line(r) for r in rows))
        while data:
            n = self._file.write(data)
            if not n:
                raise OSError(f"short write to {self.path}")
            data = data[n:]
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _violation(
    what: str, where: tuple[str, int, int], expected: str, actual: str
) -> IntegrityViolation:
    """IntegrityViolation at ``where`` = (decision_id, sequence, global_seq)."""
    decision_id, sequence, g = where
    return IntegrityViolation(
        what,
        decision_id=decision_id,
        sequence=sequence,
        global_seq=g,
        expected=expected,
        actual=actual,
    )


def _expected(row: VerifyRow) -> dict[str, Any]:
    body = row.body.decode("utf-8") if isinstance(row.body, bytes) else str(row.body)
    return {
        "global_seq": row.global_seq,
        "decision_id": row.decision_id,
        "sequence": row.sequence,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "body": body,
    }


def _parse_line(path: Path, lineno: int, line: bytes) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    nowhere = ("-", 0, 0)
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise _violation(
            "dual_write_malformed", nowhere, f"a JSON object on {where}", str(e)
        ) from e
    if not isinstance(obj, dict) or obj.keys() != SINK_FIELDS:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise _violation(
            "dual_write_malformed", nowhere, f"fields {sorted(SINK_FIELDS)} on {where}", f"{found}"
        )
    g = obj["global_seq"]
    if not isinstance(g, int) or isinstance(g, bool) or g < 1:
        raise _violation(
            "dual_write_malformed", nowhere, f"global_seq >= 1 on {where}", f"{g!r:.40}"
        )
    obj["_line"] = lineno
    return obj


def _compare(path: Path, line: dict[str, Any], row: VerifyRow) -> None:
    want = _expected(row)
    for k in ("decision_id", "sequence", "prev_hash", "hash", "body"):
        if line[k] != want[k]:
            raise _violation(
                "dual_write_mismatch",
                (row.decision_id, row.sequence, row.global_seq),
                f"{k}={want[k]!r:.100} as in the database",
                f"{line[k]!r:.100} on {path}:{line['_line']}",
            )


class _Rows:
    """The database rows in global order, remembering the global_seq gaps passed over."""

    def __init__(self, ledger: _RowSource, horizon: int) -> None:
        self._it = (VerifyRow._make(r) for r in ledger.iter_rows())
        self._horizon = horizon
        self._gaps: list[tuple[int, int]] = []
        self._prev = 0
        self.current: VerifyRow | None = None
        self.advance()

    def advance(self) -> None:
        row = next(self._it, None)
        if row is not None and row.global_seq > self._horizon:
            row = None
        if row is not None:
            if row.global_seq > self._prev + 1:
                self._gaps.append((self._prev + 1, row.global_seq - 1))
            self._prev = row.global_seq
        self.current = row

    @property
    def done_below(self) -> int:
        """Every row with a smaller global_seq has been matched (or never existed)."""
        return self.current.global_seq if self.current is not None else self._horizon + 1

    def absent(self, g: int) -> bool:
        """True if the database has no row ``g`` (a gap passed over, or beyond its end)."""
        return any(lo <= g <= hi for lo, hi in self._gaps) or (
            self.current is None and g > self._prev
        )


def verify_dual_write(
    ledger: _RowSource, path: Path | str, *, upto: int | None = None
) -> DualWriteReport:
    """Compare the sink file with the ledger's rows 1..``upto`` (default: all of them now).

    Rows after ``upto`` may lack their line (their group was still in flight), but a
    line after ``upto`` must still match a row. Returns what was compared; raises
    IntegrityViolation at the first divergence (module docstring).
    """
    p = Path(path)
    horizon = ledger.count() if upto is None else upto
    try:
        data = p.read_bytes()
    except OSError as e:
        raise _violation(
            "dual_write_missing", ("-", 0, 1), f"the dual-write file {p}", f"unreadable: {e}"
        ) from e
    if data and not data.endswith(b"\n"):
        raise _violation(
            "dual_write_malformed", ("-", 0, 0), f"{p} to end with a newline", "a torn last line"
        )
    rows = _Rows(ledger, horizon)
    pending: dict[int, dict[str, Any]] = {}  # lines read ahead of their row (interleaving)
    late: dict[int, dict[str, Any]] = {}  # lines after the horizon
    matched = last = 0

    def missing(row: VerifyRow) -> IntegrityViolation:
        return _violation(
            "dual_write_missing",
            (row.decision_id, row.sequence, row.global_seq),
            f"a line in {p} for global_seq {row.global_seq} (committed in the database)",
            "no such line",
        )

    def extra(line: dict[str, Any]) -> IntegrityViolation:
        g = line["global_seq"]
        return _violation(
            "dual_write_extra",
            (str(line["decision_id"]), 0, g),
            f"no line for global_seq {g}: the database has no such row",
            f"a line on {p}:{line['_line']}",
        )

    for lineno, raw in enumerate(data.splitlines(), start=1):
        line = _parse_line(p, lineno, raw)
        g = line["global_seq"]
        if g > horizon:
            if g in late:
                raise _violation(
                    "dual_write_duplicate",
                    (str(line["decision_id"]), 0, g),
                    f"one line for global_seq {g}",
                    f"another on {p}:{lineno}",
                )
            late[g] = line
            continue
        if g in pending or g < rows.done_below:
            if rows.absent(g):
                raise extra(line)
            raise _violation(
                "dual_write_duplicate",
                (str(line["decision_id"]), 0, g),
                f"one line for global_seq {g}",
                f"another on {p}:{lineno}",
            )
        pending[g] = line
        while (row := rows.current) is not None and (found := pending.pop(row.global_seq, None)):
            _compare(p, found, row)
            matched, last = matched + 1, row.global_seq
            rows.advance()
        if rows.current is not None and len(pending) > _REORDER_WINDOW:
            raise missing(rows.current)
    if rows.current is not None:
        raise missing(rows.current)
    if pending:
        raise extra(pending[min(pending)])
    if late:  # written after the horizon: their rows were committed before the line
        for r in ledger.iter_rows(after_global_seq=horizon):
            row = VerifyRow._make(r)
            found = late.pop(row.global_seq, None)
            if found is not None:
                _compare(p, found, row)
                matched, last = matched + 1, row.global_seq
            if not late or row.global_seq > max(late):
                break
        if late:
            raise extra(late[min(late)])
    return DualWriteReport(lines=matched, last_global_seq=last)
