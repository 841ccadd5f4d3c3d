"""``l7 demo``: a private stack on free ports and a scenario a newcomer can read.

The stack is real: OPA with the locked bundle, a SQLite ledger file, the gRPC
server, and an OpenBao dev server as the identity provider (OIDC tokens for every
person and agent) and as the transit signer of one approver.

1. a low-risk read in dev is allowed
2. an unknown action class is denied by the allowlist gate
3. a production deploy is queued for authority (who must sign is shown)
4. a production table delete is queued, then approved by two managers - one with a
   local ed25519 key, one with an OpenBao transit key - and becomes authorized
5. the same request retried with its idempotency key returns the same decision
6. governed tools (examples/governed_tools.py) behind the gateway: a read runs, a file
   delete waits for a supervisor and then runs, a production debug shell is denied, a
   replayed grant is refused, and grants used outside their environment are refused
   (a dev grant presented as production; a staging grant at a gateway that does not
   guard staging)
7. 30 days pass: the table delete authorized in step 4 was never executed; its
   execution window closed, so the grant is refused (authorization_expired, recorded)
8. OPA is stopped mid-run: the next request is denied (policy_store_degraded), and recorded
9. a decision is rebuilt from the ledger alone, and the whole ledger verifies
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hvac

from l7.authority.approval import ApprovalPayload, Rationale, Verdict, sign_approval
from l7.cli.progress import Progress
from l7.client import GovernanceClient, RemoteError
from l7.crypto import Ed25519Signer, Signer, TransitSigner
from l7.devstack.openbao import OpenBaoDev
from l7.engine.state import fold_decision
from l7.gateway.client import Denied, GatewayClient, Governed, PendingAuthority
from l7.identity import JwksUrl, JwtVerifier, claim_map_for_openbao
from l7.server.convert import request_to_proto
from l7.stack import REPO_ROOT, Stack, StackConfig
from l7.v1 import governance_pb2 as pb

__all__ = ["run_demo"]

EXAMPLES = REPO_ROOT / "examples" / "requests"
# Everyone in the scenario: (level, scopes). Agents are identities too.
CAST = {
    "agent-reporter": (1, ["data"]),
    "agent-janitor": (1, ["shell"]),
    "alice": (1, ["deploy", "data"]),
    "ana": (3, ["data"]),
    "ben": (3, ["data"]),
    "sam": (4, ["*"]),
    "sue": (2, ["data"]),
    "agent-ops": (1, ["data"]),
}


# The roles each identity's token grants (a request may only claim one of them).
ROLES = {
    "agent-reporter": ["agent"],
    "agent-janitor": ["agent"],
    "alice": ["engineer"],
    "ana": ["manager"],
    "ben": ["manager"],
    "sam": ["security"],
    "sue": ["supervisor"],
    "agent-ops": ["agent"],
}


def _load(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    return obj


def _step(n: int, title: str) -> None:
    print(f"\n[{n}] {title}")


def _show(d: dict[str, Any]) -> None:
    risk = d.get("risk") or {}
    print(f"    outcome  : {d['outcome']}  (status {d['status']}, reason {d['reason_code']})")
    if risk.get("band"):
        print(f"    risk     : {risk.get('score', 0)} / {risk['band']}")
    for g in d.get("gates", []):
        if not g.get("passed"):
            print(f"    gate     : {g['id']} FAILED - {g['reason']}")
    clauses = (d.get("authority_progress") or {}).get("clauses", [])
    for c in clauses if d["outcome"] != "DENY" else []:
        signed = ", ".join(c.get("approvers", [])) or "nobody yet"
        print(
            f"    needs    : {c.get('count', 0)} x L{c.get('min_level', 0)}+ ({c['clause_id']}) "
            f"- signed by {signed}, missing {c.get('missing', 0)}"
        )
    for r in d.get("reasons", [])[:3]:
        print(f"    why      : {r}")
    print(f"    ledger   : global_seq {d['ledger']['global_seq']}  {d['ledger']['hash'][:16]}...")


def _signed(who: str, d: dict[str, Any], signer: Signer) -> pb.SignedApproval:
    payload = ApprovalPayload.new(
        d["decision_id"],
        d["intent_hash"],
        Verdict.APPROVE,
        who,
        signer.key_id,
        ttl_s=600,
        now=int(time.time()),
        rationale=Rationale("reviewed the retention policy; table is a stale copy", "CHG-1042"),
    )
    s = sign_approval(payload, signer)
    return pb.SignedApproval(
        payload_json=json.dumps(s.payload.to_signed_dict()),
        method=s.method.value,
        signature=s.signature,
    )


class _DemoClock:
    """The engine's and gateway's clock: real time, until step 7 moves it 30 days on."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def run_demo(*, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="l7-demo-"))
    ledger_url = f"sqlite:///{work / 'ledger.sqlite'}"
    print(f"Layer-7 demo - private stack, ledger at {work / 'ledger.sqlite'}")
    try:
        with OpenBaoDev(work_dir=work) as bao:
            for name, (level, scopes) in CAST.items():
                bao.make_user(name, level, team="platform", scopes=scopes, roles=ROLES[name])
            verifier = JwtVerifier(
                JwksUrl(bao.jwks_url),
                issuer=bao.issuer,
                audience=bao.audience,
                claim_map=claim_map_for_openbao(),
            )
            clock = _DemoClock()
            cfg = StackConfig(
                env="local",
                ledger_url=ledger_url,
                work_dir=work,
                verifier=verifier,
                gateway=True,
                # this gateway guards dev and production, not staging (step 6)
                gateway_environments=("dev", "production"),
                clock=clock,
            )
            with Stack(cfg) as stack:
                return _scenario(stack, bao, work, clock)
    finally:
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _tools(gov: Governed, sandbox: Path, accounts: dict[str, int]) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(
        "governed_tools", REPO_ROOT / "examples" / "governed_tools.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tools: dict[str, Any] = mod.build(gov, sandbox, accounts)
    return tools


def _governed_tools(stack: Stack, bao: OpenBaoDev, work: Path) -> None:
    sandbox = work / "sandbox"
    sandbox.mkdir()
    (sandbox / "report.csv").write_text("day,count\n1,42\n")
    (sandbox / "stale.tmp").write_text("old")
    gov = Governed(
        engine=stack.target,
        gateway=stack.gateway_target,
        actor={"id": "agent-ops", "role": "agent", "level": 1},
        environment="dev",
        token=bao.token_for("agent-ops"),
    )
    tools = _tools(gov, sandbox, {"ops": 100, "vendor": 0})
    print(f"    gateway on {stack.gateway_target}; tools from examples/governed_tools.py")
    print(f"    read_file('report.csv') -> {tools['read_file']('report.csv')}  (allowed, executed)")
    try:
        tools["delete_file"]("stale.tmp")
    except PendingAuthority as p:
        print(f"    delete_file('stale.tmp') -> waiting: {p}")
        sue = Ed25519Signer.generate(key_id="sue-laptop")
        with GovernanceClient(stack.target, token=bao.token_for("sam")) as sec:
            sec.register_key("sue", sue.key_id, "ed25519", sue.public_key_raw)
        with GovernanceClient(stack.target, token=bao.token_for("sue")) as c:
            d = c.get_decision(p.decision_id)
            c.approve(p.decision_id, _signed("sue", d, sue))
        print("    sue (L2 supervisor) approves; the agent resumes the same call")
        out = tools["delete_file"].resume(p.decision_id, "stale.tmp")
        print(f"    delete_file resumed -> {out['deleted']} deleted, file exists: "
              f"{(sandbox / 'stale.tmp').exists()}")  # fmt: skip
    prod = Governed(
        engine=stack.target,
        gateway=stack.gateway_target,
        actor={"id": "agent-ops", "role": "agent", "level": 1},
        environment="production",
        token=bao.token_for("agent-ops"),
    )
    try:
        _tools(prod, sandbox, {})["debug_exec"]("web-1", "bash")
    except Denied as e:
        print(f"    debug_exec('web-1') in production -> denied ({e.reasons[0][:70]}...)")
    # A grant is single-use: presenting it twice is refused by the ledger's unique key.
    with GovernanceClient(stack.target, token=bao.token_for("agent-reporter")) as c:
        replay = _load("read-dev.json")
        replay["idempotency_key"] = "demo-replay"
        r = c.decide_proto(request_to_proto(replay))
    gw = GatewayClient(stack.gateway_target)
    gw.authorize(r.grant, replay["action"], environment="dev")
    try:
        gw.authorize(r.grant, replay["action"], environment="dev")
    except RemoteError as e:
        print(f"    the same grant presented again -> refused: {e.reason}")
        assert e.reason == "grant_replayed"
    # The environment is part of the action: a grant is good only where it was judged.
    with GovernanceClient(stack.target, token=bao.token_for("agent-reporter")) as c:
        cross = _load("read-dev.json")
        cross["idempotency_key"] = "demo-cross-env"
        r = c.decide_proto(request_to_proto(cross))
        staging = _load("read-dev.json")
        staging["idempotency_key"] = "demo-staging"
        staging["context"]["environment"] = "staging"
        s = c.decide_proto(request_to_proto(staging))
    for grant, env, what in (
        (r.grant, "production", "a dev grant presented for production"),
        (s.grant, "staging", "a staging grant at this dev+production gateway"),
    ):
        try:
            gw.authorize(grant, cross["action"], environment=env)
            raise AssertionError(f"{what} was accepted")
        except RemoteError as e:
            print(f"    {what} -> refused: {e.reason}")
            assert e.reason == "environment_mismatch", e
    gw.close()
    gov.close()
    prod.close()


def _scenario(stack: Stack, bao: OpenBaoDev, work: Path, clock: _DemoClock) -> int:
    assert stack.opa is not None and stack.bundle is not None and stack.ledger is not None
    print(f"    OPA {stack.opa.url} serving bundle {stack.bundle.revision[:12]}")
    print(f"    OpenBao {bao.url} is the identity provider (OIDC) and transit signer")
    print(f"    Governance gRPC on {stack.target}")

    def as_(who: str) -> GovernanceClient:
        return GovernanceClient(stack.target, token=bao.token_for(who))

    _step(1, "agent-reporter reads a dataset in dev (examples/requests/read-dev.json)")
    with as_("agent-reporter") as c:
        first = c.decide(_load("read-dev.json"))
    _show(first)
    assert first["outcome"] == "ALLOW", first

    _step(2, "agent-janitor asks for an action class that is not on the allowlist")
    with as_("agent-janitor") as c:
        d = c.decide(_load("unknown-class.json"))
    _show(d)
    assert d["outcome"] == "DENY", d

    _step(3, "alice's pipeline deploys payments-api to production")
    with as_("alice") as c:
        queued = c.decide(_load("deploy-prod.json"))
    _show(queued)
    assert queued["outcome"] == "QUEUE", queued

    _step(4, "alice asks to delete a production table: two managers must sign")
    ana = Ed25519Signer.generate(key_id="ana-laptop")
    bao.enable_transit()
    bao.create_transit_key("ben")
    ben = TransitSigner(hvac.Client(url=bao.url, token=bao.user_token("ben")), "ben", key_version=1)
    with as_("sam") as sec:
        sec.register_key("ana", ana.key_id, "ed25519", ana.public_key_raw)
        sec.register_key("ben", ben.key_id, "vault-transit", bao.transit_public_key("ben"))
    print("    sam (L4 security) registered ana's ed25519 key and ben's OpenBao transit key")
    delete = {
        "action": {
            "class": "data.delete",
            "intent": "drop the stale orders_2019 copy",
            "target": {"type": "table", "id": "orders_2019"},
            "payload": {},
        },
        "context": {
            "actor": {"id": "alice", "role": "engineer", "level": 1},
            "environment": "production",
            "request_source": "cli",
        },
    }
    with as_("alice") as c:
        d = c.decide(delete)
    _show(d)
    assert d["outcome"] == "QUEUE", d
    print("    ana approves (signs decision id + intent hash + nonce + expiry with ed25519)")
    with as_("ana") as c:
        d = c.approve(d["decision_id"], _signed("ana", d, ana))
    _show(d)
    assert d["status"] == "pending_authority", d
    print("    ben approves (signature made by OpenBao transit: vault:v1:...)")
    with as_("ben") as c:
        d = c.approve(d["decision_id"], _signed("ben", d, ben))
    _show(d)
    assert d["status"] == "authorized", d
    table = d  # authorized, and left unexecuted until step 7

    _step(5, "agent-reporter retries step 1 with the same idempotency key")
    with as_("agent-reporter") as c:
        again = c.decide(_load("read-dev.json"))
    same = again["decision_id"] == first["decision_id"]
    rid, replayed = again["decision_id"], again["replayed"]
    print(f"    same decision {rid}: {same}, replayed={replayed}")
    assert same and replayed

    _step(6, "governed tools run only through the gateway")
    _governed_tools(stack, bao, work)

    _step(7, "30 days later: alice fetches a grant for the table delete authorized in step 4")
    clock.offset = timedelta(days=30)
    with as_("alice") as c:
        try:
            c.get_grant(table["decision_id"])
            raise AssertionError("a 30-day-old authorization was granted")
        except RemoteError as e:
            print(f"    refused: {e.reason} - {e.message[:90]}")
            assert e.reason == "authorization_expired", e
        stale = c.get_decision(table["decision_id"])
    print(
        f"    the decision is now {stale['status']} ({stale['reason_code']}), as the ledger records"
    )
    assert stale["status"] == "expired", stale

    _step(8, "OPA goes down; the same kind of request is now refused (fail closed)")
    stack.opa.stop()
    down = _load("read-dev.json")
    down["idempotency_key"] = "weekly-report-opa-down"
    with as_("agent-reporter") as c:
        d = c.decide(down)
    _show(d)
    assert d["outcome"] == "DENY" and d["reason_code"] == "policy_store_degraded", d

    _step(9, "the ledger alone tells what happened, and proves it was not altered")
    stream = stack.ledger.get_stream(queued["decision_id"])
    rebuilt = fold_decision(stream)
    print(
        f"    decision {rebuilt.decision_id} rebuilt from {len(stream)} events: "
        f"{rebuilt.outcome.value} / {rebuilt.status.value}"
    )
    report = stack.ledger.verify(progress=Progress("    verifying"))
    print(f"    ledger verified: {report.events} events, {report.streams} streams")
    print("\nDemo complete.")
    return 0
