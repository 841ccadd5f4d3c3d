"""What the scanner looks through and looks for beyond known shapes: encodings and
random-looking tokens.

``decoded_views(text)`` yields each span of ``text`` that decodes to something else
(URL percent-encoding, base64 / base64url, hex), with what it decodes to: printable text
is screened again by the caller (so an encoded private key, cloud key or password is
found), and long binary behind hex is key material on its own (``binary_key``).

``opaque_tokens(text)`` yields the spans of long tokens that look random rather than
written: at least ``OPAQUE_MIN_CHARS`` of the base64url alphabet, Shannon entropy of at
least ``OPAQUE_MIN_BITS`` bits per character, and a letter / digit / case change between
at least ``OPAQUE_MIN_CHANGES`` of adjacent alphanumeric pairs. Words, paths, host names,
camel-case identifiers, UUIDs and hex digests stay below one of the three; random base64
keys of 32 characters or more pass all three.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "BINARY_KEY_MIN_BYTES",
    "OPAQUE_MIN_BITS",
    "OPAQUE_MIN_CHANGES",
    "OPAQUE_MIN_CHARS",
    "DecodedView",
    "decoded_views",
    "opaque_tokens",
    "shannon_entropy",
]

OPAQUE_MIN_CHARS = 32
OPAQUE_MIN_BITS = 4.0
OPAQUE_MIN_CHANGES = 0.4
BINARY_KEY_MIN_BYTES = 32  # 256 bits: a key; a bare sha256 digest must say "sha256:"
_B64_MIN_CHARS = 16
_HEX_MIN_CHARS = 32
_PRINTABLE_MIN = 0.9

_OPAQUE = re.compile(rf"[A-Za-z0-9+/_-]{{{OPAQUE_MIN_CHARS},}}={{0,2}}")
_B64 = re.compile(rf"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{{{_B64_MIN_CHARS},}}={{0,2}}")
_HEX = re.compile(rf"(?<![A-Za-z0-9])(?:0x)?([0-9a-fA-F]{{{_HEX_MIN_CHARS},}})(?![A-Za-z0-9])")
_ALL_HEX = re.compile(r"[0-9a-fA-F]+")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_NON_SPACE = re.compile(r"\S+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def shannon_entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character (0.0 for the empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _char_class(c: str) -> int:
    if c.isdigit():
        return 0
    if c.isupper():
        return 1
    if c.islower():
        return 2
    return -1


def _class_changes(token: str) -> float:
    """The share of adjacent alphanumeric pairs whose class (digit, upper, lower) differs."""
    pairs = changes = 0
    for a, b in itertools.pairwise(token):
        ca, cb = _char_class(a), _char_class(b)
        if ca < 0 or cb < 0:
            continue
        pairs += 1
        changes += ca != cb
    return changes / pairs if pairs else 0.0


def opaque_tokens(text: str) -> Iterator[tuple[int, int]]:
    """Spans of long random-looking tokens in ``text`` (see module doc). A canonical UUID
    inside a token is an identifier, not key material: it is left out before the token is
    judged (``k-<uuid4>`` idempotency keys would otherwise trip the rule about 1 in 150
    times), so what remains must be long and random on its own."""
    for m in _OPAQUE.finditer(text):
        token = _UUID.sub("", m.group(0).rstrip("="))
        if (
            len(token) >= OPAQUE_MIN_CHARS
            and shannon_entropy(token) >= OPAQUE_MIN_BITS
            and _class_changes(token) >= OPAQUE_MIN_CHANGES
        ):
            yield m.start(), m.end()


@dataclass(frozen=True)
class DecodedView:
    """``text[start:end]`` decodes (``encoding``) to ``decoded`` (printable text), or to
    ``binary_len`` bytes of binary (``decoded`` is then empty)."""

    start: int
    end: int
    encoding: str
    decoded: str
    binary_len: int = 0


def _as_text(raw: bytes) -> str | None:
    """``raw`` as text when it is UTF-8 and mostly printable; None for binary."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    return text if printable / len(text) >= _PRINTABLE_MIN else None


def _b64decode(token: str) -> bytes | None:
    body = token.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            if "+" in body or "/" in body:
                return None
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def decoded_views(text: str) -> Iterator[DecodedView]:
    """Every span of ``text`` that decodes to text (or, for hex, to long binary)."""
    for m in _NON_SPACE.finditer(text):
        token = m.group(0)
        if not _PERCENT.search(token):
            continue
        decoded, prev = token, ""
        for _ in range(3):  # %2541 -> %41 -> A: double encoding is still encoding
            prev, decoded = decoded, unquote(decoded, errors="replace")
            if decoded == prev:
                break
        if decoded != token:
            yield DecodedView(m.start(), m.end(), "url", decoded)
    for m in _HEX.finditer(text):
        digits = m.group(1)
        if len(digits) % 2:
            continue
        raw = bytes.fromhex(digits)
        as_text = _as_text(raw)
        if as_text is not None:
            yield DecodedView(m.start(), m.end(), "hex", as_text)
        elif len(raw) >= BINARY_KEY_MIN_BYTES:
            yield DecodedView(m.start(), m.end(), "hex", "", len(raw))
    for m in _B64.finditer(text):
        token = m.group(0)
        if _ALL_HEX.fullmatch(token):
            continue  # hex digits are read as hex above
        blob = _b64decode(token)
        as_text = _as_text(blob) if blob is not None else None
        if as_text is not None:
            yield DecodedView(m.start(), m.end(), "base64", as_text)
