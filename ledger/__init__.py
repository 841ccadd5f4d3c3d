"""Layer-7's tamper-evident, append-only decision ledger (DESIGN §4).

Public surface: the contract in ``ledger.interface`` (``LedgerClient`` and its
value types), the error tree in ``ledger.errors``, the SQL implementation
``SqlLedger`` / ``open_ledger`` (``ledger.store``), the canonical bytes and
chain hash (``ledger.canonical``) and the pure verifier (``ledger.verify``).
This package never imports ``l7``.
"""

from __future__ import annotations

from ledger._writer import WriterStats
from ledger.canonical import canonical_body, chain_hash
from ledger.errors import (
    DuplicateKey,
    IntegrityViolation,
    InvalidEvent,
    LedgerError,
    LedgerUnavailable,
)
from ledger.interface import (
    GENESIS_HASH,
    SCHEMA_VERSION,
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
    "Confirmation",
    "DuplicateKey",
    "EventHash",
    "EventType",
    "IntegrityViolation",
    "InvalidEvent",
    "LedgerClient",
    "LedgerError",
    "LedgerUnavailable",
    "NewEvent",
    "ProgressFn",
    "SqlLedger",
    "StoredEvent",
    "VerifyReport",
    "VerifyRow",
    "WriterStats",
    "canonical_body",
    "chain_hash",
    "open_ledger",
    "verify_file",
    "verify_rows",
]
