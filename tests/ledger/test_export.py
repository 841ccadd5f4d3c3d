"""The offline audit pack: built from rows, verified with nothing but the public keys.

The central property: no single-byte change of the serialized pack verifies with
different content; it fails as IntegrityViolation (a check) or ProofInvalid (form), or
leaves everything proven the same (JSON layout; a signature line of a witness nobody
pinned, which C2SP says to ignore).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import GENESIS_HASH, IntegrityViolation, VerifyRow
from ledger.checkpoint import Checkpoint, Ed25519CheckpointSigner
from ledger.export import (
    ExportReport,
    PackWriter,
    build_export,
    dump_export,
    verify_export,
    verify_export_file,
)
from ledger.merkle import MerkleTree, ProofInvalid
from ledger.note import ALG_COSIGNATURE_V1, VerifierKey
from tests.ledger.test_audit import ORDER, WITNESS, checkpoints_for, cosigs, make_log

SIGNER = Ed25519CheckpointSigner.generate()
PUB = SIGNER.public_key_raw
WITNESS_PRIVATE = Ed25519PrivateKey.generate()
WKEY = VerifierKey.for_private(WITNESS, ALG_COSIGNATURE_V1, WITNESS_PRIVATE)
LOG = make_log([*ORDER, "dec-D", "dec-A"])  # 17 events; the checkpoints cover 3, 9 and 16
HASHES = [r.hash for r in LOG]
CHAIN = checkpoints_for(LOG, (3, 9, 16), SIGNER)
CP = CHAIN[-1]
COSIGS = cosigs(CHAIN, WITNESS_PRIVATE)


def _select(*dids: str, from_seq: int = 1) -> list[VerifyRow]:
    return [
        r for r in LOG if r.decision_id in dids and r.sequence >= from_seq and r.global_seq <= 16
    ]


def _pack(rows: list[VerifyRow] | None = None, chain: list[Checkpoint] = CHAIN) -> dict[str, Any]:
    return build_export(
        _select("dec-B", "dec-D") if rows is None else rows,
        HASHES,
        chain,
        COSIGS,
        public_key_raw=PUB,
    )


DOC = _pack()
DATA = dump_export(DOC)


def _loads(data: bytes) -> dict[str, Any]:
    """The pack's JSON lines back as one dict (header, events, verification)."""
    lines = [json.loads(line) for line in data.splitlines()]
    return {**lines[0], "events": lines[1:-1], **lines[-1]}


def test_pack_verifies_offline() -> None:
    report = verify_export(DATA, PUB)
    assert (report.events, report.streams) == (6, 2)
    assert report.decision_ids == ("dec-B", "dec-D")
    assert report.streams_from_genesis == ("dec-B", "dec-D")
    assert (report.tree_size, report.root_hash) == (16, CP.root_hash)
    assert verify_export(DOC, PUB) == verify_export(DATA.decode(), PUB) == report
    assert DOC["verification"] == {
        "result": "verified",
        "events": 6,
        "streams": 2,
        "tree_size": 16,
        "streams_from_genesis": ["dec-B", "dec-D"],
        "checkpoints": 3,
        "first_checkpoint": 0,
    }
    assert DOC["format"] == "l7.ledger.export"
    assert DOC["version"] == 3
    assert DOC["origin"] == CP.origin
    assert DOC["checkpoints"] == [c.encode(COSIGS[c.index]) for c in CHAIN]
    assert len(DOC["consistency_proofs"]) == 2
    assert report.cosigned_by == ()  # no witness key given: cosignatures not counted
    witnessed = verify_export(DATA, PUB, witness_keys=[WKEY])
    assert witnessed.cosigned_by == (WKEY.key_id,)


def test_a_witness_key_requires_the_anchor_cosigned() -> None:
    bare = dump_export(build_export(_select("dec-B"), HASHES, CHAIN, {0: COSIGS[0]}))
    verify_export(bare, PUB)
    with pytest.raises(IntegrityViolation, match="unwitnessed_events"):
        verify_export(bare, PUB, witness_keys=[WKEY])


def test_a_gap_or_an_inconsistent_chain_fails() -> None:
    doc = _loads(DATA)
    del doc["checkpoints"][1]
    del doc["consistency_proofs"][1]
    with pytest.raises(IntegrityViolation, match="checkpoint_missing"):
        verify_export(doc, PUB)
    doc = _loads(DATA)
    doc["consistency_proofs"][0], doc["consistency_proofs"][1] = (
        doc["consistency_proofs"][1],
        doc["consistency_proofs"][0],
    )
    with pytest.raises(IntegrityViolation, match="checkpoint_inconsistent"):
        verify_export(doc, PUB)


