"""The ledger events that record one judged decision, and their payload shapes.

A Decide writes its whole stream in one atomic ledger batch::

    decision.created      the validated request, its fingerprint, idempotency key
    policy.gate  (xN)     one per gate, with result and reason from policy metadata
    risk.scored           score, band, reasons
    authority.required    levels, signatures, co-sign, clauses
    decision.evaluated    policy's outcome, environment, enforcement mode and what replay
                          needs to rebuild the exact OPA input (draft -> evaluated)
    enforcement.result    the *effective* outcome after the enforcement mode, policy's own
                          outcome, status and reason code (evaluated -> next state)

Enforcement modes (docs/0007-enforcement-modes.md) come only from the signed policy
result: ``enforced`` makes policy's outcome the effective one; ``guarded`` waives a
QUEUE (routine authority) into an effective ALLOW, recorded as ``waived: "authority"``,
but a DENY or an ESCALATE still blocks; ``advisory`` records policy's outcome and
never blocks (``waived: "policy"``). A decision policy never judged is a DENY in any
mode.

``decision.evaluated.policy_input`` is ``{"sha256": <of the RFC 8785 input>, "extra":
{...}}``: the input OPA evaluated is ``decision.created.request`` plus ``extra`` (the
secret reference metadata the engine added, never a value), and the digest proves a
rebuilt input is exactly the one judged (``l7 decision replay``).

When policy could not be consulted only ``decision.created`` and an
``enforcement.result`` with DENY / ``policy_store_degraded`` are written.
``l7.engine.state`` folds these back into a ``Decision``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from l7.crypto import canonical, sha256_hex
from l7.domain import Clause, DecisionRequest, Judgement, Outcome, Status
from ledger import EventType, NewEvent

__all__ = [
    "UNKNOWN_POLICY_VERSION",
    "Enforcement",
    "Mode",
    "apply_enforcement",
    "clauses_json",
    "decision_events",
    "enforcement_payload",
    "evaluation_events",
    "idempotency_unique_key",
    "policy_input_record",
]

UNKNOWN_POLICY_VERSION = ""
_REQUEST_KEYS = ("action", "context")


class Mode(str, Enum):
    """How a policy outcome becomes the effective outcome."""

    ADVISORY = "advisory"
    GUARDED = "guarded"
    ENFORCED = "enforced"

    @classmethod
    def parse(cls, value: str) -> Mode:
        """Anything that is not a known mode is enforced (fail closed)."""
        try:
            return cls(value)
        except ValueError:
            return cls.ENFORCED


@dataclass(frozen=True)
class Enforcement:
    """Policy's outcome, and what the enforcement mode in force makes of it."""

    mode: Mode
    policy_outcome: Outcome
    outcome: Outcome
    """The effective outcome: what the caller is answered and the gateway honours."""
    waived: str | None = None
    """None, "authority" (guarded: a QUEUE let through) or "policy" (advisory)."""

    @property
    def reason_code(self) -> str:
        return f"{self.mode.value}_mode" if self.waived else "policy"

    @property
    def note(self) -> str | None:
        if self.waived == "authority":
            return (
                f"guarded mode: policy answered {self.policy_outcome.value} (authority "
                "required); approval waived, effective outcome ALLOW"
            )
        if self.waived == "policy":
            return (
                f"advisory mode: policy answered {self.policy_outcome.value}; recorded, "
                "not enforced: effective outcome ALLOW"
            )
        return None


def apply_enforcement(judgement: Judgement) -> Enforcement:
    """The effective outcome of a policy judgement under its enforcement mode.

    guarded never lets a DENY (or any failed gate) or an ESCALATE (critical risk) through;
    only advisory, which the signed policy must explicitly allow for the environment,
    turns those into an effective ALLOW."""
    mode = Mode.parse(judgement.enforcement_mode)
    policy = judgement.outcome
    if policy is Outcome.ALLOW or mode is Mode.ENFORCED:
        return Enforcement(mode, policy, policy)
    if mode is Mode.ADVISORY:
        return Enforcement(mode, policy, Outcome.ALLOW, "policy")
    gates_ok = all(g.passed for g in judgement.gates)
    if policy is Outcome.QUEUE and gates_ok:
        return Enforcement(mode, policy, Outcome.ALLOW, "authority")
    return Enforcement(mode, policy, policy)


def enforcement_payload(
    enforcement: Enforcement,
    reason_code: str,
    reasons: Iterable[str],
    *,
    judgement: Judgement,
    now: int,
) -> dict[str, object]:
    """The ``enforcement.result`` payload for a judged decision (Decide and re-judgement).

    An effective ALLOW (status authorized) carries ``execute_by``: ``now`` plus policy's
    ``execute_within_s`` for the class and band; past it the authorization is expired."""
    status = Status.after_evaluation(enforcement.outcome)
    note = enforcement.note
    payload: dict[str, object] = {
        "status": status.value,
        "outcome": enforcement.outcome.value,
        "policy_outcome": enforcement.policy_outcome.value,
        "reason_code": enforcement.reason_code if enforcement.waived else reason_code,
        "reasons": [*([note] if note else []), *reasons],
        "enforcement_mode": enforcement.mode.value,
    }
    if enforcement.waived:
        payload["waived"] = enforcement.waived
    if status is Status.AUTHORIZED:
        payload["execute_by"] = now + judgement.lifecycle.execute_within_s
    return payload


def policy_input_record(policy_input: Mapping[str, Any]) -> dict[str, object]:
    """What replay needs to rebuild the exact OPA input: its digest, and whatever the engine
    added beside the request (secret reference metadata: where a reference points and
    whether it exists, never a value). The request itself is ``decision.created.request``."""
    return {
        "sha256": sha256_hex(canonical(dict(policy_input))),
        "extra": {k: v for k, v in policy_input.items() if k not in _REQUEST_KEYS},
    }


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
    policy_input: Mapping[str, Any] | None = None,
) -> list[NewEvent]:
    """The stream of a new decision; ``now`` (unix seconds) anchors its deadlines.

    ``policy_input`` is the exact input OPA evaluated (recorded by digest + extras)."""
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
        # Policy never judged it, so no mode is known: DENY, whatever the bundle says.
        result: dict[str, object] = {
            "status": Status.DENIED.value,
            "outcome": Outcome.DENY.value,
            "reason_code": reason_code,
            "reasons": list(reasons),
            "enforcement_mode": Mode.ENFORCED.value,
        }
    else:
        extra: dict[str, object] | None = (
            {"policy_input": policy_input_record(policy_input)} if policy_input else None
        )
        events.extend(evaluation_events(decision_id, actor, judgement, now=now, extra=extra))
        result = enforcement_payload(
            apply_enforcement(judgement), reason_code, reasons, judgement=judgement, now=now
        )
    events.append(ev(EventType.ENFORCEMENT_RESULT, result))
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
                    "execute_within_s": life.execute_within_s,
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
