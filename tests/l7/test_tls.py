"""Unit tests for l7.tls: issuing, file modes, SANs, reload logic, thumbprints, cnf."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from l7 import tls
from l7.errors import ConfigError, Forbidden


@pytest.fixture
def ca(tmp_path: Path) -> tls.CA:
    return tls.init_ca(tmp_path)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_ca_writes_a_p256_ca_with_a_private_key(tmp_path: Path, ca: tls.CA) -> None:
    assert _mode(tmp_path / "ca.key") == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert tls.load_ca(tmp_path).cert == ca.cert


def test_load_ca_names_the_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="l7 certs init"):
        tls.load_ca(tmp_path / "nowhere")


@pytest.mark.parametrize("service", tls.SERVICES)
def test_issue_gives_spiffe_localhost_and_loopback_sans(
    tmp_path: Path, ca: tls.CA, service: str
) -> None:
    cert_path, key_path = tls.issue(ca, service, tmp_path)
    assert (cert_path.name, key_path.name) == (f"{service}.pem", f"{service}.key")
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://layer7.local/{service}"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days <= 31
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)


def test_issue_refuses_a_bad_service_name(tmp_path: Path, ca: tls.CA) -> None:
    for bad in ("", "a/b", "x y"):
        with pytest.raises(ConfigError):
            tls.issue(ca, bad, tmp_path)


def test_spiffe_id() -> None:
    assert tls.spiffe_id("engine") == "spiffe://layer7.local/engine"
    assert tls.spiffe_id("spiffe://other/x") == "spiffe://other/x"


def test_accepts_table() -> None:
    assert tls.ACCEPTS["ledger"] == {"engine", "gateway", "auditor"}
    assert tls.ACCEPTS["gateway"] == {"tool"}
    assert tls.ACCEPTS["engine"] == {"cli", "tool"}
    assert tls.PeerAllowlist(["engine"]).allowed == {"spiffe://layer7.local/engine"}


def test_server_tls_needs_a_known_service_or_an_allowlist(tmp_path: Path, ca: tls.CA) -> None:
    tls.issue(ca, "cli", tmp_path)
    with pytest.raises(ConfigError, match="allowed="):
        tls.server_tls(tmp_path, "cli")
    assert tls.server_tls(tmp_path, "cli", allowed=["tool"]).interceptor.allowed == {
        "spiffe://layer7.local/tool"
    }


def test_server_credentials_refuse_missing_and_mismatched_files(tmp_path: Path, ca: tls.CA) -> None:
    with pytest.raises(ConfigError, match="certs init"):
        tls.server_credentials(tmp_path / "x.pem", tmp_path / "x.key", tmp_path / "ca.pem")
    a, _ = tls.issue(ca, "engine", tmp_path)
    _, k = tls.issue(ca, "ledger", tmp_path)
    with pytest.raises(ConfigError, match="does not match"):
        tls.server_credentials(a, k, tmp_path / "ca.pem")
    assert isinstance(
        tls.server_credentials(a, tmp_path / "engine.key", ca.cert_path), grpc.ServerCredentials
    )


def test_reloading_config_only_reloads_on_change(tmp_path: Path, ca: tls.CA) -> None:
    cert, key = tls.issue(ca, "engine", tmp_path)
    fetch = tls._ReloadingConfig(cert, key, ca.cert_path)
    assert fetch() is None
    tls.issue(ca, "engine", tmp_path)
    assert fetch() is not None
    assert fetch() is None
    cert.unlink()  # broken rotation: keep serving the old one, never raise into gRPC
    assert fetch() is None


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def test_thumbprint_is_base64url_sha256_of_der(tmp_path: Path, ca: tls.CA) -> None:
    cert, _ = tls.issue(ca, "engine", tmp_path)
    der = _der(cert)
    want = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert tls.cert_thumbprint_s256(der) == want
    assert tls.cert_thumbprint_s256(cert.read_bytes()) == want
    assert tls.cert_thumbprint_s256(cert.read_text()) == want
    assert "=" not in want and len(want) == 43


def test_cnf_binding(tmp_path: Path, ca: tls.CA) -> None:
    a, _ = tls.issue(ca, "engine", tmp_path)
    b, _ = tls.issue(ca, "gateway", tmp_path)
    bound: dict[str, Any] = {"sub": "x", "cnf": {"x5t#S256": tls.cert_thumbprint_s256(_der(a))}}
    tls.check_cnf_binding(bound, _der(a))  # match
    tls.check_cnf_binding({"sub": "x"}, _der(b))  # unbound token
    tls.check_cnf_binding({"sub": "x"}, None)
    tls.check_cnf_binding({"cnf": {"jkt": "abc"}}, _der(b))  # bound to something else
    for claims, der in [
        (bound, _der(b)),  # mismatch
        (bound, None),  # bound, but no client certificate
        ({"cnf": "nope"}, _der(a)),
        ({"cnf": {"x5t#S256": 7}}, _der(a)),
        ({"cnf": {"x5t#S256": ""}}, _der(a)),
    ]:
        with pytest.raises(Forbidden) as e:
            tls.check_cnf_binding(claims, der)
        assert e.value.reason == "cnf_mismatch"


def _certs_cli(argv: list[str]) -> int:
    import argparse

    from l7.cli.certs import add_certs_commands

    p = argparse.ArgumentParser()
    add_certs_commands(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(argv)
    rc: int = a.fn(a)
    return rc


def test_certs_init_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "certs"
    assert _certs_cli(["certs", "init", "--dir", str(d)]) == 0
    assert sorted(p.name for p in d.glob("*.pem")) == sorted(
        ["ca.pem", *(f"{s}.pem" for s in tls.SERVICES)]
    )
    assert all(_mode(k) == 0o600 for k in d.glob("*.key"))
    serial = x509.load_pem_x509_certificate((d / "engine.pem").read_bytes()).serial_number
    ca_serial = tls.load_ca(d).cert.serial_number
    # again: CA and certificates are kept
    assert _certs_cli(["certs", "init", "--dir", str(d), "--services", "engine"]) == 0
    assert x509.load_pem_x509_certificate((d / "engine.pem").read_bytes()).serial_number == serial
    # --rotate re-issues from the same CA
    assert _certs_cli(["certs", "init", "--dir", str(d), "--services", "engine", "--rotate"]) == 0
    new = x509.load_pem_x509_certificate((d / "engine.pem").read_bytes())
    assert new.serial_number != serial
    assert tls.load_ca(d).cert.serial_number == ca_serial
    new.verify_directly_issued_by(tls.load_ca(d).cert)
    assert "spiffe://layer7.local/engine" in capsys.readouterr().out


@pytest.mark.parametrize("services", ["", "a/b", "spiffe://layer7.local/x"])
def test_certs_init_refuses_bad_services(tmp_path: Path, services: str) -> None:
    with pytest.raises(ConfigError, match="--services|service name"):
        _certs_cli(["certs", "init", "--dir", str(tmp_path), "--services", services])
