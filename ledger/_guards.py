"""The database's own walls, checked on every open: append-only triggers and role privileges.

The migrations install triggers that refuse UPDATE, DELETE (and on PostgreSQL TRUNCATE)
of ``events``, ``checkpoints``, ``checkpoint_notes`` and ``cosignatures``; on PostgreSQL,
``ledger.pg_roles`` gives the app and auditor roles exactly the privileges below.
Whoever owns the schema can take a wall down (``DROP TRIGGER``, ``ALTER TABLE ...
DISABLE TRIGGER``, ``GRANT UPDATE``),
rewrite history and leave it down; ``check_guards`` makes the next open of the ledger
refuse to serve (``SchemaTampered``), naming the trigger or privilege.

What it cannot see: a wall taken down and put back exactly between two opens leaves no
trace in the catalog. That case is what signed, witnessed checkpoints catch (a rewritten
event no longer matches the tree head a witness cosigned), not this check.

Checked (``check_guards(conn)``, any role, read-only):

1. SQLite: the triggers on ``events`` and ``checkpoints`` are exactly ``SQLITE_TRIGGERS``
   (names and SQL, whitespace aside): none missing, none changed, none added.
2. PostgreSQL: the triggers on those tables are exactly ``PG_TRIGGERS``
   (``pg_get_triggerdef``), each enabled ALWAYS (``tgenabled = 'A'``, revision 0004);
   their functions and the SECURITY DEFINER functions of revision 0004 have the
   migrated source (sha256 of ``prosrc``), SECURITY DEFINER flag and settings, and the
   definer functions belong to the owner of ``events``.
3. PostgreSQL, unless the session is the owner (a member of the role owning ``events``)
   or a superuser: its role has exactly ``APP`` (if it may INSERT into ``events``) or
   ``AUDITOR`` privileges, and none of SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, text

from ledger.errors import SchemaTampered

__all__ = [
    "APP",
    "AUDITOR",
    "PG_FUNCTIONS",
    "PG_TRIGGERS",
    "SQLITE_TRIGGERS",
    "TABLE_PRIVILEGES",
    "PgFunction",
    "RolePrivileges",
    "check_guards",
    "role_problems",
]

_GUARDED = ("events", "checkpoints")

SQLITE_TRIGGERS: Mapping[str, tuple[str, str]] = {
    f"{t}_refuse_{op.lower()}": (
        t,
        f"CREATE TRIGGER {t}_refuse_{op.lower()} BEFORE {op} ON {t}\n"
        f"BEGIN SELECT RAISE(ABORT, 'ledger {t} are append-only: {op} refused'); END",
    )
    for t in _GUARDED
    for op in ("UPDATE", "DELETE")
}
"""name -> (table, CREATE TRIGGER statement) as revisions 0001 and 0002 made them."""

PG_TRIGGERS: Mapping[str, tuple[str, str]] = {
    f"{t}_refuse_{what}": (
        t,
        f"CREATE TRIGGER {t}_refuse_{what} BEFORE {when} ON public.{t} FOR EACH {each} "
        f"EXECUTE FUNCTION ledger_{t}_refuse_change()",
    )
    for t in _GUARDED
    for what, when, each in (
        ("update_delete", "DELETE OR UPDATE", "ROW"),
        ("truncate", "TRUNCATE", "STATEMENT"),
    )
}
"""name -> (table, ``pg_get_triggerdef``) as revisions 0001, 0002 and 0004 made them."""


@dataclass(frozen=True)
class PgFunction:
    """A function as migrated: identity arguments, sha256 of its source, definer, settings."""

    args: str
    source_sha256: str
    security_definer: bool
    config: tuple[str, ...] = ()


PG_FUNCTIONS: Mapping[str, PgFunction] = {
    "ledger_events_refuse_change": PgFunction(
        "", "980d358ba4793a0be130ee2db3bc1b25e2267e953f1e7ae6105c0a842a39e0b3", False
    ),
    "ledger_checkpoints_refuse_change": PgFunction(
        "", "9bfa004edc3e6c13af0a637d17c51e8bf387d6c35005dca62553656fccffb6f4", False
    ),
    "ledger_checkpoint_notes_refuse_change": PgFunction(
        "", "4c8e91b9e2bed26e26090c0aca77dca98f6d6b553f55a38e82b21d734aae1446", False
    ),
    "ledger_cosignatures_refuse_change": PgFunction(
        "", "1ecafce8f514d0438a6684c2237459c2a5fa91c10e6711cb6e1cdf0e8d29d3e9", False
    ),
    "ledger_write_lock": PgFunction(
        "wait_ms integer",
        "e3035d3201cb6d37b7b9c1423343b6f76e064cd196270c5e4495c37b21906211",
        True,
        ("search_path=pg_catalog, pg_temp", "lock_timeout=0"),
    ),
    "l7_rate_take": PgFunction(
        "p_bucket text, p_key text, p_rate double precision, p_burst double precision",
        "3972070430ae4d13bf04cbb6158a76a1d7e092ca785904f75981ff9cedd695df",
        True,
        ("search_path=pg_catalog, pg_temp",),
    ),
}
"""name -> the function as migrated (0001, 0002, 0003, 0004)."""

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@dataclass(frozen=True)
class RolePrivileges:
    """Exactly what a runtime role holds: per table, and EXECUTE on which functions."""

    kind: str
    tables: Mapping[str, frozenset[str]]
    execute: frozenset[str]


APP = RolePrivileges(
    "app",
    {
        "events": frozenset({"SELECT", "INSERT"}),
        "checkpoints": frozenset({"SELECT", "INSERT"}),
        "checkpoint_notes": frozenset({"SELECT", "INSERT"}),
        "cosignatures": frozenset({"SELECT", "INSERT"}),
        "alembic_version": frozenset({"SELECT"}),
        "ledger_write_lock": frozenset(),
        "l7_rate_buckets": frozenset(),
    },
    frozenset({"ledger_write_lock", "l7_rate_take"}),
)
"""The application role (engine, gateway, ledger service): appends, reads, takes the
write lock and rate-limit tokens through the owner's functions; changes nothing."""

