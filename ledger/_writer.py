"""Group commit: many callers' batches, one writer thread, one transaction per group.

Callers ``submit`` a prepared batch and block on a future. The writer thread
wakes, takes *everything* pending, and hands the group to a commit function
(``SqlLedger._commit_group``) that returns, per batch, its confirmations or
the LedgerError that rolled that batch (alone) back. If the commit function
raises, the whole transaction was rolled back and every batch in the group
fails with LedgerUnavailable. Every future is resolved exactly once, and
``close()`` commits what is pending before the thread stops.

This module has no database code; it only orders work and hands out results.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ledger.errors import LedgerError, LedgerUnavailable
from ledger.interface import Confirmation

__all__ = ["CommitFn", "GroupWriter", "Prepared", "WriterStats"]


@dataclass(frozen=True)
class Prepared:
    """An event with everything known before the write lock (body = the JCS bytes)."""

    event_id: str
    decision_id: str
    event_type: str
    at: str
    actor: str
    policy_version: str
    unique_key: str | None
    body: bytes
    attestation: Mapping[str, Any] | None = None
    """The payload of a ``batch.attested`` event (checked for placement under the lock)."""


@dataclass(frozen=True)
class WriterStats:
    """Counters since the ledger was opened."""

    commits: int
    """Transactions committed (one per group)."""
    batches: int
    """Caller batches that were part of a committed group (including ones that failed alone)."""
    events: int
    """Events durably committed."""
    pending: int
    """Batches submitted and not yet answered (queued or in the current group)."""
    queued: int
    """Batches waiting for the writer (not yet taken into a group)."""


CommitFn = Callable[[Sequence[Sequence[Prepared]]], list[list[Confirmation] | LedgerError]]


@dataclass(frozen=True)
class _Job:
    batch: Sequence[Prepared]
    future: Future[list[Confirmation]]


class GroupWriter:
    """Serialises commits through one thread and groups whatever is pending."""

    def __init__(self, commit: CommitFn, *, name: str) -> None:
        self._commit = commit
        self._cond = threading.Condition()
        self._queue: list[_Job] = []
        self._closing = False
        self._pending = 0
        self._commits = 0
        self._batches = 0
        self._events = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: Sequence[Prepared]) -> list[Confirmation]:
        """Queue ``batch`` and block until it is committed (or raise why it was not)."""
        job = _Job(batch, Future())
        with self._cond:
            if self._closing:
                raise LedgerUnavailable("ledger is closed; open it again with open_ledger(url)")
            self._queue.append(job)
            self._pending += 1
            self._cond.notify()
        return job.future.result()

    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                self._commits, self._batches, self._events, self._pending, len(self._queue)
            )

    def close(self) -> None:
        """Refuse new batches, commit the pending ones, stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                jobs, self._queue = self._queue, []
            self._run_group(jobs)

    def _run_group(self, jobs: list[_Job]) -> None:
        outcomes: list[list[Confirmation] | LedgerError]
        committed = False
        try:
            outcomes = self._commit([j.batch for j in jobs])
        except Exception as e:  # the transaction rolled back: nothing in the group was written
            outcomes = [_group_failure(e) for _ in jobs]
        else:
            committed = True
        with self._cond:
            if committed:
                self._commits += 1
                self._batches += len(jobs)
                self._events += sum(len(o) for o in outcomes if isinstance(o, list))
            self._pending -= len(jobs)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, list):
                job.future.set_result(outcome)
            else:
                job.future.set_exception(outcome)


def _group_failure(e: Exception) -> LedgerError:
    """A fresh exception per caller (one instance must not be raised in several threads)."""
    if isinstance(e, LedgerUnavailable):
        err = LedgerUnavailable(*e.args)
    else:
        err = LedgerUnavailable(
            f"ledger writer failed ({type(e).__name__}: {e}); nothing was written - retry, "
            "and report this if it persists"
        )
    err.__cause__ = e.__cause__ if isinstance(e, LedgerUnavailable) else e
    return err
