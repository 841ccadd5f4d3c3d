"""The ``events`` table: typed SQLAlchemy 2.0 model and append-only DDL.

``body`` holds the exact JCS bytes that were hashed and is the source of
truth; the other columns are indexes that ``ledger.verify`` checks against it.
``global_seq`` is assigned by the ledger (max + 1 under the write lock), so it
is gap-free. ``unique_key`` is UNIQUE and nullable: idempotency keys, approval
nonces and grant ids.

Append-only in the database itself: on SQLite, triggers ``RAISE(ABORT, ...)``
on UPDATE and DELETE; on PostgreSQL a plpgsql trigger function refuses UPDATE,
DELETE and TRUNCATE. The DDL runs right after the table is created.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    DDL,
    BigInteger,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["APPEND_ONLY_MESSAGE", "Base", "EventRow", "events_table"]

APPEND_ONLY_MESSAGE = "ledger events are append-only"


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class EventRow(Base):
    """One ledger event. Rows are inserted once and never changed."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("decision_id", "sequence", name="uq_events_stream_seq"),)

    # INTEGER PRIMARY KEY on SQLite (the rowid), BIGINT elsewhere; never autoincremented.
    global_seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    event_id: Mapped[str] = mapped_column(String(), unique=True)
    decision_id: Mapped[str] = mapped_column(String())
    sequence: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String())
    at: Mapped[str] = mapped_column(String())
    actor: Mapped[str] = mapped_column(String())
    policy_version: Mapped[str] = mapped_column(String())
    unique_key: Mapped[str | None] = mapped_column(String(), unique=True, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)


events_table = cast(Table, EventRow.__table__)

_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS events_refuse_{op.lower()} BEFORE {op} ON events
BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: {op} refused'); END"""
    for op in ("UPDATE", "DELETE")
]

_PG_DDL = [
    f"""CREATE OR REPLACE FUNCTION ledger_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}: % refused', TG_OP;
END
$$""",
    """CREATE OR REPLACE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION ledger_events_refuse_change()""",
    """CREATE OR REPLACE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change()""",
]

# (sqlalchemy's DDL constructor is not annotated, hence the ignores)
for _stmt in _SQLITE_TRIGGERS:
    _ddl = DDL(_stmt)  # type: ignore[no-untyped-call]
    event.listen(events_table, "after_create", _ddl.execute_if(dialect="sqlite"))
for _stmt in _PG_DDL:
    _ddl = DDL(_stmt)  # type: ignore[no-untyped-call]
    event.listen(events_table, "after_create", _ddl.execute_if(dialect="postgresql"))
