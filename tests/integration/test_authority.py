"""Authority end to end: OpenBao as the real OIDC issuer and transit signer, real OPA,
real SQLite ledger. Time is an injected clock; nothing sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import hvac
import pytest

from l7.authority.approval import ApprovalPayload, Rationale, Verdict, sign_approval
from l7.client import GovernanceClient, RemoteError
from l7.crypto import Ed25519Signer, Signer, TransitSigner
from l7.identity import JwksUrl, JwtVerifier, claim_map_for_openbao
from l7.policy.bundle import verify_lock
from l7.policy.evaluator import OpaEvaluator
from l7.policy.opa_process import OpaProcess, find_opa
from l7.stack import REPO_ROOT, Stack, StackConfig
from l7.v1 import governance_pb2 as pb
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev

pytestmark = pytest.mark.integration

# name: (level, scopes)
PEOPLE = {
    "alice": (1, ["*"]),  # the requester
    "mgr1": (3, ["deploy", "data", "service"]),
    "mgr2": (3, ["deploy", "data", "service"]),
    "mgr3": (3, ["data"]),
    "junior": (2, ["deploy", "data"]),
    "outsider": (3, ["payments"]),
    "sec1": (4, ["*"]),
    "sec2": (4, ["*"]),
    "exec1": (5, ["*"]),
}
WHY = Rationale(summary="change reviewed in CAB-42", ticket="CAB-42")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def unix(self) -> int:
        return int(self.now.timestamp())


@dataclass
class World:
    bao: OpenBaoDev
    stack: Stack
    clock: Clock
    signers: dict[str, Signer] = field(default_factory=dict)

    def client(self, who: str) -> GovernanceClient:
        return GovernanceClient(self.stack.target, token=self.bao.token_for(who))

    def payloads(self, d: dict[str, Any], event_type: str) -> list[dict[str, Any]]:
        """The payloads of one event type in decision ``d``'s stream, in order."""
        assert self.stack.ledger is not None
        return [
            dict(e.payload)
            for e in self.stack.ledger.get_stream(d["decision_id"])
            if e.event_type == event_type
        ]

    def decide(self, req: dict[str, Any]) -> dict[str, Any]:
        actor = req["context"]["actor"]["id"]
        with self.client(actor) as c:
            return c.decide(req)

    def signed(
        self,
        who: str,
        decision: dict[str, Any],
        *,
        verdict: Verdict = Verdict.APPROVE,
        signer: Signer | None = None,
        rationale: Rationale | None = WHY,
        ttl_s: int = 600,
        issued_at: int | None = None,
        **override: Any,
    ) -> pb.SignedApproval:
        signer = signer or self.signers[who]
        payload = ApprovalPayload.new(
            override.pop("decision_id", decision["decision_id"]),
            override.pop("intent_hash", decision["intent_hash"]),
            verdict,
            override.pop("approver", who),
            signer.key_id,
            ttl_s=ttl_s,
            now=issued_at if issued_at is not None else self.clock.unix(),
            rationale=rationale,
        )
        if override:
            payload = ApprovalPayload(**{**payload.__dict__, **override})
        s = sign_approval(payload, signer)
        return pb.SignedApproval(
            payload_json=json.dumps(s.payload.to_signed_dict()),
            method=s.method.value,
            signature=s.signature,
        )

    def approve(self, who: str, decision: dict[str, Any], **kw: Any) -> dict[str, Any]:
        with self.client(who) as c:
            return c.approve(decision["decision_id"], self.signed(who, decision, **kw))

    def refused(self, who: str, decision: dict[str, Any], **kw: Any) -> RemoteError:
        with pytest.raises(RemoteError) as ei:
            self.approve(who, decision, **kw)
        return ei.value


def _setup_people(bao: OpenBaoDev) -> None:
    for name, (level, scopes) in PEOPLE.items():
        role = {1: "engineer", 2: "supervisor", 3: "manager", 4: "security", 5: "executive"}[level]
        bao.make_user(name, level, team="platform", scopes=scopes, roles=[role])


