"""The tool service the toolhost tests run in its own process: every run of the tool body
appends the decision id to $L7_TEST_TOOL_RUNS, so a test can see what really ran."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from l7.toolhost import ToolCall, ToolRegistry

tools = ToolRegistry()


@tools.tool("data.read", name="read_file")
def read_file(call: ToolCall) -> dict[str, Any]:
    runs = Path(os.environ["L7_TEST_TOOL_RUNS"])
    with runs.open("a") as f:
        f.write(f"{call.decision_id} {call.target_id}\n")
    return {"read": call.target_id, "rows": call.payload.get("rows", 0)}
