"""Alembic environment for the ledger schema.

``ledger.schema`` runs migrations programmatically: it builds the Config in
code and passes an open connection, already inside a transaction that holds
the ledger's write lock, as ``config.attributes["connection"]``. Without one
(an operator running ``alembic`` with a ``sqlalchemy.url``), this opens its
own connection. Offline mode (``--sql``) prints the DDL for a DBA to review.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from ledger.models import Base

config = context.config


def _run(conn: Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=conn.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
    else:
        engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
        try:
            with engine.connect() as conn:
                _run(conn)
                conn.commit()
        finally:
            engine.dispose()
