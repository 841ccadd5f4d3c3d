"""Signed checkpoints: C2SP ``tlog-checkpoint`` notes over the global log, chained.

A checkpoint says "the first ``tree_size`` events of the log ``origin`` have Merkle root
``root_hash``" (``ledger.merkle``). It is a C2SP signed note (``ledger.note``) whose text
is exactly these newline-terminated lines::

    <origin>                                e.g. layer7.local/ledger/production
    <tree size>                             ASCII decimal, no leading zeroes
    <root hash>                             standard base64 of the 32-byte RFC 6962 root
    l7.index <n>                            this checkpoint's place in the chain, from 0
    l7.prev <n-1> <size> <base64 root>      the previous checkpoint (absent when n = 0)
    l7.time <RFC 3339 UTC, microseconds>    when it was signed

followed by an empty line and the log's Ed25519 note signature line, whose key name is
the origin (key hash ``SHA-256(origin || "\\n" || 0x01 || public key)[:4]``). The
``l7.*`` lines are C2SP extension lines: third-party checkpoint and note readers
(``golang.org/x/mod/sumdb/note``, ``transparency-dev/formats/log``) accept them as
opaque, and witness cosignatures (``cosignature/v1``) cover them.

The ``l7.prev`` line makes the checkpoints a hash-free chain of signed statements: a
deleted checkpoint leaves a gap in ``l7.index`` (``checkpoint_missing``), a replaced one
no longer matches its successor's ``l7.prev`` (``checkpoint_chain_broken``).

``signature`` strings from signers use ``l7.crypto``'s spelling (so ``l7``'s
``Ed25519Signer`` / ``TransitSigner`` satisfy ``CheckpointSigner``)::

    ed25519:<base64url, unpadded, of the 64-byte Ed25519 signature>
    vault:v<N>:<base64 std, padded>      (OpenBao transit, ed25519 key version N)

and are decoded to the 64 raw bytes the note carries.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.errors import IntegrityViolation
from ledger.merkle import HASH_SIZE, ProofInvalid
from ledger.note import (
    ALG_ED25519,
    Cosignature,
    NoteSignature,
    SignedNote,
    VerifierKey,
    check_key_name,
    key_hash,
    parse_note,
    verify_note_signature,
)

__all__ = [
    "ORIGIN_PREFIX",
    "Checkpoint",
    "CheckpointSigner",
    "Ed25519CheckpointSigner",
    "PrevRef",
    "check_chain",
    "default_origin",
    "format_timestamp",
    "load_private_key",
    "log_key",
    "parse_json_strict",
    "public_key_raw",
    "save_private_key",
    "sign_checkpoint",
    "verify_chain",
    "verify_checkpoint",
]

ORIGIN_PREFIX = "layer7.local/ledger/"
_MAX_TREE_SIZE = 2**63 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_ED25519_PREFIX = "ed25519:"
_B64URL = re.compile(r"[A-Za-z0-9_-]{86}")
_TRANSIT = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]{86}==)")
_SIG_BYTES = 64
_PUB_BYTES = 32


def default_origin(name: str) -> str:
    """``layer7.local/ledger/<name>`` with ``name`` reduced to a key-name-safe form."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "ledger"
    return ORIGIN_PREFIX + safe


def format_timestamp(now: datetime) -> str:
    """RFC 3339 UTC with microseconds and ``Z``; ``now`` must be timezone-aware."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("checkpoint time must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_signature(signature: str) -> bytes:
    """The 64 raw bytes of a signer's signature string, or ProofInvalid (one spelling only)."""
    if not isinstance(signature, str):
        raise ProofInvalid("a signature is a string")
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


def _b64root(hex_root: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_root)).decode("ascii")


def _hexroot(where: str, b64: str) -> str:
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error as e:
        raise ProofInvalid(f"{where}: the root hash is not base64") from e
    if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != b64:
        raise ProofInvalid(f"{where}: the root hash is not 32 bytes in canonical base64")
    return raw.hex()


