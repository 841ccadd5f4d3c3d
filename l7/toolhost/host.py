"""The execution boundary: run a registered tool only for a grant the gateway accepted.

    call(tool, grant, action)
      1. the tool is registered here                           else tool_unknown
      2. a grant is present                                    else grant_missing
      3. the action is the tool's: its class is the tool's     else action_mismatch
         class and its ``tool`` is the tool's name (the grant        (the grant is not
         binds the tool, so a grant issued for another tool          presented, so not
         or class is refused before it could be consumed)            consumed)
      4. the gateway this host was started with accepts the    else the gateway's reason
         grant for exactly this action and consumes it              (grant_invalid,
         (Authorize appends execution.authorized)                    grant_replayed,
                                                                     action_mismatch, ...)
      5. the function runs with that action, and only it
      6. the result summary is recorded (ConfirmExecution); a function that raised is
         recorded as failed with the exception's type only (no message: it may hold data)

The host decides nothing itself: every yes comes from the gateway, which reads the ledger.
A caller controls only the request; it cannot pick the gateway, skip step 4 or hand the
function anything but the checked action.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from l7.client import RemoteError
from l7.errors import GatewayDegraded, GrantRefused
from l7.gateway.service import summarize_result
from l7.toolhost.interface import ToolCall
from l7.toolhost.registry import ToolRegistry

__all__ = ["ExecutionGateway", "ToolHost", "ToolOutcome"]

log = logging.getLogger(__name__)

_TRANSPORT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ExecutionGateway(Protocol):
    """The part of ``l7.gateway.client.GatewayClient`` the host uses."""

    def authorize(self, grant: str, action: Mapping[str, Any], *, environment: str) -> Any: ...

    def confirm(
        self,
        decision_id: str,
        execution_id: str,
        succeeded: bool,
        result: Mapping[str, Any],
        confirmation_token: str,
    ) -> None: ...


@dataclass(frozen=True)
class ToolOutcome:
    decision_id: str
    execution_id: str
    succeeded: bool
    result: Mapping[str, Any] = field(default_factory=dict)


def _gateway_error(e: RemoteError) -> Exception:
    if e.code in _TRANSPORT:
        return GatewayDegraded(f"the gateway did not answer ({e.reason}): {e.message}; nothing ran")
    return GrantRefused(f"the gateway refused the call: {e.message}", reason=e.reason)


class ToolHost:
    def __init__(
        self, registry: ToolRegistry, gateway: ExecutionGateway, *, environment: str
    ) -> None:
        self.registry = registry
        self.gateway = gateway
        self.environment = environment
        """Where these tools act: the gateway honours only grants for this environment."""

    def call(self, tool: str, grant: str, action: Mapping[str, Any]) -> ToolOutcome:
        spec = self.registry.get(tool)  # 1
        if not grant:  # 2
            raise GrantRefused(
                f"a call of {tool!r} needs an execution grant; none was presented",
                reason="grant_missing",
            )
        if action.get("class") != spec.action_class or action.get("tool") != spec.name:  # 3
            raise GrantRefused(
                f"tool {tool!r} performs {spec.action_class!r} as tool {spec.name!r}; the "
                f"action presented is {action.get('class')!r} for tool {action.get('tool')!r}",
                reason="action_mismatch",
            )
        try:
            ex = self.gateway.authorize(grant, action, environment=self.environment)  # 4
        except RemoteError as e:
            raise _gateway_error(e) from None
        target = action.get("target") or {}
        call = ToolCall(
            tool=spec.name,
            decision_id=str(ex.decision_id),
            execution_id=str(ex.execution_id),
            action_class=spec.action_class,
            intent=str(action.get("intent", "")),
            target_type=str(target.get("type", "")),
            target_id=str(target.get("id", "")),
            payload=dict(action.get("payload") or {}),
            secrets=dict(ex.secrets),
        )
        try:
            result: Mapping[str, Any] = dict(spec.fn(call))  # 5
            succeeded = True
        except Exception as e:
            log.warning("tool %s failed for decision %s: %s", tool, call.decision_id, type(e))
            result, succeeded = {"error": type(e).__name__}, False
        summary = summarize_result(result)
        try:
            self.gateway.confirm(  # 6: only the holder of the execution can confirm it
                call.decision_id,
                call.execution_id,
                succeeded,
                summary,
                str(ex.confirmation_token),
            )
        except RemoteError as e:
            raise _gateway_error(e) from None
        return ToolOutcome(call.decision_id, call.execution_id, succeeded, summary)
