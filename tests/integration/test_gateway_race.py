"""Two gateway processes racing on the same grants: exactly one use per grant succeeds,
and the ledger still verifies (issue #4 acceptance)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from l7.client import GovernanceClient, RemoteError
from l7.gateway.client import GatewayClient
from l7.policy.opa_process import free_port
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from tests.conftest import request

pytestmark = pytest.mark.integration
CALLS = 1000


def _wait_serving(target: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(target) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="l7.v1.Gateway"), timeout=1
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            time.sleep(0.1)
    raise AssertionError(f"gateway at {target} did not start")


@pytest.fixture
def two_gateways(tmp_path: Path) -> Iterator[tuple[Stack, list[str]]]:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with Stack(StackConfig(ledger_url=url, work_dir=tmp_path, sweep_interval_s=0)) as stack:
        procs, targets = [], []
        try:
            for i in range(2):
                target = f"127.0.0.1:{free_port()}"
                log = (tmp_path / f"gateway-{i}.log").open("wb")
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "l7.cli.main", "gateway", "serve",
                         "--addr", target, "--ledger", url, "--gateway-id", f"gw-{i}",
                         "--grant-public-key", str(stack.grant_public_key_path),
                         "--work-dir", str(tmp_path), "--env", "dev"],
                        stdout=log, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
                targets.append(target)
            for t in targets:
                _wait_serving(t)
            yield stack, targets
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=10)


def test_each_grant_is_used_exactly_once_across_two_gateways(
    two_gateways: tuple[Stack, list[str]],
) -> None:
    stack, targets = two_gateways
    with GovernanceClient(stack.target) as engine:
        work = []
        for i in range(CALLS):
            req = request(target=("dataset", f"ds-{i}"))
            r = engine.decide_proto(request_to_proto(req))
            assert r.grant, r.decision.outcome
            work.append((r.grant, req["action"]))
    gateways = [GatewayClient(t) for t in targets]

    def use(job: tuple[int, str, dict[str, object]]) -> tuple[int, str]:
        g, grant, action = job
        for _ in range(5):  # a busy SQLite writer is transient: retry that, nothing else
            try:
                ex = gateways[g].authorize(grant, action, environment="dev")
                if g == 0:  # the winner confirms half the time: a mixed run
                    gateways[g].confirm(
                        ex.decision_id, ex.execution_id, True, {"ok": True}, ex.confirmation_token
                    )
                return (g, "ok")
            except RemoteError as e:
                if e.reason != "ledger_degraded":
                    return (g, e.reason)
                time.sleep(0.05)
        return (g, "ledger_degraded")

    jobs = [(g, grant, action) for grant, action in work for g in (0, 1)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(use, jobs))
    for gw in gateways:
        gw.close()
    per_grant = [results[i : i + 2] for i in range(0, len(results), 2)]
    outcomes = Counter(tuple(sorted(r for _, r in pair)) for pair in per_grant)
    assert outcomes == {("grant_replayed", "ok"): CALLS}, outcomes
    assert stack.raw_ledger is not None
    events = list(stack.raw_ledger.iter_events())
    authorized = [e for e in events if e.event_type == "execution.authorized"]
    assert len(authorized) == CALLS
    assert len({e.decision_id for e in authorized}) == CALLS
    assert {e.payload["gateway"] for e in authorized} == {"gw-0", "gw-1"}  # both won some
    report = stack.raw_ledger.verify()
    assert report.events == len(events)
