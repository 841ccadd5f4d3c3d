"""Issue #13 item 4: reads are authorized and recorded.

Real OpenBao (OIDC issuer), real OPA with the signed bundle, a real SQLite ledger. Each
reader holds only what it really has: a token for itself, the network port, and nothing
else; the tests check what it can learn with it and what the ledger keeps of the read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.client import GovernanceClient, RemoteError
from l7.crypto import canonical, sha256_hex
from l7.errors import ConfigError
from l7.posture import is_loopback
from l7.stack import Stack, StackConfig
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world

pytestmark = pytest.mark.integration

ACCESS = "ledger-access/"
PAYLOAD = {"rows": 1200, "partition": "2019-q3"}
# name: (level, scopes, roles) on top of test_authority.PEOPLE
READERS = {
    "agent1": (1, ["*"], ["engineer"]),  # an L1 agent: approves nothing
    "aud1": (2, [], ["auditor"]),  # sees everything, as summaries
    "aud2": (2, [], ["auditor", "raw-reader"]),  # policy's payload_roles: raw payloads
}


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    for name, (level, scopes, roles) in READERS.items():
        openbao.make_user(name, level, team="platform", scopes=scopes, roles=roles)
    return openbao


@pytest.fixture
def world(people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(people, tmp_path)


def delete(actor: str = "alice", payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """High band: 2 x L3 managers in scope 'data'."""
    return request(
        "data.delete",
        env="production",
        target=("table", "orders"),
        actor=actor,
        payload=dict(PAYLOAD) if payload is None else payload,
    )


def deploy() -> dict[str, Any]:
    """High band, scope 'deploy': mgr3 (scopes data only) cannot approve it."""
    return request(
        "deploy.release",
        env="production",
        target=("service", "payments-api"),
        actor="alice",
        payload={"blast_radius": 40},
    )


def accessed(world: World, subject: str) -> list[dict[str, Any]]:
    """The ledger.accessed payloads in ``subject``'s access stream, read through the
    engine's SignedLedger (so each one is also proven signed by the engine tier)."""
    assert world.stack.ledger is not None
    return [
        dict(e.payload)
        for e in world.stack.ledger.get_stream(ACCESS + subject)
        if e.event_type == "ledger.accessed"
    ]


def get(world: World, who: str, decision_id: str) -> dict[str, Any]:
    with world.client(who) as c:
        return c.get_decision(decision_id)


def denied(world: World, who: str | None, rpc: str, req: Any) -> RemoteError:
    token = world.bao.token_for(who) if who else None
    with (
        GovernanceClient(world.stack.target, token=token) as c,
        pytest.raises(RemoteError) as ei,
    ):
        c._call(rpc, req)
    return ei.value


# -- GetDecision -----------------------------------------------------------------------------


def test_a_stranger_cannot_read_a_decision_and_leaves_no_answer(world: World) -> None:
    d = world.decide(delete())
    # outsider: L3 but scoped to payments; agent1: in scope but L1. Neither could approve.
    for who in ("outsider", "agent1"):
        err = denied(world, who, "GetDecision", pb.GetDecisionRequest(decision_id=d["decision_id"]))
        assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "read_denied")
        assert "rows" not in err.message and "2019-q3" not in err.message
        assert accessed(world, who) == []
    # No token at all: identity is on, so the port alone reads nothing.
    err = denied(world, None, "GetDecision", pb.GetDecisionRequest(decision_id=d["decision_id"]))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_requester_reads_its_own_decision_unrecorded(world: World) -> None:
    d = world.decide(delete())
    mine = get(world, "alice", d["decision_id"])
    assert (mine["view"], mine["action"]["payload"]) == ("full", PAYLOAD)
    assert accessed(world, "alice") == []


def test_an_approver_reads_the_payload_and_the_read_is_a_ledger_event(world: World) -> None:
    d = world.decide(delete())
    seen = get(world, "mgr1", d["decision_id"])
    assert seen["view"] == "full"
    assert seen["action"]["payload"] == PAYLOAD  # it signs this action's hash: it sees it
    (ev,) = accessed(world, "mgr1")
    assert (ev["rpc"], ev["mode"], ev["subject"]) == ("GetDecision", "raw", "mgr1")
    assert ev["what"]["decisions"] == [
        {"decision_id": d["decision_id"], "basis": "approver", "payload": True}
    ]
    # A second read is a second record: every read, not the first one only.
    get(world, "mgr1", d["decision_id"])
    assert len(accessed(world, "mgr1")) == 2
    assert world.stack.ledger is not None
    world.stack.ledger.verify()


def test_an_auditor_sees_a_summary_without_the_payload(world: World) -> None:
    d = world.decide(delete())
    s = get(world, "aud1", d["decision_id"])
    assert s["view"] == "summary"
    assert s["action"]["payload"] == {}
    assert s["payload_sha256"] == "sha256:" + sha256_hex(canonical(PAYLOAD))
    assert (s["action"]["class"], s["status"], s["intent_hash"]) == (
        "data.delete",
        "pending_authority",
        d["intent_hash"],
    )
    (ev,) = accessed(world, "aud1")
    assert ev["mode"] == "summary"
    assert ev["what"]["decisions"] == [
        {"decision_id": d["decision_id"], "basis": "auditor", "payload": False}
    ]
    # A role policy names in reads.payload_roles gets the raw payload (recorded as raw).
    raw = get(world, "aud2", d["decision_id"])
    assert (raw["view"], raw["action"]["payload"]) == ("full", PAYLOAD)
    assert accessed(world, "aud2")[0]["mode"] == "raw"


