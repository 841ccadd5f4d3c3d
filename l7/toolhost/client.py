"""Calling a tool service: ``ToolHostClient(target).call(tool, grant, action)``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from l7.client import _remote_error
from l7.server.convert import request_to_proto
from l7.v1 import toolhost_pb2 as tpb
from l7.v1 import toolhost_pb2_grpc as tpb_grpc

__all__ = ["ToolHostClient"]


class ToolHostClient:
    def __init__(self, target: str, *, timeout_s: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = tpb_grpc.ToolHostStub(self._channel)
        self.timeout_s = timeout_s

    def call(self, tool: str, grant: str, action: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``tool`` for ``action`` with ``grant``; raises ``RemoteError`` on refusal."""
        req = tpb.ToolCallRequest(
            tool=tool, grant=grant, action=request_to_proto({"action": dict(action)}).action
        )
        try:
            resp = self._stub.Call(req, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise _remote_error(e) from None
        return json_format.MessageToDict(
            resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ToolHostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
