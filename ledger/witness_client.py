"""The log's side of the C2SP witness protocol (``ledger.witness`` is the witness's).

``WitnessClient(endpoint).add_checkpoint(cp, proof)`` submits a checkpoint with a
consistency proof from the size the witness last cosigned, and returns the verified
cosignature. The client remembers that size; when it does not know it (first use, or
the witness moved on), the witness's 409 answer tells it, and it retries once with a
proof from there. A witness that has cosigned a *larger* tree than the checkpoint
refuses for good: the log was rewound (``WitnessRefused``).

``latest(origin)`` reads the witness's latest cosigned checkpoint (the ``/latest``
extension), verified with the witness key: what monitors compare the ledger with.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger.checkpoint import Checkpoint
from ledger.errors import WitnessRefused, WitnessUnavailable
from ledger.merkle import ProofInvalid
from ledger.mtls import WitnessTLS
from ledger.note import Cosignature, VerifierKey, parse_note, verify_cosignature

__all__ = ["WitnessClient", "WitnessEndpoint", "read_vkey", "witness_endpoints"]

_MAX_RESPONSE = 256 * 1024


@dataclass(frozen=True)
class WitnessEndpoint:
    """Where a witness listens and the cosignature/v1 key it signs with."""

    url: str
    key: VerifierKey
    tls: WitnessTLS | None = field(default=None, compare=False)
    """mTLS to this witness (``https://`` only): our certificate, and the witness's
    SPIFFE id checked before the request is sent."""

    @classmethod
    def parse(cls, url: str, vkey: str, *, tls: WitnessTLS | None = None) -> WitnessEndpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"witness URL must be http(s)://host:port, got {url!r}")
        if tls is not None and parts.scheme != "https":
            raise ValueError(f"witness URL {url!r}: mTLS (--tls-dir) needs https://")
        return cls(url.rstrip("/"), VerifierKey.decode(vkey), tls)


def read_vkey(value: str) -> VerifierKey:
    """A verifier key given as the vkey string itself or as a file holding it."""
    path = Path(value)
    text = (
        path.read_text(encoding="utf-8").strip() if "+" not in value and path.is_file() else value
    )
    return VerifierKey.decode(text)


def witness_endpoints(
    urls: Sequence[str], keys: Sequence[str], *, tls: WitnessTLS | None = None
) -> list[WitnessEndpoint]:
    """Pair ``--witness-url`` and ``--witness-key`` values (vkeys or files), in order;
    ``tls`` goes with every ``https://`` witness."""
    if len(urls) != len(keys):
        raise ValueError(
            f"give one --witness-key per --witness-url ({len(urls)} URLs, {len(keys)} keys)"
        )
    return [
        WitnessEndpoint.parse(
            u, read_vkey(k).encode(), tls=tls if u.startswith("https://") else None
        )
        for u, k in zip(urls, keys, strict=True)
    ]


class WitnessClient:
    """Talks to one witness; thread-safe (one submission at a time)."""

    def __init__(self, endpoint: WitnessEndpoint, *, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.known_size: int | None = None
        """The size this witness last cosigned, as far as this client knows."""

    @property
    def name(self) -> str:
        return self.endpoint.key.key_id

    def _request(self, path: str, data: bytes | None) -> tuple[int, str, str]:
        if self.endpoint.tls is not None:
            return self._request_mtls(self.endpoint.tls, path, data)
        req = urllib.request.Request(  # noqa: S310 - http(s) only (WitnessEndpoint.parse)
            self.endpoint.url + path,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Content-Type": "text/plain; charset=utf-8"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                body = resp.read(_MAX_RESPONSE)
                return resp.status, resp.headers.get("Content-Type", ""), body.decode("utf-8")
        except urllib.error.HTTPError as e:
            body = e.read(_MAX_RESPONSE).decode("utf-8", "replace")
            return e.code, e.headers.get("Content-Type", ""), body
        except (OSError, UnicodeDecodeError) as e:
            raise WitnessUnavailable(f"witness {self.name} at {self.endpoint.url}: {e}") from e

    def _request_mtls(self, tls: WitnessTLS, path: str, data: bytes | None) -> tuple[int, str, str]:
        """The request over mTLS: the witness's SPIFFE id is checked on the established
        connection before a byte of the request is written."""
        parts = urllib.parse.urlsplit(self.endpoint.url)
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, timeout=self.timeout_s, context=tls.context
        )
        try:
            conn.connect()
            assert isinstance(conn.sock, ssl.SSLSocket)
            tls.check_peer(conn.sock)
            headers = {"Content-Type": "text/plain; charset=utf-8"} if data is not None else {}
            conn.request("POST" if data is not None else "GET", path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read(_MAX_RESPONSE).decode("utf-8")
            return resp.status, resp.headers.get("Content-Type", ""), body
        except (OSError, http.client.HTTPException, UnicodeDecodeError) as e:
            raise WitnessUnavailable(f"witness {self.name} at {self.endpoint.url}: {e}") from e
        finally:
            conn.close()

    def add_checkpoint(
        self, cp: Checkpoint, proof: Callable[[int, int], list[bytes]]
    ) -> Cosignature:
        """Have ``cp`` cosigned; ``proof(old, new)`` gives a consistency proof of the log.

        Raises WitnessRefused (rewind, fork, bad proof, untrusted log) or
        WitnessUnavailable (unreachable, or an answer that does not verify).
        """
        with self._lock:
            old = self.known_size if self.known_size is not None else 0
            for _attempt in range(2):
                if old > cp.tree_size:
                    raise WitnessRefused(
                        self.name,
                        409,
                        f"the witness has cosigned size {old}, but this checkpoint has size "
                        f"{cp.tree_size}: the log's tree is smaller than what was witnessed "
                        "(rewound or cut); refusing to ask for a cosignature",
                    )
                nodes = proof(old, cp.tree_size) if 0 < old < cp.tree_size else []
                body = f"old {old}\n" + "".join(
                    base64.b64encode(n).decode("ascii") + "\n" for n in nodes
                )
                status, ctype, text = self._request(
                    "/add-checkpoint", (body + "\n" + cp.note).encode("utf-8")
                )
                if status == 409 and ctype.startswith("text/x.tlog.size"):
                    try:
                        size = int(text.strip())
                    except ValueError as e:
                        raise WitnessUnavailable(
                            f"witness {self.name}: malformed 409 body {text!r:.60}"
                        ) from e
                    if size == old:  # same size we sent: the roots differ (a fork)
                        raise WitnessRefused(
                            self.name,
                            409,
                            f"the witness cosigned another root for size {size}: fork",
                        )
                    self.known_size = size
                    old = size
                    continue
                if status != 200:
                    raise WitnessRefused(self.name, status, text.strip()[:2000])
                cosig = self._verified(cp, text)
                self.known_size = cp.tree_size
                return cosig
            raise WitnessRefused(
                self.name, 409, f"the witness's size moved twice while submitting (now {old})"
            )

    def _verified(self, cp: Checkpoint, text: str) -> Cosignature:
        key = self.endpoint.key
        for line in text.splitlines():
            try:
                c = Cosignature.parse_line(line)
            except ProofInvalid:
                continue
            if (c.name, c.key_hash) == (key.name, key.key_hash):
                try:
                    return verify_cosignature(cp.body, c, key)
                except ProofInvalid as e:
                    raise WitnessUnavailable(f"witness {self.name}: {e}") from e
        raise WitnessUnavailable(
            f"witness {self.name} answered 200 without a cosignature by its key: {text!r:.200}"
        )

    def latest(self, origin: str) -> tuple[Checkpoint, Cosignature] | None:
        """The witness's latest cosigned checkpoint of ``origin`` and its verified
        cosignature (the log's signature is the caller's to check); None if none."""
        status, _, text = self._request(
            "/latest?" + urllib.parse.urlencode({"origin": origin}), None
        )
        if status == 404:
            return None
        if status != 200:
            raise WitnessUnavailable(f"witness {self.name}: /latest answered {status}: {text:.200}")
        try:
            note = parse_note(text)
            cp, cosigs = Checkpoint.decode_cosigned(text)
        except ProofInvalid as e:
            raise WitnessUnavailable(f"witness {self.name}: /latest is malformed: {e}") from e
        key = self.endpoint.key
        for c in cosigs:
            if (c.name, c.key_hash) == (key.name, key.key_hash):
                try:
                    return cp, verify_cosignature(note.text, c, key)
                except ProofInvalid as e:
                    raise WitnessUnavailable(f"witness {self.name}: /latest: {e}") from e
        raise WitnessUnavailable(f"witness {self.name}: /latest carries no cosignature of its own")
