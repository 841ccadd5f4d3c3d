"""Canonical event bytes and the chain hash: the ledger's only crypto.

The hashed body of an event is an explicit dict of exactly these fields (see
``ledger.interface``)::

    {"event_id", "decision_id", "event_type", "schema_version",
     "policy_version", "actor", "payload", "unique_key", "timestamps": {"at"}}

serialized with RFC 8785 (JCS, the ``rfc8785`` library). The chain hash is::

    hash = sha256( prev_hash_hex_ascii || JCS(body) )     (lower-case hex)

Values that JCS cannot represent faithfully (NaN, +/-Infinity, integers outside
+/-(2**53 - 1), lone surrogates, non-string keys, objects that are not JSON)
are refused with ``InvalidEvent`` naming the field path, e.g.
``payload.items[2].score``. Verification (``ledger.verify``) never re-runs JCS:
it hashes the stored bytes.

``canonical_json`` is Layer-7's one JCS implementation (``l7.crypto`` uses it too).
It is byte-identical to ``rfc8785.dumps`` - the ledger's hashes depend on that -
and fast: a cheap type walk decides whether the C ``json`` encoder (sorted keys,
no whitespace, raw UTF-8) already produces the JCS bytes, which holds when the
value holds only exact ``dict`` / ``list`` / ``tuple`` / ``str`` / ``int`` /
``bool`` / ``None``, integers within +/-(2**53 - 1), floats only if integral
within that range (JCS writes them as the integer; the walk converts them), and
object keys without astral-plane characters (so code-point order = UTF-16 order).
Anything else - fractional floats, subclasses, astral keys, lone surrogates,
non-JSON objects - goes to ``rfc8785.dumps`` unchanged, errors included.
``tests/ledger/test_canonical_fast.py`` checks the identity with hypothesis.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import rfc8785

from ledger.errors import InvalidEvent
from ledger.interface import SCHEMA_VERSION, EventHash

__all__ = ["BODY_FIELDS", "canonical_body", "canonical_json", "chain_hash"]

BODY_FIELDS = frozenset(
    {
        "event_id",
        "decision_id",
        "event_type",
        "schema_version",
        "policy_version",
        "actor",
        "payload",
        "unique_key",
        "timestamps",
    }
)
"""The exact top-level keys of a hashed event body (unknown fields are refused)."""

_MAX_SAFE_INT = 2**53 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_BMP_MAX = "\uffff"


def _not_json(o: object) -> object:
    raise TypeError(f"{type(o).__name__} is not a JSON value")


def _make_encoder() -> Callable[[Any], str]:
    """The C encoder, made once; with the walk below its output is the JCS text (module
    doc): sorted keys, no whitespace, raw UTF-8, \\u00XX for the other control characters."""
    c_make = getattr(json.encoder, "c_make_encoder", None)
    if c_make is None:  # pragma: no cover - CPython always has the C accelerator
        enc = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
        )
        return enc.encode
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys,
    #  skipkeys, allow_nan); markers=None: the walk recurses first, so a cycle is a
    # RecursionError there.
    c_enc = c_make(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )

    def encode(value: Any) -> str:
        if type(value) is str:
            return json.encoder.encode_basestring(value)
        return "".join(c_enc(value, 0))

    return encode


_ENCODE = _make_encoder()


class _NotFast(Exception):
    """The value needs the reference encoder (or is not JSON at all)."""


# The class, not an instance: re-raising one shared instance chains every raise's
# traceback onto it (frames, locals and callers kept alive forever: the soak measured
# ~75 KB per approval), and threads would share it.
_NOT_FAST = _NotFast


def _fast(value: Any) -> Any:
    """``value`` as the C encoder must see it to write JCS bytes; _NotFast otherwise.

    Containers are copied (integral floats become ints: JCS writes 40.0 as ``40``)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return value
    if t is int:
        if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            return value
        raise _NOT_FAST
    if t is float:
        if value.is_integer() and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            return int(value)
        raise _NOT_FAST
    if t is dict:
        out = {}
        for k, v in value.items():
            # Keys: exact str without astral characters, where code-point order (the C
            # encoder's sort) and UTF-16 code-unit order (JCS) agree.
            if type(k) is not str or not (k.isascii() or max(k) <= _BMP_MAX):
                raise _NOT_FAST
            out[k] = _fast(v)
        return out
    if t is list or t is tuple:
        return [_fast(v) for v in value]
    raise _NOT_FAST


