"""Fuzz the gRPC edge of a real stack (OPA, SQLite ledger, engine, gateway, a JWKS-file
identity provider): Decide, Approve/Reject, BreakGlass and Authorize/ConfirmExecution
with random and mutated requests, deep nesting, huge strings, NaN/Infinity in Struct
values, invalid UTF-8 on the wire and random metadata.

Every call ends in a documented response or a clear refusal (``support.refusal``);
nothing is ever allowed that should not be: an invalid Decide is never answered, a
fuzzed approval never counts, a fuzzed grant never executes. Afterwards the servers
still answer a health check and a known-good Decide, and the ledger still verifies.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from l7.identity import JwksFile, JwtVerifier
from l7.stack import Stack, StackConfig
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc
from tests.conftest import example
from tests.fuzz.support import (
    DEEP,
    HUGE_TEXT,
    NON_FINITE,
    Refusal,
    depth_of,
    fuzz,
    has_non_finite,
    json_values,
    ld,
    refusal,
    struct_bytes,
)
from tests.l7.identity.forge import AUDIENCE, ISSUER, IssuerKey, jwks, new_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXAMPLES = ("deploy-prod.json", "funds-critical.json", "read-dev.json", "unknown-class.json")
CLASS_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
PAYLOAD_DEPTH = 16
CALL_TIMEOUT_S = 20


@dataclass(repr=False)
class World:
    stack: Stack
    key: IssuerKey
    engine: grpc.Channel
    gateway: grpc.Channel
    gov: pb_grpc.GovernanceStub
    gw: gpb_grpc.GatewayStub
    pending_id: str = ""
    grant: str = ""
    grant_action: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:  # keeps hypothesis' failure reports short
        return f"World(engine={self.stack.target}, gateway={self.stack.gateway_target})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def token(self, sub: str, level: int, roles: tuple[str, ...] = ("engineer",)) -> str:
        now = int(time.time())
        return self.key.sign(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": sub,
                "iat": now,
                "exp": now + 3600,
                "level": level,
                "roles": list(roles),
                "scopes": ["payments", "infra", "service", "dataset"],
            }
        )

    def bearer(self, sub: str, level: int, roles: tuple[str, ...] = ("engineer",)) -> Any:
        return (("authorization", f"Bearer {self.token(sub, level, roles)}"),)


def _channel(target: str) -> grpc.Channel:
    # The client may send more than the server accepts: the server's limit is under test.
    return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz-grpc")
    key = new_key("EdDSA", kid="fuzz-issuer")
    (tmp / "jwks.json").write_text(json.dumps(jwks(key)))
    verifier = JwtVerifier(JwksFile(tmp / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    cfg = StackConfig(
        env="local",
        ledger_url=f"sqlite:///{tmp / 'ledger.sqlite'}",
        work_dir=tmp,
        verifier=verifier,
        gateway=True,
        sweep_interval_s=0,
    )
    with Stack(cfg) as stack:
        engine, gateway = _channel(stack.target), _channel(stack.gateway_target)
        w = World(
            stack,
            key,
            engine,
            gateway,
            pb_grpc.GovernanceStub(engine),
            gpb_grpc.GatewayStub(gateway),
        )
        # A decision waiting for authority (for Approve) and an allowed one with a grant.
        queued = _decide(w, example("deploy-prod.json"))
        assert queued.decision.outcome == pb.OUTCOME_QUEUE
        w.pending_id = queued.decision.decision_id
        allowed = _decide(w, {**example("read-dev.json"), "idempotency_key": ""})
        assert allowed.decision.outcome == pb.OUTCOME_ALLOW and allowed.grant
        w.grant, w.grant_action = allowed.grant, example("read-dev.json")["action"]
        try:
            yield w
        finally:
            engine.close()
            gateway.close()


def decide_rpc(w: World) -> Callable[..., Any]:
    return _raw(w.engine, "/l7.v1.Governance/Decide")


def _decide(w: World, req: dict[str, Any]) -> pb.DecideResponse:
    actor = req["context"]["actor"]
    raw = decide_rpc(w)(
        encode_decide(req),
        timeout=CALL_TIMEOUT_S,
        metadata=w.bearer(actor["id"], actor["level"], (actor["role"],)),
    )
    return pb.DecideResponse.FromString(raw)


# -- building requests the way a hostile client can -------------------------------------


def payload_of(d: dict[str, Any]) -> dict[str, Any] | None:
    a = d.get("action")
    p = a.get("payload") if isinstance(a, dict) else None
    return p if isinstance(p, dict) else None


def encode_decide(d: dict[str, Any]) -> bytes:
    """The wire bytes of a DecideRequest from a JSON-shaped dict, keeping whatever junk it
    holds where the wire can carry it (NaN, any nesting, any text, any int32 level). The
    payload is appended as a second ``action`` field, which protobuf merges."""
    raw = build_decide(d).SerializeToString()
    p = payload_of(d)
    return raw if p is None else raw + ld(1, ld(4, struct_bytes(p)))


def build_decide(d: dict[str, Any]) -> pb.DecideRequest:
    """The DecideRequest of a JSON-shaped dict, without its payload (see encode_decide)."""
    msg = pb.DecideRequest()
    if isinstance(d.get("idempotency_key"), str):
        msg.idempotency_key = d["idempotency_key"]
    a = d.get("action")
    if isinstance(a, dict):
        msg.action.SetInParent()
        for src, dst in (("class", "action_class"), ("intent", "intent")):
            if isinstance(a.get(src), str):
                setattr(msg.action, dst, a[src])
        t = a.get("target")
        if isinstance(t, dict):
            msg.action.target.SetInParent()
            for k in ("type", "id"):
                if isinstance(t.get(k), str):
                    setattr(msg.action.target, k, t[k])
    c = d.get("context")
    if isinstance(c, dict):
        msg.context.SetInParent()
        for k in ("environment", "request_source", "session"):
            if isinstance(c.get(k), str):
                setattr(msg.context, k, c[k])
        actor = c.get("actor")
        if isinstance(actor, dict):
            msg.context.actor.SetInParent()
            for k in ("id", "role"):
                if isinstance(actor.get(k), str):
                    setattr(msg.context.actor, k, actor[k])
            lvl = actor.get("level")
            if isinstance(lvl, int) and not isinstance(lvl, bool):
                msg.context.actor.level = max(-(2**31), min(2**31 - 1, lvl))
    return msg


def _text_ok(v: Any, limit: int, *, required: bool) -> bool:
    if not isinstance(v, str):
        return not required and v is None
    if required and not v.strip():
        return False
    return len(v) <= limit and not CONTROL_RE.search(v)


def plainly_invalid(msg: pb.DecideRequest, payload: dict[str, Any] | None) -> str:
    """An independent reading of the request contract (proto comments + README): what
    makes this request one that must be refused. Empty when nothing obviously is."""
    a, c = msg.action, msg.context
    payload = payload or {}
    checks = [
        (not msg.HasField("action"), "no action"),
        (not _text_ok(a.action_class, 128, required=True), "class"),
        (not CLASS_RE.match(a.action_class), "class shape"),
        (not _text_ok(a.intent, 1024, required=True), "intent"),
        (not a.HasField("target"), "no target"),
        (not _text_ok(a.target.type, 256, required=True), "target.type"),
        (not _text_ok(a.target.id, 256, required=True), "target.id"),
        (has_non_finite(payload), "non-finite number"),
        (depth_of(payload) + 1 > PAYLOAD_DEPTH, "payload too deep"),
        (not msg.HasField("context") or not c.HasField("actor"), "no actor"),
        (not _text_ok(c.actor.id, 256, required=True), "actor.id"),
        (not 1 <= c.actor.level <= 5, "level"),
        (not _text_ok(c.actor.role, 256, required=False), "role"),
        (not _text_ok(c.environment, 64, required=False), "environment"),
        (not _text_ok(msg.idempotency_key, 128, required=False), "idempotency_key"),
    ]
    return ", ".join(why for bad, why in checks if bad)


# -- strategies ----------------------------------------------------------------------------

ANY_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["", " ", "\x00", "data.read", "deploy.release", "a\nb", "ALLOW", "../x"]),
    HUGE_TEXT,
)
LEVELS = st.one_of(st.integers(-3, 8), st.integers(-(2**40), 2**40), st.sampled_from([1, 2, 3]))
PAYLOADS = st.one_of(
    st.dictionaries(st.text(max_size=20), json_values(), max_size=6),
    st.builds(lambda v: {"deep": v}, DEEP),
    st.builds(lambda v: {"n": v}, NON_FINITE),
    st.builds(lambda s: {"blob": s}, HUGE_TEXT),
    st.builds(lambda n: {"k" + str(i): i for i in range(n)}, st.integers(0, 9000)),
)


@st.composite
def random_requests(draw: st.DrawFn) -> dict[str, Any]:
    def maybe(s: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.just(None), s, s, s))

    return {
        "action": maybe(
            st.fixed_dictionaries(
                {
                    "class": ANY_TEXT | st.sampled_from(["data.read", "deploy.release"]),
                    "intent": ANY_TEXT,
                    "target": st.fixed_dictionaries({"type": ANY_TEXT, "id": ANY_TEXT}),
                    "payload": PAYLOADS,
                }
            )
        ),
        "context": maybe(
            st.fixed_dictionaries(
                {
                    "actor": st.fixed_dictionaries(
                        {"id": ANY_TEXT, "role": ANY_TEXT, "level": LEVELS}
                    ),
                    "environment": ANY_TEXT | st.sampled_from(["dev", "production", "PROD"]),
                    "request_source": ANY_TEXT,
                    "session": ANY_TEXT,
                }
            )
        ),
        "idempotency_key": draw(ANY_TEXT),
    }


FIELDS = (
    "action.class",
    "action.intent",
    "action.target.type",
    "action.target.id",
    "action.payload",
    "context.actor.id",
    "context.actor.role",
    "context.actor.level",
    "context.environment",
    "context.request_source",
    "idempotency_key",
    "action",
    "context",
    "action.target",
    "context.actor",
)


@st.composite
def mutated_examples(draw: st.DrawFn) -> dict[str, Any]:
    req = copy.deepcopy(example(draw(st.sampled_from(EXAMPLES))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(FIELDS)).split(".")
        node = req
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else {}
        if not isinstance(node, dict):
            continue
        op = draw(st.sampled_from(["delete", "text", "level", "payload", "inject"]))
        leaf = path[-1]
        if op == "delete":
            node.pop(leaf, None)
        elif op == "text":
            node[leaf] = draw(ANY_TEXT)
        elif op == "level":
            node[leaf] = draw(LEVELS)
        elif op == "payload":
            node[leaf] = draw(PAYLOADS)
        else:  # inject something odd into the existing payload
            action = req.get("action")
            payload = action.get("payload") if isinstance(action, dict) else None
            if isinstance(payload, dict):
                payload[draw(st.text(max_size=10))] = draw(
                    st.one_of(NON_FINITE, DEEP, json_values(), HUGE_TEXT)
                )
    return req


def metadata_for(w: World, msg: pb.DecideRequest, data: st.DataObject) -> Any:
    """Usually a token that matches the request's actor (so the request reaches policy),
    sometimes none, a malformed header or random extra metadata."""
    kind = data.draw(st.sampled_from(["match", "match", "match", "none", "junk", "extra"]))
    actor = msg.context.actor
    if kind == "match" and actor.id.strip() and 1 <= actor.level <= 5 and len(actor.id) < 2000:
        return w.bearer(actor.id, actor.level, (actor.role,) if actor.role else ())
    if kind == "junk":
        value = data.draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
        return (("authorization", value),)
    if kind == "extra":
        keys = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_."), min_size=1)
        return tuple(
            (k, v)
            for k, v in data.draw(
                st.dictionaries(
                    keys.filter(lambda k: not k.startswith("grpc") and not k.endswith("-bin")),
                    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                    max_size=4,
                )
            ).items()
        )
    return ()


def call(fn: Callable[..., Any], msg: Any, metadata: Any = ()) -> tuple[Any, Refusal | None]:
    """One unary call: (response, None) or (None, refusal) — the refusal already checked.
    ``msg`` is a message, or wire bytes for a ``_raw`` callable. The outcome is recorded
    as a hypothesis event (``--hypothesis-show-statistics`` shows the mix)."""
    try:
        resp = fn(msg, timeout=CALL_TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as e:
        size = len(msg) if isinstance(msg, bytes) else msg.ByteSize()
        r = refusal(e, size)
        _event(f"refused {r.code.name} {r.reason}")
        return None, r
    _event("answered")
    return resp, None


def _event(text: str) -> None:
    with contextlib.suppress(InvalidArgument):  # outside a hypothesis test: no statistics
        event(text)


def _raw(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    return channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def check_decide(w: World, req: dict[str, Any], metadata: Any) -> None:
    body = encode_decide(req)
    raw, refused = call(_raw(w.engine, "/l7.v1.Governance/Decide"), body, metadata)
    why = plainly_invalid(build_decide(req), payload_of(req))
    if refused is not None:
        transport = refused.reason in ("message_too_large", "metadata_too_large")
        throttled = refused.reason == "rate_limited"  # per-caller limits come first
        if why and not transport and not throttled and "actor" not in why:
            assert refused.code in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.UNAUTHENTICATED,  # the token is checked after the shape
                grpc.StatusCode.PERMISSION_DENIED,
            ), (why, refused)
        return
    resp = pb.DecideResponse.FromString(raw)
    assert not why, f"an invalid request ({why}) was answered: {resp.decision.outcome}"
    assert resp.decision.decision_id and resp.decision.ledger.global_seq > 0
    assert resp.decision.outcome in (
        pb.OUTCOME_ALLOW,
        pb.OUTCOME_DENY,
        pb.OUTCOME_QUEUE,
        pb.OUTCOME_ESCALATE,
    )
    if resp.decision.outcome != pb.OUTCOME_ALLOW:
        assert not resp.grant


# -- Decide ----------------------------------------------------------------------------------


@fuzz()
@given(req=random_requests(), data=st.data())
def test_decide_random_requests(world: World, req: dict[str, Any], data: st.DataObject) -> None:
    check_decide(world, req, metadata_for(world, build_decide(req), data))


@fuzz()
@given(req=mutated_examples(), data=st.data())
def test_decide_mutated_examples(world: World, req: dict[str, Any], data: st.DataObject) -> None:
    check_decide(world, req, metadata_for(world, build_decide(req), data))


PLACEHOLDER = "\u2603PLACEHOLDER\u2603"  # 17 bytes of UTF-8, found once in the encoding


@fuzz()
@given(
    base=st.sampled_from(EXAMPLES),
    where=st.sampled_from(["class", "intent", "target.id", "actor.id", "environment", "key"]),
    junk=st.binary(min_size=17, max_size=17),
    data=st.data(),
)
def test_decide_invalid_utf8_in_string_fields(
    world: World, base: str, where: str, junk: bytes, data: st.DataObject
) -> None:
    """Bytes that are not UTF-8 where proto3 promises a string: decoded by the edge and
    refused as invalid_request (never INTERNAL 'Exception deserializing request')."""
    req = copy.deepcopy(example(base))
    a, c = req["action"], req["context"]
    target = {
        "class": (a, "class"),
        "intent": (a, "intent"),
        "target.id": (a["target"], "id"),
        "actor.id": (c["actor"], "id"),
        "environment": (c, "environment"),
        "key": (req, "idempotency_key"),
    }[where]
    target[0][target[1]] = PLACEHOLDER
    raw = encode_decide(req)
    marker = PLACEHOLDER.encode()
    assert raw.count(marker) == 1
    body = raw.replace(marker, junk)
    try:
        junk.decode("utf-8")
        valid_utf8 = True
    except UnicodeDecodeError:
        valid_utf8 = False
    _, refused = call(_raw(world.engine, "/l7.v1.Governance/Decide"), body, ())
    if not valid_utf8:
        assert refused is not None and refused.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.reason == "invalid_request" and refused.field == "request", refused


@fuzz()
@given(data=st.data())
def test_decide_mutated_bytes(world: World, data: st.DataObject) -> None:
    """A valid encoding with bytes flipped, cut, inserted, or plain random bytes."""
    raw = bytearray(encode_decide(example(data.draw(st.sampled_from(EXAMPLES)))))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "random"]))
    if kind == "random":
        raw = bytearray(data.draw(st.binary(max_size=2000)))
    elif kind == "cut":
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            if kind == "flip":
                raw[i] = data.draw(st.integers(0, 255))
            else:
                raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    resp, _ = call(_raw(world.engine, "/l7.v1.Governance/Decide"), bytes(raw), ())
    if resp is not None:  # it decoded: then it must be a valid request (and so judged)
        decoded = pb.DecideResponse.FromString(resp)
        sent = pb.DecideRequest.FromString(bytes(raw))
        payload = json_format.MessageToDict(sent.action.payload)
        assert not plainly_invalid(sent, payload), decoded.decision.outcome


@pytest.mark.parametrize("depth", [17, 25, 33, 34, 40, 120, 200])
def test_deep_struct_is_payload_too_deep_with_the_limit(world: World, depth: int) -> None:
    req = example("read-dev.json")
    req["action"]["payload"] = {"deep": _nest(depth)}
    _, refused = call(
        decide_rpc(world), encode_decide(req), world.bearer("agent-reporter", 1, ("agent",))
    )
    assert refused is not None
    assert (refused.code, refused.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "payload_too_deep")
    assert "deeper than" in refused.message


def _nest(depth: int) -> Any:
    v: Any = "x"
    for _ in range(depth):
        v = {"a": v}
    return v


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_payload_number_is_refused_naming_the_field(world: World, value: float) -> None:
    req = example("read-dev.json")
    req["action"]["payload"] = {"stats": {"ratio": value}}
    _, refused = call(
        decide_rpc(world), encode_decide(req), world.bearer("agent-reporter", 1, ("agent",))
    )
    assert refused is not None and refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.reason, refused.field) == ("number_not_finite", "action.payload.stats.ratio")


@pytest.mark.parametrize(
    ("field_path", "size", "reason"),
    [
        ("action.payload", 70_000, "payload_too_large"),
        ("action.intent", 2_000, "payload_too_large"),
        ("action.intent", 300_000, "message_too_large"),
    ],
)
def test_size_limits_are_clear(world: World, field_path: str, size: int, reason: str) -> None:
    req = example("read-dev.json")
    if field_path == "action.payload":
        req["action"]["payload"] = {"blob": "x" * size}
    else:
        req["action"]["intent"] = "x" * size
    _, refused = call(
        decide_rpc(world), encode_decide(req), world.bearer("agent-reporter", 1, ("agent",))
    )
    assert refused is not None and refused.reason == reason, refused
    if reason != "message_too_large":
        assert refused.field == field_path
        assert "limit" in refused.message or "larger than" in refused.message


# -- Approve / Reject ------------------------------------------------------------------------


@st.composite
def approval_payloads(draw: st.DrawFn, decision_id: str) -> str:
    good = {
        "type": "l7.approval",
        "version": 1,
        "decision_id": decision_id,
        "intent_hash": "sha256:" + "ab" * 32,
        "verdict": "approve",
        "approver": "mgr-fuzz",
        "issued_at": int(time.time()),
        "expires_at": int(time.time()) + 600,
        "nonce": "bm9uY2Utbm9uY2Utbm9uY2U",
        "rationale": {"summary": "reviewed", "ticket": None, "risk_accepted": None},
        "key_id": "k1",
    }
    kind = draw(
        st.sampled_from(
            ["well-formed", "mutated", "mutated", "json", "text", "deep", "nan", "huge"]
        )
    )
    if kind == "well-formed":  # reaches key lookup and signature verification
        good["key_id"] = draw(st.sampled_from(["k1", "unknown", ""]))
        good["verdict"] = draw(st.sampled_from(["approve", "reject"]))
        return json.dumps(good)
    if kind == "json":
        return json.dumps(draw(json_values()), allow_nan=True)
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "deep":
        n = draw(st.integers(1, 5000))
        return "[" * n + "]" * draw(st.sampled_from([n, 0, n // 2]))
    if kind == "nan":
        return json.dumps({**good, "issued_at": draw(NON_FINITE)}, allow_nan=True)
    if kind == "huge":
        return json.dumps({**good, "nonce": draw(HUGE_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.sampled_from(sorted(good)))
        op = draw(st.sampled_from(["drop", "replace", "extra"]))
        if op == "drop":
            good.pop(k, None)
        elif op == "replace":
            good[k] = draw(json_values(5))
        else:
            good[draw(st.text(max_size=8))] = draw(json_values(5))
    return json.dumps(good, allow_nan=True)


@fuzz()
@given(data=st.data())
def test_approve_and_reject_fuzzed_never_count(world: World, data: st.DataObject) -> None:
    """No fuzzed approval carries a signature by a registered key, so none may succeed."""
    decision_id = data.draw(st.one_of(st.just(world.pending_id), ANY_TEXT))
    signed = pb.SignedApproval(
        payload_json=data.draw(approval_payloads(world.pending_id)),
        method=data.draw(st.one_of(st.sampled_from(["ed25519", "vault-transit"]), ANY_TEXT)),
        signature=data.draw(
            st.one_of(
                st.binary(max_size=96).map(lambda b: base64.b64encode(b).decode()),
                st.text(max_size=100),
                st.just("vault:v1:" + "A" * 88),
            )
        ),
    )
    level = data.draw(st.integers(1, 5))
    approver = data.draw(st.sampled_from(["mgr-fuzz", *(f"mgr-{i}" for i in range(50))]))
    token = world.bearer(approver, level, ("approver",))
    meta = data.draw(st.sampled_from([token, token, token, (), (("authorization", "Bearer x"),)]))
    if data.draw(st.booleans()):
        msg: Any = pb.ApproveRequest(decision_id=decision_id, approval=signed)
        resp, refused = call(world.gov.Approve, msg, meta)
    else:
        msg = pb.RejectRequest(decision_id=decision_id, rejection=signed)
        resp, refused = call(world.gov.Reject, msg, meta)
    assert resp is None and refused is not None, f"a fuzzed approval was accepted: {resp}"


def test_well_formed_approval_by_an_unknown_key_is_refused(world: World) -> None:
    good = {
        "type": "l7.approval",
        "version": 1,
        "decision_id": world.pending_id,
        "intent_hash": "sha256:" + "ab" * 32,
        "verdict": "approve",
        "approver": "mgr-fuzz",
        "issued_at": int(time.time()),
        "expires_at": int(time.time()) + 600,
        "nonce": "bm9uY2Utbm9uY2Utbm9uY2U",
        "rationale": {"summary": "reviewed", "ticket": None, "risk_accepted": None},
        "key_id": "k1",
    }
    signed = pb.SignedApproval(payload_json=json.dumps(good), method="ed25519", signature="AA")
    _, refused = call(
        world.gov.Approve,
        pb.ApproveRequest(decision_id=world.pending_id, approval=signed),
        world.bearer("mgr-fuzz", 3, ("approver",)),
    )
    assert refused is not None
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "key_unknown")


def test_pending_decision_is_still_pending(world: World) -> None:
    got = world.gov.GetDecision(  # reads need a token (issue #13 item 4): an auditor's summary
        pb.GetDecisionRequest(decision_id=world.pending_id),
        timeout=10,
        metadata=world.bearer("auditor-1", 4, ("auditor",)),
    )
    assert got.decision.status == pb.STATUS_PENDING_AUTHORITY
    assert not got.decision.authority_progress.approvals


# -- BreakGlass ------------------------------------------------------------------------------


@fuzz()
@given(data=st.data())
def test_breakglass_fuzzed(world: World, data: st.DataObject) -> None:
    level = data.draw(st.sampled_from([1, 2, 3, 4, 5, 4, 5]))

    def usually(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> Any:
        return data.draw(st.one_of(valid, valid, valid, junk))

    req = pb.BreakGlassRequest(
        reason=pb.BreakGlassReason(
            incident_id=usually(st.just("INC-1"), ANY_TEXT),
            category=usually(st.sampled_from(["outage", "security_incident"]), ANY_TEXT),
            text=usually(st.just("the payments API is down for every customer"), ANY_TEXT),
        ),
        ttl_s=usually(st.integers(60, 900), st.integers(-(2**63), 2**63 - 1)),
        action_class=usually(st.just("deploy.release"), ANY_TEXT),
        target=pb.Target(
            type=usually(st.just("service"), ANY_TEXT),
            id=usually(st.just("payments-api"), ANY_TEXT),
        ),
        environment=usually(st.sampled_from(["production", ""]), ANY_TEXT),
    )
    token = world.bearer(f"sec-{level}", level, ("security",))
    meta = data.draw(st.sampled_from([token, token, token, ()]))
    resp, _ = call(world.gov.BreakGlass, req, meta)
    if resp is not None:  # only an L4/L5 with a real reason and a bounded scope gets one
        assert meta and level >= 4, resp
        assert req.reason.incident_id.strip() and len(req.reason.text.strip()) >= 20
        assert req.ttl_s > 0 and req.action_class and req.target.type and req.target.id
        assert resp.breakglass.expires_at > 0 and resp.ledger.global_seq > 0


# -- Gateway ---------------------------------------------------------------------------------


def _mutate_grant(grant: str, data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["flip", "cut", "segment", "random", "same"]))
    if kind == "same":
        return grant
    if kind == "random":
        return data.draw(st.one_of(st.text(max_size=300), HUGE_TEXT))
    if kind == "cut":
        return grant[: data.draw(st.integers(0, len(grant)))]
    if kind == "segment":
        parts = grant.split(".")
        i = data.draw(st.integers(0, len(parts) - 1))
        parts[i] = data.draw(st.one_of(st.text(max_size=80), st.just("e30"), st.just("")))
        return ".".join(parts)
    chars = list(grant)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(chars) - 1))
        chars[i] = data.draw(st.sampled_from("ABCDEFGHabcdefgh0123456789-_.=+/ "))
    return "".join(chars)


def _same_grant(a: str, b: str) -> bool:
    """Same signed bytes (base64url tails may differ in unused bits and still decode
    to the same signature)."""
    pa, pb_ = a.split("."), b.split(".")
    if len(pa) != 3 or len(pb_) != 3 or pa[:2] != pb_[:2]:
        return False
    try:
        return base64.urlsafe_b64decode(pa[2] + "==") == base64.urlsafe_b64decode(pb_[2] + "==")
    except ValueError:
        return False


def encode_authorize(grant: str, action: dict[str, Any]) -> bytes:
    """AuthorizeRequest {grant = 1, action = 2, environment = 3}, the action encoded as in
    encode_decide; the environment is the one the grant was judged for (read-dev.json)."""
    body = build_decide({"action": action}).action.SerializeToString()
    p = payload_of({"action": action})
    if p is not None:
        body += ld(4, struct_bytes(p))
    return ld(1, grant.encode("utf-8", "surrogatepass")) + ld(2, body) + ld(3, b"dev")


@fuzz()
@given(data=st.data())
def test_authorize_fuzzed_never_runs_without_the_grant(world: World, data: st.DataObject) -> None:
    grant = _mutate_grant(world.grant, data)
    action = copy.deepcopy(world.grant_action)
    changed = False
    if data.draw(st.booleans()):
        action["payload"] = data.draw(PAYLOADS)
        changed = action["payload"] != world.grant_action["payload"]
    if data.draw(st.integers(0, 4)) == 0:
        action["target"]["id"] = data.draw(ANY_TEXT)
        changed = changed or action["target"]["id"] != world.grant_action["target"]["id"]
    body = encode_authorize(grant, action)
    raw, refused = call(_raw(world.gateway, "/l7.v1.Gateway/Authorize"), body)
    if raw is not None:
        resp = gpb.AuthorizeResponse.FromString(raw)
        with world.lock:
            assert _same_grant(grant, world.grant), "a grant that is not the issued one ran"
            assert not changed, "the grant ran a different action"
            assert not world.executed, "the grant ran twice"
            world.executed.append(resp.execution_id)
    else:
        assert refused is not None


@fuzz()
@given(data=st.data())
def test_confirm_execution_fuzzed(world: World, data: st.DataObject) -> None:
    req = gpb.ConfirmExecutionRequest(
        decision_id=data.draw(ANY_TEXT),
        execution_id=data.draw(ANY_TEXT),
        succeeded=data.draw(st.booleans()),
    )
    body = req.SerializeToString() + ld(4, struct_bytes(data.draw(PAYLOADS)))
    resp, refused = call(_raw(world.gateway, "/l7.v1.Gateway/ConfirmExecution"), body)
    assert resp is None and refused is not None  # nothing was authorized under these ids


@fuzz()
@given(
    method=st.sampled_from(
        [
            "/l7.v1.Governance/Approve",
            "/l7.v1.Governance/BreakGlass",
            "/l7.v1.Governance/GetDecision",
            "/l7.v1.Gateway/Authorize",
            "/l7.v1.Gateway/ConfirmExecution",
        ]
    ),
    body=st.binary(max_size=600),
)
def test_random_bodies_for_every_method(world: World, method: str, body: bytes) -> None:
    channel = world.gateway if "Gateway" in method else world.engine
    resp, refused = call(_raw(channel, method), body, ())
    # none of these can succeed without a token, a grant or an existing decision id
    assert resp is None and refused is not None


# -- still serving ---------------------------------------------------------------------------


def test_servers_still_answer_and_the_ledger_verifies(world: World) -> None:
    for ch, service in ((world.engine, "l7.v1.Governance"), (world.gateway, "l7.v1.Gateway")):
        r = health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    req = example("read-dev.json")
    req["context"]["actor"]["id"] = "agent-after-fuzz"
    req["context"]["request_source"] = "agent:after-fuzz"
    req["idempotency_key"] = ""
    resp = _decide(world, req)
    assert resp.decision.outcome == pb.OUTCOME_ALLOW and resp.grant
    assert world.stack.ledger is not None
    world.stack.ledger.verify()
