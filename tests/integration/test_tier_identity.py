"""Issue #14, "any tier can become any tier", tried with real processes.

The PKI comes from the real ``l7 certs init`` (the CA key in its own directory). A fake
gRPC server, run here, holds *another* tier's certificate and key -- what a compromised
tier really has -- and records the metadata of every call that reaches it. The real
clients (``l7 serve`` reaching its ledger with the writer token, ``l7 pending`` reaching
the engine with an OIDC token, a governed tool reaching the gateway with a grant) must
fail the handshake and send it nothing; the same fake holding the *right* certificate
receives the token, which proves the capture works. A running ``l7 ledger serve`` ignores
a CA appended to its ca.pem, and no server starts with the CA key beside its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from l7 import tls
from l7.client import RemoteError
from l7.errors import GatewayDegraded
from l7.gateway.client import GatewayClient
from tests.conftest import REPO
from tests.l7.identity.forge import AUDIENCE, ISSUER, jwks, new_key

pytestmark = pytest.mark.integration

WRITER_TOKEN = "writer-token-for-the-ledger-only"
OIDC_TOKEN = "approver-oidc-token-for-the-engine-only"


def l7(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
        env={**os.environ, **(env or {})},
    )


@dataclass(frozen=True)
class Pki:
    tiers: Path  # what every tier gets: ca.pem and the leaves
    ca: Path  # the CA, key included; no tier reads it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    r = l7("certs", "init", "--dir", str(root / "certs"), "--ca-dir", str(root / "ca"))
    assert r.returncode == 0, r.stderr
    assert not (root / "certs" / "ca.key").exists()
    assert (root / "ca" / "ca.key").exists()
    return Pki(root / "certs", root / "ca")


@dataclass
class FakeServer:
    """A gRPC server holding ``cert``'s certificate and key (from our CA), answering every
    method UNIMPLEMENTED after recording the call's metadata."""

    target: str
    calls: list[dict[str, str]] = field(default_factory=list)

    def tokens(self) -> list[str]:
        return [c["authorization"] for c in self.calls if "authorization" in c]


