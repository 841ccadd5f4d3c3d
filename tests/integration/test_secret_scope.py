"""Issue #14 item 4: secret scope holds under break-glass. Real OpenBao (KV v2, identity,
ACL policies on each actor's entity), real OPA policy, the engine and the gateway over
gRPC; the ledger file's raw bytes are searched for values afterwards."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.client import RemoteError
from l7.gateway.client import GatewayClient, Governed, current_execution
from l7.secrets.allowlist import FieldAllowlist
from l7.secrets.interface import SecretInPayload
from l7.secrets.refs import BaoSecretStore
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world
from tests.integration.test_breakglass import TARGET, open_bg

pytestmark = pytest.mark.integration

RNG = random.Random(14)
# Values are made at run time; the "plain" one is deliberately low-entropy words, which no
# credential-shape detector flags: only the gateway's own knowledge of it can keep it out.
VALUES = {
    "app/db": "".join(RNG.choice(string.ascii_letters) for _ in range(24)),
    "app/plain": "tulip-harbor-" + "".join(RNG.choice(string.ascii_lowercase) for _ in range(6)),
    "payroll/db": "".join(RNG.choice(string.ascii_letters) for _ in range(24)),
    "incident/db": "".join(RNG.choice(string.ascii_letters) for _ in range(24)),
}
PAYROLL = "vault:secret/payroll/db#password"
INCIDENT = "vault:secret/incident/db#password"
APP = "vault:secret/app/db#password"
PLAIN = "vault:secret/app/plain#password"


@pytest.fixture(scope="module")
def scoped_bao(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    for path, value in VALUES.items():
        openbao.client.secrets.kv.v2.create_or_update_secret(
            path=path, secret={"password": value}, mount_point="secret"
        )
    openbao.grant_read("alice", "kv-app", ["secret/data/app/*"])
    openbao.grant_read("sec1", "kv-app", ["secret/data/app/*"])
    openbao.grant_read("exec1", "kv-all", ["secret/data/*"])
    return openbao


@pytest.fixture
def world(scoped_bao: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(scoped_bao, tmp_path, secret_store=BaoSecretStore(scoped_bao.client))


def action(ref: str) -> dict[str, Any]:
    return {
        "class": "deploy.release",
        "intent": "roll back payments-api to v2.4.0",
        "target": {"type": TARGET[0], "id": TARGET[1]},
        "payload": {"db_password": ref},
    }


def authorize(world: World, grant: str, ref: str, who: str | None) -> Any:
    gw = GatewayClient(world.stack.gateway_target)
    try:
        token = world.bao.user_token(who) if who else None
        return gw.authorize(grant, action(ref), environment="production", actor_bao_token=token)
    finally:
        gw.close()


def refused(world: World, grant: str, ref: str, who: str | None) -> RemoteError:
    with pytest.raises(RemoteError) as ei:
        authorize(world, grant, ref, who)
    assert ei.value.code == grpc.StatusCode.PERMISSION_DENIED or ei.value.reason.startswith(
        "secret_"
    )
    return ei.value


def resolutions(world: World, decision_id: str) -> list[tuple[str, str, str, str, bool]]:
    """(actor, ref, decision, reason, widened) of each recorded resolution."""
    assert world.stack.ledger is not None
    return [
        (
            e.payload["subject"],
            e.payload["what"]["ref"],
            e.payload["what"]["decision"],
            e.payload["reason"],
            e.payload["what"]["widened"],
        )
        for e in world.stack.ledger.get_stream(decision_id)
        if e.event_type == "ledger.accessed" and e.payload.get("mode") == "secret_resolve"
    ]


def ledger_bytes(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))


def test_breakglass_resolves_only_within_the_openers_prefixes_widened_where_policy_says(
    world: World, tmp_path: Path
) -> None:
    """The attack of issue #14: exec1's own Decide is DENIED the payroll reference
    (secret_refs_allowed), yet a break-glass grant used to resolve it. Its OpenBao token
    could read it; policy's scope for the role could not."""
    d = world.decide(
        {**request("deploy.release", env="production", target=TARGET, actor="exec1", level=5,
                   payload={"db_password": PAYROLL}),
         "context": {"actor": {"id": "exec1", "role": "executive", "level": 5},
                     "environment": "production", "request_source": "test"}}
    )  # fmt: skip
    assert d["outcome"] == "DENY"
    assert {g["id"] for g in d["gates"] if not g["passed"]} == {"secret_refs_allowed"}
    info, grant = open_bg(world, "exec1")
    err = refused(world, grant, PAYROLL, "exec1")
    assert err.reason == "secret_out_of_scope"
    # policy widens break-glass for executives to incident credentials, and only there
    ok = authorize(world, grant, INCIDENT, "exec1")
    assert dict(ok.secrets) == {INCIDENT: VALUES["incident/db"]}
    assert resolutions(world, info["decision_id"]) == [
        ("exec1", PAYROLL, "refused", "secret_out_of_scope", False),
        ("exec1", INCIDENT, "allowed", "", True),
    ]
    raw = ledger_bytes(tmp_path)
    assert PAYROLL.encode() in raw and INCIDENT.encode() in raw  # the references, recorded
    assert not any(v.encode() in raw for v in VALUES.values())  # never a value


