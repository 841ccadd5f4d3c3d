"""Who may read which decision through the Governance API, and the record each read leaves.

With identity on, every read (GetDecision, ListPending, ListBreakGlass, GetGrant,
GetRestriction) carries a verified token, and a decision is shown to a reader on one of
these grounds (the first that holds; ``Basis``)::

    basis       who                                                 payload (reads.payload_to)
    ----------  --------------------------------------------------  --------------------------
    requester   the actor that requested it (break-glass: opener)   "requester" in payload_to
    approver    could approve it by the rules approvals use: not    "approver" in payload_to
                the requester nor holding its delegation (any
                depth), in scope (own claims, or a delegation that
                raises the level), level >= the lowest clause in
                force; or has already signed it
    reviewer    a break-glass decision: L4+, not the opener nor     as approver
                holding its delegation (who could review it)
    auditor     a role in reads.auditor_roles: any decision         no
    (none)      anyone else: refused, PERMISSION_DENIED read_denied

    A role in reads.payload_roles also gets the raw payload of what it may see; it grants
    no visibility by itself. Everyone else gets the summary: the payload replaced by its
    sha256. Policy data (``data.l7.config.reads``) names the roles; a missing or malformed
    section gives nobody the auditor view or a raw payload (fail closed).

Each read of a decision the reader did not request is recorded BEFORE the answer: one
``ledger.accessed`` event in the reader's access stream ``ledger-access/<subject>`` (the
stream the ledger service records its own raw reads in), naming every decision shown, the
basis and whether the payload was included. No record, no answer (``LedgerDegraded``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from l7.authority.delegation import Delegation, scope_covers
from l7.crypto import canonical, sha256_hex
from l7.domain import MAX_LEVEL, Decision
from l7.engine.authority import AuthorityService, approval_scopes
from l7.engine.breakglass import REVIEWER_MIN_LEVEL
from l7.errors import Forbidden, LedgerDegraded
from l7.identity import Identity
from ledger import EventType, LedgerError, NewEvent
from ledger.access import ACCESS_STREAM_PREFIX

__all__ = ["Basis", "ReadAccess", "ReadRules", "ReadView", "Standing", "payload_digest"]


class Basis(str, Enum):
    """Why a reader may see a decision."""

    REQUESTER = "requester"
    APPROVER = "approver"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class ReadRules:
    """``data.l7.config.reads`` as the engine applies it."""

    auditor_roles: frozenset[str] = frozenset()
    payload_roles: frozenset[str] = frozenset()
    payload_to: frozenset[Basis] = frozenset()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ReadRules:
        """Anything missing or malformed counts as empty: no auditor view, no raw payload."""

        def names(key: str) -> frozenset[str]:
            value = cfg.get(key)
            if not isinstance(value, list):
                return frozenset()
            return frozenset(x for x in value if isinstance(x, str) and x)

        relations = names("payload_to")
        return cls(
            auditor_roles=names("auditor_roles"),
            payload_roles=names("payload_roles"),
            payload_to=frozenset(b for b in (Basis.REQUESTER, Basis.APPROVER) if b in relations),
        )


@dataclass(frozen=True)
class Standing:
    """What one reader brings to every decision of one call, computed once per call."""

    identity: Identity
    rules: ReadRules
    now: int
    delegations: tuple[Delegation, ...]
    """Active delegations TO the reader (they may raise its level inside their scope)."""
    delegators: frozenset[str] | None
    """Everyone whose delegation reaches the reader, at any depth (None: the chain could
    not be checked, so the reader approves nothing and sees nothing as an approver)."""

    @property
    def auditor(self) -> bool:
        return not self.rules.auditor_roles.isdisjoint(self.identity.roles)


@dataclass(frozen=True)
class ReadView:
    decision: Decision
    basis: Basis
    payload: bool
    """True: the raw action payload is shown; False: the summary (its digest only)."""


def payload_digest(d: Decision) -> str:
    return "sha256:" + sha256_hex(canonical(dict(d.request.action.payload)))


class ReadAccess:
    """The read rules of one engine (policy from its bundle, delegations from its ledger)."""

    def __init__(self, authority: AuthorityService) -> None:
        self.authority = authority
        self.engine = authority.engine

    def standing(self, who: Identity) -> Standing:
        now = int(self.engine.clock().timestamp())
        delegations = self.authority.delegations
        try:
            delegators: frozenset[str] | None = frozenset(
                delegations.authority_chain(who.subject, now)
            )
        except Forbidden:  # a chain too long to check: no approver view (fail closed)
            delegators = None
        return Standing(
            identity=who,
            rules=ReadRules.from_config(self.engine.config_section("reads")),
            now=now,
            delegations=tuple(delegations.active_for(who.subject, now)),
            delegators=delegators,
        )

    # -- the rules ---------------------------------------------------------------------------

    @staticmethod
    def could_approve(st: Standing, d: Decision) -> bool:
        """The approval rules (``AuthorityService._submit`` steps 1, 2 and 4) without a
        signature: who could sign this decision, or already did."""
        who, requester = st.identity, d.request.context.actor.id
        if who.subject == requester or st.delegators is None or requester in st.delegators:
            return False
        if any(a.approver == who.subject for a in d.authority_state.approvals):
            return True
        wanted = approval_scopes(d)
        level, delegated = who.level, False
        for dl in st.delegations:
            if scope_covers(dl.scopes, wanted) and dl.level > level:
                level, delegated = dl.level, True
        if not delegated and not scope_covers(who.scopes, wanted):
            return False
        floor = min((c.min_level for c in d.authority_state.clauses), default=MAX_LEVEL)
        return level >= floor

    @staticmethod
    def could_review(st: Standing, d: Decision) -> bool:
        """A break-glass decision: a different L4/L5, not acting through the opener."""
        bg = d.breakglass
        if bg is None or st.delegators is None:
            return False
        who = st.identity
        return (
            who.level >= REVIEWER_MIN_LEVEL
            and who.subject != bg.opened_by
            and bg.opened_by not in st.delegators
        )

    def view(self, st: Standing, d: Decision) -> ReadView | None:
        """What ``st``'s reader may see of ``d`` (None: nothing)."""
        if d.request.context.actor.id == st.identity.subject:
            basis = Basis.REQUESTER
        elif self.could_review(st, d):
            basis = Basis.REVIEWER
        elif self.could_approve(st, d):
            basis = Basis.APPROVER
        elif st.auditor:
            basis = Basis.AUDITOR
        else:
            return None
        relation = Basis.APPROVER if basis is Basis.REVIEWER else basis
        payload = relation in st.rules.payload_to or not st.rules.payload_roles.isdisjoint(
            st.identity.roles
        )
        return ReadView(d, basis, payload)

    def require(self, st: Standing, d: Decision) -> ReadView:
        v = self.view(st, d)
        if v is None:
            raise Forbidden(
                f"{st.identity.subject} may not read decision {d.decision_id}: it is not the "
                "requester, could not approve it (scope and level) and holds no auditor role",
                reason="read_denied",
            )
        return v

    # -- the record --------------------------------------------------------------------------

    def record(self, who: Identity, rpc: str, views: Sequence[ReadView]) -> None:
        """Append one ``ledger.accessed`` naming every decision in ``views`` the reader did not
        request; raise LedgerDegraded if the ledger does not confirm (then answer nothing)."""
        others = [v for v in views if v.basis is not Basis.REQUESTER]
        if not others:
            return
        event = NewEvent(
            ACCESS_STREAM_PREFIX + who.subject,
            EventType.LEDGER_ACCESSED,
            who.subject,
            "",
            {
                "mode": "raw" if any(v.payload for v in others) else "summary",
                "subject": who.subject,
                "roles": sorted(who.roles),
                "rpc": rpc,
                "what": {
                    "decisions": [
                        {
                            "decision_id": v.decision.decision_id,
                            "basis": v.basis.value,
                            "payload": v.payload,
                        }
                        for v in others
                    ]
                },
            },
        )
        try:
            self.engine.ledger.append([event])
        except LedgerError as e:
            raise LedgerDegraded(
                f"the read could not be recorded in the ledger ({e}); nothing is shown"
            ) from e
