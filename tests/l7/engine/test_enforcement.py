"""Enforcement modes: what the mode in force (from the signed policy result) makes of
policy's outcome, and that the record keeps both (docs/0007-enforcement-modes.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from l7.cli.decision import ReplayUnavailable, compare, recover_input
from l7.crypto import canonical, sha256_hex
from l7.domain import Gate, Outcome, Status
from l7.engine import Engine, request_from_dict
from l7.engine.events import Mode, apply_enforcement
from l7.engine.state import fold_decision
from l7.errors import LedgerDegraded
from l7.secrets.interface import SecretInPayload, SecretMeta, SecretRef
from l7.server.convert import decision_to_proto
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.fakes import FakePolicy, MemoryLedger, judgement

_A, _D, _Q, _E = Outcome.ALLOW, Outcome.DENY, Outcome.QUEUE, Outcome.ESCALATE


def make(outcome: Outcome, mode: str) -> tuple[Engine, FakePolicy, MemoryLedger]:
    policy, led = FakePolicy(judgement(outcome, mode=mode)), MemoryLedger()
    return Engine(policy, led), policy, led


def _payload(led: MemoryLedger, kind: str) -> dict[str, object]:
    (e,) = [e for e in led.events if e.event_type == kind]
    return dict(e.payload)


@pytest.mark.parametrize(
    ("mode", "policy", "effective", "status", "waived"),
    [
        ("enforced", _A, _A, Status.AUTHORIZED, None),
        ("enforced", _D, _D, Status.DENIED, None),
        ("enforced", _Q, _Q, Status.PENDING_AUTHORITY, None),
        ("enforced", _E, _E, Status.PENDING_AUTHORITY, None),
        ("guarded", _A, _A, Status.AUTHORIZED, None),
        ("guarded", _D, _D, Status.DENIED, None),
        ("guarded", _Q, _A, Status.AUTHORIZED, "authority"),
        ("guarded", _E, _E, Status.PENDING_AUTHORITY, None),
        ("advisory", _A, _A, Status.AUTHORIZED, None),
        ("advisory", _D, _A, Status.AUTHORIZED, "policy"),
        ("advisory", _Q, _A, Status.AUTHORIZED, "policy"),
        ("advisory", _E, _A, Status.AUTHORIZED, "policy"),
    ],
)
def test_the_mode_decides_the_effective_outcome_and_the_record_keeps_both(
    mode: str, policy: Outcome, effective: Outcome, status: Status, waived: str | None
) -> None:
    engine, _, led = make(policy, mode)
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.status) == (effective, status)
    assert d.judgement is not None and d.judgement.outcome is policy
    assert d.judgement.enforcement_mode == mode
    evaluated = _payload(led, "decision.evaluated")
    result = _payload(led, "enforcement.result")
    assert evaluated["outcome"] == policy.value  # what policy said, always
    assert result["outcome"] == effective.value  # what is in force
    assert result["policy_outcome"] == policy.value
    assert result["enforcement_mode"] == mode
    assert result.get("waived") == waived
    assert result["reason_code"] == (f"{mode}_mode" if waived else "policy")
    if waived:
        note = str(result["reasons"][0])  # type: ignore[index]
        assert note.startswith(f"{mode} mode: policy answered {policy.value}")
    assert fold_decision(led.events) == d
    msg = decision_to_proto(d)
    assert msg.policy_outcome == getattr(pb, f"OUTCOME_{policy.value}")
    assert msg.outcome == getattr(pb, f"OUTCOME_{effective.value}")
    assert (msg.enforcement_mode, msg.enforcement_waived) == (mode, waived or "")
    shown = d.to_dict()  # what `l7 decision show` prints
    assert (shown["outcome"], shown["policy_outcome"]) == (effective.value, policy.value)


def test_guarded_never_lets_a_failed_gate_through() -> None:
    failed = (Gate("action_class_allowed", "Allowlisted", False, "not listed", "critical"),)
    for outcome in Outcome:
        j = replace(judgement(outcome, mode="guarded"), gates=failed)
        e = apply_enforcement(j)
        assert e.outcome is outcome, outcome  # nothing is waived with a failed gate
        assert e.waived is None


def test_an_unknown_mode_is_enforced() -> None:
    assert Mode.parse("off") is Mode.ENFORCED
    assert Mode.parse("") is Mode.ENFORCED
    j = judgement(Outcome.DENY, mode="disabled")
    assert apply_enforcement(j).outcome is Outcome.DENY


@pytest.mark.parametrize("mode", ["advisory", "guarded"])
def test_policy_down_denies_whatever_the_last_mode_was(mode: str) -> None:
    engine, policy, led = make(Outcome.QUEUE, mode)
    policy.down = True
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.status, d.reason_code) == (_D, Status.DENIED, "policy_store_degraded")
    result = _payload(led, "enforcement.result")
    assert result["enforcement_mode"] == "enforced"
    assert "waived" not in result


def test_restriction_mode_denies_even_under_advisory() -> None:
    engine, _, _ = make(Outcome.ALLOW, "advisory")
    engine.restriction.enter("chain broken in a test")
    d, _ = engine.decide(request_from_dict(request()))
    assert (d.outcome, d.reason_code) == (_D, "ledger_integrity_failed")


def test_a_secret_is_refused_even_under_advisory() -> None:
    engine, policy, led = make(Outcome.ALLOW, "advisory")
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    with pytest.raises(SecretInPayload):
        engine.decide(request_from_dict(request(payload={"note": key})))
    assert policy.calls == [] and led.events == []


def test_an_unconfirmed_ledger_never_allows_under_advisory() -> None:
    engine, _, led = make(Outcome.DENY, "advisory")
    led.fail = True
    with pytest.raises(LedgerDegraded):
        engine.decide(request_from_dict(request()))


def test_the_exact_policy_input_is_recorded_by_digest() -> None:
    engine, policy, led = make(Outcome.ALLOW, "enforced")
    engine.decide(request_from_dict(request(payload={"rows": 3})))
    record = _payload(led, "decision.evaluated")["policy_input"]
    assert record == {"sha256": sha256_hex(canonical(dict(policy.calls[0]))), "extra": {}}
    created = _payload(led, "decision.created")
    rebuilt = {**created["request"], **record["extra"]}  # type: ignore[dict-item]
    assert sha256_hex(canonical(rebuilt)) == record["sha256"]


# -- what replay can recover from the record ----------------------------------------------


def test_replay_recovers_the_exact_input_and_revision() -> None:
    engine, policy, led = make(Outcome.QUEUE, "guarded")
    d, _ = engine.decide(request_from_dict(request(payload={"rows": 3})))
    rin = recover_input(led.get_stream(d.decision_id))
    assert rin.policy_input == policy.calls[0]
    assert rin.revision == "rev-1" and rin.recorded == d.judgement
    assert rin.sealed_fields == ()
    assert compare(rin.recorded, rin.recorded) == []
    other = replace(rin.recorded, outcome=Outcome.ALLOW, enforcement_mode="enforced")
    fields = [f for f, _, _ in compare(rin.recorded, other)]
    assert fields == ["outcome", "enforcement_mode"]  # the effective outcome is ALLOW in both


def test_replay_refuses_an_input_that_no_longer_matches_its_digest() -> None:
    engine, _, led = make(Outcome.ALLOW, "enforced")
    sealed = "vault:v1:c2VhbGVk"
    d, _ = engine.decide(request_from_dict(request(payload={"customer_note": sealed})))
    events = led.get_stream(d.decision_id)
    assert recover_input(events).sealed_fields == ("customer_note",)
    created = events[0]
    tampered = dict(created.payload)
    action = {**created.payload["request"]["action"], "intent": "something else"}
    tampered["request"] = {**created.payload["request"], "action": action}
    with pytest.raises(ReplayUnavailable, match=r"sealed envelope fields \['customer_note'\]"):
        recover_input([replace(created, payload=tampered), *events[1:]])


def test_replay_refuses_decisions_policy_never_judged() -> None:
    engine, policy, led = make(Outcome.ALLOW, "advisory")
    policy.down = True
    d, _ = engine.decide(request_from_dict(request()))
    with pytest.raises(ReplayUnavailable, match="never judged by policy"):
        recover_input(led.get_stream(d.decision_id))
    with pytest.raises(ReplayUnavailable, match="no such decision"):
        recover_input([])


def test_replay_refuses_an_evaluation_without_a_recorded_input() -> None:
    engine, _, led = make(Outcome.ALLOW, "enforced")
    d, _ = engine.decide(request_from_dict(request()))
    events = [
        replace(e, payload={k: v for k, v in e.payload.items() if k != "policy_input"})
        for e in led.get_stream(d.decision_id)
    ]
    with pytest.raises(ReplayUnavailable, match="did not record its policy input"):
        recover_input(events)


class _Refs:
    """A SecretStore that knows every reference at version 3 and never reads a value."""

    def metadata(self, ref: SecretRef) -> SecretMeta:
        return SecretMeta(ref, 3, "2026-11-25T00:00:00Z", 3)

    def check_access(self, ref: SecretRef, token: str) -> None:
        raise AssertionError("not used by Decide")

    def token_subject(self, token: str) -> str:
        raise AssertionError("not used by Decide")

    def resolve(self, ref: SecretRef) -> str:
        raise AssertionError("Decide never resolves a value")


def test_reference_metadata_policy_saw_is_recorded_for_replay() -> None:
    policy, led = FakePolicy(judgement(Outcome.ALLOW)), MemoryLedger()
    engine = Engine(policy, led, secrets=_Refs())
    ref = "vault:secret/app/db#password@3"
    d, _ = engine.decide(request_from_dict(request(payload={"db": ref})))
    extra = _payload(led, "decision.evaluated")["policy_input"]["extra"]  # type: ignore[index]
    assert extra["secrets"][0]["ref"] == ref and extra["secrets"][0]["version"] == 3
    rin = recover_input(led.get_stream(d.decision_id))
    assert rin.policy_input == policy.calls[0]
    assert "secrets" in rin.policy_input