def _verifier(bao: OpenBaoDev, cache_ttl_s: float = 300) -> JwtVerifier:
    return JwtVerifier(
        JwksUrl(bao.jwks_url, cache_ttl_s=cache_ttl_s, min_refetch_interval_s=0),
        issuer=bao.issuer,
        audience=bao.audience,
        claim_map=claim_map_for_openbao(),
    )


def _world(
    bao: OpenBaoDev, tmp_path: Path, cache_ttl_s: float = 300, **extra: Any
) -> Iterator[World]:
    clock = Clock()
    cfg = StackConfig(
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        clock=clock,
        verifier=_verifier(bao, cache_ttl_s),
        gateway=True,
        sweep_interval_s=0,
        **extra,
    )
    with Stack(cfg) as stack:
        w = World(bao, stack, clock)
        for name in PEOPLE:
            w.signers[name] = Ed25519Signer.generate(key_id=f"{name}-ed25519")
        with w.client("sec1") as sec:
            for name, s in w.signers.items():
                assert isinstance(s, Ed25519Signer)
                sec.register_key(name, s.key_id, "ed25519", s.public_key_raw)
        yield w


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


@pytest.fixture
def world(people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(people, tmp_path)


def deploy(key: str = "") -> dict[str, Any]:
    """High band: 2 x L3 managers AND 1 x L4 security co-sign, rationale required."""
    return request(
        "deploy.release",
        env="production",
        target=("service", "payments-api"),
        actor="alice",
        payload={"blast_radius": 40},
        key=key,
    )


def delete() -> dict[str, Any]:
    """High band, no co-sign: 2 x L3 managers."""
    return request("data.delete", env="production", target=("table", "orders"), actor="alice")


def clause_missing(d: dict[str, Any]) -> dict[str, int]:
    return {c["clause_id"]: c.get("missing", 0) for c in d["authority_progress"]["clauses"]}


# -- quorum --------------------------------------------------------------------------------


def test_two_distinct_l3_approvers_authorize(world: World) -> None:
    d = world.decide(delete())
    assert d["outcome"] == "QUEUE"
    assert clause_missing(d) == {"managers": 2}
    d1 = world.approve("mgr1", d)
    assert d1["status"] == "pending_authority"
    assert clause_missing(d1) == {"managers": 1}
    d2 = world.approve("mgr3", d)
    assert d2["status"] == "authorized"
    assert d2["outcome"] == "ALLOW"
    assert d2["reason_code"] == "quorum_reached"
    approvals = d2["authority_progress"]["approvals"]
    assert [(a["approver"], a["method"]) for a in approvals] == [
        ("mgr1", "ed25519"),
        ("mgr3", "ed25519"),
    ]
    # The ledger alone proves it: approval events carry signature refs and no private key.
    assert world.stack.ledger is not None
    events = world.stack.ledger.get_stream(d["decision_id"])
    added = [e for e in events if e.event_type == "approval.added"]
    assert {e.payload["approver"] for e in added} == {"mgr1", "mgr3"}
    assert all(e.payload["signature_ref"].startswith("ed25519:") for e in added)
    assert "PRIVATE" not in json.dumps([dict(e.payload) for e in events])
    world.stack.ledger.verify()


def test_cosign_missing_stays_pending_until_l4_signs(world: World) -> None:
    d = world.decide(deploy())
    assert clause_missing(d) == {"managers": 2, "security_cosign": 1}
    world.approve("mgr1", d)
    d2 = world.approve("mgr2", d)
    assert d2["status"] == "pending_authority"
    assert clause_missing(d2) == {"managers": 0, "security_cosign": 1}
    d3 = world.approve("sec1", d)
    assert d3["status"] == "authorized"


def test_an_l4_fills_one_clause_only(world: World) -> None:
    d = world.decide(deploy())
    world.approve("sec1", d)
    d2 = world.approve("mgr1", d)
    assert d2["status"] == "pending_authority"  # sec1 cannot be both a manager and the co-sign
    assert clause_missing(d2) == {"managers": 1, "security_cosign": 0}


# -- forged, moved, replayed, expired -----------------------------------------------------


def test_forged_signature_is_refused(world: World) -> None:
    d = world.decide(delete())
    forger = Ed25519Signer.generate(key_id="mgr1-ed25519")  # same key id, different key
    err = world.refused("mgr1", d, signer=forger)
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "signature_invalid")


