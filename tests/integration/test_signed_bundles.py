"""Signed bundles end to end: OPA serves only what we signed, decisions name the locked
revision, and a bundle altered on disk never serves (the engine then denies)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from l7.client import GovernanceClient
from l7.errors import BundleError, PolicyStoreDegraded
from l7.policy import BuiltBundle, activate, verify_built, verify_lock
from l7.policy.opa_process import OpaProcess, find_opa, free_port
from l7.stack import Stack, StackConfig
from tests.conftest import REPO, example, flip_one_byte, rewrite_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def signed(tmp_path: Path) -> BuiltBundle:
    """The committed local lock, rebuilt and signed with a key made for this test."""
    return verify_lock(
        "local",
        repo_root=REPO,
        out_dir=tmp_path / "bundles",
        opa_bin=find_opa(),
        signing_key=tmp_path / "keys" / "bundle-signing.pem",
    )


def _stack(tmp_path: Path, opa_url: str) -> Stack:
    cfg = StackConfig(
        env="local",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        opa_url=opa_url,
    )
    return Stack(cfg)


@pytest.fixture
def signed_opa(signed: BuiltBundle, tmp_path: Path) -> Iterator[OpaProcess]:
    activate("local", signed, work_dir=tmp_path)
    with OpaProcess(
        signed.path, opa_bin=find_opa(), signer=signed.signer, scope=signed.scope
    ) as opa:
        yield opa


def test_decisions_are_judged_by_the_signed_locked_revision(
    signed: BuiltBundle, signed_opa: OpaProcess, tmp_path: Path
) -> None:
    with _stack(tmp_path, signed_opa.url) as stack, GovernanceClient(stack.target) as c:
        d = c.decide(example("read-dev.json"))
    assert d["outcome"] == "ALLOW"
    assert d["policy_version"] == signed.revision


def test_a_bundle_altered_after_the_build_never_serves(signed: BuiltBundle, tmp_path: Path) -> None:
    # Flip one byte of one policy file inside the built tarball, keeping the signature.
    signed.path.write_bytes(
        rewrite_bundle(signed.path.read_bytes(), flip_one_byte("l7/gates/gates.rego"))
    )

    with pytest.raises(BundleError, match=r"l7/gates/gates\.rego does not match its signature"):
        verify_built(signed)
    opa = OpaProcess(signed.path, opa_bin=find_opa(), signer=signed.signer, scope=signed.scope)
    with pytest.raises(PolicyStoreDegraded, match=r"l7/gates/gates\.rego: digest mismatch"):
        opa.start(ready_timeout_s=10)
    # Nothing serves on that address now: the engine fails closed.
    down = f"http://127.0.0.1:{free_port()}"
    with _stack(tmp_path, down) as stack, GovernanceClient(stack.target) as c:
        d = c.decide(example("read-dev.json"))
    assert (d["outcome"], d["reason_code"]) == ("DENY", "policy_store_degraded")


def test_cli_verify_checks_the_signature(tmp_path: Path) -> None:
    key = tmp_path / "ci.pem"
    r = subprocess.run(
        [sys.executable, "-m", "l7.cli.main", "bundle", "verify", "--signing-key", str(key)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "production: lock matches" in r.stdout
    assert "signature by l7b-" in r.stdout and "verified" in r.stdout
    assert (key.stat().st_mode & 0o777) == 0o600
