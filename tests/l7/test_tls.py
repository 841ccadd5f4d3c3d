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
from cryptography.x509.oid import ExtendedKeyUsageOID

from l7 import tls
from l7.errors import ConfigError, Forbidden


@pytest.fixture
def ca(tmp_path: Path) -> tls.CA:
    """A CA in its own directory; ``tmp_path`` is the tiers' directory (ca.pem only)."""
    ca = tls.init_ca(tmp_path / "ca")
    tls.publish_ca(ca, tmp_path)
    return ca


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_ca_writes_a_p256_ca_with_a_private_key(tmp_path: Path, ca: tls.CA) -> None:
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca") == 0o700
    assert not (tmp_path / "ca.key").exists()  # the tiers' directory has the certificate only
    cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert tls.load_ca(tmp_path / "ca").cert == ca.cert


def test_load_ca_names_the_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="l7 certs init"):
        tls.load_ca(tmp_path / "nowhere")


@pytest.mark.parametrize("service", tls.SERVICES)
def test_issue_names_servers_only_for_server_tiers(
    tmp_path: Path, ca: tls.CA, service: str
) -> None:
    """A leaf carries its SPIFFE id; only a server tier also carries the server name its
    clients verify (and serverAuth). No leaf carries localhost or 127.0.0.1 any more: any
    tier would pass for any other on a loopback target."""
    cert_path, key_path = tls.issue(ca, service, tmp_path)
    assert (cert_path.name, key_path.name) == (f"{service}.pem", f"{service}.key")
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://layer7.local/{service}"
    ]
    eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    if service in tls.SERVER_TIERS:
        assert san.get_values_for_type(x509.DNSName) == [f"{service}.layer7.local"]
        assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        assert san.get_values_for_type(x509.DNSName) == []
        assert eku == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert san.get_values_for_type(x509.IPAddress) == []
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life.days <= 31
    assert cert.issuer == ca.cert.subject
    cert.verify_directly_issued_by(ca.cert)


def test_server_name_is_for_server_tiers_only() -> None:
    from ledger.remote import LEDGER_SERVER_NAME

    assert tls.server_name("ledger") == LEDGER_SERVER_NAME == "ledger.layer7.local"
    assert tls.server_name("spiffe://layer7.local/engine") == "engine.layer7.local"
    for client in ("cli", "tool", "auditor"):
        with pytest.raises(ConfigError, match="not a server tier"):
            tls.server_name(client)
    with pytest.raises(ConfigError, match="not a server tier"):
        tls.secure_channel("127.0.0.1:1", grpc.local_channel_credentials(), expect="tool")


def test_a_tiers_directory_holding_the_ca_key_is_refused(tmp_path: Path) -> None:
    ca = tls.init_ca(tmp_path)  # the old layout: ca.key beside the leaves
    tls.issue(ca, "ledger", tmp_path)
    tls.issue(ca, "engine", tmp_path)
    with pytest.raises(ConfigError, match="CA's private key sits beside"):
        tls.server_tls(tmp_path, "ledger")
    with pytest.raises(ConfigError, match="CA's private key sits beside"):
        tls.client_credentials(tmp_path, "engine")
    with pytest.raises(ConfigError, match="CA key in the tiers' directory"):
        tls.publish_ca(ca, tmp_path)


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


