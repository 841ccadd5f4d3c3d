"""Errors raised by the ledger package.

    LedgerError                    base; never raised directly
    ├── LedgerUnavailable          the store cannot be written or read now (locked, down, closed)
    │   └── SchemaTampered         an append-only trigger or a role privilege is not as migrated
    ├── InvalidEvent               an event cannot enter the ledger (not JSON, NaN, unknown type)
    ├── DuplicateKey               an event's unique_key (idempotency key, nonce, grant id) is taken
    ├── StaleHead                  a signed batch names a stream head that moved: sign again
    ├── IntegrityViolation         verification found an edited, missing, inserted or moved event
    ├── WitnessRefused             a witness refused to cosign a checkpoint (rewind, fork, proof)
    └── ReadLimited                a costly read (Verify) over the caller's or the service's budget

``WitnessUnavailable`` (a LedgerUnavailable) is a witness that cannot be reached.
``ProofInvalid`` (``ledger.merkle``) is malformed or non-verifying evidence.

Database driver exceptions (SQLAlchemy / sqlite3 / psycopg / Alembic) are
translated into these in exactly one place, ``ledger._dberrors``, with
``raise ... from e``.
"""

from __future__ import annotations

__all__ = [
    "DuplicateKey",
    "IntegrityViolation",
    "InvalidEvent",
    "LedgerError",
    "LedgerUnavailable",
    "ReadLimited",
    "SchemaTampered",
    "StaleHead",
    "WitnessRefused",
    "WitnessUnavailable",
]


class LedgerError(Exception):
    """Base of every error the ledger raises."""


class LedgerUnavailable(LedgerError):
    """The ledger store could not confirm a write or answer a read.

    Callers must treat this as "nothing happened": an event that was not
    confirmed is not in the ledger.
    """


class SchemaTampered(LedgerUnavailable):
    """The database's append-only walls are not as migrated: a trigger is missing, disabled
    or changed, or a runtime role holds a privilege it must not. The ledger refuses to
    serve until the owner restores them (the message names the trigger or privilege)."""


class InvalidEvent(LedgerError):
    """An event was refused before it reached the store."""


class DuplicateKey(LedgerError):
    """An event carried a ``unique_key`` that an earlier event already holds."""

    def __init__(self, unique_key: str) -> None:
        super().__init__(
            f"unique key {unique_key!r} is already recorded in the ledger; "
            "it can be used once only (idempotency key, approval nonce or grant id)"
        )
        self.unique_key = unique_key


class StaleHead(LedgerError):
    """A batch's attestation (``ledger.attestation``) was signed for a stream head that
    has moved since: nothing was written; read the head, sign again and retry."""


class IntegrityViolation(LedgerError):
    """Verification found the ledger altered.

    ``what`` is a short machine-readable kind (``hash_mismatch``, ``chain_break``,
    ``sequence_gap``, ``global_gap``, ``global_order``, ``body_mismatch``);
    the message names the event by decision id, stream sequence and global
    sequence, with the expected and actual values.
    """

    def __init__(
        self,
        what: str,
        *,
        decision_id: str,
        sequence: int,
        global_seq: int,
        expected: str,
        actual: str,
    ) -> None:
        super().__init__(
            f"ledger integrity violation ({what}) at decision {decision_id} "
            f"sequence {sequence} (global_seq {global_seq}): expected {expected}, found {actual}"
        )
        self.what = what
        self.decision_id = decision_id
        self.sequence = sequence
        self.global_seq = global_seq
        self.expected = expected
        self.actual = actual


class WitnessUnavailable(LedgerUnavailable):
    """A witness could not be reached or answered nonsense; the checkpoint stays uncosigned."""


class WitnessRefused(LedgerError):
    """A witness refused to cosign: ``status`` is its HTTP status, ``reason`` says why."""

    def __init__(self, witness: str, status: int, reason: str) -> None:
        super().__init__(f"witness {witness} refused the checkpoint (HTTP {status}): {reason}")
        self.witness = witness
        self.status = status
        self.reason = reason


class ReadLimited(LedgerError):
    """A costly read (a full Verify) is over the caller's or the service's budget; try
    again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
