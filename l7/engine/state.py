"""Rebuild a decision from its ledger events alone (a pure fold).

``Decide``'s answer, ``GetDecision``, ``l7 decision show`` and idempotent
replays all come from this fold, so what a caller is told is exactly what the
ledger can prove.

Approval rounds: every ``authority.required`` starts a new round (at Decide,
and again when a pending decision is re-judged under a new policy revision);
approvals gathered in an earlier round no longer count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from l7.domain import (
    DEFAULT_EXECUTE_WITHIN_S,
    ApprovalRecord,
    Authority,
    AuthorityState,
    Band,
    BreakGlass,
    Clause,
    Decision,
    DecisionId,
    Gate,
    Judgement,
    LedgerRef,
    Lifecycle,
    Outcome,
    Risk,
    Status,
)
from l7.engine.validate import request_from_dict
from l7.errors import LedgerDegraded
from ledger import EventType, StoredEvent

__all__ = ["fold_decision"]

_E = EventType


def _clauses(raw: Sequence[Mapping[str, Any]]) -> tuple[Clause, ...]:
    return tuple(Clause(c["id"], int(c["min_level"]), int(c["count"])) for c in raw)


def _approval(p: Mapping[str, Any], e: StoredEvent) -> ApprovalRecord:
    return ApprovalRecord(
        approver=p["approver"],
        level=int(p["level"]),
        roles=tuple(p["roles"]),
        team=p["team"],
        verdict=p["verdict"],
        method=p["method"],
        key_id=p["key_id"],
        signature_ref=p["signature_ref"],
        payload_sha256=p["payload_sha256"],
        nonce=p["nonce"],
        policy_version=e.policy_version,
        at=e.at,
        rationale=p.get("rationale"),
        delegated_from=p.get("delegated_from"),
    )


class _Fold:
    def __init__(self, events: Sequence[StoredEvent]) -> None:
        created = events[0].payload
        req = request_from_dict(created["request"])
        self.request = replace(req, idempotency_key=created["idempotency_key"])
        self.created_at: str = created["created_at"]
        self.gates: list[Gate] = []
        self.risk: Risk | None = None
        self.authority: Authority | None = None
        self.lifecycle: Lifecycle | None = None
        self.evaluated: Mapping[str, Any] | None = None
        self.evaluated_version = ""
        self.status, self.outcome = Status.DRAFT, Outcome.DENY
        self.reason_code, self.reasons = "", ()
        self.state = AuthorityState.empty()
        self.authorized_by: LedgerRef | None = None
        self.execution_id: str | None = None
        self.breakglass: BreakGlass | None = None
        self.execute_by: int | None = None

    def apply(self, e: StoredEvent) -> None:
        p, kind = e.payload, e.event_type
        if kind == _E.POLICY_GATE:
            if self.evaluated is not None:  # a re-evaluation starts a fresh gate list
                self.gates, self.evaluated = [], None
            self.gates.append(
                Gate(p["gate"], p["title"], p["result"] == "pass", p["reason"], p["severity"])
            )
        elif kind == _E.RISK_SCORED:
            self.risk = Risk(int(p["score"]), Band(p["band"]), tuple(p["reasons"]))
        elif kind == _E.AUTHORITY_REQUIRED:
            clauses = _clauses(p["clauses"])
            self.authority = Authority(
                tuple(p["required_levels"]), int(p["min_signatures"]), tuple(p["cosign"]), clauses
            )
            life = p["lifecycle"]
            self.lifecycle = Lifecycle(
                int(life["approval_window_s"]),
                int(life["ttl_s"]),
                bool(life["rationale_required"]),
                int(life.get("execute_within_s", DEFAULT_EXECUTE_WITHIN_S)),
            )
            # A new round: earlier approvals are void, the requirement is policy's again.
            self.state = AuthorityState(clauses, (), 0, int(p["escalate_at"]), int(p["expires_at"]))
        elif kind == _E.DECISION_EVALUATED:
            self.evaluated, self.evaluated_version = p, e.policy_version
            self.status = Status.EVALUATED
        elif kind in (_E.APPROVAL_ADDED, _E.APPROVAL_REJECTED):
            self.state = replace(self.state, approvals=(*self.state.approvals, _approval(p, e)))
        elif kind == _E.AUTHORITY_ESCALATED:
            self.state = replace(
                self.state,
                clauses=_clauses(p["clauses"]),
                escalations=int(p["escalations"]),
                escalate_at=int(p["escalate_at"]),
            )
        elif kind == _E.OVERRIDE_BREAKGLASS:
            self.breakglass = BreakGlass(
                opened_by=p["opened_by"],
                level=int(p["level"]),
                incident_id=p["incident_id"],
                category=p["category"],
                text=p["text"],
                expires_at=int(p["expires_at"]),
                review_deadline=int(p["review_deadline"]),
            )
            self.status, self.outcome = Status.AUTHORIZED, Outcome.ALLOW
            self.reason_code, self.reasons = "breakglass", tuple(p["reasons"])
            self.authorized_by = LedgerRef(e.global_seq, e.hash, e.event_id)
            self.execute_by = self.breakglass.expires_at
        elif kind == _E.BREAKGLASS_REVIEWED and self.breakglass is not None:
            self.breakglass = replace(
                self.breakglass, reviewed_by=p["reviewer"], findings=p["findings"]
            )
        elif kind == _E.EXECUTION_AUTHORIZED:
            self.execution_id = p["execution_id"]
        elif kind in (
            _E.ENFORCEMENT_RESULT,
            _E.DECISION_EXPIRED,
            _E.DECISION_CANCELLED,
            _E.EXECUTION_CONFIRMED,
        ):
            self.status = Status(p["status"])
            if self.status is Status.AUTHORIZED:
                self.authorized_by = LedgerRef(e.global_seq, e.hash, e.event_id)
                window = p.get("execute_by")  # absent (before windows existed): closed
                self.execute_by = window if isinstance(window, int) else None
            if kind != _E.EXECUTION_CONFIRMED:
                self.outcome = Outcome(p.get("outcome", Outcome.DENY.value))
                self.reason_code = p.get("reason_code", kind)
                self.reasons = tuple(p.get("reasons", ()))

    def judgement(self) -> Judgement | None:
        ev, risk, auth, life = self.evaluated, self.risk, self.authority, self.lifecycle
        if ev is None or risk is None or auth is None or life is None:
            return None
        return Judgement(
            outcome=Outcome(ev["outcome"]),
            environment=ev["environment"],
            enforcement_mode=ev["enforcement_mode"],
            gates=tuple(self.gates),
            risk=risk,
            authority=auth,
            reasons=tuple(ev["reasons"]),
            policy_version=self.evaluated_version,
            lifecycle=life,
        )


def fold_decision(events: Sequence[StoredEvent]) -> Decision:
    """Fold one decision stream. Raises LedgerDegraded if the stream is not a decision."""
    if not events or events[0].event_type != _E.DECISION_CREATED.value:
        raise LedgerDegraded("stream does not start with decision.created; run l7 ledger verify")
    try:
        f = _Fold(events)
        for e in events[1:]:
            f.apply(e)
        judgement = f.judgement()
    except (KeyError, TypeError, ValueError) as e:
        raise LedgerDegraded(
            f"decision {events[0].decision_id} has a malformed event ({e!r}); run l7 ledger verify"
        ) from e
    last = events[-1]
    return Decision(
        decision_id=DecisionId(events[0].decision_id),
        status=f.status,
        outcome=f.outcome,
        reason_code=f.reason_code,
        reasons=f.reasons,
        request=f.request,
        policy_version=f.evaluated_version or last.policy_version,
        created_at=f.created_at,
        ledger=LedgerRef(last.global_seq, last.hash, last.event_id),
        judgement=judgement,
        authority_state=f.state,
        authorized_by=f.authorized_by,
        execution_id=f.execution_id,
        breakglass=f.breakglass,
        execute_by=f.execute_by,
    )
