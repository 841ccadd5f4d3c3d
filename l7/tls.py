"""mTLS between the tiers (engine, gateway, ledger) and their clients.

A local CA (EC P-256) issues one short-lived certificate per service or client, named
by a SPIFFE-style URI SAN ``spiffe://layer7.local/<service>`` (plus DNS ``localhost``
and IP ``127.0.0.1`` so that loopback targets verify). Keys and certificates live in a
git-ignored directory (``.build/certs/`` by default) and are never committed.

    ca = init_ca(d)                                   # d/ca.pem, d/ca.key (0600)
    cert, key = issue(ca, "engine", d)                # d/engine.pem, d/engine.key (0600)
    creds = server_credentials(cert, key, d / "ca.pem")   # client certs required + verified
    server = grpc.server(..., interceptors=[PeerAllowlist(ACCEPTS["engine"]), ...])
    server.add_secure_port(addr, creds)
    ch = secure_channel(target, channel_credentials(cli_cert, cli_key, d / "ca.pem"))

TLS proves the peer holds a certificate from our CA; *which* peer may call a server
is decided by :class:`PeerAllowlist` (gRPC's server credentials cannot express it).
The server credentials re-read the certificate files on every new connection when they
have changed on disk, so rotation needs no restart. :func:`check_cnf_binding` enforces
RFC 8705 certificate-bound tokens (``cnf.x5t#S256``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from l7.errors import ConfigError, Forbidden

__all__ = [
    "ACCEPTS",
    "CA",
    "CLIENT_EXPECTS",
    "DEFAULT_CA_DIR",
    "DEFAULT_CERT_DIR",
    "SERVER_TIERS",
    "SERVICES",
    "SPIFFE_TRUST_DOMAIN",
    "PeerAllowlist",
    "ServerTLS",
    "cert_thumbprint_s256",
    "channel_credentials",
    "check_cnf_binding",
    "client_channel",
    "client_credentials",
    "init_ca",
    "issue",
    "load_ca",
    "peer_cert_der",
    "peer_spiffe_id",
    "publish_ca",
    "secure_channel",
    "server_credentials",
    "server_name",
    "server_name_option",
    "server_tls",
    "spiffe_id",
    "spiffe_id_of",
    "tls_dir_problem",
]

log = logging.getLogger(__name__)

SPIFFE_TRUST_DOMAIN = "layer7.local"
DEFAULT_CERT_DIR = Path(".build/certs")
DEFAULT_CA_DIR = Path(".build/ca")
SERVICES = ("engine", "gateway", "ledger", "witness", "cli", "auditor", "tool")
SERVER_TIERS = frozenset({"engine", "gateway", "ledger", "witness"})
"""The services that listen: only their leaves carry a server name and serverAuth."""
CA_VALIDITY = dt.timedelta(days=365)
LEAF_VALIDITY = dt.timedelta(days=30)

# Which peers each server accepts (by service name; see spiffe_id).
#   engine  <- cli (operators: decide, approve, inspect) and tool (governed-tool processes:
#              ``Governed`` calls Decide on the engine before it calls the gateway).
#   gateway <- tool (governed-tool processes executing an authorized call). The gateway
#              never calls the engine; it reads the ledger.
#   ledger  <- engine and gateway (writes and reads) and auditor (read-only export/verify;
#              the ledger's ReadAuthorizer still decides what an auditor may read).
ACCEPTS: Mapping[str, frozenset[str]] = {
    "engine": frozenset({"cli", "tool"}),
    "gateway": frozenset({"tool"}),
    "ledger": frozenset({"engine", "gateway", "auditor"}),
}


# Which servers each client calls, and so may expect (``client_channel(expect=)``; the
# witness speaks HTTPS, checked by ``ledger.mtls``, which accepts ledger/engine/auditor).
#   engine  -> ledger, witness (an in-process ledger's checkpoints);  gateway -> ledger
#   ledger  -> witness;  auditor -> ledger, witness (its cosigned checkpoints)
#   cli     -> engine;  tool -> engine (Decide) and gateway (Authorize / Confirm)
CLIENT_EXPECTS: Mapping[str, frozenset[str]] = {
    "engine": frozenset({"ledger", "witness"}),
    "gateway": frozenset({"ledger"}),
    "ledger": frozenset({"witness"}),
    "auditor": frozenset({"ledger", "witness"}),
    "cli": frozenset({"engine"}),
    "tool": frozenset({"engine", "gateway"}),
}


def server_name(service: str) -> str:
    """The DNS name a server tier's certificate carries and its clients verify:
    ``ledger`` -> ``ledger.layer7.local`` (always beside ``spiffe://layer7.local/ledger``)."""
    name = spiffe_id(service).removeprefix(f"spiffe://{SPIFFE_TRUST_DOMAIN}/")
    if name not in SERVER_TIERS:
        raise ConfigError(
            f"{service!r} is not a server tier (expected one of {sorted(SERVER_TIERS)})"
        )
    return f"{name}.{SPIFFE_TRUST_DOMAIN}"


def spiffe_id(service: str) -> str:
    """``engine`` -> ``spiffe://layer7.local/engine``; a full SPIFFE id is returned as is."""
    if service.startswith("spiffe://"):
        return service
    if not service or "/" in service or not service.replace("-", "").isalnum():
        raise ConfigError(f"service name {service!r}: expected letters, digits and '-'")
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/{service}"


# --------------------------------------------------------------------------- issuing


@dataclass(frozen=True)
class CA:
    """The local CA: its certificate, key, and where the PEM certificate lives."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the first byte (atomic replace)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(directory: Path | str, *, common_name: str = "Layer-7 local CA") -> CA:
    """Create a new CA in ``directory`` (``ca.pem``, ``ca.key`` 0600), replacing any old one."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Layer-7"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(d / "ca.key", _key_pem(key))
    _write_public(d / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return CA(cert=cert, key=key, cert_path=d / "ca.pem")


def load_ca(directory: Path | str) -> CA:
    """The CA previously created by :func:`init_ca` in ``directory``."""
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{d}: no usable CA (ca.pem, ca.key); run `l7 certs init` ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{d / 'ca.key'}: expected an EC private key")
    return CA(cert=cert, key=key, cert_path=d / "ca.pem")


def publish_ca(ca: CA, directory: Path | str) -> Path:
    """Write only the CA *certificate* to ``directory`` (the tiers' directory); its key
    stays where :func:`init_ca` put it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    if (d / "ca.key").exists():
        raise ConfigError(
            f"{d / 'ca.key'}: a CA key in the tiers' directory lets any tier mint any "
            "identity; move it to the CA directory (l7 certs init --ca-dir)"
        )
    _write_public(d / "ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM))
    return d / "ca.pem"


def tls_dir_problem(directory: Path | str) -> str | None:
    """Why ``directory`` is not a usable tiers' directory (None: it is): it must hold
    ``ca.pem`` and must not hold the CA's private key."""
    d = Path(directory)
    if not (d / "ca.pem").is_file():
        return f"no ca.pem in {d}; run `l7 certs init --dir {d}`"
    if (d / "ca.key").exists():
        return (
            f"{d / 'ca.key'}: the CA's private key sits beside the tiers' keys, so any "
            "tier could mint any identity; move it out (`l7 certs init --ca-dir DIR` keeps "
            "it in its own directory) and keep only ca.pem here"
        )
    return None


def issue(
    ca: CA,
    service: str,
    directory: Path | str,
    *,
    validity: dt.timedelta = LEAF_VALIDITY,
) -> tuple[Path, Path]:
    """Issue ``<service>.pem`` / ``<service>.key`` (0600) in ``directory``; returns both paths.

    Every leaf carries URI SAN ``spiffe://layer7.local/<service>`` and clientAuth. A server
    tier (:data:`SERVER_TIERS`) also carries DNS SAN ``<service>.layer7.local`` (what its
    clients verify) and serverAuth; a client-only leaf has no server name at all, so it
    cannot pass for a server. Files are replaced atomically (certificate after key), so a
    running server picks them up as a rotation.
    """
    uri = spiffe_id(service)
    name = uri.rsplit("/", 1)[-1]
    is_server = uri == spiffe_id(name) and name in SERVER_TIERS
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if is_server:
        sans.append(x509.DNSName(server_name(name)))
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Layer-7"),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = d / f"{name}.pem", d / f"{name}.key"
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


# --------------------------------------------------------------------------- credentials


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror}; run `l7 certs init`") from e


def _pair_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))


