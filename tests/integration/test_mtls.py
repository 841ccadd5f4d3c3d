"""mTLS on real gRPC servers (loopback): client certificates required and verified, peers
authorized by SPIFFE id, certificate files hot-reloaded on rotation, cnf binding."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from l7 import tls
from l7.errors import Forbidden

pytestmark = pytest.mark.integration

SERVICES = ("engine", "gateway", "ledger", "cli", "auditor", "tool")


class _Bound(grpc.ServerInterceptor):
    """Test-only: a health server whose Check also enforces cnf binding for a token whose
    thumbprint is passed in metadata ``x-cnf`` (stands in for a verified JWT's cnf claim)."""

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        h = continuation(details)
        meta = dict(details.invocation_metadata or ())
        if h is None or h.unary_unary is None or "x-cnf" not in meta:
            return h
        inner, want = h.unary_unary, meta["x-cnf"]

        def bound(req: Any, ctx: grpc.ServicerContext) -> Any:
            try:
                tls.check_cnf_binding({"cnf": {"x5t#S256": want}}, tls.peer_cert_der(ctx))
            except Forbidden as e:
                ctx.abort(grpc.StatusCode.PERMISSION_DENIED, e.reason)
            return inner(req, ctx)

        return grpc.unary_unary_rpc_method_handler(
            bound, h.request_deserializer, h.response_serializer
        )


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    ca = tls.init_ca(tmp_path / "ca")  # the CA key stays out of the tiers' directory
    tls.publish_ca(ca, d)
    for s in SERVICES:
        tls.issue(ca, s, d)
    return d


def _serve(certs: Path, service: str) -> Iterator[int]:
    st = tls.server_tls(certs, service)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[st.interceptor, _Bound()],
        options=[("grpc.so_reuseport", 0)],
    )
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", st.credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.fixture
def ledger_port(certs: Path) -> Iterator[int]:
    yield from _serve(certs, "ledger")


@pytest.fixture
def engine_port(certs: Path) -> Iterator[int]:
    yield from _serve(certs, "engine")


def _check(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata
        )
        return int(resp.status)


def _reason(err: grpc.RpcError) -> str:
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert st is not None
    for d in st.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return str(info.reason)
    return ""


