"""The witness as its own process (``python -m ledger.witness``, what ``l7 witness serve``
and ``make run`` start): it cosigns consistent checkpoints and refuses, says why, and keeps
as evidence a fork, a rewind and a size decrease. Its state survives a restart."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ledger.checkpoint import Checkpoint, Ed25519CheckpointSigner, log_key, sign_checkpoint
from ledger.errors import WitnessRefused
from ledger.merkle import MerkleTree, leaf_hash
from ledger.note import verify_cosignature
from ledger.witness import WitnessProcess
from ledger.witness_client import WitnessClient, WitnessEndpoint

pytestmark = pytest.mark.integration

ORIGIN = "layer7.local/ledger/witnessed"
NOW = datetime(2026, 11, 25, 21, 0, tzinfo=UTC)


def tree(n: int, tag: str = "a") -> MerkleTree:
    t = MerkleTree()
    t.extend(leaf_hash(f"{tag}{i}".encode()) for i in range(n))
    return t


def checkpoint(
    signer: Ed25519CheckpointSigner, t: MerkleTree, size: int, prev: Checkpoint | None
) -> Checkpoint:
    return sign_checkpoint(size, t.root(size), signer, NOW, origin=ORIGIN, prev=prev)


@pytest.fixture
def signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


@pytest.fixture
def witness(tmp_path: Path, signer: Ed25519CheckpointSigner) -> Iterator[WitnessProcess]:
    w = WitnessProcess(
        tmp_path / "state",
        [log_key(ORIGIN, signer.public_key_raw)],
        log_path=tmp_path / "witness.log",
    ).start()
    yield w
    w.stop()


def client(w: WitnessProcess) -> WitnessClient:
    assert w.vkey is not None
    return WitnessClient(WitnessEndpoint(w.url, w.vkey))


def evidence(w: WitnessProcess) -> list[dict[str, object]]:
    path = w.state_dir / "refused.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cosigns_consistent_checkpoints_and_keeps_its_state_private(
    witness: WitnessProcess, signer: Ed25519CheckpointSigner
) -> None:
    t = tree(20)
    c = client(witness)
    a = checkpoint(signer, t, 5, None)
    b = checkpoint(signer, t, 20, a)
    assert witness.vkey is not None
    for cp in (a, b):
        cosig = c.add_checkpoint(cp, t.consistency_proof)
        verify_cosignature(cp.body, cosig, witness.vkey)
    assert stat.S_IMODE(witness.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((witness.state_dir / "state.json").stat().st_mode) == 0o600
    latest = c.latest(ORIGIN)
    assert latest is not None and latest[0] == b
    # A fresh client learns the witness's size (409) and carries on from there.
    c2 = client(witness)
    later = checkpoint(signer, tree(30), 30, b)
    c2.add_checkpoint(later, tree(30).consistency_proof)
    # The state survives a restart of the process.
    witness.stop()
    witness.start()
    latest = client(witness).latest(ORIGIN)
    assert latest is not None and latest[0].tree_size == 30


def test_refuses_a_fork_a_rewind_and_a_shrink_and_says_why(
    witness: WitnessProcess, signer: Ed25519CheckpointSigner
) -> None:
    t = tree(20)
    c = client(witness)
    a = checkpoint(signer, t, 10, None)
    c.add_checkpoint(a, t.consistency_proof)
    # A fork at the same size: another root for 10 leaves.
    forked = tree(20, tag="b")
    with pytest.raises(WitnessRefused, match=r"another root for size 10: fork"):
        client(witness).add_checkpoint(
            checkpoint(signer, forked, 10, None), forked.consistency_proof
        )
    # A fork that grows: the proof from the cosigned 10 to the forked 20 cannot verify.
    with pytest.raises(WitnessRefused, match=r"HTTP 422.*does not verify: the log forked") as e422:
        c.add_checkpoint(checkpoint(signer, forked, 20, a), forked.consistency_proof)
    assert e422.value.status == 422
    # A rewind: the log presents 6 leaves after 10 were cosigned.
    rewound = checkpoint(signer, t, 6, None)
    with pytest.raises(WitnessRefused, match=r"cosigned size 10, but this checkpoint has size 6"):
        client(witness).add_checkpoint(rewound, t.consistency_proof)
    # The same, sent raw with "old 10": a size decrease, 400 with the reason.
    body = f"old 10\n\n{rewound.note}".encode()
    req = urllib.request.Request(witness.url + "/add-checkpoint", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e400:
        urllib.request.urlopen(req, timeout=5)
    assert e400.value.code == 400
    assert "size decrease / rewind" in e400.value.read().decode()
    # Nothing was cosigned meanwhile; every refusal is kept as evidence and logged.
    latest = c.latest(ORIGIN)
    assert latest is not None and latest[0] == a
    whys = [str(r["why"]) for r in evidence(witness)]
    assert any("fork at size 10" in w for w in whys)
    assert any("does not verify" in w for w in whys)
    assert any("was rewound" in w for w in whys)
    assert any("size decrease / rewind" in w for w in whys)
    assert "REFUSED" in (witness.log_path.read_text() if witness.log_path else "")


def test_refuses_an_untrusted_log_and_a_bad_signature(
    witness: WitnessProcess, signer: Ed25519CheckpointSigner
) -> None:
    t = tree(4)
    stranger = Ed25519CheckpointSigner.generate()
    with pytest.raises(WitnessRefused, match=r"HTTP 403.*no valid signature"):
        client(witness).add_checkpoint(checkpoint(stranger, t, 4, None), t.consistency_proof)
    other = sign_checkpoint(4, t.root(4), signer, NOW, origin="layer7.local/ledger/x", prev=None)
    with pytest.raises(WitnessRefused, match=r"HTTP 404.*unknown log origin"):
        client(witness).add_checkpoint(other, t.consistency_proof)
