"""What an insider with write access to the ledger database can do: INSERT a well-formed,
well-hashed event (correct sequence, prev_hash, hash and global_seq) without touching a
trigger. The append-only triggers allow INSERT, so the application role is enough."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, text

from ledger import GENESIS_HASH, EventHash, canonical_body, chain_hash

__all__ = ["forge_event"]


def forge_event(
    url: str,
    decision_id: str,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    actor: str = "l7-engine",
    policy_version: str = "",
    unique_key: str | None = None,
) -> int:
    """Append one forged event at the end of ``decision_id``'s stream with a plain INSERT;
    returns its global_seq. Everything a hash-chain verifier checks is consistent."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            head = conn.execute(
                text(
                    "SELECT sequence, hash FROM events WHERE decision_id = :d "
                    "ORDER BY sequence DESC LIMIT 1"
                ),
                {"d": decision_id},
            ).first()
            seq, prev = (int(head[0]), EventHash(head[1])) if head else (0, GENESIS_HASH)
            g = int(conn.execute(text("SELECT COALESCE(MAX(global_seq), 0) FROM events")).scalar())
            event_id = str(uuid.uuid4())
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = canonical_body(
                event_id=event_id,
                decision_id=decision_id,
                event_type=event_type,
                policy_version=policy_version,
                actor=actor,
                payload=payload,
                unique_key=unique_key,
                at=at,
            )
            conn.execute(
                text(
                    "INSERT INTO events (global_seq, event_id, decision_id, sequence, "
                    "event_type, at, actor, policy_version, unique_key, prev_hash, hash, body) "
                    "VALUES (:g, :eid, :d, :s, :t, :at, :a, :pv, :uk, :prev, :h, :body)"
                ),
                {
                    "g": g + 1,
                    "eid": event_id,
                    "d": decision_id,
                    "s": seq + 1,
                    "t": event_type,
                    "at": at,
                    "a": actor,
                    "pv": policy_version,
                    "uk": unique_key,
                    "prev": prev,
                    "h": chain_hash(prev, body),
                    "body": body.decode("utf-8"),
                },
            )
            return g + 1
    finally:
        eng.dispose()
