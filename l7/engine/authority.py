"""Boundary A, second half: authority over pending decisions.

    approve / reject  verify identity (token) -> refresh (expiry, escalation, policy
                      revision) -> rules -> key + signature -> ledger batch
                      (approval event [+ enforcement.result when quorum holds or on reject])
    cancel            requester or L4+; pending or authorized-not-executed only
    sweep             time-based transitions for the pending decisions that are due

The pending index and the refused-signature budget are read from the ledger
(``l7.engine.shared_state``), so every engine replica sees the same pending list and
spends the same anomaly budget; the sweeper reads what changed since its cursor and
re-reads only the decisions whose deadline has come or that another replica changed.

Every rule that refuses raises a typed error with a machine-readable reason; the
refusals that signal misuse (self-approval, out-of-scope) are also recorded as
``anomaly.detected`` in the decision's stream. Nothing is ever approved by
timeout: time only escalates (raises the requirement) or expires (denies).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from l7.authority.anomaly import AnomalyDetector, anomaly_event
from l7.authority.approval import SignedApproval, Verdict, payload_hash, verify_approval
from l7.authority.delegation import Delegations, scope_covers
from l7.authority.keys import KeyRegistry
from l7.authority.quorum import Approver, evaluate_quorum
from l7.domain import DEFAULT_LIFECYCLE, MAX_LEVEL, Band, Clause, Decision, Outcome, Status
from l7.engine.engine import Engine, _KeyLocks
from l7.engine.events import (
    apply_enforcement,
    clauses_json,
    enforcement_payload,
    evaluation_events,
    policy_input_record,
)
from l7.engine.shared_state import LedgerRefusals, PendingIndex
from l7.errors import (
    ApprovalInvalid,
    DecisionNotFound,
    Forbidden,
    GrantRefused,
    IllegalTransition,
    LedgerDegraded,
)
from l7.identity import Identity
from ledger import DuplicateKey, EventType, LedgerError, NewEvent

__all__ = [
    "AUTHORIZATION_EXPIRED",
    "POLICY_CHANGED",
    "AuthorityService",
    "approval_scopes",
    "requirement_progress",
]

log = logging.getLogger(__name__)
_E = EventType
CANCEL_MIN_LEVEL = 4
_BAND_ORDER = {Band.CRITICAL: 0, Band.HIGH: 1, Band.MEDIUM: 2, Band.LOW: 3}
AUTHORIZATION_EXPIRED = "authorization_expired"
POLICY_CHANGED = "policy_changed"


def _authorization_lapsed(d: Decision, now: int) -> bool:
    """An authorized decision nobody has started executing, past its execution window
    (or with none recorded). Break-glass keeps its own window (its grant refuses)."""
    return (
        d.status is Status.AUTHORIZED
        and d.breakglass is None
        and d.execution_id is None
        and (d.execute_by is None or now >= d.execute_by)
    )


def _authorization_expired(d: Decision, now: int) -> NewEvent:
    return NewEvent(
        d.decision_id,
        _E.DECISION_EXPIRED,
        "l7-engine",
        d.policy_version,
        {
            "status": Status.EXPIRED.value,
            "outcome": Outcome.DENY.value,
            "reason_code": AUTHORIZATION_EXPIRED,
            "reasons": [
                f"authorized but not executed before {d.execute_by} (policy's execute_within "
                "for its class and band); an old authorization never runs"
            ],
            "expired_at": now,
        },
    )


@dataclass(frozen=True)
class ClauseView:
    clause: Clause
    approvers: tuple[str, ...]
    missing: int


def requirement_progress(decision: Decision) -> list[ClauseView]:
    """Which approvers fill which clause, and how many are still missing."""
    st = decision.authority_state
    approvers = [
        Approver(a.approver, a.level, a.roles, a.team)
        for a in st.approvals
        if a.verdict == Verdict.APPROVE.value
    ]
    q = evaluate_quorum(st.clauses, approvers)
    return [
        ClauseView(c, tuple(q.assignment.get(c.id, ())), int(q.missing.get(c.id, 0)))
        for c in st.clauses
    ]


def _wanted_scopes(decision: Decision) -> tuple[str, ...]:
    a = decision.request.action
    domain = a.action_class.split(".", 1)[0]
    return (a.action_class, domain, a.target.type, f"{a.target.type}:{a.target.id}")


approval_scopes = _wanted_scopes
"""The scopes an approver's claims (or delegation) must cover to act on a decision."""


