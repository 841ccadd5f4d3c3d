"""Issue #14, "only ``l7 serve`` has a production posture", tried with real processes:
every server (``l7 serve``, ``l7 ledger serve``, ``l7 gateway serve``, ``l7 witness
serve``) refuses ``--env production`` or a non-loopback address without mTLS (and, where
it has one, caller identity), exits 2 and names the missing flag. With ``--tls-dir`` the
witness serves HTTPS to the ledger and engines only, and its clients refuse a server
that is not the witness before they send anything."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from l7 import tls
from ledger.checkpoint import Checkpoint, Ed25519CheckpointSigner, log_key, sign_checkpoint
from ledger.errors import WitnessUnavailable
from ledger.merkle import MerkleTree, leaf_hash
from ledger.mtls import WitnessTLS
from ledger.note import VerifierKey
from ledger.witness_client import WitnessClient, WitnessEndpoint
from tests.conftest import REPO
from tests.l7.identity.forge import ISSUER, jwks, new_key

pytestmark = pytest.mark.integration

ORIGIN = "layer7.local/ledger/posture"


def l7(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("posture-pki")
    ca = tls.init_ca(root / "ca")
    tls.publish_ca(ca, root / "certs")
    for s in tls.SERVICES:
        tls.issue(ca, s, root / "certs")
    return root / "certs"


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    p = tmp_path / "jwks.json"
    p.write_text(json.dumps(jwks(new_key("ES256"))))
    return p


def _refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "refusing to serve" in r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert "on 127.0.0.1:" not in r.stdout  # it never announced a listening port


# -- l7 ledger serve ----------------------------------------------------------------------


def _ledger_serve(tmp_path: Path, jwks_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return l7(
        "ledger",
        "serve",
        "--ledger",
        f"sqlite:///{tmp_path / 'l.sqlite'}",
        "--oidc-issuer",
        ISSUER,
        "--jwks-file",
        str(jwks_file),
        "--work-dir",
        str(tmp_path),
        *extra,
    )


def test_ledger_serve_production_without_tls_refuses_to_start(
    tmp_path: Path, jwks_file: Path
) -> None:
    r = _ledger_serve(tmp_path, jwks_file, "--env", "production", "--addr", "127.0.0.1:0")
    _refused(r, "the ledger service", "--env production", "without --tls-dir")
    assert not (tmp_path / "l.sqlite").exists()  # refused before it opened anything


def test_ledger_serve_on_a_public_address_without_tls_refuses_to_start(
    tmp_path: Path, jwks_file: Path
) -> None:
    r = _ledger_serve(tmp_path, jwks_file, "--addr", "0.0.0.0:0")
    _refused(r, "--addr 0.0.0.0:0", "without --tls-dir")


def test_ledger_serve_production_names_every_missing_flag(tmp_path: Path) -> None:
    r = l7("ledger", "serve", "--env", "production", "--ledger", f"sqlite:///{tmp_path / 'l'}")
    _refused(r, "without --oidc-issuer and --tls-dir")


# -- l7 gateway serve ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [("--env", "production", "--addr", "127.0.0.1:0"), ("--env", "dev", "--addr", "0.0.0.0:0")],
    ids=["production", "public-address"],
)
def test_gateway_serve_exposed_without_tls_refuses_to_start(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    r = l7(
        "gateway",
        "serve",
        "--grant-public-key",
        str(tmp_path / "grant.pem.pub"),
        "--ledger",
        f"sqlite:///{tmp_path / 'l.sqlite'}",
        *flags,
    )
    _refused(r, "the gateway", "without --tls-dir")


# -- l7 serve -----------------------------------------------------------------------------


def test_serve_production_without_identity_and_tls_refuses_to_start(tmp_path: Path) -> None:
    r = l7(
        "serve",
        "--env",
        "production",
        "--addr",
        "127.0.0.1:0",
        "--ledger",
        f"sqlite:///{tmp_path / 'l.sqlite'}",
        "--work-dir",
        str(tmp_path),
    )
    _refused(r, "the engine", "without --oidc-issuer and --tls-dir")


def test_serve_on_a_public_address_without_tls_refuses_to_start(
    tmp_path: Path, jwks_file: Path
) -> None:
    r = l7(
        "serve",
        "--addr",
        "0.0.0.0:0",
        "--oidc-issuer",
        ISSUER,
        "--jwks-file",
        str(jwks_file),
        "--ledger",
        f"sqlite:///{tmp_path / 'l.sqlite'}",
        "--work-dir",
        str(tmp_path),
    )
    _refused(r, "--addr 0.0.0.0:0", "without --tls-dir")


# -- l7 witness serve ---------------------------------------------------------------------


@pytest.fixture
def log_signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


@pytest.mark.parametrize(
    "flags",
    [("--env", "production", "--addr", "127.0.0.1:0"), ("--env", "dev", "--addr", "0.0.0.0:0")],
    ids=["production", "public-address"],
)
def test_witness_serve_exposed_without_tls_refuses_to_start(
    tmp_path: Path, log_signer: Ed25519CheckpointSigner, flags: tuple[str, ...]
) -> None:
    vkey = log_key(ORIGIN, log_signer.public_key_raw).encode()
    r = l7("witness", "serve", "--state-dir", str(tmp_path / "w"), "--log", vkey, *flags)
    _refused(r, "the witness", "without --tls-dir")
    assert not (tmp_path / "w").exists()


@dataclass
class WitnessServe:
    proc: subprocess.Popen[str]
    url: str
    vkey: VerifierKey


@pytest.fixture
def witness_mtls(
    tmp_path: Path, certs: Path, log_signer: Ed25519CheckpointSigner
) -> Iterator[WitnessServe]:
    """``l7 witness serve --env production --tls-dir``: the posture satisfied, it starts."""
    vkey = log_key(ORIGIN, log_signer.public_key_raw).encode()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "l7.cli.main",
            "witness",
            "serve",
            "--env",
            "production",
            "--state-dir",
            str(tmp_path / "w"),
            "--log",
            vkey,
            "--addr",
            "127.0.0.1:0",
            "--tls-dir",
            str(certs),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    first, second = proc.stdout.readline(), proc.stdout.readline()
    try:
        assert " on https://127.0.0.1:" in first, (first, proc.stderr and proc.stderr.read())
        url = first.rsplit(" on ", 1)[1].strip()
        yield WitnessServe(
            proc, url, VerifierKey.decode(second.removeprefix("witness key: ").strip())
        )
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def _checkpoint(signer: Ed25519CheckpointSigner) -> tuple[Checkpoint, MerkleTree]:
    t = MerkleTree()
    t.extend(leaf_hash(f"e{i}".encode()) for i in range(3))
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return sign_checkpoint(3, t.root(3), signer, now, origin=ORIGIN, prev=None), t


def test_witness_over_mtls_cosigns_for_the_ledger_only(
    witness_mtls: WitnessServe, certs: Path, log_signer: Ed25519CheckpointSigner
) -> None:
    cp, t = _checkpoint(log_signer)
    as_ledger = WitnessClient(
        WitnessEndpoint(witness_mtls.url, witness_mtls.vkey, WitnessTLS.client(certs, "ledger"))
    )
    cosig = as_ledger.add_checkpoint(cp, t.consistency_proof)
    assert cosig.name == witness_mtls.vkey.name
    # a tool's certificate (our CA, wrong tier) is answered 403 peer_not_allowed
    as_tool = WitnessClient(
        WitnessEndpoint(witness_mtls.url, witness_mtls.vkey, WitnessTLS.client(certs, "tool"))
    )
    with pytest.raises(WitnessUnavailable, match="peer_not_allowed"):
        as_tool.latest(ORIGIN)
    # plain HTTP (no certificate at all) never gets an answer
    plain = WitnessClient(
        WitnessEndpoint(witness_mtls.url.replace("https://", "http://"), witness_mtls.vkey)
    )
    with pytest.raises(WitnessUnavailable):
        plain.latest(ORIGIN)


class _FakeTLSServer:
    """An HTTPS listener holding ``cert``'s pair from our CA; records every byte sent."""

    def __init__(self, certs: Path, cert: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(certs / "ca.pem"))
        ctx.load_cert_chain(str(certs / f"{cert}.pem"), str(certs / f"{cert}.key"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with self.ctx.wrap_socket(conn, server_side=True) as s:
            s.settimeout(30)
            try:
                while chunk := s.recv(4096):
                    self.received += chunk
            except (OSError, ssl.SSLError):
                pass


@pytest.mark.parametrize("impostor", ["ledger", "gateway"])
def test_log_sends_nothing_to_a_witness_impostor(
    certs: Path, log_signer: Ed25519CheckpointSigner, impostor: str
) -> None:
    fake = _FakeTLSServer(certs, impostor)
    cp, t = _checkpoint(log_signer)
    key = VerifierKey.decode(log_key("impostor.example/w", log_signer.public_key_raw).encode())
    c = WitnessClient(
        WitnessEndpoint(f"https://127.0.0.1:{fake.port}", key, WitnessTLS.client(certs, "ledger"))
    )
    with pytest.raises(WitnessUnavailable, match="is not spiffe://layer7.local/witness"):
        c.add_checkpoint(cp, t.consistency_proof)
    fake.thread.join(timeout=30)
    fake.sock.close()
    assert not fake.thread.is_alive()
    assert fake.received == b""  # not one byte of the request reached it
