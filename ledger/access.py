"""Who may read what from the ledger service, and the record every raw read leaves.

The HOST authenticates callers: it passes a ``ReadAuthorizer`` to the service
(``ledger.service``), which turns the call's metadata into a ``Reader``. The
ledger knows no identity provider; Layer-7 backs the authorizer with its OIDC
verifier. The policy, per RPC (``access_for``):

    reader                  GetStream, Query            Export            Append, FindByUniqueKey
    ----------------------  --------------------------  ----------------  -----------------------
    breakglass (names one)  raw, recorded (breakglass)  as its roles*     if writer
    auditor, security       raw, recorded               raw, recorded     if writer
    raw-reader              raw, recorded               refused           if writer
    writer                  raw, not recorded (SERVICE) refused           allowed
    any other               summary                     refused           refused

    * a break-glass auditor's export is recorded with mode breakglass; the claim alone
      grants no export. A reader with several roles gets the first row that applies.

A break-glass reader names a break-glass (``x-l7-breakglass: <break-glass id>``); the
service answers only when ``ledger.breakglass.require_breakglass`` proves it open, in its
window, engine-signed, the caller's own and covering every decision read, else
``BreakGlassRefused``; the read is recorded as ``ledger.accessed.breakglass`` with the
break-glass id. Naming one is a claim: it never falls back to the reader's roles.

A *recorded* read first appends one ``ledger.accessed`` event (``access_event``)
to the reader's access stream ``ledger-access/<subject>`` and only then answers;
if that append fails, nothing is returned. It needs a reason in the metadata
``x-l7-reason``: a raw read without one is refused. ``writer`` is the engine's
and the gateway's service identity: they wrote those payloads and re-read them to
rebuild decision state on every call, so their reads are not recorded (every
state change they make is already an event). Verify, Count, checkpoints and proofs
carry no payloads: any authenticated reader may call them.

Errors: ``AccessDenied`` (not authenticated, or not permitted; ``BreakGlassRefused``, a
break-glass the ledger cannot prove, says why) and ``RequestInvalid`` (a malformed
request), all ``LedgerError``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Protocol

from ledger.errors import LedgerError
from ledger.interface import EventType, NewEvent

__all__ = [
    "ACCESS_STREAM_PREFIX",
    "BREAKGLASS_HEADER",
    "EXPORT_ROLES",
    "RAW_ROLES",
    "REASON_HEADER",
    "WRITER_ROLE",
    "AccessDenied",
    "AllowAll",
    "BreakGlassRefused",
    "ReadAuthorizer",
    "ReadMode",
    "Reader",
    "RequestInvalid",
    "StaticTokens",
    "access_event",
    "access_for",
    "reason_from",
    "require_role",
]

WRITER_ROLE = "writer"
RAW_ROLES = frozenset({"auditor", "security", "raw-reader"})
EXPORT_ROLES = frozenset({"auditor", "security"})
REASON_HEADER = "x-l7-reason"
BREAKGLASS_HEADER = "x-l7-breakglass"
ACCESS_STREAM_PREFIX = "ledger-access/"
MAX_REASON_CHARS = 1000


class AccessDenied(LedgerError):
    """The caller is not authenticated (``authenticated=False``) or not permitted."""

    def __init__(self, message: str, *, authenticated: bool = True) -> None:
        super().__init__(message)
        self.authenticated = authenticated


class BreakGlassRefused(AccessDenied):
    """A break-glass read the ledger cannot prove; ``why`` is machine-readable
    (``breakglass_unknown``, ``breakglass_unsigned``, ``breakglass_not_caller``,
    ``breakglass_closed``, ``breakglass_expired``, ``breakglass_out_of_scope``,
    ``breakglass_unverifiable``), ``breakglass_id`` the one named."""

    def __init__(self, why: str, breakglass_id: str, message: str) -> None:
        super().__init__(f"break-glass read refused ({why}): {message}")
        self.why = why
        self.breakglass_id = breakglass_id


class RequestInvalid(LedgerError):
    """A request to the ledger service is malformed; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Reader:
    """An authenticated caller of the ledger service."""

    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    breakglass: str | None = None
    """The break-glass the caller reads under (its id, from ``x-l7-breakglass``), or None.
    A claim only: the service proves it from the ledger before any break-glass read."""
    tier: str | None = None
    """The writer's tier (``engine``, ``gateway``, ``ledger``) as its identity proves it:
    what it may append and sign (``ledger.attestation.authorize_batch``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject:
            raise AccessDenied("a ledger reader needs a non-empty subject", authenticated=False)
        if self.breakglass is not None and (
            not isinstance(self.breakglass, str) or not 0 < len(self.breakglass) <= 200
        ):
            raise RequestInvalid(BREAKGLASS_HEADER, "names one break-glass id (1..200 chars)")


class ReadAuthorizer(Protocol):
    """Provided by the host: authenticate a call from its metadata.

    ``metadata`` holds the call's text metadata with lower-case keys (e.g.
    ``authorization``, ``x-l7-reason``); ``peer_cert_der`` is the verified client
    certificate when the call came over mTLS (for certificate-bound tokens, RFC 8705).
    Raise ``AccessDenied(..., authenticated=False)`` for missing or bad credentials,
    ``LedgerUnavailable`` when the identity provider cannot be reached. Must be thread-safe.
    """

    def authorize(
        self, metadata: Mapping[str, str], peer_cert_der: bytes | None = None
    ) -> Reader: ...


class AllowAll:
    """Authenticates every call as one fixed reader (in-process tests, local dev only).

    Default: subject ``local`` with role ``writer`` only, enough for the engine and the
    gateway; pass ``roles`` to test other views.
    """

    def __init__(
        self,
        *,
        subject: str = "local",
        roles: Collection[str] = (WRITER_ROLE,),
        breakglass: str | None = None,
        tier: str | None = None,
    ) -> None:
        self.reader = Reader(subject, frozenset(roles), breakglass, tier=tier)

    def authorize(self, metadata: Mapping[str, str], peer_cert_der: bytes | None = None) -> Reader:
        return self.reader


class StaticTokens:
    """Bearer tokens mapped to readers (a test helper): ``authorization: Bearer <token>``;
    an ``x-l7-breakglass`` header is passed on as the reader's break-glass claim."""

    def __init__(self, tokens: Mapping[str, Reader]) -> None:
        self._tokens = dict(tokens)

    def authorize(self, metadata: Mapping[str, str], peer_cert_der: bytes | None = None) -> Reader:
        header = metadata.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AccessDenied(
                "the ledger service needs 'authorization: Bearer <token>' metadata",
                authenticated=False,
            )
        reader = self._tokens.get(token.strip())
        if reader is None:
            raise AccessDenied("the bearer token is not known to the ledger", authenticated=False)
        claim = metadata.get(BREAKGLASS_HEADER, "").strip()
        return replace(reader, breakglass=claim) if claim else reader


