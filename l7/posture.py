"""One production posture for every server Layer-7 runs.

``l7 serve``, ``l7 ledger serve``, ``l7 gateway serve`` and ``l7 witness serve`` all call
:func:`check_server_posture` before they open a port. A server that is *exposed* -- run
with ``--env production``, or listening on anything but a loopback address -- must
speak mTLS (``--tls-dir``, so its callers and it prove their tier) and must identify its
callers (the identity flag that server has, e.g. ``--oidc-issuer``). Otherwise it refuses
to start, naming every missing flag: writer tokens, OIDC tokens and grants never cross
a wire in clear, and no exposed server runs without knowing who calls it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from l7.errors import ConfigError

__all__ = ["Requirement", "check_server_posture", "is_loopback"]


@dataclass(frozen=True)
class Requirement:
    """One thing an exposed server needs: the flag that provides it and whether it is set."""

    flag: str
    present: bool


def is_loopback(addr: str) -> bool:
    """``127.0.0.1:50051``, ``[::1]:0``, ``localhost:1`` and ``unix:...`` are loopback;
    ``0.0.0.0``, ``[::]``, an empty host and any other name or address are not."""
    if addr.startswith(("unix:", "unix-abstract:")):
        return True
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_server_posture(
    server: str,
    *,
    env: str,
    addr: str,
    tls: bool,
    identity: Sequence[Requirement] = (),
) -> None:
    """Refuse (``ConfigError``) to run ``server`` exposed without mTLS and caller identity.

    ``tls``: ``--tls-dir`` was given. ``identity``: the caller-identity flags this server
    has (empty when mTLS peer identity is its only caller identity, as for the gateway,
    whose callers also carry a grant the engine signed)."""
    reasons = []
    if env == "production":
        reasons.append("production (--env production)")
    if not is_loopback(addr):
        reasons.append(f"a non-loopback address (--addr {addr})")
    if not reasons:
        return
    missing = [r.flag for r in identity if not r.present] + ([] if tls else ["--tls-dir"])
    if missing:
        raise ConfigError(
            f"refusing to serve {server} on {' and '.join(reasons)} without "
            f"{' and '.join(missing)}: an exposed server requires mTLS between the tiers "
            "(run `l7 certs init` for certificates, then --tls-dir) and identified callers"
        )
