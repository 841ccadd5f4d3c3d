"""C2SP checkpoint notes and witness cosignatures.

Revision ID: 0003
Revises: 0002

``checkpoint_notes`` holds every checkpoint the ledger signed as a C2SP signed note
(``ledger.checkpoint``): ``idx`` (the chain index from the note's ``l7.index`` line)
is the key, ``tree_size`` is unique, ``root_hash`` repeats the note's root in hex (an
index column; ``SqlLedger`` checks it against the note). ``cosignatures`` holds each
witness's cosignature/v1 line for a checkpoint, keyed by (``idx``, ``witness`` =
``<name>+<key hash hex>``). The JCS ``checkpoints`` table of 0002 stays (old ledgers
keep their history) but is no longer written.

Both tables are append-only like ``events``:

* SQLite: BEFORE UPDATE / BEFORE DELETE triggers ``RAISE(ABORT, ...)``;
* PostgreSQL: a plpgsql function per table called by a row trigger (BEFORE UPDATE OR
  DELETE) and a statement trigger (BEFORE TRUNCATE). The application role gets SELECT
  and INSERT only (``ledger.pg_roles``).

Objects are created only if missing, so the upgrade puts back a dropped trigger.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = {
    "checkpoint_notes": "ledger checkpoint notes are append-only",
    "cosignatures": "ledger cosignatures are append-only",
}


def _sqlite(table: str, message: str) -> list[str]:
    return [
        f"CREATE TRIGGER IF NOT EXISTS {table}_refuse_{op_.lower()} BEFORE {op_} ON {table}\n"
        f"BEGIN SELECT RAISE(ABORT, '{message}: {op_} refused'); END"
        for op_ in ("UPDATE", "DELETE")
    ]


def _postgresql(table: str, message: str) -> list[str]:
    fn = f"ledger_{table}_refuse_change"
    return [
        f"""CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{message}: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$""",
        f"DROP TRIGGER IF EXISTS {table}_refuse_update_delete ON {table}",
        f"""CREATE TRIGGER {table}_refuse_update_delete
BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION {fn}()""",
        f"DROP TRIGGER IF EXISTS {table}_refuse_truncate ON {table}",
        f"""CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION {fn}()""",
    ]


def _big() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("checkpoint_notes"):
        op.create_table(
            "checkpoint_notes",
            sa.Column("idx", _big(), primary_key=True, autoincrement=False),
            sa.Column("tree_size", _big(), nullable=False),
            sa.Column("root_hash", sa.String(64), nullable=False),
            sa.Column("note", sa.Text(), nullable=False),
            sa.UniqueConstraint("tree_size", name="uq_checkpoint_notes_tree_size"),
        )
    if not inspector.has_table("cosignatures"):
        op.create_table(
            "cosignatures",
            sa.Column("idx", _big(), primary_key=True, autoincrement=False),
            sa.Column("witness", sa.String(), primary_key=True),
            sa.Column("line", sa.Text(), nullable=False),
        )
    dialect = op.get_context().dialect.name
    build = {"sqlite": _sqlite, "postgresql": _postgresql}.get(dialect)
    if build is None:  # fail closed: no table without its append-only triggers
        raise NotImplementedError(f"no append-only triggers for the {dialect!r} dialect")
    for table, message in _TABLES.items():
        for stmt in build(table, message):
            op.execute(stmt)


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; its schema is never downgraded")