def test_signature_by_another_subjects_key_is_refused(world: World) -> None:
    d = world.decide(delete())
    # mgr1's token, but the payload is signed with mgr2's registered key.
    err = world.refused("mgr1", d, signer=world.signers["mgr2"])
    assert err.reason == "key_unknown"
    # mgr2's genuine approval, submitted with mgr1's token.
    signed = world.signed("mgr2", d)
    with world.client("mgr1") as c, pytest.raises(RemoteError) as ei:
        c.approve(d["decision_id"], signed)
    assert ei.value.reason in ("signer_mismatch", "signature_invalid", "key_unknown")


def test_replayed_nonce_is_refused_on_same_and_other_decision(world: World) -> None:
    a, b = world.decide(delete()), world.decide(delete())
    first = world.signed("mgr1", a)
    with world.client("mgr1") as c:
        c.approve(a["decision_id"], first)
        nonce = json.loads(first.payload_json)["nonce"]
        # The same signed approval again: refused (this identity already counted).
        with pytest.raises(RemoteError) as again:
            c.approve(a["decision_id"], first)
        assert again.value.reason in ("duplicate_approver", "nonce_replayed")
        # A fresh signature for another decision that reuses the nonce: refused by the ledger.
        reused = world.signed("mgr1", b, nonce=nonce)
        with pytest.raises(RemoteError) as other:
            c.approve(b["decision_id"], reused)
    assert other.value.reason == "nonce_replayed"
    # Same decision, another approver, reused nonce: refused too.
    with world.client("mgr3") as c, pytest.raises(RemoteError) as same:
        c.approve(a["decision_id"], world.signed("mgr3", a, nonce=nonce))
    assert same.value.reason == "nonce_replayed"


def test_expired_approval_is_refused(world: World) -> None:
    d = world.decide(delete())
    err = world.refused("mgr1", d, issued_at=world.clock.unix() - 700, ttl_s=600)
    assert err.reason == "approval_expired"


def test_approval_bound_to_another_decision_or_intent_is_refused(world: World) -> None:
    a, b = world.decide(delete()), world.decide(deploy())
    with world.client("mgr1") as c:
        with pytest.raises(RemoteError) as moved:
            c.approve(b["decision_id"], world.signed("mgr1", a))
        assert moved.value.reason == "decision_mismatch"
        with pytest.raises(RemoteError) as changed:
            c.approve(a["decision_id"], world.signed("mgr1", a, intent_hash=b["intent_hash"]))
        assert changed.value.reason == "intent_mismatch"


def test_self_approval_is_refused_and_recorded_as_anomaly(world: World) -> None:
    world.signers["alice"] = world.signers["alice"]
    d = world.decide(delete())
    err = world.refused("alice", d)
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "self_approval")
    kinds = [p["kind"] for p in world.payloads(d, "anomaly.detected")]
    assert kinds == ["self_approval"]


def test_insufficient_level_and_out_of_scope_are_refused(world: World) -> None:
    d = world.decide(delete())
    assert world.refused("junior", d).reason == "insufficient_level"
    assert world.refused("outsider", d).reason == "out_of_scope"
    kinds = [p["kind"] for p in world.payloads(d, "anomaly.detected")]
    assert kinds == ["out_of_scope"]


def test_revoked_key_is_refused(world: World) -> None:
    d = world.decide(delete())
    with world.client("sec1") as sec:
        sec.revoke_key("mgr1", "mgr1-ed25519", "laptop lost")
    assert world.refused("mgr1", d).reason == "key_revoked"


def test_rationale_is_required_for_high_band(world: World) -> None:
    d = world.decide(delete())
    assert world.refused("mgr1", d, rationale=None).reason == "rationale_required"


