"""The ``l7`` CLI as a user runs it: real OPA, real SQLite ledger file, real processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from l7.client import GovernanceClient
from l7.stack import Stack, StackConfig
from tests.conftest import EXAMPLES, REPO, request
from tests.ledger.conftest import restore_sqlite_triggers

pytestmark = pytest.mark.integration


def l7(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def filled_ledger(tmp_path: Path) -> tuple[str, Path, list[str]]:
    """A real ledger file with three decisions recorded through the full stack."""
    db = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{db}"
    ids = []
    cfg = StackConfig(ledger_url=url, work_dir=tmp_path / "w")
    with Stack(cfg) as stack, GovernanceClient(stack.target) as c:
        for name in ("read-dev.json", "deploy-prod.json", "unknown-class.json"):
            ids.append(c.decide(json.loads((EXAMPLES / name).read_text()))["decision_id"])
    return url, db, ids


def test_decide_embedded_reads_stdin_and_prints_the_decision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    r = l7("decide", "--embedded", "--ledger", url, "-", stdin=json.dumps(request()))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "ALLOW"
    show = l7("decision", "show", out["decision_id"], "--ledger", url)
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["outcome"] == "ALLOW" and shown["status"] == "authorized"
    assert shown["events"][0]["type"] == "decision.created"


def test_decide_with_bad_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "req.json"
    bad.write_text("{not json")
    r = l7("decide", "--embedded", str(bad))
    assert r.returncode == 1
    assert str(bad) in r.stderr and "not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr


def test_decide_against_a_running_server_reports_errors_as_json(tmp_path: Path) -> None:
    with Stack(
        StackConfig(ledger_url=f"sqlite:///{tmp_path / 'l.sqlite'}", work_dir=tmp_path)
    ) as s:
        req = request()
        del req["context"]["actor"]["id"]
        r = l7("decide", "--target", s.target, "-", stdin=json.dumps(req))
    assert r.returncode == 1
    err = json.loads(r.stdout)["error"]
    assert err == {
        "code": "INVALID_ARGUMENT",
        "reason": "invalid_request",
        "message": "context.actor.id: is required and must not be empty",
    }


def test_verify_passes_on_an_untouched_ledger(filled_ledger: tuple[str, Path, list[str]]) -> None:
    url, db, _ = filled_ledger
    r = l7("ledger", "verify", "--ledger", url, "--work-dir", str(db.parent / "w"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK: ")
    assert "every authority event is signed by its tier" in r.stdout
    assert "verifying ledger" in r.stderr  # progress is shown


def _attacker(db: Path) -> sqlite3.Connection:
    """Someone with write access to the file: drops the append-only triggers first."""
    con = sqlite3.connect(db, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    return con


def _rows(con: sqlite3.Connection, decision_id: str) -> list[tuple[int, int, str]]:
    return con.execute(
        "SELECT global_seq, sequence, body FROM events WHERE decision_id=? ORDER BY sequence",
        (decision_id,),
    ).fetchall()


def _edit_payload(con: sqlite3.Connection, did: str) -> set[int]:
    g, seq, body = _rows(con, did)[2]
    con.execute("UPDATE events SET body=? WHERE global_seq=?", (body.replace("pass", "PASS"), g))
    return {seq}


def _delete_event(con: sqlite3.Connection, did: str) -> set[int]:
    g, seq, _ = _rows(con, did)[3]
    con.execute("DELETE FROM events WHERE global_seq=?", (g,))
    return {seq, seq + 1}  # the hole itself, or the event right after it


def _swap_events(con: sqlite3.Connection, did: str) -> set[int]:
    rows = _rows(con, did)
    (g1, s1, _), (g2, s2, _) = rows[2], rows[3]
    con.execute("UPDATE events SET sequence=-1 WHERE global_seq=?", (g1,))
    con.execute("UPDATE events SET sequence=? WHERE global_seq=?", (s1, g2))
    con.execute("UPDATE events SET sequence=? WHERE global_seq=?", (s2, g1))
    return {s1, s2}


def _insert_forged(con: sqlite3.Connection, did: str) -> set[int]:
    """Insert a forged event after sequence 2 with a correctly recomputed hash."""
    import hashlib

    cols = [r[1] for r in con.execute("PRAGMA table_info(events)").fetchall()]
    rows = con.execute(
        "SELECT * FROM events WHERE decision_id=? ORDER BY sequence", (did,)
    ).fetchall()
    src = dict(zip(cols, rows[1], strict=True))
    # Make room: shift later sequences up by one (highest first to keep UNIQUE happy).
    for r in reversed(rows[2:]):
        rec = dict(zip(cols, r, strict=True))
        con.execute(
            "UPDATE events SET sequence=? WHERE global_seq=?",
            (rec["sequence"] + 1, rec["global_seq"]),
        )
    body = json.loads(src["body"])
    body["event_id"] = "forged-0001"
    body["payload"] = {"gate": "forged", "result": "pass"}
    body_bytes = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    forged = dict(src)
    forged.update(
        event_id="forged-0001",
        sequence=src["sequence"] + 1,
        prev_hash=src["hash"],
        body=body_bytes.decode(),
        hash=hashlib.sha256(src["hash"].encode() + body_bytes).hexdigest(),
        global_seq=con.execute("SELECT max(global_seq)+1 FROM events").fetchone()[0],
    )
    con.execute(
        f"INSERT INTO events ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
        [forged[c] for c in cols],
    )
    return {src["sequence"] + 1, src["sequence"] + 2}


@pytest.mark.parametrize(
    "tamper",
    [_edit_payload, _delete_event, _swap_events, _insert_forged],
    ids=["edit-payload", "delete-event", "swap-events", "insert-forged"],
)
def test_verify_fails_naming_the_tampered_event(
    filled_ledger: tuple[str, Path, list[str]],
    tamper: Callable[[sqlite3.Connection, str], set[int]],
) -> None:
    url, db, ids = filled_ledger
    victim = ids[1]
    con = _attacker(db)
    seqs = tamper(con, victim)
    restore_sqlite_triggers(con)  # a careful insider leaves the walls as it found them
    con.close()
    r = l7("ledger", "verify", "--ledger", url)
    assert r.returncode == 1, r.stdout
    assert "FAILED" in r.stderr
    assert f"decision {victim}" in r.stderr
    assert any(f"sequence {s} " in r.stderr for s in seqs), (seqs, r.stderr)
    assert "expected" in r.stderr and "found" in r.stderr


def test_verify_refuses_a_ledger_whose_trigger_was_dropped(
    filled_ledger: tuple[str, Path, list[str]],
) -> None:
    url, db, _ids = filled_ledger
    _attacker(db).close()  # walls down and left down
    r = l7("ledger", "verify", "--ledger", url)
    assert r.returncode != 0, r.stdout
    assert "refuses to serve: append-only trigger events_refuse_update on events is missing" in (
        r.stderr
    )


def test_bundle_verify_passes_for_committed_locks() -> None:
    r = l7("bundle", "verify")
    assert r.returncode == 0, r.stderr
    assert "local: lock matches" in r.stdout


def test_demo_walks_the_scenario_and_exits_zero() -> None:
    r = l7("demo", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for text in (
        "outcome  : ALLOW",
        "outcome  : DENY",
        "outcome  : QUEUE",
        "policy_store_degraded",
        "a dev grant presented for production -> refused: environment_mismatch",
        "refused: authorization_expired",
        "the decision is now expired (authorization_expired)",
        "ledger verified",
        "Demo complete.",
    ):
        assert text in r.stdout
