"""The ledger events that record one judged decision, and their payload shapes.

A Decide writes its whole stream in one atomic ledger batch::

    decision.created      the validated request, its fingerprint, idempotency key
    policy.gate  (xN)     one per gate, with result and reason from policy metadata
    risk.scored           score, band, reasons
    authority.required    levels, signatures, co-sign, clauses
    decision.evaluated    outcome and environment (draft -> evaluated)
    enforcement.result    outcome, status and reason code (evaluated -> next state)

When policy could not be consulted only ``decision.created`` and an
``enforcement.result`` with DENY / ``policy_store_degraded`` are written.
``l7.engine.state`` folds these back into a ``Decision``.
"""

from __future__ import annotations

from collections.abc import Iterable

from l7.domain import Clause, DecisionRequest, Judgement, Outcome, Status
from ledger import EventType, NewEvent

__all__ = [
    "UNKNOWN_POLICY_VERSION",
    "clauses_json",
    "decision_events",
    "evaluation_events",
    "idempotency_unique_key",
]

UNKNOWN_POLICY_VERSION = ""


def idempotency_unique_key(actor_id: str, key: str) -> str:
    """Idempotency keys are scoped to the actor that sent them."""
    return f"idempotency:{actor_id}:{key}"


def decision_events(
    decision_id: str,
    request: DecisionRequest,
    *,
    created_at: str,
    judgement: Judgement | None,
    reason_code: str,
    reasons: tuple[str, ...],
    now: int,
) -> list[NewEvent]:
    """The stream of a new decision; ``now`` (unix seconds) anchors its deadlines."""
    actor = request.context.actor.id
    version = judgement.policy_version if judgement else UNKNOWN_POLICY_VERSION
    unique = (
        idempotency_unique_key(actor, request.idempotency_key) if request.idempotency_key else None
    )

    def ev(kind: EventType, payload: dict[str, object], unique_key: str | None = None) -> NewEvent:
        return NewEvent(decision_id, kind, actor, version, payload, unique_key)

    events = [
        ev(
            EventType.DECISION_CREATED,
            {
                "status": Status.DRAFT.value,
                "request": request.to_dict(),
                "request_sha256": request.fingerprint(),
                "idempotency_key": request.idempotency_key,
                "created_at": created_at,
            },
            unique,
        )
    ]
    if judgement is None:
        outcome, status, mode = Outcome.DENY, Status.DENIED, "enforced"
    else:
        outcome, status, mode = (
            judgement.outcome,
            Status.after_evaluation(judgement.outcome),
            judgement.enforcement_mode,
        )
        events.extend(evaluation_events(decision_id, actor, judgement, now=now))
    events.append(
        ev(
            EventType.ENFORCEMENT_RESULT,
            {
                "status": status.value,
                "outcome": outcome.value,
                "reason_code": reason_code,
                "reasons": list(reasons),
                "enforcement_mode": mode,
            },
        )
    )
    return events


def evaluation_events(
    decision_id: str,
    actor: str,
    judgement: Judgement,
    *,
    now: int,
    extra: dict[str, object] | None = None,
) -> list[NewEvent]:
    """policy.gate xN, risk.scored, authority.required (a new approval round), decision.evaluated.

    Written at Decide, and again when a pending decision is re-judged under a new
    policy revision (``extra`` then says so and which approvals were voided).
    """
    version = judgement.policy_version

    def ev(kind: EventType, payload: dict[str, object]) -> NewEvent:
        return NewEvent(decision_id, kind, actor, version, payload)

    life = judgement.lifecycle
    events = [
        ev(
            EventType.POLICY_GATE,
            {
                "gate": g.id,
                "title": g.title,
                "result": "pass" if g.passed else "fail",
                "reason": g.reason,
                "severity": g.severity,
            },
        )
        for g in judgement.gates
    ]
    r, a = judgement.risk, judgement.authority
    events.append(
        ev(
            EventType.RISK_SCORED,
            {"score": r.score, "band": r.band.value, "reasons": list(r.reasons)},
        )
    )
    events.append(
        ev(
            EventType.AUTHORITY_REQUIRED,
            {
                "required_levels": list(a.required_levels),
                "min_signatures": a.min_signatures,
                "cosign": list(a.cosign),
                "clauses": clauses_json(a.clauses),
                "lifecycle": {
                    "approval_window_s": life.approval_window_s,
                    "ttl_s": life.ttl_s,
                    "rationale_required": life.rationale_required,
                },
                "escalate_at": now + life.approval_window_s,
                "expires_at": now + life.ttl_s,
            },
        )
    )
    events.append(
        ev(
            EventType.DECISION_EVALUATED,
            {
                "status": Status.EVALUATED.value,
                "outcome": judgement.outcome.value,
                "environment": judgement.environment,
                "enforcement_mode": judgement.enforcement_mode,
                "reasons": list(judgement.reasons),
                **(extra or {}),
            },
        )
    )
    return events


def clauses_json(clauses: Iterable[Clause]) -> list[dict[str, object]]:
    return [{"id": c.id, "min_level": c.min_level, "count": c.count} for c in clauses]
