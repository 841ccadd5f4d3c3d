"""Issue #12: an insider with write access to the ledger database cannot authorize anything.

The insider's access, as it really is: the application role's INSERT (no trigger touched),
so every forged row carries a correct sequence, prev_hash, hash and global_seq — the hash
chain verifies. What they cannot do is sign as a tier. Each test forges one authority
event and checks that every reader refuses it: GetGrant, the gateway's Authorize (with a
grant a compromised engine would have minted), the fold behind GetDecision, and
``l7 ledger verify`` (exit 1 naming the event); that the governed tool never runs; and
that the engine enters restriction mode. Both backends, against real OPA and processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.client import GovernanceClient, RemoteError
from l7.engine.state import fold_decision
from l7.gateway.client import GatewayClient
from l7.gateway.grant import GrantIssuer, load_or_create_grant_key
from l7.stack import Stack, StackConfig
from ledger import EventType, open_ledger
from ledger.pg_roles import provision
from tests.conftest import REPO, request
from tests.insider import forge_event
from tests.ledger.postgres import APP_PASSWORD, APP_ROLE

pytestmark = pytest.mark.integration

# the best forgery: an open execution window too (2100-01-01)
AUTHORIZED = {
    "status": "authorized",
    "outcome": "ALLOW",
    "reason_code": "policy",
    "reasons": [],
    "execute_by": 4102444800,
}


@pytest.fixture(params=["sqlite", "postgresql"])
def insider_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, str]]:
    """A stack with an in-process gateway, and the URL the insider writes to (on
    PostgreSQL the least-privileged application role: INSERT is all it takes)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = provision(request.getfixturevalue("pg_url"), APP_ROLE, APP_PASSWORD)
    cfg = StackConfig(
        ledger_url=url, work_dir=tmp_path, gateway=True, sweep_interval_s=0,
        integrity_check_s=3600,  # the monitor exists; the tests run its checks themselves
    )  # fmt: skip
    with Stack(cfg) as s:
        yield s, url


def _queued(stack: Stack) -> dict[str, Any]:
    with GovernanceClient(stack.target) as c:
        d = c.decide(request("data.delete", env="production", target=("table", "orders")))
    assert d["outcome"] == "QUEUE", d
    return d


def _verify(url: str, work_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", "ledger", "verify", "--ledger", url,
         "--work-dir", str(work_dir)],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip


def _minted_grant(stack: Stack, decision_id: str) -> str:
    """What a compromised (or unaware) engine would issue: a real grant over the forged
    fold, signed with the engine's own grant key."""
    assert stack.raw_ledger is not None
    raw = [e for e in stack.raw_ledger.get_stream(decision_id) if e.event_type != "batch.attested"]
    d = fold_decision(raw)
    assert d.status.value == "authorized"  # the forged event would authorize it
    key = load_or_create_grant_key(stack.config.work_dir / "keys" / "grant.pem")
    return GrantIssuer(key).issue(d)


