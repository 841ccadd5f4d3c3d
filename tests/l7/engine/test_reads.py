"""Read rules from policy data: anything missing or malformed gives nothing away."""

from __future__ import annotations

from typing import Any

import pytest

from l7.engine.reads import Basis, ReadRules
from l7.server.governance import is_loopback_peer


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"auditor_roles": "auditor", "payload_roles": None, "payload_to": "requester"},
        {"auditor_roles": [1, None, ""], "payload_roles": [{}], "payload_to": ["auditor", ""]},
    ],
)
def test_malformed_read_rules_grant_nothing(cfg: dict[str, Any]) -> None:
    assert ReadRules.from_config(cfg) == ReadRules()


def test_read_rules_from_policy_data() -> None:
    rules = ReadRules.from_config(
        {
            "auditor_roles": ["auditor"],
            "payload_roles": ["security", "raw-reader"],
            "payload_to": ["requester", "approver", "auditor"],  # auditor is not a relation
        }
    )
    assert rules.auditor_roles == {"auditor"}
    assert rules.payload_roles == {"security", "raw-reader"}
    assert rules.payload_to == {Basis.REQUESTER, Basis.APPROVER}


class _Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("ipv4:127.0.0.1:50123", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:50123", True),
        ("unix:/run/l7.sock", True),
        ("ipv4:10.0.0.7:50123", False),
        ("ipv4:128.0.0.1:50123", False),
        ("ipv6:[::ffff:10.0.0.7]:1", False),
        ("ipv6:[2001:db8::1]:443", False),
        ("", False),
    ],
)
def test_loopback_peers(peer: str, loopback: bool) -> None:
    assert is_loopback_peer(_Peer(peer)) is loopback  # type: ignore[arg-type]
