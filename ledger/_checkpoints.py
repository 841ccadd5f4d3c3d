"""The checkpoint chain and its cosignatures in the database, and the witnesses (SqlLedger's).

``CheckpointLog`` reads and appends ``checkpoint_notes`` and ``cosignatures``
(revision 0003) and submits checkpoints to witnesses (``ledger.witness_client``). A
stored row's index columns (``idx``, ``tree_size``, ``root_hash``) must agree with its
note, or the row is reported (``checkpoint_body_mismatch``): the note is the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ledger._engine import write_lock
from ledger.checkpoint import Checkpoint
from ledger.errors import IntegrityViolation, LedgerUnavailable, WitnessRefused
from ledger.merkle import ProofInvalid
from ledger.models import checkpoint_notes_table, cosignatures_table
from ledger.note import Cosignature
from ledger.witness_client import WitnessClient

__all__ = ["CheckpointLog"]

log = logging.getLogger(__name__)

_N = checkpoint_notes_table.c
_S = cosignatures_table.c


def _violation(what: str, tree_size: int, expected: str, actual: str) -> IntegrityViolation:
    return IntegrityViolation(
        what, decision_id="-", sequence=0, global_seq=tree_size, expected=expected, actual=actual
    )


def _checkpoint(row: Any) -> Checkpoint:
    idx, size, root_hash, note = row
    try:
        cp = Checkpoint.decode(note)
    except ProofInvalid as e:
        raise _violation(
            "checkpoint_malformed",
            int(size),
            f"a well-formed checkpoint note (index {idx})",
            str(e),
        ) from e
    if (cp.index, cp.tree_size, cp.root_hash) != (int(idx), int(size), root_hash):
        raise _violation(
            "checkpoint_body_mismatch",
            cp.tree_size,
            f"columns (idx {cp.index}, tree_size {cp.tree_size}, root {cp.root_hash}) from "
            "the signed note",
            f"idx {idx}, tree_size {size}, root {root_hash}",
        )
    return cp


class CheckpointLog:
    def __init__(
        self,
        *,
        read: Callable[[Any], list[Any]],
        wengine: Engine,
        db_errors: Callable[[], AbstractContextManager[None]],
        witnesses: Sequence[WitnessClient] = (),
        busy_timeout_s: float = 2.0,
    ) -> None:
        self._read = read
        self._busy_timeout_s = busy_timeout_s
        self._wengine = wengine
        self._db_errors = db_errors
        self.witnesses = list(witnesses)
        self.witness_errors: dict[str, str] = {}
        """The last error per witness (cleared by its next cosignature)."""

    def checkpoints(self) -> list[Checkpoint]:
        """The whole chain as stored, by index (IntegrityViolation for a malformed row)."""
        rows = self._read(select(_N.idx, _N.tree_size, _N.root_hash, _N.note).order_by(_N.idx))
        return [_checkpoint(r) for r in rows]

    def latest(self) -> Checkpoint | None:
        rows = self._read(
            select(_N.idx, _N.tree_size, _N.root_hash, _N.note).order_by(_N.idx.desc()).limit(1)
        )
        return _checkpoint(rows[0]) if rows else None

    def cosignatures(self) -> dict[int, list[Cosignature]]:
        """Every stored cosignature per checkpoint index (parsed, not verified)."""
        out: dict[int, list[Cosignature]] = {}
        for idx, witness, line in self._read(
            select(_S.idx, _S.witness, _S.line).order_by(_S.idx, _S.witness)
        ):
            try:
                c = Cosignature.parse_line(line)
            except ProofInvalid as e:
                raise _violation(
                    "cosignature_malformed",
                    0,
                    f"a cosignature/v1 line for checkpoint {idx} by {witness}",
                    str(e),
                ) from e
            if c.key_id != witness:
                raise _violation(
                    "cosignature_malformed",
                    0,
                    f"a cosignature by {witness} (column) for checkpoint {idx}",
                    f"one by {c.key_id}",
                )
            out.setdefault(int(idx), []).append(c)
        return out

    def append(self, cp: Checkpoint, prev: Checkpoint | None) -> bool:
        """Store ``cp`` if the chain still ends at ``prev``; False if it moved meanwhile."""
        with self._db_errors(), self._wengine.connect() as conn, conn.begin():
            write_lock(conn, self._busy_timeout_s)
            top = conn.execute(select(func.max(_N.idx))).scalar()
            if (top is None and prev is not None) or (
                top is not None and (prev is None or int(top) != prev.index)
            ):
                return False
            conn.execute(
                checkpoint_notes_table.insert(),
                [
                    {
                        "idx": cp.index,
                        "tree_size": cp.tree_size,
                        "root_hash": cp.root_hash,
                        "note": cp.note,
                    }
                ],
            )
        return True

    def _store_cosignature(self, cp: Checkpoint, cosig: Cosignature) -> None:
        with self._db_errors(), self._wengine.connect() as conn, conn.begin():
            found = conn.execute(
                select(_S.line).where(_S.idx == cp.index, _S.witness == cosig.key_id)
            ).first()
            if found is None:
                conn.execute(
                    cosignatures_table.insert(),
                    [{"idx": cp.index, "witness": cosig.key_id, "line": cosig.line().rstrip("\n")}],
                )

    def witness(
        self, cp: Checkpoint, proof: Callable[[int, int], list[bytes]]
    ) -> list[Cosignature]:
        """Send ``cp`` to every witness; store and return the cosignatures obtained. A
        refusal is logged as an ERROR (it means the log is inconsistent with what the
        witness saw); an unreachable witness as a WARNING. Neither raises."""
        got: list[Cosignature] = []
        for client in self.witnesses:
            try:
                cosig = client.add_checkpoint(cp, proof)
                self._store_cosignature(cp, cosig)
            except WitnessRefused as e:
                if self.witness_errors.get(client.name) != str(e):  # once per distinct reason
                    log.error(  # noqa: TRY400 - a refusal, not a crash: no traceback
                        "checkpoint %d (tree_size %d) NOT cosigned: %s", cp.index, cp.tree_size, e
                    )
                self.witness_errors[client.name] = str(e)
                continue
            except LedgerUnavailable as e:
                if client.name not in self.witness_errors:
                    log.warning("checkpoint %d not cosigned (witness unavailable): %s", cp.index, e)
                self.witness_errors[client.name] = str(e)
                continue
            self.witness_errors.pop(client.name, None)
            got.append(cosig)
        return got
