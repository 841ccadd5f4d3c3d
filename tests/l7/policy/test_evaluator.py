"""Strict parsing of OPA answers: anything incomplete is PolicyStoreDegraded."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from l7.domain import Band, Outcome
from l7.errors import ConfigError, PolicyStoreDegraded
from l7.policy.evaluator import OpaEvaluator, parse_judgement

GOOD: dict[str, Any] = {
    "provenance": {"bundles": {"b.tar.gz": {"revision": "abc"}}},
    "result": {
        "outcome": "QUEUE",
        "environment": "production",
        "enforcement_mode": "enforced",
        "gates": [{"id": "g", "title": "G", "result": "pass", "reason": "ok", "severity": "high"}],
        "risk": {"score": 60, "band": "high", "reasons": ["r"]},
        "authority": {
            "required_levels": [3, 4],
            "min_signatures": 3,
            "cosign": [4],
            "clauses": [
                {"id": "managers", "min_level": 3, "count": 2},
                {"id": "security_cosign", "min_level": 4, "count": 1},
            ],
        },
        "lifecycle": {"approval_window_s": 7200, "ttl_s": 43200, "rationale_required": True},
        "reasons": ["needs authority"],
    },
}


def mutate(path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return out


def test_good_answer_parses() -> None:
    j = parse_judgement(GOOD)
    assert (j.outcome, j.risk.band, j.policy_version) == (Outcome.QUEUE, Band.HIGH, "abc")
    assert j.authority.min_signatures == 3
    assert [c.id for c in j.authority.clauses] == ["managers", "security_cosign"]


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("result", KeyError, "undefined"),
        ("provenance", KeyError, "0 active bundles"),
        ("provenance.bundles", {}, "0 active bundles"),
        ("provenance.bundles", {"a": {"revision": "1"}, "b": {"revision": "2"}}, "2 active"),
        ("provenance.bundles", {"a": {"revision": ""}}, "no revision"),
        ("result.outcome", "MAYBE", "malformed"),
        ("result.outcome", KeyError, "outcome"),
        ("result.risk.score", 101, "outside"),
        ("result.risk.score", "high", "score"),
        ("result.risk.band", "extreme", "malformed"),
        ("result.gates", [], "no gates"),
        ("result.enforcement_mode", "off", "enforcement_mode"),
        ("result.authority", KeyError, "authority"),
        ("result.lifecycle", KeyError, "lifecycle"),
        ("result.lifecycle.ttl_s", 0, "positive"),
        ("result.lifecycle.rationale_required", "yes", "boolean"),
    ],
)
def test_incomplete_answers_are_degraded(path: str, value: Any, match: str) -> None:
    with pytest.raises(PolicyStoreDegraded, match=match):
        parse_judgement(mutate(path, value))


def test_allow_with_a_failed_gate_is_not_trusted() -> None:
    bad = mutate("result.outcome", "ALLOW")
    bad["result"]["gates"][0]["result"] = "fail"
    with pytest.raises(PolicyStoreDegraded, match="failed gate"):
        parse_judgement(bad)


def test_allow_that_requires_signatures_is_not_trusted() -> None:
    with pytest.raises(PolicyStoreDegraded, match="requiring signatures"):
        parse_judgement(mutate("result.outcome", "ALLOW"))


def test_unreachable_opa_is_degraded() -> None:
    from l7.policy.opa_process import free_port

    ev = OpaEvaluator(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    with pytest.raises(PolicyStoreDegraded, match="did not answer"):
        ev.evaluate({})


@pytest.mark.parametrize("url", ["localhost:8181", "ftp://x:1", "http://host"])
def test_bad_opa_url_names_the_flag(url: str) -> None:
    with pytest.raises(ConfigError, match="--opa-url"):
        OpaEvaluator(url)
