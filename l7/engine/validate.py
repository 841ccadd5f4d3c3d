"""Turn a request in its JSON shape into a validated ``DecisionRequest``.

Every problem raises ``RequestInvalid`` naming the field by its dotted path.
Nothing here defaults a missing field to something permissive: a missing
environment stays empty and policy judges it as production.

The size and nesting limits of everything a caller sends live here, in one place:

    MAX_PAYLOAD_DEPTH / MAX_PAYLOAD_BYTES   a Struct payload (Decide action.payload, the
                                            action presented to the gateway, a result)
    MAX_JSON_DEPTH / MAX_JSON_BYTES         a JSON document inside a request field (an
                                            approval's payload_json) or a file the CLI reads
    MAX_MESSAGE_DEPTH                       protobuf message nesting on the wire (checked by
                                            the gRPC edge when a request does not decode)

Exceeding one raises ``PayloadTooLarge`` (reason ``payload_too_large``) or
``PayloadTooDeep`` (``payload_too_deep``), both naming the field and the limit; a NaN
or an infinity, which canonical JSON cannot encode, raises ``NumberNotFinite``
(``number_not_finite``). All three are ``RequestInvalid`` (INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from l7.domain import MAX_LEVEL, MIN_LEVEL, Action, Actor, Context, DecisionRequest, Target
from l7.errors import (
    LimitExceeded,
    NumberNotFinite,
    PayloadTooDeep,
    PayloadTooLarge,
    RequestInvalid,
)

__all__ = [
    "MAX_ID",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_MESSAGE_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "MAX_PAYLOAD_DEPTH",
    "MAX_REASON_TEXT",
    "LimitExceeded",
    "NumberNotFinite",
    "PayloadTooDeep",
    "PayloadTooLarge",
    "check_payload",
    "check_text",
    "loads_json",
    "request_from_dict",
    "struct_to_dict",
]

MAX_PAYLOAD_DEPTH = 16
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 256 * 1024
MAX_MESSAGE_DEPTH = 64
MAX_TEXT = 1024
MAX_REASON_TEXT = 4096
"""Free text a person writes (a break-glass reason, review findings)."""
MAX_ID = 256

_CLASS_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
_TOOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _child(path: str, key: str) -> str:
    """``path.key`` for a plain key; an odd key (long, dotted, control characters) is shown
    as a short quoted form so an error message stays one bounded line."""
    if _KEY_RE.match(key):
        return f"{path}.{key}"
    shown = json.dumps(key[:32])
    return f"{path}[{shown}{'...' if len(key) > 32 else ''}]"


def check_text(value: str, path: str, *, limit: int = MAX_ID, free_text: bool = False) -> str:
    """A string field within ``limit`` characters; identifiers (``free_text=False``) also
    carry no control characters. Returns the value."""
    if len(value) > limit:
        raise PayloadTooLarge(
            path, f"is {len(value)} characters long; the limit is {limit}", limit=limit
        )
    if not free_text and _CONTROL_RE.search(value):
        raise RequestInvalid(path, "must not contain control characters")
    return value


def _too_deep(path: str, limit: int) -> PayloadTooDeep:
    return PayloadTooDeep(path, f"is nested deeper than {limit} levels", limit=limit)


def _not_finite(path: str) -> NumberNotFinite:
    return NumberNotFinite(
        path, "numbers must be finite (no NaN or Infinity: canonical JSON cannot encode them)"
    )


def _obj(d: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    v = d.get(key)
    if v is None:
        raise RequestInvalid(path, "is required")
    if not isinstance(v, Mapping):
        raise RequestInvalid(path, f"must be an object, got {type(v).__name__}")
    return v


def _text(d: Mapping[str, Any], key: str, path: str, *, required: bool, limit: int = MAX_ID) -> str:
    v = d.get(key, "")
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise RequestInvalid(path, f"must be a string, got {type(v).__name__}")
    if required and not v.strip():
        raise RequestInvalid(path, "is required and must not be empty")
    if len(v) > limit:
        raise PayloadTooLarge(
            path, f"is {len(v)} characters long; the limit is {limit}", limit=limit
        )
    if _CONTROL_RE.search(v):
        raise RequestInvalid(path, "must not contain control characters")
    return v


def _check_payload(value: Any, path: str, depth: int, budget: list[int], root: str) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise _too_deep(path, MAX_PAYLOAD_DEPTH)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RequestInvalid(path, "object keys must be strings")
            budget[0] -= len(k) + 4
            _check_payload(v, _child(path, k), depth + 1, budget, root)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_payload(v, f"{path}[{i}]", depth + 1, budget, root)
    elif isinstance(value, str):
        budget[0] -= len(value.encode("utf-8", "surrogatepass")) + 2
    elif isinstance(value, bool) or value is None:
        budget[0] -= 5
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise _not_finite(path)
        budget[0] -= 24
    else:
        raise RequestInvalid(path, f"unsupported value of type {type(value).__name__}")
    if budget[0] < 0:
        raise PayloadTooLarge(
            root, f"is larger than {MAX_PAYLOAD_BYTES} bytes", limit=MAX_PAYLOAD_BYTES
        )


def check_payload(value: Mapping[str, Any], path: str) -> None:
    """Refuse a payload object deeper than MAX_PAYLOAD_DEPTH, larger than
    MAX_PAYLOAD_BYTES (as JSON, roughly) or holding a non-finite number."""
    _check_payload(value, path, 1, [MAX_PAYLOAD_BYTES], path)


def _value(v: struct_pb2.Value, path: str, depth: int) -> Any:
    if depth > MAX_PAYLOAD_DEPTH:
        raise _too_deep(path, MAX_PAYLOAD_DEPTH)
    kind = v.WhichOneof("kind")
    if kind == "struct_value":
        return {k: _value(x, _child(path, k), depth + 1) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v.list_value.values)]
    if kind == "number_value":
        if not math.isfinite(v.number_value):
            raise _not_finite(path)
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    return None  # null_value, or no kind set (proto JSON reads that as null too)


def struct_to_dict(msg: struct_pb2.Struct, path: str) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as plain JSON values (what ``json_format.MessageToDict``
    gives for a valid one), refusing NaN/Infinity, nesting beyond MAX_PAYLOAD_DEPTH and
    more than MAX_PAYLOAD_BYTES, each with the field path at fault."""
    out = {k: _value(x, _child(path, k), 2) for k, x in msg.fields.items()}
    check_payload(out, path)
    return out


