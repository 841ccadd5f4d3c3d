"""PolicyReadiness decisions from /v1/status documents (no OPA needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from l7.errors import PolicyStoreDegraded
from l7.policy.readiness import PolicyReadiness, parse_bundle_status

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
REV = "a" * 64


def _doc(**bundle: Any) -> dict[str, Any]:
    base = {
        "name": "l7",
        "active_revision": REV,
        "last_successful_activation": "2026-11-26T11:59:58.123456789Z",
        "last_successful_request": "2026-11-26T11:59:59.987654321Z",
    }
    base.update(bundle)
    return {"result": {"bundles": {"l7": base}}}


def _ready(max_age_s: float = 15.0) -> PolicyReadiness:
    return PolicyReadiness(
        "http://unused", bundle="l7", expected_revision=REV, max_age_s=max_age_s, wall=lambda: NOW
    )


def test_ready_when_pinned_revision_active_and_fresh() -> None:
    st = parse_bundle_status(_doc(), "l7")
    assert st.last_successful_request == NOW - timedelta(microseconds=12346)
    assert _ready().problem(st) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"code": "bundle_error", "message": "digest mismatch"}, "refused the bundle"),
        ({"active_revision": "b" * 64}, "is not the pinned"),
        ({"last_successful_activation": "0001-01-01T00:00:00Z"}, "not activated"),
        ({"last_successful_request": "2026-11-26T11:58:00Z"}, "has not verified its bundle"),
        ({"last_successful_request": None}, "no successful bundle download"),
    ],
)
def test_not_ready(change: dict[str, Any], why: str) -> None:
    problem = _ready().problem(parse_bundle_status(_doc(**change), "l7"))
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    "doc", [{}, {"result": {}}, {"result": {"bundles": {}}}, {"result": {"bundles": {"x": {}}}}]
)
def test_status_without_our_bundle_is_degraded(doc: dict[str, Any]) -> None:
    with pytest.raises(PolicyStoreDegraded, match="no bundle 'l7'"):
        parse_bundle_status(doc, "l7")


def test_unreachable_opa_is_degraded() -> None:
    r = PolicyReadiness("http://127.0.0.1:9", bundle="l7", expected_revision=REV)
    with pytest.raises(PolicyStoreDegraded, match="unreachable"):
        r.check()
