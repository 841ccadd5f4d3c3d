"""The ``events`` table: typed SQLAlchemy 2.0 model.

``body`` holds the exact JCS bytes that were hashed and is the source of
truth; the other columns are indexes that ``ledger.verify`` checks against it.
``global_seq`` is assigned by the ledger (max + 1 under the write lock), so it
is gap-free. ``unique_key`` is UNIQUE and nullable: idempotency keys, approval
nonces and grant ids.

The schema is created and upgraded by the Alembic revisions in
``ledger/migrations`` (``ledger.schema``), never by ``create_all``: they also
install the append-only triggers (SQLite: ``RAISE(ABORT, ...)`` on UPDATE and
DELETE; PostgreSQL: a plpgsql function refusing UPDATE, DELETE and TRUNCATE).
This model must describe the schema at the head revision.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["APPEND_ONLY_MESSAGE", "Base", "EventRow", "events_table"]

APPEND_ONLY_MESSAGE = "ledger events are append-only"
"""What the database's triggers say when they refuse an UPDATE, DELETE or TRUNCATE."""


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class EventRow(Base):
    """One ledger event. Rows are inserted once and never changed."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_events_event_id"),
        UniqueConstraint("unique_key", name="uq_events_unique_key"),
        UniqueConstraint("decision_id", "sequence", name="uq_events_stream_seq"),
    )

    # INTEGER PRIMARY KEY on SQLite (the rowid), BIGINT elsewhere; never autoincremented.
    global_seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    event_id: Mapped[str] = mapped_column(String())
    decision_id: Mapped[str] = mapped_column(String())
    sequence: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String())
    at: Mapped[str] = mapped_column(String())
    actor: Mapped[str] = mapped_column(String())
    policy_version: Mapped[str] = mapped_column(String())
    unique_key: Mapped[str | None] = mapped_column(String(), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)


events_table = cast(Table, EventRow.__table__)