AUDITOR = RolePrivileges(
    "auditor",
    {
        "events": frozenset({"SELECT"}),
        "checkpoints": frozenset({"SELECT"}),
        "checkpoint_notes": frozenset({"SELECT"}),
        "cosignatures": frozenset({"SELECT"}),
        "alembic_version": frozenset({"SELECT"}),
        "ledger_write_lock": frozenset(),
        "l7_rate_buckets": frozenset(),
    },
    frozenset(),
)
"""The auditor role: reads the ledger, nothing else."""

_WS = re.compile(r"\s+")


def _norm(sql: str) -> str:
    return _WS.sub(" ", sql).strip()


def _refuse(where: str, problem: str, fix: str) -> SchemaTampered:
    return SchemaTampered(
        f"ledger {where} refuses to serve: {problem}. Someone with the schema owner's "
        "rights changed the database's append-only walls, and history may have been "
        f"rewritten meanwhile - run `l7 ledger verify` against signed checkpoints and the "
        f"witness, then {fix}"
    )


def check_guards(conn: Connection, where: str) -> None:
    """Raise SchemaTampered unless triggers (and on PostgreSQL privileges) are as migrated."""
    if conn.dialect.name == "sqlite":
        _check_sqlite(conn, where)
    else:
        _check_pg_triggers(conn, where)
        _check_pg_functions(conn, where)
        _check_pg_session_role(conn, where)


