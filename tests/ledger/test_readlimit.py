"""The budget of costly reads (ledger._readlimit): per caller, per minute, service-wide."""

from __future__ import annotations

import pytest

from ledger._readlimit import ReadBudget
from ledger.errors import ReadLimited


def test_a_caller_gets_its_per_minute_budget_and_no_more() -> None:
    now = [0.0]
    budget = ReadBudget(per_minute=2, clock=lambda: now[0])
    for _ in range(2):
        with budget.hold("auditor-1", "Verify"):
            pass
    with (
        pytest.raises(ReadLimited, match="at most 2 a minute per caller"),
        budget.hold("auditor-1", "Verify"),
    ):
        pass
    with budget.hold("auditor-2", "Verify"):  # another caller has its own bucket
        pass
    now[0] = 30.0  # half a minute refills one
    with budget.hold("auditor-1", "Verify"):
        pass


def test_an_engine_monitor_is_paced_by_its_interval_but_never_runs_twice_at_once() -> None:
    budget = ReadBudget(per_minute=1, total=1, clock=lambda: 0.0)
    for _ in range(5):
        with budget.hold("engine", "Verify", per_minute=False):
            pass
    with budget.hold("engine", "Verify", per_minute=False):
        with (
            pytest.raises(ReadLimited, match="at a time per caller"),
            budget.hold("engine", "Verify", per_minute=False),
        ):
            pass
        with (
            pytest.raises(ReadLimited, match="service runs at most 1 at once"),
            budget.hold("auditor-1", "Verify"),
        ):
            pass
