"""Schema revisions on both backends: create=True migrates, unknown revisions are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from ledger import LedgerUnavailable, SqlLedger, open_ledger, verify_file
from ledger.schema import BASELINE, head
from tests.ledger.conftest import BACKENDS, Backend, ev
from tests.ledger.postgres import PostgresCluster


@pytest.fixture(params=BACKENDS)
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A database with nothing in it, as its owner."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        yield Backend("sqlite", url, url)
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    name = cluster.create_database()
    yield Backend("postgresql", cluster.url(name), cluster.url(name))
    cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _revision(b: Backend) -> str:
    ((rev,),) = b.sql("SELECT version_num FROM alembic_version")
    return str(rev)


def test_create_migrates_an_empty_database_to_head(empty: Backend) -> None:
    with SqlLedger(empty.url) as led:
        assert led.schema_revision == head() == _revision(empty)
        led.append([ev("d1")])
    with pytest.raises(DBAPIError, match=r"append-only: DELETE refused"):
        empty.sql("DELETE FROM events")
    with open_ledger(empty.url, create=False) as again:  # at head: opens read-write
        assert again.append([ev("d1", 1)])[0].global_seq == 2


def test_without_create_an_empty_database_is_no_ledger(empty: Backend) -> None:
    if empty.kind == "sqlite":
        SqlLedger(empty.url).close()
        empty.sql("DROP TABLE events")
        empty.sql("DROP TABLE alembic_version")
    with pytest.raises(LedgerUnavailable, match=r"^no ledger \(table 'events'\) in "):
        open_ledger(empty.url, create=False)
    with pytest.raises(LedgerUnavailable, match=r"^no ledger \(table 'events'\)"):
        verify_file(empty.url)


def test_unknown_newer_revision_is_refused(empty: Backend) -> None:
    SqlLedger(empty.url).close()
    empty.sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for create in (True, False):
        with pytest.raises(
            LedgerUnavailable,
            match=rf"has schema revision '9999_from_the_future', which this build of layer7 "
            rf"does not know \(its newest is '{head()}'\); .* upgrade layer7",
        ):
            SqlLedger(empty.url, create=create)
    assert _revision(empty) == "9999_from_the_future"  # left as found


def test_unstamped_pre_migration_ledger_is_stamped_on_create(empty: Backend) -> None:
    """A ledger made by create_all before migrations existed: same tables, no alembic_version."""
    with SqlLedger(empty.url) as led:
        led.append([ev("d1")])
    empty.sql("DROP TABLE alembic_version")
    with pytest.raises(LedgerUnavailable, match=rf"revision {BASELINE} \(unstamped\); this build"):
        open_ledger(empty.url, create=False)
    with SqlLedger(empty.url) as led:
        assert led.schema_revision == head()
        assert led.append([ev("d1", 1)])[0].sequence == 2
        assert led.verify().events == 2
    assert _revision(empty) == head()


@pytest.mark.integration
def test_app_role_cannot_create_the_schema(pg_cluster: PostgresCluster) -> None:
    """Migrations run as the owner; the least-privileged role gets a clear refusal."""
    name = pg_cluster.create_database()
    try:
        pg_cluster.sql("DROP ROLE IF EXISTS l7_nobody")
        pg_cluster.sql("CREATE ROLE l7_nobody LOGIN PASSWORD 'pw'")
        url = pg_cluster.url(name, user="l7_nobody", password="pw")
        with pytest.raises(LedgerUnavailable, match=r"for lack of a privilege.*permission denied"):
            SqlLedger(url)
    finally:
        pg_cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        pg_cluster.sql("DROP ROLE IF EXISTS l7_nobody")
