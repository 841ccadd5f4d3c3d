"""Issue #13 items 2, 3 and 5 against the real stack (OPA with signed bundles, SQLite
ledger, engine and gateway): authorizations expire and follow policy, the environment is
part of the action, and only the executor confirms (docs/0013-authorization-lifetime.md).

Each test plays the insider with the access it really has: a grant or decision id read
from the ledger, a tool that declares another environment, a ConfirmExecution call with
ids anyone can read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf import struct_pb2

from l7.client import GovernanceClient, RemoteError, decision_json
from l7.crypto import intent_hash
from l7.errors import GrantRefused
from l7.gateway.client import Denied, GatewayClient, Governed
from l7.gateway.grant import GrantVerifier, kid_of, load_grant_public_key
from l7.gateway.service import GatewayService
from l7.policy import build_bundle, write_lock
from l7.policy.opa_process import find_opa
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from ledger import StoredEvent
from tests.conftest import REPO, request
from tests.integration.test_gateway import Clock

pytestmark = pytest.mark.integration


def _config(tmp_path: Path, clock: Clock, **kw: Any) -> StackConfig:
    base = StackConfig(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path / "work",
        gateway=True,
        clock=clock,
        sweep_interval_s=0,
    )
    return replace(base, **kw)


def _decide(stack: Stack, req: dict[str, Any]) -> tuple[dict[str, Any], str]:
    with GovernanceClient(stack.target) as c:
        r = c.decide_proto(request_to_proto(req))
    return decision_json(r.decision), r.grant


def _stream(stack: Stack, decision_id: str) -> list[StoredEvent]:
    assert stack.ledger is not None
    return stack.ledger.get_stream(decision_id)  # the SignedLedger: tier signatures checked


def _tool(stack: Stack, env: str, ran: list[str]) -> Any:
    gov = Governed(
        engine=stack.target,
        gateway=stack.gateway_target,
        actor={"id": "agent-1", "role": "engineer", "level": 1},
        environment=env,
        timeout_s=5,
    )

    @gov.tool("data.read", target=lambda name: ("dataset", name), payload=lambda name: {})
    def read(name: str) -> dict[str, Any]:
        ran.append(name)
        return {"rows": 1}

    return gov, read


# -- item 2: authorizations expire -------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stack(tmp_path: Path, clock: Clock) -> Iterator[Stack]:
    with Stack(_config(tmp_path, clock)) as s:
        yield s


def test_an_authorization_30_days_old_is_expired_and_never_runs(stack: Stack, clock: Clock) -> None:
    ran: list[str] = []
    gov, read = _tool(stack, "dev", ran)
    d, grant = _decide(stack, request(target=("dataset", "orders")))
    assert d["status"] == "authorized" and grant
    window = int(d["execute_by"]) - int(clock.now.timestamp())
    assert window == 14400  # data.read is low band: policy's execute_within_s.low

    clock.now += timedelta(days=30)
    # The agent resumes its call: the engine records the expiry; the tool never runs.
    with pytest.raises(Denied) as resumed:
        read.resume(d["decision_id"], "orders")
    assert resumed.value.reason_code == "authorization_expired"
    with GovernanceClient(stack.target) as c, pytest.raises(RemoteError) as ei:
        c.get_grant(d["decision_id"])
    assert (ei.value.code, ei.value.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "authorization_expired",
    )
    # The grant it held is refused at the gateway too.
    gw = GatewayClient(stack.gateway_target)
    with pytest.raises(RemoteError) as old:
        gw.authorize(grant, request()["action"], environment="dev")
    gw.close()
    assert old.value.reason == "grant_expired"  # its own exp never passes execute_by
    assert ran == []
    # Recorded once, by the engine, signed as every engine batch is; nothing executed.
    events = _stream(stack, d["decision_id"])
    expired = [e for e in events if e.event_type == "decision.expired"]
    assert len(expired) == 1 and expired[0].payload["reason_code"] == "authorization_expired"
    assert expired[0].actor == "l7-engine"
    assert not any(e.event_type.startswith("execution.") for e in events)
    with GovernanceClient(stack.target) as c:
        after = c.get_decision(d["decision_id"])
    assert (after["status"], after["reason_code"]) == ("expired", "authorization_expired")
    assert stack.ledger is not None
    stack.ledger.verify()
    gov.close()


def test_a_grant_never_outlives_the_execution_window(stack: Stack, clock: Clock) -> None:
    d, _ = _decide(stack, request())
    clock.now += timedelta(seconds=14400 - 60)  # one minute of the window left
    with GovernanceClient(stack.target) as c:
        grant = c.get_grant(d["decision_id"])
    claims = jwt.decode(grant, options={"verify_signature": False})
    assert claims["exp"] == int(d["execute_by"])  # not iat + 300


# -- item 2: authorizations follow policy ------------------------------------------------

ENV = "dev"


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "rego", repo / "rego")
    shutil.copytree(REPO / "bundles", repo / "bundles")
    return repo


def _tighten(repo: Path, tmp_path: Path) -> None:
    """A reviewed policy change: data.read now needs a supervisor (QUEUE), nothing else."""
    data = repo / "rego" / "l7" / "config" / "data.json"
    cfg = json.loads(data.read_text())
    cfg["classes"]["data.read"]["authority_profile"] = "privileged"
    data.write_text(json.dumps(cfg, indent=2))
    built = build_bundle(ENV, repo_root=repo, out_dir=tmp_path / "b", opa_bin=find_opa())
    write_lock(built, repo)


def test_a_policy_change_re_judges_a_stale_authorization(tmp_path: Path, clock: Clock) -> None:
    repo = _repo(tmp_path)
    cfg = _config(tmp_path, clock, env=ENV, repo_root=repo, grant_ttl_s=7200)
    ran: list[str] = []
    with Stack(cfg) as a:
        rev_a = a.bundle.revision if a.bundle else ""
        stale, stale_grant = _decide(a, request(target=("dataset", "orders")))
        kept, _ = _decide(a, request("ticket.update", target=("ticket", "T-7")))
        assert stale["status"] == kept["status"] == "authorized", (stale, kept)

    _tighten(repo, tmp_path)
    clock.now += timedelta(minutes=30)  # inside both execution windows
    with Stack(cfg) as b:
        assert b.bundle is not None and b.bundle.revision != rev_a
        # The gateway learns the active revision from the ledger's signed policy.activated
        # events: a grant judged under revision A no longer runs.
        gw = GatewayClient(b.gateway_target)
        with pytest.raises(RemoteError) as ei:
            gw.authorize(stale_grant, request()["action"], environment=ENV)
        assert ei.value.reason == "policy_changed"
        # GetGrant re-judges under B: data.read now needs a supervisor -> back to pending.
        gov, read = _tool(b, ENV, ran)
        with pytest.raises(RemoteError) as resumed:
            read.resume(stale["decision_id"], "orders")
        assert resumed.value.reason == "policy_changed"
        assert ran == []
        events = _stream(b, stale["decision_id"])
        last = events[-1]
        assert (last.event_type, last.payload["reason_code"], last.payload["status"]) == (
            "enforcement.result",
            "policy_changed",
            "pending_authority",
        )
        assert last.policy_version == b.bundle.revision
        assert any(
            e.event_type == "decision.evaluated" and e.payload.get("reevaluated") for e in events
        )
        assert not any(e.event_type.startswith("execution.") for e in events)
        with GovernanceClient(b.target) as c, pytest.raises(RemoteError) as again:
            c.get_grant(stale["decision_id"])
        assert again.value.reason == "policy_changed"
        # A decision the new revision still ALLOWs by itself is re-affirmed (recorded) and
        # granted under B; its window does not grow.
        with GovernanceClient(b.target) as c:
            fresh = c.get_grant(kept["decision_id"])
            after = c.get_decision(kept["decision_id"])
        assert after["status"] == "authorized" and after["policy_version"] == b.bundle.revision
        assert int(after["execute_by"]) == int(kept["execute_by"])
        ok = gw.authorize(fresh, request("ticket.update", target=("ticket", "T-7"))["action"],
                          environment=ENV)  # fmt: skip
        assert ok.decision_id == kept["decision_id"]
        gw.close()
        gov.close()
        assert b.ledger is not None
        b.ledger.verify()


# -- item 3: the environment is part of the action ---------------------------------------


def test_a_dev_grant_is_refused_by_a_production_gateway(tmp_path: Path, clock: Clock) -> None:
    ran: list[str] = []
    cfg = _config(tmp_path, clock, gateway_environments=("production",))
    with Stack(cfg) as s:
        dev, grant = _decide(s, request(env="dev"))
        prod, _ = _decide(s, request(env="production"))
        assert dev["outcome"] == "ALLOW" and grant
        # The byte-identical action in another environment is another intent.
        assert dev["intent_hash"] != prod["intent_hash"]
        assert dev["intent_hash"] == intent_hash(dev["action"], dev["context"]["environment"])
        assert jwt.decode(grant, options={"verify_signature": False})["environment"] == "dev"
        gw = GatewayClient(s.gateway_target)
        for claimed in ("dev", "production", "", "prod"):  # honest, lying, missing, unknown
            with pytest.raises(RemoteError) as ei:
                gw.authorize(grant, request()["action"], environment=claimed)
            assert (ei.value.code, ei.value.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "environment_mismatch",
            ), claimed
        gw.close()
        # A governed tool declaring dev, behind a production gateway: it never runs.
        gov, read = _tool(s, "dev", ran)
        with pytest.raises(RemoteError) as tool:
            read("orders")
        assert tool.value.reason == "environment_mismatch"
        gov.close()
        assert ran == []
        assert not any(
            e.event_type.startswith("execution.") for e in _stream(s, dev["decision_id"])
        )
        # Missing or unknown environments are judged, hashed and granted as production.
        for env in ("", "prod"):
            d, g = _decide(s, request("ticket.update", env=env, target=("ticket", "T-1")))
            assert d["environment"] == "production", d
            if g:
                assert jwt.decode(g, options={"verify_signature": False})["environment"] == (
                    "production"
                )


def test_gateway_cli_requires_the_environments_it_guards(tmp_path: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "l7.cli.main", "gateway", "serve",
            "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}"]  # fmt: skip
    r = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--env" in r.stderr
    r = subprocess.run([*base, "--env", "prod"], capture_output=True, text=True, timeout=60,
                       check=False)  # fmt: skip
    assert r.returncode != 0 and "not an environment policy judges" in r.stderr


# -- item 5: only the executor confirms --------------------------------------------------


def _confirm_raw(target: str, **fields: Any) -> RemoteError:
    result = struct_pb2.Struct()
    result.update({"rows": 0, "note": "forged"})
    with grpc.insecure_channel(target) as ch:
        stub = gpb_grpc.GatewayStub(ch)
        try:
            stub.ConfirmExecution(
                gpb.ConfirmExecutionRequest(succeeded=False, result=result, **fields), timeout=10
            )
        except grpc.RpcError as e:
            from l7.client import _remote_error

            return _remote_error(e)
    raise AssertionError("a forged confirmation was accepted")


def test_a_third_party_cannot_confirm_and_the_executor_still_can(
    stack: Stack, tmp_path: Path
) -> None:
    req = request()
    d, grant = _decide(stack, req)
    executor = GatewayClient(stack.gateway_target)
    ex = executor.authorize(grant, req["action"], environment="dev")
    assert ex.confirmation_token.startswith("l7c_")
    ids = {"decision_id": d["decision_id"], "execution_id": ex.execution_id}
    # Both ids are in the ledger for anyone who can read it; they are not enough.
    for extra in (
        {},
        {"confirmation_token": "l7c_" + "A" * 43},
        {"confirmation_token": ex.confirmation_token, "execution_id": d["decision_id"]},
    ):
        err = _confirm_raw(stack.gateway_target, **{**ids, **extra})
        assert (err.code, err.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "confirmation_invalid",
        ), extra
    # The token is bound to the caller too: the right token from another peer is refused
    # (checked before anything is appended, so the engine's ledger view suffices here).
    assert stack.ledger is not None
    pub = load_grant_public_key(stack.grant_public_key_path)
    other = GatewayService(
        stack.ledger,
        GrantVerifier({kid_of(pub): pub}),
        environments=frozenset({"dev"}),
        policy_env="local",
    )
    with pytest.raises(GrantRefused) as stolen:
        other.confirm(
            d["decision_id"], ex.execution_id, True, {}, ex.confirmation_token, "peer:ipv4:10.9.9.9"
        )
    assert stolen.value.reason == "confirmation_invalid"
    events = _stream(stack, d["decision_id"])
    assert not any(e.event_type == "execution.confirmed" for e in events)
    authorized = next(e for e in events if e.event_type == "execution.authorized")
    assert ex.confirmation_token not in json.dumps(authorized.payload)  # only its digest
    # The real executor's confirmation lands, with its result; once.
    executor.confirm(d["decision_id"], ex.execution_id, True, {"rows": 3}, ex.confirmation_token)
    with pytest.raises(RemoteError) as twice:
        executor.confirm(d["decision_id"], ex.execution_id, True, {}, ex.confirmation_token)
    assert twice.value.reason == "grant_replayed"
    executor.close()
    confirmed = [
        e for e in _stream(stack, d["decision_id"]) if e.event_type == "execution.confirmed"
    ]
    assert len(confirmed) == 1 and confirmed[0].payload["result"] == {"rows": 3}
    assert confirmed[0].payload["succeeded"] is True
