"""What the engine needs from its collaborators (implemented elsewhere, faked in unit tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from l7.domain import Judgement

__all__ = ["Clock", "PolicyEvaluator"]

Clock = Callable[[], datetime]


class PolicyEvaluator(Protocol):
    """Judges a policy input. Raises PolicyStoreDegraded when it cannot be trusted."""

    def evaluate(self, policy_input: Mapping[str, Any]) -> Judgement: ...

    def query(self, package: str, rule: str, policy_input: Mapping[str, Any]) -> tuple[Any, str]:
        """Another rule of the active bundle: (result, revision)."""
        ...

    def close(self) -> None: ...
