"""Least privilege on PostgreSQL: the application role that the ledger engine uses.

``provision(admin_url, app_role, password)`` (or ``python -m ledger.pg_roles``),
run as the admin who owns the ledger database:

1. migrates the schema to head (the admin owns ``events`` and its triggers);
2. creates ``app_role`` (or updates it): LOGIN, and NOSUPERUSER NOCREATEDB
   NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT; the password is sent
   SCRAM-hashed on the client (libpq ``PQencryptPasswordConn``), never in clear;
3. grants CONNECT on the database, USAGE on the schema, SELECT and INSERT on
   ``events``, ``checkpoints``, ``checkpoint_notes`` and ``cosignatures`` and SELECT on
   ``alembic_version`` (the revision check on open);
   revokes UPDATE, DELETE, TRUNCATE, REFERENCES and TRIGGER on both. No sequence
   is needed: the writer assigns ``global_seq`` itself, under an advisory lock
   that needs no privilege;
4. verifies with ``has_*_privilege`` (which counts inherited grants) that the
   role ends up with exactly that - otherwise raises LedgerUnavailable.

Returns the application URL (the admin URL with the role and password), which
is what the engine and gateway are configured with. The append-only triggers
stay as a second wall for the owner.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from ledger._dberrors import db_errors
from ledger.errors import LedgerUnavailable
from ledger.store import SqlLedger

__all__ = ["APP_TABLE_PRIVILEGES", "check_privileges", "main", "provision"]

APP_TABLE_PRIVILEGES = frozenset({"SELECT", "INSERT"})
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_TABLES = "events, checkpoints, checkpoint_notes, cosignatures"
"""The append-only tables the application role reads and inserts into."""
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCRAM = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def _scram(conn: Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` for ``role``, computed by libpq locally."""
    raw = conn.connection.driver_connection
    pgconn = getattr(raw, "pgconn", None)
    if pgconn is None:
        raise LedgerUnavailable("provisioning needs the psycopg 3 driver (postgresql+psycopg://)")
    verifier = pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    out = bytes(verifier).decode("ascii")
    if not _SCRAM.fullmatch(out):  # it is inlined into ALTER ROLE: accept only its exact shape
        raise LedgerUnavailable("libpq returned an unexpected password verifier; refusing it")
    return out


def provision(admin_url: str, app_role: str, password: str) -> str:
    """Create or update ``app_role`` with SELECT+INSERT only; return the app URL (see module)."""
    if not _ROLE_NAME.fullmatch(app_role):
        raise LedgerUnavailable(
            f"application role {app_role!r} must match {_ROLE_NAME.pattern} (a plain identifier)"
        )
    if not password:
        raise LedgerUnavailable("the application role needs a non-empty password")
    url = make_url(admin_url)
    if url.get_backend_name() != "postgresql":
        raise LedgerUnavailable(f"roles are for PostgreSQL ledgers, not {url.drivername!r}")
    if url.username == app_role:
        raise LedgerUnavailable(f"the application role {app_role!r} must not be the admin role")
    SqlLedger(admin_url, create=True).close()  # the admin migrates; the schema stays the admin's
    engine = create_engine(admin_url)
    try:
        with db_errors(admin_url), engine.connect() as conn, conn.begin():
            _grant(conn, app_role, _scram(conn, app_role, password))
        with db_errors(admin_url), engine.connect() as conn:
            check_privileges(conn, app_role)
    finally:
        engine.dispose()
    return url.set(username=app_role, password=password).render_as_string(hide_password=False)


def _grant(conn: Connection, role: str, verifier: str) -> None:
    me = conn.execute(text("SELECT current_user, current_database()")).one()
    if me[0] == role:
        raise LedgerUnavailable(f"the application role {role!r} must not be the admin role")
    db = str(me[1]).replace('"', '""')
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
    verb = "ALTER" if exists else "CREATE"
    for stmt in (
        f"{verb} ROLE {role} WITH {attrs} PASSWORD '{verifier}'",
        f'GRANT CONNECT ON DATABASE "{db}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"REVOKE ALL ON TABLE {_TABLES}, alembic_version FROM {role}",
        f"GRANT SELECT, INSERT ON TABLE {_TABLES} TO {role}",
        f"GRANT SELECT ON TABLE alembic_version TO {role}",
    ):
        conn.exec_driver_sql(stmt)  # DDL: no bind parameters, nothing parsed for them


def check_privileges(conn: Connection, role: str) -> None:
    """Raise LedgerUnavailable unless ``role`` has exactly SELECT+INSERT on ``events``."""
    row = conn.execute(
        text(
            "SELECT r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, "
            "(SELECT tableowner FROM pg_tables WHERE tablename = 'events' "
            "AND schemaname = 'public') = r.rolname "
            "FROM pg_roles r WHERE r.rolname = :r"
        ),
        {"r": role},
    ).one()
    if any(row):
        raise LedgerUnavailable(
            f"role {role!r} is a superuser, bypasses RLS, creates roles or databases, or owns "
            "'events'; the application role must be none of these"
        )
    has = {
        p
        for p in _TABLE_PRIVILEGES
        if conn.execute(
            text("SELECT has_table_privilege(:r, 'public.events', :p)"), {"r": role, "p": p}
        ).scalar_one()
    }
    if has != APP_TABLE_PRIVILEGES:
        raise LedgerUnavailable(
            f"role {role!r} has {sorted(has)} on 'events'; expected exactly "
            f"{sorted(APP_TABLE_PRIVILEGES)} - revoke the rest (maybe granted to a role it is "
            "a member of, or to PUBLIC)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ledger.pg_roles ADMIN_URL ROLE``; password from $L7_LEDGER_APP_PASSWORD."""
    ap = argparse.ArgumentParser(
        prog="python -m ledger.pg_roles",
        description="Create or update the ledger's least-privileged PostgreSQL role.",
    )
    ap.add_argument("admin_url", help="postgresql+psycopg://ADMIN@HOST:PORT/DB (the owner)")
    ap.add_argument("role", help="application role to create or update")
    ap.add_argument(
        "--password-env",
        default="L7_LEDGER_APP_PASSWORD",
        help="environment variable holding the role's password (never on the command line)",
    )
    args = ap.parse_args(argv)
    password = os.environ.get(args.password_env, "")
    try:
        app_url = provision(args.admin_url, args.role, password)
    except LedgerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(make_url(app_url).render_as_string(hide_password=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
