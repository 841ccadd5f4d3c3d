"""A throwaway PostgreSQL cluster for the ledger tests, and pytest fixtures around it.

``PostgresCluster`` runs ``initdb`` into a fresh temporary directory and
``pg_ctl start`` on 127.0.0.1 with a free port; the unix socket lives in the
same directory. PostgreSQL refuses to run as root, so when the tests run as
root every server command runs as an unprivileged OS user (``postgres`` if the
package created it, else ``nobody``) that owns the directory; otherwise the
current user runs it. Authentication: ``trust`` for the test superuser (on the
socket and on loopback), ``scram-sha-256`` for every other role, so the
least-privileged application role really logs in with its password.

The cluster is for tests only: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` are off (a crash loses the cluster, and that is fine).

Fixtures: ``pg_cluster`` (session), ``pg_url`` (a fresh, migrated database per
test, as the superuser who owns it) and ``pg_app_url`` (the same database
through the least-privileged role from ``ledger.pg_roles.provision``).
Missing binaries fail the test (``make postgres`` installs them); they never skip.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger import SqlLedger
from ledger.pg_roles import provision

__all__ = [
    "APP_PASSWORD",
    "APP_ROLE",
    "SUPERUSER",
    "PostgresCluster",
    "find_pg_bin",
    "pg_app_url",
    "pg_cluster",
    "pg_url",
]

SUPERUSER = "l7_admin"
APP_ROLE = "l7_app"
APP_PASSWORD = "app-secret-for-tests"
TEMPLATE_DB = "ledger_template"


def find_pg_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``$L7_PG_BIN`` wins; then the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu);
    then ``pg_config --bindir``; then PATH.
    """
    candidates: list[str] = []
    if os.environ.get("L7_PG_BIN"):
        candidates.append(os.environ["L7_PG_BIN"])
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    if shutil.which("initdb"):
        candidates.append(str(Path(str(shutil.which("initdb"))).parent))
    for c in candidates:
        d = Path(c)
        if all((d / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return d
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"{candidates or 'any known place'}; run `make postgres` (apt-get install postgresql) "
        "or set L7_PG_BIN to their directory"
    )


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and no unprivileged 'postgres' or 'nobody' user exists")


class PostgresCluster:
    """initdb + pg_ctl in a temporary directory; ``start()``, ``stop()``, ``remove()``."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin = bin_dir or find_pg_bin()
        self.user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="l7-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "server.log"
        self.port = 0
        self._db_names = itertools.count(1)
        self.sock.mkdir()
        if self.user is not None:
            for p in (self.dir, self.sock):
                os.chown(p, *self.user)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C",
                  "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
        (self.data / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        uid, gid = self.user if self.user is not None else (None, None)
        proc = subprocess.run(
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            cwd=self.dir,
            env={**os.environ, "LC_ALL": "C"},
            timeout=60,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}"
            )
        return proc

    def start(self) -> PostgresCluster:
        """Start on a free port (the same one again after ``stop()``); wait until ready."""
        for attempt in range(3):
            port = self.port or free_port()
            opts = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={self.sock} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                          "-o", opts, "start")  # fmt: skip
            except RuntimeError:
                if attempt == 2 or self.port:
                    raise
                continue
            self.port = port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server now (``-m fast``); the data directory stays."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if running and delete everything."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", *, user: str = SUPERUSER, password: str = "") -> str:
        """A SQLAlchemy URL (psycopg 3) over TCP on loopback."""
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, *, database: str = "postgres") -> None:
        """Run one statement as the superuser in autocommit (CREATE DATABASE and such)."""
        eng = create_engine(self.url(database), isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as conn:
                conn.execute(text(statement))
        finally:
            eng.dispose()

    def create_database(self, template: str = "template1") -> str:
        """A new empty (or copied from ``template``) database; returns its name."""
        name = f"ledger_{os.getpid()}_{next(self._db_names)}"
        self.sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name


def _wait_for_disconnects(cluster: PostgresCluster, database: str) -> None:
    """CREATE DATABASE ... TEMPLATE needs the template idle; pools may linger briefly."""
    deadline = time.monotonic() + 10
    eng = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            while True:
                n = conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": database},
                ).scalar_one()
                if n == 0 or time.monotonic() > deadline:
                    return
                time.sleep(0.02)
    finally:
        eng.dispose()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One PostgreSQL server for the session, with a migrated template database."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.sql(f'CREATE DATABASE "{TEMPLATE_DB}"')
        SqlLedger(cluster.url(TEMPLATE_DB), create=True).close()  # alembic upgrade head
        _wait_for_disconnects(cluster, TEMPLATE_DB)
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database migrated to head, as the superuser (owner of the events table)."""
    name = pg_cluster.create_database(template=TEMPLATE_DB)
    yield pg_cluster.url(name)
    pg_cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_app_url(pg_url: str) -> str:
    """The database of ``pg_url`` through the least-privileged application role."""
    app_url = provision(pg_url, APP_ROLE, APP_PASSWORD)
    assert make_url(app_url).username == APP_ROLE
    return app_url