def _fast_bytes(value: Any) -> bytes | None:
    """The JCS bytes of ``value`` through the C encoder, or None to use the reference one."""
    try:
        return _ENCODE(_fast(value)).encode("utf-8")
    except (
        _NotFast,
        RecursionError,
        UnicodeEncodeError,
        ValueError,
        TypeError,
    ):  # lone surrogates fail encode()
        return None


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value, identical to ``rfc8785.dumps(value)``.

    Raises exactly what ``rfc8785.dumps`` raises (``rfc8785.CanonicalizationError``, a
    ValueError, for NaN, Infinity, integers beyond 2**53 - 1, lone surrogates, non-string
    keys and non-JSON objects)."""
    fast = _fast_bytes(value)
    return fast if fast is not None else rfc8785.dumps(value)


def _plain(value: Any, path: str) -> Any:
    """A plain-JSON copy of ``value`` (dict / list / str / int / float / bool / None).

    Raises InvalidEvent naming ``path`` for anything JCS cannot represent exactly.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidEvent(f"{path}: string is not valid Unicode (lone surrogate)") from e
        return value
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise InvalidEvent(
                f"{path}: integer {value} is outside the JSON-safe range +/-(2**53 - 1); "
                "send it as a string"
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent(f"{path}: {value!r} is not a JSON number; NaN and Infinity refused")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidEvent(f"{path}: object key {k!r} is not a string")
            out[k] = _plain(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise InvalidEvent(f"{path}: {type(value).__name__} is not a JSON value")


def canonical_body(
    *,
    event_id: str,
    decision_id: str,
    event_type: str,
    policy_version: str,
    actor: str,
    payload: Mapping[str, Any],
    unique_key: str | None,
    at: str,
    schema_version: int = SCHEMA_VERSION,
) -> bytes:
    """JCS bytes of the event body; raises InvalidEvent for a value JCS cannot carry."""
    for name, text in (
        ("event_id", event_id),
        ("decision_id", decision_id),
        ("event_type", event_type),
        ("actor", actor),
        ("at", at),
    ):
        if not isinstance(text, str) or not text:
            raise InvalidEvent(f"{name}: must be a non-empty string, got {text!r}")
    if not isinstance(policy_version, str):
        raise InvalidEvent(f"policy_version: must be a string, got {policy_version!r}")
    if unique_key is not None and (not isinstance(unique_key, str) or not unique_key):
        raise InvalidEvent(f"unique_key: must be None or a non-empty string, got {unique_key!r}")
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"payload: must be a JSON object, got {type(payload).__name__}")
    if type(payload) is dict:
        # Fast path: when the C encoder can write the body, every field is one the
        # validating copy below accepts, and the bytes are the same (module doc).
        fast = _fast_bytes(
            {
                "event_id": event_id,
                "decision_id": decision_id,
                "event_type": event_type,
                "schema_version": schema_version,
                "policy_version": policy_version,
                "actor": actor,
                "payload": payload,
                "unique_key": unique_key,
                "timestamps": {"at": at},
            }
        )
        if fast is not None:
            return fast
    body = {
        "event_id": _plain(event_id, "event_id"),
        "decision_id": _plain(decision_id, "decision_id"),
        "event_type": _plain(event_type, "event_type"),
        "schema_version": schema_version,
        "policy_version": _plain(policy_version, "policy_version"),
        "actor": _plain(actor, "actor"),
        "payload": _plain(payload, "payload"),
        "unique_key": None if unique_key is None else _plain(unique_key, "unique_key"),
        "timestamps": {"at": _plain(at, "timestamps.at")},
    }
    try:
        return canonical_json(body)
    except rfc8785.CanonicalizationError as e:  # pragma: no cover - _plain refuses first
        raise InvalidEvent(f"event body cannot be canonicalized: {e}") from e


def chain_hash(prev_hash: EventHash, body: bytes) -> EventHash:
    """sha256(prev_hash as ASCII hex || body), lower-case hex."""
    if not _HEX64.fullmatch(prev_hash):
        raise InvalidEvent(f"prev_hash: expected 64 lower-case hex digits, got {prev_hash!r}")
    return EventHash(hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest())
