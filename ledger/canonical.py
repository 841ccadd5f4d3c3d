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
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import rfc8785

from ledger.errors import InvalidEvent
from ledger.interface import SCHEMA_VERSION, EventHash

__all__ = ["BODY_FIELDS", "canonical_body", "chain_hash"]

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
        return rfc8785.dumps(body)
    except rfc8785.CanonicalizationError as e:  # pragma: no cover - _plain refuses first
        raise InvalidEvent(f"event body cannot be canonicalized: {e}") from e


def chain_hash(prev_hash: EventHash, body: bytes) -> EventHash:
    """sha256(prev_hash as ASCII hex || body), lower-case hex."""
    if not _HEX64.fullmatch(prev_hash):
        raise InvalidEvent(f"prev_hash: expected 64 lower-case hex digits, got {prev_hash!r}")
    return EventHash(hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest())
