"""Explicit, time-bound, scoped delegation of an approver's level, recorded in the ledger.

A delegation lives in the delegate's stream ``delegations/<delegate>``. It never
raises anyone above the delegator's own level, never outlives ``MAX_WINDOW_S``,
and only covers scopes the delegator holds. An approval made with a delegated
level names both identities.

Delegation never launders self-approval: ``authority_chain(subject)`` is every identity
whose active delegations reach ``subject``, directly or through other delegates (any
depth, cycles included). A requester found there cannot be approved by ``subject``, and a
break-glass opener found there cannot be reviewed by it, whether or not the delegated
level is what the approval uses: the delegate acts for the delegator.
"""

from __future__ import annotations

from dataclasses import dataclass

from l7.errors import Forbidden, LedgerDegraded, RequestInvalid
from ledger import Confirmation, EventType, LedgerClient, LedgerError, NewEvent

__all__ = [
    "MAX_WINDOW_S",
    "Delegation",
    "Delegations",
    "delegation_stream",
    "scope_covers",
]

MAX_WINDOW_S = 7 * 24 * 3600
MAX_CHAIN = 64
"""Identities walked when following delegations back from one subject; more refuses
(fail closed) rather than letting a long chain hide a requester."""


def delegation_stream(delegate: str) -> str:
    return f"delegations/{delegate}"


def scope_covers(scopes: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    """True when any scope entry is '*' or one of the wanted names."""
    return "*" in scopes or any(w in scopes for w in wanted)


@dataclass(frozen=True)
class Delegation:
    delegator: str
    delegate: str
    level: int
    scopes: tuple[str, ...]
    not_before: int
    not_after: int

    def active(self, now: int) -> bool:
        return self.not_before <= now < self.not_after


class Delegations:
    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    def grant(
        self,
        *,
        delegator: str,
        delegator_level: int,
        delegator_scopes: tuple[str, ...],
        delegate: str,
        level: int,
        scopes: tuple[str, ...],
        now: int,
        not_after: int,
        reason: str,
    ) -> Confirmation:
        if not delegate:
            raise RequestInvalid("delegate", "is required")
        if delegate == delegator:
            raise RequestInvalid("delegate", "cannot be yourself")
        if not 1 <= level <= delegator_level:
            raise Forbidden(
                f"cannot delegate L{level}: {delegator} holds L{delegator_level}",
                reason="insufficient_level",
            )
        if not scopes:
            raise RequestInvalid("scopes", "name at least one domain, team or target type")
        if "*" not in delegator_scopes and not set(scopes) <= set(delegator_scopes):
            raise Forbidden(
                f"scopes {sorted(set(scopes) - set(delegator_scopes))} are outside "
                f"{delegator}'s own scopes",
                reason="out_of_scope",
            )
        if not now < not_after <= now + MAX_WINDOW_S:
            raise RequestInvalid(
                "not_after", f"must be in the future and at most {MAX_WINDOW_S}s from now"
            )
        if not reason.strip():
            raise RequestInvalid("reason", "is required")
        event = NewEvent(
            delegation_stream(delegate),
            EventType.DELEGATION_GRANTED,
            delegator,
            "",
            {
                "delegator": delegator,
                "delegator_level": delegator_level,
                "delegate": delegate,
                "level": level,
                "scopes": list(scopes),
                "not_before": now,
                "not_after": not_after,
                "reason": reason,
            },
        )
        try:
            return self.ledger.append([event])[0]
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm the delegation: {e}") from e

    def active_for(self, delegate: str, now: int) -> list[Delegation]:
        try:
            events = self.ledger.get_stream(delegation_stream(delegate))
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger could not be read: {e}") from e
        out = []
        for ev in events:
            p = ev.payload
            d = Delegation(
                delegator=p["delegator"],
                delegate=p["delegate"],
                level=int(p["level"]),
                scopes=tuple(p["scopes"]),
                not_before=int(p["not_before"]),
                not_after=int(p["not_after"]),
            )
            if d.active(now):
                out.append(d)
        return out

    def authority_chain(self, subject: str, now: int) -> dict[str, tuple[str, ...]]:
        """Every identity whose active delegation reaches ``subject`` at ``now``, directly or
        through delegates of delegates, mapped to the path from it down to ``subject``
        (``{"alice": ("alice", "bob", subject)}``). Breadth first, so each path is a
        shortest one; a cycle ends where it meets a known identity."""
        paths: dict[str, tuple[str, ...]] = {subject: (subject,)}
        queue = [subject]
        while queue:
            delegate = queue.pop(0)
            for d in self.active_for(delegate, now):
                if d.delegator in paths:
                    continue
                if len(paths) >= MAX_CHAIN:
                    raise Forbidden(
                        f"the delegations reaching {subject} involve more than {MAX_CHAIN} "
                        "identities; the chain cannot be checked for self-approval",
                        reason="delegation_chain_too_long",
                    )
                paths[d.delegator] = (d.delegator, *paths[delegate])
                queue.append(d.delegator)
        del paths[subject]
        return paths
