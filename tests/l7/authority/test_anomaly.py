from __future__ import annotations

from typing import Any

from l7.authority.anomaly import AnomalyDetector

T0 = 1_790_000_000  # a fixed instant


def kinds(found: list[tuple[str, str]]) -> list[str]:
    return [k for k, _ in found]


def test_fast_approval_and_reports_to() -> None:
    det = AnomalyDetector(lambda: {"reports_to": {"alice": "bob"}})
    assert kinds(det.approval("bob", "alice", T0, T0 + 5)) == [
        "approval_too_fast",
        "approver_manages_requester",
    ]
    assert det.approval("carol", "alice", T0, T0 + 600) == []


def test_burst_by_one_approver_in_a_window() -> None:
    det = AnomalyDetector(lambda: {"burst": {"max": 2, "window_s": 60}})
    found = [kinds(det.approval("bob", "x", T0, T0 + 100 + i)) for i in range(3)]
    assert found == [[], [], ["approval_burst"]]
    assert det.approval("bob", "x", T0, T0 + 1000) == []  # the window has passed


def test_outside_hours_including_windows_that_wrap_midnight() -> None:
    cfg: dict[str, Any] = {"hours_utc": [8, 18], "min_seconds_after_request": 0}
    det = AnomalyDetector(lambda: cfg)
    noon = T0 - T0 % 86400 + 12 * 3600
    night = noon + 12 * 3600
    assert det.approval("b", "x", 0, noon) == []
    assert kinds(det.approval("b", "x", 0, night)) == ["approval_outside_hours"]
    cfg["hours_utc"] = [22, 6]
    assert det.approval("b", "x", 0, night) == []


def test_repeated_bad_signatures_reach_the_threshold_once_in_a_window() -> None:
    det = AnomalyDetector(lambda: {"bad_signatures": {"max": 3, "window_s": 60}})
    found = [kinds(det.bad_signature("mallory", T0 + i)) for i in range(3)]
    assert found == [[], [], ["repeated_bad_signatures"]]
    assert det.bad_signature("mallory", T0 + 500) == []


def test_policy_decides_what_blocks() -> None:
    assert AnomalyDetector(lambda: {"block": ["approval_burst"]}).blocking() == {"approval_burst"}
    assert AnomalyDetector(lambda: {"block": "oops"}).blocking() == frozenset()


def test_an_approver_with_repeated_bad_signatures_is_flagged_on_its_next_approval() -> None:
    det = AnomalyDetector(
        lambda: {"bad_signatures": {"max": 2, "window_s": 60}, "min_seconds_after_request": 0}
    )
    det.bad_signature("mallory", T0)
    det.bad_signature("mallory", T0 + 1)
    assert kinds(det.approval("mallory", "x", 0, T0 + 2)) == ["repeated_bad_signatures"]
    assert det.approval("mallory", "x", 0, T0 + 100) == []  # outside the window