def test_escalation_takes_the_view_away_from_an_approver_below_the_new_floor(
    world: World,
) -> None:
    d = world.decide(delete())
    assert get(world, "mgr3", d["decision_id"])["view"] == "full"
    world.clock.advance(7200 + 1)  # high band window lapses: the clause needs L4 now
    err = denied(world, "mgr3", "GetDecision", pb.GetDecisionRequest(decision_id=d["decision_id"]))
    assert err.reason == "read_denied"
    # ... unless it already signed: an approver keeps seeing what it approved.
    d2 = world.decide(delete())
    world.approve("mgr3", d2)
    world.clock.advance(7200 + 1)
    assert get(world, "mgr3", d2["decision_id"])["status"] == "pending_authority"


# -- ListPending -----------------------------------------------------------------------------


def test_an_l1_agents_list_pending_holds_nothing_it_could_not_approve(world: World) -> None:
    others = [world.decide(delete()), world.decide(deploy())]
    own = world.decide(delete(actor="agent1"))
    assert own["status"] == "pending_authority"
    with world.client("agent1") as c:
        assert c.pending() == []  # not even its own: a requester never approves its own
    assert accessed(world, "agent1") == []
    # mgr3 (L3, scope data) sees the deletes, never the deploy; each one it could approve.
    with world.client("mgr3") as c:
        listed = {p["decision_id"] for p in c.pending()}
    assert listed == {others[0]["decision_id"], own["decision_id"]}
    (ev,) = accessed(world, "mgr3")
    assert ev["rpc"] == "ListPending"
    assert {x["decision_id"] for x in ev["what"]["decisions"]} == listed
    assert world.refused("mgr3", others[1]).reason == "out_of_scope"
    assert world.approve("mgr3", others[0])["status"] == "pending_authority"


def test_an_auditor_lists_every_pending_decision_as_a_summary(world: World) -> None:
    ds = [world.decide(delete()), world.decide(deploy())]
    with world.client("aud1") as c:
        listed = c.pending()
    assert {p["decision_id"] for p in listed} == {d["decision_id"] for d in ds}
    assert all(p["view"] == "summary" and p["action"]["payload"] == {} for p in listed)


# -- the other reads ---------------------------------------------------------------------------


def test_get_grant_and_get_restriction_need_a_token(world: World) -> None:
    d = world.decide(request("data.read", env="dev", actor="alice", payload={"rows": 1}))
    assert d["status"] == "authorized"
    err = denied(world, None, "GetGrant", pb.GetGrantRequest(decision_id=d["decision_id"]))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    err = denied(world, "mgr1", "GetGrant", pb.GetGrantRequest(decision_id=d["decision_id"]))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "not_requester")
    err = denied(world, None, "GetRestriction", pb.GetRestrictionRequest())
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    with world.client("alice") as c:
        assert c.get_grant(d["decision_id"])


def test_break_glass_list_shows_the_opener_its_own_and_reviewers_all(world: World) -> None:
    with world.client("sec1") as c:
        info, _ = c.breakglass(
            incident_id="INC-7",
            category="outage",
            text="payments API down; redeploying the last good release by hand",
            ttl_s=600,
            action_class="deploy.release",
            target=("service", "payments-api"),
        )
        assert [i["decision_id"] for i in c.list_breakglass()] == [info["decision_id"]]
    assert accessed(world, "sec1") == []  # its own
    with world.client("mgr1") as c:  # L3: could not review it, no auditor role
        assert c.list_breakglass() == []
    with world.client("sec2") as c:  # a different L4: the reviewer
        assert [i["decision_id"] for i in c.list_breakglass()] == [info["decision_id"]]
    (ev,) = accessed(world, "sec2")
    assert ev["what"]["decisions"][0]["basis"] == "reviewer"


# -- dev mode: no identity ---------------------------------------------------------------------


def test_without_identity_reads_are_loopback_only_and_the_server_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for addr in ("0.0.0.0:0", "[::]:0", "10.1.2.3:50051", "example.com:50051"):
        assert not is_loopback(addr)
        # one posture for every server (l7.posture): exposed means identity and mTLS
        with pytest.raises(ConfigError, match=r"non-loopback address.*without --oidc-issuer"):
            Stack(StackConfig(addr=addr, work_dir=tmp_path)).start()
    for addr in ("127.0.0.1:0", "[::1]:0", "localhost:50051", "unix:/run/l7.sock"):
        assert is_loopback(addr)
    cfg = StackConfig(ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}", work_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="l7.stack"), Stack(cfg) as stack:
        assert "identity is off" in caplog.text
        assert "loopback" in caplog.text or "local process" in caplog.text
        with GovernanceClient(stack.target) as c:
            d = c.decide(request(payload={"rows": 3}))
            assert c.get_decision(d["decision_id"])["action"]["payload"] == {"rows": 3}
