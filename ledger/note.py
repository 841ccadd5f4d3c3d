"""C2SP signed notes (``c2sp.org/signed-note``) and Ed25519 cosignatures (``tlog-cosignature``).

A signed note is UTF-8 text: the note *text* (one or more lines, each ending in
``\\n``), an empty line, then one or more signature lines::

    — <key name> base64(key hash[4] || signature)\\n

``—`` is U+2014. The 4-byte *key hash* binds the key name and algorithm::

    key_hash = SHA-256(<key name> || "\\n" || alg || public key)[:4]

    alg 0x01  Ed25519 note signature: Ed25519 over the note text bytes
    alg 0x04  cosignature/v1:         signature = u64 big-endian POSIX time || Ed25519 over
                                       "cosignature/v1\\ntime <t>\\n" || note text

A verifier key (*vkey*) is ``<name>+<key hash as 8 hex digits>+base64(alg || public key)``,
the string ``golang.org/x/mod/sumdb/note.NewVerifier`` and ``transparency-dev/formats``
read. Parsing is strict (one spelling for everything), so every note has one encoding.
Verification raises ``ProofInvalid`` and never returns False.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.merkle import ProofInvalid

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Cosignature",
    "NoteSignature",
    "SignedNote",
    "VerifierKey",
    "check_key_name",
    "cosign",
    "cosignature_message",
    "key_hash",
    "parse_note",
    "verify_cosignature",
    "verify_note_signature",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
_DASH = "\u2014"
_MAX_SIGNATURES = 100
_MAX_NOTE = 1 << 20
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_MAX_TIME = 2**63 - 1


def _b64decode(what: str, text: str) -> bytes:
    """Standard padded base64, canonical spelling only."""
    if not _B64.fullmatch(text):
        raise ProofInvalid(f"{what} is not standard padded base64: {text!r:.80}")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as e:  # pragma: no cover - the regex admits only valid base64
        raise ProofInvalid(f"{what} is not valid base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise ProofInvalid(f"{what} is not canonically encoded base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_key_name(name: str) -> str:
    """A note key name: non-empty, printable, no whitespace and no ``+``."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 256
        or any(c.isspace() or c == "+" or not c.isprintable() for c in name)
    ):
        raise ProofInvalid(
            f"a note key name is 1-256 printable characters without spaces or '+', got {name!r:.80}"
        )
    return name


