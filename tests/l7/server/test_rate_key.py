"""The rate-limit key of a call comes from the connection or the token, never the request."""

from __future__ import annotations

from typing import Any

import pytest

from l7.identity import Identity
from l7.server import governance
from l7.server.governance import peer_host, rate_key


class Ctx:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.7:51234", "ipv4:10.0.0.7"),
        ("ipv4:10.0.0.7:1", "ipv4:10.0.0.7"),
        ("ipv6:[::1]:40000", "ipv6:[::1]"),
        ("ipv6:[fe80::1%eth0]:9", "ipv6:[fe80::1%eth0]"),
        ("unix:/run/l7.sock", "unix:/run/l7.sock"),
    ],
)
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(Ctx(peer)) == host  # type: ignore[arg-type]


def test_a_new_connection_port_is_the_same_key() -> None:
    a, b = Ctx("ipv4:192.0.2.1:1000"), Ctx("ipv4:192.0.2.1:2000")
    assert rate_key(a, None) == rate_key(b, None) == "peer:ipv4:192.0.2.1"  # type: ignore[arg-type]


def test_identity_keys_by_token_subject_and_mtls_by_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    who = Identity("alice", "https://issuer", ("engineer",), 1, (), None, 2**31)
    assert rate_key(Ctx("ipv4:192.0.2.1:1"), who) == "sub:alice"  # type: ignore[arg-type]
    monkeypatch.setattr(governance, "peer_spiffe_id", lambda ctx: "spiffe://l7/tool")
    assert rate_key(Ctx("ipv4:192.0.2.1:1"), None) == "mtls:spiffe://l7/tool"  # type: ignore[arg-type]
    assert rate_key(Ctx("ipv4:192.0.2.1:1"), who) == "sub:alice"  # type: ignore[arg-type]
