"""PostgreSQL-only behaviour: least privilege, several writer processes, server restarts."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError

from ledger import LedgerUnavailable, SqlLedger
from ledger.pg_roles import check_privileges, main, provision
from tests.ledger.conftest import ev
from tests.ledger.postgres import APP_ROLE, TEMPLATE_DB, PostgresCluster

pytestmark = pytest.mark.integration


def _as(url: str, sql: str) -> None:
    eng = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        eng.dispose()


# -- least privilege -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE events SET actor='mallory' WHERE global_seq=1", "permission denied for table"),
        ("DELETE FROM events WHERE global_seq=1", "permission denied for table events"),
        ("TRUNCATE events", "permission denied for table events"),
        ("ALTER TABLE events DISABLE TRIGGER ALL", "must be owner of table events"),
        ("DROP TABLE events", "must be owner of table events"),
        ("CREATE TABLE evil (x int)", "permission denied for schema public"),
        ("DELETE FROM alembic_version", "permission denied for table alembic_version"),
    ],
)
def test_app_role_cannot_change_history(pg_app_url: str, sql: str, match: str) -> None:
    with SqlLedger(pg_app_url) as led:
        led.append([ev("d1")])
        with pytest.raises(ProgrammingError, match=match):
            _as(pg_app_url, sql)
        assert led.get_stream("d1")[0].actor == "alice"
        assert led.verify().events == 1


def test_owner_is_refused_truncate_by_the_statement_trigger(pg_url: str) -> None:
    with SqlLedger(pg_url) as led:
        led.append([ev("d1")])
        with pytest.raises(DBAPIError, match=r"ledger events are append-only: TRUNCATE refused"):
            _as(pg_url, "TRUNCATE events")
        assert led.count() == 1


def test_provision_is_idempotent_and_verifies_the_grants(pg_url: str) -> None:
    app_url = provision(pg_url, APP_ROLE, "first-password")
    assert provision(pg_url, APP_ROLE, "second-password") != app_url  # password rotated
    with pytest.raises(LedgerUnavailable, match=r"password authentication failed"):
        SqlLedger(app_url)  # the old password no longer logs in
    _as(pg_url, f"GRANT UPDATE ON events TO {APP_ROLE}")
    eng = create_engine(pg_url)
    try:
        with (
            eng.connect() as conn,
            pytest.raises(
                LedgerUnavailable,
                match=r"not the least-privileged app role: has UPDATE on table events, which",
            ),
        ):
            check_privileges(conn, APP_ROLE)
    finally:
        eng.dispose()
    provision(pg_url, APP_ROLE, "third-password")  # takes the stray grant back


def test_provision_refuses_bad_input(pg_url: str) -> None:
    with pytest.raises(LedgerUnavailable, match=r"must match"):
        provision(pg_url, 'x"; DROP TABLE events; --', "pw")
    with pytest.raises(LedgerUnavailable, match=r"must not be the admin role"):
        provision(pg_url, str(make_url(pg_url).username), "pw")
    with pytest.raises(LedgerUnavailable, match=r"non-empty password"):
        provision(pg_url, APP_ROLE, "")


def test_provision_cli_reads_the_password_from_the_environment(
    pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("L7_LEDGER_APP_PASSWORD", "from-env")
    assert main([pg_url, APP_ROLE]) == 0
    printed = capsys.readouterr().out.strip()
    app = make_url(pg_url).set(username=APP_ROLE, password="from-env")
    assert printed == app.render_as_string(hide_password=True)
    assert "from-env" not in printed
    with SqlLedger(app.render_as_string(hide_password=False)) as led:
        assert led.count() == 0


# -- several writer processes --------------------------------------------------------------

PROCESSES, EVENTS, BATCH, STREAMS = 4, 10_000, 25, 64


def _writer_process(url: str, p: int, start: Any, out: Any) -> None:
    """One OS process: its share of the events, in batches over streams shared with the others."""
    confs: list[tuple[str, str, int, int]] = []
    with SqlLedger(url, busy_timeout_s=60) as led:
        start.wait()
        per = EVENTS // PROCESSES
        for b in range(per // BATCH):
            # every process cycles through ALL streams, so streams interleave across processes
            batch = [ev(f"s{(b * BATCH + i + p) % STREAMS}", i) for i in range(BATCH)]
            confs += [
                (c.event_id, c.decision_id, c.sequence, c.global_seq) for c in led.append(batch)
            ]
    out.put((p, os.getpid(), confs))


def test_four_processes_append_10000_events_gap_free(pg_app_url: str) -> None:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer_process, args=(pg_app_url, p, start, out)) for p in range(4)
    ]
    for proc in procs:
        proc.start()
    t0 = time.monotonic()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    elapsed = time.monotonic() - t0
    assert len({pid for _, pid, _ in results}) == PROCESSES  # really four OS processes
    confs = [c for _, _, cs in results for c in cs]
    assert sorted(c[3] for c in confs) == list(range(1, EVENTS + 1))
    assert len({c[0] for c in confs}) == EVENTS
    for s in range(STREAMS):
        seqs = sorted(c[2] for c in confs if c[1] == f"s{s}")
        assert seqs == list(range(1, len(seqs) + 1))
    writers_per_stream = {
        s: {p for p, _, cs in results for c in cs if c[1] == f"s{s}"} for s in range(STREAMS)
    }
    assert all(len(ws) == PROCESSES for ws in writers_per_stream.values())
    with SqlLedger(pg_app_url) as led:
        report = led.verify()
        stored = {e.event_id: (e.decision_id, e.sequence, e.global_seq) for e in led.iter_events()}
    assert (report.events, report.streams, report.last_global_seq) == (EVENTS, STREAMS, EVENTS)
    assert stored == {c[0]: c[1:] for c in confs}  # every confirmation is what was stored
    print(f"\n{EVENTS} events from {PROCESSES} processes in {elapsed:.2f}s")


# -- server down ---------------------------------------------------------------------------


@pytest.fixture
def private_cluster() -> Any:
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.sql(f'CREATE DATABASE "{TEMPLATE_DB}"')
        yield cluster
    finally:
        cluster.remove()


def test_stopped_server_is_unavailable_then_recovers(private_cluster: PostgresCluster) -> None:
    url = private_cluster.url(TEMPLATE_DB)
    with SqlLedger(url, busy_timeout_s=1) as led:
        led.append([ev("d1", 0)])
        private_cluster.stop()
        t0 = time.monotonic()
        with pytest.raises(LedgerUnavailable, match=r"^cannot connect to ledger postgresql\+psy"):
            led.append([ev("d1", 1)])
        with pytest.raises(LedgerUnavailable, match=r"^cannot connect to ledger"):
            led.count()
        assert time.monotonic() - t0 < 5
        private_cluster.start()
        # the same ledger: pool_pre_ping replaces the dead connections
        (c,) = led.append([ev("d1", 1)])
        assert (c.sequence, c.global_seq) == (2, 2)
        assert led.verify().events == 2
    with pytest.raises(LedgerUnavailable, match=r"^cannot connect to ledger"):
        private_cluster.stop()
        SqlLedger(url)
    private_cluster.start()
    with SqlLedger(url) as again:
        assert again.append([ev("d1", 2)])[0].global_seq == 3