def _size(where: str, text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise ProofInvalid(f"{where} is a decimal without leading zeroes, got {text!r:.40}")
    value = int(text)
    if value > _MAX_TREE_SIZE:
        raise ProofInvalid(f"{where} {value} is out of range")
    return value


@dataclass(frozen=True)
class PrevRef:
    """The previous checkpoint as its successor names it."""

    index: int
    tree_size: int
    root_hash: str

    def line(self) -> str:
        return f"l7.prev {self.index} {self.tree_size} {_b64root(self.root_hash)}"


@dataclass(frozen=True)
class Checkpoint:
    """A signed, chained tree head. Construction validates every field's form (not the
    signature: ``verify_checkpoint``)."""

    origin: str
    tree_size: int
    root_hash: str
    """The root as 64 lower-case hex digits (the note carries it in base64)."""
    index: int
    prev: PrevRef | None
    timestamp: str
    signature: NoteSignature
    """The log's note signature line."""

    def __post_init__(self) -> None:
        check_key_name(self.origin)
        for name in ("tree_size", "index"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_TREE_SIZE:
                raise ProofInvalid(f"checkpoint {name} must be an integer >= 0, got {v!r}")
        if not isinstance(self.root_hash, str) or not _HEX64.fullmatch(self.root_hash):
            raise ProofInvalid(
                f"checkpoint root_hash must be 64 lower-case hex digits, got {self.root_hash!r:.80}"
            )
        if (self.index == 0) != (self.prev is None):
            raise ProofInvalid(
                f"checkpoint {self.index}: the first checkpoint (index 0) and only it has no "
                "l7.prev line"
            )
        p = self.prev
        if p is not None and (
            p.index != self.index - 1
            or not 0 <= p.tree_size <= self.tree_size
            or not _HEX64.fullmatch(p.root_hash)
        ):
            raise ProofInvalid(
                f"checkpoint {self.index} (tree_size {self.tree_size}): l7.prev must name "
                f"index {self.index - 1} with a tree_size <= {self.tree_size}, got {p!r:.200}"
            )
        if not isinstance(self.timestamp, str) or not _TIMESTAMP.fullmatch(self.timestamp):
            raise ProofInvalid(
                "checkpoint time must be RFC 3339 UTC like 2026-01-02T03:04:05.000006Z, "
                f"got {self.timestamp!r:.80}"
            )
        try:
            datetime.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
        except ValueError as e:
            raise ProofInvalid(f"checkpoint time {self.timestamp!r} is not a date") from e
        if not isinstance(self.signature, NoteSignature) or self.signature.name != self.origin:
            raise ProofInvalid(
                f"the checkpoint's signature line must be by the key named like its origin "
                f"{self.origin!r}"
            )
        if len(self.signature.signature) != _SIG_BYTES:
            raise ProofInvalid("the checkpoint's Ed25519 signature must be 64 bytes")

    # -- derived bytes -----------------------------------------------------------------------

    @property
    def body(self) -> str:
        """The note text (what the log signs and witnesses cosign)."""
        return _body(
            self.origin,
            self.tree_size,
            self.root_hash,
            index=self.index,
            prev=self.prev,
            timestamp=self.timestamp,
        )

    def signed_bytes(self) -> bytes:
        return self.body.encode("utf-8")

    @property
    def key_id(self) -> str:
        """``<origin>+<key hash hex>``: which log key signed it."""
        return self.signature.key_id

    @property
    def root(self) -> bytes:
        """``root_hash`` as 32 raw bytes (for ``ledger.merkle``)."""
        return bytes.fromhex(self.root_hash)

    @property
    def ref(self) -> PrevRef:
        """How this checkpoint's successor names it."""
        return PrevRef(self.index, self.tree_size, self.root_hash)

    def encode(self, cosignatures: Sequence[Cosignature] = ()) -> str:
        """The signed note: body, empty line, the log's signature, then any cosignatures."""
        return SignedNote(
            self.body, (self.signature, *(c.note_signature() for c in cosignatures))
        ).encode()

    @property
    def note(self) -> str:
        return self.encode()

    @classmethod
    def decode(cls, text: str | bytes) -> Checkpoint:
        """Parse a checkpoint note carrying exactly the log's signature."""
        cp, cosigs = cls.decode_cosigned(text)
        if cosigs:
            raise ProofInvalid("a checkpoint note here carries the log's signature only")
        return cp

    @classmethod
    def decode_cosigned(cls, text: str | bytes) -> tuple[Checkpoint, list[Cosignature]]:
        """Parse a checkpoint note whose first signature is the log's and whose others are
        cosignature/v1 lines (parsed, not verified)."""
        note = parse_note(text)
        lines = note.text[:-1].split("\n")
        if len(lines) not in (5, 6):
            raise ProofInvalid(
                "a Layer-7 checkpoint note has 5 or 6 lines (origin, size, root, l7.index, "
                f"[l7.prev], l7.time), got {len(lines)}"
            )
        origin = check_key_name(lines[0])
        size = _size("tree size", lines[1])
        root = _hexroot("checkpoint", lines[2])
        ext = lines[3:]
        idx_f = ext[0].split(" ")
        if len(idx_f) != 2 or idx_f[0] != "l7.index":
            raise ProofInvalid(f"line 4 is 'l7.index <n>', got {ext[0]!r:.80}")
        index = _size("l7.index", idx_f[1])
        prev: PrevRef | None = None
        if len(ext) == 3:
            pf = ext[1].split(" ")
            if len(pf) != 4 or pf[0] != "l7.prev":
                raise ProofInvalid(
                    f"line 5 is 'l7.prev <index> <size> <base64 root>', got {ext[1]!r:.120}"
                )
            prev = PrevRef(
                _size("l7.prev index", pf[1]),
                _size("l7.prev size", pf[2]),
                _hexroot("l7.prev", pf[3]),
            )
        tf = ext[-1].split(" ")
        if len(tf) != 2 or tf[0] != "l7.time":
            raise ProofInvalid(f"the last line is 'l7.time <RFC 3339>', got {ext[-1]!r:.80}")
        first, *rest = note.signatures
        cp = cls(origin, size, root, index, prev, tf[1], first)
        if cp.body != note.text:  # pragma: no cover - the parse above admits one spelling
            raise ProofInvalid("the checkpoint note is not in its canonical form")
        return cp, [Cosignature.from_note_signature(s) for s in rest]


def _body(
    origin: str,
    tree_size: int,
    root_hash: str,
    *,
    index: int,
    prev: PrevRef | None,
    timestamp: str,
) -> str:
    lines = [origin, str(tree_size), _b64root(root_hash), f"l7.index {index}"]
    if prev is not None:
        lines.append(prev.line())
    lines.append(f"l7.time {timestamp}")
    return "\n".join(lines) + "\n"


class CheckpointSigner(Protocol):
    """Signs checkpoint bytes; ``l7.crypto.Ed25519Signer`` (and a transit signer that
    exposes its public key) fit."""

    @property
    def public_key_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> str:
        """The signature string over ``data`` (see the module docstring)."""
        ...


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def log_key(origin: str, public_key: bytes) -> VerifierKey:
    """The note verifier key of a log: its origin as key name, Ed25519 (alg 0x01)."""
    return VerifierKey(origin, ALG_ED25519, public_key)


class Ed25519CheckpointSigner:
    """A local Ed25519 checkpoint key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key_raw = public_key_raw(private_key)

    @classmethod
    def generate(cls) -> Ed25519CheckpointSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path | str) -> Ed25519CheckpointSigner:
        return cls(load_private_key(path))

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
            f"{p} is mode {stat.S_IMODE(mode):04o}; a private key must be 0600 (run: chmod 600 {p})"
        )
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{p} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError(f"{p} holds a {type(key).__name__}; checkpoints need Ed25519")
    return key


def sign_checkpoint(
    tree_size: int,
    root_hash: str | bytes,
    signer: CheckpointSigner,
    now: datetime,
    *,
    origin: str,
    prev: Checkpoint | None,
) -> Checkpoint:
    """Sign "the first ``tree_size`` events of ``origin`` have root ``root_hash``" at ``now``,
    as the successor of ``prev`` (None: the first checkpoint of the chain)."""
    root_hex = root_hash.hex() if isinstance(root_hash, bytes) else root_hash
    timestamp = format_timestamp(now)
    index = 0 if prev is None else prev.index + 1
    ref = None if prev is None else prev.ref
    pub = signer.public_key_raw
    kh = key_hash(origin, ALG_ED25519, pub)
    # Validate the fields before signing them (a placeholder signature of the right form).
    Checkpoint(
        origin, tree_size, root_hex, index, ref, timestamp, NoteSignature(origin, kh, bytes(64))
    )
    body = _body(origin, tree_size, root_hex, index=index, prev=ref, timestamp=timestamp)
    raw = _decode_signature(signer.sign(body.encode("utf-8")))
    return Checkpoint(
        origin, tree_size, root_hex, index, ref, timestamp, NoteSignature(origin, kh, raw)
    )


def verify_checkpoint(
    cp: Checkpoint, public_key_raw: bytes, *, origin: str | None = None
) -> Checkpoint:
    """Check ``cp``'s note signature with the raw Ed25519 key; returns ``cp`` or raises
    ProofInvalid."""
    # 1. The object is a Checkpoint (its fields were validated at construction).
    if not isinstance(cp, Checkpoint):
        raise ProofInvalid(f"expected a Checkpoint, got {type(cp).__name__}")
    # 2. If the caller pinned the origin, the checkpoint names it.
    if origin is not None and cp.origin != origin:
        raise ProofInvalid(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    # 3. The public key is a raw 32-byte Ed25519 key.
    if not isinstance(public_key_raw, bytes) or len(public_key_raw) != _PUB_BYTES:
        raise ProofInvalid(f"the checkpoint public key must be {_PUB_BYTES} raw bytes")
    # 4. The note signature (key name = origin, key hash, Ed25519 over the body) verifies.
    try:
        verify_note_signature(cp.body, cp.signature, log_key(cp.origin, public_key_raw))
    except ProofInvalid as e:
        raise ProofInvalid(
            f"checkpoint {cp.index} (tree_size {cp.tree_size}, {cp.timestamp}): {e}"
        ) from e
    return cp


# -- the chain --------------------------------------------------------------------------------


def _chain_violation(what: str, cp: Checkpoint, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what, decision_id="-", sequence=0, global_seq=cp.tree_size, expected=expected, actual=actual
    )


def check_chain(prev: Checkpoint | None, cp: Checkpoint, where: str = "checkpoint chain") -> None:
    """``cp`` directly follows ``prev`` (None: ``cp`` must be the first of its chain)."""
    if prev is None:
        if cp.index != 0:
            raise _chain_violation(
                "checkpoint_missing",
                cp,
                f"the chain to start at checkpoint 0 ({where})",
                f"first checkpoint is index {cp.index}: checkpoints 0..{cp.index - 1} were deleted",
            )
        return
    if cp.origin != prev.origin:
        raise _chain_violation(
            "checkpoint_chain_broken", cp, f"origin {prev.origin!r} ({where})", repr(cp.origin)
        )
    if cp.index != prev.index + 1:
        what = "checkpoint_missing" if cp.index > prev.index + 1 else "checkpoint_chain_broken"
        raise _chain_violation(
            what,
            cp,
            f"checkpoint {prev.index + 1} after checkpoint {prev.index} "
            f"(tree_size {prev.tree_size}, {prev.timestamp}) ({where})",
            f"checkpoint {cp.index} (tree_size {cp.tree_size}, {cp.timestamp})"
            + (
                f": checkpoints {prev.index + 1}..{cp.index - 1} were deleted"
                if cp.index > prev.index + 1
                else ""
            ),
        )
    if cp.tree_size < prev.tree_size:
        raise _chain_violation(
            "checkpoint_inconsistent",
            cp,
            f"tree_size >= {prev.tree_size} after checkpoint {prev.index} ({where})",
            f"tree_size {cp.tree_size} in checkpoint {cp.index}",
        )
    if cp.prev != prev.ref:
        raise _chain_violation(
            "checkpoint_chain_broken",
            cp,
            f"checkpoint {cp.index} to name its predecessor (index {prev.index}, tree_size "
            f"{prev.tree_size}, root {prev.root_hash}) ({where})",
            f"it names {cp.prev!r}: the predecessor was replaced",
        )


def verify_chain(checkpoints: Sequence[Checkpoint], where: str = "checkpoint chain") -> None:
    """The checkpoints (oldest first) form one unbroken chain from index 0."""
    prev: Checkpoint | None = None
    for cp in checkpoints:
        check_chain(prev, cp, where)
        prev = cp


# -- strict JSON (packs, configuration) --------------------------------------------------------


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
