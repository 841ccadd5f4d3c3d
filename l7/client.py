"""A small Python client for the Governance API, used by the CLI, the demo and tests.

Errors come back as ``RemoteError`` carrying the gRPC code and the
machine-readable ``reason`` from the server's ``google.rpc.ErrorInfo``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, cast

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from l7.errors import L7Error
from l7.server.convert import request_to_proto
from l7.tls import secure_channel
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc

__all__ = ["GovernanceClient", "RemoteError", "decision_json"]

_OUTCOME = {v: k.removeprefix("OUTCOME_") for k, v in pb.Outcome.items()}
_STATUS = {v: k.removeprefix("STATUS_").lower() for k, v in pb.Status.items()}


class RemoteError(L7Error):
    """The server refused the call; ``reason`` is its machine-readable cause."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, field: str = "") -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.field = field


def _remote_error(err: grpc.RpcError) -> RemoteError:
    code: grpc.StatusCode = err.code()
    reason, field = "", ""
    status = rpc_status.from_call(cast(grpc.Call, err))
    if status is not None:
        for d in status.details:
            info = error_details_pb2.ErrorInfo()
            if d.Is(info.DESCRIPTOR) and d.Unpack(info):
                reason, field = info.reason, info.metadata.get("field", "")
    if not reason:
        reason = "unavailable" if code == grpc.StatusCode.UNAVAILABLE else code.name.lower()
    return RemoteError(code, reason, err.details() or "", field)


def decision_json(d: pb.Decision) -> dict[str, Any]:
    """A Decision message as plain JSON (outcome 'ALLOW', status 'authorized', ...)."""
    out = json_format.MessageToDict(
        d, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    out["outcome"] = _OUTCOME[d.outcome]
    out["policy_outcome"] = _OUTCOME[d.policy_outcome]  # UNSPECIFIED: policy never judged it
    out["status"] = _STATUS[d.status]
    out["action"]["class"] = out["action"].pop("action_class")  # the request's JSON name
    out["action"].setdefault("payload", {})  # an empty Struct is omitted by MessageToDict
    out["ledger"]["global_seq"] = int(d.ledger.global_seq)  # int64 is a string in proto JSON
    return out


def _bg_json(info: pb.BreakGlassInfo) -> dict[str, Any]:
    out = json_format.MessageToDict(
        info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for k in ("expires_at", "review_deadline"):
        out[k] = int(out[k])
    return out


class GovernanceClient:
    """``token``: the caller's OIDC JWT, sent as ``authorization: Bearer`` on every call.
    ``credentials``: mTLS to an engine started with a certificate directory
    (``l7.tls.client_credentials(cert_dir, "cli")``); the server must prove it is the
    engine before the token is sent."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.token = token
        # mTLS: only a server holding the engine's certificate passes the handshake, so no
        # token reaches a peer with another tier's certificate (l7.tls.secure_channel)
        self._channel = (
            secure_channel(target, credentials, expect="engine")
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = pb_grpc.GovernanceStub(self._channel)

    def _meta(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _call(self, method: str, req: Any) -> Any:
        try:
            return getattr(self._stub, method)(req, timeout=self.timeout_s, metadata=self._meta())
        except grpc.RpcError as e:
            raise _remote_error(e) from None

    def decide_proto(self, req: pb.DecideRequest) -> pb.DecideResponse:
        resp: pb.DecideResponse = self._call("Decide", req)
        return resp

    def approve(self, decision_id: str, signed: pb.SignedApproval) -> dict[str, Any]:
        r = self._call("Approve", pb.ApproveRequest(decision_id=decision_id, approval=signed))
        return decision_json(r.decision)

    def reject(self, decision_id: str, signed: pb.SignedApproval) -> dict[str, Any]:
        r = self._call("Reject", pb.RejectRequest(decision_id=decision_id, rejection=signed))
        return decision_json(r.decision)

    def cancel(self, decision_id: str, reason: str) -> dict[str, Any]:
        r = self._call("Cancel", pb.CancelRequest(decision_id=decision_id, reason=reason))
        return decision_json(r.decision)

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        r = self._call("ListPending", pb.ListPendingRequest(limit=limit))
        return [decision_json(d) for d in r.decisions]

    def register_key(self, subject: str, key_id: str, method: str, public_key: bytes) -> int:
        r = self._call(
            "RegisterKey",
            pb.RegisterKeyRequest(
                subject=subject, key_id=key_id, method=method, public_key=public_key
            ),
        )
        return int(r.ledger.global_seq)

    def revoke_key(self, subject: str, key_id: str, reason: str) -> int:
        r = self._call(
            "RevokeKey", pb.RevokeKeyRequest(subject=subject, key_id=key_id, reason=reason)
        )
        return int(r.ledger.global_seq)

    def delegate(
        self, delegate: str, level: int, scopes: list[str], not_after: int, reason: str
    ) -> int:
        r = self._call(
            "Delegate",
            pb.DelegateRequest(
                delegate=delegate, level=level, scopes=scopes, not_after=not_after, reason=reason
            ),
        )
        return int(r.ledger.global_seq)

    def decide(self, request: dict[str, Any]) -> dict[str, Any]:
        """Decide a JSON request; returns the decision as JSON plus ``replayed``."""
        resp = self.decide_proto(request_to_proto(request))
        out = decision_json(resp.decision)
        out["replayed"] = resp.replayed
        return out

    def breakglass(
        self,
        *,
        incident_id: str,
        category: str,
        text: str,
        ttl_s: int,
        action_class: str,
        target: tuple[str, str],
        environment: str = "production",
    ) -> tuple[dict[str, Any], str]:
        r = self._call(
            "BreakGlass",
            pb.BreakGlassRequest(
                reason=pb.BreakGlassReason(incident_id=incident_id, category=category, text=text),
                ttl_s=ttl_s,
                action_class=action_class,
                target=pb.Target(type=target[0], id=target[1]),
                environment=environment,
            ),
        )
        return _bg_json(r.breakglass), str(r.grant)

    def review_breakglass(self, decision_id: str, findings: str) -> dict[str, Any]:
        r = self._call(
            "ReviewBreakGlass",
            pb.ReviewBreakGlassRequest(decision_id=decision_id, findings=findings),
        )
        return _bg_json(r.breakglass)

    def list_breakglass(self) -> list[dict[str, Any]]:
        r = self._call("ListBreakGlass", pb.ListBreakGlassRequest())
        return [_bg_json(i) for i in r.items]

    def get_grant(self, decision_id: str) -> str:
        """The execution grant of an authorized decision (the requester's own)."""
        r = self._call("GetGrant", pb.GetGrantRequest(decision_id=decision_id))
        return str(r.grant)

    def get_decision(self, decision_id: str) -> dict[str, Any]:
        r = self._call("GetDecision", pb.GetDecisionRequest(decision_id=decision_id))
        return decision_json(r.decision)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GovernanceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
