"""Find credential-shaped values in a payload before it can reach the ledger (DESIGN §5).

``scan`` walks nested dicts, lists and tuples and returns ``Finding(path, kind)`` for
every value (and every dict key) that looks like a credential; ``check_payload`` raises
``SecretInPayload`` naming the first; ``redact`` returns a copy with each finding
replaced by ``[redacted:<kind>]``; ``redact_text`` does the same to free text (logs).

What is detected, in priority order (when two detections overlap, the first wins):

====================  ======================================================================
kind                  shape
====================  ======================================================================
gcp_service_account   a dict (or JSON text) with ``"type": "service_account"`` and a
                      ``private_key`` / ``private_key_id``
private_key           ``-----BEGIN [X ]PRIVATE KEY-----`` (OPENSSH, RSA, EC, ENCRYPTED, ...)
jwt                   three base64url segments whose header decodes to JSON with ``"alg"``
aws_access_key        ``AKIA`` / ``ASIA`` + 16 upper-case letters or digits
github_token          ``ghp_ gho_ ghs_ ghu_ ghr_`` + 36 or more, or ``github_pat_`` + 22 or more
slack_token           ``xoxb- xoxa- xoxp- xoxr- xoxs-`` + 10 or more
stripe_key            ``sk_live_`` / ``rk_live_`` + 16 or more
azure_storage_key     ``AccountKey=`` / ``SharedAccessKey=`` + base64
connection_string     a URL with a password (``scheme://user:pass@host``: only the password
                      is redacted) or ``Password=...`` / ``Pwd=...`` in an ADO string
bearer_token          ``Bearer <token>`` (16+ characters with a digit or mixed case),
                      ``Authorization: <scheme> <credentials>``, or any value of a field
                      named ``authorization``
aws_secret_key        a 40-character mixed base64 token in a secret-named field
high_entropy          a whitespace-free token of 20+ characters with Shannon entropy
                      >= 3.5 bits per character in a secret-named field, or after
                      ``<secret-name>=`` / ``<secret-name>:`` in text; in ANY field, a
                      long random-looking token (``l7.secrets.decoders.opaque_tokens``:
                      32+ base64url characters, >= 4 bits per character, frequent
                      letter/digit/case changes); and hex that decodes to 32+ bytes of
                      binary (key material; a digest is sent as ``sha256:<hex>``)
secret_field          any other non-empty string in a secret-named field (or under one),
                      whatever its entropy: ``{"password": "hunter2"}``
====================  ======================================================================

Encodings are looked through: a token that is URL percent-encoded, base64 / base64url or
hex and decodes to printable text is scanned again as text (two levels deep), and a hit
inside is reported for the whole encoded token with the inner kind.

A field name is *secret-named* when, split into words (``apiKey`` -> ``api_key``), it
contains password, passwd, passphrase, pwd, secret, token, credential, auth (as a word),
authorization, api key, private / access / client / session / signing / encryption /
master key, and its last word is not one that names metadata (``id``, ``ref``, ``hash``,
``type``, ``name``, ``url``, ...: ``token_id`` and ``secret_ref`` are not secret-named).
Values that are pointers or digests, not secrets, are never name-flagged: a secret
reference (``vault:kv/app/db#password@3``), ``sha256:<64 hex>``, a transit ciphertext
(``vault:v1:...``) and a placeholder (``********``, ``${VAR}``, ``[redacted:<kind>]``);
nor are their encodings or entropy judged anywhere. A lower-case DNS name is not judged by
entropy, but it is a value like any other in a secret-named field. A value under a
secret-named key (``{"credentials": {"user": ...}}``) is in a secret-named field unless
its own key names metadata. In ``Name=value`` tokens only the value is judged.

A ``Finding`` never holds the value; error messages name the path and the kind only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from l7.errors import RequestInvalid
from l7.secrets.decoders import decoded_views, opaque_tokens, shannon_entropy
from l7.secrets.fields import is_digest_field
from l7.secrets.interface import Finding, SecretInPayload, SecretKind, SecretRef

__all__ = [
    "ENTROPY_MIN_BITS",
    "ENTROPY_MIN_CHARS",
    "MAX_DEPTH",
    "Finding",
    "SecretKind",
    "check_payload",
    "is_metadata_name",
    "is_secret_name",
    "redact",
    "redact_text",
    "scan",
    "shannon_entropy",
]

ENTROPY_MIN_BITS = 3.5
ENTROPY_MIN_CHARS = 20
MAX_DEPTH = 64
DEFAULT_PATH = "action.payload"

K = SecretKind

# -- shapes -------------------------------------------------------------------------------

_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)
_GCP_TYPE = re.compile(r"""["']type["']\s*:\s*["']service_account["']""")
_GCP_KEY = re.compile(r"""["']private_key(?:_id)?["']\s*:""")
_JWT = re.compile(r"(?<![A-Za-z0-9_.=-])([A-Za-z0-9_-]{10,})\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_AWS_ACCESS = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_GITHUB = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
)
_SLACK = re.compile(r"(?<![A-Za-z0-9])xox[baprs]-[A-Za-z0-9-]{10,}")
_STRIPE = re.compile(r"(?<![A-Za-z0-9])[sr]k_live_[A-Za-z0-9]{16,}")
_AZURE = re.compile(r"(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{20,}={0,2})")
_URL_PASSWORD = re.compile(
    r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]{0,30}://[^\s:/?#@\[\]\"']*:([^\s/?#\"']+)@[^\s/?#@]"
)
_ADO_PASSWORD = re.compile(r"""(?i)(?:^|;)\s*(?:password|pwd)\s*=\s*("[^"]*"|'[^']*'|[^;]*)""")
_BEARER = re.compile(r"(?i)(?<![A-Za-z0-9])bearer\s+([A-Za-z0-9._~+/-]{16,}=*)")
_AUTH_HEADER = re.compile(
    r"""(?i)\bauthorization["']?\s*[:=]\s*["']?(?:basic|bearer|token|digest|negotiate)\s+"""
    r"([A-Za-z0-9._~+/-]{8,}=*)"
)
_ASSIGNMENT = re.compile(
    r"""(?<![A-Za-z0-9_.-])([A-Za-z][A-Za-z0-9_.-]{0,63})["']?\s*[:=]\s*["']?"""
    r"""([^\s"',;&<>]{20,})"""
)
_PAIR = re.compile(r"([A-Za-z][A-Za-z0-9_.-]{0,63})=([^=].*)")
_TOKEN = re.compile(r"[^\s\"',;()<>{}]+")
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")

