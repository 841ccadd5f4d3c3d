"""The per-event-type ledger field allowlist."""

from __future__ import annotations

import random
from typing import Any

import pytest

from l7.errors import ConfigError, RequestInvalid
from l7.secrets import AllowlistMode, FieldAllowlist
from tests.l7.secrets import fakes

POLICY: dict[str, Any] = {
    "mode": "refuse",
    "event_types": {
        "decision.created": ["status", "request", "policy_version"],
        "execution.confirmed": ["result", "grant_id"],
    },
}


def drop_mode() -> FieldAllowlist:
    return FieldAllowlist.from_policy({**POLICY, "mode": "drop"})


def test_allowed_payload_passes_unchanged() -> None:
    allow = FieldAllowlist.from_policy(POLICY)
    assert allow.mode is AllowlistMode.REFUSE
    payload = {"status": "ALLOW", "request": {"nested": {"anything": 1}}}
    kept, dropped = allow.apply("decision.created", payload)
    assert kept == payload and kept is not payload
    assert dropped == ()


def test_refuse_mode_names_the_first_extra_key() -> None:
    allow = FieldAllowlist.from_policy(POLICY)
    with pytest.raises(
        RequestInvalid,
        match=r"^ledger\.decision\.created\.debug: is not on the ledger field allowlist "
        r"\(and 1 more\)$",
    ) as info:
        allow.apply("decision.created", {"status": "x", "zeta": 1, "debug": 2})
    assert info.value.field == "ledger.decision.created.debug"
    assert info.value.reason == "invalid_request"


def test_drop_mode_drops_and_reports() -> None:
    payload = {"status": "x", "zeta": 1, "debug": 2}
    kept, dropped = drop_mode().apply("decision.created", payload)
    assert kept == {"status": "x"}
    assert dropped == ("debug", "zeta")
    assert payload == {"status": "x", "zeta": 1, "debug": 2}


@pytest.mark.parametrize("mode", ["refuse", "drop"])
def test_unknown_event_type_is_refused_in_both_modes(mode: str) -> None:
    allow = FieldAllowlist.from_policy({**POLICY, "mode": mode})
    with pytest.raises(RequestInvalid, match=r"^ledger\.break_glass\.opened: has no field"):
        allow.apply("break_glass.opened", {})


def test_empty_allowlist_refuses_everything() -> None:
    allow = FieldAllowlist({})
    with pytest.raises(RequestInvalid, match="has no field allowlist"):
        allow.apply("decision.created", {"status": "x"})


def test_mode_defaults_to_refuse() -> None:
    allow = FieldAllowlist.from_policy({"event_types": POLICY["event_types"]})
    assert allow.mode is AllowlistMode.REFUSE
    with pytest.raises(RequestInvalid):
        allow.apply("execution.confirmed", {"result": 1, "stdout": "..."})


def test_secret_shaped_key_is_not_echoed() -> None:
    key = fakes.stripe_key(random.Random(1))
    with pytest.raises(RequestInvalid) as info:
        FieldAllowlist.from_policy(POLICY).apply("decision.created", {key: 1})
    assert key not in str(info.value)
    assert "[redacted:stripe_key]" in info.value.field
    _, dropped = drop_mode().apply("decision.created", {key: 1})
    assert dropped == ("[redacted:stripe_key]",)


def test_rules_are_read_only() -> None:
    allow = FieldAllowlist.from_policy(POLICY)
    with pytest.raises(TypeError):
        allow.rules["new.event"] = frozenset({"x"})  # type: ignore[index]
    with pytest.raises(AttributeError):
        allow.mode = AllowlistMode.DROP  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"mode": "refuse", "event_types": {}, "extra": 1}, "unknown keys"),
        ({"mode": "warn", "event_types": {}}, "mode must be 'refuse' or 'drop'"),
        ({"mode": "refuse"}, "'event_types' must map"),
        ({"event_types": {"decision.created": "status"}}, "must be a list"),
        ({"event_types": {"decision.created": ["status", ""]}}, "non-empty key names"),
        ({"event_types": {"decision.created": ["status", 3]}}, "non-empty key names"),
        ({"event_types": {"": ["status"]}}, "non-empty strings"),
    ],
)
def test_bad_policy_data(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match="ledger allowlist") as info:
        FieldAllowlist.from_policy(data)
    assert problem in str(info.value)


def test_non_mapping_payload() -> None:
    with pytest.raises(RequestInvalid, match="payload must be an object"):
        FieldAllowlist.from_policy(POLICY).apply("decision.created", ["status"])  # type: ignore[arg-type]