def _load_cas(pem: bytes, where: Path) -> list[x509.Certificate]:
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(f"CA certificate {where}: not a PEM certificate bundle ({e})") from e
    return cas


def _leaf_problem(
    cert_pem: bytes, key_pem: bytes, cas: list[x509.Certificate], spiffe: str | None
) -> str | None:
    """Why this certificate/key pair may not be served (None: it may): the pair must
    match, the certificate must be issued by one of the pinned CAs and, on a rotation,
    keep the SPIFFE id served so far."""
    if not _pair_matches(cert_pem, key_pem):
        return "the certificate does not match the key"
    cert = x509.load_pem_x509_certificate(cert_pem)
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        return "the certificate is not issued by the CA pinned at start"
    got = spiffe_id_of(cert.public_bytes(serialization.Encoding.DER))
    if spiffe is not None and got != spiffe:
        return f"the certificate names {got}, expected {spiffe}"
    return None


class _ReloadingConfig:
    """Fetches the server's certificate configuration, re-reading its certificate and key
    when either changed on disk (mtime, size or inode). The CA bundle is read once, at
    start: a changed ``ca.pem`` (say, a CA appended to it) is logged and ignored until
    a restart. A new pair is served only when it matches, chains to the pinned CA and
    keeps the SPIFFE id; a half-written rotation keeps the previous one."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self._paths = (cert, key)
        self._ca_path = ca
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._ca_pem = _read(ca, "CA certificate")
        self._cas = _load_cas(self._ca_pem, ca)
        self._ca_warned: bytes | None = None
        self._ca_stamp: tuple[int, int, int] | None = None
        cert_pem, key_pem = _read(cert, "certificate"), _read(key, "private key")
        if not _pair_matches(cert_pem, key_pem):
            raise ConfigError(f"{cert} and {key}: the certificate does not match the key")
        problem = _leaf_problem(cert_pem, key_pem, self._cas, None)
        if problem is not None:
            raise ConfigError(f"{cert}: {problem} ({ca}); re-issue it with `l7 certs init`")
        self._spiffe = spiffe_id_of(
            x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
        )
        self.initial = self._config(cert_pem, key_pem)

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self._paths:
            try:
                st = p.stat()
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _config(self, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], self._ca_pem)

    def _check_ca(self) -> None:
        try:
            st = self._ca_path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._ca_stamp:
                return
            self._ca_stamp = stamp
            now = self._ca_path.read_bytes()
        except OSError:
            return
        if now not in (self._ca_pem, self._ca_warned):
            self._ca_warned = now
            log.warning(
                "tls: %s changed on disk; the CA bundle pinned at start stays in force "
                "(restart to trust a new one)",
                self._ca_path,
            )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                self._check_ca()
                stamp = self._stat()
                if stamp == self._stamp:
                    return None
                cert_pem, key_pem = (p.read_bytes() for p in self._paths)
                problem = _leaf_problem(cert_pem, key_pem, self._cas, self._spiffe)
                if problem is not None:
                    log.warning("tls: %s: %s; keeping the old one", self._paths[0], problem)
                    return None
                self._stamp = stamp
                log.info("tls: reloaded %s", self._paths[0])
                return self._config(cert_pem, key_pem)
        except Exception:  # called from gRPC's core; never let it raise there
            log.exception("tls: cannot reload %s; keeping the old certificate", self._paths[0])
            return None


def server_credentials(cert: Path | str, key: Path | str, ca: Path | str) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by ``ca`` (read once,
    pinned) and re-read ``cert``/``key`` on the next new connection whenever they change
    on disk (a rotation; see :class:`_ReloadingConfig`).

    Authorization (which service may call) is :class:`PeerAllowlist`'s job."""
    fetch = _ReloadingConfig(Path(cert), Path(key), Path(ca))
    return grpc.dynamic_ssl_server_credentials(
        fetch.initial,
        # grpcio accepts None from the fetcher ("no change"); its stub does not say so
        cast("Callable[[], grpc.ServerCertificateConfiguration]", fetch),
        require_client_authentication=True,
    )


