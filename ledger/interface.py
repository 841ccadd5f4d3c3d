"""The ledger's public contract: value types and the client protocol.

The engine and the gateway talk to the ledger only through ``LedgerClient``,
whether the ledger runs in-process (``ledger.store.SqlLedger``) or, later, as
its own service behind gRPC. This package never imports ``l7``.

Event format (DESIGN §4). The hashed *body* of an event is the JSON object::

    {"event_id", "decision_id", "event_type", "schema_version",
     "policy_version", "actor", "payload", "unique_key", "timestamps": {"at"}}

canonicalized with RFC 8785 (JCS). Its integrity block is
``{sequence, prev_hash, hash, global_seq}`` with::

    hash = sha256( prev_hash_hex_ascii || JCS(body) )     (lower-case hex)

``prev_hash`` of the first event in a stream is ``GENESIS_HASH`` (64 zeros).
``sequence`` counts from 1 per decision stream; ``global_seq`` counts from 1
over the whole ledger with no gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO, NewType, Protocol

__all__ = [
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "Confirmation",
    "EventHash",
    "EventType",
    "LedgerClient",
    "NewEvent",
    "ProgressFn",
    "StoredEvent",
    "VerifyReport",
]

EventHash = NewType("EventHash", str)
GENESIS_HASH = EventHash("0" * 64)
SCHEMA_VERSION = 1

ProgressFn = Callable[[int, int], None]
"""progress(done, total) called during long scans."""


class EventType(str, Enum):
    """Closed set of event types the ledger accepts (DESIGN §4)."""

    POLICY_ACTIVATED = "policy.activated"
    DECISION_CREATED = "decision.created"
    DECISION_EVALUATED = "decision.evaluated"
    POLICY_GATE = "policy.gate"
    RISK_SCORED = "risk.scored"
    AUTHORITY_REQUIRED = "authority.required"
    APPROVAL_ADDED = "approval.added"
    APPROVAL_REJECTED = "approval.rejected"
    OVERRIDE_BREAKGLASS = "override.breakglass"
    BREAKGLASS_REVIEWED = "breakglass.reviewed"
    ENFORCEMENT_RESULT = "enforcement.result"
    EXECUTION_AUTHORIZED = "execution.authorized"
    EXECUTION_CONFIRMED = "execution.confirmed"
    DECISION_EXPIRED = "decision.expired"
    DECISION_CANCELLED = "decision.cancelled"
    AUTHORITY_ESCALATED = "authority.escalated"
    DELEGATION_GRANTED = "delegation.granted"
    KEY_REGISTERED = "key.registered"
    KEY_REVOKED = "key.revoked"
    LEDGER_ACCESSED = "ledger.accessed"
    LEDGER_ACCESSED_BREAKGLASS = "ledger.accessed.breakglass"
    """A raw read made under break-glass: its own type, so it is never lost among routine reads."""
    ANOMALY_DETECTED = "anomaly.detected"
    BATCH_ATTESTED = "batch.attested"
    """A tier's signature over the events it appended in one batch (``ledger.attestation``)."""


@dataclass(frozen=True)
class NewEvent:
    """An event as the caller proposes it; the ledger fills in the rest."""

    decision_id: str
    event_type: EventType
    actor: str
    policy_version: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    unique_key: str | None = None
    """If set, the ledger refuses a second event with the same key (DuplicateKey)."""


@dataclass(frozen=True)
class Confirmation:
    """What the ledger returns for each event it has durably committed."""

    event_id: str
    decision_id: str
    sequence: int
    global_seq: int
    hash: EventHash
    checkpoint: int = 0
    """Checkpoint reference: this event is covered by the first signed checkpoint whose
    ``tree_size >= global_seq``, so the ledger sets it to ``global_seq`` (0 = unknown, from
    a ledger that predates checkpoints)."""


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from the ledger."""

    event_id: str
    decision_id: str
    event_type: str
    schema_version: int
    policy_version: str
    actor: str
    payload: Mapping[str, Any]
    unique_key: str | None
    at: str
    sequence: int
    prev_hash: EventHash
    hash: EventHash
    global_seq: int


@dataclass(frozen=True)
class VerifyReport:
    """Result of a verification that passed (a failure raises IntegrityViolation)."""

    events: int
    streams: int
    last_global_seq: int
    head_hash: EventHash


class LedgerClient(Protocol):
    """How the engine and gateway use a ledger. Implementations are thread-safe."""

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        """Durably append a batch atomically: all events are confirmed, or none is.

        Raises DuplicateKey if any event's unique_key is taken (nothing is written),
        InvalidEvent for an event that cannot be canonicalized, LedgerUnavailable
        when the store cannot commit.
        """
        ...

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        """All events of one decision, in sequence order (empty if none)."""
        ...

    def find_by_unique_key(self, unique_key: str) -> StoredEvent | None:
        """The event holding ``unique_key``, or None."""
        ...

    def iter_events(self, *, after_global_seq: int = 0) -> Iterator[StoredEvent]:
        """Every event in global order, starting after ``after_global_seq``."""
        ...

    def count(self) -> int:
        """Number of events in the ledger."""
        ...

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        """Re-check every stream and the global sequence; raises IntegrityViolation."""
        ...

    def close(self) -> None:
        """Flush pending writes and release the store."""
        ...


class AuditableLedger(LedgerClient, Protocol):
    """What the ledger tier offers beyond append and read (DESIGN §4, issue #5).

    Implemented by ``SqlLedger`` (in-process) and by the gRPC client of the ledger
    service, so the engine, the gateway and the CLI use either the same way.
    Checkpoint, AuditReport and VerifyRow live in ``ledger.checkpoint``,
    ``ledger.audit`` and ``ledger.verify``.
    """

    def iter_rows(self, *, after_global_seq: int = 0) -> Iterator[tuple[object, ...]]:
        """Rows in global order as ``ledger.verify.VerifyRow`` tuples (for audit/export)."""
        ...

    def query(
        self,
        *,
        decision_id: str | None = None,
        event_type: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_global_seq: int = 0,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events matching every given filter, in global order, one page at a time."""
        ...

    def sign_checkpoint(self) -> Any:
        """Sign the next checkpoint of the chain (a C2SP note over the whole log) now; store
        it, have it cosigned by the configured witnesses, and return it (a Checkpoint)."""
        ...

    def checkpoints(self) -> list[Any]:
        """Every stored checkpoint, oldest first (Checkpoint values)."""
        ...

    def inclusion_proof(self, global_seq: int, tree_size: int) -> list[bytes]: ...

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]: ...

    def audit(self, progress: ProgressFn | None = None) -> Any:
        """verify + the Merkle tree against the stored checkpoint chain and its witness
        cosignatures (an AuditReport); raises IntegrityViolation."""
        ...

    def export(
        self, *, decision_ids: Sequence[str] = (), since: str | None = None
    ) -> dict[str, Any]:
        """The offline audit pack (``ledger.export.build_export``) for the selection,
        against the latest checkpoint (signing one first if the log has grown)."""
        ...

    def export_to(
        self, out: BinaryIO, *, decision_ids: Sequence[str] = (), since: str | None = None
    ) -> Any:
        """Write the same pack to ``out`` as JSON lines while it is read, in bounded memory
        (``ledger.export.PackWriter``); returns its ExportReport."""
        ...