def _check_sqlite(conn: Connection, where: str) -> None:
    rows = conn.exec_driver_sql(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"
    ).all()
    found = {str(n): (str(t), str(s or "")) for n, t, s in rows if str(t) in _GUARDED}
    for name, (table, sql) in SQLITE_TRIGGERS.items():
        got = found.get(name)
        restore = f"restore it as the file's owner: {sql}"
        if got is None:
            raise _refuse(where, f"append-only trigger {name} on {table} is missing", restore)
        if got[0] != table or _norm(got[1]) != _norm(sql):
            raise _refuse(
                where,
                f"append-only trigger {name} on {table} was changed (found: {got[1]!r})",
                f"drop it and {restore}",
            )
    for name, (table, sql) in sorted(found.items()):
        if name not in SQLITE_TRIGGERS:
            raise _refuse(
                where,
                f"unexpected trigger {name} on {table} ({sql!r}); the ledger has only "
                f"{sorted(SQLITE_TRIGGERS)}",
                f'drop it: DROP TRIGGER "{name}"',
            )


def _check_pg_triggers(conn: Connection, where: str) -> None:
    rows = conn.execute(
        text(
            "SELECT c.relname, t.tgname, t.tgenabled, pg_get_triggerdef(t.oid) "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname IN ('events', 'checkpoints') "
            "AND NOT t.tgisinternal"
        )
    ).all()
    found = {str(name): (str(table), str(enabled), str(d)) for table, name, enabled, d in rows}
    for name, (table, ddl) in PG_TRIGGERS.items():
        got = found.get(name)
        restore = (
            f"restore it as the owner: {ddl}; ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}"
        )
        if got is None:
            raise _refuse(where, f"append-only trigger {name} on {table} is missing", restore)
        if got[0] != table or got[2] != ddl:
            raise _refuse(
                where,
                f"append-only trigger {name} on {table} was changed (found: {got[2]})",
                f"drop it and {restore}",
            )
        if got[1] != "A":
            state = {"D": "disabled", "O": "enabled ORIGIN only", "R": "enabled REPLICA only"}
            raise _refuse(
                where,
                f"append-only trigger {name} on {table} is "
                f"{state.get(got[1], repr(got[1]))}; it must fire ALWAYS",
                f"re-enable it as the owner: ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}",
            )
    for name, (table, _e, ddl) in sorted(found.items()):
        if name not in PG_TRIGGERS:
            raise _refuse(
                where,
                f"unexpected trigger {name} on {table} ({ddl}); the ledger has only "
                f"{sorted(PG_TRIGGERS)}",
                f"drop it as the owner: DROP TRIGGER {name} ON {table}",
            )


def _check_pg_functions(conn: Connection, where: str) -> None:
    rows = conn.execute(
        text(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc, "
            "p.prosecdef, coalesce(p.proconfig, '{}'), "
            "p.proowner = (SELECT relowner FROM pg_class WHERE oid = 'public.events'::regclass) "
            "FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace "
            "AND p.proname = ANY(:names)"
        ),
        {"names": list(PG_FUNCTIONS)},
    ).all()
    found: dict[str, list[tuple[str, str, bool, tuple[str, ...], bool]]] = {}
    for name, args, src, secdef, config, owned in rows:
        digest = hashlib.sha256(str(src).encode()).hexdigest()
        found.setdefault(str(name), []).append(
            (str(args), digest, bool(secdef), tuple(config), bool(owned))
        )
    for name, want in PG_FUNCTIONS.items():
        fix = "re-create it as the owner from the ledger's migrations (ledger/migrations)"
        got = found.get(name, [])
        if not got:
            raise _refuse(where, f"function {name}({want.args}) is missing", fix)
        if len(got) != 1:
            raise _refuse(where, f"function {name} has {len(got)} overloads; expected one", fix)
        args, digest, secdef, config, owned = got[0]
        expected = (want.args, want.source_sha256, want.security_definer, want.config)
        if (args, digest, secdef, config) != expected:
            raise _refuse(
                where,
                f"function {name}({args}) was changed (source sha256 {digest}, security "
                f"definer {secdef}, settings {list(config)}; migrated: {want.source_sha256}, "
                f"{want.security_definer}, {list(want.config)})",
                fix,
            )
        if want.security_definer and not owned:
            raise _refuse(
                where,
                f"SECURITY DEFINER function {name} does not belong to the owner of events",
                f"give it back: ALTER FUNCTION {name}({args}) OWNER TO <owner of events>",
            )


