"""Authority: signed approvals, quorum over authority clauses, approver keys, delegation."""

from l7.authority.approval import (
    ApprovalPayload,
    Rationale,
    SignedApproval,
    Verdict,
    payload_hash,
    sign_approval,
    verify_approval,
)
from l7.authority.quorum import Approver, QuorumState, clause_accepts, evaluate_quorum

__all__ = [
    "ApprovalPayload",
    "Approver",
    "QuorumState",
    "Rationale",
    "SignedApproval",
    "Verdict",
    "clause_accepts",
    "evaluate_quorum",
    "payload_hash",
    "sign_approval",
    "verify_approval",
]