def test_events_carry_the_stored_body_exactly() -> None:
    rows = _select("dec-B", "dec-D")
    for row, ev in zip(rows, DOC["events"], strict=True):
        assert ev["body"].encode("utf-8") == row.body
        assert (ev["global_seq"], ev["sequence"], ev["prev_hash"], ev["hash"]) == (
            row.global_seq,
            row.sequence,
            row.prev_hash,
            row.hash,
        )
        assert all(re.fullmatch("[0-9a-f]{64}", p) for p in ev["inclusion_proof"])


def test_accepts_a_prebuilt_tree() -> None:
    tree = MerkleTree.from_event_hashes(HASHES)
    assert build_export(_select("dec-B", "dec-D"), tree, CHAIN, COSIGS) == DOC


def test_mid_stream_start_is_allowed_and_reported() -> None:
    doc = _pack(_select("dec-A", from_seq=3))
    report = verify_export(doc, PUB)
    assert report.events == 3  # dec-A #3..#5 (global_seq 7, 10, 13); #6 is past the checkpoint
    assert report.streams_from_genesis == ()
    # A mid-stream start must name its predecessor: a genesis prev_hash is refused.
    doc["events"][0]["prev_hash"] = GENESIS_HASH
    with pytest.raises(IntegrityViolation, match="hash_mismatch"):
        verify_export(doc, PUB)


def test_wrong_key_fails_as_checkpoint_signature() -> None:
    with pytest.raises(IntegrityViolation, match="checkpoint_signature"):
        verify_export(DATA, Ed25519CheckpointSigner.generate().public_key_raw)


def test_dropped_event_breaks_the_stream() -> None:
    doc = _loads(DATA)
    dropped = doc["events"].pop(1)  # dec-B #2
    with pytest.raises(IntegrityViolation, match="sequence_gap") as exc:
        verify_export(doc, PUB)
    assert exc.value.decision_id == "dec-B"
    assert exc.value.global_seq == dropped["global_seq"] + 3


def test_dropped_stream_contradicts_the_verification_block() -> None:
    doc = _loads(DATA)
    doc["events"] = [e for e in doc["events"] if '"dec-D"' not in e["body"]]
    with pytest.raises(ProofInvalid, match="verification block"):
        verify_export(doc, PUB)


def test_swapped_inclusion_proofs_fail() -> None:
    doc = _loads(DATA)
    a, b = doc["events"][0], doc["events"][1]
    a["inclusion_proof"], b["inclusion_proof"] = b["inclusion_proof"], a["inclusion_proof"]
    with pytest.raises(IntegrityViolation, match="inclusion_proof") as exc:
        verify_export(doc, PUB)
    assert (exc.value.decision_id, exc.value.sequence) == ("dec-B", 1)


def test_reordered_events_fail() -> None:
    doc = _loads(DATA)
    doc["events"][0], doc["events"][1] = doc["events"][1], doc["events"][0]
    with pytest.raises(IntegrityViolation, match="global_order"):
        verify_export(doc, PUB)


def test_build_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="not covered"):
        build_export(LOG[16:], HASHES, CHAIN)
    with pytest.raises(IntegrityViolation, match="sequence_gap"):
        build_export([r for r in _select("dec-B") if r.sequence != 2], HASHES, CHAIN)
    with pytest.raises(IntegrityViolation, match="checkpoint_root_mismatch"):
        build_export(_select("dec-B"), list(reversed(HASHES)), CHAIN)
    with pytest.raises(IntegrityViolation, match="truncated"):
        build_export(_select("dec-B"), HASHES[:10], CHAIN)
    with pytest.raises(IntegrityViolation, match="hash_mismatch"):
        build_export([LOG[1]._replace(hash=LOG[2].hash)], HASHES, CHAIN)
    with pytest.raises(IntegrityViolation, match="checkpoint_missing"):
        build_export(_select("dec-B"), HASHES, [CHAIN[0], CHAIN[2]])
    with pytest.raises(IntegrityViolation, match="checkpoint_signature"):
        build_export(
            _select("dec-B"),
            HASHES,
            CHAIN,
            public_key_raw=Ed25519CheckpointSigner.generate().public_key_raw,
        )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra=1),
        lambda d: d.update(version=1),
        lambda d: d.update(version=1.0),
        lambda d: d.update(format="other"),
        lambda d: d["events"][0].update(extra=1),
        lambda d: d["events"][0].update(global_seq=True),
        lambda d: d["events"][0].update(hash=d["events"][0]["hash"].upper()),
        lambda d: d["events"][0].update(inclusion_proof="00"),
        lambda d: d["checkpoints"].append(1),
        lambda d: d["consistency_proofs"].pop(),
        lambda d: d.update(origin=7),
        lambda d: d["verification"].update(events=6.0),
        lambda d: d.update(events=[]),
    ],
)
def test_form_errors_are_refused(mutate: Any) -> None:
    doc = _loads(DATA)
    mutate(doc)
    with pytest.raises(ProofInvalid):
        verify_export(doc, PUB)


