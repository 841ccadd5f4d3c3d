"""The append-only ``events`` table.

Revision ID: 0001
Revises: (none)

Columns, keys and unique constraints as in ``ledger.models`` at this revision
(a revision is a frozen snapshot: it does not import the model). Append-only in
the database itself:

* SQLite: BEFORE UPDATE / BEFORE DELETE triggers ``RAISE(ABORT, ...)``;
* PostgreSQL: one plpgsql function refusing the change, called by a row trigger
  (BEFORE UPDATE OR DELETE) and a statement trigger (BEFORE TRUNCATE). The
  application role additionally lacks those privileges (``ledger.pg_roles``).

Ledgers created before migrations existed (``create_all``) have exactly this
schema and are stamped at this revision when first opened with ``create=True``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_MESSAGE = "ledger events are append-only"

_SQLITE = [
    f"CREATE TRIGGER events_refuse_{op_.lower()} BEFORE {op_} ON events\n"
    f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}: {op_} refused'); END"
    for op_ in ("UPDATE", "DELETE")
]

_POSTGRESQL = [
    f"""CREATE FUNCTION ledger_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{_MESSAGE}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$""",
    """CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
FOR EACH ROW EXECUTE FUNCTION ledger_events_refuse_change()""",
    """CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change()""",
]


def upgrade() -> None:
    op.create_table(
        "events",
        # INTEGER PRIMARY KEY on SQLite (the rowid), BIGINT elsewhere; assigned by the writer.
        sa.Column(
            "global_seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("decision_id", sa.String(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("at", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=False),
        sa.Column("unique_key", sa.String(), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("unique_key", name="uq_events_unique_key"),
        # also the index behind get_stream and the writer's head lookup
        sa.UniqueConstraint("decision_id", "sequence", name="uq_events_stream_seq"),
    )
    dialect = op.get_context().dialect.name
    triggers = {"sqlite": _SQLITE, "postgresql": _POSTGRESQL}.get(dialect)
    if triggers is None:  # fail closed: no ledger without its append-only triggers
        raise NotImplementedError(f"no append-only triggers for the {dialect!r} dialect")
    for stmt in triggers:
        op.execute(stmt)


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; its schema is never downgraded")
