"""What a tool service registers and what its functions receive.

A tool function takes one ``ToolCall`` (built only from the action the gateway has just
accepted for a grant) and returns a small mapping: the result summary that
``execution.confirmed`` records. It never receives anything the caller sent beside that
action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l7.errors import GrantRefused

__all__ = ["ToolCall", "ToolFn", "ToolSpec"]


@dataclass(frozen=True)
class ToolCall:
    """One authorized execution: the checked action, and the ids the ledger knows it by."""

    tool: str
    decision_id: str
    execution_id: str
    action_class: str
    intent: str
    target_type: str
    target_id: str
    payload: Mapping[str, Any]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values of the action's secret references, resolved by the gateway just in time."""

    def secret(self, ref: str) -> str:
        try:
            return self.secrets[ref]
        except KeyError:
            raise GrantRefused(
                f"{ref} is not one of this action's secret references", reason="not_authorized"
            ) from None


ToolFn = Callable[[ToolCall], Mapping[str, Any]]


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: its name (the action's ``tool``, bound by the grant), the one
    action class it performs, and the function."""

    name: str
    action_class: str
    fn: ToolFn = field(repr=False)