def test_transit_signed_approval_counts(world: World) -> None:
    bao = world.bao
    bao.enable_transit()
    bao.create_transit_key("mgr2")
    as_mgr2 = hvac.Client(url=bao.url, token=bao.user_token("mgr2"))
    signer = TransitSigner(as_mgr2, "mgr2", key_version=1)
    with world.client("sec1") as sec:
        sec.register_key("mgr2", signer.key_id, "vault-transit", bao.transit_public_key("mgr2"))
    d = world.decide(delete())
    world.approve("mgr1", d)
    done = world.approve("mgr2", d, signer=signer)
    assert done["status"] == "authorized"
    methods = {a["approver"]: a["method"] for a in done["authority_progress"]["approvals"]}
    assert methods == {"mgr1": "ed25519", "mgr2": "vault-transit"}
    sig = next(
        a["signature_ref"]
        for a in done["authority_progress"]["approvals"]
        if a["approver"] == "mgr2"
    )
    assert sig.startswith("vault:v1:")


# -- tokens ------------------------------------------------------------------------------------


def test_bad_tokens_are_unauthenticated(world: World) -> None:
    d = world.decide(delete())
    signed = world.signed("mgr1", d)
    for token in ("not-a-jwt", world.bao.token_for("mgr1") + "x"):
        with (
            GovernanceClient(world.stack.target, token=token) as c,
            pytest.raises(RemoteError) as ei,
        ):
            c.approve(d["decision_id"], signed)
        assert (ei.value.code, ei.value.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "token_invalid",
        )
    with GovernanceClient(world.stack.target) as anon, pytest.raises(RemoteError) as ei:
        anon.approve(d["decision_id"], signed)
    assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_decide_actor_must_match_the_token(world: World) -> None:
    with world.client("mgr1") as c, pytest.raises(RemoteError) as ei:
        c.decide(delete())  # names alice
    assert (ei.value.code, ei.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "actor_mismatch")
    with GovernanceClient(world.stack.target) as anon, pytest.raises(RemoteError) as ei2:
        anon.decide(delete())
    assert ei2.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_only_security_registers_keys(world: World) -> None:
    with world.client("mgr1") as c, pytest.raises(RemoteError) as ei:
        c.register_key("mgr1", "extra", "ed25519", Ed25519Signer.generate().public_key_raw)
    assert ei.value.reason == "insufficient_level"


# -- time ----------------------------------------------------------------------------------


def test_escalation_raises_the_requirement_and_never_approves(world: World) -> None:
    d = world.decide(delete())
    window = 7200  # high band (rego/l7/config/data.json)
    world.approve("mgr1", d)
    world.clock.advance(window + 1)
    with world.client("mgr1") as c:
        after = c.get_decision(d["decision_id"])
    assert after["status"] == "pending_authority"
    progress = after["authority_progress"]
    assert progress["escalations"] == 1
    assert [c["min_level"] for c in progress["clauses"]] == [4]
    # mgr1 (L3) no longer counts; two L4s are needed now.
    assert clause_missing(after) == {"managers": 2}
    assert world.refused("mgr3", d).reason == "insufficient_level"
    world.approve("sec1", d)
    assert world.approve("sec2", d)["status"] == "authorized"
    assert world.stack.ledger is not None
    types = [e.event_type for e in world.stack.ledger.get_stream(d["decision_id"])]
    assert types.count("authority.escalated") == 1


def test_expiry_by_time_denies_and_blocks_further_approval(world: World) -> None:
    d = world.decide(delete())
    world.clock.advance(43200 + 1)  # high band ttl
    assert world.stack.authority is not None
    assert world.stack.authority.sweep() == 1
    with world.client("mgr1") as c:
        after = c.get_decision(d["decision_id"])
    assert (after["status"], after["outcome"], after["reason_code"]) == (
        "expired",
        "DENY",
        "expired",
    )
    err = world.refused("mgr1", d, issued_at=world.clock.unix())
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "expired" in err.message


