"""Signed checkpoints (Merkle tree heads over the global log) and the witness file.

A checkpoint says "the first ``tree_size`` events of this ledger have Merkle
root ``root_hash``" (``ledger.merkle``), signed by the ledger's checkpoint key.
The signed bytes are RFC 8785 (JCS) of exactly::

    {"type": "l7.ledger.checkpoint", "version": 1, "tree_size", "root_hash",
     "timestamp", "key_id"}

``signature`` uses the same strings as ``l7.crypto`` (so ``l7``'s
``Ed25519Signer`` / ``TransitSigner`` also satisfy ``CheckpointSigner``)::

    ed25519:<base64url, unpadded, of the 64-byte Ed25519 signature>
    vault:v<N>:<base64 std, padded>      (OpenBao transit, ed25519 key version N)

Both are parsed strictly: one canonical spelling each, so a checkpoint has
exactly one serialization. ``timestamp`` is RFC 3339 UTC with microseconds
(``2026-11-25T20:44:12.123456Z``), like the ledger's ``at``.

A *witness* is an append-only JSON-lines file of checkpoints kept away from the
database (another disk, host or party). ``Witness.append`` writes one line and
fsyncs; ``read_witness`` refuses a file whose tree sizes go backwards, or that
holds two different roots for one size (IntegrityViolation
``checkpoint_inconsistent``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import rfc8785
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import IntegrityViolation
from ledger.merkle import ProofInvalid

__all__ = [
    "CHECKPOINT_TYPE",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "CheckpointSigner",
    "Ed25519CheckpointSigner",
    "Witness",
    "check_order",
    "format_timestamp",
    "key_id_for",
    "load_private_key",
    "parse_json_strict",
    "public_key_raw",
    "read_witness",
    "save_private_key",
    "sign_checkpoint",
    "verify_checkpoint",
]

CHECKPOINT_TYPE = "l7.ledger.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_FIELDS = frozenset({"tree_size", "root_hash", "timestamp", "key_id", "signature"})
_MAX_TREE_SIZE = 2**53 - 1  # JCS carries integers exactly up to here
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_KEY_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_ED25519_PREFIX = "ed25519:"
_B64URL = re.compile(r"[A-Za-z0-9_-]{86}")
_TRANSIT = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]{86}==)")
_SIG_BYTES = 64
_PUB_BYTES = 32


def format_timestamp(now: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``; ``now`` must be timezone-aware."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("checkpoint time must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_signature(signature: str) -> bytes:
    """The 64 raw bytes of a signature string, or ProofInvalid (one spelling only)."""
    if signature.startswith(_ED25519_PREFIX):
        body = signature[len(_ED25519_PREFIX) :]
        if not _B64URL.fullmatch(body):
            raise ProofInvalid("an ed25519 signature is 'ed25519:' + 86 base64url characters")
        raw = base64.urlsafe_b64decode(body + "==")
        canonical = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    else:
        m = _TRANSIT.fullmatch(signature)
        if m is None:
            raise ProofInvalid("a signature is 'ed25519:<base64url>' or 'vault:v<N>:<base64>'")
        body = m.group(2)
        try:
            raw = base64.b64decode(body, validate=True)
        except binascii.Error as e:  # pragma: no cover - the regex admits only valid base64
            raise ProofInvalid("the transit signature is not valid base64") from e
        canonical = base64.b64encode(raw).decode("ascii")
    if canonical != body or len(raw) != _SIG_BYTES:
        raise ProofInvalid("the signature is not canonically encoded")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    """A signed tree head. Construction validates every field's form (not the signature)."""

    tree_size: int
    root_hash: str
    timestamp: str
    key_id: str
    signature: str

    def __post_init__(self) -> None:
        ts = self.tree_size
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= _MAX_TREE_SIZE:
            raise ProofInvalid(f"checkpoint tree_size must be an integer >= 0, got {ts!r}")
        if not isinstance(self.root_hash, str) or not _HEX64.fullmatch(self.root_hash):
            raise ProofInvalid(
                f"checkpoint root_hash must be 64 lower-case hex digits, got {self.root_hash!r:.80}"
            )
        if not isinstance(self.timestamp, str) or not _TIMESTAMP.fullmatch(self.timestamp):
            raise ProofInvalid(
                "checkpoint timestamp must be RFC 3339 UTC like 2026-01-02T03:04:05.000006Z, "
                f"got {self.timestamp!r:.80}"
            )
        try:
            datetime.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError as e:
            raise ProofInvalid(f"checkpoint timestamp {self.timestamp!r} is not a date") from e
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise ProofInvalid(
                "checkpoint key_id must be 1-128 characters of [A-Za-z0-9._:@/+=-], "
                f"got {self.key_id!r:.80}"
            )
        if not isinstance(self.signature, str) or len(self.signature) > 256:
            raise ProofInvalid("checkpoint signature must be a string of at most 256 characters")
        _decode_signature(self.signature)

    def signed_bytes(self) -> bytes:
        """RFC 8785 bytes of the signed fields (everything but ``signature``)."""
        return _signed_bytes(self.tree_size, self.root_hash, self.timestamp, self.key_id)

    @property
    def root(self) -> bytes:
        """``root_hash`` as 32 raw bytes (for ``ledger.merkle``)."""
        return bytes.fromhex(self.root_hash)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        """Parse exactly the five fields; unknown or missing fields are refused."""
        if not isinstance(data, dict):
            raise ProofInvalid(f"a checkpoint is a JSON object, got {type(data).__name__}")
        if data.keys() != CHECKPOINT_FIELDS:
            extra = sorted(data.keys() - CHECKPOINT_FIELDS)
            missing = sorted(CHECKPOINT_FIELDS - data.keys())
            raise ProofInvalid(f"checkpoint fields: missing {missing}, unknown {extra}")
        return cls(
            tree_size=data["tree_size"],
            root_hash=data["root_hash"],
            timestamp=data["timestamp"],
            key_id=data["key_id"],
            signature=data["signature"],
        )


