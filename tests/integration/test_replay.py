"""``l7 decision replay`` and enforcement modes against the real OPA.

One private repo copy, one work dir (bundle store + activation history) and one ledger:
decisions are made under revision R1 (the committed policy), then the policy changes
(a different risk weight, and the local deployment data puts dev in advisory mode) and
more decisions are made under R2. Replay must reproduce every sampled decision from both
revisions with the exact revision that judged it, and must notice when an R1 decision is
judged by R2 instead (so the test can fail).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from l7.cli.main import main
from l7.client import GovernanceClient
from l7.engine import request_from_dict
from l7.policy.bundle import build_bundle, write_lock
from l7.policy.opa_process import find_opa
from l7.stack import Stack, StackConfig
from ledger import open_ledger
from tests.conftest import REPO, request

pytestmark = pytest.mark.integration

SAMPLE = [
    ("read-dev", request("data.read", env="dev")),
    ("delete-dev", request("data.delete", env="dev", target=("table", "t1"), level=2)),
    ("unknown-dev", request("rm.rf", env="dev")),
    ("deploy-prod", request("deploy.release", env="production", target=("service", "api"))),
]


@dataclass
class World:
    root: Path
    work: Path
    ledger_url: str
    revisions: list[str] = field(default_factory=list)
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)
    """revision -> sample name -> decision id"""
    grpc_answers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _copy_repo(root: Path) -> None:
    shutil.copytree(REPO / "rego", root / "rego", ignore=shutil.ignore_patterns("*_test.rego"))
    (root / "bundles").mkdir()
    for lock in (*(REPO / "bundles").glob("*.lock.json"), *(REPO / "bundles").glob("*.trust.json")):
        shutil.copy(lock, root / "bundles" / lock.name)
    for dep in (REPO / "bundles").glob("*/deployment.json"):
        (root / "bundles" / dep.parent.name).mkdir()
        shutil.copy(dep, root / "bundles" / dep.parent.name / "deployment.json")


def _change_policy(root: Path, work: Path) -> None:
    """R2: dev and production weigh more, and dev runs in advisory mode; production asks
    for advisory too, but the deployment data does not allow it there."""
    data_path = root / "rego" / "l7" / "config" / "data.json"
    data = json.loads(data_path.read_text())
    data["weights"]["environment"]["dev"] = 7
    data["weights"]["environment"]["production"] = 30
    data_path.write_text(json.dumps(data, indent=2))
    dep_path = root / "bundles" / "local" / "deployment.json"
    dep = json.loads(dep_path.read_text())
    dep["enforcement"] = {
        "default": "enforced",
        "environments": {"dev": "advisory", "production": "advisory"},
        "classes": {},
        "allow_relaxed": ["dev"],
    }
    dep_path.write_text(json.dumps(dep, indent=2))
    built = build_bundle("local", repo_root=root, out_dir=work / "bundles", opa_bin=find_opa())
    write_lock(built, root)  # the reviewed change, as `l7 bundle build` would pin it


def _run(world: World, label: str) -> None:
    cfg = StackConfig(
        env="local",
        ledger_url=world.ledger_url,
        repo_root=world.root,
        work_dir=world.work,
        sweep_interval_s=0,
    )
    with Stack(cfg) as stack:
        assert stack.engine is not None and stack.bundle is not None
        world.revisions.append(stack.bundle.revision)
        ids = {}
        for name, req in SAMPLE:
            d, _ = stack.engine.decide(request_from_dict(req))
            assert d.policy_version == stack.bundle.revision
            ids[name] = d.decision_id
        world.decisions[stack.bundle.revision] = ids
        with GovernanceClient(stack.target) as client:
            world.grpc_answers[label] = client.decide(
                request("data.delete", env="dev", target=("table", "t2"), level=2)
            )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("replay")
    w = World(base / "repo", base / "work", f"sqlite:///{base / 'ledger.sqlite'}")
    _copy_repo(w.root)
    _run(w, "r1")
    _change_policy(w.root, w.work)
    _run(w, "r2")
    assert len(set(w.revisions)) == 2
    yield w


def _replay(world: World, decision_id: str, *extra: str) -> int:
    return main(
        [
            "decision",
            "replay",
            decision_id,
            "--ledger",
            world.ledger_url,
            "--work-dir",
            str(world.work),
            "--repo-root",
            str(world.root),
            *extra,
        ]
    )


def test_replay_reproduces_decisions_made_under_two_revisions(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    for revision, ids in world.decisions.items():
        for name, decision_id in ids.items():
            capsys.readouterr()
            rc = _replay(world, decision_id, "--json")
            out = capsys.readouterr()
            assert rc == 0, (name, out.out, out.err)
            report = json.loads(out.out)
            assert report["identical"] is True
            assert report["recorded_revision"] == report["replayed_revision"] == revision
            assert report["replayed"] == report["recorded"]


def test_an_r1_decision_judged_by_r2_differs_field_by_field(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    r1, r2 = world.revisions
    decision_id = world.decisions[r1]["delete-dev"]
    capsys.readouterr()
    assert _replay(world, decision_id, "--against-revision", r2) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out
    assert "risk.score" in out and "enforcement_mode" in out and "effective_outcome" in out


def test_a_revision_missing_from_the_store_is_exit_2(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r1 = world.revisions[0]
    empty = tmp_path / "empty-work"
    empty.mkdir()
    rc = main(
        [
            "decision",
            "replay",
            world.decisions[r1]["read-dev"],
            "--ledger",
            world.ledger_url,
            "--work-dir",
            str(empty),
            "--repo-root",
            str(world.root),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert f"is not in the store {empty / 'bundles'}" in err
    assert _replay(world, "no-such-decision") == 2
    assert "no such decision" in capsys.readouterr().err


def test_an_altered_stored_bundle_is_not_replayed(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r1 = world.revisions[0]
    work = tmp_path / "work"
    shutil.copytree(world.work, work)
    for p in (work / "bundles").glob("*.tar.gz"):
        p.write_bytes(p.read_bytes() + b"\0")  # named by a digest it no longer has
    rc = main(
        [
            "decision",
            "replay",
            world.decisions[r1]["deploy-prod"],
            "--ledger",
            world.ledger_url,
            "--work-dir",
            str(work),
            "--repo-root",
            str(world.root),
        ]
    )
    assert rc == 2
    assert "is not named by its content" in capsys.readouterr().err


def test_advisory_mode_from_the_signed_bundle_records_and_does_not_block(world: World) -> None:
    r1, r2 = world.revisions
    led = open_ledger(world.ledger_url, create=False)
    try:
        streams = {
            rev: {n: led.get_stream(i) for n, i in ids.items()}
            for rev, ids in world.decisions.items()
        }
        activations = [
            e.payload for e in led.get_stream("policy/local") if e.event_type == "policy.activated"
        ]
    finally:
        led.close()

    def result(rev: str, name: str) -> dict[str, Any]:
        (e,) = [e for e in streams[rev][name] if e.event_type == "enforcement.result"]
        return dict(e.payload)

    # R1 (committed policy): everything enforced.
    assert result(r1, "delete-dev")["outcome"] == "QUEUE"
    assert result(r1, "unknown-dev")["outcome"] == "DENY"
    # R2: dev is advisory: policy's answer is recorded, the effective outcome is ALLOW.
    for name, policy in (("delete-dev", "QUEUE"), ("unknown-dev", "DENY")):
        r = result(r2, name)
        assert (r["outcome"], r["policy_outcome"], r["status"]) == ("ALLOW", policy, "authorized")
        assert (r["enforcement_mode"], r["waived"], r["reason_code"]) == (
            "advisory",
            "policy",
            "advisory_mode",
        )
    # Production asked for advisory without allow_relaxed: still enforced, and says why.
    prod = result(r2, "deploy-prod")
    assert (prod["outcome"], prod["enforcement_mode"]) == ("QUEUE", "enforced")
    assert "waived" not in prod
    (evaluated,) = [e for e in streams[r2]["deploy-prod"] if e.event_type == "decision.evaluated"]
    assert any("not in enforcement.allow_relaxed" in r for r in evaluated.payload["reasons"])
    # The mode change is a policy.activated event naming the old and the new configuration.
    (act,) = [a for a in activations if a["revision"] == r2]
    assert act["previous_revision"] == r1
    assert act["previous_enforcement"]["environments"] == {}
    assert act["enforcement"]["environments"] == {"dev": "advisory", "production": "advisory"}
    assert act["enforcement"]["allow_relaxed"] == ["dev"]
    # Over gRPC the caller sees both outcomes, the mode and that policy was not enforced.
    before, after = world.grpc_answers["r1"], world.grpc_answers["r2"]
    assert (before["outcome"], before["policy_outcome"], before["enforcement_mode"]) == (
        "QUEUE",
        "QUEUE",
        "enforced",
    )
    assert (after["outcome"], after["policy_outcome"], after["enforcement_mode"]) == (
        "ALLOW",
        "QUEUE",
        "advisory",
    )
    assert after["enforcement_waived"] == "policy" and after["status"] == "authorized"
