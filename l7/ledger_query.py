"""Reading shared state from the ledger through its Query API (issue #12, item 5).

Everything that guards security across engine replicas (the rollback floor, overdue
break-glass reviews, the pending index, refused-signature counts) is derived from ledger
events, never from one process's memory or a local file. Reads go through
``query(event_type=..., after_global_seq=...)`` (``SqlLedger.query`` in-process, the
ledger service's ``Query`` over gRPC), which the ``(event_type, global_seq)`` index
serves, so no read scans the whole ledger.

``Tail`` is the incremental reader behind every per-process cache: it remembers, per
event type, the last ``global_seq`` it has seen and returns only what was appended since.
The ledger assigns ``global_seq`` under its write lock and commits in that order, so what
a query sees is always a gap-free prefix of the log.

Causality across types. A tail polls its types one after another, so an event of a type
polled early may be seen while an earlier event of a type polled later is not (it
committed in between). List the types **effects first** (e.g. ``breakglass.reviewed``
before ``override.breakglass``): an effect seen by the first query committed after its
cause, so the cause is visible to the later query, and ``poll()`` returns the union in
global order. A cache then never sees an effect without its cause.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, cast

from l7.errors import ConfigError, LedgerDegraded
from ledger import EventType, LedgerError, StoredEvent

__all__ = ["PAGE", "EventQuery", "Tail", "query_all", "queryable"]

PAGE = 500
"""Events per Query page: below both ``ledger.store.QUERY_LIMIT_MAX`` and the service's
``MAX_PAGE`` (1000), so a short page always means the end."""


class EventQuery(Protocol):
    """The part of ``ledger.AuditableLedger`` this module needs (SqlLedger, RemoteLedger)."""

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
    ) -> list[StoredEvent]: ...


def queryable(ledger: object) -> EventQuery:
    """``ledger`` as an EventQuery, or ConfigError: state shared by replicas cannot be read
    from a ledger without the Query API, and guessing would fail open."""
    # getattr, not isinstance: wrappers such as FieldGuardedLedger delegate by __getattr__,
    # which runtime protocol checks (getattr_static) do not follow.
    if not callable(getattr(ledger, "query", None)):
        raise ConfigError(
            f"the ledger client {type(ledger).__name__} has no query(): shared state "
            "(rollback floor, break-glass reviews, pending index, anomaly counts) is read "
            "through the ledger's Query API; use SqlLedger or the ledger service client"
        )
    return cast(EventQuery, ledger)


def query_all(
    ledger: EventQuery,
    *,
    event_type: EventType,
    decision_id: str | None = None,
    actor: str | None = None,
    after_global_seq: int = 0,
) -> Iterator[StoredEvent]:
    """Every event matching the filters after ``after_global_seq``, in global order, page by
    page. Raises LedgerError from the ledger (callers translate it once)."""
    after = after_global_seq
    while True:
        page = ledger.query(
            event_type=event_type.value,
            decision_id=decision_id,
            actor=actor,
            after_global_seq=after,
            limit=PAGE,
        )
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].global_seq


class Tail:
    """What was appended since the last poll, for a fixed list of event types.

    Not thread-safe by itself: the cache that owns a tail polls it under its own lock, so
    events are applied in one order. A failed poll advances nothing."""

    def __init__(self, ledger: object, types: Sequence[EventType]) -> None:
        if not types:
            raise ValueError("a Tail needs at least one event type")
        self._ledger = ledger
        self.types = tuple(types)
        self._cursors = dict.fromkeys(self.types, 0)

    @property
    def cursor(self) -> int:
        """The newest ``global_seq`` seen of any of the types (0 before the first poll)."""
        return max(self._cursors.values())

    def poll(self) -> list[StoredEvent]:
        """Events of the types appended since the last poll, in global order.

        Raises LedgerDegraded when the ledger cannot be read (nothing advances then), and
        ConfigError when the ledger has no Query API."""
        ledger = queryable(self._ledger)
        cursors = dict(self._cursors)
        out: list[StoredEvent] = []
        try:
            for t in self.types:  # effects first: see the module docstring
                for e in query_all(ledger, event_type=t, after_global_seq=cursors[t]):
                    out.append(e)
                    cursors[t] = e.global_seq
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger could not be read: {e}") from e
        self._cursors = cursors
        out.sort(key=lambda e: e.global_seq)
        return out
