"""Issue #13 item 6: secrets are screened wherever text enters, not only in ``action``.

Real stack: OpenBao (OIDC issuer), real OPA with the signed bundle, the engine and the
gateway over gRPC, and the ledger in a SQLite file or a throwaway PostgreSQL cluster.
A unique marker secret (plain, base64, hex or URL-encoded) is planted in one field of one
RPC per case; every case is refused naming that field (never the value), except a
ConfirmExecution result, which is recorded redacted. Afterwards the raw ledger files
(SQLite, or PostgreSQL's data directory after a CHECKPOINT), every file the stack wrote and
the captured logs are searched for every planted marker and hold none, while a harmless
canary sent the same way is found (so the search is looking in the right place).
"""

from __future__ import annotations

import base64
import logging
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from l7.authority.approval import Rationale, Verdict
from l7.client import RemoteError
from l7.gateway.client import GatewayClient
from l7.server.convert import request_to_proto
from l7.stack import StackConfig
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.integration import test_authority as authority_tests
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world
from tests.ledger.postgres import PostgresCluster

pytestmark = pytest.mark.integration

RNG = random.Random(13)
ENCODINGS = ("plain", "base64", "hex", "url")


def new_marker() -> str:
    """A fresh AWS-access-key-shaped marker (assembled at run time, never committed)."""
    return "AKIA" + "".join(RNG.choices(string.ascii_uppercase + string.digits, k=16))


def encode(value: str, how: str) -> str:
    if how == "base64":
        return base64.b64encode(value.encode()).decode()
    if how == "hex":
        return value.encode().hex()
    if how == "url":
        return "".join(f"%{b:02X}" for b in value.encode())
    return value


@dataclass(frozen=True)
class Case:
    """Plant ``value`` in one field of one RPC; ``field`` is the path the refusal names."""

    rpc: str
    field: str
    plant: Callable[[World, Any], Any]


def _decide(path: str) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        req = request(actor="alice", key=f"k-{uuid.uuid4()}")
        node: Any = req
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = f"x {value} y" if leaf in ("intent", "request_source", "session") else value
        with w.client("alice") as c:
            return c.decide(req)

    return plant


def _pending(w: World) -> dict[str, Any]:
    return w.decide(
        request("data.delete", env="production", target=("table", "orders"), actor="alice")
    )


def _approve(field: str, verdict: Verdict) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        d = _pending(w)
        why = {"summary": "reviewed in CAB", "ticket": "CAB-7", "risk_accepted": "rollback"}
        why[field] = f"see {value}"
        signed = w.signed("mgr1", d, verdict=verdict, rationale=Rationale(**why))
        with w.client("mgr1") as c:
            return (
                c.approve(d["decision_id"], signed)
                if verdict is Verdict.APPROVE
                else (c.reject(d["decision_id"], signed))
            )

    return plant


def _breakglass(field: str) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        args: dict[str, Any] = {
            "incident_id": "INC-13",
            "category": "outage",
            "text": "payments API returns 500s for every request; rolling back by hand",
            "ttl_s": 600,
            "action_class": "deploy.release",
            "target": ("service", "payments-api"),
        }
        if field == "target.id":
            args["target"] = ("service", value)
        else:
            leaf = field.rsplit(".", maxsplit=1)[-1]
            args[leaf] = f"{args[leaf]} {value}"
        with w.client("sec1") as c:
            return c.breakglass(**args)

    return plant


def _review(w: World, value: str) -> Any:
    with w.client("sec1") as c:
        info, _ = c.breakglass(
            incident_id="INC-14",
            category="outage",
            text="payments API returns 500s for every request; rolling back by hand",
            ttl_s=600,
            action_class="deploy.release",
            target=("service", "payments-api"),
        )
    with w.client("sec2") as c:
        return c.review_breakglass(info["decision_id"], f"fine, used {value} to log in")


def _cancel(w: World, value: str) -> Any:
    d = _pending(w)
    with w.client("alice") as c:
        return c.cancel(d["decision_id"], f"wrong table; token was {value}")


