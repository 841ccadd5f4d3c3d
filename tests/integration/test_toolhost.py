"""Issue #13 item 8: a real execution boundary.

The tool runs in its own process (``l7 tool serve``); the test process sits beside it
with what such a neighbour really has: the tool service's port, the engine's port, grants
it obtained honestly or saw go by, and keys of its own. It cannot make the tool body run
without a grant the gateway accepts for exactly that action; every body run leaves a line
in a file the tool writes, so "never ran" is observed, not assumed. Real OPA with the
signed bundle, real SQLite ledger, the real gateway.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.client import GovernanceClient, RemoteError, decision_json
from l7.errors import ConfigError
from l7.gateway.grant import GrantIssuer, kid_of, load_grant_public_key
from l7.server.convert import request_to_proto
from l7.stack import REPO_ROOT, Stack, StackConfig
from l7.toolhost import ToolHost, ToolHostClient, ToolRegistry
from l7.toolhost.server import create_toolhost_server
from tests.conftest import request

pytestmark = pytest.mark.integration

APP = REPO_ROOT / "tests" / "integration" / "toolhost_app.py"
EXAMPLE = REPO_ROOT / "examples" / "tool_service.py"


@dataclass
class Rig:
    stack: Stack
    engine: GovernanceClient
    tools: ToolHostClient
    runs: Path

    def ran(self) -> list[str]:
        return self.runs.read_text().splitlines() if self.runs.exists() else []

    def authorized(
        self, name: str, *, tool: str = "read_file", rows: int = 3
    ) -> tuple[str, str, dict[str, Any]]:
        """An honestly obtained (decision id, grant, action) for reading file ``name``."""
        req = request("data.read", env="dev", target=("file", name), payload={"rows": rows})
        req["action"]["tool"] = tool
        resp = self.engine.decide_proto(request_to_proto(req))
        d = decision_json(resp.decision)
        assert (d["status"], bool(resp.grant)) == ("authorized", True), d
        return d["decision_id"], resp.grant, req["action"]

    def events(self, decision_id: str, event_type: str) -> list[dict[str, Any]]:
        assert self.stack.ledger is not None
        return [
            dict(e.payload)
            for e in self.stack.ledger.get_stream(decision_id)
            if e.event_type == event_type
        ]

    def refused(self, tool: str, grant: str, action: dict[str, Any]) -> RemoteError:
        with pytest.raises(RemoteError) as ei:
            self.tools.call(tool, grant, action)
        assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED, ei.value
        return ei.value


def _tool_process(
    app: Path, gateway: str, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "l7.cli.main", "tool", "serve", "--app", f"{app}:tools",
         "--gateway", gateway, "--addr", "127.0.0.1:0", "--env", "dev"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first.startswith("Layer-7 tool host on "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the tool host did not start: {first!r} {err}")
    return proc, first.split(" on ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    cfg = StackConfig(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        gateway=True,
        sweep_interval_s=0,
    )
    with Stack(cfg) as s:
        yield s


@pytest.fixture
def rig(stack: Stack, tmp_path: Path) -> Iterator[Rig]:
    runs = tmp_path / "tool-runs.txt"
    proc, target = _tool_process(APP, stack.gateway_target, {"L7_TEST_TOOL_RUNS": str(runs)})
    try:
        with GovernanceClient(stack.target) as engine, ToolHostClient(target) as tools:
            yield Rig(stack, engine, tools, runs)
    finally:
        _stop(proc)


def test_a_valid_grant_runs_the_tool_once_and_the_host_confirms_it(rig: Rig) -> None:
    did, grant, action = rig.authorized("a.txt")
    out = rig.tools.call("read_file", grant, action)
    assert (out["decision_id"], out["succeeded"]) == (did, True)
    assert out["result"] == {"read": "a.txt", "rows": 3}
    assert rig.ran() == [f"{did} a.txt"]
    (auth,) = rig.events(did, "execution.authorized")
    (conf,) = rig.events(did, "execution.confirmed")
    assert conf["execution_id"] == auth["execution_id"] == out["execution_id"]
    assert (conf["succeeded"], conf["result"]) == (True, {"read": "a.txt", "rows": 3})
    assert rig.engine.get_decision(did)["status"] == "executed"
    # The same grant again (replayed by whoever saw it): refused, the body does not run.
    err = rig.refused("read_file", grant, action)
    assert err.reason == "grant_replayed"
    assert rig.ran() == [f"{did} a.txt"]
    assert len(rig.events(did, "execution.authorized")) == 1


def test_no_grant_runs_nothing_and_consumes_nothing(rig: Rig) -> None:
    did, grant, action = rig.authorized("a.txt")
    assert rig.refused("read_file", "", action).reason == "grant_missing"
    assert rig.ran() == []
    assert rig.events(did, "execution.authorized") == []
    rig.tools.call("read_file", grant, action)  # the real grant is still unspent
    assert rig.ran() == [f"{did} a.txt"]


def test_forged_grants_run_nothing(rig: Rig) -> None:
    did, grant, action = rig.authorized("a.txt")
    _, other, _ = rig.authorized("b.txt")
    assert rig.stack.engine is not None
    d = rig.stack.engine.get_decision(did)
    own_key = GrantIssuer(Ed25519PrivateKey.generate()).issue(d)  # a key of its own
    spoofed = GrantIssuer(Ed25519PrivateKey.generate())
    assert rig.stack.grant_public_key_path is not None  # claims the engine's key id
    spoofed.kid = kid_of(load_grant_public_key(rig.stack.grant_public_key_path))
    h, _, s = grant.split(".")
    spliced = ".".join([h, other.split(".")[1], s])  # b.txt's claims under a.txt's signature
    for forged in (own_key, spoofed.issue(d), spliced, grant[:-4] + "AAAA", "not.a.grant"):
        assert rig.refused("read_file", forged, action).reason == "grant_invalid", forged
    assert rig.ran() == []
    assert rig.events(did, "execution.authorized") == []


def test_a_grant_for_another_action_runs_nothing(rig: Rig) -> None:
    did, grant, action = rig.authorized("a.txt")
    # The grant for a.txt with the action rewritten to b.txt: the gateway's hash check.
    moved = {**action, "target": {"type": "file", "id": "b.txt"}}
    assert rig.refused("read_file", grant, moved).reason == "action_mismatch"
    more = {**action, "payload": {"rows": 1_000_000}}
    assert rig.refused("read_file", grant, more).reason == "action_mismatch"
    # A grant issued for another tool of the same class: refused by the host before the
    # gateway sees it (not consumed), and by the gateway when the action is relabelled.
    rid, report_grant, report_action = rig.authorized("a.txt", tool="report-builder")
    assert rig.refused("read_file", report_grant, report_action).reason == "action_mismatch"
    relabelled = {**report_action, "tool": "read_file"}
    assert rig.refused("read_file", report_grant, relabelled).reason == "action_mismatch"
    assert rig.refused("no_such_tool", grant, action).reason == "tool_unknown"
    assert rig.ran() == []
    assert rig.events(did, "execution.authorized") == []
    assert rig.events(rid, "execution.authorized") == []
    rig.tools.call("read_file", grant, action)  # nothing above spent the a.txt grant
    assert rig.ran() == [f"{did} a.txt"]


def test_the_example_tool_service_runs_for_a_grant(stack: Stack, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "report.csv").write_text("id,total\n1,42\n")
    proc, target = _tool_process(EXAMPLE, stack.gateway_target, {"L7_TOOL_SANDBOX": str(sandbox)})
    try:
        with GovernanceClient(stack.target) as engine, ToolHostClient(target) as tools:
            rig = Rig(stack, engine, tools, tmp_path / "unused")
            _, grant, action = rig.authorized("report.csv")
            assert rig.refused("read_file", "", action).reason == "grant_missing"
            out = tools.call("read_file", grant, action)
    finally:
        _stop(proc)
    assert out["succeeded"] is True
    assert out["result"]["bytes"] == len("id,total\n1,42\n")


def test_the_tool_host_binds_loopback_only() -> None:
    host = ToolHost(ToolRegistry(), gateway=None, environment="dev")  # type: ignore[arg-type]
    for addr in ("0.0.0.0:0", "[::]:0", "192.0.2.7:50071"):
        with pytest.raises(ConfigError, match="loopback only"):
            create_toolhost_server(addr, host)