def _signed_bytes(tree_size: int, root_hash: str, timestamp: str, key_id: str) -> bytes:
    return rfc8785.dumps(
        {
            "type": CHECKPOINT_TYPE,
            "version": CHECKPOINT_VERSION,
            "tree_size": tree_size,
            "root_hash": root_hash,
            "timestamp": timestamp,
            "key_id": key_id,
        }
    )


class CheckpointSigner(Protocol):
    """Signs checkpoint bytes; ``l7.crypto.Ed25519Signer`` and ``TransitSigner`` fit."""

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> str:
        """The signature string over ``data`` (see the module docstring)."""
        ...


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(public_key: bytes) -> str:
    """Default key id of a raw public key; the same as ``l7.crypto.key_fingerprint``."""
    return "ed25519-" + hashlib.sha256(public_key).hexdigest()[:16]


class Ed25519CheckpointSigner:
    """A local Ed25519 checkpoint key."""

    def __init__(self, private_key: Ed25519PrivateKey, *, key_id: str | None = None) -> None:
        self._key = private_key
        self.public_key_raw = public_key_raw(private_key)
        self.key_id = key_id or key_id_for(self.public_key_raw)

    @classmethod
    def generate(cls, *, key_id: str | None = None) -> Ed25519CheckpointSigner:
        return cls(Ed25519PrivateKey.generate(), key_id=key_id)

    @classmethod
    def from_file(cls, path: Path | str, *, key_id: str | None = None) -> Ed25519CheckpointSigner:
        return cls(load_private_key(path), key_id=key_id)

    def sign(self, data: bytes) -> str:
        sig = self._key.sign(data)
        return _ED25519_PREFIX + base64.urlsafe_b64encode(sig).decode("ascii").rstrip("=")


