"""Boundary B: let a governed action run only with a valid grant the ledger backs.

    Authorize   1. the grant verifies (key, signature, audience, expiry)
                2. the presented action hashes to the grant's action_hash
                3. the ledger shows the decision authorized by the very event the grant
                   names, under the same policy revision, and not yet executed
                4. the grant is consumed by appending execution.authorized with the
                   unique key execution:<decision_id> — the database refuses a second
                   use, also from another gateway process
    Confirm     execution.confirmed with a result summary; the decision is executed

Any failure refuses with a reason; nothing here ever says yes without the ledger.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l7.crypto import intent_hash, scope_hash
from l7.domain import Decision, Status
from l7.engine.restriction import Restriction
from l7.engine.state import fold_decision
from l7.errors import GrantRefused, LedgerDegraded, RequestInvalid
from l7.gateway.grant import GrantVerifier
from l7.secrets.interface import SecretsDegraded, SecretStore
from l7.secrets.refs import secret_refs
from ledger import Confirmation, DuplicateKey, EventType, LedgerClient, LedgerError, NewEvent

__all__ = ["MAX_RESULT_BYTES", "Execution", "GatewayService", "summarize_result"]

MAX_RESULT_BYTES = 4096


@dataclass(frozen=True)
class Execution:
    decision_id: str
    execution_id: str
    ledger: Confirmation
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Secret values for the tool, resolved just in time (never repr'd, logged or stored)."""


def summarize_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """Keep small scalar results; replace anything large by its sha256 (never store blobs)."""
    out: dict[str, Any] = {}
    for k, v in result.items():
        text = json.dumps(v, sort_keys=True, default=str)
        if len(text) > 256:
            out[k] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "bytes": len(text)}
        else:
            out[k] = v
    if len(json.dumps(out)) > MAX_RESULT_BYTES:
        raise RequestInvalid("result", f"summary is larger than {MAX_RESULT_BYTES} bytes")
    return out


class GatewayService:
    def __init__(
        self,
        ledger: LedgerClient,
        verifier: GrantVerifier,
        *,
        gateway_id: str = "gateway",
        clock: Callable[[], float] = time.time,
        secrets: SecretStore | None = None,
    ) -> None:
        self.secrets = secrets
        self.ledger = ledger
        self.verifier = verifier
        self.gateway_id = gateway_id
        self._clock = clock
        # Boundary B re-reads restriction mode at every Authorize (no cache): a grant must
        # never be consumed on a stale "all clear" after the ledger failed verification.
        self.restriction = Restriction(ledger, ttl_s=0.0)

    def _decision(self, decision_id: str) -> Decision:
        try:
            events = self.ledger.get_stream(decision_id)
        except LedgerError as e:
            raise LedgerDegraded(f"the gateway cannot read the ledger: {e}; nothing runs") from e
        if not events:
            raise GrantRefused(f"no decision {decision_id} in the ledger", reason="not_authorized")
        return fold_decision(events)

    def authorize(self, token: str, action: Mapping[str, Any]) -> Execution:
        grant = self.verifier.verify(token)  # 1
        try:
            presented = intent_hash(action)
            if grant.breakglass:  # a break-glass grant binds the class and target only
                t = action["target"]
                presented = scope_hash(str(action["class"]), str(t["type"]), str(t["id"]))
        except (RequestInvalid, KeyError, TypeError) as e:
            raise GrantRefused(
                f"the presented action is malformed: {e}", reason="action_mismatch"
            ) from e
        if presented != grant.action_hash:  # 2
            raise GrantRefused(
                f"the action presented hashes to {presented}, the grant was issued for "
                f"{grant.action_hash}",
                reason="action_mismatch",
            )
        if self.restriction.state().active:  # 3
            raise GrantRefused(
                "the ledger failed verification: restriction mode is on until an L4 clears it",
                reason="ledger_integrity_failed",
            )
        d = self._decision(grant.decision_id)
        if d.execution_id is not None:
            replay = d.execution_id == grant.jti
            raise GrantRefused(
                f"grant {grant.jti} was already used"
                if replay
                else f"decision {d.decision_id} was already executed with another grant",
                reason="grant_replayed",
            )
        if d.status is not Status.AUTHORIZED or d.authorized_by is None:
            raise GrantRefused(
                f"decision {d.decision_id} is {d.status.value}, not authorized",
                reason="not_authorized",
            )
        if d.breakglass is not None and d.breakglass.expires_at <= self._clock():
            raise GrantRefused(
                f"the break-glass window of {d.decision_id} closed at {d.breakglass.expires_at}",
                reason="grant_expired",
            )
        if d.authorized_by.hash != grant.ledger_hash or d.policy_version != grant.policy_version:
            raise GrantRefused(
                "the grant names a ledger event or policy revision that no longer authorizes "
                f"decision {d.decision_id}",
                reason="not_authorized",
            )
        resolved = self._resolve(action)  # before consuming: no secret, no execution
        event = NewEvent(  # 4
            d.decision_id,
            EventType.EXECUTION_AUTHORIZED,
            self.gateway_id,
            d.policy_version,
            {
                "execution_id": grant.jti,
                "gateway": self.gateway_id,
                "action_hash": grant.action_hash,
                "grant_expires_at": grant.expires_at,
                "authorized_by": grant.ledger_hash,
            },
            unique_key=f"execution:{d.decision_id}",
        )
        try:
            (conf,) = self.ledger.append([event])
        except DuplicateKey as e:
            raise GrantRefused(
                f"grant {grant.jti} lost the race: decision {d.decision_id} was executed by "
                "another gateway call",
                reason="grant_replayed",
            ) from e
        except LedgerError as e:
            raise LedgerDegraded(
                f"the ledger did not confirm execution.authorized: {e}; the tool must not run"
            ) from e
        return Execution(d.decision_id, grant.jti, conf, resolved)

    def _resolve(self, action: Mapping[str, Any]) -> dict[str, str]:
        refs = secret_refs(action.get("payload") or {})
        if not refs:
            return {}
        if self.secrets is None:
            raise SecretsDegraded(
                "the action uses secret references but this gateway has no secret store "
                "configured (l7 gateway serve --bao-addr); nothing runs"
            )
        return {str(r): self.secrets.resolve(r) for r in refs}

    def confirm(
        self, decision_id: str, execution_id: str, succeeded: bool, result: Mapping[str, Any]
    ) -> Confirmation:
        d = self._decision(decision_id)
        if d.execution_id is None or d.execution_id != execution_id:
            raise GrantRefused(
                f"execution {execution_id} was not authorized for decision {decision_id}",
                reason="not_authorized",
            )
        if d.status is Status.EXECUTED:
            raise GrantRefused(
                f"execution of {decision_id} is already confirmed", reason="grant_replayed"
            )
        event = NewEvent(
            decision_id,
            EventType.EXECUTION_CONFIRMED,
            self.gateway_id,
            d.policy_version,
            {
                "status": Status.EXECUTED.value,
                "execution_id": execution_id,
                "succeeded": succeeded,
                "result": summarize_result(result),
                "confirmed_at": int(self._clock()),
            },
            unique_key=f"confirmed:{decision_id}",
        )
        try:
            return self.ledger.append([event])[0]
        except DuplicateKey as e:
            raise GrantRefused(
                f"execution of {decision_id} is already confirmed", reason="grant_replayed"
            ) from e
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm execution.confirmed: {e}") from e
