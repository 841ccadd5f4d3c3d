"""Signed bundles end to end: OPA serves only what we signed, decisions name the locked
revision, and a bundle altered on disk never serves (the engine then denies)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7 import tls
from l7.client import GovernanceClient
from l7.crypto import Ed25519Signer, load_private_key, save_private_key
from l7.engine import request_from_dict
from l7.errors import BundleError, ConfigError, PolicyStoreDegraded
from l7.identity import JwksFile, JwtVerifier
from l7.policy import (
    DEFAULT_SIGNING_KEY,
    BuiltBundle,
    activate,
    read_lock,
    verify_built,
    verify_lock,
)
from l7.policy.opa_process import OpaProcess, find_opa, free_port
from l7.policy.signing import Signer, load_or_create_signing_key
from l7.stack import Stack, StackConfig
from l7.trust import public_entry
from tests.conftest import REPO, example, flip_one_byte, rewrite_bundle
from tests.l7.identity.forge import AUDIENCE, ISSUER, jwks, new_key

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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", "bundle", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def test_cli_verify_checks_the_signature(tmp_path: Path) -> None:
    key = tmp_path / "ci.pem"
    r = _cli("verify", "--env", "local", "--env", "dev", "--signing-key", str(key))
    assert r.returncode == 0, r.stderr
    assert "dev: lock matches" in r.stdout and "local: lock matches" in r.stdout
    assert "signature by l7b-" in r.stdout and "verified" in r.stdout
    assert (key.stat().st_mode & 0o777) == 0o600
    # Staging and production pin their signers: without a pinned key the content is
    # still checked; a key of anyone else's never signs them.
    r = _cli("verify")
    assert r.returncode == 0, r.stderr
    assert "production: lock matches" in r.stdout and "not signed here" in r.stdout
    r = _cli("verify", "--env", "production", "--signing-key", str(key))
    assert r.returncode == 1
    assert "pins only the bundle signers" in r.stderr


# -- production signs only with a key pinned in git (issue #12 item 1) -------------------


@dataclass(frozen=True)
class Production:
    """A copy of the repository whose production trust file pins keys made for this
    test (tier keys and one bundle signer), and what a production engine needs besides."""

    repo: Path
    pinned_key: Path
    pinned: Signer
    verifier: JwtVerifier
    cert_dir: Path
    tier_key: Path


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Production:
    root = tmp_path_factory.mktemp("production")
    repo = root / "repo"
    shutil.copytree(REPO / "rego", repo / "rego")
    shutil.copytree(REPO / "bundles", repo / "bundles")
    keys = root / "held-outside-the-repo"
    tier = keys / "tier-engine.pem"
    keys.mkdir(mode=0o700)
    save_private_key(tier, Ed25519PrivateKey.generate())
    _, pinned = load_or_create_signing_key(keys / "bundle-signing.pem")
    trust = repo / "bundles" / "production.trust.json"
    raw = json.loads(trust.read_text())
    raw["tiers"] = {"engine": [public_entry(Ed25519Signer(load_private_key(tier)))]}
    raw["bundle_signers"] = [{"kid": pinned.kid, "public_key": pinned.public_key_pem}]
    trust.write_text(json.dumps(raw, indent=2) + "\n")
    pki = root / "pki"
    ca = tls.init_ca(root / "ca")  # the CA key stays out of the tiers' directory
    tls.publish_ca(ca, pki)
    tls.issue(ca, "engine", pki)
    (root / "jwks.json").write_text(json.dumps(jwks(new_key("ES256"))))
    verifier = JwtVerifier(JwksFile(root / "jwks.json"), issuer=ISSUER, audience=AUDIENCE)
    return Production(repo, keys / "bundle-signing.pem", pinned, verifier, pki, tier)


def _production(p: Production, work: Path, bundle_key: Path | None) -> Stack:
    return Stack(
        StackConfig(
            env="production",
            ledger_url=f"sqlite:///{work / 'ledger.sqlite'}",
            repo_root=p.repo,
            work_dir=work,
            verifier=p.verifier,
            cert_dir=p.cert_dir,
            tier_key=p.tier_key,
            bundle_signing_key=bundle_key,
            sweep_interval_s=0,
        )
    )


def test_production_serves_only_a_bundle_signed_by_its_pinned_key(
    production: Production, tmp_path: Path
) -> None:
    with _production(production, tmp_path, production.pinned_key) as stack:
        assert stack.bundle is not None and stack.opa is not None and stack.engine is not None
        assert stack.bundle.signer == production.pinned
        assert stack.opa.signer == production.pinned  # OPA verifies with the pinned key only
        assert stack.activation is not None
        assert stack.activation["signer_kid"] == production.pinned.kid
        d, _ = stack.engine.decide(request_from_dict(example("deploy-prod.json")))
        assert d.policy_version == read_lock("production", production.repo).revision
    assert not (tmp_path / DEFAULT_SIGNING_KEY).exists()  # nothing made a key of its own


def test_production_refuses_to_start_with_a_key_that_is_not_pinned(
    production: Production, tmp_path: Path
) -> None:
    # No --bundle-signing-key: refused naming the flag, even with a key of its own at hand
    # (made by an earlier local run in the same work dir), and no key is created.
    own = tmp_path / "own"
    load_or_create_signing_key(own / DEFAULT_SIGNING_KEY)
    with pytest.raises(
        ConfigError, match="refusing to serve production without --bundle-signing-key"
    ):
        _production(production, own, None).start()
    assert not (tmp_path / "empty" / DEFAULT_SIGNING_KEY).exists()
    with pytest.raises(ConfigError, match="--bundle-signing-key"):
        _production(production, tmp_path / "empty", None).start()
    assert not (tmp_path / "empty" / DEFAULT_SIGNING_KEY).exists()
    # A key file that does not exist is not created.
    missing = tmp_path / "keys" / "new.pem"
    with pytest.raises(BundleError, match="no bundle signing key at"):
        _production(production, tmp_path / "w1", missing).start()
    assert not missing.exists()
    # A freshly created key, and the engine's own key, are not pinned: refused by kid.
    load_or_create_signing_key(missing)
    for key in (missing, own / DEFAULT_SIGNING_KEY):
        with pytest.raises(
            BundleError, match=f"pins only the bundle signers {production.pinned.kid}"
        ):
            _production(production, tmp_path / "w2", key).start()
    assert not (tmp_path / "w2" / "bundles").exists()  # refused before anything was built
    assert not (tmp_path / "w2" / "ledger.sqlite").exists()  # ... or any ledger opened


def test_production_without_pinned_signers_refuses_to_start(
    production: Production, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(production.repo, repo)
    trust = repo / "bundles" / "production.trust.json"
    raw = json.loads(trust.read_text())
    raw["bundle_signers"] = []
    trust.write_text(json.dumps(raw))
    p = Production(**{**production.__dict__, "repo": repo})
    with pytest.raises(BundleError, match=rf"{trust} pins no bundle signers for 'production'"):
        _production(p, tmp_path / "w", production.pinned_key).start()
