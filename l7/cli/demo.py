"""``l7 demo``: a private stack on free ports and a scenario a newcomer can read.

1. a low-risk read in dev is allowed
2. an unknown action class is denied by the allowlist gate
3. a production deploy is queued for authority (who must sign is shown)
4. the same request retried with its idempotency key returns the same decision
5. OPA is stopped mid-run: the next request is denied (policy_store_degraded), and recorded
6. a decision is rebuilt from the ledger alone, and the whole ledger verifies
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from l7.cli.progress import Progress
from l7.client import GovernanceClient
from l7.engine.state import fold_decision
from l7.stack import REPO_ROOT, Stack, StackConfig

__all__ = ["run_demo"]

EXAMPLES = REPO_ROOT / "examples" / "requests"


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
    failed = [g for g in d.get("gates", []) if not g.get("passed")]
    for g in failed:
        print(f"    gate     : {g['id']} FAILED - {g['reason']}")
    auth = d.get("authority") or {}
    for c in auth.get("clauses", []):
        print(f"    needs    : {c.get('count', 0)} x L{c.get('min_level', 0)}+ ({c['id']})")
    for r in d.get("reasons", [])[:3]:
        print(f"    why      : {r}")
    print(f"    ledger   : global_seq {d['ledger']['global_seq']}  {d['ledger']['hash'][:16]}...")


def run_demo(*, keep: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="l7-demo-"))
    ledger_url = f"sqlite:///{work / 'ledger.sqlite'}"
    print(f"Layer-7 demo - private stack, ledger at {work / 'ledger.sqlite'}")
    try:
        with Stack(StackConfig(env="local", ledger_url=ledger_url, work_dir=work)) as stack:
            assert stack.opa is not None and stack.bundle is not None and stack.ledger is not None
            print(f"    OPA {stack.opa.url} serving bundle {stack.bundle.revision[:12]}")
            print(f"    Governance gRPC on {stack.target}")
            with GovernanceClient(stack.target) as client:
                _step(1, "agent reads a dataset in dev (examples/requests/read-dev.json)")
                first = client.decide(_load("read-dev.json"))
                _show(first)
                assert first["outcome"] == "ALLOW", first

                _step(2, "agent asks for an action class that is not on the allowlist")
                d = client.decide(_load("unknown-class.json"))
                _show(d)
                assert d["outcome"] == "DENY", d

                _step(3, "pipeline deploys payments-api to production")
                queued = client.decide(_load("deploy-prod.json"))
                _show(queued)
                assert queued["outcome"] == "QUEUE", queued

                _step(4, "the agent retries step 1 with the same idempotency key")
                again = client.decide(_load("read-dev.json"))
                same = again["decision_id"] == first["decision_id"]
                rid, replayed = again["decision_id"], again["replayed"]
                print(f"    same decision {rid}: {same}, replayed={replayed}")
                assert same and again["replayed"]

                _step(5, "OPA goes down; the same kind of request is now refused (fail closed)")
                stack.opa.stop()
                down = _load("read-dev.json")
                down["idempotency_key"] = "weekly-report-opa-down"
                d = client.decide(down)
                _show(d)
                assert d["outcome"] == "DENY" and d["reason_code"] == "policy_store_degraded", d

            _step(6, "the ledger alone tells what happened, and proves it was not altered")
            rebuilt = fold_decision(stack.ledger.get_stream(queued["decision_id"]))
            print(
                f"    decision {rebuilt.decision_id} rebuilt from "
                f"{len(stack.ledger.get_stream(queued['decision_id']))} events: "
                f"{rebuilt.outcome.value} / {rebuilt.status.value}"
            )
            report = stack.ledger.verify(progress=Progress("    verifying"))
            print(f"    ledger verified: {report.events} events, {report.streams} streams")
        print("\nDemo complete.")
        return 0
    finally:
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
