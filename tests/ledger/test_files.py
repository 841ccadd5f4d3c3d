"""Files as private as keys (issue 14 item 7): under the usual umask 022 the ledger's SQLite
file, its -wal/-shm and the dual-write sink are 0600 in 0700 directories; a server refuses
to start on a ledger file that group or others may read, naming it and the chmod to run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import LedgerUnavailable, SqlLedger
from ledger.files import open_private_append, private_dir
from tests.ledger.conftest import ev


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_ledger_database_wal_shm_and_sink_are_0600_in_0700_dirs(
    tmp_path: Path, umask_022: None
) -> None:
    db = tmp_path / "var" / "lib" / "layer7" / "ledger.sqlite"
    sink = tmp_path / "sink" / "dir" / "events.jsonl"
    with SqlLedger(f"sqlite:///{db}", dual_write=f"jsonl://{sink}") as led:
        led.append([ev("d1")])
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), sink]
        assert all(f.exists() for f in files)  # the WAL files exist while the ledger is open
        assert {str(f): _mode(f) for f in files} == {str(f): 0o600 for f in files}
    for d in (
        db.parent,
        db.parent.parent,
        db.parent.parent.parent,
        sink.parent,
        sink.parent.parent,
    ):
        assert _mode(d) == 0o700, d
    assert _mode(tmp_path) == 0o700  # pytest's; an existing directory is left alone


def test_logs_helpers_are_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    """What ``l7 serve`` uses for its logs directory and OPA's log (decision input)."""
    logs = tmp_path / "work" / "logs"
    private_dir(logs)
    with open_private_append(logs / "opa-local.log") as f:
        f.write(b"line\n")
    assert (_mode(logs.parent), _mode(logs), _mode(logs / "opa-local.log")) == (
        0o700,
        0o700,
        0o600,
    )


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_a_ledger_file_readable_by_others_is_refused_naming_it(
    tmp_path: Path, umask_022: None, suffix: str
) -> None:
    db = tmp_path / "ledger.sqlite"
    led = SqlLedger(f"sqlite:///{db}")
    led.append([ev("d1")])
    target = Path(f"{db}{suffix}")
    target.chmod(0o644)
    try:
        with pytest.raises(
            LedgerUnavailable,
            match=rf"ledger file {target} has mode 0644: group or others may read it .* "
            rf"run `chmod 600 {target}`",
        ):
            SqlLedger(f"sqlite:///{db}", create=False)
    finally:
        led.close()


def test_a_readable_dual_write_sink_is_refused(tmp_path: Path, umask_022: None) -> None:
    sink = tmp_path / "sink.jsonl"
    sink.write_bytes(b"")
    sink.chmod(0o640)
    with pytest.raises(LedgerUnavailable, match=rf"dual-write sink {sink} has mode 0640"):
        SqlLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", dual_write=f"jsonl://{sink}")


def test_the_ledger_server_refuses_to_start_on_a_world_readable_ledger(
    tmp_path: Path, umask_022: None
) -> None:
    db = tmp_path / "ledger.sqlite"
    SqlLedger(f"sqlite:///{db}").close()
    db.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "ledger.service", "--insecure-allow-all",
         "--ledger", f"sqlite:///{db}", "--addr", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"ledger file {db} has mode 0644" in proc.stderr
    assert f"chmod 600 {db}" in proc.stderr
    assert "Layer-7 ledger service on" not in proc.stdout  # never served
