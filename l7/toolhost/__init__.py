"""Governed tools in their own process: the execution boundary (issue #13 item 8).

The in-process decorator (``l7.gateway.client.Governed.tool``) trusts its own process:
code running beside the tool can reach the function. A tool service puts the function
in a process of its own; the only way in is ``ToolHost.Call``, which runs the function
only after the gateway accepted the caller's grant for exactly that action::

    tools = ToolRegistry()

    @tools.tool("data.read", name="read_file")
    def read_file(call: ToolCall) -> dict[str, object]: ...

    # l7 tool serve --app examples/tool_service.py:tools --gateway 127.0.0.1:50061
"""

from l7.toolhost.client import ToolHostClient
from l7.toolhost.host import ExecutionGateway, ToolHost, ToolOutcome
from l7.toolhost.interface import ToolCall, ToolFn, ToolSpec
from l7.toolhost.registry import ToolRegistry

__all__ = [
    "ExecutionGateway",
    "ToolCall",
    "ToolFn",
    "ToolHost",
    "ToolHostClient",
    "ToolOutcome",
    "ToolRegistry",
    "ToolSpec",
]
