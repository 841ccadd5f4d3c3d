"""Signed bundles: OPA and our own verifier refuse anything but what we signed;
promotion rewrites only a lock; activations never silently roll back."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from l7.errors import BundleError, ConfigError, PolicyStoreDegraded
from l7.policy import (
    BuiltBundle,
    activate,
    activation_record,
    build_bundle,
    is_rollback,
    promote,
    read_activations,
    read_lock,
    verify_built,
    verify_lock,
    write_lock,
)
from l7.policy.opa_process import OpaProcess
from l7.policy.signing import (
    Signer,
    canonical_json,
    load_or_create_signing_key,
    signature_file_hash,
    verify_bundle_signature,
)
from l7.trust import load_trust, pin_bundle_signer
from tests.conftest import REPO

OPA = Path(os.environ.get("L7_OPA_BIN", str(REPO / ".tools" / "opa")))

needs_opa = pytest.mark.skipif(
    not OPA.is_file(), reason=f"OPA binary {OPA} not found (run 'make setup')"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "rego", root / "rego")
    shutil.copytree(
        REPO / "bundles", root / "bundles", ignore=shutil.ignore_patterns("*.lock.json")
    )
    return root


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "bundle-signing.pem"


def _signed(repo: Path, tmp_path: Path, key: Path, env: str = "local") -> BuiltBundle:
    return build_bundle(env, repo_root=repo, out_dir=tmp_path / "out", opa_bin=OPA, signing_key=key)


def _repack(src: Path, dest: Path, change: dict[str, bytes | None]) -> None:
    """Copy a bundle tarball, replacing (or, with None, dropping) the named members."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin:
            name = m.name.lstrip("/")
            f = tin.extractfile(m)
            data = f.read() if f is not None else b""
            if name in change:
                new = change[name]
                if new is None:
                    continue
                data = new
            info = tarfile.TarInfo(m.name)
            info.size, info.mode, info.mtime = len(data), m.mode, m.mtime
            tout.addfile(info, io.BytesIO(data))


def _member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        f = tar.extractfile("/" + name)
        assert f is not None
        return f.read()


# -- keys and digests ---------------------------------------------------------------------


