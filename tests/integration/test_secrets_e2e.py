"""Issue #6 end to end: secrets never reach the ledger. Real OpenBao (KV v2, transit,
identity), real OPA, a real SQLite ledger file whose raw bytes are searched afterwards."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest

from l7.client import GovernanceClient, RemoteError
from l7.gateway.client import Governed, current_execution
from l7.secrets.envelope import Envelope, ensure_key
from l7.secrets.refs import BaoSecretStore
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world

pytestmark = pytest.mark.integration

RNG = random.Random(7)


def _fake(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


# Secret-shaped values are assembled at run time: none is committed.
DB_PASSWORD = _fake(24)
AWS_KEY = "AKIA" + _fake(16, string.ascii_uppercase + string.digits)
PEM = "-----BEGIN " + "PRIVATE KEY-----\n" + _fake(64) + "\n-----END " + "PRIVATE KEY-----"
NOTE = "customer asked to be called back about card ending 4242"


def _kv(bao: OpenBaoDev) -> hvac.Client:
    c = bao.client
    c.secrets.kv.v2.create_or_update_secret(
        path="app/db", secret={"password": DB_PASSWORD}, mount_point="secret"
    )
    c.secrets.kv.v2.create_or_update_secret(
        path="payroll/db", secret={"password": _fake(20)}, mount_point="secret"
    )
    bao.enable_transit()
    ensure_key(c, "l7-envelope")
    return c


@pytest.fixture(scope="module")
def sbao(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    openbao.make_user("aud1", 4, team="audit", scopes=["*"], roles=["auditor"])
    _kv(openbao)
    openbao.grant_read("alice", "kv-app", ["secret/data/app/*"])  # alice's own capability
    return openbao


@pytest.fixture
def world(sbao: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(
        sbao,
        tmp_path,
        secret_store=BaoSecretStore(sbao.client),
        envelope=Envelope(sbao.client, "l7-envelope"),
    )


def as_alice(world: World, payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return world.decide(request(actor="alice", payload=payload, **kw))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"config": {"db": {"dsn": f"postgresql://app:{DB_PASSWORD}@db/prod"}}}, "config.db.dsn"),
        ({"steps": [{"env": {"AWS_ACCESS_KEY_ID": AWS_KEY}}]}, "steps[0].env.AWS_ACCESS_KEY_ID"),
        ({"tls": {"key": PEM}}, "tls.key"),
    ],
)
def test_a_secret_in_a_nested_field_is_refused_naming_the_field(
    world: World, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(RemoteError) as ei:
        as_alice(world, payload)
    err = ei.value
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "secret_in_payload")
    assert err.field == f"action.payload.{field}"
    for value in (DB_PASSWORD, AWS_KEY, PEM):
        assert value not in err.message


def test_secret_refs_reach_policy_as_metadata_and_are_checked(world: World) -> None:
    ok = as_alice(world, {"db_password": "vault:secret/app/db#password"})
    assert ok["outcome"] == "ALLOW", ok["reasons"]
    missing = as_alice(world, {"db_password": "vault:secret/app/nope#password"})
    forbidden = as_alice(world, {"db_password": "vault:secret/payroll/db#password"})
    for d in (missing, forbidden):
        assert d["outcome"] == "DENY"
        failed = {g["id"] for g in d["gates"] if not g["passed"]}
        assert failed == {"secret_refs_allowed"}
    with pytest.raises(RemoteError) as ei:
        as_alice(world, {"db_password": "vault:secret/../db#password"})
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_gateway_resolves_secret_refs_just_in_time_for_the_tool(world: World) -> None:
    seen: list[str] = []
    gov = Governed(
        engine=world.stack.target,
        gateway=world.stack.gateway_target,
        actor={"id": "alice", "role": "engineer", "level": 1},
        environment="dev",
        token=world.bao.token_for("alice"),
        bao_token=world.bao.user_token("alice"),
    )

    @gov.tool(
        "data.read",
        target=lambda name: ("dataset", name),
        payload=lambda name: {"db_password": "vault:secret/app/db#password"},
    )
    def read(name: str) -> dict[str, Any]:
        seen.append(current_execution().secret("vault:secret/app/db#password"))
        return {"rows": 1}

    assert read("orders") == {"rows": 1}
    assert seen == [DB_PASSWORD]
    gov.close()


def test_envelope_field_decrypts_only_for_allowed_roles_and_is_recorded(world: World) -> None:
    d = as_alice(world, {"customer_note": NOTE})
    sealed = d["action"]["payload"]["customer_note"]
    assert sealed.startswith("vault:v1:") and NOTE not in sealed
    with world.client("mgr1") as c, pytest.raises(RemoteError) as ei:
        c._call(
            "OpenEnvelope",
            pb.OpenEnvelopeRequest(decision_id=d["decision_id"], field="customer_note"),
        )
    assert ei.value.reason == "decrypt_forbidden"
    with world.client("aud1") as c:
        r = c._call(
            "OpenEnvelope",
            pb.OpenEnvelopeRequest(decision_id=d["decision_id"], field="customer_note"),
        )
    assert r.plaintext == NOTE
    assert world.stack.ledger is not None
    accessed = [
        e.payload
        for e in world.stack.ledger.get_stream(d["decision_id"])
        if e.event_type == "ledger.accessed"
    ]
    assert accessed == [
        {"mode": "decrypt", "subject": "aud1", "role": "auditor", "field": "customer_note"}
    ]


def test_the_ledger_file_holds_no_secret_after_a_run_that_handled_them(
    world: World, tmp_path: Path
) -> None:
    for payload in (
        {"config": {"dsn": f"postgresql://app:{DB_PASSWORD}@db/prod"}},
        {"k": AWS_KEY},
        {"tls": PEM},
    ):
        with pytest.raises(RemoteError):
            as_alice(world, payload)
    as_alice(world, {"db_password": "vault:secret/app/db#password"})
    as_alice(world, {"customer_note": NOTE})
    test_gateway_resolves_secret_refs_just_in_time_for_the_tool(world)
    assert world.stack.ledger is not None
    world.stack.ledger.verify()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))
    assert raw, "the ledger file exists"
    for value in (DB_PASSWORD, AWS_KEY, PEM.split("\n")[1], NOTE):
        assert value.encode() not in raw
    assert b"vault:secret/app/db#password" in raw  # the reference is what is recorded


def test_openbao_down_denies_decisions_needing_secret_refs(
    openbao_private: OpenBaoDev, tmp_path: Path
) -> None:
    _setup_people(openbao_private)
    _kv(openbao_private)
    for w in _world(openbao_private, tmp_path, secret_store=BaoSecretStore(openbao_private.client)):
        token = openbao_private.token_for("alice")
        openbao_private.seal()
        with GovernanceClient(w.stack.target, token=token) as c:
            d = c.decide(request(actor="alice", payload={"p": "vault:secret/app/db#password"}))
            plain = c.decide(request(actor="alice", key="no-secrets"))
        assert (d["outcome"], d["reason_code"]) == ("DENY", "secrets_degraded")
        assert plain["outcome"] == "ALLOW"  # only what needs a secret is refused
        openbao_private.unseal()
