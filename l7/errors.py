"""Every error Layer-7 raises on purpose.

    L7Error                         base; carries a machine-readable ``reason``
    ├── ConfigError                 a flag, file or environment setting is wrong
    ├── BundleError                 a policy bundle cannot be built, locked or verified
    ├── RequestInvalid              a request field is missing or malformed (names the field)
    ├── IdempotencyConflict         an idempotency key was reused for a different request
    ├── DecisionNotFound            no decision with that id in the ledger
    ├── PolicyStoreDegraded         OPA is down, has no active bundle, or answered nonsense
    ├── LedgerDegraded              the ledger did not confirm a write or could not be read
    ├── LedgerIntegrityFailed       an authority event is unsigned or mis-signed (restriction)
    ├── Unauthenticated             no token, or a token that does not verify (token_invalid)
    ├── IdentityDegraded            the issuer's JWKS cannot be fetched (identity_degraded)
    ├── Forbidden                   authenticated, but not allowed (actor_mismatch, self_approval,
    │                               insufficient_level, out_of_scope, ...)
    ├── ApprovalInvalid             a signed approval is refused (signature_invalid,
    │                               approval_expired, nonce_replayed, decision_mismatch,
    │                               intent_mismatch, key_revoked, key_unknown, ...)
    ├── IllegalTransition           the decision's state does not allow this (names the state)
    ├── GrantRefused                the gateway refuses an execution (grant_invalid, grant_expired,
    │                               grant_replayed, action_mismatch, not_authorized)
    └── GatewayDegraded             the gateway or the engine behind a governed call is unreachable

Secrets add two more (in ``l7.secrets.interface``, beside the finding kinds they name):
``SecretInPayload`` (a RequestInvalid, reason secret_in_payload) and ``SecretsDegraded``
(OpenBao unreachable or sealed, reason secrets_degraded).

The gRPC layer (``l7.server.interceptor``) maps this tree to status codes and a
``google.rpc.ErrorInfo`` with ``reason`` in exactly one place. Dependency
exceptions (requests, SQLAlchemy, grpc) are translated where the dependency is
called, with ``raise ... from e``. Messages say what was expected, what was
found, and what to do.
"""

from __future__ import annotations

__all__ = [
    "ApprovalInvalid",
    "BundleError",
    "ConfigError",
    "DecisionNotFound",
    "Forbidden",
    "GatewayDegraded",
    "GrantRefused",
    "IdempotencyConflict",
    "IdentityDegraded",
    "IllegalTransition",
    "L7Error",
    "LedgerDegraded",
    "LedgerIntegrityFailed",
    "LimitExceeded",
    "NumberNotFinite",
    "PayloadTooDeep",
    "PayloadTooLarge",
    "PolicyStoreDegraded",
    "RequestInvalid",
    "Unauthenticated",
]


class L7Error(Exception):
    """Base of every Layer-7 error. ``reason`` is machine-readable; a subclass sets its
    default and an instance may narrow it (``Forbidden("...", reason="self_approval")``)."""

    reason: str = "internal"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(L7Error):
    reason = "config_invalid"


class BundleError(L7Error):
    reason = "bundle_invalid"


class RequestInvalid(L7Error):
    """A request field is missing or malformed; ``field`` is its dotted path."""

    reason = "invalid_request"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class LimitExceeded(RequestInvalid):
    """A size or nesting limit was exceeded; ``limit`` is the configured bound."""

    def __init__(self, field: str, problem: str, *, limit: int) -> None:
        super().__init__(field, problem)
        self.limit = limit


class PayloadTooLarge(LimitExceeded):
    reason = "payload_too_large"


class PayloadTooDeep(LimitExceeded):
    reason = "payload_too_deep"


class NumberNotFinite(RequestInvalid):
    reason = "number_not_finite"


class IdempotencyConflict(L7Error):
    reason = "idempotency_key_reused"

    def __init__(self, key: str, decision_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for decision {decision_id} with a "
            "different request; use a new key for a new request, or resend the original "
            "request unchanged to get its decision"
        )
        self.key = key
        self.decision_id = decision_id


class DecisionNotFound(L7Error):
    reason = "decision_not_found"

    def __init__(self, decision_id: str) -> None:
        super().__init__(f"no decision {decision_id!r} in the ledger; check the id")
        self.decision_id = decision_id


class PolicyStoreDegraded(L7Error):
    """OPA cannot give a trustworthy answer; the engine turns this into DENY."""

    reason = "policy_store_degraded"


class LedgerDegraded(L7Error):
    """The ledger did not confirm; nothing may be reported as allowed."""

    reason = "ledger_degraded"


class LedgerIntegrityFailed(L7Error):
    """The ledger holds an authority event no pinned tier key vouches for: nothing it
    would authorize is honoured, and restriction mode is entered."""

    reason = "ledger_integrity_failed"


class Unauthenticated(L7Error):
    """The caller's token is missing or does not verify; re-authenticate."""

    reason = "token_invalid"


class IdentityDegraded(L7Error):
    """The identity provider's keys cannot be fetched: approvals are refused."""

    reason = "identity_degraded"


class Forbidden(L7Error):
    """Authenticated, but this identity may not do this."""

    reason = "forbidden"


class ApprovalInvalid(L7Error):
    """A signed approval or rejection was refused; ``reason`` says why."""

    reason = "approval_invalid"


class IllegalTransition(L7Error):
    """The decision's current state does not allow the requested transition."""

    reason = "illegal_transition"

    def __init__(self, decision_id: str, current: str, wanted: str) -> None:
        super().__init__(
            f"decision {decision_id} is {current}; it cannot be {wanted} from that state"
        )
        self.decision_id = decision_id
        self.current = current


class GrantRefused(L7Error):
    """The gateway will not let this execution happen; ``reason`` says why."""

    reason = "grant_invalid"


class GatewayDegraded(L7Error):
    """Boundary B cannot reach what it needs to check a governed call: nothing runs."""

    reason = "gateway_degraded"
