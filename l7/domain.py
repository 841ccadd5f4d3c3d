"""Frozen domain values shared by the engine, the policy client and the API edge.

Protobuf and JSON live only at the edges (``l7.server.convert``, the CLI) and
are converted to these types once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NewType

from ledger.canonical import canonical_json

__all__ = [
    "Action",
    "Actor",
    "ApprovalRecord",
    "Authority",
    "AuthorityState",
    "Band",
    "BreakGlass",
    "Clause",
    "Context",
    "Decision",
    "DecisionId",
    "DecisionRequest",
    "Gate",
    "Judgement",
    "LedgerRef",
    "Lifecycle",
    "Outcome",
    "Risk",
    "Status",
    "Target",
    "effective_environment",
    "sha256_hex",
]

DecisionId = NewType("DecisionId", str)

MIN_LEVEL = 1
MAX_LEVEL = 5

KNOWN_ENVIRONMENTS = frozenset({"dev", "staging", "production"})
"""The environments policy judges (``rego/l7/lib/request.rego`` known_environments)."""
DEFAULT_EXECUTE_WITHIN_S = 600
"""An authorization's execution window when policy names none (the shortest: fail safe)."""


def effective_environment(environment: object) -> str:
    """The environment a request is judged, hashed and executed in: a known one as named,
    anything else (missing, empty, unknown, not a string) production."""
    return (
        environment
        if isinstance(environment, str) and environment in KNOWN_ENVIRONMENTS
        else "production"
    )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Outcome(str, Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    QUEUE = "QUEUE"
    ESCALATE = "ESCALATE"


class Status(str, Enum):
    DRAFT = "draft"
    EVALUATED = "evaluated"
    PENDING_AUTHORITY = "pending_authority"
    AUTHORIZED = "authorized"
    EXECUTED = "executed"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @classmethod
    def after_evaluation(cls, outcome: Outcome) -> Status:
        """The state an evaluated decision moves to for a given outcome."""
        if outcome is Outcome.ALLOW:
            return cls.AUTHORIZED
        if outcome is Outcome.DENY:
            return cls.DENIED
        return cls.PENDING_AUTHORITY


class Band(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Target:
    type: str
    id: str


@dataclass(frozen=True)
class Action:
    action_class: str
    intent: str
    target: Target
    payload: Mapping[str, Any] = field(default_factory=dict)
    tool: str = ""
    """The tool performing the action, when the caller names it (policy's tool allowlist)."""


@dataclass(frozen=True)
class Actor:
    id: str
    role: str
    level: int


@dataclass(frozen=True)
class Context:
    actor: Actor
    environment: str
    request_source: str = ""
    session: str = ""


@dataclass(frozen=True)
class DecisionRequest:
    """A validated request to judge one proposed action."""

    action: Action
    context: Context
    idempotency_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON (the shape policy input, the ledger and the CLI use)."""
        action: dict[str, Any] = {
            "class": self.action.action_class,
            "intent": self.action.intent,
            "target": {"type": self.action.target.type, "id": self.action.target.id},
            "payload": dict(self.action.payload),
        }
        if self.action.tool:  # only when named: earlier requests keep their fingerprints
            action["tool"] = self.action.tool
        return {
            "action": action,
            "context": {
                "actor": {
                    "id": self.context.actor.id,
                    "role": self.context.actor.role,
                    "level": self.context.actor.level,
                },
                "environment": self.context.environment,
                "request_source": self.context.request_source,
                "session": self.context.session,
            },
        }

    def fingerprint(self) -> str:
        """sha256 of the canonical (RFC 8785) request, without the idempotency key."""
        return sha256_hex(canonical_json(self.to_dict()))


@dataclass(frozen=True)
class Gate:
    id: str
    title: str
    passed: bool
    reason: str
    severity: str


@dataclass(frozen=True)
class Risk:
    score: int
    band: Band
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Clause:
    """``count`` distinct approvers at ``min_level`` or above (clauses are ANDed)."""

    id: str
    min_level: int
    count: int


@dataclass(frozen=True)
class Authority:
    required_levels: tuple[int, ...]
    min_signatures: int
    cosign: tuple[int, ...]
    clauses: tuple[Clause, ...]

    @classmethod
    def none(cls) -> Authority:
        return cls((), 0, (), ())


@dataclass(frozen=True)
class Lifecycle:
    """How long a pending decision waits per level, how long it lives, rationale needed,
    and how long an authorization stays executable (``execute_within_s``)."""

    approval_window_s: int
    ttl_s: int
    rationale_required: bool
    execute_within_s: int = DEFAULT_EXECUTE_WITHIN_S


DEFAULT_LIFECYCLE = Lifecycle(approval_window_s=3600, ttl_s=14400, rationale_required=True)


@dataclass(frozen=True)
class Judgement:
    """What policy said about a request, pinned to the bundle revision that said it."""

    outcome: Outcome
    environment: str
    enforcement_mode: str
    gates: tuple[Gate, ...]
    risk: Risk
    authority: Authority
    reasons: tuple[str, ...]
    policy_version: str
    lifecycle: Lifecycle = DEFAULT_LIFECYCLE


@dataclass(frozen=True)
class ApprovalRecord:
    """An accepted approval or rejection, as the ledger records it (never a private key)."""

    approver: str
    level: int
    roles: tuple[str, ...]
    team: str | None
    verdict: str
    method: str
    key_id: str
    signature_ref: str
    payload_sha256: str
    nonce: str
    policy_version: str
    at: str
    rationale: Mapping[str, Any] | None = None
    delegated_from: str | None = None


@dataclass(frozen=True)
class AuthorityState:
    """Where a pending decision stands: the requirement now in force and who has signed."""

    clauses: tuple[Clause, ...]
    approvals: tuple[ApprovalRecord, ...]
    escalations: int
    escalate_at: int
    """unix seconds when the current approval window lapses"""
    expires_at: int
    """unix seconds when the decision expires if still pending"""

    @classmethod
    def empty(cls) -> AuthorityState:
        return cls((), (), 0, 0, 0)


@dataclass(frozen=True)
class BreakGlass:
    """An emergency authorization: scoped, short, and owed a review by another L4/L5."""

    opened_by: str
    level: int
    incident_id: str
    category: str
    text: str
    expires_at: int
    review_deadline: int
    reviewed_by: str | None = None
    findings: str | None = None


@dataclass(frozen=True)
class LedgerRef:
    """Where the ledger confirmed the last event of a decision."""

    global_seq: int
    hash: str
    event_id: str


@dataclass(frozen=True)
class Decision:
    decision_id: DecisionId
    status: Status
    outcome: Outcome
    reason_code: str
    reasons: tuple[str, ...]
    request: DecisionRequest
    policy_version: str
    created_at: str
    ledger: LedgerRef
    judgement: Judgement | None = None
    """None when policy could not be consulted (the decision is then DENY)."""
    authority_state: AuthorityState = field(default_factory=AuthorityState.empty)
    authorized_by: LedgerRef | None = None
    """The ledger event that authorized the decision (what execution grants bind to)."""
    execution_id: str | None = None
    """The grant id the gateway consumed, once execution was authorized."""
    breakglass: BreakGlass | None = None
    """Set when the decision is a break-glass override instead of a policy judgement."""
    execute_by: int | None = None
    """Unix seconds after which an authorized, unexecuted decision can no longer be
    executed (policy's ``execute_within_s`` from the moment it was authorized; a
    break-glass window's end). None on an authorized decision: no window was recorded,
    which counts as closed (fail closed)."""

    @property
    def environment(self) -> str:
        """The effective environment: the one hashed, granted and served."""
        return effective_environment(self.request.context.environment)

    @property
    def intent_hash(self) -> str:
        """What approvers sign and grants bind: sha256 of the canonical action and its
        effective environment."""
        from l7.crypto import intent_hash  # crypto imports domain; resolved at call time

        return intent_hash(self.request.to_dict()["action"], self.environment)

    def to_dict(self) -> dict[str, Any]:
        """JSON view, as printed by the CLI."""
        j = self.judgement
        out: dict[str, Any] = {
            "decision_id": self.decision_id,
            "status": self.status.value,
            "outcome": self.outcome.value,
            "reason_code": self.reason_code,
            "reasons": list(self.reasons),
            "policy_version": self.policy_version,
            "created_at": self.created_at,
            "ledger": {
                "global_seq": self.ledger.global_seq,
                "hash": self.ledger.hash,
                "event_id": self.ledger.event_id,
            },
            "request": self.request.to_dict(),
        }
        if j is not None:
            out["environment"] = j.environment
            out["enforcement_mode"] = j.enforcement_mode
            out["policy_outcome"] = j.outcome.value  # `outcome` above is what is in force
            out["risk"] = {
                "score": j.risk.score,
                "band": j.risk.band.value,
                "reasons": list(j.risk.reasons),
            }
            out["authority"] = {
                "required_levels": list(j.authority.required_levels),
                "min_signatures": j.authority.min_signatures,
                "cosign": list(j.authority.cosign),
                "clauses": [
                    {"id": c.id, "min_level": c.min_level, "count": c.count}
                    for c in j.authority.clauses
                ],
            }
            out["lifecycle"] = {
                "approval_window_s": j.lifecycle.approval_window_s,
                "ttl_s": j.lifecycle.ttl_s,
                "rationale_required": j.lifecycle.rationale_required,
                "execute_within_s": j.lifecycle.execute_within_s,
            }
            if self.execute_by is not None:
                out["execute_by"] = self.execute_by
            st = self.authority_state
            out["authority_state"] = {
                "clauses": [
                    {"id": c.id, "min_level": c.min_level, "count": c.count} for c in st.clauses
                ],
                "approvals": [
                    {
                        "approver": a.approver,
                        "level": a.level,
                        "verdict": a.verdict,
                        "method": a.method,
                        "key_id": a.key_id,
                        "signature_ref": a.signature_ref,
                        "delegated_from": a.delegated_from,
                        "at": a.at,
                    }
                    for a in st.approvals
                ],
                "escalations": st.escalations,
                "escalate_at": st.escalate_at,
                "expires_at": st.expires_at,
            }
            out["intent_hash"] = self.intent_hash
            out["gates"] = [
                {
                    "id": g.id,
                    "title": g.title,
                    "result": "pass" if g.passed else "fail",
                    "reason": g.reason,
                    "severity": g.severity,
                }
                for g in j.gates
            ]
        return out