_PLACEHOLDER = re.compile(
    r"\**|\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*|\{\{[^}]*\}\}|<[^>]*>|%\([^)]*\)s|\[redacted:[a-z_]+\]"
)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_HOSTNAME = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)+")
_TRANSIT = re.compile(r"vault:v[1-9][0-9]{0,8}:[A-Za-z0-9+/]+={0,2}")

# -- names --------------------------------------------------------------------------------

_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|pwd|secret|token|credential|authorization"
    r"|(?:^|_)auth(?:_|$)|api_?key|(?:private|access|client|session|signing|encryption"
    r"|master)_?key"
)
_METADATA_WORDS = frozenset(
    (  # noqa: SIM905 (a word list reads better as one string)
        "id ids ref refs reference hash digest sha256 fingerprint type kind name names method "
        "url uri endpoint path version versions expiry expires expiration ttl at time count "
        "length policy policies scope scopes alg algorithm hint label format enabled required "
        "present set rotated mount field provider source"
    ).split()
)
_AUTHORIZATION_NAMES = frozenset({"authorization", "proxy_authorization"})
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _normalize_name(name: str) -> str:
    return _NON_WORD.sub("_", _CAMEL.sub(r"\1_\2", name).lower()).strip("_")


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` is expected to hold a secret (see module doc)."""
    norm = _normalize_name(name)
    if not norm or not _SECRET_NAME.search(norm):
        return False
    return norm.rsplit("_", 1)[-1] not in _METADATA_WORDS


def is_metadata_name(name: str) -> bool:
    """Whether a field called ``name`` names metadata (``id``, ``type``, ``ref``, ...)."""
    return _normalize_name(name).rsplit("_", 1)[-1] in _METADATA_WORDS


def _is_exempt(value: str) -> bool:
    """Pointers, digests, ciphertexts, placeholders and host names are not secrets."""
    return _is_pointer(value) or bool(_HOSTNAME.fullmatch(value.strip()))


def _is_pointer(value: str) -> bool:
    """A secret reference, a ``sha256:`` digest, a transit ciphertext or a placeholder:
    what is sent instead of a secret."""
    v = value.strip()
    if any(rx.fullmatch(v) for rx in (_PLACEHOLDER, _SHA256, _TRANSIT)):
        return True
    if not v.startswith("vault:"):
        return False
    try:
        SecretRef.parse(v)
    except RequestInvalid:
        return False
    return True


# -- text detection -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    kind: SecretKind


def _jwt_header_ok(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _looks_opaque(token: str) -> bool:
    """A token, not a word: a digit, or both cases."""
    return any(c.isdigit() for c in token) or (
        any(c.islower() for c in token) and any(c.isupper() for c in token)
    )


def _value_kind(token: str) -> SecretKind | None:
    """The kind of a whitespace-free token found where a secret is expected."""
    if _is_exempt(token):
        return None
    if _AWS_SECRET.fullmatch(token) and _looks_opaque(token):
        return K.AWS_SECRET_KEY
    if len(token) >= ENTROPY_MIN_CHARS and shannon_entropy(token) >= ENTROPY_MIN_BITS:
        return K.HIGH_ENTROPY
    return None


def _pattern_hits(text: str) -> Iterator[_Hit]:
    """Name-independent detections, in priority order."""
    if _GCP_TYPE.search(text) and _GCP_KEY.search(text):
        yield _Hit(0, len(text), K.GCP_SERVICE_ACCOUNT)
    for m in _PEM.finditer(text):
        yield _Hit(m.start(), m.end(), K.PRIVATE_KEY)
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group(1)):
            yield _Hit(m.start(), m.end(), K.JWT)
    for rx, kind in (
        (_AWS_ACCESS, K.AWS_ACCESS_KEY),
        (_GITHUB, K.GITHUB_TOKEN),
        (_SLACK, K.SLACK_TOKEN),
        (_STRIPE, K.STRIPE_KEY),
    ):
        for m in rx.finditer(text):
            yield _Hit(m.start(), m.end(), kind)
    for m in _AZURE.finditer(text):
        yield _Hit(m.start(1), m.end(1), K.AZURE_STORAGE_KEY)
    for rx in (_URL_PASSWORD, _ADO_PASSWORD):
        for m in rx.finditer(text):
            if m.group(1).strip() and not _PLACEHOLDER.fullmatch(m.group(1).strip("\"' ")):
                yield _Hit(m.start(1), m.end(1), K.CONNECTION_STRING)
    for m in _BEARER.finditer(text):
        if _looks_opaque(m.group(1)):
            yield _Hit(m.start(1), m.end(1), K.BEARER_TOKEN)
    for m in _AUTH_HEADER.finditer(text):
        yield _Hit(m.start(1), m.end(1), K.BEARER_TOKEN)
    for m in _ASSIGNMENT.finditer(text):
        if is_secret_name(m.group(1)):
            named = _value_kind(m.group(2))
            if named is not None:
                yield _Hit(m.start(2), m.end(2), named)


def _named_hits(text: str, field: str) -> Iterator[_Hit]:
    """Detections that depend on the value sitting in a secret-named field."""
    if _is_exempt(text):
        return
    if _normalize_name(field) in _AUTHORIZATION_NAMES and len(text.strip()) >= 8:
        yield _Hit(0, len(text), K.BEARER_TOKEN)
        return
    for m in _TOKEN.finditer(text):
        start = m.start()
        pair = _PAIR.fullmatch(m.group(0))  # "Protocol=https": judge the value alone
        if pair is not None:
            start += pair.start(2)
        kind = _value_kind(text[start : m.end()])
        if kind is not None:
            yield _Hit(start, m.end(), kind)


_MAX_DECODE_DEPTH = 2
_WORD = re.compile(r"\S+")


def _pointer_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text) if _is_pointer(m.group(0))]


def _outside(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    return all(end <= a or start >= b for a, b in spans)


def _encoded_hits(text: str, depth: int) -> Iterator[_Hit]:
    """Secrets behind an encoding (see module doc), and random-looking long tokens."""
    pointers = _pointer_spans(text)
    if depth < _MAX_DECODE_DEPTH:
        for view in decoded_views(text):
            if not _outside(pointers, view.start, view.end):
                continue
            if view.binary_len:
                yield _Hit(view.start, view.end, K.HIGH_ENTROPY)
                continue
            inner = _text_hits(view.decoded, None, depth=depth + 1)
            if inner:
                yield _Hit(view.start, view.end, inner[0].kind)
    for start, end in opaque_tokens(text):
        if _outside(pointers, start, end):
            yield _Hit(start, end, K.HIGH_ENTROPY)


def _text_hits(text: str, field: str | None, *, secret: bool = False, depth: int = 0) -> list[_Hit]:
    """Non-overlapping hits in ``text``, earlier detections winning, sorted by position.
    ``secret``: the value sits in (or under) a secret-named field."""
    named = secret or (field is not None and is_secret_name(field))
    candidates = _pattern_hits(text)
    if named:
        candidates = _chain(candidates, _named_hits(text, field or ""))
    candidates = _chain(candidates, _encoded_hits(text, depth))
    if named and text.strip() and not _is_pointer(text):
        candidates = _chain(candidates, iter([_Hit(0, len(text), K.SECRET_FIELD)]))
    accepted: list[_Hit] = []
    for hit in candidates:
        if hit.end > hit.start and all(hit.end <= a.start or hit.start >= a.end for a in accepted):
            accepted.append(hit)
    return sorted(accepted, key=lambda h: h.start)


def _chain(*its: Iterator[_Hit]) -> Iterator[_Hit]:
    for it in its:
        yield from it


def _replace(text: str, hits: list[_Hit]) -> str:
    out, pos = [], 0
    for h in hits:
        out.append(text[pos : h.start])
        out.append(f"[redacted:{h.kind.value}]")
        pos = h.end
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> str:
    """``text`` with every detection replaced by ``[redacted:<kind>]`` (no field name is
    known, so name-dependent checks apply only to ``name=value`` assignments)."""
    return _replace(text, _text_hits(text, None))


# -- walking ------------------------------------------------------------------------------


def _child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENT.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def _is_gcp_account(d: Mapping[Any, Any]) -> bool:
    return d.get("type") == "service_account" and ("private_key" in d or "private_key_id" in d)


class _Walker:
    def __init__(self, on_finding: Callable[[Finding], None]) -> None:
        self._emit = on_finding

    def walk(
        self, value: Any, path: str, field: str | None, depth: int, secret: bool = False
    ) -> Any:
        """Emit findings under ``path`` and return the redacted copy of ``value``.
        ``secret``: ``value`` sits under a secret-named key."""
        if depth > MAX_DEPTH:
            raise RequestInvalid(path, f"nests deeper than {MAX_DEPTH} levels; flatten it")
        secret = secret or (field is not None and is_secret_name(field))
        if isinstance(value, str):
            return self._text(value, path, field, secret)
        if isinstance(value, bytes | bytearray):
            text = bytes(value).decode("utf-8", errors="replace")
            redacted = self._text(text, path, field, secret)
            return value if redacted == text else redacted
        if isinstance(value, Mapping):
            return self._mapping(value, path, depth, secret)
        if isinstance(value, list | tuple | set | frozenset):
            items = value if isinstance(value, list | tuple) else sorted(value, key=repr)
            return [
                self.walk(v, f"{path}[{i}]", field, depth + 1, secret) for i, v in enumerate(items)
            ]
        return value

    def _text(self, text: str, path: str, field: str | None, secret: bool) -> str:
        hits = _text_hits(text, field, secret=secret)
        seen: set[SecretKind] = set()
        for h in hits:
            if h.kind not in seen:
                seen.add(h.kind)
                self._emit(Finding(path, h.kind))
        if not hits:
            return text
        if secret:
            # In a secret-named field nothing of the value is kept: a partial redaction
            # (a connection string minus its password) could still be the secret's shape.
            return f"[redacted:{hits[0].kind.value}]"
        return _replace(text, hits)

    def _mapping(self, d: Mapping[Any, Any], path: str, depth: int, secret: bool) -> Any:
        whole = _is_gcp_account(d)
        if whole:
            self._emit(Finding(path, K.GCP_SERVICE_ACCOUNT))
        out: dict[Any, Any] = {}
        for i, (key, v) in enumerate(d.items()):
            name = key if isinstance(key, str) else str(key)
            key_hits = _text_hits(name, None)
            if key_hits:  # a secret used as a key: never let it into a path
                child = f"{path}.<key:{i}>"
                for kind in dict.fromkeys(h.kind for h in key_hits):
                    self._emit(Finding(child, kind))
                out_key: Any = _replace(name, key_hits)
                if out_key in out:
                    out_key = f"{out_key}#{i}"
                out[out_key] = self.walk(v, child, None, depth + 1, secret)
            elif isinstance(v, str) and is_digest_field(name, v):
                out[key] = v  # a digest by schema (l7.secrets.fields), not key material
            else:
                inherited = secret and not is_metadata_name(name)
                out[key] = self.walk(v, _child_path(path, name), name, depth + 1, inherited)
        return f"[redacted:{K.GCP_SERVICE_ACCOUNT.value}]" if whole else out


def scan(value: Any, path: str = DEFAULT_PATH, field: str | None = None) -> list[Finding]:
    """Every credential-shaped value (and dict key) under ``value``, in document order;
    a value holding several kinds yields one finding per kind. ``field`` names the field
    ``value`` sits in, when it is not a dict key. Raises ``RequestInvalid`` for structures
    nested deeper than ``MAX_DEPTH``."""
    findings: list[Finding] = []
    _Walker(findings.append).walk(value, path, field, 0)
    return findings


def check_payload(value: Any, path: str = DEFAULT_PATH) -> None:
    """Refuse a payload that carries a secret: ``SecretInPayload`` names the first
    finding's path and kind, never the value."""
    findings = scan(value, path)
    if findings:
        raise SecretInPayload(findings[0].path, findings[0].kind)


def redact(
    value: Any, path: str = DEFAULT_PATH, field: str | None = None
) -> tuple[Any, list[Finding]]:
    """A copy of ``value`` with each detection replaced by ``[redacted:<kind>]`` (the
    detected part of a string; a whole service-account dict; a secret dict key), and
    the findings. Tuples and sets come back as lists; ``value`` is not modified."""
    findings: list[Finding] = []
    redacted = _Walker(findings.append).walk(value, path, field, 0)
    return redacted, findings
