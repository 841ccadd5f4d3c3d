"""Least privilege on PostgreSQL: the owner, app and auditor roles of a ledger database.

``provision(admin_url, app_role, password, owner_role=..., auditor_role=..., ...)`` (or
``python -m ledger.pg_roles``), run as the administrator of the ledger database
(a superuser, or a CREATEROLE role that owns the database):

1. creates (or updates) ``owner_role``: NOLOGIN, so it is never used at run time; it
   owns every ledger table, trigger and function. Tables and functions in ``public``
   that the administrator owns (a ledger migrated before roles existed) are handed to
   it, and it gets USAGE and CREATE on the schema;
2. migrates the schema to head AS the owner (the administrator's session with
   ``SET ROLE owner``), so every object a migration creates belongs to it;
3. creates (or updates) ``app_role`` and, if asked, ``auditor_role``: LOGIN, and
   NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT; passwords are
   sent SCRAM-hashed on the client (libpq ``PQencryptPasswordConn``), never in clear;
4. revokes everything on the ledger's tables and functions from both (and from
   PUBLIC), then grants exactly ``ledger._guards.APP`` to the app role (SELECT and
   INSERT on ``events`` and ``checkpoints``, SELECT on ``alembic_version``, EXECUTE on
   ``ledger_write_lock`` and ``l7_rate_take``; nothing on ``ledger_write_lock`` or
   ``l7_rate_buckets`` themselves) and exactly ``ledger._guards.AUDITOR`` to the
   auditor (SELECT on the three ledger tables); CONNECT and schema USAGE to both;
5. makes the owner a member of the app role, so the write-lock function (running as
   the owner) may terminate an app session that sits on the lock;
6. verifies with ``has_*_privilege`` (which counts inherited and PUBLIC grants) that
   each role ends up with exactly that - otherwise raises LedgerUnavailable.

What an app-role session can still do, and what stops it, is in docs/reliability.md
("The database's own walls"). Returns the application URL (the admin URL with the
app role and its password), which is what the engine and gateway are configured with.
Every runtime open re-checks the session role's privileges (``ledger._guards``).
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
from ledger._guards import APP, AUDITOR, PG_FUNCTIONS, RolePrivileges, role_problems
from ledger.errors import LedgerUnavailable
from ledger.store import SqlLedger

__all__ = [
    "APP_TABLE_PRIVILEGES",
    "DEFAULT_OWNER",
    "check_privileges",
    "main",
    "provision",
    "role_url",
]

DEFAULT_OWNER = "l7_owner"
APP_TABLE_PRIVILEGES = APP.tables["events"]
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SCRAM = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_LOGIN_ATTRS = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
_OWNER_ATTRS = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"


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


def role_url(admin_url: str, role: str, password: str) -> str:
    """``admin_url`` with another role and its password (rendered with the password)."""
    url = make_url(admin_url).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


def provision(
    admin_url: str,
    app_role: str,
    password: str,
    *,
    owner_role: str = DEFAULT_OWNER,
    auditor_role: str | None = None,
    auditor_password: str = "",
) -> str:
    """Create or update the owner, app and (optionally) auditor roles; return the app URL."""
    url = make_url(admin_url)
    if url.get_backend_name() != "postgresql":
        raise LedgerUnavailable(f"roles are for PostgreSQL ledgers, not {url.drivername!r}")
    roles = {"owner": owner_role, "application": app_role}
    if auditor_role is not None:
        roles["auditor"] = auditor_role
    for kind, name in roles.items():
        if not _ROLE_NAME.fullmatch(name):
            raise LedgerUnavailable(
                f"{kind} role {name!r} must match {_ROLE_NAME.pattern} (a plain identifier)"
            )
        if name == url.username:
            raise LedgerUnavailable(f"the {kind} role {name!r} must not be the admin role")
    if len(set(roles.values())) != len(roles):
        raise LedgerUnavailable(f"the roles must be distinct, got {roles}")
    if not password:
        raise LedgerUnavailable("the application role needs a non-empty password")
    if auditor_role is not None and not auditor_password:
        raise LedgerUnavailable("the auditor role needs a non-empty password")
    engine = create_engine(admin_url)
    try:
        with db_errors(admin_url), engine.connect() as conn, conn.begin():
            _owner(conn, owner_role)
        # Migrate as the owner: every object a revision creates is the owner's.
        as_owner = url.update_query_dict({"options": f"-c role={owner_role}"})
        SqlLedger(as_owner.render_as_string(hide_password=False), create=True).close()
        with db_errors(admin_url), engine.connect() as conn, conn.begin():
            _owner(conn, owner_role)  # anything the migration left with the admin
            _login_role(conn, app_role, password, APP)
            if auditor_role is not None:
                _login_role(conn, auditor_role, auditor_password, AUDITOR)
            conn.exec_driver_sql(f"GRANT {app_role} TO {owner_role}")
        with db_errors(admin_url), engine.connect() as conn:
            check_privileges(conn, app_role, APP)
            if auditor_role is not None:
                check_privileges(conn, auditor_role, AUDITOR)
    finally:
        engine.dispose()
    return role_url(admin_url, app_role, password)


def _owner(conn: Connection, owner: str) -> None:
    """Create or update the NOLOGIN owner; hand it the admin's ledger objects in public."""
    me, db, superuser = conn.execute(
        text(
            "SELECT current_user, current_database(), rolsuper FROM pg_roles "
            "WHERE rolname = current_user"
        )
    ).one()
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": owner}).first()
    conn.exec_driver_sql(f"{'ALTER' if exists else 'CREATE'} ROLE {owner} WITH {_OWNER_ATTRS}")
    if not superuser:
        conn.exec_driver_sql(f"GRANT {owner} TO {me}")  # so the admin may SET ROLE to it
    quoted_db = str(db).replace('"', '""')
    conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{quoted_db}" TO {owner}')
    conn.exec_driver_sql(f"GRANT USAGE, CREATE ON SCHEMA public TO {owner}")
    tables = conn.execute(
        text(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relkind IN ('r', 'p') AND c.relowner = (SELECT oid FROM pg_roles "
            "WHERE rolname = current_user)"
        )
    ).scalars()
    for table in tables:
        conn.exec_driver_sql(f'ALTER TABLE public."{_quoted(table)}" OWNER TO {owner}')
    functions = conn.execute(
        text(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY(:names) "
            "AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ),
        {"names": list(PG_FUNCTIONS)},
    ).all()
    for name, args in functions:
        conn.exec_driver_sql(f"ALTER FUNCTION public.{name}({args}) OWNER TO {owner}")


def _quoted(name: str) -> str:
    return name.replace('"', '""')


def _login_role(conn: Connection, role: str, password: str, grants: RolePrivileges) -> None:
    """Create or update a runtime role and give it exactly ``grants`` (see module, step 4)."""
    db = str(conn.execute(text("SELECT current_database()")).scalar_one())
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    verb = "ALTER" if exists else "CREATE"
    verifier = _scram(conn, role, password)
    # DDL: no bind parameters, nothing parsed for them; names match _ROLE_NAME.
    conn.exec_driver_sql(f"{verb} ROLE {role} WITH {_LOGIN_ATTRS} PASSWORD '{verifier}'")
    conn.exec_driver_sql(f'GRANT CONNECT ON DATABASE "{_quoted(db)}" TO {role}')
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {role}")
    conn.exec_driver_sql(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC")
    for table, privileges in grants.tables.items():
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": f"public.{table}"}).scalar():
            conn.exec_driver_sql(f"REVOKE ALL ON TABLE public.{table} FROM {role}, PUBLIC")
            if privileges:
                conn.exec_driver_sql(
                    f"GRANT {', '.join(sorted(privileges))} ON TABLE public.{table} TO {role}"
                )
    for name, fn in PG_FUNCTIONS.items():
        if not fn.security_definer:
            continue
        sig = f"public.{name}({fn.args})"
        conn.exec_driver_sql(f"REVOKE ALL ON FUNCTION {sig} FROM {role}, PUBLIC")
        if name in grants.execute:
            conn.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION {sig} TO {role}")
    # memberships the role may have picked up (NOINHERIT keeps them from counting, but
    # SET ROLE would still reach them): none but what provisioning made
    members = conn.execute(
        text(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = :r)"
        ),
        {"r": role},
    ).scalars()
    for granted in members:
        conn.exec_driver_sql(f'REVOKE "{_quoted(granted)}" FROM {role}')


def check_privileges(conn: Connection, role: str, expected: RolePrivileges = APP) -> None:
    """Raise LedgerUnavailable unless ``role`` holds exactly ``expected`` (see ``_guards``)."""
    problems = role_problems(conn, role, expected)
    if problems:
        raise LedgerUnavailable(
            f"role {role!r} is not the least-privileged {expected.kind} role: "
            + "; ".join(problems)
            + " - revoke the rest (maybe granted to a role it is a member of, or to PUBLIC)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ledger.pg_roles ADMIN_URL APP_ROLE [--owner R] [--auditor R]``."""
    ap = argparse.ArgumentParser(
        prog="python -m ledger.pg_roles",
        description="Create or update the ledger's owner, application and auditor roles.",
    )
    ap.add_argument("admin_url", help="postgresql+psycopg://ADMIN@HOST:PORT/DB")
    ap.add_argument("role", help="application role to create or update")
    ap.add_argument("--owner", default=DEFAULT_OWNER, help="NOLOGIN role owning the schema")
    ap.add_argument("--auditor", default=None, help="read-only auditor role (optional)")
    ap.add_argument(
        "--password-env",
        default="L7_LEDGER_APP_PASSWORD",
        help="environment variable holding the app role's password (never on the command line)",
    )
    ap.add_argument(
        "--auditor-password-env",
        default="L7_LEDGER_AUDITOR_PASSWORD",
        help="environment variable holding the auditor role's password",
    )
    args = ap.parse_args(argv)
    try:
        app_url = provision(
            args.admin_url,
            args.role,
            os.environ.get(args.password_env, ""),
            owner_role=args.owner,
            auditor_role=args.auditor,
            auditor_password=os.environ.get(args.auditor_password_env, ""),
        )
    except LedgerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(make_url(app_url).render_as_string(hide_password=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
