"""The one place where Layer-7 errors become gRPC statuses.

Each ``L7Error`` maps to a status code and a ``google.rpc.ErrorInfo`` whose
``reason`` is the error's machine-readable reason (``invalid_request``,
``ledger_degraded``, ...) and whose metadata names the field at fault where
there is one. Anything unexpected becomes INTERNAL with a reference id that
is logged server-side; the caller never sees a stack trace.

Requests are decoded here too, not by gRPC: a body that is not the method's message
(garbage bytes, invalid UTF-8 in a string field, messages nested past protobuf's
decoder limit) is INVALID_ARGUMENT with reason ``invalid_request`` or
``payload_too_deep``, not gRPC's bare "Exception deserializing request!" (INTERNAL).
Bodies larger than the server's ``grpc.max_receive_message_length`` are refused by
gRPC itself before they reach this code (RESOURCE_EXHAUSTED).

Secrets are screened here too, once the request is decoded and before any handler runs
(``l7.secrets.screen``): every string of every request of the engine and the gateway,
refused as INVALID_ARGUMENT ``secret_in_payload`` naming the field, never the value.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from l7.engine.ratelimit import RateLimited
from l7.engine.validate import MAX_MESSAGE_DEPTH, LimitExceeded, PayloadTooDeep
from l7.errors import (
    ApprovalInvalid,
    BundleError,
    ConfigError,
    DecisionNotFound,
    Forbidden,
    GatewayDegraded,
    GrantRefused,
    IdempotencyConflict,
    IdentityDegraded,
    IllegalTransition,
    L7Error,
    LedgerDegraded,
    LedgerIntegrityFailed,
    PolicyStoreDegraded,
    RequestInvalid,
    Unauthenticated,
)
from l7.secrets.interface import SecretsDegraded
from l7.secrets.screen import screen_request

__all__ = ["DOMAIN", "ErrorInterceptor", "status_for"]

log = logging.getLogger(__name__)
DOMAIN = "layer7.governance"

_CODES: list[tuple[type[L7Error], int]] = [
    (RequestInvalid, code_pb2.INVALID_ARGUMENT),
    (IdempotencyConflict, code_pb2.ALREADY_EXISTS),
    (DecisionNotFound, code_pb2.NOT_FOUND),
    (LedgerDegraded, code_pb2.UNAVAILABLE),
    (LedgerIntegrityFailed, code_pb2.PERMISSION_DENIED),
    (PolicyStoreDegraded, code_pb2.UNAVAILABLE),
    (ConfigError, code_pb2.FAILED_PRECONDITION),
    (BundleError, code_pb2.FAILED_PRECONDITION),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (IdentityDegraded, code_pb2.UNAVAILABLE),
    (Forbidden, code_pb2.PERMISSION_DENIED),
    (ApprovalInvalid, code_pb2.PERMISSION_DENIED),
    (IllegalTransition, code_pb2.FAILED_PRECONDITION),
    (GrantRefused, code_pb2.PERMISSION_DENIED),
    (GatewayDegraded, code_pb2.UNAVAILABLE),
    (SecretsDegraded, code_pb2.UNAVAILABLE),
    (RateLimited, code_pb2.RESOURCE_EXHAUSTED),
]


MAX_MESSAGE_CHARS = 1024
"""Bound on an error message and on each ErrorInfo metadata value: a message may quote
caller input, and status details travel in trailers that gRPC caps (8 KiB by default);
an oversized trailer would turn a clear refusal into RESOURCE_EXHAUSTED at the client."""


def _bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    tail = f"... [{len(text)} characters, truncated]"
    return text[: limit - len(tail)] + tail


def status_for(err: L7Error) -> status_pb2.Status:
    code = next((c for t, c in _CODES if isinstance(err, t)), code_pb2.INTERNAL)
    meta: dict[str, str] = {}
    if isinstance(err, RequestInvalid):
        meta["field"] = err.field
    if isinstance(err, LimitExceeded):
        meta["limit"] = str(err.limit)
    if isinstance(err, IdempotencyConflict):
        meta["decision_id"] = err.decision_id
    if isinstance(err, RateLimited):
        meta["retry_after_s"] = f"{err.retry_after_s:.3f}"
        meta["bucket"] = err.bucket
    if isinstance(err, IllegalTransition):
        meta["decision_id"] = err.decision_id
        meta["current_status"] = err.current
    detail = any_pb2.Any()
    meta = {k: _bounded(v, 256) for k, v in meta.items()}
    detail.Pack(
        error_details_pb2.ErrorInfo(reason=_bounded(err.reason, 128), domain=DOMAIN, metadata=meta)
    )
    return status_pb2.Status(code=code, message=_bounded(str(err)), details=[detail])


def _internal(ref: str) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(reason="internal", domain=DOMAIN, metadata={"ref": ref})
    )
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (ref {ref}); the server log has the details",
        details=[detail],
    )


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while pos < end and shift < 64:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def message_depth(data: bytes, desc: Descriptor, stop_at: int) -> int:
    """How deep messages nest in ``data`` read as ``desc`` (1: no sub-messages), walking
    the wire format with an explicit stack (never Python recursion); stops early once the
    depth passes ``stop_at``. Malformed bytes end the walk of that message."""
    deepest = 0
    stack: list[tuple[int, int, Descriptor, int]] = [(0, len(data), desc, 1)]
    while stack:
        pos, end, d, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > stop_at:
            break
        while pos < end:
            key = _varint(data, pos, end)
            if key is None:
                break
            tag, pos = key
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                skipped = _varint(data, pos, end)
                if skipped is None:
                    break
                pos = skipped[1]
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size = _varint(data, pos, end)
                if size is None or size[1] + size[0] > end:
                    break
                length, pos = size
                field = d.fields_by_number.get(number)
                if field is not None and field.message_type is not None:
                    stack.append((pos, pos + length, field.message_type, depth + 1))
                pos += length
            else:  # groups (3, 4) are not used by these APIs; 6 and 7 do not exist
                break
    return deepest


def _undecodable(raw: bytes, deserializer: Callable[[bytes], Any]) -> RequestInvalid:
    """Why a request body did not decode, as an error the caller can act on."""
    msg_type = getattr(deserializer, "__self__", None)
    desc = getattr(msg_type, "DESCRIPTOR", None)
    name = desc.full_name if isinstance(desc, Descriptor) else "the request message"
    if isinstance(desc, Descriptor) and message_depth(raw, desc, MAX_MESSAGE_DEPTH) > (
        MAX_MESSAGE_DEPTH
    ):
        return PayloadTooDeep(
            "request",
            f"nests messages deeper than {MAX_MESSAGE_DEPTH} levels (a Struct payload "
            "counts three per level); flatten it",
            limit=MAX_MESSAGE_DEPTH,
        )
    return RequestInvalid(
        "request",
        f"the {len(raw)}-byte body is not a valid {name} protobuf message (malformed bytes, "
        "or a string field that is not UTF-8)",
    )


class ErrorInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method
        deserializer = handler.request_deserializer

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if deserializer is not None:
                    try:
                        request = deserializer(request)
                    except Exception as e:
                        raise _undecodable(request, deserializer) from e
                if isinstance(request, Message):
                    screen_request(request)  # before any handler, policy, ledger or log
                return inner(request, context)
            except L7Error as e:
                status = status_for(e)
            except Exception:
                ref = uuid.uuid4().hex[:12]
                log.exception("unexpected error in %s (ref %s)", method, ref)
                status = _internal(ref)
            context.abort_with_status(rpc_status.to_status(status))
            return None  # unreachable: abort raises

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=None,  # raw bytes: guarded decodes them (see module doc)
            response_serializer=handler.response_serializer,
        )
