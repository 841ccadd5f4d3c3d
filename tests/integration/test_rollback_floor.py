"""The anti-rollback floor through a real Stack: real OPA with signed bundles, SQLite ledger
(issue #12 item 5). Deleting ``<work_dir>/activations/<env>.json`` used to let an older
signed revision start without --allow-rollback and be recorded as ``rollback: false,
previous_revision: null``; the ledger's policy.activated history is the floor now."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from l7.errors import BundleError
from l7.policy import build_bundle, read_lock, write_lock
from l7.policy.activation import activation_stream
from l7.policy.opa_process import find_opa
from l7.stack import Stack, StackConfig
from tests.conftest import REPO

pytestmark = pytest.mark.integration

ENV = "dev"  # not "local": that environment is exempt from the rollback check


def _config(repo: Path, tmp_path: Path, *, allow_rollback: bool = False) -> StackConfig:
    return StackConfig(
        env=ENV,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        repo_root=repo,
        work_dir=tmp_path / "work",
        sweep_interval_s=0,
        allow_rollback=allow_rollback,
    )


def test_deleting_the_activations_file_does_not_allow_a_rollback(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "rego", repo / "rego")
    shutil.copytree(REPO / "bundles", repo / "bundles")
    lock = repo / "bundles" / f"{ENV}.lock.json"
    old_lock = lock.read_bytes()
    rev_a = read_lock(ENV, repo).revision

    with Stack(_config(repo, tmp_path)) as s:
        assert s.activation is not None and s.activation["revision"] == rev_a

    # A reviewed policy change: revision B is locked and activated.
    gates = repo / "rego" / "l7" / "gates" / "gates.rego"
    old_gates = gates.read_bytes()
    gates.write_bytes(old_gates + b"\n# revision B\n")
    built_b = build_bundle(ENV, repo_root=repo, out_dir=tmp_path / "b", opa_bin=find_opa())
    write_lock(built_b, repo)
    rev_b = built_b.revision
    with Stack(_config(repo, tmp_path)) as s:
        assert s.activation is not None
        assert (s.activation["revision"], s.activation["previous_revision"]) == (rev_b, rev_a)

    # The attacker checks out the old revision and deletes the local anti-rollback file.
    gates.write_bytes(old_gates)
    lock.write_bytes(old_lock)
    activations = tmp_path / "work" / "activations" / f"{ENV}.json"
    assert activations.is_file()
    activations.unlink()
    with pytest.raises(BundleError, match="is a rollback") as ei:
        Stack(_config(repo, tmp_path)).start()
    assert ei.value.reason == "bundle_rollback"
    assert rev_b[:12] in str(ei.value)

    # Deliberately, with the flag: the ledger names the true previous revision.
    activations.unlink(missing_ok=True)
    with Stack(_config(repo, tmp_path, allow_rollback=True)) as s:
        assert s.ledger is not None
        events = s.ledger.get_stream(activation_stream(ENV))
    assert [
        (e.payload["revision"], e.payload["previous_revision"], e.payload["rollback"])
        for e in events
    ] == [(rev_a, None, False), (rev_b, rev_a, False), (rev_a, rev_b, True)]