class _Capture(grpc.GenericRpcHandler):
    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        with self.lock:
            self.fake.calls.append(
                {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
            )
        return None  # UNIMPLEMENTED


@pytest.fixture
def fake_server(pki: Pki) -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(cert: str) -> FakeServer:
        d = pki.tiers
        creds = grpc.ssl_server_credentials(
            [((d / f"{cert}.key").read_bytes(), (d / f"{cert}.pem").read_bytes())],
            root_certificates=(d / "ca.pem").read_bytes(),
            require_client_auth=True,
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        port = server.add_secure_port("127.0.0.1:0", creds)
        fake = FakeServer(f"127.0.0.1:{port}")
        server.add_generic_rpc_handlers((_Capture(fake),))
        server.start()
        servers.append(server)
        return fake

    yield start
    for s in servers:
        s.stop(None)


# -- engine -> ledger: the writer token ---------------------------------------------------


@pytest.fixture(scope="module")
def engine_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-work")  # shared: the bundle is built once


def _serve_engine(pki: Pki, work: Path, ledger: str) -> subprocess.CompletedProcess[str]:
    """``l7 serve`` against ``ledger``: it reads the ledger while starting (the policy
    activation history), with the writer token, and exits when the ledger fails it."""
    return l7(
        "serve",
        "--env",
        "local",
        "--addr",
        "127.0.0.1:0",
        "--ledger",
        f"grpc://{ledger}",
        "--tls-dir",
        str(pki.tiers),
        "--work-dir",
        str(work),
        "--no-local-witness",
        "--integrity-every-s",
        "0",
        "--opa-restart-s",
        "0",
        env={"L7_LEDGER_TOKEN": WRITER_TOKEN},
    )


@pytest.mark.parametrize("impostor", ["tool", "gateway", "engine"])
def test_engine_sends_no_writer_token_to_another_tier(
    pki: Pki, engine_work: Path, fake_server: Any, impostor: str
) -> None:
    fake = fake_server(impostor)
    r = _serve_engine(pki, engine_work, fake.target)
    assert r.returncode != 0
    assert "ledger" in r.stderr.lower()
    assert fake.calls == []  # not one call, so no token, reached the impostor


def test_engine_sends_its_writer_token_to_the_ledger(
    pki: Pki, engine_work: Path, fake_server: Any
) -> None:
    """Control: the same fake holding the ledger's certificate receives the token."""
    fake = fake_server("ledger")
    r = _serve_engine(pki, engine_work, fake.target)
    assert r.returncode != 0  # the fake answers UNIMPLEMENTED
    assert fake.tokens() and set(fake.tokens()) == {f"Bearer {WRITER_TOKEN}"}


# -- cli -> engine: an approver's OIDC token ----------------------------------------------


@pytest.mark.parametrize("impostor", ["tool", "ledger", "gateway", "cli"])
def test_cli_sends_no_oidc_token_to_another_tier(pki: Pki, fake_server: Any, impostor: str) -> None:
    fake = fake_server(impostor)
    r = l7(
        "pending",
        "--target",
        fake.target,
        "--tls-dir",
        str(pki.tiers),
        env={"L7_TOKEN": OIDC_TOKEN},
    )
    assert r.returncode == 1, r.stderr  # refused at the handshake, not a usage error
    assert "UNAVAILABLE" in r.stdout + r.stderr
    assert fake.calls == []


def test_cli_sends_its_oidc_token_to_the_engine(pki: Pki, fake_server: Any) -> None:
    fake = fake_server("engine")
    r = l7(
        "pending",
        "--target",
        fake.target,
        "--tls-dir",
        str(pki.tiers),
        env={"L7_TOKEN": OIDC_TOKEN},
    )
    assert r.returncode == 1, r.stderr
    assert "UNIMPLEMENTED" in r.stdout + r.stderr
    assert fake.tokens() == [f"Bearer {OIDC_TOKEN}"]


# -- tool -> gateway: the grant travels in the request ------------------------------------


@pytest.mark.parametrize("impostor", ["tool", "engine", "ledger"])
def test_governed_tool_sends_no_grant_to_another_tier(
    pki: Pki, fake_server: Any, impostor: str
) -> None:
    fake = fake_server(impostor)
    gw = GatewayClient(fake.target, credentials=tls.client_credentials(pki.tiers, "tool"))
    try:
        with pytest.raises(GatewayDegraded, match="Hostname Verification|[Hh]andshake failed"):
            gw.authorize("grant-that-must-stay-home", {"class": "data.read"}, environment="dev")
    finally:
        gw.close()
    assert fake.calls == []


def test_governed_tool_reaches_a_gateway(pki: Pki, fake_server: Any) -> None:
    fake = fake_server("gateway")
    gw = GatewayClient(fake.target, credentials=tls.client_credentials(pki.tiers, "tool"))
    try:
        with pytest.raises(RemoteError) as err:
            gw.authorize("grant", {"class": "data.read"}, environment="dev")
    finally:
        gw.close()
    assert err.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert len(fake.calls) == 1


# -- the ledger service: CA custody and a pinned trust bundle ----------------------------


@dataclass
class LedgerServe:
    proc: subprocess.Popen[str]
    target: str


def _ledger_serve(pki_dir: Path, work: Path) -> LedgerServe:
    key = new_key("ES256")
    (work / "jwks.json").write_text(json.dumps(jwks(key)))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "l7.cli.main",
            "ledger",
            "serve",
            "--ledger",
            f"sqlite:///{work / 'ledger.sqlite'}",
            "--addr",
            "127.0.0.1:0",
            "--oidc-issuer",
            ISSUER,
            "--oidc-audience",
            AUDIENCE,
            "--jwks-file",
            str(work / "jwks.json"),
            "--work-dir",
            str(work),
            "--tls-dir",
            str(pki_dir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Layer-7 ledger service on HOST:PORT (...)"
    if not line.startswith("Layer-7 ledger service on "):
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"l7 ledger serve did not start: {line!r} {err}")
    target = line.removeprefix("Layer-7 ledger service on ").split(" ", 1)[0]
    return LedgerServe(proc, target)


@pytest.fixture
def ledger_serve(pki: Pki, tmp_path: Path) -> Iterator[LedgerServe]:
    # a private copy of the tiers' directory: this test writes to its ca.pem
    d = tmp_path / "certs"
    d.mkdir(mode=0o700)
    for p in pki.tiers.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
        os.chmod(d / p.name, 0o600)
    s = _ledger_serve(d, tmp_path)
    yield s
    s.proc.terminate()
    try:
        s.proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.communicate(timeout=10)


def _health(target: str, creds: grpc.ChannelCredentials) -> grpc.RpcError | None:
    with tls.secure_channel(target, creds, expect="ledger") as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.RpcError as e:
            return e
    return None


def test_a_ca_appended_to_ca_pem_is_not_trusted_by_a_running_server(
    pki: Pki, ledger_serve: LedgerServe, tmp_path: Path
) -> None:
    d = Path(tmp_path / "certs")
    real_ca = (d / "ca.pem").read_bytes()
    assert _health(ledger_serve.target, tls.client_credentials(d, "engine")) is None
    rogue = tls.init_ca(tmp_path / "rogue-ca")
    tls.issue(rogue, "engine", tmp_path / "rogue")  # a writer identity from the rogue CA
    with (d / "ca.pem").open("ab") as f:  # the attack: append the rogue CA on disk
        f.write((tmp_path / "rogue-ca" / "ca.pem").read_bytes())
    # new connections (each makes the server look at its files again) still trust only
    # the CA pinned at start
    assert _health(ledger_serve.target, tls.client_credentials(d, "engine")) is None
    forged = tls.channel_credentials(
        tmp_path / "rogue" / "engine.pem", tmp_path / "rogue" / "engine.key", d / "ca.pem"
    )
    err = _health(ledger_serve.target, forged)
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE
    assert _health(ledger_serve.target, tls.client_credentials(d, "auditor")) is None
    assert real_ca in (d / "ca.pem").read_bytes()


def test_no_server_starts_with_the_ca_key_beside_the_tier_keys(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    ca = tls.init_ca(d)  # the old layout: every tier could read ca.key and mint any id
    tls.issue(ca, "ledger", d)
    key = new_key("ES256")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(key)))
    r = l7(
        "ledger",
        "serve",
        "--ledger",
        f"sqlite:///{tmp_path / 'l.sqlite'}",
        "--oidc-issuer",
        ISSUER,
        "--jwks-file",
        str(tmp_path / "jwks.json"),
        "--work-dir",
        str(tmp_path),
        "--tls-dir",
        str(d),
        timeout=60,
    )
    assert r.returncode == 2
    assert "CA's private key sits beside the tiers' keys" in r.stderr
