"""Rebuild a decision from its ledger events alone (a pure fold).

``GetDecision``, ``l7 decision show`` and idempotent replays all use this, so
what a caller is told is exactly what the ledger can prove.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from l7.domain import (
    Authority,
    Band,
    Clause,
    Decision,
    DecisionId,
    Gate,
    Judgement,
    LedgerRef,
    Outcome,
    Risk,
    Status,
)
from l7.engine.validate import request_from_dict
from l7.errors import LedgerDegraded
from ledger import EventType, StoredEvent

__all__ = ["fold_decision"]


def _gate(p: Any) -> Gate:
    return Gate(p["gate"], p["title"], p["result"] == "pass", p["reason"], p["severity"])


def fold_decision(events: Sequence[StoredEvent]) -> Decision:
    """Fold one decision stream. Raises LedgerDegraded if the stream is not a decision."""
    if not events or events[0].event_type != EventType.DECISION_CREATED.value:
        raise LedgerDegraded("stream does not start with decision.created; run l7 ledger verify")
    try:
        created = events[0].payload
        request = request_from_dict(created["request"])
        request = type(request)(request.action, request.context, created["idempotency_key"])
        gates: list[Gate] = []
        risk: Risk | None = None
        authority: Authority | None = None
        evaluated: dict[str, Any] | None = None
        status, outcome, reason_code, reasons = Status.DRAFT, Outcome.DENY, "", ()
        for e in events[1:]:
            p = e.payload
            kind = e.event_type
            if kind == EventType.POLICY_GATE.value:
                gates.append(_gate(p))
            elif kind == EventType.RISK_SCORED.value:
                risk = Risk(int(p["score"]), Band(p["band"]), tuple(p["reasons"]))
            elif kind == EventType.AUTHORITY_REQUIRED.value:
                authority = Authority(
                    tuple(p["required_levels"]),
                    int(p["min_signatures"]),
                    tuple(p["cosign"]),
                    tuple(Clause(c["id"], c["min_level"], c["count"]) for c in p["clauses"]),
                )
            elif kind == EventType.DECISION_EVALUATED.value:
                evaluated = dict(p)
                status = Status.EVALUATED
            elif kind == EventType.ENFORCEMENT_RESULT.value:
                status = Status(p["status"])
                outcome = Outcome(p["outcome"])
                reason_code = p["reason_code"]
                reasons = tuple(p["reasons"])
    except (KeyError, TypeError, ValueError) as e:
        raise LedgerDegraded(
            f"decision {events[0].decision_id} has a malformed event ({e!r}); run l7 ledger verify"
        ) from e
    judgement = None
    if evaluated is not None and risk is not None and authority is not None:
        judgement = Judgement(
            outcome=Outcome(evaluated["outcome"]),
            environment=evaluated["environment"],
            enforcement_mode=evaluated["enforcement_mode"],
            gates=tuple(gates),
            risk=risk,
            authority=authority,
            reasons=tuple(evaluated["reasons"]),
            policy_version=events[-1].policy_version,
        )
    last = events[-1]
    return Decision(
        decision_id=DecisionId(events[0].decision_id),
        status=status,
        outcome=outcome,
        reason_code=reason_code,
        reasons=reasons,
        request=request,
        policy_version=last.policy_version,
        created_at=created["created_at"],
        ledger=LedgerRef(last.global_seq, last.hash, last.event_id),
        judgement=judgement,
    )
