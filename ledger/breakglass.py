"""Ledger side of a break-glass read: the caller names a break-glass the ledger can prove.

A raw read under break-glass (``x-l7-breakglass: <break-glass id>``) is answered only when
the ledger's own record shows that break-glass (docs/0016-breakglass-reads-and-secret-scope.md):

    1. the stream ``<break-glass id>`` passes ``require_authority`` against the pinned tier
       keys: its ``override.breakglass`` was signed by the engine tier (not merely appended);
    2. it holds exactly one ``override.breakglass``, opened by the caller;
    3. it is open: not yet reviewed (``breakglass.reviewed`` closes it) ...
    4. ... and in its window: ``now < expires_at``;
    5. it covers every decision read: the break-glass stream itself, or a decision whose
       ``decision.created`` request has the break-glass scope's action class and target, in
       the break-glass's environment.

Anything else is ``BreakGlassRefused`` (an ``AccessDenied``) whose ``why`` says which step
failed: ``breakglass_unverifiable`` (no pinned keys), ``breakglass_unknown``,
``breakglass_unsigned``, ``breakglass_not_caller``, ``breakglass_closed``,
``breakglass_expired``, ``breakglass_out_of_scope``. This module reads the JSON shape the
engine writes (``decision.created`` ``request``, ``override.breakglass`` payload) and knows
nothing else of ``l7``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.access import BreakGlassRefused
from ledger.attestation import TierKeys, require_authority
from ledger.errors import IntegrityViolation
from ledger.interface import EventType, StoredEvent

__all__ = ["BreakGlassScope", "require_breakglass"]

_E = EventType


@dataclass(frozen=True)
class BreakGlassScope:
    """An open, in-window, engine-signed break-glass of one caller, as the ledger proved it."""

    breakglass_id: str
    opened_by: str
    expires_at: int
    action_class: str
    target_type: str
    target_id: str
    environment: str | None


def _created_request(events: Sequence[StoredEvent]) -> Mapping[str, Any] | None:
    for e in events:
        if e.event_type == _E.DECISION_CREATED.value:
            req = e.payload.get("request")
            return req if isinstance(req, Mapping) else None
    return None


def _environment(req: Mapping[str, Any] | None) -> str | None:
    ctx = req.get("context") if req is not None else None
    env = ctx.get("environment") if isinstance(ctx, Mapping) else None
    return env if isinstance(env, str) else None


def _scope_of(breakglass_id: str, events: Sequence[StoredEvent]) -> BreakGlassScope:
    overrides = [e for e in events if e.event_type == _E.OVERRIDE_BREAKGLASS.value]
    if len(overrides) != 1:
        raise BreakGlassRefused(
            "breakglass_unknown",
            breakglass_id,
            f"{breakglass_id} is not a break-glass: expected one override.breakglass in its "
            f"stream, found {len(overrides)}; name the decision id BreakGlass returned",
        )
    p = overrides[0].payload
    scope = p.get("scope")
    scope = scope if isinstance(scope, Mapping) else {}
    target = scope.get("target")
    target = target if isinstance(target, Mapping) else {}
    try:
        return BreakGlassScope(
            breakglass_id=breakglass_id,
            opened_by=str(p["opened_by"]),
            expires_at=int(p["expires_at"]),
            action_class=str(scope["action_class"]),
            target_type=str(target["type"]),
            target_id=str(target["id"]),
            environment=_environment(_created_request(events)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BreakGlassRefused(
            "breakglass_unknown",
            breakglass_id,
            f"the override.breakglass of {breakglass_id} is malformed ({type(e).__name__})",
        ) from e


def covers(scope: BreakGlassScope, decision_id: str, events: Sequence[StoredEvent]) -> bool:
    """Does ``scope`` reach decision ``decision_id`` (whose stream is ``events``)?"""
    if decision_id == scope.breakglass_id:
        return True
    req = _created_request(events)
    action = req.get("action") if req is not None else None
    if not isinstance(action, Mapping):
        return False
    target = action.get("target")
    return (
        action.get("class") == scope.action_class
        and isinstance(target, Mapping)
        and target.get("type") == scope.target_type
        and target.get("id") == scope.target_id
        and _environment(req) == scope.environment
    )


def require_breakglass(
    breakglass_id: str,
    subject: str,
    decision_ids: Sequence[str],
    *,
    read_stream: Callable[[str], Sequence[StoredEvent]],
    tier_keys: TierKeys | None,
    now: float,
) -> BreakGlassScope:
    """Steps 1-5 of the module doc for ``subject`` reading ``decision_ids``; returns the
    proven scope, or raises ``BreakGlassRefused``."""
    if tier_keys is None or len(tier_keys) == 0:
        raise BreakGlassRefused(
            "breakglass_unverifiable",
            breakglass_id,
            "this ledger service has no pinned tier keys, so it cannot prove any break-glass; "
            "start it with the deployment's trust file (l7 ledger serve --env ...)",
        )
    # 1. the break-glass stream, its authority events signed by the tier that owns them
    events = list(read_stream(breakglass_id))
    if not events:
        raise BreakGlassRefused(
            "breakglass_unknown", breakglass_id, f"no break-glass {breakglass_id} in the ledger"
        )
    try:
        require_authority(events, tier_keys)
    except IntegrityViolation as e:
        raise BreakGlassRefused(
            "breakglass_unsigned",
            breakglass_id,
            f"break-glass {breakglass_id} is not signed by the engine tier ({e.what}); "
            "it grants nothing",
        ) from e
    # 2. exactly one, the caller's own
    scope = _scope_of(breakglass_id, events)
    if scope.opened_by != subject:
        raise BreakGlassRefused(
            "breakglass_not_caller",
            breakglass_id,
            f"break-glass {breakglass_id} was opened by {scope.opened_by}, not {subject}; "
            "open your own (BreakGlass) to read under break-glass",
        )
    # 3. open: a reviewed break-glass is over
    if any(e.event_type == _E.BREAKGLASS_REVIEWED.value for e in events):
        raise BreakGlassRefused(
            "breakglass_closed",
            breakglass_id,
            f"break-glass {breakglass_id} was reviewed and is closed; open a new one",
        )
    # 4. in its window
    if now >= scope.expires_at:
        raise BreakGlassRefused(
            "breakglass_expired",
            breakglass_id,
            f"the window of break-glass {breakglass_id} closed at {scope.expires_at} "
            f"(now {int(now)}); open a new one",
        )
    # 5. it covers every decision read
    if not decision_ids:
        raise BreakGlassRefused(
            "breakglass_out_of_scope",
            breakglass_id,
            "a break-glass read names the decisions it reads (GetStream decision_id, Query "
            "decision_id filter, Export decision_ids); a read of everything is not break-glass",
        )
    for d in decision_ids:
        stream = events if d == breakglass_id else list(read_stream(d))
        if not covers(scope, d, stream):
            raise BreakGlassRefused(
                "breakglass_out_of_scope",
                breakglass_id,
                f"decision {d} is outside break-glass {breakglass_id} (scope "
                f"{scope.action_class} on {scope.target_type}/{scope.target_id} in "
                f"{scope.environment or '?'})",
            )
    return scope
