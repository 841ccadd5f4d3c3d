"""``l7 tool serve``: a governed tool in its own process (``l7.toolhost``).

    l7 tool serve --app examples/tool_service.py:tools --gateway 127.0.0.1:50061 \\
                  [--addr 127.0.0.1:50071]

``--app`` names a ``ToolRegistry`` as ``module:attr`` or ``path/to/file.py:attr``. The
host listens on loopback and runs a registered function only for a call whose grant the
gateway at ``--gateway`` accepts for exactly that action (and consumes), then confirms
the execution with the result summary. Callers use ``l7.toolhost.ToolHostClient``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from l7.errors import ConfigError

__all__ = ["add_tool_commands", "load_registry"]


def load_registry(spec: str) -> Any:
    """The ``ToolRegistry`` named by ``module:attr`` or ``file.py:attr``."""
    from l7.toolhost import ToolRegistry

    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--app {spec!r}: expected module:attr or path/to/file.py:attr")
    if where.endswith(".py"):
        path = Path(where).resolve()
        mspec = importlib.util.spec_from_file_location(f"l7_tool_app_{path.stem}", path)
        if mspec is None or mspec.loader is None or not path.is_file():
            raise ConfigError(f"--app {spec!r}: no Python file at {path}")
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"--app {spec!r}: cannot import {where!r} ({e})") from e
    registry = getattr(module, attr, None)
    if not isinstance(registry, ToolRegistry) or not len(registry):
        raise ConfigError(f"--app {spec!r}: {attr!r} is not a ToolRegistry with tools")
    return registry


def cmd_tool_serve(a: argparse.Namespace) -> int:
    from l7.gateway.client import GatewayClient
    from l7.toolhost import ToolHost
    from l7.toolhost.server import create_toolhost_server

    registry = load_registry(a.app)
    gateway = GatewayClient(a.gateway)
    server, port = create_toolhost_server(a.addr, ToolHost(registry, gateway, environment=a.env))
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    host = a.addr.rsplit(":", 1)[0]
    tools = ", ".join(f"{s.name} ({s.action_class})" for s in registry)
    print(
        f"Layer-7 tool host on {host}:{port}\n"
        f"  tools   : {tools}\n"
        f"  env     : {a.env}\n"
        f"  gateway : {a.gateway} (every call's grant is checked and consumed there)",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        print("stopping...", file=sys.stderr)
        server.stop(grace=2).wait(5)
        gateway.close()
    return 0


def add_tool_commands(sub: Any) -> None:
    sp = sub.add_parser("tool", help="governed tools in their own process")
    tsub = sp.add_subparsers(dest="tool_cmd", required=True, metavar="SUBCOMMAND")
    srv = tsub.add_parser("serve", help="run registered tools only for grants the gateway accepts")
    srv.add_argument("--app", required=True, help="the ToolRegistry: module:attr or file.py:attr")
    srv.add_argument("--gateway", required=True, help="the gateway's address (host:port)")
    srv.add_argument(
        "--env",
        required=True,
        help="the environment these tools act in (dev, staging, production): the gateway "
        "must guard it, and a grant for any other is refused environment_mismatch",
    )
    srv.add_argument("--addr", default="127.0.0.1:50071", help="listen address (loopback only)")
    srv.set_defaults(fn=cmd_tool_serve)
