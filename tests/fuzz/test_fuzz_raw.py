"""Raw bytes at every gRPC port (engine, gateway, ledger service): random bytes, cut
HTTP/2 prefaces, a valid preface followed by garbage frames, HTTP/1.1 and TLS hellos.

Each connection must end within a bound: the server closes it (usually with a GOAWAY)
or it idles until our socket timeout, and the server keeps serving: a health check
on that port answers SERVING after every example.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from l7.stack import Stack, StackConfig
from ledger import SqlLedger
from ledger.access import AllowAll
from ledger.service import create_ledger_server
from tests.fuzz.support import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_TIMEOUT_S = 0.25
"""How long one read waits; an idle connection is simply dropped by us after that."""
CONNECTION_BOUND_S = 5.0
"""No connection may keep us reading longer than this (the server trickling bytes)."""


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    service: str


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Port]]:
    tmp = tmp_path_factory.mktemp("fuzz-raw")
    cfg = StackConfig(
        env="local",
        ledger_url=f"sqlite:///{tmp / 'ledger.sqlite'}",
        work_dir=tmp,
        gateway=True,
        sweep_interval_s=0,
    )
    ledger = SqlLedger(f"sqlite:///{tmp / 'service.sqlite'}")
    server, lport = create_ledger_server("127.0.0.1:0", ledger, AllowAll())
    server.start()
    try:
        with Stack(cfg) as stack:
            yield {
                "engine": Port("engine", stack.port, "l7.v1.Governance"),
                "gateway": Port("gateway", stack.gateway_port, "l7.v1.Gateway"),
                "ledger": Port("ledger", lport, "l7.ledger.v1.Ledger"),
            }
    finally:
        server.stop(grace=1).wait(5)
        ledger.close()


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """An HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream & 0x7FFFFFFF)
        + payload
    )


@st.composite
def garbage_frames(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(st.binary(max_size=64))
        kind = draw(st.one_of(st.integers(0, 9), st.integers(10, 255)))
        if draw(st.integers(0, 3)) == 0:  # a length field that lies
            declared = draw(st.integers(0, 2**24 - 1))
            out += struct.pack(">I", declared)[1:] + bytes([kind, draw(st.integers(0, 255))])
            out += struct.pack(">I", draw(st.integers(0, 2**31 - 1))) + payload
        else:
            out += frame(kind, draw(st.integers(0, 255)), draw(st.integers(0, 2**31 - 1)), payload)
    return out


PAYLOADS = st.one_of(
    st.binary(min_size=1, max_size=512),
    st.integers(1, len(PREFACE) - 1).map(lambda n: PREFACE[:n]),
    st.builds(lambda g: PREFACE + g, garbage_frames()),
    st.builds(lambda g: PREFACE + frame(4, 0, 0, b"") + g, garbage_frames()),
    st.builds(
        lambda hpack: PREFACE + frame(4, 0, 0, b"") + frame(1, 0x04 | 0x01, 1, hpack),
        st.binary(max_size=128),
    ),
    st.just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    st.just(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)),  # a TLS ClientHello
    st.builds(lambda n: PREFACE + frame(0, 0, 1, b"\x00" * n), st.integers(0, 20000)),
)


def poke(port: int, data: bytes) -> tuple[bool, float]:
    """Send ``data``; read until the server closes or goes quiet. (closed, seconds)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(READ_TIMEOUT_S)
        try:
            s.sendall(data)
        except OSError:  # the server already hung up on us: fine
            return True, time.monotonic() - start
        while time.monotonic() - start < CONNECTION_BOUND_S:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return False, time.monotonic() - start
            except OSError:  # reset by the server
                return True, time.monotonic() - start
            if not chunk:
                return True, time.monotonic() - start
        return False, time.monotonic() - start


def serving(port: Port) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port.port}") as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(service=port.service), timeout=10
        )
    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


@fuzz()
@given(which=st.sampled_from(["engine", "gateway", "ledger"]), data=PAYLOADS)
def test_raw_bytes_never_take_a_server_down(
    ports: dict[str, Port], which: str, data: bytes
) -> None:
    port = ports[which]
    _, took = poke(port.port, data)
    assert took < CONNECTION_BOUND_S + 1  # bounded: closed, reset or idle, never stuck
    assert serving(port), f"{which} stopped serving after {data[:64]!r}"


def test_garbage_after_the_preface_is_answered_with_goaway(ports: dict[str, Port]) -> None:
    for port in ports.values():
        closed, _ = poke(port.port, PREFACE + frame(4, 0, 0, b"") + b"\xff" * 64)
        assert closed, f"{port.name} kept a connection that sent garbage frames"
        assert serving(port)


def test_many_half_open_connections_do_not_starve_the_server(ports: dict[str, Port]) -> None:
    for port in ports.values():
        socks = [socket.create_connection(("127.0.0.1", port.port), timeout=2) for _ in range(50)]
        try:
            for s in socks:
                s.sendall(PREFACE[:10])
            assert serving(port), f"{port.name} stopped serving with 50 half-open connections"
        finally:
            for s in socks:
                s.close()