def _delegate(field: str) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        args: dict[str, Any] = {"delegate": "mgr3", "scopes": ["data"], "reason": "on call"}
        args[field] = [value] if field == "scopes" else value
        with w.client("sec1") as c:
            return c.delegate(
                args["delegate"], 3, args["scopes"], w.clock.unix() + 600, args["reason"]
            )

    return plant


def _register(field: str) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        args = {"subject": "mgr3", "key_id": f"k-{uuid.uuid4()}", "method": "ed25519"}
        args[field] = value
        with w.client("sec1") as c:
            return c.register_key(args["subject"], args["key_id"], args["method"], b"\x01" * 32)

    return plant


def _revoke(w: World, value: str) -> Any:
    with w.client("sec1") as c:
        return c.revoke_key("mgr3", "mgr3-ed25519", f"leaked with {value}")


def _call(rpc: str, build: Callable[[str], Any], who: str = "sec1") -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        with w.client(who) as c:
            return c._call(rpc, build(value))

    return plant


def _gateway(field: str) -> Callable[[World, str], Any]:
    def plant(w: World, value: str) -> Any:
        req = request(actor="alice", key=f"k-{uuid.uuid4()}")
        with w.client("alice") as c:
            resp = c.decide_proto(request_to_proto(req))
        gw = GatewayClient(w.stack.gateway_target)
        try:
            if field == "action.intent":
                return gw.authorize(
                    resp.grant, {**req["action"], "intent": f"do {value}"}, environment="dev"
                )
            ex = gw.authorize(resp.grant, req["action"], environment="dev")
            ids = {"decision_id": resp.decision.decision_id, "execution_id": ex.execution_id}
            ids[field] = value
            return gw.confirm(
                ids["decision_id"], ids["execution_id"], True, {"rows": 1}, ex.confirmation_token
            )
        finally:
            gw.close()

    return plant


CASES = [
    Case("Decide", "idempotency_key", _decide("idempotency_key")),
    Case("Decide", "context.request_source", _decide("context.request_source")),
    Case("Decide", "context.session", _decide("context.session")),
    Case("Decide", "context.actor.id", _decide("context.actor.id")),
    Case("Decide", "context.actor.role", _decide("context.actor.role")),
    Case("Decide", "action.intent", _decide("action.intent")),
    Case("Decide", "action.target.id", _decide("action.target.id")),
    Case("Decide", "action.payload.note", _decide("action.payload")),
    Case(
        "Approve", "approval.payload_json.rationale.summary", _approve("summary", Verdict.APPROVE)
    ),
    Case("Approve", "approval.payload_json.rationale.ticket", _approve("ticket", Verdict.APPROVE)),
    Case(
        "Reject",
        "rejection.payload_json.rationale.risk_accepted",
        _approve("risk_accepted", Verdict.REJECT),
    ),
    Case("BreakGlass", "reason.text", _breakglass("reason.text")),
    Case("BreakGlass", "reason.incident_id", _breakglass("reason.incident_id")),
    Case("BreakGlass", "target.id", _breakglass("target.id")),
    Case("ReviewBreakGlass", "findings", _review),
    Case("Cancel", "reason", _cancel),
    Case("Delegate", "reason", _delegate("reason")),
    Case("Delegate", "delegate", _delegate("delegate")),
    Case("Delegate", "scopes[0]", _delegate("scopes")),
    Case("RegisterKey", "subject", _register("subject")),
    Case("RegisterKey", "key_id", _register("key_id")),
    Case("RevokeKey", "reason", _revoke),
    Case(
        "ClearRestriction",
        "reason",
        _call("ClearRestriction", lambda v: pb.ClearRestrictionRequest(reason=v)),
    ),
    Case(
        "GetDecision",
        "decision_id",
        _call("GetDecision", lambda v: pb.GetDecisionRequest(decision_id=v)),
    ),
    Case("GetGrant", "decision_id", _call("GetGrant", lambda v: pb.GetGrantRequest(decision_id=v))),
    Case(
        "OpenEnvelope",
        "field",
        _call(
            "OpenEnvelope", lambda v: pb.OpenEnvelopeRequest(decision_id=str(uuid.uuid4()), field=v)
        ),
    ),
    Case("Authorize", "action.intent", _gateway("action.intent")),
    Case("ConfirmExecution", "execution_id", _gateway("execution_id")),
    Case("ConfirmExecution", "decision_id", _gateway("decision_id")),
]


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


