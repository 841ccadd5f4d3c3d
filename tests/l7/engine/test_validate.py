from __future__ import annotations

import math
import re

import pytest

from l7.engine.validate import MAX_PAYLOAD_DEPTH, request_from_dict
from l7.errors import RequestInvalid
from tests.conftest import request, without

REQUIRED = [
    "action",
    "action.class",
    "action.intent",
    "action.target",
    "action.target.type",
    "action.target.id",
    "context",
    "context.actor",
    "context.actor.id",
    "context.actor.level",
]


def test_valid_request_round_trips() -> None:
    r = request_from_dict(request("deploy.release", env="Production", key="k1"))
    assert r.action.action_class == "deploy.release"
    assert r.context.environment == "production"
    assert r.idempotency_key == "k1"
    assert r.to_dict()["action"]["class"] == "deploy.release"


@pytest.mark.parametrize("field", REQUIRED)
def test_each_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(RequestInvalid, match="^" + re.escape(field) + ": ") as ei:
        request_from_dict(without(request(), field))
    assert ei.value.field == field


@pytest.mark.parametrize("field", ["action.class", "action.target.id", "context.actor.id"])
def test_blank_strings_are_missing(field: str) -> None:
    r = request()
    node = r
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = "   "
    with pytest.raises(RequestInvalid, match="must not be empty"):
        request_from_dict(r)


@pytest.mark.parametrize("level", [0, 6, -1, "3", True, 2.5])
def test_level_out_of_range_or_wrong_type(level: object) -> None:
    r = request()
    r["context"]["actor"]["level"] = level
    with pytest.raises(RequestInvalid, match="context.actor.level"):
        request_from_dict(r)


def test_missing_environment_is_kept_empty_for_policy_to_treat_as_production() -> None:
    assert request_from_dict(without(request(), "context.environment")).context.environment == ""


@pytest.mark.parametrize("bad", ["Deploy", "deploy..x", "1abc", "a b", "a/b"])
def test_action_class_shape(bad: str) -> None:
    with pytest.raises(RequestInvalid, match="action.class"):
        request_from_dict(request(bad))


def test_payload_nan_refused_with_path() -> None:
    with pytest.raises(RequestInvalid, match=r"action\.payload\.a\.b: numbers must be finite"):
        request_from_dict(request(payload={"a": {"b": math.nan}}))


def test_payload_depth_limit() -> None:
    deep: dict[str, object] = {}
    node = deep
    for _ in range(MAX_PAYLOAD_DEPTH + 1):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    with pytest.raises(RequestInvalid, match="nested deeper"):
        request_from_dict(request(payload=deep))


def test_payload_size_limit() -> None:
    with pytest.raises(RequestInvalid, match="larger than"):
        request_from_dict(request(payload={"blob": "x" * 70_000}))


def test_control_characters_refused() -> None:
    with pytest.raises(RequestInvalid, match="control characters"):
        request_from_dict(request(actor="alice\x00admin"))


def test_fingerprint_ignores_idempotency_key_but_not_content() -> None:
    a = request_from_dict(request(key="k1"))
    b = request_from_dict(request(key="k2"))
    c = request_from_dict(request(key="k1", payload={"x": 1}))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
