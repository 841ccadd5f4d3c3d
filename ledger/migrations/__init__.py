"""Alembic migrations of the ledger schema (run by ``ledger.schema``; no alembic.ini needed)."""