def _served_cert(port: int, certs: Path, client: str = "cli") -> x509.Certificate:
    """The certificate a NEW connection is served (TLS with a client cert and ALPN h2)."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(certs / f"{client}.pem", certs / f"{client}.key")
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="ledger.layer7.local") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_right_peer_succeeds(certs: Path, ledger_port: int) -> None:
    for peer in ("engine", "gateway", "auditor"):
        ch = tls.client_channel(f"127.0.0.1:{ledger_port}", certs, peer, expect="ledger")
        assert _check(ch) == health_pb2.HealthCheckResponse.SERVING
    ch = tls.client_channel(f"localhost:{ledger_port}", certs, "engine", expect="ledger")
    assert _check(ch) == health_pb2.HealthCheckResponse.SERVING


def test_no_client_certificate_is_refused(certs: Path, ledger_port: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.pem").read_bytes())
    with pytest.raises(grpc.RpcError) as e:
        _check(tls.secure_channel(f"127.0.0.1:{ledger_port}", creds, expect="ledger"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_is_refused(ledger_port: int) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _check(grpc.insecure_channel(f"127.0.0.1:{ledger_port}"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(
    certs: Path, ledger_port: int, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    rogue_ca = tls.init_ca(other)
    cert, key = tls.issue(rogue_ca, "engine", other)  # right name, wrong CA
    creds = tls.channel_credentials(cert, key, certs / "ca.pem")  # trusts the real server
    with pytest.raises(grpc.RpcError) as e:
        _check(tls.secure_channel(f"127.0.0.1:{ledger_port}", creds, expect="ledger"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_is_refused_by_the_client(
    certs: Path, ledger_port: int, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    tls.init_ca(other)
    creds = tls.channel_credentials(certs / "engine.pem", certs / "engine.key", other / "ca.pem")
    with pytest.raises(grpc.RpcError) as e:
        _check(tls.secure_channel(f"127.0.0.1:{ledger_port}", creds, expect="ledger"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("peer", ["cli", "tool"])
def test_wrong_service_identity_is_refused(certs: Path, ledger_port: int, peer: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _check(tls.client_channel(f"127.0.0.1:{ledger_port}", certs, peer, expect="ledger"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(e.value) == "peer_not_allowed"
    assert f"spiffe://layer7.local/{peer}" in (e.value.details() or "")


def test_engine_accepts_cli_and_tool_not_gateway(certs: Path, engine_port: int) -> None:
    for peer in ("cli", "tool"):
        assert (
            _check(tls.client_channel(f"127.0.0.1:{engine_port}", certs, peer, expect="engine"))
            == 1
        )
    with pytest.raises(grpc.RpcError) as e:
        _check(tls.client_channel(f"127.0.0.1:{engine_port}", certs, "gateway", expect="engine"))
    assert _reason(e.value) == "peer_not_allowed"


def test_streaming_rpc_is_also_authorized(certs: Path, ledger_port: int) -> None:
    with tls.client_channel(f"127.0.0.1:{ledger_port}", certs, "cli", expect="ledger") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stream = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as e:
            next(iter(stream))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(e.value) == "peer_not_allowed"


def test_rotation_is_picked_up_without_restart(certs: Path, ledger_port: int) -> None:
    before = _served_cert(ledger_port, certs)
    ca = tls.load_ca(certs.parent / "ca")
    old_mtime = (certs / "ledger.pem").stat().st_mtime_ns
    tls.issue(ca, "ledger", certs)  # rotate the server's files in place
    if (certs / "ledger.pem").stat().st_mtime_ns == old_mtime:  # coarse clock
        os.utime(certs / "ledger.pem", ns=(old_mtime + 10**9, old_mtime + 10**9))
    on_disk = x509.load_pem_x509_certificate((certs / "ledger.pem").read_bytes())
    assert on_disk.serial_number != before.serial_number
    deadline = time.monotonic() + 5
    after = _served_cert(ledger_port, certs)
    while after.serial_number != on_disk.serial_number and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _served_cert(ledger_port, certs)
    assert after.serial_number == on_disk.serial_number
    # and gRPC clients keep working against the rotated certificate
    assert (
        _check(tls.client_channel(f"127.0.0.1:{ledger_port}", certs, "engine", expect="ledger"))
        == 1
    )


def test_half_written_rotation_keeps_the_old_certificate(certs: Path, ledger_port: int) -> None:
    before = _served_cert(ledger_port, certs)
    # a new key without its certificate: the pair does not match, the old pair stays served
    other = certs / "spare"
    tls.issue(tls.load_ca(certs.parent / "ca"), "ledger", other)
    os.replace(other / "ledger.key", certs / "ledger.key")
    assert _served_cert(ledger_port, certs).serial_number == before.serial_number
    assert (
        _check(tls.client_channel(f"127.0.0.1:{ledger_port}", certs, "engine", expect="ledger"))
        == 1
    )
    os.replace(other / "ledger.pem", certs / "ledger.pem")  # the rotation completes
    deadline = time.monotonic() + 5
    while _served_cert(ledger_port, certs).serial_number == before.serial_number:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_cnf_binding_on_a_live_connection(certs: Path, ledger_port: int) -> None:
    engine_tp = tls.cert_thumbprint_s256((certs / "engine.pem").read_bytes())
    gateway_tp = tls.cert_thumbprint_s256((certs / "gateway.pem").read_bytes())
    target = f"127.0.0.1:{ledger_port}"
    assert (
        _check(
            tls.client_channel(target, certs, "engine", expect="ledger"), (("x-cnf", engine_tp),)
        )
        == 1
    )
    with pytest.raises(grpc.RpcError) as e:
        _check(
            tls.client_channel(target, certs, "gateway", expect="ledger"), (("x-cnf", engine_tp),)
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert e.value.details() == "cnf_mismatch"
    assert (
        _check(
            tls.client_channel(target, certs, "gateway", expect="ledger"), (("x-cnf", gateway_tp),)
        )
        == 1
    )