def channel_credentials(
    cert: Path | str, key: Path | str, ca: Path | str
) -> grpc.ChannelCredentials:
    """Client credentials: trust only ``ca``, present ``cert``/``key``. Open a channel with
    them through :func:`secure_channel`, which names the server expected."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate"),
        private_key=_read(key, "private key"),
        certificate_chain=_read(cert, "certificate"),
    )


def server_name_option(expect: str) -> tuple[str, str]:
    """The channel option that makes the handshake verify ``expect``'s server name."""
    return ("grpc.ssl_target_name_override", server_name(expect))


def secure_channel(
    target: str,
    creds: grpc.ChannelCredentials,
    *,
    expect: str,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A TLS channel to ``target`` that accepts only a server holding ``expect``'s
    certificate (``ledger``, ``engine`` or ``gateway``): the handshake checks the server's
    certificate for ``<expect>.layer7.local`` whatever host ``target`` names, and fails
    before any call metadata is sent."""
    opts = [o for o in options if o[0] != "grpc.ssl_target_name_override"]
    opts.append(server_name_option(expect))
    return grpc.secure_channel(target, creds, options=opts)


def client_credentials(cert_dir: Path | str, service: str) -> grpc.ChannelCredentials:
    """Credentials presenting ``<cert_dir>/<service>.pem`` and trusting ``<cert_dir>/ca.pem``
    (the layout ``l7 certs init`` writes); refuses a directory holding the CA's key."""
    d = Path(cert_dir)
    problem = tls_dir_problem(d)
    if problem is not None:
        raise ConfigError(problem)
    return channel_credentials(d / f"{service}.pem", d / f"{service}.key", d / "ca.pem")


def client_channel(target: str, cert_dir: Path | str, service: str, *, expect: str) -> grpc.Channel:
    """A channel to ``target`` presenting ``<cert_dir>/<service>.pem`` (from ``l7 certs
    init``) and accepting only the ``expect`` server tier."""
    return secure_channel(target, client_credentials(cert_dir, service), expect=expect)


# --------------------------------------------------------------------------- peer identity


def peer_cert_der(context: grpc.ServicerContext) -> bytes | None:
    """The DER of the client certificate presented on this call, or None (no mTLS)."""
    # grpcio gives lists of bytes per key (its stub says bytes)
    auth: Mapping[str, Any] = context.auth_context()
    pems: list[bytes] = list(auth.get("x509_pem_cert") or [])
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0]).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None


