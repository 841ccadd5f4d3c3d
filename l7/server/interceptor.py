"""The one place where Layer-7 errors become gRPC statuses.

Each ``L7Error`` maps to a status code and a ``google.rpc.ErrorInfo`` whose
``reason`` is the error's machine-readable reason (``invalid_request``,
``ledger_degraded``, ...) and whose metadata names the field at fault where
there is one. Anything unexpected becomes INTERNAL with a reference id that
is logged server-side; the caller never sees a stack trace.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from l7.engine.ratelimit import RateLimited
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
    PolicyStoreDegraded,
    RequestInvalid,
    Unauthenticated,
)
from l7.secrets.interface import SecretsDegraded

__all__ = ["DOMAIN", "ErrorInterceptor", "status_for"]

log = logging.getLogger(__name__)
DOMAIN = "layer7.governance"

_CODES: list[tuple[type[L7Error], int]] = [
    (RequestInvalid, code_pb2.INVALID_ARGUMENT),
    (IdempotencyConflict, code_pb2.ALREADY_EXISTS),
    (DecisionNotFound, code_pb2.NOT_FOUND),
    (LedgerDegraded, code_pb2.UNAVAILABLE),
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


def status_for(err: L7Error) -> status_pb2.Status:
    code = next((c for t, c in _CODES if isinstance(err, t)), code_pb2.INTERNAL)
    meta: dict[str, str] = {}
    if isinstance(err, RequestInvalid):
        meta["field"] = err.field
    if isinstance(err, IdempotencyConflict):
        meta["decision_id"] = err.decision_id
    if isinstance(err, RateLimited):
        meta["retry_after_s"] = f"{err.retry_after_s:.3f}"
        meta["bucket"] = err.bucket
    if isinstance(err, IllegalTransition):
        meta["decision_id"] = err.decision_id
        meta["current_status"] = err.current
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=meta))
    return status_pb2.Status(code=code, message=str(err), details=[detail])


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

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
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
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
