"""Boundary B end to end: grants from the engine, the gateway checking them against the
real SQLite ledger, and governed tools that cannot run any other way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.client import GovernanceClient, RemoteError
from l7.errors import ConfigError, GatewayDegraded, GrantRefused
from l7.gateway.client import Denied, GatewayClient, Governed, PendingAuthority
from l7.gateway.grant import GrantIssuer, GrantVerifier
from l7.policy.opa_process import free_port
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from tests.conftest import request

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gstack(tmp_path: Path, clock: Clock) -> Iterator[Stack]:
    cfg = StackConfig(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        gateway=True,
        clock=clock,
        sweep_interval_s=0,
    )
    with Stack(cfg) as s:
        yield s


def decide(stack: Stack, req: dict[str, Any]) -> tuple[dict[str, Any], str]:
    from l7.client import decision_json

    with GovernanceClient(stack.target) as c:
        r = c.decide_proto(request_to_proto(req))
    return decision_json(r.decision), r.grant


def authorize(stack: Stack, grant: str, action: dict[str, Any], env: str = "dev") -> Any:
    gw = GatewayClient(stack.gateway_target)
    try:
        return gw.authorize(grant, action, environment=env)
    finally:
        gw.close()


def refused(stack: Stack, grant: str, action: dict[str, Any], env: str = "dev") -> RemoteError:
    with pytest.raises(RemoteError) as ei:
        authorize(stack, grant, action, env)
    assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED
    return ei.value


def test_allow_issues_a_grant_bound_to_the_authorizing_event(gstack: Stack) -> None:
    req = request()
    d, grant = decide(gstack, req)
    assert d["outcome"] == "ALLOW" and grant
    claims = jwt.decode(grant, options={"verify_signature": False})
    assert claims["decision_id"] == d["decision_id"]
    assert claims["action_hash"] == d["intent_hash"]
    assert claims["ledger_hash"] == d["ledger"]["hash"]  # enforcement.result authorized
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(grant)["alg"] == "EdDSA"


def test_no_grant_for_queued_or_denied(gstack: Stack) -> None:
    q, g1 = decide(gstack, request("data.delete", env="production", target=("table", "t")))
    d, g2 = decide(gstack, request("rm.rf"))
    assert (q["outcome"], g1) == ("QUEUE", "")
    assert (d["outcome"], g2) == ("DENY", "")
    with GovernanceClient(gstack.target) as c, pytest.raises(RemoteError) as ei:
        c._call("GetGrant", __import__("l7.v1.governance_pb2", fromlist=["x"]).GetGrantRequest(
            decision_id=q["decision_id"]))  # fmt: skip
    assert ei.value.reason == "not_authorized"


def test_authorize_consumes_once_then_confirm_executes(gstack: Stack) -> None:
    req = request()
    d, grant = decide(gstack, req)
    r = authorize(gstack, grant, req["action"])
    assert r.decision_id == d["decision_id"]
    assert refused(gstack, grant, req["action"]).reason == "grant_replayed"
    gw = GatewayClient(gstack.gateway_target)
    gw.confirm(
        d["decision_id"], r.execution_id, True, {"rows": 3, "blob": "x" * 1000},
        r.confirmation_token,
    )  # fmt: skip
    with pytest.raises(RemoteError) as again:
        gw.confirm(d["decision_id"], r.execution_id, True, {}, r.confirmation_token)
    gw.close()
    assert again.value.reason == "grant_replayed"
    with GovernanceClient(gstack.target) as c:
        assert c.get_decision(d["decision_id"])["status"] == "executed"
    assert gstack.ledger is not None
    events = gstack.ledger.get_stream(d["decision_id"])
    confirmed = next(e for e in events if e.event_type == "execution.confirmed")
    assert confirmed.payload["result"]["rows"] == 3
    assert set(confirmed.payload["result"]["blob"]) == {"sha256", "bytes"}  # large -> hashed
    gstack.ledger.verify()


def test_a_second_grant_for_an_executed_decision_is_refused(gstack: Stack) -> None:
    req = request()
    d, grant = decide(gstack, req)
    authorize(gstack, grant, req["action"])
    with GovernanceClient(gstack.target) as c, pytest.raises(RemoteError) as ei:
        from l7.v1 import governance_pb2 as pb

        c._call("GetGrant", pb.GetGrantRequest(decision_id=d["decision_id"]))
    assert ei.value.reason == "grant_replayed"


def test_action_mismatch(gstack: Stack) -> None:
    req = request()
    _, grant = decide(gstack, req)
    other = json.loads(json.dumps(req["action"]))
    other["target"]["id"] = "another-dataset"
    assert refused(gstack, grant, other).reason == "action_mismatch"


def test_expired_grant(gstack: Stack, clock: Clock) -> None:
    req = request()
    _, grant = decide(gstack, req)
    clock.now += timedelta(seconds=301 + 5)
    assert refused(gstack, grant, req["action"]).reason == "grant_expired"


def test_grant_signed_by_another_key_is_invalid(gstack: Stack) -> None:
    req = request()
    d, _ = decide(gstack, req)
    assert gstack.engine is not None
    forged = GrantIssuer(Ed25519PrivateKey.generate()).issue(
        gstack.engine.get_decision(d["decision_id"])
    )
    assert refused(gstack, forged, req["action"]).reason == "grant_invalid"
    assert refused(gstack, "not.a.jwt", req["action"]).reason == "grant_invalid"


def test_cancelled_after_grant_is_not_authorized(gstack: Stack, tmp_path: Path) -> None:
    """A grant outlives nothing: the gateway re-reads the ledger at use time."""
    req = request()
    d, grant = decide(gstack, req)
    assert gstack.authority is not None and gstack.ledger is not None
    from ledger import EventType, NewEvent

    gstack.ledger.append(
        [
            NewEvent(
                d["decision_id"],
                EventType.DECISION_CANCELLED,
                "sec1",
                d["policy_version"],
                {
                    "status": "cancelled",
                    "outcome": "DENY",
                    "reason_code": "cancelled",
                    "reasons": [],
                },
            )
        ]
    )
    assert refused(gstack, grant, req["action"]).reason == "not_authorized"


def test_ledger_down_refuses_with_ledger_degraded(gstack: Stack, tmp_path: Path) -> None:
    import sqlite3

    req = request()
    _, grant = decide(gstack, req)
    holder = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RemoteError) as ei:
            authorize(gstack, grant, req["action"])
        assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.UNAVAILABLE, "ledger_degraded")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    authorize(gstack, grant, req["action"])  # the same grant works once the ledger is back


def test_gateway_without_a_verification_key_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="refusing to run with checks disabled"):
        GrantVerifier({})


def test_gateway_cli_refuses_to_start_without_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "l7.cli.main", "gateway", "serve", "--ledger",
         f"sqlite:///{tmp_path / 'l.sqlite'}", "--env", "dev"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "refuses to start" in r.stderr


# -- governed tools ------------------------------------------------------------------------


def make_tools(stack: Stack, sandbox: Path, **gw: Any) -> tuple[Governed, Any, Any, Any]:
    gov = Governed(
        engine=gw.get("engine", stack.target),
        gateway=gw.get("gateway", stack.gateway_target),
        actor={"id": "agent-ops", "role": "agent", "level": 1},
        environment="dev",
        timeout_s=5,
    )

    @gov.tool("data.read", target=lambda name: ("file", name), payload=lambda name: {})
    def read_file(name: str) -> dict[str, Any]:
        return {"text": (sandbox / name).read_text()}

    @gov.tool("data.delete", target=lambda name: ("file", name), payload=lambda name: {})
    def delete_file(name: str) -> dict[str, Any]:
        (sandbox / name).unlink()
        return {"deleted": name}

    @gov.tool("debug.exec", target=lambda cmd: ("host", "prod-1"), payload=lambda cmd: {})
    def run_debug(cmd: str) -> None:
        raise AssertionError("must never run")

    return gov, read_file, delete_file, run_debug


def test_governed_tool_allow_runs_and_is_confirmed(gstack: Stack, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    gov, read_file, _, _ = make_tools(gstack, tmp_path)
    assert read_file("a.txt") == {"text": "hello"}
    assert gstack.ledger is not None
    types = [e.event_type for e in gstack.ledger.iter_events()]
    assert types.count("execution.authorized") == types.count("execution.confirmed") == 1
    gov.close()


def test_governed_tool_queue_raises_pending_then_resume_runs(
    gstack: Stack, tmp_path: Path, clock: Clock
) -> None:
    (tmp_path / "b.txt").write_text("x")
    gov, _, delete_file, _ = make_tools(gstack, tmp_path)
    with pytest.raises(PendingAuthority) as ei:
        delete_file("b.txt")
    assert (tmp_path / "b.txt").exists()
    assert "L2" in str(ei.value)
    # Authority arrives (recorded directly here; tests/integration/test_authority.py covers
    # the signed path), then the caller resumes the same call.
    assert gstack.ledger is not None and gstack.engine is not None
    from ledger import EventType, NewEvent

    d = gstack.engine.get_decision(ei.value.decision_id)
    gstack.ledger.append(
        [
            NewEvent(
                d.decision_id,
                EventType.ENFORCEMENT_RESULT,
                "sue",
                d.policy_version,
                {"status": "authorized", "outcome": "ALLOW", "reason_code": "quorum_reached",
                 "reasons": ["test"], "enforcement_mode": "enforced",
                 "execute_by": int(clock.now.timestamp()) + 600},
            )
        ]
    )  # fmt: skip
    assert gov.wait(d.decision_id, timeout_s=1)["status"] == "authorized"
    assert delete_file.resume(d.decision_id, "b.txt") == {"deleted": "b.txt"}
    assert not (tmp_path / "b.txt").exists()
    with pytest.raises(GrantRefused):
        delete_file.resume(d.decision_id, "b.txt")  # executed: no second run
    gov.close()


def test_governed_tool_deny_raises_and_never_runs(gstack: Stack, tmp_path: Path) -> None:
    gov = Governed(
        engine=gstack.target,
        gateway=gstack.gateway_target,
        actor={"id": "agent-ops", "role": "agent", "level": 1},
        environment="production",
    )

    @gov.tool("debug.exec", target=lambda cmd: ("host", "prod-1"))
    def run_debug(cmd: str) -> None:
        raise AssertionError("must never run")

    with pytest.raises(Denied) as ei:
        run_debug("id")
    assert ei.value.reason_code == "policy"
    gov.close()


def test_direct_call_without_grant_refuses(gstack: Stack, tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("x")
    gov, read_file, _, _ = make_tools(gstack, tmp_path)
    assert not hasattr(read_file, "__wrapped__")
    with pytest.raises(GrantRefused, match="called directly"):
        read_file._fn("c.txt")
    gov.close()


def test_engine_or_gateway_unreachable_means_the_tool_does_not_run(
    gstack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "d.txt").write_text("x")
    dead = f"127.0.0.1:{free_port()}"
    ran: list[str] = []
    for where in ({"engine": dead}, {"gateway": dead}):
        gov = Governed(
            engine=where.get("engine", gstack.target),
            gateway=where.get("gateway", gstack.gateway_target),
            actor={"id": "agent-ops", "role": "agent", "level": 1},
            environment="dev",
            timeout_s=2,
        )

        # data.read in dev is allowed: only the dead dependency can stop it.
        @gov.tool("data.read", target=lambda name: ("file", name))
        def read_file(name: str) -> None:
            ran.append(name)

        with pytest.raises(GatewayDegraded, match="unreachable"):
            read_file("d.txt")
        gov.close()
    assert ran == []