def test_duplicate_keys_and_nan_are_refused() -> None:
    text = DATA.decode()
    dup = text.replace(
        '"format":"l7.ledger.export"', '"format":"l7.ledger.export","format":"l7.ledger.export"'
    )
    with pytest.raises(ProofInvalid, match="duplicate"):
        verify_export(dup, PUB)
    with pytest.raises(ProofInvalid, match="NaN"):
        verify_export(text.replace('"version":3', '"version":NaN'), PUB)


# -- any single-byte change ---------------------------------------------------------------


def _spans(data: bytes) -> list[int]:
    """Byte positions inside event bodies, hashes, proofs and checkpoint values."""
    text = data.decode("ascii")
    out: list[int] = []
    keys = "body|hash|prev_hash|origin"
    for m in re.finditer(r'"(' + keys + r')":"((?:[^"\\]|\\.)*)"', text):
        out.extend(range(m.start(2), m.end(2)))
    for key, end in (("inclusion_proof", "]"), ("checkpoints", "]"), ("consistency_proofs", "]]")):
        for m in re.finditer(r'"' + key + r'":\[(.*?)' + re.escape(end), text):
            out.extend(range(m.start(1), m.end(1)))
    for m in re.finditer(r'"(tree_size|global_seq|sequence)":(\d+)', text):
        out.extend(range(m.start(2), m.end(2)))
    return out


SPANS = _spans(DATA)


PROVEN = verify_export(DATA, PUB, witness_keys=[WKEY])


def _proves(r: ExportReport) -> tuple[Any, ...]:
    return (r.events, r.decision_ids, r.checkpoint, r.chain, r.cosigned_by)


def _assert_mutation_fails(pos: int, new: int) -> None:
    mutated = bytearray(DATA)
    mutated[pos] = new
    try:
        got = verify_export(bytes(mutated), PUB, witness_keys=[WKEY])
    except (IntegrityViolation, ProofInvalid):
        return
    # Only a change that proves exactly the same may pass: JSON layout (whitespace), or a
    # cosignature line renamed to a witness nobody pinned (ignored, per C2SP).
    assert _proves(got) == _proves(PROVEN), f"byte {pos} -> {new:#x} verified"
    assert _loads(bytes(mutated))["events"] == DOC["events"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, len(SPANS) - 1), new=st.integers(0, 255))
def test_single_byte_change_in_content_fails(i: int, new: int) -> None:
    pos = SPANS[i]
    if DATA[pos] != new:
        _assert_mutation_fails(pos, new)


@settings(max_examples=400, deadline=None)
@given(pos=st.integers(0, len(DATA) - 1), new=st.integers(0, 255))
def test_single_byte_change_anywhere_fails_or_changes_nothing(pos: int, new: int) -> None:
    if DATA[pos] != new:
        _assert_mutation_fails(pos, new)


def test_spans_cover_the_content() -> None:
    assert len(SPANS) > len(DATA) // 2
    for ev in DOC["events"]:
        assert DATA.index(json.dumps(ev["body"]).encode()[1:-1]) in SPANS


def test_truncated_pack_or_trailing_lines_are_refused(tmp_path: Any) -> None:
    lines = DATA.splitlines(keepends=True)
    with pytest.raises(ProofInvalid, match="ends before its verification block"):
        verify_export(b"".join(lines[:-1]), PUB)  # the trailer cut off
    with pytest.raises(ProofInvalid, match="not a complete line"):
        verify_export(DATA[:-1], PUB)  # the last newline cut off
    with pytest.raises(ProofInvalid, match="goes on after its verification block"):
        verify_export(DATA + lines[1], PUB)
    path = tmp_path / "pack.jsonl"
    path.write_bytes(DATA)
    assert verify_export_file(path, PUB) == verify_export(DATA, PUB)


def test_pack_writer_streams_the_same_bytes(tmp_path: Any) -> None:
    import io

    buf = io.BytesIO()
    writer = PackWriter(buf, public_key_raw=PUB)
    writer.header(DOC)
    for ev in DOC["events"]:
        writer.event(ev)
    writer.finish()
    assert buf.getvalue() == DATA
    bad = PackWriter(io.BytesIO())
    bad.header(DOC)
    with pytest.raises(IntegrityViolation, match="hash_mismatch"):
        bad.event({**DOC["events"][0], "body": DOC["events"][0]["body"] + " "})