def test_reload_keeps_the_pinned_ca_and_identity(
    tmp_path: Path, ca: tls.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation is served only from the CA pinned at start and for the same SPIFFE id;
    a CA appended to ca.pem never reaches the served trust bundle."""
    cert, key = tls.issue(ca, "ledger", tmp_path)
    pinned = (tmp_path / "ca.pem").read_bytes()
    fetch = tls._ReloadingConfig(cert, key, tmp_path / "ca.pem")
    rogue = tls.init_ca(tmp_path / "rogue")
    with (tmp_path / "ca.pem").open("ab") as f:  # the attack: append a CA
        f.write((tmp_path / "rogue" / "ca.pem").read_bytes())
    tls.issue(rogue, "ledger", tmp_path)  # and a leaf from it
    assert fetch() is None  # refused: not issued by the pinned CA
    assert "pinned at start stays in force" in caplog.text
    assert "not issued by the CA pinned at start" in caplog.text
    tls.issue(ca, "engine", tmp_path / "other")  # right CA, wrong identity
    for n in ("pem", "key"):
        (tmp_path / f"ledger.{n}").write_bytes((tmp_path / "other" / f"engine.{n}").read_bytes())
    assert fetch() is None
    tls.issue(ca, "ledger", tmp_path)  # a real rotation
    assert fetch() is not None
    assert fetch._ca_pem == pinned


def test_server_credentials_refuse_a_leaf_from_another_ca(tmp_path: Path, ca: tls.CA) -> None:
    rogue = tls.init_ca(tmp_path / "rogue")
    cert, key = tls.issue(rogue, "ledger", tmp_path)
    with pytest.raises(ConfigError, match="not issued by the CA pinned"):
        tls.server_credentials(cert, key, tmp_path / "ca.pem")


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
    d, c = tmp_path / "certs", tmp_path / "ca"
    assert _certs_cli(["certs", "init", "--dir", str(d), "--ca-dir", str(c)]) == 0
    assert sorted(p.name for p in d.glob("*.pem")) == sorted(
        ["ca.pem", *(f"{s}.pem" for s in tls.SERVICES)]
    )
    # the tiers' directory holds ca.pem and the leaves, never the CA key
    assert sorted(p.name for p in d.glob("*.key")) == sorted(f"{s}.key" for s in tls.SERVICES)
    assert sorted(p.name for p in c.iterdir()) == ["ca.key", "ca.pem"]
    assert _mode(c) == 0o700 and _mode(d) == 0o700 and _mode(c / "ca.key") == 0o600
    assert all(_mode(k) == 0o600 for k in d.glob("*.key"))
    assert (d / "ca.pem").read_bytes() == (c / "ca.pem").read_bytes()
    serial = x509.load_pem_x509_certificate((d / "engine.pem").read_bytes()).serial_number
    ca_serial = tls.load_ca(c).cert.serial_number
    # again: CA and certificates are kept
    assert (
        _certs_cli(["certs", "init", "--dir", str(d), "--ca-dir", str(c), "--services", "engine"])
        == 0
    )
    assert x509.load_pem_x509_certificate((d / "engine.pem").read_bytes()).serial_number == serial
    # --rotate re-issues from the same CA
    argv = ["certs", "init", "--dir", str(d), "--ca-dir", str(c), "--services", "engine"]
    assert _certs_cli([*argv, "--rotate"]) == 0
    new = x509.load_pem_x509_certificate((d / "engine.pem").read_bytes())
    assert new.serial_number != serial
    assert tls.load_ca(c).cert.serial_number == ca_serial
    new.verify_directly_issued_by(tls.load_ca(c).cert)
    out = capsys.readouterr().out
    assert "spiffe://layer7.local/engine  server name engine.layer7.local" in out


def test_certs_init_keeps_the_ca_key_out_of_the_tiers_directory(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    with pytest.raises(ConfigError, match="--ca-dir .* is --dir"):
        _certs_cli(["certs", "init", "--dir", str(d), "--ca-dir", str(d)])
    tls.init_ca(d)  # an older layout: ca.key among the leaves
    with pytest.raises(ConfigError, match="move it out"):
        _certs_cli(["certs", "init", "--dir", str(d), "--ca-dir", str(tmp_path / "ca")])


@pytest.mark.parametrize("services", ["", "a/b", "spiffe://layer7.local/x"])
def test_certs_init_refuses_bad_services(tmp_path: Path, services: str) -> None:
    with pytest.raises(ConfigError, match="--services|service name"):
        _certs_cli(
            [
                "certs",
                "init",
                "--dir",
                str(tmp_path / "d"),
                "--ca-dir",
                str(tmp_path / "c"),
                "--services",
                services,
            ]
        )
