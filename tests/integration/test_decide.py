"""Decide end to end against a real OPA child and a real SQLite ledger file."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from l7.client import GovernanceClient, RemoteError
from l7.stack import Stack
from l7.v1 import governance_pb2 as pb
from tests.conftest import example, request, without
from tests.l7.engine.test_validate import REQUIRED

pytestmark = pytest.mark.integration


def _types(stack: Stack, decision_id: str) -> list[str]:
    assert stack.ledger is not None
    return [e.event_type for e in stack.ledger.get_stream(decision_id)]


def test_low_risk_read_is_allowed_and_fully_recorded(
    stack: Stack, client: GovernanceClient
) -> None:
    d = client.decide(example("read-dev.json"))
    assert d["outcome"] == "ALLOW"
    assert d["status"] == "authorized"
    assert d["risk"]["band"] == "low"
    assert d["policy_version"] == stack.bundle.revision  # type: ignore[union-attr]
    assert all(g["passed"] for g in d["gates"])
    types = _types(stack, d["decision_id"])
    assert types[0] == "decision.created"
    assert types.count("policy.gate") == len(d["gates"])
    assert types[-4:] == [
        "risk.scored",
        "authority.required",
        "decision.evaluated",
        "enforcement.result",
    ]
    # The response names the ledger confirmation of the last event.
    assert stack.ledger is not None
    last = stack.ledger.get_stream(d["decision_id"])[-1]
    assert (d["ledger"]["global_seq"], d["ledger"]["hash"]) == (last.global_seq, last.hash)


def test_unknown_class_is_denied_by_the_allowlist_gate(client: GovernanceClient) -> None:
    d = client.decide(example("unknown-class.json"))
    assert d["outcome"] == "DENY"
    assert d["status"] == "denied"
    failed = {g["id"] for g in d["gates"] if not g["passed"]}
    assert "action_class_allowed" in failed


def test_production_deploy_is_queued_for_authority(client: GovernanceClient) -> None:
    d = client.decide(example("deploy-prod.json"))
    assert d["outcome"] == "QUEUE"
    assert d["status"] == "pending_authority"
    assert d["action"]["class"] == "deploy.release"  # echoed under the request's JSON name
    assert d["authority"]["min_signatures"] >= 2
    assert 4 in d["authority"]["cosign"]


def test_critical_transfer_escalates_to_an_executive(client: GovernanceClient) -> None:
    d = client.decide(example("funds-critical.json"))
    assert d["outcome"] == "ESCALATE"
    assert d["risk"]["band"] == "critical"
    assert 5 in d["authority"]["required_levels"]


def test_debug_exec_in_production_is_denied(client: GovernanceClient) -> None:
    d = client.decide(request("debug.exec", env="production", target=("host", "web-1")))
    assert d["outcome"] == "DENY"


def test_unknown_environment_is_judged_as_production(client: GovernanceClient) -> None:
    moon = client.decide(request("deploy.release", env="moon", target=("service", "api")))
    prod = client.decide(request("deploy.release", env="production", target=("service", "api")))
    assert moon["environment"] == "production"
    assert moon["outcome"] == prod["outcome"] == "QUEUE"
    assert moon["risk"]["score"] >= prod["risk"]["score"]


def test_get_decision_is_rebuilt_from_the_ledger_and_matches(client: GovernanceClient) -> None:
    d = client.decide(example("deploy-prod.json"))
    got = client.get_decision(d["decision_id"])
    d.pop("replayed")
    assert got == d


def test_get_unknown_decision_is_not_found(client: GovernanceClient) -> None:
    with pytest.raises(RemoteError) as ei:
        client.get_decision("no-such-decision")
    assert ei.value.code == grpc.StatusCode.NOT_FOUND
    assert ei.value.reason == "decision_not_found"


# -- idempotency -----------------------------------------------------------------------


def test_same_key_same_request_returns_same_decision_and_no_second_stream(
    stack: Stack, client: GovernanceClient
) -> None:
    req = request(key="retry-1")
    first = client.decide(req)
    assert stack.ledger is not None
    before = stack.ledger.count()
    again = client.decide(req)
    assert again["decision_id"] == first["decision_id"]
    assert again["replayed"] is True and first["replayed"] is False
    assert stack.ledger.count() == before


def test_same_key_different_request_is_refused(client: GovernanceClient) -> None:
    client.decide(request(key="k-1"))
    with pytest.raises(RemoteError) as ei:
        client.decide(request(key="k-1", payload={"changed": True}))
    assert ei.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert ei.value.reason == "idempotency_key_reused"


def test_concurrent_retries_make_exactly_one_decision(
    stack: Stack, client: GovernanceClient
) -> None:
    req = request(key="burst")
    with ThreadPoolExecutor(8) as pool:
        ids = {d["decision_id"] for d in pool.map(lambda _: client.decide(req), range(16))}
    assert len(ids) == 1
    assert stack.ledger is not None
    created = [e for e in stack.ledger.iter_events() if e.event_type == "decision.created"]
    assert len(created) == 1


def test_same_key_from_a_different_actor_is_a_different_decision(client: GovernanceClient) -> None:
    a = client.decide(request(key="shared", actor="a"))
    b = client.decide(request(key="shared", actor="b"))
    assert a["decision_id"] != b["decision_id"]


# -- malformed input ---------------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED)
def test_each_missing_required_field_is_invalid_argument(
    stack: Stack, client: GovernanceClient, field: str
) -> None:
    assert stack.ledger is not None
    before = stack.ledger.count()
    with pytest.raises(RemoteError) as ei:
        client.decide(without(request(), field))
    err = ei.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "invalid_request"
    assert err.field == field
    assert field in err.message
    assert "Traceback" not in err.message
    assert stack.ledger.count() == before


def test_unknown_json_field_is_refused_by_the_client_parser(client: GovernanceClient) -> None:
    from google.protobuf.json_format import ParseError

    with pytest.raises(ParseError, match="approved"):
        client.decide({**request(), "approved": True})


# -- fail closed -------------------------------------------------------------------------


def test_opa_down_denies_with_policy_store_degraded_and_is_recorded(
    stack: Stack, client: GovernanceClient
) -> None:
    assert stack.opa is not None
    stack.opa.stop()
    d = client.decide(request())
    assert d["outcome"] == "DENY"
    assert d["status"] == "denied"
    assert d["reason_code"] == "policy_store_degraded"
    assert d["policy_version"] == ""
    assert _types(stack, d["decision_id"]) == ["decision.created", "enforcement.result"]
    assert client.get_decision(d["decision_id"])["reason_code"] == "policy_store_degraded"


def test_opa_serving_a_different_revision_than_the_lock_denies(
    stack: Stack, client: GovernanceClient
) -> None:
    from l7.policy.evaluator import OpaEvaluator

    assert stack.engine is not None and stack.opa is not None
    stack.engine.policy = OpaEvaluator(stack.opa.url, expected_revision="0" * 64)
    d = client.decide(request())
    assert d["outcome"] == "DENY"
    assert d["reason_code"] == "policy_store_degraded"
    assert "lock pins" in d["reasons"][0]


def test_ledger_unwritable_is_unavailable_and_nothing_is_allowed(
    stack: Stack, client: GovernanceClient, tmp_path: Path
) -> None:
    # Another process holds the SQLite write lock: the ledger cannot confirm.
    holder = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RemoteError) as ei:
            client.decide(request())
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
        assert ei.value.reason == "ledger_degraded"
        assert "nothing was allowed" in ei.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Service resumes once the ledger is writable again.
    assert client.decide(request())["outcome"] == "ALLOW"


def test_ledger_closed_is_unavailable(stack: Stack, client: GovernanceClient) -> None:
    assert stack.ledger is not None
    stack.ledger.close()
    with pytest.raises(RemoteError) as ei:
        client.decide(request())
    assert ei.value.code == grpc.StatusCode.UNAVAILABLE
    assert ei.value.reason == "ledger_degraded"


# -- the gRPC surface --------------------------------------------------------------------


def test_health_and_reflection_are_served(stack: Stack) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(stack.target) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="l7.v1.Governance"), timeout=5
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(
            refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "l7.v1.Governance" in names


def test_raw_proto_with_no_fields_is_invalid_argument(client: GovernanceClient) -> None:
    with pytest.raises(RemoteError) as ei:
        client.decide_proto(pb.DecideRequest())
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.field == "action"


def test_the_activated_signed_revision_is_on_the_record(stack: Stack) -> None:
    assert stack.ledger is not None and stack.bundle is not None
    (ev,) = stack.ledger.get_stream("policy/local")
    assert ev.event_type == "policy.activated"
    assert ev.payload["revision"] == stack.bundle.revision
    assert ev.payload["signer_kid"].startswith("l7b-")


def test_rate_limited_caller_gets_resource_exhausted_with_retry_after(
    stack: Stack, client: GovernanceClient
) -> None:
    from l7.engine.ratelimit import RateLimiter

    assert stack.engine is not None and stack.ledger is not None
    stack.engine.rate_limiter = RateLimiter(
        lambda: {"decide_per_actor": {"rate_per_s": 0.001, "burst": 2}}
    )
    client.decide(request(key="r1"))
    client.decide(request(key="r2"))
    before = stack.ledger.count()
    with pytest.raises(RemoteError) as ei:
        client.decide(request(key="r3"))
    assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
    assert "retry after" in ei.value.message
    assert stack.ledger.count() == before  # nothing judged or recorded
    # Without identity the per-actor key is the peer address: a new actor id is no way out.
    with pytest.raises(RemoteError) as again:
        client.decide(request(actor="someone-else", key="r4"))
    assert again.value.reason == "rate_limited"
    assert stack.ledger.count() == before


def test_rate_limited_per_caller_across_actors(stack: Stack, client: GovernanceClient) -> None:
    """One caller (here: one peer address, no mTLS, no identity) cannot spread a flood over
    actors or request sources: neither is the key."""
    from l7.engine.ratelimit import RateLimiter

    assert stack.engine is not None
    stack.engine.rate_limiter = RateLimiter(
        lambda: {"decide_per_caller": {"rate_per_s": 0.001, "burst": 3}}
    )
    for i in range(3):
        client.decide(request(actor=f"actor-{i}", key=f"c{i}"))
    with pytest.raises(RemoteError) as ei:
        client.decide(request(actor="actor-9", key="c9"))
    assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
    assert "decide_per_caller" in ei.value.message
    other = request(actor="actor-9", key="c10")
    other["context"]["request_source"] = "another-service"
    with pytest.raises(RemoteError) as again:
        client.decide(other)
    assert again.value.reason == "rate_limited"
