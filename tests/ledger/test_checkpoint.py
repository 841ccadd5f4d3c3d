"""Checkpoints as C2SP signed notes: exact bytes, key hashes, strict parsing, the chain,
and cosignature/v1."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import (
    Checkpoint,
    Ed25519CheckpointSigner,
    check_chain,
    default_origin,
    load_private_key,
    log_key,
    public_key_raw,
    save_private_key,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint,
)
from ledger.errors import IntegrityViolation
from ledger.merkle import ProofInvalid
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    Cosignature,
    VerifierKey,
    cosign,
    cosignature_message,
    parse_note,
    verify_cosignature,
)

NOW = datetime(2026, 11, 25, 20, 44, 12, 123456, tzinfo=UTC)
ROOT = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
ROOT_B64 = base64.b64encode(bytes.fromhex(ROOT)).decode()
ORIGIN = "layer7.local/ledger/test"


@pytest.fixture
def signer() -> Ed25519CheckpointSigner:
    return Ed25519CheckpointSigner.generate()


def _chain(signer: Ed25519CheckpointSigner, *sizes: int) -> list[Checkpoint]:
    out: list[Checkpoint] = []
    for i, s in enumerate(sizes):
        prev = out[-1] if out else None
        out.append(
            sign_checkpoint(
                s, f"{s:064x}", signer, NOW + timedelta(seconds=i), origin=ORIGIN, prev=prev
            )
        )
    return out


def test_note_bytes_are_the_c2sp_checkpoint_with_l7_extension_lines(
    signer: Ed25519CheckpointSigner,
) -> None:
    first = sign_checkpoint(
        5, "00" * 32, signer, NOW - timedelta(seconds=1), origin=ORIGIN, prev=None
    )
    cp = sign_checkpoint(8, ROOT, signer, NOW, origin=ORIGIN, prev=first)
    prev_b64 = base64.b64encode(bytes(32)).decode()
    assert cp.body == (
        f"{ORIGIN}\n8\n{ROOT_B64}\nl7.index 1\nl7.prev 0 5 {prev_b64}\n"
        "l7.time 2026-11-25T20:44:12.123456Z\n"
    )
    assert first.body.endswith("l7.index 0\nl7.time 2026-11-25T20:44:11.123456Z\n")
    # The signature line: "— <origin> base64(key hash || Ed25519(body))", after an empty line.
    pub = signer.public_key_raw
    kh = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + pub).digest()[:4]
    text, sig_line = cp.note.split("\n\n")
    assert text + "\n" == cp.body
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    assert raw[:4] == kh and len(raw) == 68
    assert verify_checkpoint(cp, pub, origin=ORIGIN) is cp
    assert Checkpoint.decode(cp.note) == cp
    assert cp.key_id == f"{ORIGIN}+{kh.hex()}"


def test_vkey_is_the_sumdb_note_verifier_key_string(signer: Ed25519CheckpointSigner) -> None:
    vk = log_key(ORIGIN, signer.public_key_raw)
    name, hash_hex, key_b64 = vk.encode().split("+", 2)
    assert name == ORIGIN
    assert base64.b64decode(key_b64) == b"\x01" + signer.public_key_raw
    assert (
        hash_hex
        == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.public_key_raw).digest()[:4].hex()
    )
    assert VerifierKey.decode(vk.encode()) == vk
    with pytest.raises(ProofInvalid, match="does not match its name and key"):
        VerifierKey.decode(f"other.origin+{hash_hex}+{key_b64}")


def test_timestamp_is_converted_to_utc_and_naive_refused(signer: Ed25519CheckpointSigner) -> None:
    plus2 = timezone(timedelta(hours=2))
    cp = sign_checkpoint(1, ROOT, signer, NOW.astimezone(plus2), origin=ORIGIN, prev=None)
    assert cp.timestamp == "2026-11-25T20:44:12.123456Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        sign_checkpoint(1, ROOT, signer, NOW.replace(tzinfo=None), origin=ORIGIN, prev=None)


def test_every_one_byte_change_of_the_note_is_refused(signer: Ed25519CheckpointSigner) -> None:
    cp = _chain(signer, 3, 8)[1]
    note = cp.note.encode()
    for i in range(len(note)):
        for flip in (0x01, 0x20):
            changed = bytearray(note)
            changed[i] ^= flip
            try:
                parsed = Checkpoint.decode(bytes(changed))
            except ProofInvalid:
                continue
            with pytest.raises(ProofInvalid):
                verify_checkpoint(parsed, signer.public_key_raw, origin=ORIGIN)


def test_wrong_key_or_origin_fails(signer: Ed25519CheckpointSigner) -> None:
    cp = _chain(signer, 3)[0]
    with pytest.raises(ProofInvalid, match="does not verify|expected one by"):
        verify_checkpoint(cp, Ed25519CheckpointSigner.generate().public_key_raw)
    with pytest.raises(ProofInvalid, match="is for log"):
        verify_checkpoint(cp, signer.public_key_raw, origin="layer7.local/ledger/other")


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("\n8\n", "\n08\n", "leading zeroes"),
        ("l7.index 1\n", "l7.index 01\n", "leading zeroes"),
        ("l7.index 1\n", "", "l7.index <n>"),
        ("l7.time ", "l7.when ", "l7.time"),
        (ROOT_B64, ROOT_B64.rstrip("="), "base64"),
        ("\n\n\u2014", "\n\u2014", "empty line|signature"),
        ("l7.prev 0 3", "l7.prev 0 9", "tree_size <="),
    ],
)
def test_decode_is_strict(signer: Ed25519CheckpointSigner, old: str, new: str, why: str) -> None:
    cp = sign_checkpoint(8, ROOT, signer, NOW, origin=ORIGIN, prev=_chain(signer, 3)[0])
    assert old in cp.note
    with pytest.raises(ProofInvalid, match=why):
        Checkpoint.decode(cp.note.replace(old, new, 1))


def test_a_note_without_its_trailing_newline_or_with_control_characters_is_refused(
    signer: Ed25519CheckpointSigner,
) -> None:
    note = _chain(signer, 3)[0].note
    with pytest.raises(ProofInvalid):
        parse_note(note[:-1])
    with pytest.raises(ProofInvalid, match="control characters"):
        parse_note(note.replace("l7.index", "l7\tindex"))


def test_a_transit_signature_string_is_decoded(signer: Ed25519CheckpointSigner) -> None:
    class Transit:
        public_key_raw = signer.public_key_raw

        def sign(self, data: bytes) -> str:
            ed = signer.sign(data).removeprefix("ed25519:")
            raw = base64.urlsafe_b64decode(ed + "==")
            return "vault:v3:" + base64.b64encode(raw).decode()

    cp = sign_checkpoint(8, ROOT, Transit(), NOW, origin=ORIGIN, prev=None)
    verify_checkpoint(cp, signer.public_key_raw)


def test_the_chain_names_each_predecessor(signer: Ed25519CheckpointSigner) -> None:
    a, b, c = _chain(signer, 1, 4, 9)
    verify_chain([a, b, c])
    with pytest.raises(IntegrityViolation, match="checkpoint_missing"):
        verify_chain([a, c])
    with pytest.raises(IntegrityViolation, match="checkpoint_missing"):
        verify_chain([b, c])
    other = sign_checkpoint(5, ROOT, signer, NOW, origin=ORIGIN, prev=a)  # another "index 1"
    with pytest.raises(IntegrityViolation, match="checkpoint_chain_broken"):
        check_chain(other, c)


def test_default_origin_is_a_key_name() -> None:
    assert default_origin("prod db#1") == "layer7.local/ledger/prod-db-1"


def test_cosignature_v1_message_and_verification(signer: Ed25519CheckpointSigner) -> None:
    cp = _chain(signer, 3)[0]
    wkey = Ed25519PrivateKey.generate()
    vk = VerifierKey.for_private("witness.example/w1", ALG_COSIGNATURE_V1, wkey)
    c = cosign(cp.body, "witness.example/w1", wkey, 1_679_315_147)
    assert cosignature_message(cp.body, 1_679_315_147) == (
        b"cosignature/v1\ntime 1679315147\n" + cp.body.encode()
    )
    raw = base64.b64decode(c.line().split(" ")[2])
    assert (
        raw[:4] == hashlib.sha256(b"witness.example/w1\n\x04" + public_key_raw(wkey)).digest()[:4]
    )
    assert int.from_bytes(raw[4:12], "big") == 1_679_315_147
    assert Cosignature.parse_line(c.line()) == c
    assert verify_cosignature(cp.body, c, vk) == c
    with pytest.raises(ProofInvalid, match="does not verify"):
        verify_cosignature(_chain(signer, 4)[0].body, c, vk)
    with pytest.raises(ProofInvalid, match="not a cosignature/v1"):
        verify_cosignature(cp.body, c, VerifierKey(vk.name, ALG_ED25519, vk.public_key))
    # A cosigned note reads back with its cosignatures.
    back, cosigs = Checkpoint.decode_cosigned(cp.encode([c]))
    assert (back, cosigs) == (cp, [c])


def test_key_files_are_0600_and_roundtrip(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "checkpoint.pem"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_raw(load_private_key(path)) == public_key_raw(key)
    assert Ed25519CheckpointSigner.from_file(path).public_key_raw == public_key_raw(key)
    with pytest.raises(FileExistsError):
        save_private_key(path, key)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="0600"):
        load_private_key(path)