class AuthorityService:
    def __init__(self, engine: Engine, *, max_approval_ttl_s: int = 3600) -> None:
        self.engine = engine
        self.ledger = engine.ledger
        self.keys = KeyRegistry(engine.ledger)
        self.delegations = Delegations(engine.ledger)
        self.max_approval_ttl_s = max_approval_ttl_s
        self._locks = _KeyLocks()
        self.anomalies = AnomalyDetector(
            self._anomaly_config, refusals=LedgerRefusals(engine.ledger)
        )
        self.index = PendingIndex(engine.ledger)

    def _anomaly_config(self) -> Mapping[str, Any]:
        cfg = self.engine.config_section("anomalies")
        return cfg if isinstance(cfg, Mapping) else {}

    # -- time --------------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.engine.clock().timestamp())

    # -- the pending index -------------------------------------------------------------------

    def track(self, decision: Decision) -> Decision:
        """Note what this engine just folded (the ledger stays the authority: ``sync``)."""
        if decision.status is Status.PENDING_AUTHORITY:
            st = decision.authority_state
            self.index.track(decision.decision_id, min(st.escalate_at, st.expires_at))
        else:
            self.index.track(decision.decision_id, None)
        return decision

    def pending(self, *, limit: int = 100) -> list[Decision]:
        """Pending decisions, most urgent first: band (critical first), then oldest."""
        self.index.sync()
        out: list[Decision] = []
        for i in self.index.candidates():
            try:
                d = self.refresh(i)
            except DecisionNotFound:  # a status event in a stream that holds no decision
                log.warning("pending index: %s names no decision; dropped", i)
                self.index.track(i, None)
                continue
            if d.status is Status.PENDING_AUTHORITY:
                out.append(d)

        def key(d: Decision) -> tuple[int, str]:
            band = d.judgement.risk.band if d.judgement else Band.CRITICAL
            return (_BAND_ORDER[band], d.created_at)

        return sorted(out, key=key)[: max(1, limit)]

    def sweep(self) -> int:
        """Apply escalation and expiry where due; returns how many decisions changed.

        Reads the ledger from the index's cursor, then only the streams of decisions whose
        deadline has come or that changed since (not every pending stream)."""
        self.index.sync()
        changed = 0
        for i in self.index.due(self._now()):
            try:
                with self._locks.hold(i):
                    if self._advance(i, self._now())[1]:
                        changed += 1
            except DecisionNotFound:
                log.warning("pending index: %s names no decision; dropped", i)
                self.index.track(i, None)
        return changed

    # -- transitions by time -----------------------------------------------------------------

    def _append(self, events: list[NewEvent]) -> None:
        try:
            self.ledger.append(events)
        except DuplicateKey:
            raise
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm: {e}; nothing changed") from e

    def refresh(self, decision_id: str) -> Decision:
        """Record any expiry or escalation that is due, then return the decision."""
        with self._locks.hold(decision_id):
            return self._refresh(decision_id, self._now())

    def _refresh(self, decision_id: str, now: int) -> Decision:
        return self._advance(decision_id, now)[0]

    def _advance(self, decision_id: str, now: int) -> tuple[Decision, bool]:
        """The decision after recording any expiry or escalation due at ``now``, and
        whether anything was recorded."""
        d = self.engine.get_decision(decision_id)
        if _authorization_lapsed(d, now):
            self._append([_authorization_expired(d, now)])
            return self.track(self.engine.get_decision(decision_id)), True
        if d.status is not Status.PENDING_AUTHORITY:
            return self.track(d), False
        st, version = d.authority_state, d.policy_version
        events: list[NewEvent] = []
        if now >= st.expires_at:
            events.append(
                NewEvent(
                    decision_id,
                    _E.DECISION_EXPIRED,
                    "l7-engine",
                    version,
                    {
                        "status": Status.EXPIRED.value,
                        "outcome": Outcome.DENY.value,
                        "reason_code": "expired",
                        "reasons": [
                            f"no quorum before the decision expired at {st.expires_at}; "
                            "silence is never consent"
                        ],
                        "expired_at": now,
                    },
                )
            )
        elif now >= st.escalate_at and d.judgement is not None:
            window = d.judgement.lifecycle.approval_window_s
            clauses, escalations, at = st.clauses, st.escalations, st.escalate_at
            while now >= at:  # one step per lapsed window, never past L5
                raised = tuple(
                    Clause(c.id, min(MAX_LEVEL, c.min_level + 1), c.count) for c in clauses
                )
                escalations, at = escalations + 1, at + window
                events.append(
                    NewEvent(
                        decision_id,
                        _E.AUTHORITY_ESCALATED,
                        "l7-engine",
                        version,
                        {
                            "from_clauses": clauses_json(clauses),
                            "clauses": clauses_json(raised),
                            "escalations": escalations,
                            "escalate_at": at,
                            "reason": "approval window lapsed without quorum",
                        },
                    )
                )
                clauses = raised
        if events:
            self._append(events)
            d = self.engine.get_decision(decision_id)
        return self.track(d), bool(events)

    def _rejudge(self, d: Decision, now: int) -> Decision:
        """If the active policy revision changed, re-judge: earlier approvals are void.

        For a pending decision before an approval counts; for an authorized, unexecuted one
        before a grant is issued (``grantable``): it stays authorized only if the active
        revision's effective outcome is ALLOW by itself (approvals gathered under the old
        revision are void), else it goes back to pending or is denied, recorded."""
        # The same input Decide gives policy (secret reference metadata included), recorded
        # the same way, and the same enforcement mode applied: replay and modes hold here too.
        policy_input = self.engine.policy_input(d.request)
        judgement = self.engine.policy.evaluate(policy_input)
        if d.judgement is not None and judgement.policy_version == d.judgement.policy_version:
            return d
        voided = len(d.authority_state.approvals)
        actor = d.request.context.actor.id
        events = evaluation_events(
            d.decision_id,
            actor,
            judgement,
            now=now,
            extra={
                "reevaluated": True,
                "previous_policy_version": d.policy_version,
                "voided_approvals": voided,
                "policy_input": policy_input_record(policy_input),
            },
        )
        enforcement = apply_enforcement(judgement)
        payload = enforcement_payload(
            enforcement,
            POLICY_CHANGED,
            [
                f"policy revision changed from {d.policy_version[:12]} to "
                f"{judgement.policy_version[:12]}; {voided} earlier approvals are void",
                *judgement.reasons,
            ],
            judgement=judgement,
            now=now,
        )
        window = payload.get("execute_by")
        if isinstance(window, int) and d.execute_by is not None:
            # Re-affirmed under a new revision: the window never grows by a policy change.
            payload["execute_by"] = min(window, d.execute_by)
        events.append(
            NewEvent(d.decision_id, _E.ENFORCEMENT_RESULT, actor, judgement.policy_version, payload)
        )
        self._append(events)
        return self.track(self.engine.get_decision(d.decision_id))

    # -- grants ------------------------------------------------------------------------------

    def grantable(self, decision_id: str) -> Decision:
        """The decision as it may be granted now, after recording what time and policy did
        to it (docs/0013). Raises GrantRefused:

        ``authorization_expired``  the execution window closed (``decision.expired`` is
                                   recorded the first time this is seen)
        ``policy_changed``         the active revision is not the one that authorized it,
                                   and it does not ALLOW it by itself: the decision was
                                   moved back to pending (or denied), recorded

        Anything else not grantable (pending, denied, executed) is left to the issuer."""
        with self._locks.hold(decision_id):
            now = self._now()
            d = self._advance(decision_id, now)[0]
            if d.status is Status.EXPIRED and d.reason_code == AUTHORIZATION_EXPIRED:
                raise GrantRefused(
                    f"the authorization of {decision_id} expired at {d.execute_by}; ask again "
                    "(Decide) for a fresh judgement",
                    reason=AUTHORIZATION_EXPIRED,
                )
            if d.status is Status.AUTHORIZED and d.breakglass is None and d.execution_id is None:
                d = self._rejudge(d, now)  # a no-op unless the active revision changed
                if d.status is Status.AUTHORIZED:
                    return d
            if d.reason_code == POLICY_CHANGED and d.status in (
                Status.PENDING_AUTHORITY,
                Status.DENIED,
            ):
                raise GrantRefused(
                    f"decision {decision_id} was authorized under another policy revision; "
                    f"under the active one ({d.policy_version[:12]}) it is {d.status.value} "
                    f"({d.outcome.value}): {'; '.join(d.reasons[1:3]) or '-'}",
                    reason=POLICY_CHANGED,
                )
            return d

    # -- approvals ---------------------------------------------------------------------------

    def _anomaly(self, d: Decision, kind: str, subject: str, detail: str) -> None:
        try:
            self.ledger.append(
                [anomaly_event(d.decision_id, d.policy_version, kind, subject, detail)]
            )
        except LedgerError:
            log.exception("could not record anomaly %s for %s", kind, d.decision_id)

    def submit(self, identity: Identity, decision_id: str, signed: SignedApproval) -> Decision:
        """Verify and record a signed approval or rejection by ``identity``."""
        verdict = Verdict(signed.payload.verdict)
        self.engine.rate_limiter.check("approve_per_approver", identity.subject)
        with self._locks.hold(decision_id):
            now = self._now()
            d = self._refresh(decision_id, now)
            wanted = "approved" if verdict is Verdict.APPROVE else "rejected"
            if d.status is not Status.PENDING_AUTHORITY:
                raise IllegalTransition(decision_id, d.status.value, wanted)
            d = self._rejudge(d, now)
            if d.status is not Status.PENDING_AUTHORITY:
                raise IllegalTransition(decision_id, d.status.value, wanted)
            return self._submit(identity, d, signed, verdict, now)

    def _submit(
        self, identity: Identity, d: Decision, signed: SignedApproval, verdict: Verdict, now: int
    ) -> Decision:
        st, req = d.authority_state, d.request
        subject = identity.subject
        # 1. The requester never approves its own decision.
        if subject == req.context.actor.id:
            self._anomaly(d, "self_approval", subject, "the requester tried to approve")
            raise Forbidden(
                f"{subject} requested decision {d.decision_id} and cannot approve it",
                reason="self_approval",
            )
        # ... nor through anyone it delegated to, at any depth: the delegate acts for it.
        chain = self.delegations.authority_chain(subject, now).get(req.context.actor.id)
        if chain is not None:
            via = " -> ".join(chain)
            self._anomaly(
                d, "self_approval", subject, f"approver holds the requester's delegation: {via}"
            )
            raise Forbidden(
                f"{subject} holds authority delegated by the requester "
                f"{req.context.actor.id} ({via}) and cannot approve its decision "
                f"{d.decision_id}",
                reason="self_approval",
            )
        # 2. Scope (own or delegated), and the level it brings.
        wanted = _wanted_scopes(d)
        level, delegated_from = identity.level, None
        for dl in self.delegations.active_for(subject, now):
            if scope_covers(dl.scopes, wanted) and dl.level > level:
                level, delegated_from = dl.level, dl.delegator
        if delegated_from is None and not scope_covers(identity.scopes, wanted):
            self._anomaly(d, "out_of_scope", subject, f"scopes {list(identity.scopes)}")
            raise Forbidden(
                f"{subject} may approve in {list(identity.scopes) or 'no scope'}, not in "
                f"{list(wanted[:3])}",
                reason="out_of_scope",
            )
        # 3. Key and signature: the token's subject signed exactly this decision and intent.
        key = self.keys.lookup(subject, signed.payload.key_id)
        if key.method != signed.method:
            raise ApprovalInvalid(
                f"key {key.key_id!r} is registered for {key.method}, signature says "
                f"{signed.method}",
                reason="signature_invalid",
            )
        try:
            payload = verify_approval(
                signed,
                public_key_raw=key.public_key,
                expected_decision_id=d.decision_id,
                expected_intent_hash=d.intent_hash,
                expected_approver=subject,
                now=now,
                max_ttl_s=self.max_approval_ttl_s,
            )
        except ApprovalInvalid as e:
            if e.reason == "signature_invalid":
                found = self.anomalies.bad_signature(
                    subject, now, decision_id=d.decision_id, policy_version=d.policy_version
                )
                for kind, detail in found:
                    self._anomaly(d, kind, subject, detail)
            raise
        # 4. Level: must qualify for at least one clause of the requirement in force.
        floor = min((c.min_level for c in st.clauses), default=MAX_LEVEL)
        if level < floor:
            raise Forbidden(
                f"{subject} is L{level}; this decision needs L{floor} or above",
                reason="insufficient_level",
            )
        # 5. One identity counts once (a delegator and its delegate are one authority).
        seen = {a.approver for a in st.approvals} | {
            a.delegated_from for a in st.approvals if a.delegated_from
        }
        if subject in seen or (delegated_from is not None and delegated_from in seen):
            raise Forbidden(
                f"{subject} (or the authority delegated to it) already signed this decision",
                reason="duplicate_approver",
            )
        # 6. High and critical approvals carry a structured rationale.
        life = d.judgement.lifecycle if d.judgement else None
        if (
            verdict is Verdict.APPROVE
            and life
            and life.rationale_required
            and not payload.rationale
        ):
            raise ApprovalInvalid(
                f"band {d.judgement.risk.band.value if d.judgement else '?'} needs a "
                "structured rationale with the approval",
                reason="rationale_required",
            )
        record: dict[str, Any] = {
            "approver": subject,
            "level": level,
            "roles": list(identity.roles),
            "team": identity.team,
            "verdict": verdict.value,
            "method": signed.method,
            "key_id": key.key_id,
            "signature_ref": signed.signature,
            "payload_sha256": payload_hash(payload),
            "nonce": payload.nonce,
            "issued_at": payload.issued_at,
            "expires_at": payload.expires_at,
            "rationale": payload.rationale.to_dict() if payload.rationale else None,
            "delegated_from": delegated_from,
        }
        kind = _E.APPROVAL_ADDED if verdict is Verdict.APPROVE else _E.APPROVAL_REJECTED
        events = [
            NewEvent(
                d.decision_id,
                kind,
                subject,
                d.policy_version,
                record,
                unique_key=f"nonce:{payload.nonce}",
            )
        ]
        if verdict is Verdict.REJECT:
            events.append(
                self._result(
                    d, subject, Status.DENIED, "rejected", [f"rejected by {subject} (L{level})"]
                )
            )
        else:
            requested = int(datetime.fromisoformat(d.created_at.replace("Z", "+00:00")).timestamp())
            found = self.anomalies.approval(subject, req.context.actor.id, requested, now)
            blocked = [k for k, _ in found if k in self.anomalies.blocking()]
            if blocked:
                for kind, detail in found:
                    self._anomaly(d, kind, subject, detail)
                raise Forbidden(
                    f"approval by {subject} refused: policy blocks anomalies {blocked}",
                    reason="anomaly_blocked",
                )
            events.extend(
                NewEvent(
                    d.decision_id,
                    _E.ANOMALY_DETECTED,
                    subject,
                    d.policy_version,
                    {"kind": kind, "subject": subject, "detail": detail},
                )
                for kind, detail in found
            )
            approvers = [
                *self._approvers(d),
                Approver(subject, level, identity.roles, identity.team),
            ]
            events.extend(self._authorization(d, subject, approvers))
        try:
            self._append(events)
        except DuplicateKey as e:
            if e.unique_key != events[0].unique_key:  # another engine authorized it first
                return self.track(self.engine.get_decision(d.decision_id))
            raise ApprovalInvalid(
                f"nonce {payload.nonce!r} was already used; every approval needs a fresh nonce",
                reason="nonce_replayed",
            ) from e
        after = self.engine.get_decision(d.decision_id)
        if verdict is Verdict.APPROVE and after.status is Status.PENDING_AUTHORITY:
            # Another engine may have added an approval between our read and our write:
            # re-fold and authorize now if the quorum holds (at most once, by unique key).
            late = self._authorization(after, subject, self._approvers(after))
            if late:
                with contextlib.suppress(DuplicateKey):  # the other engine won: same result
                    self._append(late)
                after = self.engine.get_decision(d.decision_id)
        return self.track(after)

    @staticmethod
    def _approvers(d: Decision) -> list[Approver]:
        return [
            Approver(a.approver, a.level, a.roles, a.team)
            for a in d.authority_state.approvals
            if a.verdict == Verdict.APPROVE.value
        ]

    def _authorization(
        self, d: Decision, subject: str, approvers: list[Approver]
    ) -> list[NewEvent]:
        """The enforcement.result that authorizes ``d`` if ``approvers`` meet its clauses."""
        q = evaluate_quorum(d.authority_state.clauses, approvers)
        if not q.satisfied:
            return []
        reasons = [f"clause {cid}: {', '.join(subs)}" for cid, subs in sorted(q.assignment.items())]
        event = self._result(d, subject, Status.AUTHORIZED, "quorum_reached", reasons)
        # One authorization per decision and policy round, even with engines racing.
        return [
            NewEvent(
                event.decision_id,
                event.event_type,
                event.actor,
                event.policy_version,
                event.payload,
                unique_key=f"authorized:{d.decision_id}:{d.policy_version}",
            )
        ]

    def _result(
        self, d: Decision, subject: str, status: Status, code: str, reasons: list[str]
    ) -> NewEvent:
        outcome = Outcome.ALLOW if status is Status.AUTHORIZED else Outcome.DENY
        payload: dict[str, object] = {
            "status": status.value,
            "outcome": outcome.value,
            "reason_code": code,
            "reasons": reasons,
            "enforcement_mode": d.judgement.enforcement_mode if d.judgement else "enforced",
        }
        if status is Status.AUTHORIZED:  # executable from now, for policy's window only
            life = d.judgement.lifecycle if d.judgement else DEFAULT_LIFECYCLE
            payload["execute_by"] = self._now() + life.execute_within_s
        return NewEvent(d.decision_id, _E.ENFORCEMENT_RESULT, subject, d.policy_version, payload)

    # -- cancel ------------------------------------------------------------------------------

    def cancel(self, identity: Identity, decision_id: str, reason: str) -> Decision:
        with self._locks.hold(decision_id):
            d = self._refresh(decision_id, self._now())
            if d.status not in (Status.PENDING_AUTHORITY, Status.AUTHORIZED):
                raise IllegalTransition(decision_id, d.status.value, "cancelled")
            requester = d.request.context.actor.id
            if identity.subject != requester and identity.level < CANCEL_MIN_LEVEL:
                raise Forbidden(
                    f"only the requester ({requester}) or an L{CANCEL_MIN_LEVEL}+ can cancel",
                    reason="not_requester",
                )
            self._append(
                [
                    NewEvent(
                        decision_id,
                        _E.DECISION_CANCELLED,
                        identity.subject,
                        d.policy_version,
                        {
                            "status": Status.CANCELLED.value,
                            "outcome": Outcome.DENY.value,
                            "reason_code": "cancelled",
                            "reasons": [f"cancelled by {identity.subject}: {reason or '-'}"],
                        },
                    )
                ]
            )
            return self.track(self.engine.get_decision(decision_id))
