"""mTLS for the witness's HTTP protocol, with the standard library's ``ssl``.

The certificates are the ones ``l7 certs init`` writes (``ca.pem``, ``<service>.pem``,
``<service>.key`` in the tiers' directory), named by SPIFFE URI SANs
``spiffe://layer7.local/<service>`` (``ledger`` does not import ``l7``; the layout is
the contract). Both ends check identity after the handshake and before a byte of the
request is read or written: the witness serves only its allowed peers
(:data:`WITNESS_PEERS`), and a log's client talks only to a server whose certificate
names ``spiffe://layer7.local/witness``. The CA bundle is read once, when the context
is made (a CA appended to ``ca.pem`` later is not trusted until a restart).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WITNESS_ID",
    "WITNESS_PEERS",
    "PeerIdentityError",
    "WitnessTLS",
    "peer_spiffe_id",
    "witness_server_tls",
]

TRUST_DOMAIN = "layer7.local"
WITNESS_ID = f"spiffe://{TRUST_DOMAIN}/witness"
WITNESS_PEERS = frozenset(f"spiffe://{TRUST_DOMAIN}/{s}" for s in ("ledger", "engine", "auditor"))
"""Who may talk to a witness: the logs that submit checkpoints (the ledger service, or an
engine with an in-process ledger) and auditors reading ``/latest``."""


class PeerIdentityError(ssl.SSLError):
    """The peer completed the handshake with a certificate from our CA but is not the
    identity expected here."""


def peer_spiffe_id(sock: ssl.SSLSocket) -> str | None:
    """The single ``spiffe://`` URI SAN of the verified peer certificate, or None."""
    cert: dict[str, Any] | None = sock.getpeercert()
    if not cert:
        return None
    uris = [
        v for k, v in cert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")
    ]
    return uris[0] if len(uris) == 1 else None


def _files(directory: Path, service: str) -> tuple[Path, Path, Path]:
    d = Path(directory)
    if (d / "ca.key").exists():
        raise ValueError(
            f"{d / 'ca.key'}: the CA's private key sits beside the tiers' keys; move it out "
            "(`l7 certs init --ca-dir DIR`)"
        )
    files = (d / f"{service}.pem", d / f"{service}.key", d / "ca.pem")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: missing; run `l7 certs init --dir {d}`")
    return files


@dataclass(frozen=True, eq=False)
class WitnessTLS:
    """One end's mTLS: its context and the peer identities it accepts."""

    context: ssl.SSLContext
    accepts: frozenset[str]

    @classmethod
    def client(cls, directory: Path | str, service: str) -> WitnessTLS:
        """A log (``ledger``, ``engine``) or auditor talking to a witness: presents
        ``<service>.pem``, trusts ``ca.pem``, accepts only the witness's identity."""
        cert, key, ca = _files(Path(directory), service)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the SPIFFE id is checked instead (check_peer)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        return cls(ctx, frozenset({WITNESS_ID}))

    def check_peer(self, sock: ssl.SSLSocket) -> str:
        """The peer's SPIFFE id if it is one this end accepts; else PeerIdentityError."""
        peer = peer_spiffe_id(sock)
        if peer is None or peer not in self.accepts:
            want = " or ".join(sorted(self.accepts))
            raise PeerIdentityError(f"peer {peer or 'without a spiffe:// id'} is not {want}")
        return peer


def witness_server_tls(directory: Path | str) -> WitnessTLS:
    """The witness's end: presents ``witness.pem``, requires a client certificate from
    ``ca.pem`` and accepts :data:`WITNESS_PEERS`."""
    cert, key, ca = _files(Path(directory), "witness")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return WitnessTLS(ctx, WITNESS_PEERS)
