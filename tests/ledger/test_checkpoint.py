"""Signed checkpoints: canonical bytes, Ed25519 signatures, strict parsing, the witness file."""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import (
    Checkpoint,
    Ed25519CheckpointSigner,
    Witness,
    key_id_for,
    load_private_key,
    public_key_raw,
    read_witness,
    save_private_key,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.errors import IntegrityViolation
from ledger.merkle import ProofInvalid

NOW = datetime(2026, 11, 25, 20, 44, 12, 123456, tzinfo=UTC)
ROOT = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


@pytest.fixture
def signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


def test_signed_bytes_are_jcs_of_the_explicit_fields(signer: Ed25519CheckpointSigner) -> None:
    cp = sign_checkpoint(8, ROOT, signer, NOW)
    assert cp.timestamp == "2026-11-25T20:44:12.123456Z"
    assert cp.signed_bytes() == rfc8785.dumps(
        {
            "type": "l7.ledger.checkpoint",
            "version": 1,
            "tree_size": 8,
            "root_hash": ROOT,
            "timestamp": "2026-11-25T20:44:12.123456Z",
            "key_id": signer.key_id,
        }
    )
    assert cp.signed_bytes().startswith(b'{"key_id":')
    assert verify_checkpoint(cp, signer.public_key_raw) is cp
    assert cp.root == bytes.fromhex(ROOT)


def test_timestamp_is_converted_to_utc_and_naive_refused(signer: Ed25519CheckpointSigner) -> None:
    plus2 = timezone(timedelta(hours=2))
    cp = sign_checkpoint(1, ROOT, signer, datetime(2026, 1, 1, 2, 0, tzinfo=plus2))
    assert cp.timestamp == "2026-01-01T00:00:00.000000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_checkpoint(1, ROOT, signer, datetime(2026, 1, 1))


def test_key_id_defaults_to_fingerprint_and_bytes_root_accepted(
    signer: Ed25519CheckpointSigner,
) -> None:
    assert signer.key_id == key_id_for(signer.public_key_raw)
    assert signer.key_id.startswith("ed25519-")
    cp = sign_checkpoint(3, bytes.fromhex(ROOT), signer, NOW)
    assert cp.root_hash == ROOT


@pytest.mark.parametrize(
    "change",
    [
        {"tree_size": 9},
        {"root_hash": "0" * 64},
        {"timestamp": "2026-11-25T20:44:12.123457Z"},
        {"key_id": "someone-else"},
    ],
)
def test_any_signed_field_change_fails(
    signer: Ed25519CheckpointSigner, change: dict[str, object]
) -> None:
    cp = replace(sign_checkpoint(8, ROOT, signer, NOW), **change)  # type: ignore[arg-type]
    with pytest.raises(ProofInvalid, match="does not verify"):
        verify_checkpoint(cp, signer.public_key_raw)


def test_wrong_key_or_pinned_key_id_fails(signer: Ed25519CheckpointSigner) -> None:
    cp = sign_checkpoint(8, ROOT, signer, NOW)
    other = Ed25519CheckpointSigner.generate()
    with pytest.raises(ProofInvalid, match="does not verify"):
        verify_checkpoint(cp, other.public_key_raw)
    with pytest.raises(ProofInvalid, match="expected 'x'"):
        verify_checkpoint(cp, signer.public_key_raw, key_id="x")
    with pytest.raises(ProofInvalid, match="32 raw bytes"):
        verify_checkpoint(cp, signer.public_key_raw[:31])
    assert verify_checkpoint(cp, signer.public_key_raw, key_id=signer.key_id) is cp


def test_signature_strings_parse_strictly(signer: Ed25519CheckpointSigner) -> None:
    cp = sign_checkpoint(8, ROOT, signer, NOW)
    body = cp.signature.removeprefix("ed25519:")
    raw = base64.urlsafe_b64decode(body + "==")
    # The last base64url character of 64 bytes carries 4 unused bits: another spelling of
    # the same bytes must be refused so a checkpoint has exactly one serialization.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alt = body[:-1] + last[last.index(body[-1]) ^ 1]
    assert base64.urlsafe_b64decode(alt + "==") == raw
    for bad in (
        "ed25519:" + alt,
        "ed25519:" + body + "=",
        "ed25519:" + body[:-1],
        "ED25519:" + body,
        body,
        "vault:v1:" + base64.b64encode(raw).decode()[:-1],
        "",
    ):
        with pytest.raises(ProofInvalid):
            replace(cp, signature=bad)
    # OpenBao transit spelling of the same signature verifies (l7 TransitSigner).
    transit = replace(cp, signature="vault:v3:" + base64.b64encode(raw).decode())
    assert verify_checkpoint(transit, signer.public_key_raw) is transit


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tree_size", -1),
        ("tree_size", True),
        ("tree_size", 1.0),
        ("tree_size", 2**53),
        ("root_hash", ROOT.upper()),
        ("root_hash", ROOT[:-1]),
        ("timestamp", "2026-11-25T20:44:12Z"),
        ("timestamp", "2026-11-25T20:44:12.123456+00:00"),
        ("timestamp", "2026-13-25T20:44:12.123456Z"),
        ("key_id", ""),
        ("key_id", "a b"),
        ("key_id", "k" * 129),
    ],
)
def test_malformed_fields_are_refused(field: str, value: object) -> None:
    good = {
        "tree_size": 1,
        "root_hash": ROOT,
        "timestamp": "2026-11-25T20:44:12.123456Z",
        "key_id": "k",
        "signature": "ed25519:" + "A" * 86,
    }
    Checkpoint.from_dict(good)
    with pytest.raises(ProofInvalid):
        Checkpoint.from_dict({**good, field: value})


