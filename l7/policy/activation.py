"""The anti-rollback floor, read from the ledger (issue #12, item 5; docs/0010).

Every activation of a signed bundle revision is a ``policy.activated`` event in the
ledger stream ``policy/<env>``. That history, not a local file, decides whether a
revision may start:

    1. read the env's policy.activated events (Query API, one indexed read per page)
       through ``_activation_history`` -- the single place a signature filter applies
    2. compare with the local cache ``<work_dir>/activations/<env>.json``; a missing,
       damaged or different cache is logged, and the ledger wins
    3. refuse a rollback (a revision activated before that is not the newest ever
       activated) unless ``allow_rollback``; the payload names the true previous revision
    4. append the event with unique key ``policy.activated:<env>:<n>`` (n = its position
       in the history), so two replicas activating at once cannot both append position n:
       the loser re-reads and judges again
    5. rewrite the cache from the ledger's history

Deleting or editing the cache therefore changes nothing: the next start rebuilds it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from l7.errors import BundleError, LedgerDegraded
from l7.ledger_query import query_all, queryable
from l7.policy.bundle import (
    Activation,
    BuiltBundle,
    activation_from_record,
    activation_record,
    activations_path,
    newest_revision,
    read_activations,
    write_activations,
)
from ledger import DuplicateKey, EventType, LedgerClient, NewEvent, StoredEvent

__all__ = [
    "ACTIVATION_ACTOR",
    "activate_recorded",
    "activation_stream",
    "ledger_activations",
]

log = logging.getLogger(__name__)

ACTIVATION_ACTOR = "l7-engine"
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_ATTEMPTS = 5


def activation_stream(env: str) -> str:
    """The ledger stream holding ``env``'s policy.activated events."""
    return f"policy/{env}"


def _activation_history(ledger: LedgerClient, env: str) -> list[StoredEvent]:
    """Every ``policy.activated`` event of ``env``, oldest first: the floor's only input.

    This is the one function the floor reads the ledger through. Given the engine's
    ``SignedLedger`` (as ``Stack`` does), every event it returns was checked to be signed
    by the engine tier: a forged ``policy.activated`` raises ``LedgerIntegrityFailed``
    instead of moving the floor (docs/0012)."""
    return list(
        query_all(
            queryable(ledger),
            event_type=EventType.POLICY_ACTIVATED,
            decision_id=activation_stream(env),
        )
    )


def _hex64(p: Any, key: str, e: StoredEvent) -> str:
    v = p.get(key)
    if not isinstance(v, str) or not _HEX64_RE.match(v):
        raise BundleError(
            f"policy.activated at global_seq {e.global_seq} ({e.decision_id}) has {key}="
            f"{v!r}, expected 64 lowercase hex digits; the anti-rollback history in the "
            "ledger is unreadable, so nothing is activated: investigate that event"
        )
    return v


def _from_event(e: StoredEvent, env: str) -> Activation:
    p = e.payload
    if p.get("env") != env:
        raise BundleError(
            f"policy.activated at global_seq {e.global_seq} in {e.decision_id} names env "
            f"{p.get('env')!r}, expected {env!r}; investigate that event"
        )
    return activation_from_record(
        {**p, "revision": _hex64(p, "revision", e), "bundle_sha256": _hex64(p, "bundle_sha256", e)},
        e.at,
    )


def ledger_activations(ledger: LedgerClient, env: str) -> tuple[Activation, ...]:
    """``env``'s activation history as the ledger records it (oldest first)."""
    return tuple(_from_event(e, env) for e in _activation_history(ledger, env))


def _sync_cache(env: str, work_dir: Path, history: Sequence[Activation]) -> None:
    """Log when the local cache is not the ledger's history, and rewrite it from the ledger."""
    path = activations_path(env, work_dir)
    try:
        cached = read_activations(env, work_dir)
    except BundleError as e:
        log.warning("activation cache %s is damaged (%s); rebuilding it from the ledger", path, e)
        write_activations(env, work_dir, history)
        return
    want = [a.revision for a in history]
    got = [a.revision for a in cached]
    if want == got:
        return
    if not path.exists():  # a fresh work dir (or a deleted cache): nothing to disagree with
        log.info("no activation cache at %s; writing the ledger's history for %r", path, env)
        write_activations(env, work_dir, history)
        return
    log.warning(
        "activation cache %s disagrees with the ledger for %r: the cache has %d activations "
        "(newest %s), the ledger %d (newest %s); the ledger is the authority and the cache is "
        "rewritten from it",
        path,
        env,
        len(got),
        newest_revision(cached)[:12] if cached else "none",
        len(want),
        newest_revision(history)[:12] if history else "none",
    )
    write_activations(env, work_dir, history)


def activate_recorded(
    env: str,
    built: BuiltBundle,
    ledger: LedgerClient,
    *,
    work_dir: Path,
    allow_rollback: bool = False,
    actor: str = ACTIVATION_ACTOR,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Activate ``built`` for ``env`` against the ledger's history and record it there.

    Returns the ``policy.activated`` payload appended, or None when ``built`` is already
    the active revision (a restart: nothing recorded). Raises BundleError (reason
    ``bundle_rollback``) for an unflagged rollback or an unreadable history, and the
    ledger's own LedgerError when it cannot be read or does not confirm (the engine then
    does not start: nothing is activated without the ledger)."""
    if env != built.env:
        raise BundleError(f"bundle for env {built.env!r} cannot be activated for {env!r}")
    for _ in range(_ATTEMPTS):
        history = ledger_activations(ledger, env)
        _sync_cache(env, work_dir, history)
        if history and history[-1].revision == built.revision:
            return None
        record = activation_record(env, built, history)
        if record["rollback"] and not allow_rollback:
            raise BundleError(
                f"activating revision {built.revision[:12]} for {env!r} is a rollback: the "
                f"newest revision ever activated is {newest_revision(history)[:12]} (ledger "
                f"stream {activation_stream(env)}); pass --allow-rollback to do it deliberately",
                reason="bundle_rollback",
            )
        event = NewEvent(
            activation_stream(env),
            EventType.POLICY_ACTIVATED,
            actor,
            built.revision,
            record,
            unique_key=f"policy.activated:{env}:{len(history) + 1}",
        )
        try:
            ledger.append([event])
        except DuplicateKey:
            continue  # another replica activated meanwhile: read the history again
        at = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        write_activations(env, work_dir, (*history, activation_from_record(record, at)))
        return record
    raise LedgerDegraded(
        f"the activation history of {env!r} kept changing while activating "
        f"{built.revision[:12]} ({_ATTEMPTS} attempts); retry"
    )