class ReadMode(str, Enum):
    """How a read is answered."""

    SUMMARY = "summary"
    """No payloads, no unique keys; not recorded."""
    SERVICE = "service"
    """Everything, not recorded: the writer (engine, gateway) reading back its streams."""
    RAW = "raw"
    """Everything, recorded as ledger.accessed first."""
    BREAKGLASS = "breakglass"
    """Everything, recorded as ledger.accessed with mode breakglass first."""

    @property
    def payloads(self) -> bool:
        return self is not ReadMode.SUMMARY

    @property
    def recorded(self) -> bool:
        return self in (ReadMode.RAW, ReadMode.BREAKGLASS)


def require_role(reader: Reader, roles: Collection[str], what: str) -> None:
    """Refuse unless ``reader`` holds one of ``roles``."""
    if reader.roles.isdisjoint(roles):
        raise AccessDenied(
            f"{what} needs one of the roles {sorted(roles)}; {reader.subject} has "
            f"{sorted(reader.roles) or 'none'}"
        )


def reason_from(metadata: Mapping[str, str]) -> str | None:
    """The stated reason for a raw read (``x-l7-reason``), stripped; None if absent or blank."""
    reason = metadata.get(REASON_HEADER, "").strip()
    if len(reason) > MAX_REASON_CHARS:
        raise RequestInvalid(REASON_HEADER, f"is at most {MAX_REASON_CHARS} characters")
    return reason or None


def access_for(reader: Reader, rpc: str, reason: str | None) -> ReadMode:
    """The read mode for ``rpc`` (``GetStream``, ``Query`` or ``Export``); raises AccessDenied.

    A recorded mode needs ``reason``; Export is recorded or refused, never a summary.
    """
    if rpc == "Export":
        require_role(reader, EXPORT_ROLES, "Export")
        mode = ReadMode.BREAKGLASS if reader.breakglass is not None else ReadMode.RAW
    elif reader.breakglass is not None:
        mode = ReadMode.BREAKGLASS
    elif not reader.roles.isdisjoint(RAW_ROLES):
        mode = ReadMode.RAW
    elif WRITER_ROLE in reader.roles:
        mode = ReadMode.SERVICE
    else:
        mode = ReadMode.SUMMARY
    if mode.recorded and reason is None:
        raise AccessDenied(
            f"a {mode.value} read ({rpc}) is recorded in the ledger and needs a reason: "
            f"send metadata '{REASON_HEADER}: <ticket or purpose>'"
        )
    return mode


def access_event(
    reader: Reader, mode: ReadMode, rpc: str, what: Mapping[str, Any], reason: str
) -> NewEvent:
    """The event recording a raw read: who, what, why (time is ``at``). Break-glass reads
    are ``ledger.accessed.breakglass`` naming the break-glass (``breakglass_id``, proven by
    the service before this is written), routine raw reads ``ledger.accessed``."""
    if not mode.recorded:
        raise ValueError(f"a {mode.value} read is not recorded")
    kind = (
        EventType.LEDGER_ACCESSED_BREAKGLASS
        if mode is ReadMode.BREAKGLASS
        else EventType.LEDGER_ACCESSED
    )
    payload: dict[str, Any] = {
        "mode": mode.value,
        "breakglass": mode is ReadMode.BREAKGLASS,
        "subject": reader.subject,
        "roles": sorted(reader.roles),
        "rpc": rpc,
        "what": dict(what),
        "reason": reason,
    }
    if mode is ReadMode.BREAKGLASS:
        if reader.breakglass is None:
            raise ValueError("a break-glass read names its break-glass")
        payload["breakglass_id"] = reader.breakglass
    return NewEvent(
        decision_id=ACCESS_STREAM_PREFIX + reader.subject,
        event_type=kind,
        actor=reader.subject,
        policy_version="",
        payload=payload,
    )
