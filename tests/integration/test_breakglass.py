"""Break-glass end to end: OpenBao identities, real OPA policy, the gateway enforcing the
scope and the window, reviews, and the ledger proving all of it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.client import RemoteError
from l7.gateway.client import GatewayClient
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world

pytestmark = pytest.mark.integration

TARGET = ("service", "payments-api")
REASON = "payments API returns 500s for every request; rolling back by hand"


@pytest.fixture(scope="module")
def bg_people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


@pytest.fixture
def world(bg_people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(bg_people, tmp_path)


def open_bg(world: World, who: str = "sec1", **kw: Any) -> tuple[dict[str, Any], str]:
    args: dict[str, Any] = {
        "incident_id": "INC-7",
        "category": "outage",
        "text": REASON,
        "ttl_s": 600,
        "action_class": "deploy.release",
        "target": TARGET,
    }
    args.update(kw)
    with world.client(who) as c:
        return c.breakglass(**args)


def action(cls: str = "deploy.release", target: tuple[str, str] = TARGET) -> dict[str, Any]:
    return {
        "class": cls,
        "intent": "roll back payments-api to v2.4.0",
        "target": {"type": target[0], "id": target[1]},
        "payload": {"version": "2.4.0"},
    }


def refused_open(world: World, who: str = "sec1", **kw: Any) -> RemoteError:
    with pytest.raises(RemoteError) as ei:
        open_bg(world, who, **kw)
    return ei.value


def test_l4_opens_executes_in_scope_and_another_l4_reviews(world: World) -> None:
    info, grant = open_bg(world)
    assert info["opened_by"] == "sec1" and grant
    assert info["expires_at"] - world.clock.unix() == 600
    gw = GatewayClient(world.stack.gateway_target)
    ex = gw.authorize(grant, action(), environment="production")  # any payload, in scope
    gw.confirm(
        info["decision_id"], ex.execution_id, True, {"rolled_back": True}, ex.confirmation_token
    )
    gw.close()
    with world.client("sec1") as c, pytest.raises(RemoteError) as self_review:
        c.review_breakglass(info["decision_id"], "fine")
    assert self_review.value.reason == "self_review"
    with world.client("mgr1") as c, pytest.raises(RemoteError) as low:
        c.review_breakglass(info["decision_id"], "fine")
    assert low.value.reason == "insufficient_level"
    with world.client("sec2") as c:
        reviewed = c.review_breakglass(info["decision_id"], "justified: INC-7 postmortem")
        assert reviewed["reviewed_by"] == "sec2"
        assert c.list_breakglass() == []
        with pytest.raises(RemoteError) as twice:
            c.review_breakglass(info["decision_id"], "again")
        assert twice.value.reason == "illegal_transition"
    assert world.stack.ledger is not None
    types = [e.event_type for e in world.stack.ledger.get_stream(info["decision_id"])]
    assert types == [
        "decision.created",
        "override.breakglass",
        "execution.authorized",
        "execution.confirmed",
        "anomaly.detected",  # sec1's attempt to review its own break-glass
        "breakglass.reviewed",
    ]
    world.stack.ledger.verify()


def test_l3_is_refused(world: World) -> None:
    err = refused_open(world, "mgr1")
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "breakglass_refused")
    assert "needs level [4, 5]" in err.message


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"incident_id": ""}, "incident_id is required"),
        ({"category": "boredom"}, "is not one of"),
        ({"text": "urgent"}, "at least 20 characters"),
        ({"action_class": ""}, "scope.action_class"),
    ],
)
def test_missing_or_malformed_reason_or_scope_is_refused(
    world: World, kw: dict[str, Any], says: str
) -> None:
    err = refused_open(world, **kw)
    assert err.reason == "breakglass_refused"
    assert says in err.message


def test_ttl_above_the_cap_is_clipped(world: World) -> None:
    info, _ = open_bg(world, ttl_s=7 * 24 * 3600)
    assert info["expires_at"] - world.clock.unix() == 3600  # policy cap


def test_grant_outside_scope_is_refused_at_the_gateway(world: World) -> None:
    _, grant = open_bg(world)
    gw = GatewayClient(world.stack.gateway_target)
    for other in (action(target=("service", "ledger-api")), action(cls="data.delete")):
        with pytest.raises(RemoteError) as ei:
            gw.authorize(grant, other, environment="production")
        assert ei.value.reason == "action_mismatch"
    gw.close()


def test_expired_breakglass_grant_is_refused(world: World) -> None:
    _, grant = open_bg(world, ttl_s=120)
    world.clock.advance(121)
    gw = GatewayClient(world.stack.gateway_target)
    with pytest.raises(RemoteError) as ei:
        gw.authorize(grant, action(), environment="production")
    gw.close()
    assert ei.value.reason == "grant_expired"


def test_unreviewed_past_deadline_alerts_and_blocks_the_next_one(world: World) -> None:
    info, _ = open_bg(world)
    world.clock.advance(86400 + 1)
    assert world.stack.breakglass is not None
    assert world.stack.breakglass.sweep() == 1
    assert world.stack.breakglass.sweep() == 0  # alerts once
    with world.client("sec2") as c:
        pending = c.list_breakglass()
    assert [(p["decision_id"], p["overdue"]) for p in pending] == [(info["decision_id"], True)]
    err = refused_open(world)
    assert "review is overdue" in err.message
    open_bg(world, "sec2")  # another L4 is not blocked
    with world.client("sec2") as c:
        c.review_breakglass(info["decision_id"], "late but justified")
    open_bg(world)  # reviewed: sec1 may open again
    assert world.stack.ledger is not None
    kinds = [
        e.payload.get("kind")
        for e in world.stack.ledger.get_stream(info["decision_id"])
        if e.event_type == "anomaly.detected"
    ]
    assert kinds == ["breakglass_review_overdue"]
    world.stack.ledger.verify()


def test_ledger_down_refuses_breakglass(world: World, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None, timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        err = refused_open(world)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "ledger_degraded")
    assert "never skips the ledger" in err.message
