"""Bundle builds are reproducible and pinned by their lock; any drift is named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from l7.errors import BundleError
from l7.policy import (
    REVISION_TAG,
    BuiltBundle,
    build_bundle,
    compute_revision,
    read_lock,
    verify_lock,
    write_lock,
)
from tests.conftest import REPO

OPA = Path(os.environ.get("L7_OPA_BIN", str(REPO / ".tools" / "opa")))

pytestmark = pytest.mark.skipif(
    not OPA.is_file(), reason=f"OPA binary {OPA} not found (run 'make setup')"
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A scratch copy of the repository's rego/ and bundles/ (never touch the real ones)."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "rego", root / "rego")
    shutil.copytree(
        REPO / "bundles", root / "bundles", ignore=shutil.ignore_patterns("*.lock.json")
    )
    return root


def _build(repo: Path, tmp_path: Path, env: str = "local", out: str = "out") -> BuiltBundle:
    return build_bundle(env, repo_root=repo, out_dir=tmp_path / out, opa_bin=OPA)


def test_build_is_deterministic(repo: Path, tmp_path: Path) -> None:
    a = _build(repo, tmp_path, out="a")
    b = _build(repo, tmp_path, out="b")
    assert a.revision == b.revision
    assert a.bundle_sha256 == b.bundle_sha256
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.name == f"{a.bundle_sha256}.tar.gz"  # unsigned: hash-addressed
    assert a.digest == a.bundle_sha256 and a.signer is None
    assert dict(a.files) == dict(b.files)


def test_revision_is_the_documented_digest_of_the_staged_files(repo: Path, tmp_path: Path) -> None:
    built = _build(repo, tmp_path)
    assert built.revision == compute_revision(built.files)
    assert compute_revision({"b": "1" * 64, "a": "2" * 64}) == compute_revision(
        {"a": "2" * 64, "b": "1" * 64}
    )
    expected = hashlib.sha256(
        f"{REVISION_TAG}\n{'2' * 64}  a\n{'1' * 64}  b\n".encode()
    ).hexdigest()
    assert compute_revision({"b": "1" * 64, "a": "2" * 64}) == expected


def test_bundle_contents_manifest_and_staging(repo: Path, tmp_path: Path) -> None:
    built = _build(repo, tmp_path, env="production")
    assert "l7/deployment/data.json" in built.files
    assert "l7/config/data.json" in built.files
    assert "l7/decision/decision.rego" in built.files
    assert not [p for p in built.files if p.endswith("_test.rego")]
    with tarfile.open(built.path) as tar:
        names = set(tar.getnames())
        manifest_member = tar.extractfile("/.manifest")
        assert manifest_member is not None
        manifest = json.loads(manifest_member.read())
    assert manifest["revision"] == built.revision
    assert manifest["roots"] == ["l7"]
    assert "/l7/decision/decision.rego" in names
    assert not [n for n in names if n.endswith("_test.rego")]


def test_envs_differ_only_by_deployment(repo: Path, tmp_path: Path) -> None:
    local = _build(repo, tmp_path, env="local")
    prod = _build(repo, tmp_path, env="production")
    assert local.revision != prod.revision
    diff = {p for p in local.files if local.files[p] != prod.files.get(p)}
    assert diff == {"l7/deployment/data.json"}


def test_changed_rego_changes_the_revision(repo: Path, tmp_path: Path) -> None:
    before = _build(repo, tmp_path, out="a")
    policy = repo / "rego" / "l7" / "risk" / "risk.rego"
    policy.write_text(policy.read_text() + "\n# a reviewed change\n")
    after = _build(repo, tmp_path, out="b")
    assert after.revision != before.revision
    assert after.files["l7/risk/risk.rego"] != before.files["l7/risk/risk.rego"]


def test_test_files_do_not_change_the_revision(repo: Path, tmp_path: Path) -> None:
    before = _build(repo, tmp_path, out="a")
    test_file = repo / "rego" / "l7" / "risk" / "risk_test.rego"
    test_file.write_text(test_file.read_text() + "\n# more tests\n")
    assert _build(repo, tmp_path, out="b").revision == before.revision


def test_verify_lock_passes_after_write_lock(repo: Path, tmp_path: Path) -> None:
    built = _build(repo, tmp_path)
    path = write_lock(built, repo)
    assert path == repo / "bundles" / "local.lock.json"
    lock = json.loads(path.read_text())
    assert lock["signing"] == {"alg": "ES256", "scope": "l7/local"}  # signers: trust file
    assert lock["env"] == "local" and lock["revision"] == built.revision
    assert lock["files"] == dict(built.files)
    again = verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA)
    assert (again.revision, again.bundle_sha256) == (built.revision, built.bundle_sha256)
    assert read_lock("local", repo).revision == built.revision


def test_verify_lock_names_the_changed_file(repo: Path, tmp_path: Path) -> None:
    built = _build(repo, tmp_path)
    write_lock(built, repo)
    policy = repo / "rego" / "l7" / "gates" / "gates.rego"
    policy.write_text(policy.read_text() + "\n# unreviewed\n")
    with pytest.raises(BundleError, match=r"changed: l7/gates/gates\.rego") as ei:
        verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA)
    assert f"revision: expected {built.revision}, actual " in str(ei.value)


def test_verify_lock_names_added_and_removed_files(repo: Path, tmp_path: Path) -> None:
    write_lock(_build(repo, tmp_path), repo)
    (repo / "rego" / "l7" / "extra").mkdir()
    (repo / "rego" / "l7" / "extra" / "extra.rego").write_text("package l7.extra\n\nx := 1\n")
    (repo / "rego" / "l7" / "config" / "data.json").unlink()
    with pytest.raises(BundleError) as ei:
        verify_lock("local", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA)
    msg = str(ei.value)
    assert "added:   l7/extra/extra.rego" in msg
    assert "removed: l7/config/data.json" in msg


def test_verify_lock_catches_a_changed_deployment(repo: Path, tmp_path: Path) -> None:
    write_lock(_build(repo, tmp_path, env="production"), repo)
    dep = repo / "bundles" / "production" / "deployment.json"
    dep.write_text(dep.read_text().replace('"enforced"', '"advisory"'))
    with pytest.raises(BundleError, match=r"changed: l7/deployment/data\.json"):
        verify_lock("production", repo_root=repo, out_dir=tmp_path / "v", opa_bin=OPA)


def test_unknown_env_is_refused(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"unknown bundle env 'moon'.*bundles/moon"):
        _build(repo, tmp_path, env="moon")
    with pytest.raises(BundleError, match="not a valid name"):
        _build(repo, tmp_path, env="../rego")


def test_missing_opa_binary_is_named(repo: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-opa"
    with pytest.raises(BundleError, match=r"OPA binary .*no-opa is missing.*--opa-bin"):
        build_bundle("local", repo_root=repo, out_dir=tmp_path / "out", opa_bin=missing)


def test_opa_build_failure_carries_its_stderr(repo: Path, tmp_path: Path) -> None:
    (repo / "rego" / "l7" / "lib" / "broken.rego").write_text("package l7.lib\n\nx := if {\n")
    with pytest.raises(BundleError, match=r"opa build failed for env 'local'(.|\n)*broken\.rego"):
        _build(repo, tmp_path)


def test_read_lock_is_strict(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no lock file"):
        read_lock("local", repo)
    path = write_lock(_build(repo, tmp_path), repo)
    good = json.loads(path.read_text())

    def broken(**change: object) -> None:
        path.write_text(json.dumps({**good, **change}))

    broken(signing=None)
    with pytest.raises(BundleError, match="'signing' is null: this lock predates signed"):
        read_lock("local", repo)
    broken(signing={"keyid": "k"})
    with pytest.raises(BundleError, match="'signing' must be an object with exactly"):
        read_lock("local", repo)
    broken(signing={**good["signing"], "alg": "RS256"})
    with pytest.raises(BundleError, match="signing alg 'RS256' is not 'ES256'"):
        read_lock("local", repo)
    broken(signing={**good["signing"], "scope": "l7/production"})
    with pytest.raises(BundleError, match="signing scope 'l7/production', expected 'l7/local'"):
        read_lock("local", repo)
    # a signer pin left in (or added to) a lock would be ignored: refused, naming the move
    broken(signing={**good["signing"], "signers": []})
    with pytest.raises(BundleError, match=r"no longer read from the lock.*local\.trust\.json"):
        read_lock("local", repo)
    broken(approved=True)
    with pytest.raises(BundleError, match=r"unknown fields \['approved'\]"):
        read_lock("local", repo)
    broken(revision="abc")
    with pytest.raises(BundleError, match="'revision' must be a lowercase sha256"):
        read_lock("local", repo)
    broken(env="production")
    with pytest.raises(BundleError, match="env is 'production', expected 'local'"):
        read_lock("local", repo)
    broken(files={"l7/x.rego": "nothex"})
    with pytest.raises(BundleError, match="'files' must map"):
        read_lock("local", repo)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not readable JSON"):
        read_lock("local", repo)


def test_committed_locks_match_the_repository(tmp_path: Path) -> None:
    """The locks in git pin exactly what the current tree builds."""
    for env in ("local", "dev", "staging", "production"):
        built = verify_lock(env, repo_root=REPO, out_dir=tmp_path, opa_bin=OPA)
        assert built.env == env


def test_committed_trust_names_who_may_sign_staging_and_production() -> None:
    """git shows who may sign production policy: staging and production pin their own
    bundle signers (keys made outside the repo) and never trust a deployment's own key;
    local and dev pin none and use the work dir's key."""
    from l7.trust import load_trust

    kids: dict[str, set[str]] = {}
    for env in ("local", "dev", "staging", "production"):
        trust = load_trust(env, repo_root=REPO, work_dir=REPO / "no-such-work-dir")
        signers = trust.signers()
        assert signers.own_key is (env in ("local", "dev"))
        kids[env] = {s.kid for s in signers.pinned}
        assert bool(kids[env]) is (env in ("staging", "production")), env
    assert not kids["staging"] & kids["production"]  # staging's key cannot sign production