def test_policy_revision_change_voids_earlier_approvals(world: World, tmp_path: Path) -> None:
    d = world.decide(delete())
    world.approve("mgr1", d)
    # Security promotes another bundle revision: OPA now serves the production bundle.
    opa_bin = find_opa()
    built = verify_lock(
        "production", repo_root=REPO_ROOT, out_dir=tmp_path / "prod", opa_bin=opa_bin
    )
    assert built.revision != d["policy_version"]
    with OpaProcess(built.path, opa_bin=opa_bin) as opa:
        assert world.stack.engine is not None
        world.stack.engine.policy = OpaEvaluator(opa.url, expected_revision=built.revision)
        after = world.approve("mgr3", d)
    assert after["policy_version"] == built.revision
    assert after["status"] == "pending_authority"
    assert [a["approver"] for a in after["authority_progress"]["approvals"]] == ["mgr3"]
    assert clause_missing(after) == {"managers": 1}
    evaluated = world.payloads(d, "decision.evaluated")
    assert evaluated[-1]["reevaluated"] is True
    assert evaluated[-1]["voided_approvals"] == 1
    # the re-judgement is replayable like the first one: the exact input, by digest
    from l7.crypto import canonical, sha256_hex

    request = world.payloads(d, "decision.created")[0]["request"]
    assert evaluated[-1]["policy_input"] == {
        "sha256": sha256_hex(canonical(request)),
        "extra": {},
    }
    results = [p for p in world.payloads(d, "enforcement.result")]
    assert results[-1]["reason_code"] == "policy_changed"
    assert results[-1]["policy_outcome"] == results[-1]["outcome"]  # enforced: no waiver


# -- lifecycle -------------------------------------------------------------------------------


def test_reject_denies(world: World) -> None:
    d = world.decide(delete())
    with world.client("mgr1") as c:
        out = c.reject(d["decision_id"], world.signed("mgr1", d, verdict=Verdict.REJECT))
    assert (out["status"], out["reason_code"]) == ("denied", "rejected")


def test_cancel_by_requester_then_approve_is_illegal(world: World) -> None:
    d = world.decide(delete())
    with world.client("mgr1") as c, pytest.raises(RemoteError) as ei:
        c.cancel(d["decision_id"], "not mine")
    assert ei.value.reason == "not_requester"
    with world.client("alice") as c:
        assert c.cancel(d["decision_id"], "wrong table")["status"] == "cancelled"
    err = world.refused("mgr1", d)
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "illegal_transition")
    assert "cancelled" in err.message


def test_delegation_is_bounded_and_named(world: World) -> None:
    d = world.decide(deploy())
    with world.client("sec1") as sec:
        sec.delegate("mgr3", 4, ["deploy"], world.clock.unix() + 3600, "on call for sec1")
    world.approve("mgr1", d)
    world.approve("mgr2", d)
    done = world.approve("mgr3", d)  # mgr3 is L3 with only "data" scope; delegated L4 + deploy
    assert done["status"] == "authorized"
    rec = next(a for a in done["authority_progress"]["approvals"] if a["approver"] == "mgr3")
    assert (rec["level"], rec["delegated_from"]) == (4, "sec1")
    # sec1 cannot count a second time through its own signature.
    d2 = world.decide(deploy())
    world.approve("mgr3", d2)
    assert world.refused("sec1", d2).reason == "duplicate_approver"


def test_pending_is_ordered_by_band_then_age(world: World) -> None:
    low = world.decide(
        request("deploy.release", env="staging", target=("service", "x"), actor="alice")
    )
    high = world.decide(delete())
    with world.client("mgr1") as c:
        ids = [p["decision_id"] for p in c.pending()]
    assert ids.index(high["decision_id"]) < ids.index(low["decision_id"])


def test_jwks_down_refuses_approvals_with_identity_degraded(
    openbao_private: OpenBaoDev,
    tmp_path: Path,
) -> None:
    _setup_people(openbao_private)
    # No key cache: every verification fetches the issuer's JWKS.
    for w in _world(openbao_private, tmp_path, cache_ttl_s=0):
        d = w.decide(delete())
        signed = w.signed("mgr1", d)
        token = openbao_private.token_for("mgr1")
        openbao_private.seal()  # every OpenBao path, the JWKS included, now answers 503
        with GovernanceClient(w.stack.target, token=token) as c, pytest.raises(RemoteError) as ei:
            c.approve(d["decision_id"], signed)
        assert (ei.value.code, ei.value.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "identity_degraded",
        )
        assert "re-auth" in ei.value.message.lower()
        openbao_private.unseal()
        with GovernanceClient(w.stack.target, token=token) as c:
            assert c.approve(d["decision_id"], signed)["status"] == "pending_authority"