def _raw_public(key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, bytes):
        if len(key) != 32:
            raise ProofInvalid(f"an Ed25519 public key is 32 bytes, got {len(key)}")
        return key
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_hash(name: str, alg: int, public_key: Ed25519PublicKey | bytes) -> bytes:
    """SHA-256(name || "\\n" || alg || public key)[:4]."""
    check_key_name(name)
    pub = _raw_public(public_key)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + pub).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    """A public key that verifies one kind of note signature under one key name."""

    name: str
    alg: int
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.alg not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise ProofInvalid(f"unsupported note key algorithm 0x{self.alg:02x}")
        _raw_public(self.public_key)

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, self.alg, self.public_key)

    @property
    def key_id(self) -> str:
        """``<name>+<key hash hex>``: how this key is named in messages and tables."""
        return f"{self.name}+{self.key_hash.hex()}"

    def encode(self) -> str:
        """The vkey string ``name+hash+base64(alg || key)``."""
        return f"{self.key_id}+{_b64(bytes([self.alg]) + self.public_key)}"

    @classmethod
    def decode(cls, text: str) -> VerifierKey:
        """Parse a vkey string strictly; its key hash must match its name and key."""
        if not isinstance(text, str):
            raise ProofInvalid("a verifier key is a string")
        # The name has no '+'; the base64 key may (split like sumdb/note: twice, from the left).
        name, sep1, rest = text.strip().partition("+")
        hash_hex, sep2, key_b64 = rest.partition("+")
        if not (sep1 and sep2):
            raise ProofInvalid(
                f"a verifier key is '<name>+<8 hex digits>+<base64 key>', got {text!r:.120}"
            )
        if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
            raise ProofInvalid(f"verifier key hash must be 8 lower-case hex digits: {hash_hex!r}")
        raw = _b64decode("verifier key", key_b64)
        if len(raw) != 33:
            raise ProofInvalid(f"verifier key material is 1 + 32 bytes, got {len(raw)}")
        key = cls(name, raw[0], raw[1:])
        if key.key_hash.hex() != hash_hex:
            raise ProofInvalid(
                f"verifier key {name!r}: hash {hash_hex} does not match its name and key "
                f"(expected {key.key_hash.hex()})"
            )
        return key

    @classmethod
    def for_private(cls, name: str, alg: int, private_key: Ed25519PrivateKey) -> VerifierKey:
        return cls(name, alg, _raw_public(private_key.public_key()))

    def _ed25519(self) -> Ed25519PublicKey:
        try:
            return Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError as e:  # pragma: no cover - any 32 bytes load
            raise ProofInvalid(f"key {self.key_id} is not an Ed25519 public key") from e


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key hash, and the signature bytes after the hash."""

    name: str
    key_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_hash) != 4:
            raise ProofInvalid("a note key hash is 4 bytes")
        if not 1 <= len(self.signature) <= 4096:
            raise ProofInvalid("a note signature is 1..4096 bytes")

    @property
    def key_id(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}"

    def line(self) -> str:
        """``— <name> <base64(hash || signature)>\\n``."""
        return f"{_DASH} {self.name} {_b64(self.key_hash + self.signature)}\n"

    @classmethod
    def parse_line(cls, line: str) -> NoteSignature:
        """One signature line without its newline."""
        prefix = _DASH + " "
        if not line.startswith(prefix):
            raise ProofInvalid(f"a note signature line starts with '{prefix}', got {line!r:.80}")
        fields = line[len(prefix) :].split(" ")
        if len(fields) != 2:
            raise ProofInvalid(f"a note signature line is '— <name> <base64>', got {line!r:.120}")
        raw = _b64decode("note signature", fields[1])
        if len(raw) < 5:
            raise ProofInvalid("a note signature holds a 4-byte key hash and a signature")
        return cls(fields[0], raw[:4], raw[4:])


@dataclass(frozen=True)
class SignedNote:
    """Note text (ending in a newline) and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_note(data: str | bytes) -> SignedNote:
    """Split a signed note strictly: UTF-8, no control characters but newlines, text lines
    non-empty, one empty line, then 1..100 signature lines each ending in a newline."""
    if isinstance(data, bytes):
        if len(data) > _MAX_NOTE:
            raise ProofInvalid(f"a signed note is at most {_MAX_NOTE} bytes")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProofInvalid(f"a signed note is UTF-8 text: {e}") from e
    if not isinstance(data, str):
        raise ProofInvalid("a signed note is text")
    if len(data) > _MAX_NOTE:
        raise ProofInvalid(f"a signed note is at most {_MAX_NOTE} characters")
    if any((c < " " and c != "\n") or c == "\x7f" for c in data):
        raise ProofInvalid("a signed note holds no control characters besides newlines")
    split = data.rfind("\n\n")
    if split < 0 or not data.endswith("\n"):
        raise ProofInvalid(
            "a signed note is its text, an empty line and newline-terminated signature lines"
        )
    text, sig_block = data[: split + 1], data[split + 2 :]
    if any(not line for line in text[:-1].split("\n")):
        raise ProofInvalid("the note text has an empty line (only one may separate signatures)")
    lines = sig_block[:-1].split("\n")
    if not lines or len(lines) > _MAX_SIGNATURES:
        raise ProofInvalid(f"a signed note carries 1..{_MAX_SIGNATURES} signatures")
    return SignedNote(text, tuple(NoteSignature.parse_line(line) for line in lines))


