"""The tools one tool service offers, registered with a decorator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from l7.errors import ConfigError, GrantRefused
from l7.toolhost.interface import ToolFn, ToolSpec

__all__ = ["ToolRegistry"]


class ToolRegistry:
    """``tools = ToolRegistry()`` then ``@tools.tool("data.read", name="read_file")``."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def tool(self, action_class: str, *, name: str) -> Callable[[ToolFn], ToolFn]:
        """Register ``fn`` as tool ``name`` performing ``action_class``. Returns ``fn``
        unchanged: in the tool's own process it is the tool's own code; what guards it is
        that nothing outside this process can call it except through the host."""
        if not name or not action_class:
            raise ConfigError("a tool needs a name and an action class")

        def register(fn: ToolFn) -> ToolFn:
            if name in self._tools:
                raise ConfigError(f"tool {name!r} is registered twice")
            self._tools[name] = ToolSpec(name, action_class, fn)
            return fn

        return register

    def get(self, name: str) -> ToolSpec:
        spec = self._tools.get(name)
        if spec is None:
            raise GrantRefused(
                f"this tool service offers no tool {name!r}; it offers {sorted(self._tools)}",
                reason="tool_unknown",
            )
        return spec

    def __iter__(self) -> Iterator[ToolSpec]:
        return iter(sorted(self._tools.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._tools)
