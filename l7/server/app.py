"""Build the gRPC server: Governance + health checking + reflection + error mapping."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from l7.engine import Engine
from l7.engine.authority import AuthorityService
from l7.engine.breakglass import BreakGlassService
from l7.errors import ConfigError
from l7.gateway.grant import GrantIssuer
from l7.identity import TokenVerifier
from l7.server.governance import GovernanceService
from l7.server.interceptor import ErrorInterceptor
from l7.tls import ServerTLS
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc

__all__ = ["MAX_MESSAGE_BYTES", "create_server"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Governance"].full_name
MAX_MESSAGE_BYTES = 256 * 1024


def create_server(
    addr: str,
    engine: Engine,
    *,
    authority: AuthorityService | None = None,
    verifier: TokenVerifier | None = None,
    grants: GrantIssuer | None = None,
    breakglass: BreakGlassService | None = None,
    max_workers: int = 32,
    tls: ServerTLS | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A started-later server bound to ``addr`` (use port 0 for a free port).

    With ``tls`` the port requires a client certificate from our CA and the peer
    allowlist runs before anything else, so a refused peer never reaches a handler."""
    authority = authority or AuthorityService(engine)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="l7-grpc"),
        interceptors=[tls.interceptor, ErrorInterceptor()] if tls else [ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_GovernanceServicer_to_server(
        GovernanceService(engine, authority, verifier, grants, breakglass), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_secure_port(addr, tls.credentials) if tls else server.add_insecure_port(addr)
        )
    except RuntimeError as e:
        raise ConfigError(f"--addr {addr}: cannot bind ({e})") from e
    if port == 0:
        raise ConfigError(f"--addr {addr}: cannot bind (in use, or not a host:port)")
    return server, port, health_servicer