def save_private_key(path: Path | str, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600; refuses to overwrite."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask said
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; refuses a file readable by group or others."""
    p = Path(path)
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"{p} is mode {stat.S_IMODE(mode):04o}; a checkpoint key must be 0600 "
            f"(run: chmod 600 {p})"
        )
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{p} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"{p} holds a {type(key).__name__}; checkpoints need Ed25519")
    return key


def sign_checkpoint(
    tree_size: int, root_hash: str | bytes, signer: CheckpointSigner, now: datetime
) -> Checkpoint:
    """Sign "the first ``tree_size`` events have Merkle root ``root_hash``" at ``now``."""
    root_hex = root_hash.hex() if isinstance(root_hash, bytes) else root_hash
    timestamp = format_timestamp(now)
    # Validate the fields before signing them (a placeholder signature of the right form).
    Checkpoint(tree_size, root_hex, timestamp, signer.key_id, "ed25519:" + "A" * 86)
    signature = signer.sign(_signed_bytes(tree_size, root_hex, timestamp, signer.key_id))
    return Checkpoint(tree_size, root_hex, timestamp, signer.key_id, signature)


def verify_checkpoint(
    cp: Checkpoint, public_key_raw: bytes, *, key_id: str | None = None
) -> Checkpoint:
    """Check ``cp``'s signature with the raw Ed25519 key; returns ``cp`` or raises ProofInvalid."""
    # 1. The object is a Checkpoint (its fields were validated at construction).
    if not isinstance(cp, Checkpoint):
        raise ProofInvalid(f"expected a Checkpoint, got {type(cp).__name__}")
    # 2. If the caller pinned a key id, the checkpoint names it.
    if key_id is not None and cp.key_id != key_id:
        raise ProofInvalid(f"checkpoint is signed by key {cp.key_id!r}, expected {key_id!r}")
    # 3. The public key is a raw 32-byte Ed25519 key.
    if not isinstance(public_key_raw, bytes) or len(public_key_raw) != _PUB_BYTES:
        raise ProofInvalid(f"the checkpoint public key must be {_PUB_BYTES} raw bytes")
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as e:
        raise ProofInvalid("the checkpoint public key is not an Ed25519 key") from e
    # 4. The signature parses strictly and verifies over the JCS bytes of the signed fields.
    raw = _decode_signature(cp.signature)
    try:
        pub.verify(raw, cp.signed_bytes())
    except InvalidSignature as e:
        raise ProofInvalid(
            f"checkpoint (tree_size {cp.tree_size}, {cp.timestamp}) signature does not verify "
            f"with the given key; it was altered or signed by another key"
        ) from e
    return cp


# -- witness --------------------------------------------------------------------------------


def _dumps_line(cp: Checkpoint) -> bytes:
    return json.dumps(cp.to_dict(), sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ProofInvalid(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _refuse_constant(name: str) -> Any:
    raise ProofInvalid(f"{name} is not a JSON number")


def parse_json_strict(text: str | bytes) -> Any:
    """json.loads refusing duplicate keys, NaN and Infinity (ProofInvalid on any problem)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        if isinstance(e, ProofInvalid):
            raise
        raise ProofInvalid(f"not valid JSON: {e}") from e


def _regressed(prev: Checkpoint, cp: Checkpoint, where: str) -> IntegrityViolation:
    return IntegrityViolation(
        "checkpoint_inconsistent",
        decision_id="-",
        sequence=0,
        global_seq=cp.tree_size,
        expected=f"tree_size >= {prev.tree_size} after checkpoint at {prev.timestamp} ({where})",
        actual=f"tree_size {cp.tree_size} at {cp.timestamp}",
    )


def _forked(prev: Checkpoint, cp: Checkpoint, where: str) -> IntegrityViolation:
    return IntegrityViolation(
        "checkpoint_inconsistent",
        decision_id="-",
        sequence=0,
        global_seq=cp.tree_size,
        expected=f"root {prev.root_hash} for tree_size {prev.tree_size} ({where})",
        actual=f"root {cp.root_hash}",
    )


def check_order(prev: Checkpoint | None, cp: Checkpoint, where: str = "witness") -> None:
    """Refuse a checkpoint whose tree size goes backwards, or a second root for one size."""
    if prev is None:
        return
    if cp.tree_size < prev.tree_size:
        raise _regressed(prev, cp, where)
    if cp.tree_size == prev.tree_size and cp.root_hash != prev.root_hash:
        raise _forked(prev, cp, where)


def read_witness(path: Path | str) -> list[Checkpoint]:
    """Every checkpoint in a witness file, in order (signatures are not checked here).

    Raises ProofInvalid for a malformed line (including an unterminated last line)
    and IntegrityViolation ``checkpoint_inconsistent`` if tree sizes go backwards.
    """
    data = Path(path).read_bytes()
    if data and not data.endswith(b"\n"):
        raise ProofInvalid(f"{path}: the last line is unterminated (torn write?)")
    out: list[Checkpoint] = []
    for lineno, line in enumerate(data.splitlines(), start=1):
        try:
            cp = Checkpoint.from_dict(parse_json_strict(line))
        except ProofInvalid as e:
            raise ProofInvalid(f"{path}:{lineno}: {e}") from e
        check_order(out[-1] if out else None, cp, f"{path}:{lineno}")
        out.append(cp)
    return out


class Witness:
    """Append-only JSON-lines file of checkpoints (one object per line, fsynced)."""

    def __init__(self, path: Path | str, *, public_key_raw: bytes | None = None) -> None:
        """Open (or create) the file; with ``public_key_raw``, appends are verified first."""
        self.path = Path(path)
        self._public_key = public_key_raw
        self._last: Checkpoint | None = None
        if self.path.exists():
            existing = read_witness(self.path)
            self._last = existing[-1] if existing else None
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @property
    def last(self) -> Checkpoint | None:
        return self._last

    def append(self, cp: Checkpoint) -> Checkpoint:
        """Record ``cp`` durably; refuses one older than (or forking) the last recorded."""
        if self._public_key is not None:
            verify_checkpoint(cp, self._public_key)
        check_order(self._last, cp, str(self.path))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            line = memoryview(_dumps_line(cp))
            while line:
                line = line[os.write(fd, line) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._last = cp
        return cp

    @staticmethod
    def read_all(path: Path | str) -> list[Checkpoint]:
        return read_witness(path)