def test_the_actors_own_openbao_capability_is_checked_with_its_own_token(
    world: World,
) -> None:
    """sec1's role reaches all of secret/ (policy), but sec1's OpenBao policy reads only
    secret/data/app/*: the payroll reference is refused. Another's broader token, or none,
    does not stand in for the actor's own."""
    info, grant = open_bg(world, "sec1")
    assert refused(world, grant, PAYROLL, "sec1").reason == "secret_forbidden"
    other = refused(world, grant, PAYROLL, "exec1")
    assert other.reason == "secret_forbidden" and "belongs to exec1" in other.message
    assert refused(world, grant, PAYROLL, None).reason == "secret_forbidden"
    ok = authorize(world, grant, APP, "sec1")
    assert dict(ok.secrets) == {APP: VALUES["app/db"]}
    assert [(r[1], r[2], r[3]) for r in resolutions(world, info["decision_id"])] == [
        (PAYROLL, "refused", "secret_forbidden"),
        (PAYROLL, "refused", "secret_forbidden"),
        (PAYROLL, "refused", "secret_forbidden"),
        (APP, "allowed", ""),
    ]


def test_a_resolved_secret_the_tool_returns_never_reaches_the_ledger(
    world: World, tmp_path: Path
) -> None:
    """A tool that echoes the secret it was handed, nested deep in its return value: the
    result is screened at every depth and every value this execution resolved is replaced,
    whatever its shape (the 'plain' one looks like words)."""
    gov = Governed(
        engine=world.stack.target,
        gateway=world.stack.gateway_target,
        actor={"id": "alice", "role": "engineer", "level": 1},
        environment="dev",
        token=world.bao.token_for("alice"),
        bao_token=world.bao.user_token("alice"),
    )
    decided: list[str] = []

    @gov.tool(
        "data.read",
        target=lambda name: ("dataset", name),
        payload=lambda name: {"db_password": APP, "plain": PLAIN},
    )
    def read(name: str) -> dict[str, Any]:
        ex = current_execution()
        decided.append(ex.decision_id)
        words = ex.secret(PLAIN)
        return {"rows": 1, "debug": {"conn": [{"password": ex.secret(APP)}, f"pw={words}"]},
                "note": f"used {words}"}  # fmt: skip

    assert read("orders")["rows"] == 1
    gov.close()
    assert world.stack.ledger is not None
    (confirmed,) = [
        e.payload
        for e in world.stack.ledger.get_stream(decided[0])
        if e.event_type == "execution.confirmed"
    ]
    text = repr(confirmed["result"])
    assert "[redacted:" in text and "rows" in text
    raw = ledger_bytes(tmp_path)
    assert VALUES["app/db"].encode() not in raw
    assert VALUES["app/plain"].encode() not in raw
    assert sorted((r[1], r[2]) for r in resolutions(world, decided[0])) == [
        (APP, "allowed"),
        (PLAIN, "allowed"),
    ]


def test_the_field_allowlist_screens_below_the_top_level() -> None:
    """The allowlist's own check, as the engine and gateway ledgers apply it: an allowed
    top-level key no longer carries a credential in a nested object."""
    allow = FieldAllowlist.from_policy(
        {"mode": "refuse", "event_types": {"execution.confirmed": ["result"]}}
    )
    ok, _ = allow.apply("execution.confirmed", {"result": {"rows": 1, "ref": APP}})
    assert ok == {"result": {"rows": 1, "ref": APP}}
    with pytest.raises(SecretInPayload) as ei:
        allow.apply("execution.confirmed", {"result": {"a": [{"api_token": "hunter2-x"}]}})
    assert ei.value.field == "ledger.execution.confirmed.result.a[0].api_token"
    drop = FieldAllowlist.from_policy(
        {"mode": "drop", "event_types": {"execution.confirmed": ["result"]}}
    )
    kept, dropped = drop.apply("execution.confirmed", {"result": {"a": {"password": "x1"}}})
    assert kept == {"result": {"a": {"password": "[redacted:secret_field]"}}}
    assert dropped == ("ledger.execution.confirmed.result.a.password",)
