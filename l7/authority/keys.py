"""Approvers' public keys, registered and revoked as ledger events.

Each subject has its own stream ``keys/<subject>``. A registration is unique per
(subject, key_id) — enforced by the ledger's unique key, so two engines cannot both
register it — and a revocation is final. Only the public key is ever recorded.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from l7.errors import ApprovalInvalid, Forbidden, LedgerDegraded, RequestInvalid
from ledger import Confirmation, DuplicateKey, EventType, LedgerClient, LedgerError, NewEvent

__all__ = ["METHODS", "KeyRegistry", "RegisteredKey", "key_stream"]

METHODS = frozenset({"ed25519", "vault-transit"})
ED25519_PUBLIC_KEY_BYTES = 32
REGISTRAR_MIN_LEVEL = 4


def key_stream(subject: str) -> str:
    return f"keys/{subject}"


@dataclass(frozen=True)
class RegisteredKey:
    subject: str
    key_id: str
    method: str
    public_key: bytes
    registered_by: str
    revoked: bool
    revoked_at: str | None


class KeyRegistry:
    def __init__(self, ledger: LedgerClient) -> None:
        self.ledger = ledger

    def _append(self, event: NewEvent) -> Confirmation:
        try:
            return self.ledger.append([event])[0]
        except DuplicateKey:
            raise
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm the key change: {e}") from e

    def register(
        self, *, subject: str, key_id: str, method: str, public_key: bytes, by: str, by_level: int
    ) -> Confirmation:
        if by_level < REGISTRAR_MIN_LEVEL:
            raise Forbidden(
                f"registering approver keys needs level L{REGISTRAR_MIN_LEVEL}+ "
                f"(security); {by} is L{by_level}",
                reason="insufficient_level",
            )
        if not subject:
            raise RequestInvalid("subject", "is required")
        if not key_id or len(key_id) > 200:
            raise RequestInvalid("key_id", "is required (at most 200 characters)")
        if method not in METHODS:
            raise RequestInvalid("method", f"must be one of {sorted(METHODS)}, got {method!r}")
        if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
            raise RequestInvalid(
                "public_key",
                f"must be a raw Ed25519 public key of 32 bytes, got {len(public_key)} bytes",
            )
        event = NewEvent(
            key_stream(subject),
            EventType.KEY_REGISTERED,
            by,
            "",
            {
                "subject": subject,
                "key_id": key_id,
                "method": method,
                "public_key": base64.b64encode(public_key).decode("ascii"),
            },
            unique_key=f"key:{subject}:{key_id}",
        )
        try:
            return self._append(event)
        except DuplicateKey as e:
            raise RequestInvalid(
                "key_id", f"{key_id!r} is already registered for {subject}; use a new key id"
            ) from e

    def revoke(
        self, *, subject: str, key_id: str, reason: str, by: str, by_level: int
    ) -> Confirmation:
        if by_level < REGISTRAR_MIN_LEVEL and by != subject:
            raise Forbidden(
                f"revoking another subject's key needs L{REGISTRAR_MIN_LEVEL}+; "
                f"{by} is L{by_level}",
                reason="insufficient_level",
            )
        self.lookup(subject, key_id, allow_revoked=True)  # must exist
        event = NewEvent(
            key_stream(subject),
            EventType.KEY_REVOKED,
            by,
            "",
            {"subject": subject, "key_id": key_id, "reason": reason},
            unique_key=f"key-revoked:{subject}:{key_id}",
        )
        try:
            return self._append(event)
        except DuplicateKey as e:
            raise RequestInvalid("key_id", f"{key_id!r} of {subject} is already revoked") from e

    def lookup(self, subject: str, key_id: str, *, allow_revoked: bool = False) -> RegisteredKey:
        """The key, folded from the subject's stream; raises ApprovalInvalid if unusable."""
        try:
            events = self.ledger.get_stream(key_stream(subject))
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger could not be read: {e}") from e
        found: RegisteredKey | None = None
        for ev in events:
            p = ev.payload
            if p.get("key_id") != key_id:
                continue
            if ev.event_type == EventType.KEY_REGISTERED.value:
                found = RegisteredKey(
                    subject=subject,
                    key_id=key_id,
                    method=str(p["method"]),
                    public_key=base64.b64decode(p["public_key"]),
                    registered_by=ev.actor,
                    revoked=False,
                    revoked_at=None,
                )
            elif ev.event_type == EventType.KEY_REVOKED.value and found is not None:
                found = RegisteredKey(
                    found.subject,
                    key_id,
                    found.method,
                    found.public_key,
                    found.registered_by,
                    revoked=True,
                    revoked_at=ev.at,
                )
        if found is None:
            raise ApprovalInvalid(
                f"no key {key_id!r} is registered for {subject}; ask security (L4) to run "
                "'l7 keys register'",
                reason="key_unknown",
            )
        if found.revoked and not allow_revoked:
            raise ApprovalInvalid(
                f"key {key_id!r} of {subject} was revoked at {found.revoked_at}; approvals "
                "submitted after a revocation are refused — register a new key",
                reason="key_revoked",
            )
        return found