def spiffe_id_of(der: bytes | None) -> str | None:
    """The single ``spiffe://`` URI SAN of a DER certificate, or None (none, or several)."""
    if der is None:
        return None
    try:
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (x509.ExtensionNotFound, ValueError):
        return None
    uris = [
        u
        for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("spiffe://")
    ]
    return uris[0] if len(uris) == 1 else None  # more than one identity: none of them


def peer_spiffe_id(context: grpc.ServicerContext) -> str | None:
    """The peer's ``spiffe://`` URI SAN, or None.

    grpcio 1.85's auth context carries ``x509_pem_cert`` (the verified leaf),
    ``x509_subject_alternative_name`` (SANs of every type, flattened), ``peer_uri``,
    ``peer_dns``, ``peer_ip`` and ``peer_spiffe_id``. The id is read from the verified
    certificate itself so the check does not depend on which of those keys a grpcio version
    fills in; a certificate with more than one ``spiffe://`` URI has no identity."""
    return spiffe_id_of(peer_cert_der(context))


def _deny(context: grpc.ServicerContext, peer: str | None) -> None:
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    from l7.server.interceptor import DOMAIN

    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason="peer_not_allowed", domain=DOMAIN, metadata={"peer": peer or ""}
        )
    )
    msg = (
        f"peer {peer} may not call this service"
        if peer
        else "no verified spiffe:// client certificate on this connection"
    )
    context.abort_with_status(
        rpc_status.to_status(
            status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=msg, details=[detail])
        )
    )


