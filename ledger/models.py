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
``checkpoints`` (revision 0002) keeps every signed tree head: ``tree_size`` is the
key and ``body`` the exact JCS bytes the signature covers; append-only like
``events`` (``CHECKPOINTS_APPEND_ONLY_MESSAGE``). The indexes on ``event_type``,
``actor`` and ``at`` serve ``SqlLedger.query``.
Revision 0003 supersedes ``checkpoints`` (JCS bodies, kept for old ledgers, no longer
written) with ``checkpoint_notes``: one C2SP signed note per checkpoint, keyed by its
chain index (``ledger.checkpoint``), and ``cosignatures``: each witness's cosignature/v1
line for a checkpoint. Both append-only (``CHECKPOINT_NOTES_APPEND_ONLY_MESSAGE``,
``COSIGNATURES_APPEND_ONLY_MESSAGE``).

This model must describe the schema at the head revision.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import BigInteger, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "APPEND_ONLY_MESSAGE",
    "CHECKPOINTS_APPEND_ONLY_MESSAGE",
    "CHECKPOINT_NOTES_APPEND_ONLY_MESSAGE",
    "COSIGNATURES_APPEND_ONLY_MESSAGE",
    "Base",
    "CheckpointNoteRow",
    "CheckpointRow",
    "CosignatureRow",
    "EventRow",
    "checkpoint_notes_table",
    "checkpoints_table",
    "cosignatures_table",
    "events_table",
]

APPEND_ONLY_MESSAGE = "ledger events are append-only"
"""What the database's triggers say when they refuse an UPDATE, DELETE or TRUNCATE."""
CHECKPOINTS_APPEND_ONLY_MESSAGE = "ledger checkpoints are append-only"
"""The same for the ``checkpoints`` table."""
CHECKPOINT_NOTES_APPEND_ONLY_MESSAGE = "ledger checkpoint notes are append-only"
COSIGNATURES_APPEND_ONLY_MESSAGE = "ledger cosignatures are append-only"


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class EventRow(Base):
    """One ledger event. Rows are inserted once and never changed."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_events_event_id"),
        UniqueConstraint("unique_key", name="uq_events_unique_key"),
        UniqueConstraint("decision_id", "sequence", name="uq_events_stream_seq"),
        Index("ix_events_event_type", "event_type", "global_seq"),
        Index("ix_events_actor", "actor", "global_seq"),
        Index("ix_events_at", "at"),
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


class CheckpointRow(Base):
    """One signed checkpoint (``ledger.checkpoint.Checkpoint``). Inserted once, never changed."""

    __tablename__ = "checkpoints"

    tree_size: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    root_hash: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[str] = mapped_column(String())
    key_id: Mapped[str] = mapped_column(String())
    signature: Mapped[str] = mapped_column(String())
    body: Mapped[str] = mapped_column(Text)
    """RFC 8785 bytes of the signed fields (``Checkpoint.signed_bytes``), as text."""


class CheckpointNoteRow(Base):
    """One signed checkpoint note (``ledger.checkpoint.Checkpoint.note``). Never changed."""

    __tablename__ = "checkpoint_notes"
    __table_args__ = (UniqueConstraint("tree_size", name="uq_checkpoint_notes_tree_size"),)

    idx: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    tree_size: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    root_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text)
    """The signed note exactly (body, empty line, the log's signature line)."""


class CosignatureRow(Base):
    """A witness's cosignature/v1 line over checkpoint ``idx``. Never changed."""

    __tablename__ = "cosignatures"

    idx: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    witness: Mapped[str] = mapped_column(String(), primary_key=True)
    """``<witness key name>+<key hash hex>``."""
    line: Mapped[str] = mapped_column(Text)
    """The note signature line (``— <name> <base64>``), without its newline."""


events_table = cast(Table, EventRow.__table__)
checkpoints_table = cast(Table, CheckpointRow.__table__)
checkpoint_notes_table = cast(Table, CheckpointNoteRow.__table__)
cosignatures_table = cast(Table, CosignatureRow.__table__)
