"""A governed tool service: the tools run in their own process and only for a grant.

    # the stack with a gateway (l7 serve ...; l7 gateway serve ... on 127.0.0.1:50061)
    L7_TOOL_SANDBOX=/srv/files l7 tool serve --app examples/tool_service.py:tools \\
        --gateway 127.0.0.1:50061 --addr 127.0.0.1:50071 --env dev

A caller (an agent) asks the engine first, then hands the grant and the exact action to
the tool service; it never holds the function::

    action = {"class": "data.read", "intent": "read report.csv", "tool": "read_file",
              "target": {"type": "file", "id": "report.csv"}, "payload": {}}
    d = GovernanceClient(engine, token=tok).decide_proto(request_to_proto(
        {"action": action, "context": {...}}))
    ToolHostClient("127.0.0.1:50071").call("read_file", d.grant, action)

Unlike ``Governed.tool`` (``examples/governed_tools.py``), which trusts every line of
code in its own process, nothing beside this process can make ``read_file`` run: the
only way in is the host, and the host runs it only after the gateway accepted and
consumed the grant for exactly this action.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from l7.toolhost import ToolCall, ToolRegistry

tools = ToolRegistry()


def _sandboxed(name: str) -> Path:
    root = Path(os.environ.get("L7_TOOL_SANDBOX", ".")).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise PermissionError(f"{name!r} is outside the sandbox")
    return path


@tools.tool("data.read", name="read_file")
def read_file(call: ToolCall) -> dict[str, Any]:
    """Size and sha256 of a file in the sandbox (the contents never leave the tool)."""
    data = _sandboxed(call.target_id).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
