"""Fixtures for the ledger tests: real SQLite files, a fixed clock, an attacker."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import EventType, NewEvent, SqlLedger

FIXED_AT = datetime(2026, 11, 25, 20, 44, 12, 123456, tzinfo=UTC)


def ev(
    decision_id: str,
    i: int = 0,
    *,
    key: str | None = None,
    kind: EventType = EventType.POLICY_GATE,
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    return NewEvent(
        decision_id,
        kind,
        "alice",
        "rev-1",
        payload if payload is not None else {"gate": f"g{i}", "result": "pass"},
        key,
    )


def attacker(db: Path) -> sqlite3.Connection:
    """Someone with write access to the file: drops the append-only triggers first."""
    con = sqlite3.connect(db, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    return con


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def led(db: Path) -> Iterator[SqlLedger]:
    ledger = SqlLedger(f"sqlite:///{db}", clock=lambda: FIXED_AT)
    yield ledger
    ledger.close()