# -- the CLI, as an approver uses it ------------------------------------------------------


def test_cli_approve_pending_and_show(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from l7.crypto import save_private_key

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "mgr1.pem"
    save_private_key(key_file, key)
    signer = Ed25519Signer(key, key_id="mgr1-cli")
    with world.client("sec1") as sec:
        sec.register_key("mgr1", "mgr1-cli", "ed25519", signer.public_key_raw)
    d = world.decide(delete())
    world.approve("mgr3", d)
    token_file = tmp_path / "mgr1.jwt"
    token_file.write_text(world.bao.token_for("mgr1"))

    def l7(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "l7.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    pending = l7("pending", "--target", world.stack.target, "--token-file", str(token_file))
    assert pending.returncode == 0, pending.stderr
    assert d["decision_id"] in pending.stdout and "1xL3 managers" in pending.stdout
    r = l7(
        "approve",
        d["decision_id"],
        "--target",
        world.stack.target,
        "--token-file",
        str(token_file),
        "--key",
        str(key_file),
        "--key-id",
        "mgr1-cli",
        "--rationale",
        "reviewed",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["reason_code"]) == ("authorized", "quorum_reached")
    assert "clause  managers" in r.stderr  # the approver saw what it signed
    # Without a rationale on a high-band decision, the server refuses and the CLI says why.
    d2 = world.decide(delete())
    r2 = l7(
        "approve", d2["decision_id"], "--target", world.stack.target,
        "--token-file", str(token_file), "--key", str(key_file), "--key-id", "mgr1-cli",
    )  # fmt: skip
    assert r2.returncode == 1
    assert "rationale_required" in r2.stderr
    assert "Traceback" not in r2.stderr


def test_racing_engines_authorize_exactly_once(world: World) -> None:
    """Two engines each add the last-but-one approval from a stale view: the quorum is still
    reached (re-fold after write) and authorized exactly once (unique key per round)."""
    from l7.authority.approval import SignedApproval
    from l7.domain import Status

    d = world.decide(delete())
    svc = world.stack.authority
    assert svc is not None and world.stack.ledger is not None
    stale = svc.engine.get_decision(d["decision_id"])  # this engine's view before the race
    world.approve("mgr1", d)  # "the other engine" records its approval meanwhile
    identity = world.stack.config.verifier.verify(world.bao.token_for("mgr3"))  # type: ignore[union-attr]
    msg = world.signed("mgr3", d)
    signed = SignedApproval.from_json(
        {"payload": json.loads(msg.payload_json), "method": msg.method, "signature": msg.signature}
    )
    out = svc._submit(identity, stale, signed, Verdict.APPROVE, world.clock.unix())
    assert out.status is Status.AUTHORIZED
    results = [p["status"] for p in world.payloads(d, "enforcement.result")]
    assert results == ["pending_authority", "authorized"]
    # A third engine trying to authorize the same round is refused by the ledger, silently.
    again = svc._authorization(out, "mgr3", svc._approvers(out))
    from ledger import DuplicateKey

    with pytest.raises(DuplicateKey):
        world.stack.ledger.append(again)


def test_anomalies_are_recorded_and_repeated_bad_signatures_block(world: World) -> None:
    d = world.decide(delete())
    world.approve("mgr1", d)  # seconds after the request: flagged, not blocked
    kinds = [p["kind"] for p in world.payloads(d, "anomaly.detected")]
    assert kinds == ["approval_too_fast"]
    forger = Ed25519Signer.generate(key_id="mgr3-ed25519")
    reasons = [world.refused("mgr3", d, signer=forger).reason for _ in range(3)]
    assert reasons == ["signature_invalid"] * 3
    kinds = [p["kind"] for p in world.payloads(d, "anomaly.detected")]
    assert kinds.count("repeated_bad_signatures") == 1
    # Policy lists repeated_bad_signatures under anomalies.block: mgr3's next genuine
    # approval inside the window is refused too, and recorded.
    assert world.refused("mgr3", d).reason == "anomaly_blocked"
