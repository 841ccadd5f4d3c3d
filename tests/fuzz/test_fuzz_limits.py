"""Properties of the limit checks and of the error edge, without servers (fast):

- ``loads_json`` turns any text into a value or a RequestInvalid, nothing else;
- ``struct_to_dict`` agrees with ``json_format.MessageToDict`` wherever that one works,
  and refuses NaN/Infinity and deep nesting naming the field;
- ``message_depth`` measures wire nesting the way protobuf builds it;
- the interceptor bounds error messages and turns an unexpected exception into INTERNAL
  with a reference, never a stack trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from l7.engine.validate import (
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_DEPTH,
    NumberNotFinite,
    PayloadTooDeep,
    PayloadTooLarge,
    loads_json,
    struct_to_dict,
)
from l7.errors import RequestInvalid
from l7.server.interceptor import MAX_MESSAGE_CHARS, ErrorInterceptor, message_depth, status_for
from l7.v1 import governance_pb2 as pb
from tests.fuzz.support import fuzz, json_values, nest, struct_bytes, varint

DECIDE_DESCRIPTOR: Any = pb.DecideRequest.DESCRIPTOR


@fuzz()
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_loads_json_returns_a_value_or_request_invalid(text: str | bytes) -> None:
    try:
        loads_json(text, "f.json")
    except RequestInvalid as e:
        assert e.field == "f.json"
        assert "\n" not in str(e)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[" * 100_000, PayloadTooDeep),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), PayloadTooDeep),
        ('{"a": NaN}', NumberNotFinite),
        ('{"a": -Infinity}', NumberNotFinite),
        ('{"a": 1e999}', NumberNotFinite),
        ('"' + "x" * 300_000 + '"', PayloadTooLarge),
        ("1" * 5000, RequestInvalid),  # more digits than int() converts
    ],
)
def test_loads_json_limits(text: str, error: type[RequestInvalid]) -> None:
    with pytest.raises(error) as ei:
        loads_json(text, "f.json")
    assert type(ei.value) is error
    assert ei.value.field.startswith("f.json")


def test_loads_json_depth_limit_is_inclusive() -> None:
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_json(ok, "f") is not None


def _struct(obj: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.ParseFromString(struct_bytes(obj))
    return s


@fuzz()
@given(obj=st.dictionaries(st.text(max_size=10), json_values(), max_size=6))
def test_struct_to_dict_agrees_with_json_format(obj: dict[str, Any]) -> None:
    s = _struct(obj)
    try:
        expected = json_format.MessageToDict(s)
    except ValueError:  # NaN / Infinity: json_format refuses too, we must refuse clearly
        with pytest.raises(NumberNotFinite):
            struct_to_dict(s, "p")
        return
    try:
        got = struct_to_dict(s, "p")
    except (PayloadTooDeep, PayloadTooLarge):
        return
    assert got == expected


def test_struct_to_dict_names_the_field_and_the_limit() -> None:
    with pytest.raises(NumberNotFinite) as nan:
        struct_to_dict(_struct({"a": [1, {"b": math.inf}]}), "action.payload")
    assert nan.value.field == "action.payload.a[1].b"
    with pytest.raises(PayloadTooDeep) as deep:
        struct_to_dict(_struct({"a": nest(MAX_PAYLOAD_DEPTH)}), "action.payload")
    assert deep.value.limit == MAX_PAYLOAD_DEPTH and "deeper than 16" in str(deep.value)
    odd = "key with spaces and a\nnewline" * 10
    with pytest.raises(NumberNotFinite) as named:
        struct_to_dict(_struct({odd: math.nan}), "p")
    assert "\n" not in named.value.field and len(named.value.field) < 64


@fuzz()
@given(depth=st.integers(0, 25))
def test_message_depth_counts_struct_levels(depth: int) -> None:
    req = pb.DecideRequest()
    req.action.action_class = "a.b"
    raw = (
        req.SerializeToString()
        + b"\x0a"
        + _len_prefixed(b"\x22" + _len_prefixed(struct_bytes({"n": nest(depth)})))
    )
    # DecideRequest > Action > Struct > entry > Value (> Struct > entry > Value) * depth
    assert message_depth(raw, DECIDE_DESCRIPTOR, 1000) == 5 + 3 * depth


def _len_prefixed(b: bytes) -> bytes:
    return varint(len(b)) + b


@fuzz()
@given(raw=st.binary(max_size=400))
def test_message_depth_survives_any_bytes(raw: bytes) -> None:
    assert 1 <= message_depth(raw, DECIDE_DESCRIPTOR, 64) <= 65


def test_status_for_bounds_messages_quoting_caller_input() -> None:
    st_ = status_for(RequestInvalid("reason.category", "x" * 100_000))
    assert len(st_.message) <= MAX_MESSAGE_CHARS and "truncated" in st_.message


class _Boom:
    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise RuntimeError("secret internals: /etc/passwd line 3")


@pytest.fixture
def boom_server() -> Iterator[str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()]
    )
    handler = grpc.method_handlers_generic_handler(
        "t.Boom",
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                _Boom(),
                request_deserializer=pb.GetDecisionRequest.FromString,
                response_serializer=pb.GetDecisionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=1).wait(5)


def test_unexpected_exception_is_internal_with_a_reference_and_no_trace(boom_server: str) -> None:
    with grpc.insecure_channel(boom_server) as ch:
        call = ch.unary_unary(
            "/t.Boom/Call",
            request_serializer=pb.GetDecisionRequest.SerializeToString,
            response_deserializer=pb.GetDecisionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as ei:
            call(pb.GetDecisionRequest(decision_id="x"), timeout=10)
        err: Any = ei.value
        assert err.code() == grpc.StatusCode.INTERNAL
        assert "secret internals" not in err.details() and "Traceback" not in err.details()
        status = rpc_status.from_call(err)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert info.reason == "internal" and info.metadata["ref"] in err.details()
        # and a body that is not the message is a clear INVALID_ARGUMENT, not INTERNAL
        raw: Any = ch.unary_unary("/t.Boom/Call")
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\xff\xff\xff", timeout=10)
        bad_err: Any = bad.value
        assert bad_err.code() == grpc.StatusCode.INVALID_ARGUMENT
