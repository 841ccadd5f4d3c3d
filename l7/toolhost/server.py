"""The ToolHost gRPC service: ``l7 tool serve`` or ``create_toolhost_server`` in a tool's
own process. It binds loopback only: a grant travels in it in clear."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from l7.engine.validate import struct_to_dict
from l7.errors import ConfigError, RequestInvalid
from l7.posture import is_loopback
from l7.server.interceptor import ErrorInterceptor
from l7.toolhost.host import ToolHost
from l7.v1 import governance_pb2 as pb
from l7.v1 import toolhost_pb2 as tpb
from l7.v1 import toolhost_pb2_grpc as tpb_grpc

__all__ = ["ToolHostServicer", "action_from_proto", "create_toolhost_server"]


def action_from_proto(a: pb.Action) -> dict[str, Any]:
    """The action exactly as the gateway's Authorize will receive and hash it."""
    out: dict[str, Any] = {
        "class": a.action_class,
        "intent": a.intent,
        "target": {"type": a.target.type, "id": a.target.id},
        "payload": struct_to_dict(a.payload, "action.payload"),
    }
    if a.tool:
        out["tool"] = a.tool
    return out


class ToolHostServicer(tpb_grpc.ToolHostServicer):
    def __init__(self, host: ToolHost) -> None:
        self.host = host

    def Call(  # noqa: N802
        self, request: tpb.ToolCallRequest, context: grpc.ServicerContext
    ) -> tpb.ToolCallResponse:
        if not request.HasField("action"):
            raise RequestInvalid("action", "is required: present the exact action to run")
        out = self.host.call(request.tool, request.grant, action_from_proto(request.action))
        result = struct_pb2.Struct()
        result.update(dict(out.result))
        return tpb.ToolCallResponse(
            decision_id=out.decision_id,
            execution_id=out.execution_id,
            succeeded=out.succeeded,
            result=result,
        )


def create_toolhost_server(
    addr: str, host: ToolHost, *, max_workers: int = 8
) -> tuple[grpc.Server, int]:
    """A not-yet-started tool host server on ``addr`` (loopback; port 0 for a free port)."""
    if not is_loopback(addr):
        raise ConfigError(
            f"the tool host binds loopback only, not {addr}: grants travel in its calls in "
            "clear; run the tool service beside its callers (127.0.0.1)"
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="l7-toolhost"),
        interceptors=[ErrorInterceptor()],
        options=[("grpc.max_receive_message_length", 256 * 1024), ("grpc.so_reuseport", 0)],
    )
    tpb_grpc.add_ToolHostServicer_to_server(ToolHostServicer(host), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    hs.set("l7.v1.ToolHost", health_pb2.HealthCheckResponse.SERVING)
    try:
        port = server.add_insecure_port(addr)
    except RuntimeError as e:
        raise ConfigError(f"--addr {addr}: cannot bind ({e})") from e
    if port == 0:
        raise ConfigError(f"--addr {addr}: cannot bind (in use, or not a host:port)")
    return server, port
