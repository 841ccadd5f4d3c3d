"""The tool allowlist (issue #7 item 3) end to end: tools are enumerated per action class
in policy data; a request naming any other tool is denied before risk scoring with the
gate recorded, and a grant binds to the tool it was issued for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from l7.client import GovernanceClient, RemoteError, decision_json
from l7.crypto import intent_hash
from l7.gateway.client import Denied, GatewayClient, Governed
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from tests.conftest import request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tools")
    cfg = StackConfig(
        ledger_url=f"sqlite:///{tmp / 'ledger.sqlite'}",
        work_dir=tmp,
        gateway=True,
        sweep_interval_s=0,
    )
    with Stack(cfg) as s:
        yield s


def _with_tool(tool: str, cls: str = "data.read", **kw: Any) -> dict[str, Any]:
    req = request(cls, **kw)
    req["action"]["tool"] = tool
    return req


def _decide(stack: Stack, req: dict[str, Any]) -> tuple[dict[str, Any], str]:
    with GovernanceClient(stack.target) as c:
        r = c.decide_proto(request_to_proto(req))
    return decision_json(r.decision), r.grant


def _gate(d: dict[str, Any], gate_id: str) -> dict[str, Any]:
    return next(g for g in d["gates"] if g["id"] == gate_id)


def test_listed_tool_is_allowed(gstack: Stack) -> None:
    d, grant = _decide(gstack, _with_tool("report-builder"))
    assert d["outcome"] == "ALLOW" and grant
    assert _gate(d, "tool_allowed")["passed"] is True


@pytest.mark.parametrize(
    ("tool", "cls", "target"),
    [
        ("curl", "data.read", ("dataset", "orders")),  # on no list at all
        ("transfer", "data.read", ("dataset", "orders")),  # listed, for another class
        ("read_file", "funds.transfer", ("account", "a-1")),
    ],
)
def test_unlisted_tool_is_denied_and_recorded(
    gstack: Stack, tool: str, cls: str, target: tuple[str, str]
) -> None:
    d, grant = _decide(gstack, _with_tool(tool, cls, target=target))
    assert d["outcome"] == "DENY" and not grant
    gate = _gate(d, "tool_allowed")
    assert gate["passed"] is False
    assert f'tool "{tool}" is not on the allowlist for action class "{cls}"' in gate["reason"]
    assert gstack.ledger is not None
    recorded = [
        e.payload
        for e in gstack.ledger.get_stream(d["decision_id"])
        if e.event_type == "policy.gate"
    ]
    assert {"gate": "tool_allowed", "result": "fail"}.items() <= next(
        p for p in recorded if p["gate"] == "tool_allowed"
    ).items()


def test_malformed_tool_name_is_invalid(gstack: Stack) -> None:
    with pytest.raises(RemoteError) as err:
        _decide(gstack, _with_tool("rm -rf /"))
    assert (err.value.reason, err.value.field) == ("invalid_request", "action.tool")


def test_grant_binds_to_the_tool(gstack: Stack) -> None:
    req = _with_tool("report-builder")
    d, grant = _decide(gstack, req)
    assert grant
    gw = GatewayClient(gstack.gateway_target)
    try:
        for other in ({**req["action"], "tool": "read_file"}, request()["action"]):
            with pytest.raises(RemoteError) as err:
                gw.authorize(grant, other, environment="dev")
            assert err.value.reason == "action_mismatch"
        assert gw.authorize(grant, req["action"], environment="dev").decision_id == d["decision_id"]
    finally:
        gw.close()


def test_intent_hash_covers_the_tool_and_keeps_old_hashes() -> None:
    action = request()["action"]
    assert intent_hash(action, "dev") == intent_hash({**action, "tool": ""}, "dev")  # earlier
    assert intent_hash(action, "dev") != intent_hash({**action, "tool": "report-builder"}, "dev")
    assert intent_hash({**action, "tool": "a"}, "dev") != intent_hash(
        {**action, "tool": "b"}, "dev"
    )


def test_governed_tool_named_on_the_list_runs_and_other_is_denied(
    gstack: Stack, tmp_path: Path
) -> None:
    gov = Governed(
        engine=gstack.target,
        gateway=gstack.gateway_target,
        actor={"id": "agent-7", "role": "engineer", "level": 1},
        environment="dev",
    )
    ran: list[str] = []

    @gov.tool("data.read", target=lambda n: ("file", n), tool="read_file")
    def read_file(n: str) -> str:
        ran.append(n)
        return n

    @gov.tool("data.read", target=lambda n: ("file", n), tool="wget")
    def fetch(n: str) -> str:
        ran.append("fetch:" + n)
        return n

    assert read_file("a.txt") == "a.txt"
    with pytest.raises(Denied):
        fetch("b.txt")
    assert ran == ["a.txt"]
