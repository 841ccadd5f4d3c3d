"""Layer-7's tamper-evident, append-only decision ledger (DESIGN §4).

Public surface: the contract in ``ledger.interface`` (``LedgerClient`` and its
value types), the error tree in ``ledger.errors``, the SQL implementation
``SqlLedger`` / ``open_ledger`` (``ledger.store``, an ``AuditableLedger``), the
canonical bytes and chain hash (``ledger.canonical``), the pure verifier
(``ledger.verify``), the background ``Checkpointer`` / ``IntegrityMonitor``
(``ledger.checkpointer``) and the dual-write check ``verify_dual_write``
(``ledger.dualwrite``). Checkpoints, proofs, audit and export live in
``ledger.checkpoint``, ``ledger.merkle``, ``ledger.audit`` and ``ledger.export``.
This package never imports ``l7``.
"""

from __future__ import annotations

from ledger._writer import WriterStats
from ledger.canonical import canonical_body, chain_hash
from ledger.checkpointer import Checkpointer, IntegrityMonitor
from ledger.dualwrite import DualWriteReport, verify_dual_write
from ledger.errors import (
    DuplicateKey,
    IntegrityViolation,
    InvalidEvent,
    LedgerError,
    LedgerUnavailable,
    SchemaTampered,
    StaleHead,
)
from ledger.interface import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    AuditableLedger,
    Confirmation,
    EventHash,
    EventType,
    LedgerClient,
    NewEvent,
    ProgressFn,
    StoredEvent,
    VerifyReport,
)
from ledger.store import SqlLedger, open_ledger
from ledger.verify import VerifyRow, verify_file, verify_rows

__all__ = [
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "AuditableLedger",
    "Checkpointer",
    "Confirmation",
    "DualWriteReport",
    "DuplicateKey",
    "EventHash",
    "EventType",
    "IntegrityMonitor",
    "IntegrityViolation",
    "InvalidEvent",
    "LedgerClient",
    "LedgerError",
    "LedgerUnavailable",
    "NewEvent",
    "ProgressFn",
    "SchemaTampered",
    "SqlLedger",
    "StaleHead",
    "StoredEvent",
    "VerifyReport",
    "VerifyRow",
    "WriterStats",
    "canonical_body",
    "chain_hash",
    "open_ledger",
    "verify_dual_write",
    "verify_file",
    "verify_rows",
]
