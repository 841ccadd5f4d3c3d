"""Protobuf <-> domain, done once at the edge."""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf import json_format

from l7.domain import Decision, DecisionRequest, Outcome, Status
from l7.engine.authority import requirement_progress
from l7.engine.events import apply_enforcement
from l7.engine.validate import request_from_dict, struct_to_dict
from l7.v1 import governance_pb2 as pb

__all__ = [
    "confirmation_to_proto",
    "decision_to_proto",
    "request_from_proto",
    "request_to_proto",
]


class _Confirmed(Protocol):
    """A ledger confirmation as the domain or the ledger hands it over."""

    @property
    def global_seq(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def event_id(self) -> str: ...


def confirmation_to_proto(c: _Confirmed) -> pb.LedgerConfirmation:
    return pb.LedgerConfirmation(global_seq=c.global_seq, hash=c.hash, event_id=c.event_id)


_OUTCOMES = {o: getattr(pb, f"OUTCOME_{o.value}") for o in Outcome}
_STATUSES = {s: getattr(pb, f"STATUS_{s.name}") for s in Status}


def request_from_proto(msg: pb.DecideRequest) -> DecisionRequest:
    """Validate a DecideRequest; raises RequestInvalid naming the field at fault."""
    d: dict[str, Any] = {"idempotency_key": msg.idempotency_key}
    if msg.HasField("action"):
        a = msg.action
        action: dict[str, Any] = {"class": a.action_class, "intent": a.intent}
        if a.tool:
            action["tool"] = a.tool
        if a.HasField("target"):
            action["target"] = {"type": a.target.type, "id": a.target.id}
        if a.HasField("payload"):
            action["payload"] = struct_to_dict(a.payload, "action.payload")
        d["action"] = action
    if msg.HasField("context"):
        c = msg.context
        ctx: dict[str, Any] = {
            "environment": c.environment,
            "request_source": c.request_source,
            "session": c.session,
        }
        if c.HasField("actor"):
            ctx["actor"] = {"id": c.actor.id, "role": c.actor.role, "level": c.actor.level}
        d["context"] = ctx
    return request_from_dict(d)


def request_to_proto(d: dict[str, Any]) -> pb.DecideRequest:
    """JSON request (as the CLI reads it) -> DecideRequest. Unknown fields are refused."""
    return json_format.ParseDict(d, pb.DecideRequest(), ignore_unknown_fields=False)


def decision_to_proto(dec: Decision) -> pb.Decision:
    req = dec.request
    out = pb.Decision(
        decision_id=dec.decision_id,
        status=_STATUSES[dec.status],
        outcome=_OUTCOMES[dec.outcome],
        reason_code=dec.reason_code,
        reasons=list(dec.reasons),
        policy_version=dec.policy_version,
        created_at=dec.created_at,
        ledger=confirmation_to_proto(dec.ledger),
        action=pb.Action(
            action_class=req.action.action_class,
            intent=req.action.intent,
            target=pb.Target(type=req.action.target.type, id=req.action.target.id),
        ),
        context=pb.Context(
            actor=pb.Actor(
                id=req.context.actor.id, role=req.context.actor.role, level=req.context.actor.level
            ),
            environment=req.context.environment,
            request_source=req.context.request_source,
            session=req.context.session,
        ),
    )
    out.action.payload.update(dict(req.action.payload))
    out.execute_by = dec.execute_by or 0
    j = dec.judgement
    if j is not None:
        out.environment = j.environment
        out.enforcement_mode = j.enforcement_mode
        out.policy_outcome = _OUTCOMES[j.outcome]
        out.enforcement_waived = apply_enforcement(j).waived or ""
        out.risk.CopyFrom(
            pb.Risk(score=j.risk.score, band=j.risk.band.value, reasons=j.risk.reasons)
        )
        out.authority.CopyFrom(
            pb.Authority(
                required_levels=j.authority.required_levels,
                min_signatures=j.authority.min_signatures,
                cosign=j.authority.cosign,
                clauses=[
                    pb.AuthorityClause(id=c.id, min_level=c.min_level, count=c.count)
                    for c in j.authority.clauses
                ],
            )
        )
        out.gates.extend(
            pb.Gate(id=g.id, title=g.title, passed=g.passed, reason=g.reason, severity=g.severity)
            for g in j.gates
        )
        st = dec.authority_state
        out.intent_hash = dec.intent_hash
        out.authority_progress.CopyFrom(
            pb.AuthorityProgress(
                clauses=[
                    pb.ClauseProgress(
                        clause_id=v.clause.id,
                        min_level=v.clause.min_level,
                        count=v.clause.count,
                        approvers=v.approvers,
                        missing=v.missing,
                    )
                    for v in requirement_progress(dec)
                ],
                approvals=[
                    pb.ApprovalRecord(
                        approver=a.approver,
                        level=a.level,
                        verdict=a.verdict,
                        method=a.method,
                        key_id=a.key_id,
                        signature_ref=a.signature_ref,
                        delegated_from=a.delegated_from or "",
                        at=a.at,
                    )
                    for a in st.approvals
                ],
                escalations=st.escalations,
                escalate_at=st.escalate_at,
                expires_at=st.expires_at,
                rationale_required=j.lifecycle.rationale_required,
            )
        )
    return out
