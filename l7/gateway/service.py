"""Boundary B: let a governed action run only with a valid grant the ledger backs.

    Authorize   1. the grant verifies (key, signature, audience, expiry)
                2. the environment presented is one this gateway serves, and the grant's
                   (missing or unknown is production): else environment_mismatch
                3. the presented action, in that environment, hashes to the grant's
                   action_hash
                4. the ledger shows the decision authorized by the very event the grant
                   names, inside its execution window (authorization_expired), under
                   the policy revision the ledger's signed policy.activated events say is
                   active (policy_changed: the engine re-judges at GetGrant), and not yet
                   executed
                5. the grant is consumed by appending execution.authorized with the
                   unique key execution:<decision_id> — the database refuses a second
                   use, also from another gateway process. The event keeps the digest of
                   a fresh confirmation token, returned to this caller only, and who the
                   caller is (certificate thumbprint, else peer address)
    Confirm     the confirmation token and the same caller (else confirmation_invalid),
                then execution.confirmed with a result summary; the decision is executed

Any failure refuses with a reason; nothing here ever says yes without the ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from l7.crypto import canonical, intent_hash, scope_hash, sha256_hex
from l7.domain import KNOWN_ENVIRONMENTS, Decision, Status, effective_environment
from l7.engine.restriction import Restriction
from l7.engine.state import fold_decision
from l7.errors import (
    ConfigError,
    Forbidden,
    GrantRefused,
    L7Error,
    LedgerDegraded,
    RequestInvalid,
)
from l7.gateway.grant import GrantVerifier
from l7.gateway.secret_scope import (
    ACTOR_TOKEN_HEADER,
    resolution_event,
    resolved_refs,
    scope_of,
    scrub,
)
from l7.policy.activation import ledger_activations
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

__all__ = [
    "CONFIRMATION_TOKEN_PREFIX",
    "MAX_RESULT_BYTES",
    "Execution",
    "GatewayService",
    "confirmation_digest",
    "parse_environments",
    "summarize_result",
]

MAX_RESULT_BYTES = 4096
CONFIRMATION_TOKEN_PREFIX = "l7c_"  # noqa: S105 (a type prefix, not a secret)


def parse_environments(values: object) -> frozenset[str]:
    """The environments a gateway guards, from flags or config (repeatable, comma lists).
    Empty or unknown names refuse to start: a gateway must know what it guards."""
    items = [values] if isinstance(values, str) else list(values or [])  # type: ignore[call-overload]
    names = {n.strip() for v in items for n in str(v).split(",") if n.strip()}
    if not names:
        raise ConfigError(
            "a gateway must be told which environments it guards (l7 gateway serve --env "
            f"production; one or more of {sorted(KNOWN_ENVIRONMENTS)})"
        )
    unknown = sorted(names - KNOWN_ENVIRONMENTS)
    if unknown:
        raise ConfigError(
            f"--env {unknown}: not an environment policy judges; expected one or more of "
            f"{sorted(KNOWN_ENVIRONMENTS)}"
        )
    return frozenset(names)


def confirmation_digest(execution_id: str, token: str) -> str:
    """What the ledger keeps of a confirmation token: bound to the grant's jti."""
    return sha256_hex(
        canonical({"type": "l7-confirmation", "version": 1, "jti": execution_id, "token": token})
    )


