"""Governed tools in one line.

    gov = Governed(engine="127.0.0.1:50051", gateway="127.0.0.1:50061",
                   actor={"id": "agent-7", "role": "agent", "level": 1},
                   environment="production", token=my_oidc_token)

    @gov.tool("data.delete", target=lambda path: ("file", path),
              payload=lambda path: {"path": path})
    def delete_file(path: str) -> dict: ...

Calling ``delete_file(p)`` asks the engine to decide; on ALLOW the gateway checks and
consumes the grant (for the ``environment`` this tool declares: the gateway must guard
it), the function runs, and the execution is confirmed with a result summary and the
confirmation token only this caller received from Authorize. QUEUE/ESCALATE raise
``PendingAuthority`` (with the decision id; see ``Governed.resume``), DENY raises
``Denied``. The original function is kept only in a guarded form that refuses a plain call
outside an authorized execution. This is a convenience that trusts its own process: code
running in it can still reach the function (its closure, or the execution context set by
hand). The boundary against such code is a tool in its own process (``l7.toolhost``,
``l7 tool serve``).
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

import grpc
from google.protobuf import struct_pb2

from l7.client import GovernanceClient, RemoteError, _remote_error, decision_json
from l7.errors import GatewayDegraded, GrantRefused, L7Error
from l7.gateway.secret_scope import ACTOR_TOKEN_HEADER
from l7.gateway.service import summarize_result
from l7.server.convert import request_to_proto
from l7.tls import secure_channel
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from l7.v1 import governance_pb2 as pb

__all__ = [
    "Denied",
    "ExecutionContext",
    "GatewayClient",
    "Governed",
    "PendingAuthority",
    "current_execution",
]

P = ParamSpec("P")
R = TypeVar("R")


class PendingAuthority(L7Error):
    """The decision waits for approvals; ``decision_id`` names it."""

    reason = "pending_authority"

    def __init__(self, decision_id: str, missing: list[str]) -> None:
        super().__init__(
            f"decision {decision_id} is waiting for authority ({'; '.join(missing) or 'pending'})"
        )
        self.decision_id = decision_id
        self.missing = missing


class Denied(L7Error):
    reason = "denied"

    def __init__(self, decision_id: str, reason_code: str, reasons: list[str]) -> None:
        super().__init__(
            f"decision {decision_id} denied ({reason_code}): {'; '.join(reasons) or '-'}"
        )
        self.decision_id = decision_id
        self.reason_code = reason_code
        self.reasons = reasons


@dataclass(frozen=True)
class ExecutionContext:
    decision_id: str
    execution_id: str
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values of the action's secret references, resolved just in time by the gateway."""

    def secret(self, ref: str) -> str:
        try:
            return self.secrets[ref]
        except KeyError:
            raise GrantRefused(
                f"{ref} is not one of this action's secret references", reason="not_authorized"
            ) from None


_current: contextvars.ContextVar[ExecutionContext | None] = contextvars.ContextVar(
    "l7_execution", default=None
)


def current_execution() -> ExecutionContext:
    """Inside a governed tool: the authorized execution. Anywhere else: refused."""
    ctx = _current.get()
    if ctx is None:
        raise GrantRefused(
            "this governed tool was called directly; it runs only through the gateway",
            reason="not_authorized",
        )
    return ctx


class GatewayClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: mTLS to a gateway started with a certificate directory
        (``l7.tls.client_credentials(cert_dir, "tool")``)."""
        self._channel = (  # mTLS: only a server holding the gateway's certificate
            secure_channel(target, credentials, expect="gateway")
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self._stub = gpb_grpc.GatewayStub(self._channel)
        self.timeout_s = timeout_s

    def _call(
        self, method: str, req: Any, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> Any:
        try:
            return getattr(self._stub, method)(req, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as e:
            err = _remote_error(e)
            if err.reason in ("unavailable", "deadline_exceeded"):  # transport, not a refusal
                raise GatewayDegraded(f"the gateway is unreachable: {err.message}") from None
            raise err from None

    def authorize(
        self,
        grant: str,
        action: Mapping[str, Any],
        *,
        environment: str,
        actor_bao_token: str | None = None,
    ) -> gpb.AuthorizeResponse:
        """``environment``: where the action runs ("" is production); the response carries
        the confirmation token ``confirm`` needs. ``actor_bao_token``: the actor's own
        OpenBao token, needed when the action names secret references (the gateway resolves
        them with the actor's capability only)."""
        req = request_to_proto({"action": dict(action)})
        md = ((ACTOR_TOKEN_HEADER, actor_bao_token),) if actor_bao_token else None
        resp: gpb.AuthorizeResponse = self._call(
            "Authorize",
            gpb.AuthorizeRequest(grant=grant, action=req.action, environment=environment),
            metadata=md,
        )
        return resp

    def confirm(
        self,
        decision_id: str,
        execution_id: str,
        succeeded: bool,
        result: Mapping[str, Any],
        confirmation_token: str,
    ) -> None:
        s = struct_pb2.Struct()
        s.update(summarize_result(result))
        self._call(
            "ConfirmExecution",
            gpb.ConfirmExecutionRequest(
                decision_id=decision_id,
                execution_id=execution_id,
                succeeded=succeeded,
                result=s,
                confirmation_token=confirmation_token,
            ),
        )

    def close(self) -> None:
        self._channel.close()


def _guard(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        current_execution()
        return fn(*args, **kwargs)

    del guarded.__wrapped__  # no handle to the unguarded function
    return guarded


class GovernedTool(Generic[P, R]):
    def __init__(  # noqa: PLR0917
        self,
        gov: Governed,
        action_class: str,
        fn: Callable[P, R],
        target: Callable[P, tuple[str, str]],
        payload: Callable[P, Mapping[str, Any]] | None,
        intent: Callable[P, str] | None,
        tool: str | None = None,
    ) -> None:
        self._gov = gov
        self.action_class = action_class
        self.tool = tool
        self._fn = _guard(fn)
        self._target = target
        self._payload = payload
        self._intent = intent
        functools.update_wrapper(self, fn)
        self.__dict__.pop("__wrapped__", None)

    def action(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        t_type, t_id = self._target(*args, **kwargs)
        out = {
            "class": self.action_class,
            "intent": self._intent(*args, **kwargs)
            if self._intent
            else f"{self.action_class} {t_type}/{t_id}",
            "target": {"type": t_type, "id": t_id},
            "payload": dict(self._payload(*args, **kwargs)) if self._payload else {},
        }
        if self.tool:
            out["tool"] = self.tool
        return out

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._gov._run(self, None, args, kwargs)

    def resume(self, decision_id: str, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a call that was queued earlier, once its decision is authorized."""
        return self._gov._run(self, decision_id, args, kwargs)


class Governed:
    def __init__(
        self,
        *,
        engine: str,
        gateway: str,
        actor: Mapping[str, Any],
        environment: str,
        token: str | None = None,
        request_source: str = "l7.gateway.client",
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        bao_token: str | None = None,
    ) -> None:
        """``environment``: where these tools act (dev, staging, production; anything else
        is production). Decisions are judged for it, grants bind it, and only a gateway
        guarding it runs them. ``credentials``: the tool process's mTLS identity,
        presented to both the engine and the gateway
        (``l7.tls.client_credentials(cert_dir, "tool")``). ``bao_token``: the actor's own
        OpenBao token, with which the gateway checks that the actor may read each secret
        reference before resolving it (never stored)."""
        self._bao_token = bao_token
        self.engine = GovernanceClient(
            engine, token=token, timeout_s=timeout_s, credentials=credentials
        )
        self.gateway = GatewayClient(gateway, timeout_s=timeout_s, credentials=credentials)
        self.actor = dict(actor)
        self.environment = environment
        self.request_source = request_source

    def tool(
        self,
        action_class: str,
        *,
        target: Callable[..., tuple[str, str]],
        payload: Callable[..., Mapping[str, Any]] | None = None,
        intent: Callable[..., str] | None = None,
        tool: str | None = None,
    ) -> Callable[[Callable[P, R]], GovernedTool[P, R]]:
        """Govern ``fn`` as ``action_class``. ``tool`` names it to policy: the class's tool
        allowlist then applies, and its grants are valid for this tool only."""

        def wrap(fn: Callable[P, R]) -> GovernedTool[P, R]:
            return GovernedTool(self, action_class, fn, target, payload, intent, tool)

        return wrap

    def _decide(self, action: dict[str, Any]) -> pb.DecideResponse:
        req = {
            "action": action,
            "context": {
                "actor": self.actor,
                "environment": self.environment,
                "request_source": self.request_source,
            },
        }
        try:
            return self.engine.decide_proto(request_to_proto(req))
        except RemoteError as e:
            if e.reason in ("unavailable", "deadline_exceeded"):
                raise GatewayDegraded(f"the engine is unreachable: {e.message}") from None
            raise

    def _grant_for(self, decision_id: str) -> str:
        try:
            r = self.engine._call("GetGrant", pb.GetGrantRequest(decision_id=decision_id))
        except RemoteError as e:
            if e.reason in ("unavailable", "deadline_exceeded"):
                raise GatewayDegraded(f"the engine is unreachable: {e.message}") from None
            raise
        return str(r.grant)

    def _run(
        self,
        tool: GovernedTool[Any, R],
        decision_id: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        action = tool.action(*args, **kwargs)
        if decision_id is None:
            resp = self._decide(action)
            d, grant = decision_json(resp.decision), resp.grant
        else:
            d = self.engine.get_decision(decision_id)
            grant = self._grant_for(decision_id) if d["status"] == "authorized" else ""
        did = d["decision_id"]
        if d["outcome"] in ("QUEUE", "ESCALATE") and d["status"] == "pending_authority":
            missing = [
                f"{c.get('missing', 0)} x L{c.get('min_level', 0)}+ {c['clause_id']}"
                for c in d.get("authority_progress", {}).get("clauses", [])
                if c.get("missing", 0)
            ]
            raise PendingAuthority(did, missing)
        if d["status"] == "executed":
            raise GrantRefused(f"decision {did} was already executed", reason="grant_replayed")
        if d["status"] != "authorized" or not grant:
            raise Denied(did, d.get("reason_code", ""), list(d.get("reasons", [])))
        ex = self.gateway.authorize(
            grant, action, environment=self.environment, actor_bao_token=self._bao_token
        )
        token = ex.confirmation_token
        with self._executing(ExecutionContext(did, ex.execution_id, dict(ex.secrets))):
            try:
                result = tool._fn(*args, **kwargs)
            except Exception as e:
                self.gateway.confirm(
                    did, ex.execution_id, False, {"error": type(e).__name__}, token
                )
                raise
        summary = dict(result) if isinstance(result, Mapping) else {"value": result}
        self.gateway.confirm(did, ex.execution_id, True, summary, token)
        return result

    def wait(self, decision_id: str, *, timeout_s: float, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the decision leaves pending_authority (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            d = self.engine.get_decision(decision_id)
            if d["status"] != "pending_authority" or time.monotonic() >= deadline:
                return d
            time.sleep(poll_s)

    @staticmethod
    @contextmanager
    def _executing(ctx: ExecutionContext) -> Iterator[None]:
        token = _current.set(ctx)
        try:
            yield
        finally:
            _current.reset(token)

    def close(self) -> None:
        self.engine.close()
        self.gateway.close()