def _assert_refused_everywhere(
    stack: Stack, url: str, decision_id: str, forged_type: str, forged_g: int
) -> None:
    ran: list[str] = []
    # The integrity monitor (public keys only) finds it on its own and enters restriction.
    assert stack.monitor is not None
    found = stack.monitor.check_now()
    assert found is not None and found.what == "authority_unsigned", found
    assert found.decision_id == decision_id
    assert stack.engine is not None and stack.engine.restriction.state().active
    with GovernanceClient(stack.target) as c:
        # GetGrant: no grant for a decision whose authority no tier signed
        with pytest.raises(RemoteError) as ei:
            c.get_grant(decision_id)
        assert (ei.value.code, ei.value.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ledger_integrity_failed",
        )
        assert f"global_seq {forged_g}" in ei.value.message
        # GetDecision: the fold refuses the stream too
        with pytest.raises(RemoteError) as ei:
            c.get_decision(decision_id)
        assert ei.value.reason == "ledger_integrity_failed"
    # Authorize: even a validly signed grant is refused at the gateway; nothing runs
    d_action = request("data.delete", env="production", target=("table", "orders"))["action"]
    if forged_type != "execution.confirmed":
        grant = _minted_grant(stack, decision_id)
        gw = GatewayClient(stack.gateway_target)
        try:
            with pytest.raises(RemoteError) as ei:
                gw.authorize(grant, d_action, environment="production")
                ran.append("tool")  # what the governed tool would do next
        finally:
            gw.close()
        assert ei.value.reason == "ledger_integrity_failed"
    assert ran == []
    # l7 ledger verify: exit 1, naming the event, the expected signer
    r = _verify(url, stack.config.work_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "authority_unsigned" in r.stderr
    assert f"decision {decision_id}" in r.stderr and f"global_seq {forged_g}" in r.stderr
    assert f"{forged_type} signed by" in r.stderr
    # restriction mode: the engine denies every governed action until an L4 clears it
    assert stack.engine is not None and stack.engine.restriction.state().active
    with GovernanceClient(stack.target) as c:
        after = c.decide(request(key="after-forgery"))
    assert (after["outcome"], after["reason_code"]) == ("DENY", "ledger_integrity_failed")


def test_a_forged_authorizing_enforcement_result_is_refused(
    insider_stack: tuple[Stack, str],
) -> None:
    stack, url = insider_stack
    d = _queued(stack)
    g = forge_event(
        url, d["decision_id"], "enforcement.result", AUTHORIZED,
        policy_version=d["policy_version"],
    )  # fmt: skip
    led = open_ledger(url, create=False)
    try:
        led.verify()  # the hash chain and the global sequence are perfect
    finally:
        led.close()
    _assert_refused_everywhere(stack, url, d["decision_id"], "enforcement.result", g)


def test_forged_approvals_completing_a_quorum_are_refused(
    insider_stack: tuple[Stack, str],
) -> None:
    stack, url = insider_stack
    d = _queued(stack)
    g = 0
    for who in ("mgr1", "mgr2", "sec1"):
        g = forge_event(
            url,
            d["decision_id"],
            EventType.APPROVAL_ADDED.value,
            {
                "approver": who, "level": 4, "roles": ["manager"], "team": "platform",
                "verdict": "approve", "method": "ed25519", "key_id": f"{who}-key",
                "signature_ref": "ed25519:" + "A" * 86, "payload_sha256": "0" * 64,
                "nonce": f"n-{who}", "rationale": {"text": "looks fine"},
            },
            actor=who, policy_version=d["policy_version"], unique_key=f"nonce:n-{who}",
        )  # fmt: skip
    g = forge_event(
        url, d["decision_id"], "enforcement.result", AUTHORIZED,
        policy_version=d["policy_version"],
    )  # fmt: skip
    # the first forged event is the one named: the first approval
    with GovernanceClient(stack.target) as c, pytest.raises(RemoteError) as ei:
        c.get_grant(d["decision_id"])
    assert ei.value.reason == "ledger_integrity_failed"
    assert "approval.added signed by engine" in ei.value.message
    _assert_refused_everywhere(stack, url, d["decision_id"], "approval.added", g - 3)


def test_a_forged_execution_confirmation_is_refused(insider_stack: tuple[Stack, str]) -> None:
    from l7.client import decision_json
    from l7.server.convert import request_to_proto

    stack, url = insider_stack
    req = request()
    with GovernanceClient(stack.target) as c:
        resp = c.decide_proto(request_to_proto(req))
    d = decision_json(resp.decision)
    assert d["outcome"] == "ALLOW" and resp.grant
    g = forge_event(
        url, d["decision_id"], "execution.confirmed",
        {"status": "executed", "execution_id": "x", "succeeded": True, "result": {},
         "confirmed_at": 0},
        actor="gateway", policy_version=d["policy_version"],
    )  # fmt: skip
    # the decision's own, genuine grant no longer runs: its stream holds an unsigned event
    gw = GatewayClient(stack.gateway_target)
    try:
        with pytest.raises(RemoteError) as ei:
            gw.authorize(resp.grant, req["action"], environment="dev")
    finally:
        gw.close()
    assert ei.value.reason == "ledger_integrity_failed"
    _assert_refused_everywhere(stack, url, d["decision_id"], "execution.confirmed", g)


def test_a_forged_restriction_clear_does_not_lift_restriction(
    insider_stack: tuple[Stack, str],
) -> None:
    stack, url = insider_stack
    assert stack.engine is not None
    stack.engine.restriction.enter("test: the chain failed verification")
    forge_event(
        url, "restriction/ledger", "anomaly.detected",
        {"kind": "restriction_cleared", "subject": "sec1", "detail": "all good"},
        actor="sec1",
    )  # fmt: skip
    stack.engine.restriction._cached = None
    assert stack.engine.restriction.state().active
    with GovernanceClient(stack.target) as c:
        d = c.decide(request(key="still-restricted"))
    assert (d["outcome"], d["reason_code"]) == ("DENY", "ledger_integrity_failed")


def test_a_forged_policy_activation_cannot_move_the_rollback_floor(tmp_path: Path) -> None:
    """The floor is the signed policy.activated history: a forged activation of another
    revision (to raise the floor, or to fake the history) stops the next start instead of
    being believed."""
    from l7.errors import LedgerIntegrityFailed

    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    cfg = StackConfig(ledger_url=url, work_dir=tmp_path, sweep_interval_s=0)
    with Stack(cfg) as s:
        assert s.bundle is not None
        revision = s.bundle.revision
    forge_event(
        url, "policy/local", "policy.activated",
        {"env": "local", "revision": "f" * 64, "bundle_sha256": "e" * 64,
         "previous_revision": revision, "rollback": False},
        policy_version="f" * 64,
    )  # fmt: skip
    with pytest.raises(LedgerIntegrityFailed, match=r"authority_unsigned.*policy\.activated"):
        Stack(cfg).start()
