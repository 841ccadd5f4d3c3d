"""Which secret references the gateway resolves for an execution, and the record of each.

The gateway resolves a reference only when all of these hold (docs/0016):

    1. scope     the reference lies where policy let the decision's actor reach:
                 a decision judged by policy resolves exactly the references policy judged
                 (its own payload, gate ``secret_refs_allowed``); a break-glass resolves
                 only under the prefixes its signed ``override.breakglass`` records
                 (``secret_scope``: the opener's roles' prefixes, widened only where
                 ``breakglass.secret_ref_prefixes`` in policy says) -> else
                 ``GrantRefused(secret_out_of_scope)``
    2. identity  the OpenBao token presented with the call belongs to the decision's actor
                 (``SecretStore.token_subject``) -> else ``Forbidden(secret_forbidden)``
    3. capability the actor's own token may read it (``SecretStore.check_access``) -> else
                 ``Forbidden(secret_forbidden)``

Every resolution, granted or refused, is recorded before any value leaves the gateway, as
``ledger.accessed`` in the decision's stream through the gateway's signed ledger::

    {"mode": "secret_resolve", "subject": <actor>, "breakglass": <bool>,
     "reason": <"" or the refusal reason>,
     "what": {"ref": <reference>, "decision": "allowed" | "refused", "widened": <bool>,
              "gateway": <gateway id>}}

The reference is a pointer, never a value; the value is never recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from l7.domain import Decision
from l7.errors import GrantRefused
from l7.secrets.interface import SecretRef
from l7.secrets.refs import secret_refs
from ledger import EventType, NewEvent, StoredEvent

__all__ = [
    "ACTOR_TOKEN_HEADER",
    "RESOLVED_PLACEHOLDER",
    "RESOLVE_MODE",
    "SecretScope",
    "resolution_event",
    "resolved_refs",
    "scope_of",
    "scrub",
]

RESOLVE_MODE = "secret_resolve"
RESOLVED_PLACEHOLDER = "[redacted:resolved_secret]"
ACTOR_TOKEN_HEADER = "x-l7-actor-bao-token"  # noqa: S105 (a header name)
"""gRPC metadata carrying the actor's own OpenBao token to Authorize."""


def _path(ref: SecretRef) -> str:
    return f"{ref.mount}/{ref.path}"


@dataclass(frozen=True)
class SecretScope:
    """Where one decision may resolve references (see the module doc, step 1)."""

    breakglass: bool
    judged: frozenset[str] = frozenset()
    """For a decision policy judged: the canonical references it judged."""
    prefixes: tuple[str, ...] = ()
    """For a break-glass: every prefix its signed override.breakglass allows ..."""
    widened: tuple[str, ...] = ()
    """... of which these are beyond the opener's roles' own (break-glass widening)."""

    def check(self, ref: SecretRef) -> bool:
        """True when ``ref`` is reachable only through a widened prefix; raises
        ``GrantRefused(secret_out_of_scope)`` when it is out of reach."""
        if not self.breakglass:
            if str(ref) in self.judged:
                return False
            raise GrantRefused(
                f"{ref} is not a reference policy judged for this decision; only those resolve",
                reason="secret_out_of_scope",
            )
        path = _path(ref)
        own = [p for p in self.prefixes if p not in self.widened and path.startswith(p)]
        if own:
            return False
        if any(path.startswith(p) for p in self.widened):
            return True
        raise GrantRefused(
            f"{ref} is outside what policy lets this break-glass resolve (prefixes "
            f"{list(self.prefixes) or 'none'}); break-glass widens secret scope only where "
            "policy data breakglass.secret_ref_prefixes says",
            reason="secret_out_of_scope",
        )


def scope_of(d: Decision, events: Sequence[StoredEvent]) -> SecretScope:
    """The scope of decision ``d`` (its stream ``events``, read through the signed ledger,
    so the override.breakglass is the engine's)."""
    if d.breakglass is None:
        return SecretScope(
            breakglass=False,
            judged=frozenset(str(r) for r in secret_refs(dict(d.request.action.payload))),
        )
    overrides = [e for e in events if e.event_type == EventType.OVERRIDE_BREAKGLASS.value]
    recorded: Any = overrides[-1].payload.get("secret_scope") if overrides else None
    prefixes = _strings(recorded, "prefixes")
    widened = _strings(recorded, "widened")
    return SecretScope(breakglass=True, prefixes=prefixes, widened=widened)


def _strings(recorded: object, key: str) -> tuple[str, ...]:
    """A list of non-empty strings from the recorded scope; anything else is nothing
    (fail closed: a break-glass that recorded no scope resolves no reference)."""
    value = recorded.get(key) if isinstance(recorded, Mapping) else None
    if not isinstance(value, list):
        return ()
    return tuple(p for p in value if isinstance(p, str) and p)


def resolution_event(
    d: Decision,
    ref: SecretRef,
    *,
    allowed: bool,
    reason: str,
    widened: bool,
    gateway_id: str,
) -> NewEvent:
    """The record of one resolution (module doc): the reference, the outcome, the actor."""
    actor = d.request.context.actor.id
    return NewEvent(
        d.decision_id,
        EventType.LEDGER_ACCESSED,
        gateway_id,
        d.policy_version,
        {
            "mode": RESOLVE_MODE,
            "subject": actor,
            "breakglass": d.breakglass is not None,
            "reason": reason,
            "what": {
                "ref": str(ref),
                "decision": "allowed" if allowed else "refused",
                "widened": widened,
                "gateway": gateway_id,
            },
        },
    )


def resolved_refs(events: Sequence[StoredEvent]) -> list[SecretRef]:
    """The references the gateway recorded as resolved in a decision's stream."""
    out: list[SecretRef] = []
    for e in events:
        p = e.payload
        what = p.get("what")
        if (
            e.event_type == EventType.LEDGER_ACCESSED.value
            and p.get("mode") == RESOLVE_MODE
            and isinstance(what, Mapping)
            and what.get("decision") == "allowed"
        ):
            ref = SecretRef.parse(what.get("ref"), field="ledger.accessed.what.ref")
            if ref not in out:
                out.append(ref)
    return out


def scrub(value: Any, secrets: set[str]) -> Any:
    """A copy of ``value`` with every occurrence of each of ``secrets`` (in strings and in
    keys, at every depth) replaced by ``RESOLVED_PLACEHOLDER``."""
    needles = sorted((s for s in secrets if s), key=len, reverse=True)

    def text(t: str) -> str:
        for n in needles:
            t = t.replace(n, RESOLVED_PLACEHOLDER)
        return t

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, Mapping):
            return {text(str(k)): walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        return v

    return walk(value)
