"""Run OPA as a supervised child process on a loopback port.

``l7 serve`` and the test fixtures use this: OPA serves one bundle file, we wait
until ``/health?bundles=true`` says the bundle is activated, and we stop the
process (and only it) on exit.

Given the bundle's ``signer`` (kid + public key), OPA runs with
``--verification-key <pub PEM> --verification-key-id <kid> --signing-alg ES256
--scope l7/<env>``: it then refuses to activate an unsigned bundle, one signed by
another key or for another environment, or one whose files do not match their
signed digests, and exits; ``start`` raises ``PolicyStoreDegraded`` with OPA's
reason. With a signer, OPA does not load the file itself: it fetches it from a loopback
bundle server (``l7.policy.bundle_server``) every ``poll_s`` seconds through its
bundle plugin, with the verification key, key id and scope in its configuration, and
reports the bundle in ``/v1/status`` (active revision, last successful activation,
last error), which is what ``l7.policy.readiness`` checks. A bundle refused while
starting raises ``PolicyStoreDegraded`` with OPA's reason.

The port is fixed for the life of the object: after OPA died (``kill`` simulates
a crash) or was stopped, ``start`` brings a new OPA up on the same address, so an
``OpaEvaluator`` pointed at ``url`` resumes without being rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import requests

from l7.errors import ConfigError, PolicyStoreDegraded
from l7.policy.bundle_server import BUNDLE_RESOURCE, BundleServer
from l7.policy.readiness import fetch_bundle_status
from l7.policy.signing import SIGNING_ALG, Signer
from ledger.files import open_private_append

__all__ = ["BUNDLE_NAME", "OpaProcess", "find_opa", "free_port"]

BUNDLE_NAME = "l7"
"""The bundle's name in OPA's configuration and in ``/v1/status``."""


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
        poll_s: float = 1.0,
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
        self.poll_s = poll_s
        """With a signer: OPA fetches the bundle from a loopback bundle server every
        ``poll_s`` seconds and reports it in ``/v1/status`` (0: load the file once)."""
        self._bundle_server: BundleServer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._output: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The OPA child's process id while one was started (None before or after)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, *, ready_timeout_s: float = 20.0) -> str:
        """Start OPA on this object's port (again, after a crash or ``stop``)."""
        if self.running():
            raise ConfigError(f"OPA is already running on {self.url} (pid {self.pid})")
        self.stop()  # reap a child that died and drop its temporary files
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
        if self.signer is not None and self.poll_s:
            args += ["--config-file", str(self._polling_config(Path(self._tmp.name)))]
        elif self.signer is not None:
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
        if self._bundle_server is None:
            args += ["--bundle", str(self.bundle)]
        self._output = self.log_path or Path(self._tmp.name) / "opa.log"
        out = open_private_append(self._output)  # 0600: it can carry decision input
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

    def _polling_config(self, tmp: Path) -> Path:
        """OPA's configuration for fetching the signed bundle from our bundle server:
        verification key and key id, scope, polling, and the status plugin (so that
        ``/v1/status`` reports the bundle's activations and errors)."""
        assert self.signer is not None
        self._bundle_server = BundleServer(self.bundle).start()
        delay = max(1, round(self.poll_s))
        signing: dict[str, str] = {"keyid": self.signer.kid}
        if self.scope:
            signing["scope"] = self.scope
        config = {
            "services": {"l7": {"url": self._bundle_server.url}},
            "bundles": {
                BUNDLE_NAME: {
                    "service": "l7",
                    "resource": BUNDLE_RESOURCE,
                    "polling": {"min_delay_seconds": delay, "max_delay_seconds": delay},
                    "signing": signing,
                }
            },
            "keys": {
                self.signer.kid: {"algorithm": SIGNING_ALG, "key": self.signer.public_key_pem}
            },
            "status": {"service": "l7"},
        }
        path = tmp / "opa-config.json"
        path.write_text(json.dumps(config))
        return path

    def _bundle_error(self) -> str:
        """OPA's reason for refusing the bundle it last fetched ("" if none)."""
        if self._bundle_server is None:
            return ""
        try:
            st = fetch_bundle_status(self.url, BUNDLE_NAME, timeout_s=0.5)
        except PolicyStoreDegraded:
            return ""
        return st.error_message if st.error_code else ""

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
            refused = self._bundle_error()  # a polled bundle OPA refused: say why, now
            if refused:
                self.stop()
                raise PolicyStoreDegraded(f"OPA refused the bundle {self.bundle}: {refused}")
            time.sleep(0.05)
        self.stop()
        raise PolicyStoreDegraded(f"OPA did not activate {self.bundle} within {timeout_s:.0f}s")

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the child (a crash, as an operator or the OOM killer would cause one);
        the engine then denies with ``policy_store_degraded`` until ``start``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        tmp, self._tmp = self._tmp, None
        server, self._bundle_server = self._bundle_server, None
        if server is not None:
            server.stop()
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