class PeerAllowlist(grpc.ServerInterceptor):
    """Refuse every call (all four RPC shapes) whose peer certificate's SPIFFE id is not in
    ``allowed`` (service names or full ``spiffe://`` ids) with PERMISSION_DENIED and
    ErrorInfo reason ``peer_not_allowed``. Put it first in the server's interceptors."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(spiffe_id(a) for a in allowed)

    def _ok(self, context: grpc.ServicerContext) -> None:
        peer = peer_spiffe_id(context)
        if peer is None or peer not in self.allowed:
            log.warning("tls: refused peer %s (%s)", peer, context.peer())
            _deny(context, peer)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        h = continuation(handler_call_details)
        if h is None:
            return None
        ok = self._ok
        des, ser = h.request_deserializer, h.response_serializer
        if h.unary_unary is not None:
            uu = h.unary_unary

            def unary_unary(req: Any, ctx: grpc.ServicerContext) -> Any:
                ok(ctx)
                return uu(req, ctx)

            return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)
        if h.unary_stream is not None:
            us = h.unary_stream

            def unary_stream(req: Any, ctx: grpc.ServicerContext) -> Any:
                ok(ctx)
                return us(req, ctx)

            return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)
        if h.stream_unary is not None:
            su = h.stream_unary

            def stream_unary(reqs: Any, ctx: grpc.ServicerContext) -> Any:
                ok(ctx)
                return su(reqs, ctx)

            return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)
        if h.stream_stream is not None:
            ss = h.stream_stream

            def stream_stream(reqs: Any, ctx: grpc.ServicerContext) -> Any:
                ok(ctx)
                return ss(reqs, ctx)

            return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)
        return h


@dataclass(frozen=True)
class ServerTLS:
    """What a server needs for mTLS: credentials for ``add_secure_port`` and the
    interceptor to put first in ``grpc.server(interceptors=[...])``."""

    credentials: grpc.ServerCredentials
    interceptor: PeerAllowlist


def server_tls(
    cert_dir: Path | str, service: str, *, allowed: Iterable[str] | None = None
) -> ServerTLS:
    """mTLS for ``service`` from ``<cert_dir>/{ca,<service>}.pem``; ``allowed`` defaults to
    ``ACCEPTS[service]``."""
    if allowed is None:
        if service not in ACCEPTS:
            raise ConfigError(f"no default peer allowlist for {service!r}; pass allowed=")
        allowed = ACCEPTS[service]
    d = Path(cert_dir)
    problem = tls_dir_problem(d)
    if problem is not None:
        raise ConfigError(problem)
    return ServerTLS(
        credentials=server_credentials(d / f"{service}.pem", d / f"{service}.key", d / "ca.pem"),
        interceptor=PeerAllowlist(allowed),
    )


# --------------------------------------------------------------------------- RFC 8705


def cert_thumbprint_s256(cert: bytes | str) -> str:
    """RFC 8705 ``x5t#S256``: base64url (no padding) SHA-256 of the certificate's DER.
    Accepts PEM (str or bytes) or DER."""
    data = cert.encode() if isinstance(cert, str) else cert
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            data = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        except ValueError as e:
            raise ConfigError(f"not a PEM certificate ({e})") from e
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def check_cnf_binding(claims: Mapping[str, Any], peer_cert_der: bytes | None) -> None:
    """Refuse a certificate-bound token presented over the wrong (or no) client certificate.

    A token without ``cnf`` is unbound and passes. A token whose ``cnf`` is malformed, or
    names ``x5t#S256`` that is not the thumbprint of ``peer_cert_der``, raises
    ``Forbidden(reason="cnf_mismatch")``."""
    cnf = claims.get("cnf")
    if cnf is None:
        return
    if not isinstance(cnf, Mapping):
        raise Forbidden("token claim cnf is not an object", reason="cnf_mismatch")
    want = cnf.get("x5t#S256")
    if want is None:
        return  # bound to something other than a certificate (e.g. jkt); not ours to check
    if not isinstance(want, str) or not want:
        raise Forbidden("token claim cnf.x5t#S256 is not a string", reason="cnf_mismatch")
    if peer_cert_der is None:
        raise Forbidden(
            "the token is bound to a client certificate (cnf.x5t#S256) but none was presented",
            reason="cnf_mismatch",
        )
    got = cert_thumbprint_s256(peer_cert_der)
    if not hmac.compare_digest(got.encode(), want.encode()):
        raise Forbidden(
            "the token is bound to a different client certificate than the one presented "
            f"(cnf.x5t#S256 {want}, presented {got})",
            reason="cnf_mismatch",
        )
