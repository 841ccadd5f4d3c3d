"""The signed approval (or rejection): its payload, its JSON edge, and its verification.

Signed bytes are ``canonical(to_signed_dict())``::

    {"type": "l7.approval", "version": 1,
     "decision_id": str, "intent_hash": "sha256:<64 hex>", "verdict": "approve"|"reject",
     "approver": str (the token subject), "issued_at": int, "expires_at": int (unix s),
     "nonce": str (base64url, unpadded, >= 128 bits), "key_id": str,
     "rationale": null | {"summary": str, "ticket": str|null, "risk_accepted": str|null}}

Every field is always present (optional ones as ``null``), so the JSON a client signs
and the dict rebuilt here from the parsed fields are the same object. Unknown fields,
missing fields and wrong types are refused (``approval_malformed``), naming the field.
Nonce uniqueness, key registration/revocation, roles and quorum are the caller's checks.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from l7.crypto import SignatureMethod, Signer, canonical, sha256_hex, verify_signature
from l7.errors import ApprovalInvalid, ConfigError

__all__ = [
    "APPROVAL_TYPE",
    "APPROVAL_VERSION",
    "ApprovalPayload",
    "Rationale",
    "SignedApproval",
    "Verdict",
    "payload_hash",
    "sign_approval",
    "verify_approval",
]

APPROVAL_TYPE = "l7.approval"
APPROVAL_VERSION = 1
NONCE_BYTES = 24  # 192 bits; at least 16 bytes (128 bits) are required on the way in
_MIN_NONCE_BYTES = 16
_MAX_NONCE_BYTES = 64
_MAX_ID = 256
_MAX_TEXT = 4000
_MAX_INT = 2**53 - 1  # the largest integer JCS (I-JSON) represents exactly
_INTENT_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_PAYLOAD_FIELDS = (
    "type",
    "version",
    "decision_id",
    "intent_hash",
    "verdict",
    "approver",
    "issued_at",
    "expires_at",
    "nonce",
    "rationale",
    "key_id",
)
_RATIONALE_FIELDS = ("summary", "ticket", "risk_accepted")
_SIGNED_FIELDS = ("payload", "method", "signature")


class Verdict(str, Enum):
    APPROVE = "approve"
    REJECT = "reject"


def _malformed(field: str, problem: str) -> ApprovalInvalid:
    return ApprovalInvalid(f"approval {field}: {problem}", reason="approval_malformed")


def _check_str(field: str, value: object, *, max_len: int = _MAX_ID) -> str:
    if not isinstance(value, str):
        raise _malformed(field, f"expected a string, got {type(value).__name__}")
    if not value.strip() or len(value) > max_len:
        raise _malformed(field, f"must be non-blank and at most {max_len} characters")
    return value


def _check_opt_str(field: str, value: object, *, max_len: int) -> str | None:
    return None if value is None else _check_str(field, value, max_len=max_len)


def _check_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(field, f"expected an integer (unix seconds), got {type(value).__name__}")
    if not 0 <= value <= _MAX_INT:
        raise _malformed(field, f"must be between 0 and {_MAX_INT}, got {value}")
    return value


def _check_fields(field: str, obj: object, expected: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _malformed(field, f"expected an object, got {type(obj).__name__}")
    for k in obj:
        if k not in expected:
            raise _malformed(f"{field}.{k}", f"unknown field; expected only {list(expected)}")
    for k in expected:
        if k not in obj:
            raise _malformed(f"{field}.{k}", "is required (use null for an absent optional value)")
    return obj


@dataclass(frozen=True)
class Rationale:
    """Why an approver accepted the risk (required for high and critical bands).

    ``summary``: free text, the reason in the approver's words; ``ticket``: a change or
    incident reference (e.g. ``CHG-1234``); ``risk_accepted``: which residual risk the
    approver explicitly accepts.
    """

    summary: str
    ticket: str | None = None
    risk_accepted: str | None = None

    def __post_init__(self) -> None:
        _check_str("payload.rationale.summary", self.summary, max_len=_MAX_TEXT)
        _check_opt_str("payload.rationale.ticket", self.ticket, max_len=_MAX_ID)
        _check_opt_str("payload.rationale.risk_accepted", self.risk_accepted, max_len=_MAX_TEXT)

    def to_dict(self) -> dict[str, str | None]:
        return {"summary": self.summary, "ticket": self.ticket, "risk_accepted": self.risk_accepted}

    @classmethod
    def from_dict(cls, obj: object) -> Rationale:
        d = _check_fields("payload.rationale", obj, _RATIONALE_FIELDS)
        return cls(d["summary"], d["ticket"], d["risk_accepted"])


@dataclass(frozen=True)
class ApprovalPayload:
    """The signed fields. Construction validates them, so an instance is well-formed."""

    decision_id: str
    intent_hash: str
    verdict: Verdict
    approver: str
    issued_at: int
    expires_at: int
    nonce: str
    rationale: Rationale | None
    key_id: str

    def __post_init__(self) -> None:
        _check_str("payload.decision_id", self.decision_id)
        if not isinstance(self.intent_hash, str) or not _INTENT_HASH.fullmatch(self.intent_hash):
            raise _malformed("payload.intent_hash", "must be 'sha256:' followed by 64 hex digits")
        if not isinstance(self.verdict, Verdict):
            raise _malformed("payload.verdict", f"must be one of {[v.value for v in Verdict]}")
        _check_str("payload.approver", self.approver)
        _check_int("payload.issued_at", self.issued_at)
        _check_int("payload.expires_at", self.expires_at)
        if self.expires_at <= self.issued_at:
            raise _malformed("payload.expires_at", "must be after issued_at")
        _check_nonce(self.nonce)
        if self.rationale is not None and not isinstance(self.rationale, Rationale):
            raise _malformed("payload.rationale", "must be null or a rationale object")
        _check_str("payload.key_id", self.key_id)

    @classmethod
    def new(
        cls,
        decision_id: str,
        intent_hash: str,
        verdict: Verdict,
        approver: str,
        key_id: str,
        *,
        ttl_s: int,
        now: int,
        rationale: Rationale | None = None,
    ) -> ApprovalPayload:
        """A fresh payload issued at ``now``, valid ``ttl_s`` seconds, with a random nonce."""
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(NONCE_BYTES)).decode().rstrip("=")
        return cls(
            decision_id, intent_hash, verdict, approver, now, now + ttl_s, nonce, rationale, key_id
        )

    def to_signed_dict(self) -> dict[str, Any]:
        return {
            "type": APPROVAL_TYPE,
            "version": APPROVAL_VERSION,
            "decision_id": self.decision_id,
            "intent_hash": self.intent_hash,
            "verdict": self.verdict.value,
            "approver": self.approver,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "nonce": self.nonce,
            "rationale": self.rationale.to_dict() if self.rationale else None,
            "key_id": self.key_id,
        }

    def signing_bytes(self) -> bytes:
        return canonical(self.to_signed_dict())

    @classmethod
    def from_dict(cls, obj: object) -> ApprovalPayload:
        d = _check_fields("payload", obj, _PAYLOAD_FIELDS)
        if d["type"] != APPROVAL_TYPE:
            raise _malformed("payload.type", f"expected {APPROVAL_TYPE!r}, got {d['type']!r}")
        version = d["version"]
        if isinstance(version, bool) or version != APPROVAL_VERSION:
            raise _malformed("payload.version", f"expected {APPROVAL_VERSION}, got {version!r}")
        verdict = d["verdict"]
        if verdict not in [v.value for v in Verdict] or not isinstance(verdict, str):
            raise _malformed("payload.verdict", f"expected 'approve' or 'reject', got {verdict!r}")
        rationale = d["rationale"]
        return cls(
            decision_id=d["decision_id"],
            intent_hash=d["intent_hash"],
            verdict=Verdict(verdict),
            approver=d["approver"],
            issued_at=d["issued_at"],
            expires_at=d["expires_at"],
            nonce=d["nonce"],
            rationale=None if rationale is None else Rationale.from_dict(rationale),
            key_id=d["key_id"],
        )


def _check_nonce(nonce: object) -> None:
    if not isinstance(nonce, str) or not _B64URL.fullmatch(nonce) or len(nonce) % 4 == 1:
        raise _malformed("payload.nonce", "must be unpadded base64url")
    size = len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
    if not _MIN_NONCE_BYTES <= size <= _MAX_NONCE_BYTES:
        raise _malformed(
            "payload.nonce",
            f"must carry {_MIN_NONCE_BYTES}-{_MAX_NONCE_BYTES} random bytes, got {size}",
        )


@dataclass(frozen=True)
class SignedApproval:
    payload: ApprovalPayload
    method: SignatureMethod
    signature: str

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": self.payload.to_signed_dict(),
            "method": self.method.value,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, obj: object) -> SignedApproval:
        """Parse ``{"payload": {...}, "method": str, "signature": str}`` strictly."""
        d = _check_fields("approval", obj, _SIGNED_FIELDS)
        method = d["method"]
        if not isinstance(method, str) or method not in [m.value for m in SignatureMethod]:
            raise _malformed(
                "method", f"expected one of {[m.value for m in SignatureMethod]}, got {method!r}"
            )
        signature = _check_str("signature", d["signature"], max_len=512)
        return cls(ApprovalPayload.from_dict(d["payload"]), SignatureMethod(method), signature)


def sign_approval(payload: ApprovalPayload, signer: Signer) -> SignedApproval:
    if payload.key_id != signer.key_id:
        raise ConfigError(
            f"the payload names key {payload.key_id!r} but the signer holds {signer.key_id!r}"
        )
    return SignedApproval(payload, signer.method, signer.sign(payload.signing_bytes()))


def payload_hash(payload: ApprovalPayload) -> str:
    """Hex sha256 of the signing bytes: what the ledger keeps to identify the payload."""
    return sha256_hex(payload.signing_bytes())


def verify_approval(
    signed: SignedApproval,
    *,
    public_key_raw: bytes,
    expected_decision_id: str,
    expected_intent_hash: str,
    expected_approver: str,
    now: int,
    max_ttl_s: int = 3600,
    clock_skew_s: int = 30,
) -> ApprovalPayload:
    """Return the payload once every check below holds; raise ``ApprovalInvalid`` otherwise."""
    p = signed.payload
    # 1. The signature covers exactly these signed bytes, by the registered key.
    verify_signature(signed.method, public_key_raw, p.signing_bytes(), signed.signature)
    # 2. The key holder is the authenticated caller (the token's subject).
    if p.approver != expected_approver:
        raise ApprovalInvalid(
            f"the approval is signed as {p.approver!r} but submitted by {expected_approver!r}; "
            "sign with your own identity",
            reason="signer_mismatch",
        )
    # 3. It is for this decision ...
    if p.decision_id != expected_decision_id:
        raise ApprovalInvalid(
            f"the approval is for decision {p.decision_id!r}, not {expected_decision_id!r}",
            reason="decision_mismatch",
        )
    # 4. ... and for this exact action.
    if p.intent_hash != expected_intent_hash:
        raise ApprovalInvalid(
            f"the approval binds intent {p.intent_hash}, the decision's action is "
            f"{expected_intent_hash}; re-read the decision and sign its current intent hash",
            reason="intent_mismatch",
        )
    # 5. It is inside its validity window, and that window is not longer than allowed.
    if p.issued_at > now + clock_skew_s:
        raise ApprovalInvalid(
            f"the approval is issued at {p.issued_at}, {p.issued_at - now}s in the future "
            f"(allowed skew {clock_skew_s}s); check the signer's clock",
            reason="approval_not_yet_valid",
        )
    if p.expires_at <= now:
        raise ApprovalInvalid(
            f"the approval expired at {p.expires_at} (now {now}); sign a fresh one",
            reason="approval_expired",
        )
    if p.expires_at - p.issued_at > max_ttl_s:
        raise ApprovalInvalid(
            f"the approval is valid for {p.expires_at - p.issued_at}s; at most {max_ttl_s}s "
            "is accepted",
            reason="approval_ttl_too_long",
        )
    return p
