"""An export pack checked by independent Go code (``tests/interop/goverify``: sumdb/note,
transparency-dev/formats and transparency-dev/merkle), so docs/ledger-format.md cannot
drift from the implementation: the real export is accepted, and each one-byte change to a
leaf, a proof node, a root and a signature is refused."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import EventType, NewEvent, SqlLedger
from ledger.checkpoint import Ed25519CheckpointSigner, log_key
from ledger.export import dump_export
from ledger.witness import Witness, create_witness_server
from ledger.witness_client import WitnessEndpoint
from tests.conftest import REPO

pytestmark = pytest.mark.integration

ORIGIN = "layer7.local/ledger/interop"


def _goverify() -> str:
    path = os.environ.get("L7_GOVERIFY_BIN") or str(REPO / ".tools" / "goverify")
    if not Path(path).exists():
        if shutil.which("go") is None:
            pytest.skip("no Go toolchain to build the independent verifier (make goverify)")
        subprocess.run(["make", "goverify"], cwd=REPO, check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str, str]]:
    """A real export (3 chained checkpoints, cosigned) with the log's and witness's vkeys."""
    tmp = tmp_path_factory.mktemp("interop")
    signer = Ed25519CheckpointSigner.generate()
    w = Witness(
        "layer7.local/witness/interop",
        Ed25519PrivateKey.generate(),
        [log_key(ORIGIN, signer.public_key_raw)],
        tmp / "witness",
    )
    server, port = create_witness_server("127.0.0.1:0", w)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        with SqlLedger(
            f"sqlite:///{tmp / 'l.sqlite'}",
            checkpoint_signer=signer,
            origin=ORIGIN,
            witnesses=[WitnessEndpoint(f"http://127.0.0.1:{port}", w.vkey)],
            checkpoint_every_s=0,
        ) as led:
            for i in range(3):
                led.append(
                    [
                        NewEvent(f"d{j}", EventType.POLICY_GATE, "alice", "rev", {"i": i, "j": j})
                        for j in range(5)
                    ]
                )
                led.sign_checkpoint()
            led.append([NewEvent("d1", EventType.RISK_SCORED, "alice", "rev", {"score": 7})])
            doc = led.export(decision_ids=["d1", "d3"])
    finally:
        server.shutdown()
        server.server_close()
    yield doc, log_key(ORIGIN, signer.public_key_raw).encode(), w.vkey.encode()


def _run(tmp_path: Path, doc: dict[str, Any], log_vkey: str, witness_vkey: str) -> Any:
    path = tmp_path / "pack.json"
    path.write_bytes(dump_export(doc))
    return subprocess.run(
        [_goverify(), "-log-key", log_vkey, "-witness-key", witness_vkey, str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_go_verifier_accepts_a_real_export(
    tmp_path: Path, pack: tuple[dict[str, Any], str, str]
) -> None:
    doc, log_vkey, witness_vkey = pack
    assert len(doc["checkpoints"]) == 4 and len(doc["events"]) == 7
    r = _run(tmp_path, doc, log_vkey, witness_vkey)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK: 7 events, 2 streams, checkpoints 0..3")


def _flip_hex(value: str, at: int = 5) -> str:
    c = "0" if value[at] != "0" else "1"
    return value[:at] + c + value[at + 1 :]


def _flip_b64_in_line(note: str, line_no: int) -> str:
    """Change one byte of the base64 payload on line ``line_no`` of a note."""
    lines = note.split("\n")
    head, _, b64 = lines[line_no].rpartition(" ")
    raw = bytearray(base64.b64decode(b64 or lines[line_no]))
    raw[len(raw) // 2] ^= 0x01
    enc = base64.b64encode(bytes(raw)).decode()
    lines[line_no] = f"{head} {enc}" if head else enc
    return "\n".join(lines)


def _sig_line(note: str, which: int) -> int:
    """Index of the ``which``-th signature line (0: the log's, 1: the witness's)."""
    lines = note.split("\n")
    return [i for i, line in enumerate(lines) if line.startswith("\u2014 ")][which]


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "leaf (event hash)": lambda d: d["events"][0].update(hash=_flip_hex(d["events"][0]["hash"])),
    "leaf (event body)": lambda d: d["events"][1].update(
        body=d["events"][1]["body"].replace('"alice"', '"alicf"')
    ),
    "inclusion proof node": lambda d: d["events"][2]["inclusion_proof"].__setitem__(
        0, _flip_hex(d["events"][2]["inclusion_proof"][0])
    ),
    "consistency proof node": lambda d: d["consistency_proofs"][1].__setitem__(
        0, _flip_hex(d["consistency_proofs"][1][0])
    ),
    "root (anchor checkpoint)": lambda d: d["checkpoints"].__setitem__(
        -1, _flip_b64_in_line(d["checkpoints"][-1], 2)
    ),
    "root (earlier checkpoint)": lambda d: d["checkpoints"].__setitem__(
        1, _flip_b64_in_line(d["checkpoints"][1], 2)
    ),
    "log signature": lambda d: d["checkpoints"].__setitem__(
        -1, _flip_b64_in_line(d["checkpoints"][-1], _sig_line(d["checkpoints"][-1], 0))
    ),
    "witness cosignature": lambda d: d["checkpoints"].__setitem__(
        -1, _flip_b64_in_line(d["checkpoints"][-1], _sig_line(d["checkpoints"][-1], 1))
    ),
    "chain link (l7.prev)": lambda d: d["checkpoints"].__setitem__(
        2, d["checkpoints"][2].replace("l7.prev 1 ", "l7.prev 0 ")
    ),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_go_verifier_refuses_a_one_byte_change(
    tmp_path: Path, pack: tuple[dict[str, Any], str, str], name: str
) -> None:
    doc, log_vkey, witness_vkey = pack
    changed = json.loads(json.dumps(doc))
    MUTATIONS[name](changed)
    assert changed != doc
    r = _run(tmp_path, changed, log_vkey, witness_vkey)
    assert r.returncode == 1, f"{name}: {r.stdout}"
    assert r.stdout.startswith("FAIL:")
