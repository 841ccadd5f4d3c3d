"""Boundary A: judge a request, record every step, answer only after the ledger confirms.

    validate (edge) -> idempotency check -> OPA judgement -> outcome/status
        -> one atomic ledger batch -> confirmation -> Decision

Fail closed: OPA unusable -> DENY ``policy_store_degraded`` (recorded);
ledger unusable -> ``LedgerDegraded`` (the caller gets UNAVAILABLE, never ALLOW).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from l7.crypto import canonical, sha256_hex
from l7.domain import Decision, DecisionId, DecisionRequest, Judgement
from l7.engine.events import decision_events, idempotency_unique_key
from l7.engine.interface import Clock, PolicyEvaluator
from l7.engine.ratelimit import RateLimiter
from l7.engine.restriction import Restriction
from l7.engine.state import fold_decision
from l7.errors import (
    DecisionNotFound,
    IdempotencyConflict,
    LedgerDegraded,
    PolicyStoreDegraded,
    RequestInvalid,
)
from l7.secrets.envelope import Envelope, EnvelopeForged, field_context, looks_sealed
from l7.secrets.interface import SecretInPayload, SecretRef, SecretsDegraded, SecretStore
from l7.secrets.refs import secret_refs
from l7.secrets.scanner import redact, scan
from ledger import (
    GENESIS_HASH,
    SCHEMA_VERSION,
    Confirmation,
    DuplicateKey,
    EventType,
    LedgerClient,
    LedgerError,
    NewEvent,
    StoredEvent,
)

__all__ = ["Engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _payload_digest_only(request: DecisionRequest) -> DecisionRequest:
    """When policy was not consulted (down, restricted, secrets degraded) the decision is a
    DENY that will never execute: record what was asked by digest, not by content, so no
    field policy would have sealed or refused can reach the ledger in clear."""
    digest = sha256_hex(canonical(dict(request.action.payload)))
    payload = {"payload_sha256": digest} if request.action.payload else {}
    return replace(request, action=replace(request.action, payload=payload))


def _as_stored(e: NewEvent, c: Confirmation, at: str) -> StoredEvent:
    """What the ledger now holds for an event it just confirmed (saves a read-back)."""
    return StoredEvent(
        event_id=c.event_id,
        decision_id=e.decision_id,
        event_type=e.event_type.value,
        schema_version=SCHEMA_VERSION,
        policy_version=e.policy_version,
        actor=e.actor,
        payload=e.payload,
        unique_key=e.unique_key,
        at=at,
        sequence=c.sequence,
        prev_hash=GENESIS_HASH,
        hash=c.hash,
        global_seq=c.global_seq,
    )


class _KeyLocks:
    """Serializes work per key inside this process (idempotent retries racing each other)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class Engine:
    def __init__(
        self,
        policy: PolicyEvaluator,
        ledger: LedgerClient,
        *,
        clock: Clock = _utcnow,
        secrets: SecretStore | None = None,
        envelope: Envelope | None = None,
    ) -> None:
        self.policy = policy
        self.secrets = secrets
        self.envelope = envelope
        self.ledger = ledger
        self.clock = clock
        self.restriction = Restriction(ledger)
        self._keys = _KeyLocks()
        self._config_cache: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self.rate_limiter = RateLimiter(self.rate_limits)

    # -- Decide --------------------------------------------------------------------------

    def secrets_config(self) -> Mapping[str, Any]:
        """Policy's ``data.l7.config.secrets`` (on_secret, envelope_fields, decrypt_roles,
        ledger_fields); OPA down keeps the last configuration, or the strictest ({})."""
        return self.config_section("secrets")

    def config_section(self, name: str) -> Mapping[str, Any]:
        """A section of policy's ``data.l7.config`` (rate_limits, anomalies, ...), re-read at
        most once a minute; the last good value is kept while OPA is down."""
        now = time.monotonic()
        cached = self._config_cache.get(name)
        if cached and now - cached[0] < 60:
            return cached[1]
        try:
            cfg, _ = self.policy.query("l7/config", name, {})
        except PolicyStoreDegraded:
            return cached[1] if cached else {}
        cfg = cfg if isinstance(cfg, dict) else {}
        self._config_cache[name] = (now, cfg)
        return cfg

    def rate_limits(self) -> Mapping[str, Any]:
        return self.config_section("rate_limits")

    def _secrets_mode(self) -> str:
        """Anything but an explicit "redact" from policy means refuse."""
        return "redact" if self.secrets_config().get("on_secret") == "redact" else "refuse"

    def _refuse_forged_envelopes(self, request: DecisionRequest) -> None:
        """An envelope field that already looks sealed was not sealed by this engine for
        this decision (it seals after the decision id exists): refused, never recorded."""
        fields = self.secrets_config().get("envelope_fields", [])
        for k, v in request.action.payload.items():
            if k in fields and looks_sealed(v):
                raise EnvelopeForged(
                    f"action.payload.{k}",
                    "looks like transit ciphertext; envelope fields are sealed by the engine "
                    "for their decision, so send the plaintext (it never reaches the ledger)",
                )

    def _seal_envelopes(self, request: DecisionRequest, decision_id: str) -> DecisionRequest:
        """Fields policy names in ``envelope_fields`` enter the ledger only as OpenBao
        transit ciphertext, bound to this decision and their field path."""
        fields = self.secrets_config().get("envelope_fields", [])
        payload = dict(request.action.payload)
        todo = [k for k in payload if k in fields and isinstance(payload[k], str)]
        if not todo:
            return request
        if self.envelope is None:
            raise SecretsDegraded(
                f"fields {todo} must be envelope-encrypted but this engine has no transit "
                "key configured; refusing to record them in clear"
            )
        for k in todo:
            payload[k] = self.envelope.seal(
                payload[k].encode(), context=field_context(decision_id, f"action.payload.{k}")
            )
        return replace(request, action=replace(request.action, payload=payload))

    def screen(self, request: DecisionRequest) -> DecisionRequest:
        """No credential reaches policy, the ledger or the logs: refuse it, naming the field
        (never the value), or redact it where policy says so (``action.payload`` only).

        The gRPC edge (``l7.secrets.screen``) has already screened every other field of a
        Decide with the same scanner; they are screened again here for callers in process."""
        whole = request.to_dict()
        findings = [
            *scan(whole["action"], "action"),
            *scan(whole["context"], "context"),
            *scan(request.idempotency_key, "idempotency_key", "idempotency_key"),
        ]
        if not findings:
            self._refuse_forged_envelopes(request)
            return request
        if self._secrets_mode() != "redact" or any(
            not f.path.startswith("action.payload") for f in findings
        ):
            raise SecretInPayload(findings[0].path, findings[0].kind)
        clean, _ = redact(dict(request.action.payload))
        request = replace(request, action=replace(request.action, payload=clean))
        self._refuse_forged_envelopes(request)
        return request

    def decide(
        self, request: DecisionRequest, *, rate_key: str | None = None
    ) -> tuple[Decision, bool]:
        """Judge ``request``; returns (decision, replayed). ``rate_key`` is who the edge
        knows is calling (token subject, mTLS identity or peer address); the actor id the
        request declares is the key only for in-process callers, who are trusted."""
        self.rate_limiter.check("decide_per_actor", rate_key or request.context.actor.id)
        request = self.screen(request)
        if not request.idempotency_key:
            return self._decide_new(request), False
        unique = idempotency_unique_key(request.context.actor.id, request.idempotency_key)
        with self._keys.hold(unique):
            existing = self._read(lambda: self.ledger.find_by_unique_key(unique))
            if existing is not None:
                return self._replay(existing, request), True
            try:
                return self._decide_new(request), False
            except DuplicateKey:
                # Another engine process recorded the same key between our read and write.
                existing = self._read(lambda: self.ledger.find_by_unique_key(unique))
                if existing is None:
                    raise LedgerDegraded(
                        f"idempotency key {request.idempotency_key!r} is taken but its "
                        "decision cannot be read; retry shortly"
                    ) from None
                return self._replay(existing, request), True

    def _replay(self, created: StoredEvent, request: DecisionRequest) -> Decision:
        if created.payload.get("request_sha256") != request.fingerprint():
            raise IdempotencyConflict(request.idempotency_key, created.decision_id)
        return self.get_decision(created.decision_id)

    def _decide_new(self, request: DecisionRequest) -> Decision:
        decision_id = DecisionId(str(uuid.uuid4()))
        request = self._seal_envelopes(request, decision_id)  # bound to this decision
        now = self.clock()
        created_at = now.isoformat().replace("+00:00", "Z")
        judgement, reason_code, reasons, policy_input = self._judge(decision_id, request)
        if judgement is None:
            request = _payload_digest_only(request)
        events = decision_events(
            decision_id,
            request,
            created_at=created_at,
            judgement=judgement,
            reason_code=reason_code,
            reasons=reasons,
            now=int(now.timestamp()),
            policy_input=policy_input,
        )
        try:
            confirmations = self.ledger.append(events)
        except DuplicateKey:
            raise  # handled by decide(): a concurrent retry won the idempotency key
        except LedgerError as e:
            raise LedgerDegraded(
                f"the ledger did not confirm decision {decision_id}: {e}; "
                "nothing was allowed. Check the ledger store and retry"
            ) from e
        return fold_decision(
            [_as_stored(e, c, created_at) for e, c in zip(events, confirmations, strict=True)]
        )

    def _judge(
        self, decision_id: str, request: DecisionRequest
    ) -> tuple[Judgement | None, str, tuple[str, ...], dict[str, Any] | None]:
        """Policy's judgement, or None with the reason policy was not (or could not be) asked;
        last, the exact input policy judged (recorded for ``l7 decision replay``)."""
        blind = self.restriction.degraded()
        if blind is not None:
            return None, LedgerDegraded.reason, (blind,), None
        restricted = self.restriction.state()
        if restricted.active:
            return (
                None,
                "ledger_integrity_failed",
                (
                    f"restriction mode since {restricted.since}: the ledger failed verification "
                    f"({restricted.reason}); governed actions are denied until an L4 clears it",
                ),
                None,
            )
        try:
            policy_input = self.policy_input(request)
        except SecretsDegraded as e:
            log.warning("decision %s denied: secrets degraded: %s", decision_id, e)
            return None, SecretsDegraded.reason, (str(e),), None
        try:
            judgement = self.policy.evaluate(policy_input)
        except PolicyStoreDegraded as e:
            log.warning("decision %s denied: policy store degraded: %s", decision_id, e)
            return None, PolicyStoreDegraded.reason, (str(e),), None
        return judgement, "policy", judgement.reasons, policy_input

    def policy_input(self, request: DecisionRequest) -> dict[str, Any]:
        """The exact input policy judges: the request, plus the metadata of any secret
        reference in it (raises SecretsDegraded when that cannot be looked up)."""
        policy_input = request.to_dict()
        refs = secret_refs(request.action.payload)
        if refs:
            policy_input["secrets"] = self._ref_metadata(refs)
        return policy_input

    def _ref_metadata(self, refs: list[SecretRef]) -> list[dict[str, object]]:
        """What policy may know of each reference: where it points and whether it exists
        (never the value). No secret store configured counts as the store being down."""
        if self.secrets is None:
            raise SecretsDegraded(
                "the request names secret references but this engine has no secret store "
                "configured (l7 serve --bao-addr)"
            )
        out: list[dict[str, object]] = []
        for ref in refs:
            try:
                meta = self.secrets.metadata(ref)
                exists, version = True, meta.version
            except RequestInvalid:  # missing path, field or version
                exists, version = False, None
            out.append(
                {
                    "ref": str(ref),
                    "mount": ref.mount,
                    "path": ref.path,
                    "field": ref.field,
                    "version": version,
                    "exists": exists,
                }
            )
        return out

    def open_envelope(
        self, subject: str, roles: tuple[str, ...], decision_id: str, field: str
    ) -> str:
        """Decrypt one envelope field of a decision for an allowed role; the read is recorded
        as ``ledger.accessed`` before the plaintext is returned."""
        d = self.get_decision(decision_id)
        value = d.request.action.payload.get(field)
        if not isinstance(value, str) or not value.startswith("vault:v"):
            raise RequestInvalid("field", f"{field!r} is not an envelope field of {decision_id}")
        if self.envelope is None:
            raise SecretsDegraded("no transit key is configured on this engine")
        allowed = tuple(self.secrets_config().get("decrypt_roles", []))
        role = next((r for r in roles if r in allowed), "")
        plaintext = self.envelope.open(
            value,
            context=field_context(decision_id, f"action.payload.{field}"),
            role=role,
            allowed_roles=allowed,
        )
        try:
            self.ledger.append(
                [
                    NewEvent(
                        decision_id,
                        EventType.LEDGER_ACCESSED,
                        subject,
                        d.policy_version,
                        {"mode": "decrypt", "subject": subject, "role": role, "field": field},
                    )
                ]
            )
        except LedgerError as e:
            raise LedgerDegraded(f"the decrypt could not be recorded ({e}); refused") from e
        return plaintext.decode()

    # -- reads ---------------------------------------------------------------------------

    def get_decision(self, decision_id: str) -> Decision:
        events = self._read(lambda: self.ledger.get_stream(decision_id))
        if not events:
            raise DecisionNotFound(decision_id)
        return fold_decision(events)

    def _read(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger could not be read: {e}") from e

    def close(self) -> None:
        self.policy.close()
