"""Break-glass: explicit, scoped, time-bound emergency authorization, always reviewed.

    open     identity (L4/L5 per policy) + structured reason + TTL + scope
             -> policy l7.breakglass decides (levels, categories, TTL cap, overdue reviews)
             -> decision.created + override.breakglass (status authorized) in one batch
             -> a grant valid only for that class and target, and only inside the window
    review   a DIFFERENT L4/L5 records breakglass.reviewed (once)
    sweep    an unreviewed break-glass past its deadline raises an alert
             (anomaly.detected, once) and blocks its opener's next break-glass

Break-glass never skips the ledger: when the ledger cannot confirm, it is refused. Which
break-glass is still owed a review is read from the ledger before every open, list and
sweep (``l7.engine.shared_state.BreakGlassIndex``), so an overdue review blocks its opener
on every engine replica, not only on the one that opened it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from l7.authority.anomaly import anomaly_event
from l7.authority.delegation import Delegations
from l7.domain import Action, Actor, Context, Decision, DecisionRequest, Status, Target
from l7.engine.engine import Engine
from l7.engine.shared_state import BreakGlassIndex, OpenBreakGlass
from l7.errors import (
    Forbidden,
    IllegalTransition,
    LedgerDegraded,
    PolicyStoreDegraded,
    RequestInvalid,
)
from l7.identity import Identity
from ledger import DuplicateKey, EventType, LedgerError, NewEvent

__all__ = ["REVIEWER_MIN_LEVEL", "BreakGlassRequest", "BreakGlassService"]

_E = EventType
REVIEWER_MIN_LEVEL = 4


@dataclass(frozen=True)
class BreakGlassRequest:
    incident_id: str
    category: str
    text: str
    ttl_s: int
    action_class: str
    target_type: str
    target_id: str
    environment: str = "production"


def _secret_scope(result: dict[str, object]) -> dict[str, list[str]]:
    """Where the grant may resolve secret references, as policy said (signed with the
    override.breakglass; the gateway holds the grant to it): ``prefixes`` in all, of which
    ``widened`` are beyond the opener's roles' own."""
    out: dict[str, list[str]] = {}
    for key, name in (
        ("secret_ref_prefixes", "prefixes"),
        ("widened_secret_ref_prefixes", "widened"),
    ):
        value = result.get(key, [])
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise PolicyStoreDegraded(f"policy data.l7.breakglass.result.{key} is malformed")
        out[name] = sorted(value)
    return out


class BreakGlassService:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ledger = engine.ledger
        self.index = BreakGlassIndex(engine.ledger)
        self._alerted: set[str] = set()
        """Overdue alerts this process knows are on the record (a cache of unique keys)."""

    def _now(self) -> int:
        return int(self.engine.clock().timestamp())

    def unreviewed(self) -> list[Decision]:
        """Every break-glass still owed a review, oldest deadline first."""
        self.index.sync()
        return [self.engine.get_decision(b.decision_id) for b in self.index.unreviewed()]

    def _overdue_for(self, actor: str, now: int) -> int:
        self.index.sync()
        return len(self.index.overdue(now, actor))

    def open(self, identity: Identity, req: BreakGlassRequest) -> Decision:
        now = self._now()
        policy_input = {
            "actor": {
                "id": identity.subject,
                "level": identity.level,
                "roles": list(identity.roles),
            },
            "reason": {"incident_id": req.incident_id, "category": req.category, "text": req.text},
            "ttl_s": req.ttl_s,
            "scope": {
                "action_class": req.action_class,
                "target": {"type": req.target_type, "id": req.target_id},
            },
            "environment": req.environment,
            "overdue_reviews": self._overdue_for(identity.subject, now),
        }
        result, revision = self.engine.policy.query("l7/breakglass", "result", policy_input)
        if not isinstance(result, dict) or not isinstance(result.get("allowed"), bool):
            raise PolicyStoreDegraded("policy data.l7.breakglass.result is malformed")
        if not result["allowed"]:
            raise Forbidden(
                "break-glass refused: " + "; ".join(str(p) for p in result.get("problems", [])),
                reason="breakglass_refused",
            )
        ttl, review_within = int(result["ttl_s"]), int(result["review_within_s"])
        secret_scope = _secret_scope(result)
        decision_id = str(uuid.uuid4())
        request = DecisionRequest(
            Action(
                req.action_class,
                f"BREAK-GLASS {req.incident_id}: {req.text}"[:1024],
                Target(req.target_type, req.target_id),
                {},
            ),
            Context(
                Actor(identity.subject, ",".join(identity.roles), identity.level),
                req.environment,
                "breakglass",
            ),
        )
        created_at = self.engine.clock().isoformat().replace("+00:00", "Z")
        events = [
            NewEvent(
                decision_id,
                _E.DECISION_CREATED,
                identity.subject,
                revision,
                {
                    "status": Status.DRAFT.value,
                    "request": request.to_dict(),
                    "request_sha256": request.fingerprint(),
                    "idempotency_key": "",
                    "created_at": created_at,
                },
            ),
            NewEvent(
                decision_id,
                _E.OVERRIDE_BREAKGLASS,
                identity.subject,
                revision,
                {
                    "status": Status.AUTHORIZED.value,
                    "outcome": "ALLOW",
                    "reason_code": "breakglass",
                    "reasons": [
                        f"break-glass by {identity.subject} (L{identity.level}) for incident "
                        f"{req.incident_id} ({req.category}); review due by "
                        f"{now + review_within}"
                    ],
                    "opened_by": identity.subject,
                    "level": identity.level,
                    "incident_id": req.incident_id,
                    "category": req.category,
                    "text": req.text,
                    "requested_ttl_s": req.ttl_s,
                    "ttl_s": ttl,
                    "expires_at": now + ttl,
                    "review_deadline": now + review_within,
                    "scope": {
                        "action_class": req.action_class,
                        "target": {"type": req.target_type, "id": req.target_id},
                    },
                    "secret_scope": secret_scope,
                },
            ),
        ]
        try:
            self.ledger.append(events)
        except LedgerError as e:
            raise LedgerDegraded(
                f"break-glass refused: the ledger did not confirm it ({e}); break-glass never "
                "skips the ledger"
            ) from e
        self.index.opened(OpenBreakGlass(decision_id, identity.subject, now + review_within))
        return self.engine.get_decision(decision_id)

    def review(self, identity: Identity, decision_id: str, findings: str) -> Decision:
        d = self.engine.get_decision(decision_id)
        bg = d.breakglass
        if bg is None:
            raise IllegalTransition(decision_id, d.status.value, "reviewed as a break-glass")
        # The opener never reviews its own break-glass, nor through a delegate (any depth).
        via = Delegations(self.ledger).authority_chain(identity.subject, self._now())
        if identity.subject == bg.opened_by or bg.opened_by in via:
            chain = " -> ".join(via.get(bg.opened_by, (identity.subject,)))
            try:
                self.ledger.append(
                    [anomaly_event(decision_id, d.policy_version, "self_review",
                                   identity.subject, f"the opener reviewing: {chain}")]
                )  # fmt: skip
            except LedgerError as e:
                raise LedgerDegraded(f"the ledger did not confirm the anomaly: {e}") from e
            raise Forbidden(
                f"{identity.subject} opened this break-glass or holds its opener's delegation "
                f"({chain}); a different L4/L5 must review it",
                reason="self_review",
            )
        if identity.level < REVIEWER_MIN_LEVEL:
            raise Forbidden(
                f"break-glass reviews need L{REVIEWER_MIN_LEVEL}+; {identity.subject} is "
                f"L{identity.level}",
                reason="insufficient_level",
            )
        if not findings.strip():
            raise RequestInvalid("findings", "is required: what happened and was it justified")
        try:
            self.ledger.append(
                [
                    NewEvent(
                        decision_id,
                        _E.BREAKGLASS_REVIEWED,
                        identity.subject,
                        d.policy_version,
                        {
                            "reviewer": identity.subject,
                            "level": identity.level,
                            "findings": findings,
                            "reviewed_at": self._now(),
                            "overdue": self._now() > bg.review_deadline,
                        },
                        unique_key=f"breakglass-review:{decision_id}",
                    )
                ]
            )
        except DuplicateKey as e:
            raise IllegalTransition(decision_id, "reviewed", "reviewed again") from e
        except LedgerError as e:
            raise LedgerDegraded(f"the ledger did not confirm the review: {e}") from e
        self.index.reviewed(decision_id)
        return self.engine.get_decision(decision_id)

    def sweep(self) -> int:
        """Alert (once each, across replicas: a ledger unique key) on break-glass whose
        review deadline has passed; reads only the overdue streams."""
        self.index.sync()
        now, alerts = self._now(), 0
        overdue = self.index.overdue(now)
        self._alerted &= {b.decision_id for b in overdue}  # reviewed ones leave the cache
        for b in overdue:
            if b.decision_id in self._alerted:
                continue
            d = self.engine.get_decision(b.decision_id)
            bg = d.breakglass
            if bg is None:
                continue
            try:
                self.ledger.append(
                    [
                        NewEvent(
                            d.decision_id,
                            _E.ANOMALY_DETECTED,
                            "l7-engine",
                            d.policy_version,
                            {
                                "kind": "breakglass_review_overdue",
                                "subject": bg.opened_by,
                                "detail": f"review was due at {bg.review_deadline}",
                            },
                            unique_key=f"breakglass-overdue:{d.decision_id}",
                        )
                    ]
                )
                alerts += 1
            except DuplicateKey:  # another replica (or an earlier sweep) alerted
                pass
            except LedgerError as e:
                raise LedgerDegraded(f"the ledger did not confirm the alert: {e}") from e
            self._alerted.add(b.decision_id)
        return alerts
