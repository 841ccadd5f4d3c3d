"""Shared pieces of the fuzz suites: bounded hypothesis settings with a visible seed,
JSON-ish value strategies (NaN, infinities, deep nesting, huge strings), and the one
check every fuzzed gRPC call must pass.

Bounds: ``L7_FUZZ_EXAMPLES`` (default 100) examples per test. The seed comes from
``--hypothesis-seed``, else ``L7_FUZZ_SEED``, else a fresh random one; it is shown in
the pytest header and next to every failing fuzz test, so a failure reruns exactly with
``L7_FUZZ_SEED=<seed> .venv/bin/python -m pytest tests/fuzz``.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st

EXAMPLES = max(1, int(os.environ.get("L7_FUZZ_EXAMPLES", "100")))
SEED: int = 0
"""Set by tests/fuzz/conftest.py (pytest_configure) before any fuzz module is imported."""

TRANSPORT_LIMIT = 256 * 1024
"""grpc.max_receive_message_length of the engine and the gateway."""

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int | None = None) -> Callable[[F], F]:
    """Hypothesis settings for a fuzz test: bounded, no deadline (a real stack answers),
    reproduction blob printed, the suite's seed, no example database (the seed alone
    reproduces a run)."""

    def deco(fn: F) -> F:
        s = settings(
            max_examples=examples or EXAMPLES,
            deadline=None,
            print_blob=True,
            derandomize=False,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        wrapped: F = seed(SEED)(s(fn))
        return wrapped

    return deco


# -- values ------------------------------------------------------------------------------

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Anything a google.protobuf.Struct can carry, NaN and infinities included."""
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
        ),
        max_leaves=max_leaves,
    )


def nest(depth: int, leaf: Any = "x", *, as_list: bool = False) -> Any:
    """``depth`` levels of objects (or lists) around ``leaf``."""
    v = leaf
    for _ in range(depth):
        v = [v] if as_list else {"n": v}
    return v


HUGE_TEXT = st.integers(min_value=1, max_value=320_000).map(lambda n: "x" * n)
DEEP = st.builds(nest, st.integers(1, 120), SCALARS, as_list=st.booleans())


def has_non_finite(v: Any) -> bool:
    if isinstance(v, float):
        return not math.isfinite(v)
    if isinstance(v, dict):
        return any(has_non_finite(x) for x in v.values())
    if isinstance(v, list):
        return any(has_non_finite(x) for x in v)
    return False


def depth_of(v: Any) -> int:
    """Nesting as the validator counts it: a scalar is 0 levels, {} or [] is 1."""
    if isinstance(v, dict):
        return 1 + max((depth_of(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth_of(x) for x in v), default=0)
    return 0


# -- wire encoding by hand ----------------------------------------------------------------
# protobuf's own encoder refuses to build messages deeper than its decoder limit (and
# CopyFrom re-parses), so hostile nesting is written straight to the wire format.


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field_number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, sub-messages)."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def value_bytes(v: Any) -> bytes:
    """google.protobuf.Value: null 1, number 2, string 3, bool 4, struct 5, list 6."""
    if v is None:
        return varint(1 << 3) + b"\x00"
    if isinstance(v, bool):
        return varint(4 << 3) + (b"\x01" if v else b"\x00")
    if isinstance(v, int | float):
        return varint(2 << 3 | 1) + struct.pack("<d", float(v))
    if isinstance(v, str):
        return ld(3, v.encode("utf-8", "surrogatepass"))
    if isinstance(v, list):
        return ld(6, b"".join(ld(1, value_bytes(x)) for x in v))
    if isinstance(v, dict):
        return ld(5, struct_bytes(v))
    raise TypeError(type(v))


def struct_bytes(obj: dict[str, Any]) -> bytes:
    """google.protobuf.Struct: map<string, Value> fields = 1."""
    return b"".join(
        ld(1, ld(1, k.encode("utf-8", "surrogatepass")) + ld(2, value_bytes(v)))
        for k, v in obj.items()
    )


# -- the check every fuzzed call passes -------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    field: str
    message: str


def refusal(err: grpc.RpcError, sent_bytes: int) -> Refusal:
    """Assert ``err`` is a clear refusal and return it: never UNKNOWN or INTERNAL, never a
    stack trace, and always a google.rpc ErrorInfo reason, except the one refusal gRPC
    makes itself before any Layer-7 code runs: a body over the transport limit, or
    headers over gRPC's metadata limit."""
    call = cast(grpc.Call, err)
    code = call.code()
    details = call.details() or ""
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (code, details)
    assert "Traceback" not in details and 'File "' not in details, details
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        assert sent_bytes > TRANSPORT_LIMIT, (sent_bytes, details)
        return Refusal(code, "message_too_large", "", details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata size exceeds" in details:
        return Refusal(code, "metadata_too_large", "", details)  # headers over 8 KiB
    status = rpc_status.from_call(call)
    assert status is not None, f"{code} without google.rpc.Status details: {details}"
    infos = []
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Is(info.DESCRIPTOR) and d.Unpack(info):
            infos.append(info)
    assert len(infos) == 1 and infos[0].reason and infos[0].domain, (code, details)
    assert status.message == details
    return Refusal(code, infos[0].reason, infos[0].metadata.get("field", ""), details)
