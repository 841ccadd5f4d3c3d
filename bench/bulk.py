"""A large, well-formed ledger made fast: rows inserted in bulk into a throwaway SQLite file.

Every row is what ``SqlLedger.append`` would have written (``ledger.canonical`` bodies,
``chain_hash`` links, gap-free ``global_seq``, consecutive ``sequence`` per stream), so
verification, checkpoints and exports treat it as a real log; only the writer thread
and the tier attestations are skipped (this is a read-path benchmark, not an engine's
log). Streams are interleaved round-robin, ``per_stream`` events each.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ledger import GENESIS_HASH, SqlLedger
from ledger.canonical import canonical_body, chain_hash
from ledger.checkpoint import Ed25519CheckpointSigner
from ledger.interface import EventHash

__all__ = ["bulk_ledger"]

_COLS = (
    "global_seq, event_id, decision_id, sequence, event_type, at, actor, policy_version, "
    "unique_key, prev_hash, hash, body"
)


def bulk_ledger(
    path: Path, events: int, signer: Ed25519CheckpointSigner, *, per_stream: int = 10
) -> str:
    """Create ``path`` with ``events`` events and one signed checkpoint over them; returns
    the ledger URL. Memory: one batch of rows plus the stream heads."""
    url = f"sqlite:///{path}"
    SqlLedger(url, checkpoint_every_s=0).close()  # schema, walls and file modes
    streams = max(1, events // per_stream)
    heads: list[tuple[int, EventHash]] = [(0, EventHash(GENESIS_HASH))] * streams
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    batch: list[tuple[object, ...]] = []
    for g in range(1, events + 1):
        s = (g - 1) % streams
        seq, prev = heads[s]
        seq += 1
        did = f"dec-{s:07d}"
        eid = f"ev-{g:09d}"
        at = f"2025-01-01T00:{(g // 60_000) % 60:02d}:{(g // 1000) % 60:02d}.{g % 1_000_000:06d}Z"
        payload = {"gate": "bench.read", "n": g, "note": "bounded export " * 8}
        body = canonical_body(
            event_id=eid,
            decision_id=did,
            event_type="policy.gate",
            policy_version="bench",
            actor="bench",
            payload=payload,
            unique_key=None,
            at=at,
        )
        h = chain_hash(prev, body)
        heads[s] = (seq, h)
        batch.append(
            (g, eid, did, seq, "policy.gate", at, "bench", "bench", None, prev, h, body.decode())
        )
        if len(batch) >= 20_000:
            db.executemany(f"INSERT INTO events ({_COLS}) VALUES ({','.join('?' * 12)})", batch)
            db.commit()
            batch.clear()
    if batch:
        db.executemany(f"INSERT INTO events ({_COLS}) VALUES ({','.join('?' * 12)})", batch)
        db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with SqlLedger(url, create=False, checkpoint_signer=signer, checkpoint_every_s=0) as led:
        led.sign_checkpoint()
    return url