def _check_pg_session_role(conn: Connection, where: str) -> None:
    role, owner_like = conn.execute(
        text(
            "SELECT current_user, r.rolsuper OR pg_has_role(current_user, "
            "(SELECT relowner FROM pg_class WHERE oid = 'public.events'::regclass), 'USAGE') "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
    ).one()
    if owner_like:
        return  # the owner (migrations, tests): its own walls are what the checks above cover
    inserts = conn.execute(
        text("SELECT has_table_privilege(current_user, 'public.events', 'INSERT')")
    ).scalar_one()
    expected = APP if inserts else AUDITOR
    problems = role_problems(conn, str(role), expected)
    if problems:
        raise _refuse(
            where,
            f"role {role!r} (the {expected.kind} role) " + "; ".join(problems),
            "put the role back as provisioned: python -m ledger.pg_roles ADMIN_URL ... "
            "(it revokes the rest), and find who granted it",
        )


def role_problems(conn: Connection, role: str, expected: RolePrivileges) -> list[str]:
    """How ``role``'s privileges differ from ``expected`` (empty: exactly as migrated)."""
    problems: list[str] = []
    attrs = conn.execute(
        text(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = :r"
        ),
        {"r": role},
    ).one()
    for flag, on in zip(("SUPERUSER", "BYPASSRLS", "CREATEROLE", "CREATEDB"), attrs, strict=True):
        if on:
            problems.append(f"has {flag}, which the {expected.kind} role must not have")
    owner = conn.execute(
        text(
            "SELECT pg_has_role(:r, (SELECT relowner FROM pg_class "
            "WHERE oid = 'public.events'::regclass), 'USAGE')"
        ),
        {"r": role},
    ).scalar_one()
    if owner:
        problems.append("owns events or acts as its owner, which the runtime roles must not")
    rows = conn.execute(
        text(
            "SELECT t.name, p.priv, has_table_privilege(:r, 'public.' || t.name, p.priv) "
            "FROM unnest(CAST(:tables AS text[])) AS t(name) "
            "CROSS JOIN unnest(CAST(:privs AS text[])) AS p(priv) "
            "WHERE to_regclass('public.' || t.name) IS NOT NULL"
        ),
        {"r": role, "tables": list(expected.tables), "privs": list(TABLE_PRIVILEGES)},
    ).all()
    has: dict[str, set[str]] = {}
    for table, priv, held in rows:
        has.setdefault(str(table), set())
        if held:
            has[str(table)].add(str(priv))
    for table, want in expected.tables.items():
        if table not in has:
            continue  # e.g. l7_rate_buckets on a database migrated before revision 0004
        for extra in sorted(has[table] - want):
            problems.append(
                f"has {extra} on table {table}, which the {expected.kind} role must not"
            )
        for missing in sorted(want - has[table]):
            problems.append(f"lacks {missing} on table {table}")
    for fn in PG_FUNCTIONS:
        if not PG_FUNCTIONS[fn].security_definer:
            continue
        may = conn.execute(
            text(
                "SELECT bool_or(has_function_privilege(:r, p.oid, 'EXECUTE')) FROM pg_proc p "
                "WHERE p.pronamespace = 'public'::regnamespace AND p.proname = :f"
            ),
            {"r": role, "f": fn},
        ).scalar_one()
        if may and fn not in expected.execute:
            problems.append(f"may EXECUTE {fn}, which the {expected.kind} role must not")
        if not may and fn in expected.execute:
            problems.append(f"lacks EXECUTE on {fn}")
    create = conn.execute(
        text("SELECT has_schema_privilege(:r, 'public', 'CREATE')"), {"r": role}
    ).scalar_one()
    if create:
        problems.append(f"has CREATE on schema public, which the {expected.kind} role must not")
    return problems