def test_signing_key_is_created_private_once(key: Path) -> None:
    _, signer = load_or_create_signing_key(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert signer.kid.startswith("l7b-") and len(signer.kid) == 20
    assert Path(str(key) + ".pub").read_text() == signer.public_key_pem
    _, again = load_or_create_signing_key(key)
    assert again == signer
    key.chmod(0o644)
    with pytest.raises(BundleError, match="readable by others"):
        load_or_create_signing_key(key)


def test_canonical_json_matches_opa_rules() -> None:
    assert canonical_json(b'{"b": 1.50, "a": [1, {"z": null, "y": true}], "c": "<&>\\u00e9"}') == (
        '{"a":[1,{"y":true,"z":null}],"b":1.50,"c":"<&>\u00e9"}'.encode()
    )
    assert signature_file_hash("l7/x.rego", b"a b") == signature_file_hash("other", b"a b")
    assert signature_file_hash("data.json", b'{"a": 1}') == signature_file_hash(
        "data.json", b'{"a":1}'
    )


# -- signed builds ------------------------------------------------------------------------


@needs_opa
def test_signed_build_verifies_and_holds_the_locked_content(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    signed = _signed(repo, tmp_path, key)
    unsigned = build_bundle("local", repo_root=repo, out_dir=tmp_path / "u", opa_bin=OPA)
    assert signed.signer is not None
    assert (signed.revision, signed.bundle_sha256) == (unsigned.revision, unsigned.bundle_sha256)
    assert signed.path.name == f"{signed.digest}.tar.gz" != f"{signed.bundle_sha256}.tar.gz"
    signer, files = verify_bundle_signature(
        signed.path, {signed.signer.kid: signed.signer}, scope="l7/local"
    )
    assert signer == signed.signer
    assert {"l7/decision/decision.rego", ".manifest", "data.json"} <= set(files)
    assert verify_built(signed) == signed.signer
    header = _member(signed.path, ".signatures.json")
    assert json.loads(header)["plugin"] == "_default"


@needs_opa
def test_tampered_bundle_fails_our_check_naming_the_file(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    built = _signed(repo, tmp_path, key)
    rego = bytearray(_member(built.path, "l7/risk/risk.rego"))
    rego[-2] ^= 0x01
    tampered = tmp_path / "tampered.tar.gz"
    _repack(built.path, tampered, {"l7/risk/risk.rego": bytes(rego)})
    shutil.copyfile(tampered, built.path)  # the file on disk changes after the build
    with pytest.raises(BundleError, match=r"l7/risk/risk\.rego does not match its signature"):
        verify_built(built)


@needs_opa
def test_unsigned_extra_and_foreign_signatures_are_refused(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    built = _signed(repo, tmp_path, key)
    assert built.signer is not None
    trusted = {built.signer.kid: built.signer}
    extra = tmp_path / "extra.tar.gz"
    _repack(built.path, extra, {"l7/extra.rego": None})
    with tarfile.open(extra, "r:gz") as tin:
        members = [(m, tin.extractfile(m)) for m in tin]
        with tarfile.open(tmp_path / "plus.tar.gz", "w:gz") as tout:
            for m, f in members:
                tout.addfile(m, f)
            info = tarfile.TarInfo("/l7/extra.rego")
            body = b"package l7.extra\n\nx := 1\n"
            info.size = len(body)
            tout.addfile(info, io.BytesIO(body))
    with pytest.raises(BundleError, match=r"not covered by the signature: l7/extra\.rego"):
        verify_bundle_signature(tmp_path / "plus.tar.gz", trusted)
    unsigned = tmp_path / "unsigned.tar.gz"
    _repack(built.path, unsigned, {".signatures.json": None})
    with pytest.raises(BundleError, match="is not signed"):
        verify_bundle_signature(unsigned, trusted)
    other = _signed(repo, tmp_path / "o", tmp_path / "other.pem")
    with pytest.raises(BundleError, match=r"signed by key l7b-\w+, which is not trusted"):
        verify_bundle_signature(other.path, trusted)
    assert other.signer is not None
    forged = Signer(kid=built.signer.kid, public_key_pem=other.signer.public_key_pem)
    with pytest.raises(BundleError, match="does not verify"):
        verify_bundle_signature(built.path, {built.signer.kid: forged})
    with pytest.raises(BundleError, match="signature scope 'l7/local', expected 'l7/production'"):
        verify_bundle_signature(built.path, trusted, scope="l7/production")


# -- OPA refuses what we did not sign ---------------------------------------------------


@needs_opa
def test_opa_activates_the_signed_bundle(repo: Path, tmp_path: Path, key: Path) -> None:
    built = _signed(repo, tmp_path, key)
    with OpaProcess(built.path, opa_bin=OPA, signer=built.signer, scope=built.scope) as opa:
        assert opa.running()


@needs_opa
def test_opa_refuses_a_tampered_bundle(repo: Path, tmp_path: Path, key: Path) -> None:
    built = _signed(repo, tmp_path, key)
    rego = bytearray(_member(built.path, "l7/risk/risk.rego"))
    rego[-2] ^= 0x01
    tampered = tmp_path / "tampered.tar.gz"
    _repack(built.path, tampered, {"l7/risk/risk.rego": bytes(rego)})
    shutil.copyfile(tampered, built.path)
    opa = OpaProcess(built.path, opa_bin=OPA, signer=built.signer, scope=built.scope)
    with pytest.raises(PolicyStoreDegraded, match=r"l7/risk/risk\.rego: digest mismatch"):
        opa.start(ready_timeout_s=10)
    assert not opa.running()


@needs_opa
def test_opa_refuses_unsigned_and_foreign_bundles(repo: Path, tmp_path: Path, key: Path) -> None:
    built = _signed(repo, tmp_path, key)
    unsigned = build_bundle("local", repo_root=repo, out_dir=tmp_path / "u", opa_bin=OPA)
    other = _signed(repo, tmp_path / "o", tmp_path / "other.pem")
    prod = _signed(repo, tmp_path / "p", key, env="production")
    for bundle, reason in (
        (unsigned.path, "missing .signatures.json"),
        (other.path, "invalid ECDSA signature"),
        (prod.path, "scope mismatch"),
    ):
        opa = OpaProcess(bundle, opa_bin=OPA, signer=built.signer, scope=built.scope)
        with pytest.raises(PolicyStoreDegraded, match=reason):
            opa.start(ready_timeout_s=10)


def test_opa_may_not_skip_verification(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--skip-verify"):
        OpaProcess(tmp_path / "b.tar.gz", opa_bin=tmp_path / "opa", extra_args=("--skip-verify",))


# -- locks ------------------------------------------------------------------------------


def _set_signers(repo: Path, env: str, signers: list[Signer]) -> Path:
    """Replace the bundle signers pinned in the copied repo's trust file for ``env``."""
    path = repo / "bundles" / f"{env}.trust.json"
    raw = json.loads(path.read_text())
    raw["bundle_signers"] = [{"kid": s.kid, "public_key": s.public_key_pem} for s in signers]
    path.write_text(json.dumps(raw, indent=2) + "\n")
    return path


@needs_opa
def test_verify_lock_signs_checks_and_honours_pinned_signers(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    built = _signed(repo, tmp_path, key)
    write_lock(built, repo)
    ok = verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=key)
    assert ok.signer == built.signer and ok.revision == built.revision
    # Pin this key (in the trust file): now only it may sign local bundles.
    assert built.signer is not None
    assert pin_bundle_signer("local", built.signer, repo_root=repo) == (
        repo / "bundles" / "local.trust.json",
        True,
    )
    assert pin_bundle_signer("local", built.signer, repo_root=repo)[1] is False  # once
    write_lock(built, repo)  # a rebuilt lock neither carries nor drops the pin
    assert "signers" not in json.loads((repo / "bundles" / "local.lock.json").read_text())
    trust = load_trust("local", repo_root=repo, work_dir=tmp_path / "w")
    assert [s.kid for s in trust.signers().pinned] == [built.signer.kid]
    verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=key)
    other = tmp_path / "other.pem"
    load_or_create_signing_key(other)
    with pytest.raises(BundleError, match=r"signed by l7b-\w+, but .*local\.trust\.json pins"):
        verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=other)
    raw = json.loads((repo / "bundles" / "local.trust.json").read_text())
    raw["bundle_signers"][0]["kid"] = "l7b-0000000000000000"
    (repo / "bundles" / "local.trust.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="does not name its public key"):
        load_trust("local", repo_root=repo, work_dir=tmp_path / "w")


@needs_opa
def test_staging_and_production_refuse_an_empty_or_unpinned_signer(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    """Where the trust file says local_keys: false, nothing pinned means nothing signs
    (not the deployment's own key), and a key that is not pinned never signs, nor is one
    created for it."""
    for env in ("staging", "production"):
        write_lock(build_bundle(env, repo_root=repo, out_dir=tmp_path / "u", opa_bin=OPA), repo)
        trust_path = _set_signers(repo, env, [])
        with pytest.raises(BundleError) as ei:
            verify_lock(env, repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA)
        msg = str(ei.value)
        assert f"{trust_path} pins no bundle signers for {env!r}" in msg
        assert f"bundles/{env}.lock.json" in msg
        assert f"l7 bundle build --env {env} --signing-key KEY --pin-signer" in msg
        with pytest.raises(BundleError, match="pins no bundle signers"):
            promote("local", env, repo_root=repo, out_dir=tmp_path / "p", opa_bin=OPA)
    # Pinned: a fresh key is neither created nor accepted; a key of its own is refused.
    _, pinned = load_or_create_signing_key(tmp_path / "held" / "production.pem")
    _set_signers(repo, "production", [pinned])
    fresh = tmp_path / "fresh.pem"
    with pytest.raises(BundleError, match="no bundle signing key at .*fresh.pem"):
        verify_lock(
            "production", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=fresh
        )
    assert not fresh.exists()
    load_or_create_signing_key(key)  # e.g. the work dir's own key, made by a local stack
    with pytest.raises(BundleError, match=f"pins only the bundle signers {pinned.kid}"):
        verify_lock(
            "production", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=key
        )
    with pytest.raises(BundleError, match=f"pins only the bundle signers {pinned.kid}"):
        promote(
            "staging",
            "production",
            repo_root=repo,
            out_dir=tmp_path / "p",
            opa_bin=OPA,
            signing_key=key,
        )
    ok = verify_lock(
        "production",
        repo_root=repo,
        out_dir=tmp_path / "v",
        opa_bin=OPA,
        signing_key=tmp_path / "held" / "production.pem",
    )
    assert ok.signer == pinned
    # Without a key the lock's content is still checked (policy authors hold no key).
    assert (
        verify_lock("production", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA).signer
        is None
    )


def test_trust_file_bundle_signers_are_strict(repo: Path, tmp_path: Path, key: Path) -> None:
    _, signer = load_or_create_signing_key(key)
    path = _set_signers(repo, "staging", [signer])
    good = json.loads(path.read_text())

    def refused(signers: object, match: str) -> None:
        path.write_text(json.dumps({**good, "bundle_signers": signers}))
        with pytest.raises(ConfigError, match=match):
            load_trust("staging", repo_root=repo, work_dir=tmp_path / "w")

    entry = good["bundle_signers"][0]
    refused({"kid": entry["kid"]}, "must be a list")
    refused([{**entry, "alg": "ES256"}], r"bundle_signers\[0\] must be")
    refused([entry, entry], "pinned twice")
    ed = (  # an Ed25519 key (a tier key) is not a bundle signer
        "-----BEGIN PUBLIC KEY-----\n"
        "MCowBQYDK2VwAyEAEtYHMQlnUWVVo8vcfkt/IS8XVAvrHajuFYwQDFE7Rbw=\n"
        "-----END PUBLIC KEY-----\n"
    )
    refused([{"kid": entry["kid"], "public_key": ed}], "expected an ES256")
    # A trust file written before bundle signers existed pins none (fails closed).
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "bundle_signers"}))
    signers = load_trust("staging", repo_root=repo, work_dir=tmp_path / "w").signers()
    assert signers.pinned == () and not signers.own_key
    with pytest.raises(BundleError, match="pins no bundle signers"):
        signers.require()


@needs_opa
def test_lock_mismatch_is_still_named_for_signed_builds(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    write_lock(_signed(repo, tmp_path, key), repo)
    policy = repo / "rego" / "l7" / "gates" / "gates.rego"
    policy.write_text(policy.read_text() + "\n# unreviewed\n")
    with pytest.raises(BundleError, match=r"changed: l7/gates/gates\.rego"):
        verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA, signing_key=key)


@needs_opa
def test_promote_pins_the_reviewed_policy_in_the_target_lock(
    repo: Path, tmp_path: Path, key: Path
) -> None:
    for env in ("staging", "production"):
        write_lock(_signed(repo, tmp_path, key, env=env), repo)
    before = read_lock("production", repo)
    # A reviewed policy change lands in staging first.
    policy = repo / "rego" / "l7" / "risk" / "risk.rego"
    policy.write_text(policy.read_text() + "\n# reviewed in staging\n")
    write_lock(_signed(repo, tmp_path, key, env="staging"), repo)
    built, summary = promote(
        "staging", "production", repo_root=repo, out_dir=tmp_path / "p", opa_bin=OPA
    )
    after = read_lock("production", repo)
    assert after.revision == built.revision != before.revision
    assert summary[0] == f"production: revision {before.revision[:12]} -> {built.revision[:12]}"
    assert summary[1:] == [
        f"  changed: l7/risk/risk.rego (lock {before.files['l7/risk/risk.rego'][:12]}, "
        f"now {after.files['l7/risk/risk.rego'][:12]})"
    ]
    assert after.files["l7/deployment/data.json"] == before.files["l7/deployment/data.json"]
    # Unreviewed policy (not in the staging lock) cannot be promoted.
    policy.write_text(policy.read_text() + "\n# not reviewed\n")
    with pytest.raises(BundleError, match=r"not the policy .*staging\.lock\.json pins"):
        promote("staging", "production", repo_root=repo, out_dir=tmp_path / "p", opa_bin=OPA)
    assert read_lock("production", repo).revision == after.revision


# -- activation history -------------------------------------------------------------------


def _fake(revision: str) -> BuiltBundle:
    return BuiltBundle(
        env="production",
        revision=revision * 64,
        path=Path("/nonexistent"),
        bundle_sha256="f" * 64,
        signer=Signer(kid="l7b-aaaaaaaaaaaaaaaa", public_key_pem=""),
        digest="e" * 64,
    )


def test_rollback_is_refused_unless_explicit(tmp_path: Path) -> None:
    a, b, c = _fake("a"), _fake("b"), _fake("c")
    t = datetime(2026, 1, 1, tzinfo=UTC)
    first = activate("production", a, work_dir=tmp_path, now=t)
    assert first == {
        "env": "production",
        "revision": a.revision,
        "bundle_sha256": a.bundle_sha256,
        "digest": a.digest,
        "signer_kid": "l7b-aaaaaaaaaaaaaaaa",
        "previous_revision": None,
        "rollback": False,
        "enforcement": None,
        "previous_enforcement": None,
    }
    assert activate("production", a, work_dir=tmp_path) is None  # a restart
    assert activate("production", b, work_dir=tmp_path)["previous_revision"] == a.revision  # type: ignore[index]
    with pytest.raises(BundleError, match="is a rollback.*--allow-rollback") as ei:
        activate("production", a, work_dir=tmp_path)
    assert ei.value.reason == "bundle_rollback"
    rec = activate("production", a, work_dir=tmp_path, allow_rollback=True)
    assert rec is not None and rec["rollback"] is True and rec["previous_revision"] == b.revision
    assert activate("production", a, work_dir=tmp_path) is None  # restart after the rollback
    fwd = activate("production", b, work_dir=tmp_path)  # back to the newest: not a rollback
    assert fwd is not None and fwd["rollback"] is False
    assert activate("production", c, work_dir=tmp_path) is not None
    history = read_activations("production", tmp_path)
    assert [h.revision[0] for h in history] == ["a", "b", "a", "b", "c"]
    assert [h.rollback for h in history] == [False, False, True, False, False]
    assert history[0].at == "2026-01-01T00:00:00Z"
    assert is_rollback(b.revision, history) and not is_rollback(c.revision, history)
    assert activation_record("production", c, ())["previous_revision"] is None


def test_a_damaged_activation_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "activations" / "production.json"
    path.parent.mkdir()
    path.write_text("{oops")
    with pytest.raises(BundleError, match="anti-rollback record"):
        activate("production", _fake("a"), work_dir=tmp_path)
    with pytest.raises(BundleError, match="cannot be activated for 'staging'"):
        activate("staging", _fake("a"), work_dir=tmp_path)
