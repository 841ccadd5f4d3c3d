"""Issue #13 item 1: delegation cannot launder self-approval or self-review.

Real OpenBao (OIDC issuer), real OPA with the signed bundle, a real SQLite ledger; the
requester (or the break-glass opener) hands its authority to another identity, directly
or through a chain, and that identity tries to approve (or review) for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.client import RemoteError
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world

pytestmark = pytest.mark.integration

HOUR = 3600


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


@pytest.fixture
def world(people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(people, tmp_path)


def delete_by_mgr2(world: World) -> dict[str, Any]:
    """High band, 2 x L3 managers; requested by mgr2 (itself an L3 manager)."""
    req = request("data.delete", env="production", target=("table", "orders"), actor="mgr2")
    req["context"]["actor"].update(role="manager", level=3)
    d = world.decide(req)
    assert d["status"] == "pending_authority", d
    return d


def delegate(world: World, who: str, to: str, level: int, scopes: list[str]) -> None:
    with world.client(who) as c:
        c.delegate(to, level, scopes, world.clock.unix() + HOUR, f"{to} covers for {who}")


def anomalies(world: World, d: dict[str, Any]) -> list[dict[str, Any]]:
    return world.payloads(d, "anomaly.detected")


def assert_never_authorized(world: World, d: dict[str, Any]) -> None:
    """No grant can be fetched, so no governed tool body can run for ``d``."""
    with world.client("mgr2") as c:
        now = c.get_decision(d["decision_id"])
        assert now["status"] == "pending_authority"
        with pytest.raises(RemoteError) as ei:
            c._call("GetGrant", pb.GetGrantRequest(decision_id=d["decision_id"]))
    assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert world.payloads(d, "execution.authorized") == []


def test_a_direct_delegate_of_the_requester_cannot_approve(world: World) -> None:
    d = delete_by_mgr2(world)
    delegate(world, "mgr2", "junior", 3, ["data"])  # junior (L2) now holds mgr2's L3
    err = world.refused("junior", d)
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "self_approval")
    assert "mgr2 -> junior" in err.message
    (a,) = anomalies(world, d)
    assert (a["kind"], a["subject"]) == ("self_approval", "junior")
    assert "mgr2 -> junior" in a["detail"]
    # One independent manager is not a quorum of two: the laundered signature never counted.
    after = world.approve("mgr1", d)
    assert after["status"] == "pending_authority"
    assert [x["approver"] for x in after["authority_progress"]["approvals"]] == ["mgr1"]
    assert_never_authorized(world, d)


def test_a_delegate_of_a_delegate_cannot_approve_even_with_its_own_level(world: World) -> None:
    d = delete_by_mgr2(world)
    delegate(world, "mgr2", "junior", 2, ["data"])
    delegate(world, "junior", "mgr3", 2, ["data"])  # mgr3 is L3 itself; the chain still binds
    err = world.refused("mgr3", d)
    assert err.reason == "self_approval"
    assert "mgr2 -> junior -> mgr3" in err.message
    assert [(a["kind"], a["subject"]) for a in anomalies(world, d)] == [("self_approval", "mgr3")]
    world.approve("mgr1", d)
    assert_never_authorized(world, d)


def test_a_delegation_cycle_is_followed_without_looping(world: World) -> None:
    d = delete_by_mgr2(world)
    delegate(world, "mgr2", "junior", 2, ["data"])
    delegate(world, "junior", "mgr3", 2, ["data"])
    delegate(world, "mgr3", "junior", 3, ["data"])  # junior <-> mgr3
    assert world.refused("junior", d).reason == "self_approval"
    assert world.refused("mgr3", d).reason == "self_approval"


def test_delegations_from_others_still_work(world: World) -> None:
    """Control: the check looks for the requester only, not for any delegation."""
    d = delete_by_mgr2(world)
    delegate(world, "sec1", "mgr3", 3, ["data"])
    world.approve("mgr1", d)
    done = world.approve("mgr3", d)
    assert done["status"] == "authorized"
    assert "self_approval" not in [a["kind"] for a in anomalies(world, d)]


def test_an_expired_delegation_no_longer_binds(world: World) -> None:
    d = delete_by_mgr2(world)
    delegate(world, "mgr2", "mgr3", 3, ["data"])
    assert world.refused("mgr3", d).reason == "self_approval"
    world.clock.advance(HOUR + 1)
    d = delete_by_mgr2(world)
    world.approve("mgr1", d)
    assert world.approve("mgr3", d)["status"] == "authorized"


def _open_breakglass(world: World) -> dict[str, Any]:
    with world.client("sec1") as c:
        info, grant = c.breakglass(
            incident_id="INC-9",
            category="outage",
            text="payments API returns 500s for every request; rolling back by hand",
            ttl_s=600,
            action_class="deploy.release",
            target=("service", "payments-api"),
        )
    assert grant
    return info


@pytest.mark.parametrize("chain", [["sec2"], ["mgr1", "sec2"]])
def test_the_breakglass_opener_cannot_review_through_a_delegate(
    world: World, chain: list[str]
) -> None:
    info = _open_breakglass(world)
    holder = "sec1"
    for to in chain:
        delegate(world, holder, to, 3, ["deploy"])
        holder = to
    with world.client("sec2") as c, pytest.raises(RemoteError) as ei:
        c.review_breakglass(info["decision_id"], "looked fine to me")
    assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "self_review")
    expected = " -> ".join(["sec1", *chain])
    assert expected in ei.value.message
    d = {"decision_id": info["decision_id"]}
    (a,) = world.payloads(d, "anomaly.detected")
    assert (a["kind"], a["subject"]) == ("self_review", "sec2")
    assert expected in a["detail"]
    assert world.payloads(d, "breakglass.reviewed") == []
    with world.client("exec1") as c:
        assert [i["decision_id"] for i in c.list_breakglass()] == [info["decision_id"]]
        assert c.review_breakglass(info["decision_id"], "justified: INC-9")["reviewed_by"] == (
            "exec1"
        )