def _check_json(value: Any, path: str, depth: int, limit: int) -> None:
    if depth > limit:
        raise _too_deep(path, limit)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(v, _child(path, k), depth + 1, limit)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]", depth + 1, limit)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _not_finite(path)  # 1e999 parses as inf


def loads_json(
    text: str | bytes,
    source: str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a JSON document a caller supplied (``source`` names it: a field or a file),
    within the limits. Raises ``RequestInvalid`` (or a subclass) with a one-line message;
    never ``RecursionError`` or a bare ``ValueError``."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise PayloadTooLarge(source, f"is larger than {max_bytes} bytes", limit=max_bytes)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestInvalid(source, f"is not UTF-8 text (byte {e.start})") from e
    try:
        obj = json.loads(text)  # NaN/Infinity parse as floats; _check_json names where
    except json.JSONDecodeError as e:
        raise RequestInvalid(
            source, f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from e
    except RecursionError as e:
        raise _too_deep(source, max_depth) from e
    except ValueError as e:  # an integer with more digits than int() converts
        raise RequestInvalid(source, f"is not acceptable JSON: {str(e)[:120]}") from e
    _check_json(obj, source, 1, max_depth)
    return obj


def request_from_dict(d: Mapping[str, Any]) -> DecisionRequest:
    """Validate the JSON shape of a Decide request (see proto/l7/v1/governance.proto)."""
    if not isinstance(d, Mapping):
        raise RequestInvalid("request", "must be a JSON object")
    action = _obj(d, "action", "action")
    cls = _text(action, "class", "action.class", required=True, limit=128)
    if not _CLASS_RE.match(cls):
        raise RequestInvalid(
            "action.class", f"{cls[:64]!r} is not a dotted lower-case name like 'deploy.release'"
        )
    intent = _text(action, "intent", "action.intent", required=True, limit=MAX_TEXT)
    target = _obj(action, "target", "action.target")
    t_type = _text(target, "type", "action.target.type", required=True)
    t_id = _text(target, "id", "action.target.id", required=True)
    tool = _text(action, "tool", "action.tool", required=False, limit=128)
    if tool and not _TOOL_RE.match(tool):
        raise RequestInvalid(
            "action.tool", f"{tool[:64]!r} is not a tool name (letters, digits, '.', '_', '-')"
        )
    payload = action.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise RequestInvalid("action.payload", "must be an object")
    check_payload(payload, "action.payload")

    context = _obj(d, "context", "context")
    actor = _obj(context, "actor", "context.actor")
    actor_id = _text(actor, "id", "context.actor.id", required=True)
    role = _text(actor, "role", "context.actor.role", required=False)
    level = actor.get("level")
    if isinstance(level, float) and level.is_integer():
        level = int(level)
    if not isinstance(level, int) or isinstance(level, bool) or level == 0:
        raise RequestInvalid("context.actor.level", "is required: an integer from 1 (L1) to 5 (L5)")
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise RequestInvalid(
            "context.actor.level", f"must be from {MIN_LEVEL} to {MAX_LEVEL}, got {level}"
        )
    env = _text(context, "environment", "context.environment", required=False, limit=64)
    source = _text(context, "request_source", "context.request_source", required=False)
    session = _text(context, "session", "context.session", required=False)
    idem = _text(d, "idempotency_key", "idempotency_key", required=False, limit=128)
    return DecisionRequest(
        action=Action(cls, intent, Target(t_type, t_id), dict(payload), tool),
        context=Context(Actor(actor_id, role, level), env.strip().lower(), source, session),
        idempotency_key=idem,
    )
