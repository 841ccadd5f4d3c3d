"""Run OPA as a supervised child process on a loopback port.

``l7 serve`` and the test fixtures use this: OPA serves one bundle file, we wait
until ``/health?bundles=true`` says the bundle is activated, and we stop the
process (and only it) on exit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import requests

from l7.errors import ConfigError, PolicyStoreDegraded

__all__ = ["OpaProcess", "find_opa", "free_port"]


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_opa(explicit: str | None = None) -> Path:
    """The OPA binary: --opa-bin, $L7_OPA_BIN, <repo>/.tools/opa, or PATH."""
    candidates = [explicit, os.environ.get("L7_OPA_BIN")]
    repo_tools = Path(__file__).resolve().parents[2] / ".tools" / "opa"
    candidates.append(str(repo_tools))
    candidates.append(shutil.which("opa"))
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise ConfigError(
        "no OPA binary found (looked at --opa-bin, $L7_OPA_BIN, .tools/opa, PATH); "
        "run 'make setup' to build the pinned OPA into .tools/"
    )


class OpaProcess:
    """An OPA server child serving one bundle on 127.0.0.1."""

    def __init__(
        self,
        bundle: Path,
        *,
        opa_bin: Path | None = None,
        port: int | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.bundle = bundle
        self.opa_bin = opa_bin or find_opa()
        self.port = port or free_port()
        self.log_path = log_path
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout_s: float = 20.0) -> str:
        if not self.bundle.is_file():
            raise ConfigError(f"bundle {self.bundle} does not exist; run 'l7 bundle build'")
        args = [
            str(self.opa_bin),
            "run",
            "--server",
            "--addr",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "error",
            *self.extra_args,
            "--bundle",
            str(self.bundle),
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        finally:
            if self.log_path and not isinstance(out, int):
                out.close()
        self.wait_ready(ready_timeout_s)
        return self.url

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise PolicyStoreDegraded(
                    f"OPA exited with code {self._proc.returncode} while starting"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                r = requests.get(f"{self.url}/health?bundles=true", timeout=0.5)
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise PolicyStoreDegraded(f"OPA did not activate {self.bundle} within {timeout_s:.0f}s")

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> OpaProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
