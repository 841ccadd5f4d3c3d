"""Turn a request in its JSON shape into a validated ``DecisionRequest``.

Every problem raises ``RequestInvalid`` naming the field by its dotted path.
Nothing here defaults a missing field to something permissive: a missing
environment stays empty and policy judges it as production.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from l7.domain import MAX_LEVEL, MIN_LEVEL, Action, Actor, Context, DecisionRequest, Target
from l7.errors import RequestInvalid

__all__ = ["MAX_PAYLOAD_BYTES", "MAX_PAYLOAD_DEPTH", "request_from_dict"]

MAX_PAYLOAD_DEPTH = 16
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_TEXT = 1024
MAX_ID = 256

_CLASS_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


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
        raise RequestInvalid(path, f"is {len(v)} characters long; the limit is {limit}")
    if _CONTROL_RE.search(v):
        raise RequestInvalid(path, "must not contain control characters")
    return v


def _check_payload(value: Any, path: str, depth: int, budget: list[int]) -> None:
    if depth > MAX_PAYLOAD_DEPTH:
        raise RequestInvalid(path, f"is nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise RequestInvalid(path, "object keys must be strings")
            budget[0] -= len(k) + 4
            _check_payload(v, f"{path}.{k}", depth + 1, budget)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_payload(v, f"{path}[{i}]", depth + 1, budget)
    elif isinstance(value, str):
        budget[0] -= len(value.encode("utf-8", "surrogatepass")) + 2
    elif isinstance(value, bool) or value is None:
        budget[0] -= 5
    elif isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestInvalid(path, "numbers must be finite (no NaN or Infinity)")
        budget[0] -= 24
    else:
        raise RequestInvalid(path, f"unsupported value of type {type(value).__name__}")
    if budget[0] < 0:
        raise RequestInvalid("action.payload", f"is larger than {MAX_PAYLOAD_BYTES} bytes")


def request_from_dict(d: Mapping[str, Any]) -> DecisionRequest:
    """Validate the JSON shape of a Decide request (see proto/l7/v1/governance.proto)."""
    if not isinstance(d, Mapping):
        raise RequestInvalid("request", "must be a JSON object")
    action = _obj(d, "action", "action")
    cls = _text(action, "class", "action.class", required=True, limit=128)
    if not _CLASS_RE.match(cls):
        raise RequestInvalid(
            "action.class", f"{cls!r} is not a dotted lower-case name like 'deploy.release'"
        )
    intent = _text(action, "intent", "action.intent", required=True, limit=MAX_TEXT)
    target = _obj(action, "target", "action.target")
    t_type = _text(target, "type", "action.target.type", required=True)
    t_id = _text(target, "id", "action.target.id", required=True)
    payload = action.get("payload") or {}
    if not isinstance(payload, Mapping):
        raise RequestInvalid("action.payload", "must be an object")
    _check_payload(payload, "action.payload", 1, [MAX_PAYLOAD_BYTES])

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
        action=Action(cls, intent, Target(t_type, t_id), dict(payload)),
        context=Context(Actor(actor_id, role, level), env.strip().lower(), source, session),
        idempotency_key=idem,
    )
