"""A small governed tool set: each tool is one decorator away from being governed.

Used by ``l7 demo``; copy the pattern for your own tools. ``build(gov, sandbox, accounts)``
returns the tools bound to a ``Governed`` client, a sandbox directory for files and a
dict of simulated account balances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l7.gateway.client import Governed, current_execution


def build(gov: Governed, sandbox: Path, accounts: dict[str, int]) -> dict[str, Any]:
    @gov.tool(
        "data.read",
        tool="read_file",
        target=lambda name: ("file", name),
        intent=lambda name: f"read {name}",
    )
    def read_file(name: str) -> dict[str, Any]:
        return {"bytes": len((sandbox / name).read_bytes())}

    @gov.tool(
        "data.delete",
        tool="delete_file",
        target=lambda name: ("file", name),
        payload=lambda name: {"blast_radius": 1},
        intent=lambda name: f"delete {name} from the sandbox",
    )
    def delete_file(name: str) -> dict[str, Any]:
        (sandbox / name).unlink()
        return {"deleted": name, "execution": current_execution().execution_id}

    @gov.tool(
        "funds.transfer",
        tool="transfer",
        target=lambda src, dst, amount: ("account", src),
        payload=lambda src, dst, amount: {"amount": amount, "currency": "EUR", "to": dst},
        intent=lambda src, dst, amount: f"move {amount} EUR from {src} to {dst}",
    )
    def transfer(src: str, dst: str, amount: int) -> dict[str, Any]:
        if accounts[src] < amount:
            raise ValueError("insufficient funds")
        accounts[src] -= amount
        accounts[dst] += amount
        return {"moved": amount}

    @gov.tool(
        "debug.exec",
        tool="debug_exec",
        target=lambda host, cmd: ("host", host),
        intent=lambda host, cmd: f"run {cmd!r} on {host}",
    )
    def debug_exec(host: str, cmd: str) -> None:
        raise RuntimeError("unreachable: policy never allows debug.exec in production")

    return {
        "read_file": read_file,
        "delete_file": delete_file,
        "transfer": transfer,
        "debug_exec": debug_exec,
    }