def _plant_everywhere(w: World) -> tuple[list[str], str]:
    """Run every case with a fresh marker (each encoding in turn); returns the planted
    strings (encoded and decoded) and a canary that must reach the ledger."""
    planted: list[str] = []
    for i, case in enumerate(CASES):
        marker = new_marker()
        how = ENCODINGS[i % len(ENCODINGS)]
        value = encode(marker, how)
        planted += [marker, value]
        with pytest.raises(RemoteError) as ei:
            case.plant(w, {"note": value} if case.field.startswith("action.payload") else value)
        err = ei.value
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "secret_in_payload"), (
            case,
            how,
            err,
        )
        assert err.field == case.field, (case, how)
        assert marker not in err.message and value not in err.message
    # A ConfirmExecution result is recorded, with the secret redacted out of it.
    marker = new_marker()
    planted.append(marker)
    canary = f"canary-{uuid.uuid4()}"
    req = request(actor="alice", key=f"k-{uuid.uuid4()}")
    req["action"]["intent"] = f"read orders {canary}"
    with w.client("alice") as c:
        resp = c.decide_proto(request_to_proto(req))
    gw = GatewayClient(w.stack.gateway_target)
    ex = gw.authorize(resp.grant, req["action"], environment="dev")
    gw.confirm(
        resp.decision.decision_id,
        ex.execution_id,
        True,
        {"rows": 3, "echo": f"used {marker}", "api_token": "hunter2", "note": canary},
        ex.confirmation_token,
    )
    gw.close()
    (confirmed,) = w.payloads({"decision_id": resp.decision.decision_id}, "execution.confirmed")
    assert confirmed["result"] == {
        "rows": 3,
        "echo": "used [redacted:aws_access_key]",
        "api_token": "[redacted:secret_field]",
        "note": canary,
    }
    planted.append("hunter2")
    return planted, canary


def _files_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _assert_nowhere(planted: list[str], raw: bytes, logs: str, canary: str) -> None:
    assert canary.encode() in raw, "the search must see what the ledger holds"
    for value in planted:
        assert value.encode() not in raw, f"a planted marker reached the ledger: {value[:6]}..."
        assert value not in logs, f"a planted marker reached the logs: {value[:6]}..."


def test_sqlite_ledger_and_logs_hold_no_planted_secret(
    people: OpenBaoDev, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for w in _world(people, tmp_path):
        planted, canary = _plant_everywhere(w)
        assert w.stack.ledger is not None
        w.stack.ledger.verify()
    raw = _files_under(tmp_path)  # the ledger file, its WAL, OPA's log, everything written
    _assert_nowhere(planted, raw, caplog.text, canary)


def _pg_files(cluster: PostgresCluster) -> bytes:
    out = []
    for p in sorted(cluster.data.rglob("*")):
        try:
            out.append(p.read_bytes() if p.is_file() else b"")
        except FileNotFoundError:  # a temporary file the server just removed
            continue
    return b"".join(out)


def test_postgres_ledger_and_logs_hold_no_planted_secret(
    people: OpenBaoDev,
    tmp_path: Path,
    pg_cluster: PostgresCluster,
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # The same world as the SQLite test, with the ledger on PostgreSQL instead.
    monkeypatch.setattr(
        authority_tests,
        "StackConfig",
        lambda **kw: StackConfig(**{**kw, "ledger_url": pg_url}),
    )
    for w in _world(people, tmp_path):
        planted, canary = _plant_everywhere(w)
        assert w.stack.ledger is not None
        w.stack.ledger.verify()
    pg_cluster.sql("CHECKPOINT")  # every page on disk: the data directory is what we read
    _assert_nowhere(planted, _pg_files(pg_cluster) + _files_under(tmp_path), caplog.text, canary)