@dataclass(frozen=True)
class Execution:
    decision_id: str
    execution_id: str
    ledger: Confirmation
    confirmation_token: str = field(default="", repr=False)
    """Returned to the executor only: ConfirmExecution requires it (never logged)."""
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
        environments: frozenset[str],
        policy_env: str,
        gateway_id: str = "gateway",
        clock: Callable[[], float] = time.time,
        secrets: SecretStore | None = None,
    ) -> None:
        """``environments``: what this gateway guards (``parse_environments``);
        ``policy_env``: the bundle environment whose ``policy.activated`` stream names the
        active policy revision (the trust environment)."""
        self.environments = parse_environments(environments)
        self.policy_env = policy_env
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

    def _active_revision(self) -> str:
        """The active policy revision, from the ledger's signed policy.activated events (the
        gateway's SignedLedger refuses a forged one); none recorded: nothing runs."""
        try:
            history = ledger_activations(self.ledger, self.policy_env)
        except LedgerError as e:
            raise LedgerDegraded(f"the gateway cannot read policy activations: {e}") from e
        except L7Error as e:  # an unreadable history (BundleError, integrity) refuses
            raise GrantRefused(
                f"the policy activation history of {self.policy_env!r} is unreadable ({e}); "
                "nothing runs",
                reason="policy_changed",
            ) from e
        if not history:
            raise GrantRefused(
                f"the ledger records no policy activation for {self.policy_env!r}; the "
                "gateway cannot tell which policy revision is active, so nothing runs",
                reason="policy_changed",
            )
        return history[-1].revision

    def authorize(
        self,
        token: str,
        action: Mapping[str, Any],
        environment: str = "",
        caller: str = "",
        *,
        actor_bao_token: str | None = None,
    ) -> Execution:
        """``environment`` as the tool declares it (missing: production); ``caller`` who is
        calling, as the transport proves it (certificate thumbprint, else peer address)."""
        grant = self.verifier.verify(token)  # 1
        env = effective_environment(environment)
        if env not in self.environments or grant.environment != env:  # 2
            raise GrantRefused(
                f"this gateway guards {sorted(self.environments)}; the action is presented "
                f"for {env!r} (declared {environment or '(none)'!r}) and the grant was issued "
                f"for {grant.environment!r}",
                reason="environment_mismatch",
            )
        try:
            presented = intent_hash(action, env)
            if grant.breakglass:  # a break-glass grant binds the class and target only
                t = action["target"]
                presented = scope_hash(str(action["class"]), str(t["type"]), str(t["id"]), env)
        except (RequestInvalid, KeyError, TypeError) as e:
            raise GrantRefused(
                f"the presented action is malformed: {e}", reason="action_mismatch"
            ) from e
        if presented != grant.action_hash:  # 3
            raise GrantRefused(
                f"the action presented hashes to {presented}, the grant was issued for "
                f"{grant.action_hash}",
                reason="action_mismatch",
            )
        if self.restriction.state().active:  # 4
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
        if d.status is Status.EXPIRED and d.reason_code == "authorization_expired":
            raise GrantRefused(
                f"the authorization of {d.decision_id} expired", reason="authorization_expired"
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
        if d.execute_by is None or d.execute_by <= self._clock():
            raise GrantRefused(
                f"the authorization of {d.decision_id} was executable until {d.execute_by}; "
                "it has expired (ask the engine again: a stale authorization never runs)",
                reason="authorization_expired",
            )
        if d.environment != env:
            raise GrantRefused(
                f"decision {d.decision_id} was judged for {d.environment!r}, not {env!r}",
                reason="environment_mismatch",
            )
        if not grant.breakglass and d.intent_hash != grant.action_hash:
            raise GrantRefused(
                f"the grant's action hash is not decision {d.decision_id}'s intent hash",
                reason="action_mismatch",
            )
        if d.authorized_by.hash != grant.ledger_hash or d.policy_version != grant.policy_version:
            raise GrantRefused(
                "the grant names a ledger event or policy revision that no longer authorizes "
                f"decision {d.decision_id}",
                reason="not_authorized",
            )
        if d.breakglass is None:
            active = self._active_revision()
            if d.policy_version != active:
                raise GrantRefused(
                    f"decision {d.decision_id} was authorized under policy revision "
                    f"{d.policy_version[:12]}, the active revision is {active[:12]}: ask the "
                    "engine for a new grant (GetGrant re-judges it under the active policy)",
                    reason="policy_changed",
                )
        resolved = self._resolve(d, action, actor_bao_token)  # before consuming: no secret
        confirmation = CONFIRMATION_TOKEN_PREFIX + _secrets.token_urlsafe(32)
        event = NewEvent(  # 5
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
                "environment": env,
                "confirmation_sha256": confirmation_digest(grant.jti, confirmation),
                "confirmer": caller,
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
        return Execution(d.decision_id, grant.jti, conf, confirmation, resolved)

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

    def confirm(  # noqa: PLR0917
        self,
        decision_id: str,
        execution_id: str,
        succeeded: bool,
        result: Mapping[str, Any],
        confirmation_token: str = "",
        caller: str = "",
    ) -> Confirmation:
        """Record the result of an execution: only for the executor, who presents the token
        Authorize gave it, over the same certificate (or from the same peer)."""

        def invalid(why: str) -> GrantRefused:
            return GrantRefused(
                f"confirmation of execution {execution_id} for decision {decision_id} refused: "
                f"{why}; only the executor that Authorize answered can confirm",
                reason="confirmation_invalid",
            )

        if not confirmation_token:
            raise invalid("no confirmation_token")
        try:
            events = self.ledger.get_stream(decision_id)
        except LedgerError as e:
            raise LedgerDegraded(f"the gateway cannot read the ledger: {e}") from e
        authorized = next(
            (e for e in events if e.event_type == EventType.EXECUTION_AUTHORIZED.value), None
        )
        if authorized is None or authorized.payload.get("execution_id") != execution_id:
            raise invalid("no such execution")
        want = authorized.payload.get("confirmation_sha256")
        got = confirmation_digest(execution_id, confirmation_token)
        if not isinstance(want, str) or not hmac.compare_digest(want, got):
            raise invalid("the confirmation token is not the one issued for this execution")
        if authorized.payload.get("confirmer") != caller:
            raise invalid("the caller is not the one that was authorized to execute")
        d = fold_decision(events)
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
