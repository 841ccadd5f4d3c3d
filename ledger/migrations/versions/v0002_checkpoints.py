"""Signed checkpoints table, and the indexes behind ``SqlLedger.query``.

Revision ID: 0002
Revises: 0001

``checkpoints`` holds every signed tree head the ledger issued (``ledger.checkpoint``):
``tree_size`` is the key, ``body`` the exact JCS bytes the signature covers (the other
columns must agree with it; ``SqlLedger.checkpoints`` checks). Append-only like
``events``, with its own refusal message:

* SQLite: BEFORE UPDATE / BEFORE DELETE triggers ``RAISE(ABORT, ...)``;
* PostgreSQL: a plpgsql function called by a row trigger (BEFORE UPDATE OR DELETE)
  and a statement trigger (BEFORE TRUNCATE). The application role gets SELECT and
  INSERT only (``ledger.pg_roles``).

Indexes on ``events`` for the query filters, each ending in ``global_seq`` so a
filtered page comes out of the index already in global order:
``(event_type, global_seq)``, ``(actor, global_seq)`` and ``(at)``. ``decision_id``
is served by ``uq_events_stream_seq`` (0001).

Every object is created only if it is missing, so a database stamped back at the
baseline (``alembic_version`` lost, e.g. a partial restore) upgrades cleanly, and the
upgrade puts back an append-only trigger that was dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_MESSAGE = "ledger checkpoints are append-only"

_SQLITE = [
    f"CREATE TRIGGER IF NOT EXISTS checkpoints_refuse_{op_.lower()} BEFORE {op_} ON checkpoints\n"
    f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {op_} refused'); END"
    for op_ in ("UPDATE", "DELETE")
]

_POSTGRESQL = [
    f"""CREATE OR REPLACE FUNCTION ledger_checkpoints_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$""",
    "DROP TRIGGER IF EXISTS checkpoints_refuse_update_delete ON checkpoints",
    """CREATE TRIGGER checkpoints_refuse_update_delete
BEFORE UPDATE OR DELETE ON checkpoints
FOR EACH ROW EXECUTE FUNCTION ledger_checkpoints_refuse_change()""",
    "DROP TRIGGER IF EXISTS checkpoints_refuse_truncate ON checkpoints",
    """CREATE TRIGGER checkpoints_refuse_truncate BEFORE TRUNCATE ON checkpoints
FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoints_refuse_change()""",
]


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("checkpoints"):
        _create_table()
    op.create_index(
        "ix_events_event_type", "events", ["event_type", "global_seq"], if_not_exists=True
    )
    op.create_index("ix_events_actor", "events", ["actor", "global_seq"], if_not_exists=True)
    op.create_index("ix_events_at", "events", ["at"], if_not_exists=True)
    dialect = op.get_context().dialect.name
    triggers = {"sqlite": _SQLITE, "postgresql": _POSTGRESQL}.get(dialect)
    if triggers is None:  # fail closed: no checkpoint table without its append-only triggers
        raise NotImplementedError(f"no append-only triggers for the {dialect!r} dialect")
    for stmt in triggers:
        op.execute(stmt)


def _create_table() -> None:
    op.create_table(
        "checkpoints",
        sa.Column(
            "tree_size",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.String(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("signature", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; its schema is never downgraded")
