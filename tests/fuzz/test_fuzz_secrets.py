"""Property (issue #13 item 6): a secret planted in any string field of any RPC request,
in any of four encodings (plain, base64, hex, URL), is refused or redacted before it
reaches the ledger.

Against the real stack of ``test_fuzz_grpc`` (OPA, SQLite ledger, engine, gateway, a
JWKS-file identity provider). Hypothesis picks the RPC, the field (every string field
reachable in the request message, repeated ones included, and a member of every
``Struct``), the kind of secret and the encoding; the request carries nothing else, or
for Decide a valid request around it. The call must be refused ``secret_in_payload``
naming exactly that field, except where the schema (``l7.secrets.fields``) redacts; and
afterwards the raw ledger file never holds the marker, encoded or not.
"""

from __future__ import annotations

import base64
import copy
import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from l7.server.convert import request_to_proto
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import governance_pb2 as pb
from tests.conftest import example
from tests.fuzz.support import fuzz
from tests.fuzz.test_fuzz_grpc import World, _raw, call, world  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ENCODINGS = ("plain", "base64", "hex", "url")
REDACTED = {"l7.v1.ConfirmExecutionRequest": ("result",)}


def _services() -> list[tuple[str, type[Message], str]]:
    """(method path, request class, channel) of every unary RPC of both services."""
    out = []
    for module, service, channel in (
        (pb, "Governance", "engine"),
        (gpb, "Gateway", "gateway"),
    ):
        for m in module.DESCRIPTOR.services_by_name[service].methods:
            cls = getattr(pb, m.input_type.name, None) or getattr(gpb, m.input_type.name)
            out.append((f"/l7.v1.{service}/{m.name}", cls, channel))
    return out


RPCS = _services()


def string_paths(desc: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """Every string (or bytes-free) field path of ``desc``: repeated fields at [0], a
    ``Struct`` through a member ``note``."""
    for f in desc.fields:
        path = f"{prefix}{f.name}"
        if f.message_type is not None:
            if f.message_type.full_name == "google.protobuf.Struct":
                yield f"{path}.note"
            elif depth < 4:
                yield from string_paths(f.message_type, f"{path}.", depth + 1)
        elif f.type == f.TYPE_STRING:
            yield f"{path}[0]" if f.is_repeated else path


def plant(msg: Message, path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    node: Any = msg
    for p in parents:
        node = getattr(node, p)
    if isinstance(node, struct_pb2.Struct):
        node.update({leaf: value})
    elif leaf.endswith("[0]"):
        getattr(node, leaf[:-3]).append(value)
    else:
        setattr(node, leaf, value)


RNG = random.Random(11)


def _markers() -> dict[str, str]:
    """Secret-shaped markers, assembled at run time (never committed)."""
    up = string.ascii_uppercase + string.digits
    an = string.ascii_letters + string.digits
    return {
        "aws": "AKIA" + "".join(RNG.choices(up, k=16)),
        "github": "gh" + "p_" + "".join(RNG.choices(an, k=36)),
        "slack": "xo" + "xb-" + "".join(RNG.choices(string.digits, k=12)),
        "pem": "-----BEGIN "
        + "PRIVATE KEY-----\n"
        + "".join(RNG.choices(an, k=48))
        + "\n-----END "
        + "PRIVATE KEY-----",
    }


def encode(value: str, how: str) -> str:
    if how == "base64":
        return base64.b64encode(value.encode()).decode()
    if how == "hex":
        return value.encode().hex()
    if how == "url":
        return "".join(f"%{b:02X}" for b in value.encode())
    return value


def _ledger_bytes(w: World) -> bytes:
    return b"".join(p.read_bytes() for p in Path(w.stack.config.work_dir).glob("ledger.sqlite*"))


CASES = [
    (method, cls, ch, path) for method, cls, ch in RPCS for path in string_paths(cls.DESCRIPTOR)
]


@fuzz()
@given(
    case=st.sampled_from(CASES),
    kind=st.sampled_from(sorted(_markers())),
    how=st.sampled_from(ENCODINGS),
    salt=st.integers(0, 2**31),
)
def test_a_planted_secret_never_reaches_the_ledger(
    world: World,  # noqa: F811 (the fixture imported above)
    case: tuple[str, type[Message], str, str],
    kind: str,
    how: str,
    salt: int,
) -> None:
    method, cls, channel, path = case
    marker = _markers()[kind]
    value = encode(marker, how)
    if cls is pb.DecideRequest:  # a valid request around it, so the payload reaches policy
        req = copy.deepcopy(example("read-dev.json"))
        req["idempotency_key"] = f"fuzz-{salt}"
        msg: Message = request_to_proto(req)
        actor = req["context"]["actor"]
        meta = world.bearer(actor["id"], actor["level"], (actor["role"],))
    else:
        msg = cls()
        meta = world.bearer("sec-fuzz", 5, ("security",))
    plant(msg, path, value)
    ch = world.gateway if channel == "gateway" else world.engine
    _, refused = call(_raw(ch, method), msg.SerializeToString(), meta)
    redacted = any(path.startswith(p) for p in REDACTED.get(cls.DESCRIPTOR.full_name, ()))
    if not redacted:
        assert refused is not None, f"{method} {path}: a planted {kind} ({how}) was accepted"
        if refused.reason == "secret_in_payload":
            assert refused.field == path, (method, path, refused)
            assert marker not in refused.message and value not in refused.message
        else:  # refused before the engine screens a payload: it never got near the ledger
            assert path.startswith("action.payload"), (method, path, how, refused)
            assert refused.code != grpc.StatusCode.OK
    raw = _ledger_bytes(world)
    assert raw, "the ledger file exists"
    assert marker.encode() not in raw and value.encode() not in raw, (method, path, how)