def verify_note_signature(text: str, sig: NoteSignature, key: VerifierKey) -> NoteSignature:
    """Check an Ed25519 note signature (alg 0x01) by ``key`` over ``text``."""
    # 1. The key is an Ed25519 note key whose name and hash the line names.
    if key.alg != ALG_ED25519:
        raise ProofInvalid(f"key {key.key_id} is not an Ed25519 note key")
    if (sig.name, sig.key_hash) != (key.name, key.key_hash):
        raise ProofInvalid(f"signature by {sig.key_id}, expected one by {key.key_id}")
    # 2. 64 bytes of Ed25519 over the text's bytes.
    if len(sig.signature) != 64:
        raise ProofInvalid(f"an Ed25519 note signature is 64 bytes, got {len(sig.signature)}")
    try:
        key._ed25519().verify(sig.signature, text.encode("utf-8"))
    except InvalidSignature as e:
        raise ProofInvalid(
            f"the note signature by {key.key_id} does not verify: the note was altered or "
            "signed by another key"
        ) from e
    return sig


# -- cosignature/v1 --------------------------------------------------------------------------


def cosignature_message(text: str, timestamp: int) -> bytes:
    """``cosignature/v1\\ntime <t>\\n`` followed by the whole note text."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class Cosignature:
    """A witness's timestamped Ed25519 cosignature over a checkpoint's note text."""

    name: str
    key_hash: bytes
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_hash) != 4 or len(self.signature) != 64:
            raise ProofInvalid("a cosignature/v1 is a 4-byte key hash, 8-byte time, 64 bytes")
        if not isinstance(self.timestamp, int) or not 0 <= self.timestamp <= _MAX_TIME:
            raise ProofInvalid(f"cosignature time out of range: {self.timestamp!r}")

    @property
    def key_id(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}"

    def note_signature(self) -> NoteSignature:
        return NoteSignature(
            self.name, self.key_hash, self.timestamp.to_bytes(8, "big") + self.signature
        )

    def line(self) -> str:
        return self.note_signature().line()

    @classmethod
    def from_note_signature(cls, sig: NoteSignature) -> Cosignature:
        if len(sig.signature) != 72:
            raise ProofInvalid(
                f"a cosignature/v1 by {sig.key_id} is 8 + 64 bytes, got {len(sig.signature)}"
            )
        return cls(
            sig.name, sig.key_hash, int.from_bytes(sig.signature[:8], "big"), sig.signature[8:]
        )

    @classmethod
    def parse_line(cls, line: str) -> Cosignature:
        return cls.from_note_signature(NoteSignature.parse_line(line.rstrip("\n")))


def cosign(text: str, name: str, private_key: Ed25519PrivateKey, timestamp: int) -> Cosignature:
    """The cosignature/v1 of ``name`` over the note ``text`` at POSIX time ``timestamp``."""
    kh = key_hash(name, ALG_COSIGNATURE_V1, private_key.public_key())
    sig = private_key.sign(cosignature_message(text, timestamp))
    return Cosignature(name, kh, timestamp, sig)


def verify_cosignature(text: str, cosig: Cosignature, key: VerifierKey) -> Cosignature:
    """Check a cosignature/v1 by ``key`` over the note ``text``."""
    # 1. The key is a cosignature/v1 key whose name and hash the cosignature names.
    if key.alg != ALG_COSIGNATURE_V1:
        raise ProofInvalid(f"key {key.key_id} is not a cosignature/v1 witness key")
    if (cosig.name, cosig.key_hash) != (key.name, key.key_hash):
        raise ProofInvalid(f"cosignature by {cosig.key_id}, expected one by {key.key_id}")
    # 2. Ed25519 over the cosignature/v1 message with the signed time.
    try:
        key._ed25519().verify(cosig.signature, cosignature_message(text, cosig.timestamp))
    except InvalidSignature as e:
        raise ProofInvalid(
            f"the cosignature by witness {key.key_id} (time {cosig.timestamp}) does not verify "
            "over this checkpoint: altered, or cosigned another checkpoint"
        ) from e
    return cosig
