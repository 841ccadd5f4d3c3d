"""On open the ledger checks its own walls: a dropped, disabled or changed append-only
trigger (or a runtime role with a privilege it must not have) makes it refuse to serve,
naming what changed. Both backends; on PostgreSQL the tamperer is the schema owner."""

from __future__ import annotations

import re

import pytest

from ledger import IntegrityViolation, SchemaTampered, SqlLedger, verify_file
from ledger._guards import PG_TRIGGERS, SQLITE_TRIGGERS
from ledger.pg_roles import DEFAULT_OWNER
from tests.ledger.conftest import Backend, ev, restore_triggers
from tests.ledger.postgres import APP_ROLE


def _as_owner(backend: Backend, *statements: str) -> None:
    """Statements as the schema owner (SQLite: whoever has the file; PostgreSQL: SET ROLE
    to the NOLOGIN owner that ``ledger.pg_roles`` made, as its administrator can; psycopg
    paramstyle, so %% for %)."""
    eng = backend.engine()
    try:
        with eng.connect() as conn:
            if backend.kind == "postgresql":
                conn.exec_driver_sql(f"SET ROLE {DEFAULT_OWNER}")
            for stmt in statements:
                conn.exec_driver_sql(stmt, () if backend.kind == "postgresql" else None)
    finally:
        eng.dispose()


def _restore(backend: Backend) -> None:
    eng = backend.engine()
    try:
        with eng.connect() as conn:
            restore_triggers(conn)
    finally:
        eng.dispose()


def _triggers(backend: Backend) -> list[tuple[str, str]]:
    src = SQLITE_TRIGGERS if backend.kind == "sqlite" else PG_TRIGGERS
    return [(name, table) for name, (table, _sql) in src.items()]


def test_a_fresh_ledger_opens_with_every_wall_as_migrated(backend: Backend) -> None:
    with SqlLedger(backend.url) as led:  # the app role on PostgreSQL
        led.append([ev("d1")])
    with SqlLedger(backend.admin_url) as led:  # the owner's side
        assert led.count() == 1


def test_dropping_a_trigger_as_the_owner_makes_the_next_open_refuse(backend: Backend) -> None:
    with SqlLedger(backend.url) as led:
        led.append([ev("d1")])
        for name, table in _triggers(backend):
            on = f" ON {table}" if backend.kind == "postgresql" else ""
            _as_owner(backend, f"DROP TRIGGER {name}{on}")
            for url in (backend.url, backend.admin_url):
                with pytest.raises(
                    SchemaTampered,
                    match=rf"refuses to serve: append-only trigger {name} on {table} is missing"
                    rf"\. .* restore it as the .*CREATE TRIGGER {name} ",
                ):
                    SqlLedger(url)
            with pytest.raises(SchemaTampered, match=rf"trigger {name} on {table} is missing"):
                verify_file(backend.url)  # the auditor's check refuses too
            _restore(backend)
        led.append([ev("d1", 1)])  # the ledger already open keeps serving its own appends
    with SqlLedger(backend.url) as again:  # walls back as migrated: serves again
        assert again.count() == 2


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("name", "table"), [(n, t) for n, (t, _d) in PG_TRIGGERS.items()])
def test_disabling_a_trigger_as_the_owner_makes_the_next_open_refuse(
    backend: Backend, name: str, table: str
) -> None:
    SqlLedger(backend.url).close()
    _as_owner(backend, f"ALTER TABLE {table} DISABLE TRIGGER {name}")
    fix = re.escape(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")
    with pytest.raises(
        SchemaTampered, match=rf"trigger {name} on {table} is disabled; it must fire ALWAYS.*{fix}"
    ):
        SqlLedger(backend.url)
    # ENABLE (not ALWAYS) would let a session_replication_role=replica session skip it
    _as_owner(backend, f"ALTER TABLE {table} ENABLE TRIGGER {name}")
    with pytest.raises(SchemaTampered, match=rf"trigger {name} on {table} is enabled ORIGIN"):
        SqlLedger(backend.url)
    _as_owner(backend, f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")
    SqlLedger(backend.url).close()


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_changed_refusal_function_or_an_added_trigger_is_refused(backend: Backend) -> None:
    SqlLedger(backend.url).close()
    _as_owner(
        backend,
        "CREATE OR REPLACE FUNCTION ledger_events_refuse_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    )
    with pytest.raises(
        SchemaTampered, match=r"function ledger_events_refuse_change\(\) was changed"
    ):
        SqlLedger(backend.url)
    _as_owner(
        backend,
        "CREATE OR REPLACE FUNCTION ledger_events_refuse_change() RETURNS trigger\n"
        "LANGUAGE plpgsql AS $$\nBEGIN\n    RAISE EXCEPTION 'ledger events are append-only: %% "
        "refused', TG_OP USING ERRCODE = 'insufficient_privilege';\nEND\n$$",
    )
    SqlLedger(backend.url).close()
    _as_owner(
        backend,
        "CREATE FUNCTION nop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "CREATE TRIGGER zz_rewrite BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION nop()",
    )
    with pytest.raises(SchemaTampered, match=r"unexpected trigger zz_rewrite on events"):
        SqlLedger(backend.url)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_added_sqlite_trigger_is_refused(backend: Backend) -> None:
    SqlLedger(backend.url).close()
    _as_owner(
        backend,
        "CREATE TRIGGER zz_rewrite AFTER INSERT ON events BEGIN SELECT 1; END",
    )
    with pytest.raises(SchemaTampered, match=r"unexpected trigger zz_rewrite on events"):
        SqlLedger(backend.url)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_privilege_granted_to_the_app_role_makes_its_next_open_refuse(backend: Backend) -> None:
    SqlLedger(backend.url).close()
    for grant, named in (
        ("GRANT UPDATE ON events TO {r}", "has UPDATE on table events"),
        ("GRANT DELETE ON checkpoints TO PUBLIC", "has DELETE on table checkpoints"),
        ("GRANT UPDATE ON l7_rate_buckets TO {r}", "has UPDATE on table l7_rate_buckets"),
        ("GRANT CREATE ON SCHEMA public TO {r}", "has CREATE on schema public"),
    ):
        backend.sql(grant.format(r=APP_ROLE))
        with pytest.raises(SchemaTampered, match=rf"role 'l7_app' \(the app role\) {named}, which"):
            SqlLedger(backend.url)
        backend.sql(grant.format(r=APP_ROLE).replace("GRANT", "REVOKE").replace(" TO ", " FROM "))
    SqlLedger(backend.url).close()


def test_disabled_then_re_enabled_is_not_seen_at_open(backend: Backend) -> None:
    """The limit of this check, on the record: a wall taken down and put back between two
    opens leaves nothing in the catalog. The chain (and, for a recomputed chain, signed
    checkpoints and the witness) is what catches the rewrite."""
    with SqlLedger(backend.url) as led:
        led.append([ev("d1"), ev("d1", 1)])
    with backend.attacker() as con:  # walls down, edit, walls back up
        con.execute("UPDATE events SET body = replace(body, 'pass', 'fail') WHERE global_seq=1")
    SqlLedger(backend.url).close()  # opens: nothing to see in the triggers
    with pytest.raises(IntegrityViolation, match=r"\(hash_mismatch\) at decision d1 sequence 1"):
        verify_file(backend.url)
