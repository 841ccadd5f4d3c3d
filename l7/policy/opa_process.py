"""Run OPA as a supervised child process on a loopback port.

``l7 serve`` and the test fixtures use this: OPA serves one bundle file, we wait
until ``/health?bundles=true`` says the bundle is activated, and we stop the
process (and only it) on exit.

Given the bundle's ``signer`` (kid + public key), OPA runs with
``--verification-key <pub PEM> --verification-key-id <kid> --signing-alg ES256
--scope l7/<env>``: it then refuses to activate an unsigned bundle, one signed by
another key or for another environment, or one whose files do not match their
signed digests, and exits; ``start`` raises ``PolicyStoreDegraded`` with OPA's
reason. (Readiness stays ``/health?bundles=true``: ``/v1/status`` only answers
when the status plugin is configured, which a single ``--bundle`` file does not
need.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import requests

from l7.errors import ConfigError, PolicyStoreDegraded
from l7.policy.signing import SIGNING_ALG, Signer

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
        signer: Signer | None = None,
        scope: str | None = None,
    ) -> None:
        if any(a.split("=", 1)[0] == "--skip-verify" for a in extra_args):
            raise ConfigError("OPA may not run with --skip-verify: bundles must be verified")
        self.bundle = bundle
        self.opa_bin = opa_bin or find_opa()
        self.port = port or free_port()
        self.log_path = log_path
        self.extra_args = extra_args
        self.signer = signer
        self.scope = scope
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._output: Path | None = None

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
        ]
        self._tmp = tempfile.TemporaryDirectory(prefix="l7-opa-")
        if self.signer is not None:
            pub = Path(self._tmp.name) / f"{self.signer.kid}.pem"
            pub.write_text(self.signer.public_key_pem)
            args += [
                "--verification-key",
                str(pub),
                "--verification-key-id",
                self.signer.kid,
                "--signing-alg",
                SIGNING_ALG,
            ]
            if self.scope:
                args += ["--scope", self.scope]
        args += ["--bundle", str(self.bundle)]
        self._output = self.log_path or Path(self._tmp.name) / "opa.log"
        out = open(self._output, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        finally:
            out.close()
        try:
            self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _last_error(self) -> str:
        """The tail of OPA's output (its load error, e.g. a digest mismatch)."""
        if self._output is None:
            return ""
        try:
            with open(self._output, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 2000))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in tail.splitlines() if "error" in ln.lower()]
        return lines[-1].strip() if lines else ""

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                detail = self._last_error()
                raise PolicyStoreDegraded(
                    f"OPA exited with code {self._proc.returncode} while starting"
                    + (f": {detail}" if detail else "")
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
        tmp, self._tmp = self._tmp, None
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        finally:
            if tmp is not None:
                tmp.cleanup()

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
