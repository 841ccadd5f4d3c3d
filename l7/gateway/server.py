"""The Gateway gRPC service (its own process: ``l7 gateway serve``)."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from l7.crypto import sha256_hex
from l7.engine.validate import check_text, struct_to_dict
from l7.errors import ConfigError, RequestInvalid
from l7.gateway.secret_scope import ACTOR_TOKEN_HEADER
from l7.gateway.service import GatewayService
from l7.server.convert import confirmation_to_proto
from l7.server.governance import peer_host
from l7.server.interceptor import ErrorInterceptor
from l7.tls import ServerTLS, peer_cert_der, spiffe_id_of
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from l7.v1 import governance_pb2 as pb

__all__ = ["GatewayServicer", "caller_of", "create_gateway_server"]


def caller_of(context: grpc.ServicerContext) -> str:
    """Who is calling, as the transport proves it: the mTLS identity (SPIFFE id) or, for a
    certificate without one, its thumbprint; without mTLS the peer address. A confirmation
    token is good only from the caller it was issued to."""
    der = peer_cert_der(context)
    if der is not None:
        spiffe = spiffe_id_of(der)
        return f"mtls:{spiffe}" if spiffe else f"cert:{sha256_hex(der)}"
    return f"peer:{peer_host(context)}"


def _action_dict(a: pb.Action) -> dict[str, object]:
    out: dict[str, object] = {
        "class": a.action_class,
        "intent": a.intent,
        "target": {"type": a.target.type, "id": a.target.id},
        "payload": struct_to_dict(a.payload, "action.payload"),
    }
    if a.tool:  # the grant binds to the tool named at Decide (part of the intent hash)
        out["tool"] = a.tool
    return out


def _actor_token(context: grpc.ServicerContext) -> str | None:
    """The actor's own OpenBao token (``x-l7-actor-bao-token``), sent once or not at all."""
    found = [v for k, v in context.invocation_metadata() or () if k == ACTOR_TOKEN_HEADER]
    if len(found) > 1:
        raise RequestInvalid(ACTOR_TOKEN_HEADER, "metadata key is sent more than once")
    value = found[0] if found else None
    return value.strip() or None if isinstance(value, str) else None


class GatewayServicer(gpb_grpc.GatewayServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def Authorize(  # noqa: N802
        self, request: gpb.AuthorizeRequest, context: grpc.ServicerContext
    ) -> gpb.AuthorizeResponse:
        if not request.grant:
            raise RequestInvalid("grant", "is required: a governed call needs an execution grant")
        if not request.HasField("action"):
            raise RequestInvalid("action", "is required: present the exact action to run")
        check_text(request.environment, "environment", limit=64)
        ex = self.service.authorize(
            request.grant,
            _action_dict(request.action),
            request.environment,
            caller_of(context),
            actor_bao_token=_actor_token(context),
        )
        return gpb.AuthorizeResponse(
            decision_id=ex.decision_id,
            execution_id=ex.execution_id,
            ledger=confirmation_to_proto(ex.ledger),
            secrets=dict(ex.secrets),
            confirmation_token=ex.confirmation_token,
        )

    def ConfirmExecution(  # noqa: N802
        self, request: gpb.ConfirmExecutionRequest, context: grpc.ServicerContext
    ) -> gpb.ConfirmExecutionResponse:
        if not request.decision_id or not request.execution_id:
            raise RequestInvalid("execution_id", "decision_id and execution_id are required")
        c = self.service.confirm(
            request.decision_id,
            request.execution_id,
            request.succeeded,
            struct_to_dict(request.result, "result"),
            request.confirmation_token,
            caller_of(context),
        )
        return gpb.ConfirmExecutionResponse(ledger=confirmation_to_proto(c))


def create_gateway_server(
    addr: str, service: GatewayService, *, max_workers: int = 16, tls: ServerTLS | None = None
) -> tuple[grpc.Server, int]:
    """A not-yet-started gateway server; ``tls`` as for ``l7.server.app.create_server``."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="l7-gateway"),
        interceptors=[tls.interceptor, ErrorInterceptor()] if tls else [ErrorInterceptor()],
        options=[("grpc.max_receive_message_length", 256 * 1024), ("grpc.so_reuseport", 0)],
    )
    gpb_grpc.add_GatewayServicer_to_server(GatewayServicer(service), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    hs.set("l7.v1.Gateway", health_pb2.HealthCheckResponse.SERVING)
    try:
        port = (
            server.add_secure_port(addr, tls.credentials) if tls else server.add_insecure_port(addr)
        )
    except RuntimeError as e:
        raise ConfigError(f"--addr {addr}: cannot bind ({e})") from e
    if port == 0:
        raise ConfigError(f"--addr {addr}: cannot bind (in use, or not a host:port)")
    return server, port
