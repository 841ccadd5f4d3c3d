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
from l7.errors import Forbidden, GrantRefused, LedgerDegraded, RequestInvalid
from l7.gateway.grant import GrantVerifier
from l7.gateway.secret_scope import (
    ACTOR_TOKEN_HEADER,
    resolution_event,
    resolved_refs,
    scope_of,
    scrub,
)
from l7.secrets.interface import SecretRef, SecretsDegraded, SecretStore
from l7.secrets.refs import secret_refs
from l7.secrets.scanner import redact
from ledger import (
    Confirmation,
    DuplicateKey,
    EventType,
    LedgerClient,
    LedgerError,
    NewEvent,
    StoredEvent,
)

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

    def authorize(
        self, token: str, action: Mapping[str, Any], *, actor_bao_token: str | None = None
    ) -> Execution:
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
        resolved = self._resolve(d, action, actor_bao_token)  # before consuming
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

    def _resolve(
        self, d: Decision, action: Mapping[str, Any], actor_bao_token: str | None
    ) -> dict[str, str]:
        """The values of the action's secret references, each in scope, for the actor's
        own token, recorded before any leaves (``l7.gateway.secret_scope``)."""
        refs = secret_refs(action.get("payload") or {})
        if not refs:
            return {}
        if self.secrets is None:
            raise SecretsDegraded(
                "the action uses secret references but this gateway has no secret store "
                "configured (l7 gateway serve --bao-addr); nothing runs"
            )
        scope = scope_of(d, self._stream(d.decision_id) if d.breakglass is not None else [])
        widened: dict[str, bool] = {}
        for ref in refs:
            try:
                widened[str(ref)] = scope.check(ref)
                self._actor_may_read(d, ref, actor_bao_token)
            except (GrantRefused, Forbidden) as e:
                self._record_resolutions(
                    [resolution_event(d, ref, allowed=False, reason=e.reason,
                                      widened=False, gateway_id=self.gateway_id)]
                )  # fmt: skip
                raise
        values = {str(r): self.secrets.resolve(r) for r in refs}
        self._record_resolutions(
            [
                resolution_event(d, r, allowed=True, reason="", widened=widened[str(r)],
                                 gateway_id=self.gateway_id)
                for r in refs
            ]
        )  # fmt: skip
        return values

    def _screen_result(self, d: Decision, result: Mapping[str, Any]) -> dict[str, Any]:
        """A result fit for the ledger: summarized, credential shapes redacted at every
        depth (the request scanner), and every value this decision's execution resolved
        replaced by ``[redacted:resolved_secret]`` wherever it appears: the gateway reads
        them again by the references it recorded, so a tool that returns a secret it was
        handed never puts it in the ledger."""
        clean, _ = redact(summarize_result(result), "result")
        refs = resolved_refs(self._stream(d.decision_id))
        if not refs:
            return dict(clean)
        if self.secrets is None:
            raise SecretsDegraded(
                "this execution resolved secrets but the gateway has no secret store to screen "
                "its result against; nothing is recorded"
            )
        values = {self.secrets.resolve(r) for r in refs}
        return dict(scrub(clean, values))

    def _stream(self, decision_id: str) -> list[StoredEvent]:
        try:
            return list(self.ledger.get_stream(decision_id))
        except LedgerError as e:
            raise LedgerDegraded(f"the gateway cannot read the ledger: {e}; nothing runs") from e

    def _actor_may_read(self, d: Decision, ref: SecretRef, token: str | None) -> None:
        """The token presented is the decision actor's own, and it may read ``ref``."""
        assert self.secrets is not None
        actor = d.request.context.actor.id
        if not token:
            raise Forbidden(
                f"{ref} is read with the actor's own OpenBao capability: send {actor}'s "
                f"OpenBao token as '{ACTOR_TOKEN_HEADER}' metadata",
                reason="secret_forbidden",
            )
        subject = self.secrets.token_subject(token)
        if subject != actor:
            raise Forbidden(
                f"the OpenBao token presented belongs to {subject}; decision {d.decision_id} "
                f"is {actor}'s, and only {actor}'s own capability resolves its references",
                reason="secret_forbidden",
            )
        self.secrets.check_access(ref, token)

    def _record_resolutions(self, events: list[NewEvent]) -> None:
        """No record, no secret: a resolution the ledger did not confirm returns nothing."""
        try:
            self.ledger.append(events)
        except LedgerError as e:
            raise LedgerDegraded(
                f"the ledger did not confirm the secret resolution record: {e}; nothing runs"
            ) from e

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
                "result": self._screen_result(d, result),
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
