"""Engine logic with fakes: outcomes, events, idempotency, fail-closed paths."""

from __future__ import annotations

import pytest

from l7.domain import Outcome, Status
from l7.engine import Engine, request_from_dict
from l7.engine.state import fold_decision
from l7.errors import DecisionNotFound, IdempotencyConflict, LedgerDegraded
from tests.conftest import request
from tests.fakes import FakePolicy, MemoryLedger, judgement


def make(outcome: Outcome = Outcome.ALLOW) -> tuple[Engine, FakePolicy, MemoryLedger]:
    policy, led = FakePolicy(judgement(outcome)), MemoryLedger()
    return Engine(policy, led), policy, led


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (Outcome.ALLOW, Status.AUTHORIZED),
        (Outcome.DENY, Status.DENIED),
        (Outcome.QUEUE, Status.PENDING_AUTHORITY),
        (Outcome.ESCALATE, Status.PENDING_AUTHORITY),
    ],
)
def test_outcome_maps_to_status_and_is_recorded_in_one_batch(
    outcome: Outcome, status: Status
) -> None:
    engine, _, led = make(outcome)
    d, replayed = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.status, replayed) == (outcome, status, False)
    assert led.appends == 1
    assert [e.event_type for e in led.events] == [
        "decision.created",
        "policy.gate",
        "risk.scored",
        "authority.required",
        "decision.evaluated",
        "enforcement.result",
    ]
    assert d.ledger.global_seq == led.events[-1].global_seq


def test_policy_gets_the_request_shape() -> None:
    engine, policy, _ = make()
    engine.decide(request_from_dict(request("deploy.release", env="staging")))
    assert policy.calls[0]["action"]["class"] == "deploy.release"
    assert policy.calls[0]["context"]["environment"] == "staging"


def test_fold_reproduces_the_decide_answer() -> None:
    engine, _, led = make(Outcome.QUEUE)
    d, _ = engine.decide(request_from_dict(request(key="k")))
    assert fold_decision(led.events) == d
    assert engine.get_decision(d.decision_id) == d


def test_policy_down_is_a_recorded_deny() -> None:
    engine, policy, led = make()
    policy.down = True
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.status, d.reason_code) == (
        Outcome.DENY,
        Status.DENIED,
        "policy_store_degraded",
    )
    assert d.policy_version == ""
    assert [e.event_type for e in led.events] == ["decision.created", "enforcement.result"]
    assert engine.get_decision(d.decision_id).reason_code == "policy_store_degraded"


def test_ledger_down_raises_ledger_degraded_never_an_answer() -> None:
    engine, _, led = make()
    led.fail = True
    # Restriction state cannot be read either: refused before policy is even asked.
    with pytest.raises(LedgerDegraded, match="could not be read"):
        engine.decide(request_from_dict(request()))
    with pytest.raises(LedgerDegraded, match="could not be read"):
        engine.decide(request_from_dict(request(key="k")))


def test_idempotent_replay_and_conflict() -> None:
    engine, policy, led = make()
    a, r1 = engine.decide(request_from_dict(request(key="k")))
    b, r2 = engine.decide(request_from_dict(request(key="k")))
    assert (a, r1, r2) == (b, False, True)
    assert len(policy.calls) == 1 and led.appends == 1
    with pytest.raises(IdempotencyConflict, match=a.decision_id):
        engine.decide(request_from_dict(request(key="k", payload={"x": 1})))


def test_unknown_decision() -> None:
    engine, _, _ = make()
    with pytest.raises(DecisionNotFound, match="nope"):
        engine.get_decision("nope")


def test_ledger_refusing_the_write_is_degraded_with_nothing_allowed() -> None:
    engine, _, led = make()
    engine.restriction.state()  # cached: only the write fails below
    original = led.append

    def refuse(events):  # type: ignore[no-untyped-def]
        led.fail = True
        return original(events)

    led.append = refuse  # type: ignore[method-assign]
    with pytest.raises(LedgerDegraded, match="nothing was allowed"):
        engine.decide(request_from_dict(request()))


def test_restriction_mode_denies_without_asking_policy_until_an_l4_clears() -> None:
    from l7.errors import Forbidden

    engine, policy, led = make()
    engine.restriction.enter("hash_mismatch at decision d1 sequence 3")
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.reason_code) == (Outcome.DENY, "ledger_integrity_failed")
    assert "until an L4 clears it" in d.reasons[0]
    assert policy.calls == []
    with pytest.raises(Forbidden, match="needs L4"):
        engine.restriction.clear("mgr", 3, "looked at it")
    engine.restriction.clear("sec1", 4, "restored from backup; verify passes")
    assert engine.decide(request_from_dict(request()))[0].outcome is Outcome.ALLOW
    kinds = [e.payload["kind"] for e in led.get_stream("restriction/ledger")]
    assert kinds == ["restriction_entered", "restriction_cleared"]


def test_a_blind_integrity_monitor_denies_ledger_degraded_until_it_runs_again() -> None:
    engine, policy, _ = make()
    why: list[str | None] = ["the ledger integrity monitor has not completed a check for 901s"]
    engine.restriction.health = lambda: why[0]
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.reason_code) == (Outcome.DENY, "ledger_degraded")
    assert "901s" in d.reasons[0]
    assert policy.calls == []
    # Every other reader of the restriction state (the gateway) refuses too.
    with pytest.raises(LedgerDegraded, match="901s"):
        engine.restriction.state()
    why[0] = None
    assert engine.decide(request_from_dict(request()))[0].outcome is Outcome.ALLOW


def test_field_allowlist_guards_every_append() -> None:
    from l7.engine.ledger_guard import FieldGuardedLedger
    from l7.errors import RequestInvalid
    from ledger import EventType, NewEvent

    led = MemoryLedger()
    guard = FieldGuardedLedger(led)
    rules = {"mode": "refuse", "event_types": {"risk.scored": ["score", "band", "reasons"]}}
    guard.rules = lambda: rules
    ok = NewEvent("d", EventType.RISK_SCORED, "a", "r", {"score": 1, "band": "low", "reasons": []})
    assert len(guard.append([ok])) == 1
    extra = NewEvent("d", EventType.RISK_SCORED, "a", "r", {"score": 1, "card": "4242"})
    with pytest.raises(RequestInvalid, match=r"ledger\.risk\.scored\.card"):
        guard.append([extra])
    unknown = NewEvent("d", EventType.KEY_REVOKED, "a", "r", {"key_id": "k"})
    with pytest.raises(RequestInvalid):
        guard.append([unknown])  # an event type the policy does not list: fail closed
    assert len(led.events) == 1
    dropping = {**rules, "mode": "drop"}  # a policy refresh delivers a new object
    guard.rules = lambda: dropping
    guard.append([extra])
    assert dict(led.events[-1].payload) == {"score": 1}


def test_when_policy_is_not_consulted_the_payload_is_recorded_by_digest_only() -> None:
    engine, policy, led = make()
    policy.down = True
    d, _ = engine.decide(request_from_dict(request(payload={"customer_note": "call me back"})))
    assert d.reason_code == "policy_store_degraded"
    recorded = led.events[0].payload["request"]["action"]["payload"]
    assert set(recorded) == {"payload_sha256"}
    assert "call me back" not in str([e.payload for e in led.events])
