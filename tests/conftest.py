"""Shared test helpers: repo paths and request builders."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "requests"


def example(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return obj


def request(
    cls: str = "data.read",
    *,
    env: str = "dev",
    target: tuple[str, str] = ("dataset", "orders"),
    level: int = 1,
    actor: str = "agent-1",
    payload: dict[str, Any] | None = None,
    key: str = "",
) -> dict[str, Any]:
    return {
        "action": {
            "class": cls,
            "intent": f"{cls} on {target[1]}",
            "target": {"type": target[0], "id": target[1]},
            "payload": payload or {},
        },
        "context": {
            "actor": {"id": actor, "role": "engineer", "level": level},
            "environment": env,
            "request_source": "test",
        },
        "idempotency_key": key,
    }


def without(req: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A deep copy of ``req`` with the field at ``dotted`` removed."""
    out = copy.deepcopy(req)
    node = out
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