def test_from_dict_refuses_unknown_and_missing_fields(signer: Ed25519CheckpointSigner) -> None:
    d = sign_checkpoint(8, ROOT, signer, NOW).to_dict()
    assert Checkpoint.from_dict(d).to_dict() == d
    with pytest.raises(ProofInvalid, match="unknown"):
        Checkpoint.from_dict({**d, "extra": 1})
    del d["timestamp"]
    with pytest.raises(ProofInvalid, match="missing"):
        Checkpoint.from_dict(d)
    with pytest.raises(ProofInvalid, match="JSON object"):
        Checkpoint.from_dict([1])


def test_key_files_are_0600_and_roundtrip(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "checkpoint.pem"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_raw(load_private_key(path)) == public_key_raw(key)
    signer = Ed25519CheckpointSigner.from_file(path, key_id="ledger-ckpt-1")
    assert signer.key_id == "ledger-ckpt-1"
    with pytest.raises(FileExistsError):
        save_private_key(path, key)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="0600"):
        load_private_key(path)


# -- witness --------------------------------------------------------------------------------


def _cps(signer: Ed25519CheckpointSigner, *sizes: int) -> list[Checkpoint]:
    return [
        sign_checkpoint(s, f"{s:064x}", signer, NOW + timedelta(seconds=i))
        for i, s in enumerate(sizes)
    ]


def test_witness_appends_and_reads_back(tmp_path: Path, signer: Ed25519CheckpointSigner) -> None:
    path = tmp_path / "witness.jsonl"
    w = Witness(path, public_key_raw=signer.public_key_raw)
    cps = _cps(signer, 1, 5, 5, 9)
    cps[2] = cps[1]  # the same head twice is fine
    for cp in cps:
        w.append(cp)
    assert read_witness(path) == cps == Witness.read_all(path)
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0]) == cps[0].to_dict()
    # Reopening continues from the last recorded head.
    w2 = Witness(path)
    assert w2.last == cps[-1]
    with pytest.raises(IntegrityViolation, match="checkpoint_inconsistent"):
        w2.append(_cps(signer, 8)[0])


def test_witness_refuses_unverified_or_forked_heads(
    tmp_path: Path, signer: Ed25519CheckpointSigner
) -> None:
    w = Witness(tmp_path / "w.jsonl", public_key_raw=signer.public_key_raw)
    w.append(_cps(signer, 4)[0])
    with pytest.raises(ProofInvalid, match="does not verify"):
        w.append(_cps(Ed25519CheckpointSigner.generate(), 5)[0])
    fork = sign_checkpoint(4, "f" * 64, signer, NOW)
    with pytest.raises(IntegrityViolation, match=r"checkpoint_inconsistent.*root"):
        w.append(fork)


def test_reader_refuses_a_file_that_goes_backwards(
    tmp_path: Path, signer: Ed25519CheckpointSigner
) -> None:
    path = tmp_path / "w.jsonl"
    a, b = _cps(signer, 7, 3)
    path.write_text(json.dumps(a.to_dict()) + "\n" + json.dumps(b.to_dict()) + "\n")
    with pytest.raises(IntegrityViolation, match=r"checkpoint_inconsistent.*tree_size >= 7"):
        read_witness(path)


@pytest.mark.parametrize(
    "tail",
    [
        b'{"tree_size": 1}\n',
        b"not json\n",
        b'{"tree_size":1,"tree_size":2}\n',
        b"[]\n",
        b'{"tree_size": NaN}\n',
    ],
)
def test_reader_refuses_malformed_lines(
    tmp_path: Path, signer: Ed25519CheckpointSigner, tail: bytes
) -> None:
    path = tmp_path / "w.jsonl"
    Witness(path).append(_cps(signer, 1)[0])
    with path.open("ab") as f:
        f.write(tail)
    with pytest.raises(ProofInvalid, match=r"w\.jsonl:2"):
        read_witness(path)


def test_reader_refuses_a_torn_last_line(tmp_path: Path, signer: Ed25519CheckpointSigner) -> None:
    path = tmp_path / "w.jsonl"
    Witness(path).append(_cps(signer, 1)[0])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ProofInvalid, match="unterminated"):
        read_witness(path)
