"""l7.crypto: canonical hashing, both signature formats, key files, transit error mapping."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import requests
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.crypto import (
    Ed25519Signer,
    SignatureMethod,
    TransitSigner,
    canonical,
    intent_hash,
    load_private_key,
    public_key_b64,
    public_key_raw,
    save_private_key,
    sha256_hex,
    transit_key_version,
    verify_signature,
)
from l7.domain import Action, Actor, Context, DecisionRequest, Target
from l7.errors import ApprovalInvalid, ConfigError, RequestInvalid

DATA = b'{"type":"l7.approval"}'


def transit_sign(key: Ed25519PrivateKey, data: bytes, version: int = 1) -> str:
    """What OpenBao transit returns for an ed25519 key: vault:vN:<base64 std of the sig>."""
    return f"vault:v{version}:" + base64.b64encode(key.sign(data)).decode()


# -- canonical and intent hash -----------------------------------------------------------


def test_canonical_is_jcs_with_sorted_keys() -> None:
    assert canonical({"b": 1, "a": [True, None, "é"]}) == b'{"a":[true,null,"\xc3\xa9"],"b":1}'


def test_intent_hash_known_answer_and_matches_decision_request() -> None:
    action = {
        "class": "data.read",
        "intent": "read orders",
        "target": {"type": "dataset", "id": "orders"},
        "payload": {"limit": 10},
    }
    expected = "sha256:" + sha256_hex(
        b'{"class":"data.read","environment":"dev","intent":"read orders",'
        b'"payload":{"limit":10},"target":{"id":"orders","type":"dataset"}}'
    )
    assert intent_hash(action, "dev") == expected
    req = DecisionRequest(
        Action("data.read", "read orders", Target("dataset", "orders"), {"limit": 10}),
        Context(Actor("agent-1", "engineer", 1), "dev"),
    )
    assert intent_hash(req.to_dict()["action"], "dev") == expected
    whole = {**req.to_dict()["action"], "environment": "dev"}
    assert "sha256:" + sha256_hex(rfc8785.dumps(whole)) == expected


def test_intent_hash_covers_the_effective_environment() -> None:
    """A dev approval or grant never covers the byte-identical production action; a
    missing or unknown environment is production, as policy judges it (issue #13)."""
    action = {"class": "a", "intent": "b", "target": {"type": "t", "id": "i"}, "payload": {}}
    by_env = {e: intent_hash(action, e) for e in ("dev", "staging", "production")}
    assert len(set(by_env.values())) == 3
    for unknown in ("", "prod", "Production", "dev ", "local"):
        assert intent_hash(action, unknown) == by_env["production"]


@pytest.mark.parametrize(
    ("action", "field"),
    [
        ({"class": "a", "intent": "b", "target": {"type": "t", "id": "i"}}, "action"),
        (
            {
                "class": "a",
                "intent": "b",
                "target": {"type": "t", "id": "i"},
                "payload": {},
                "x": 1,
            },
            "action",
        ),
        ({"class": "a", "intent": "b", "target": {"type": "t"}, "payload": {}}, "action.target"),
    ],
)
def test_intent_hash_refuses_other_shapes(action: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestInvalid, match="must") as e:
        intent_hash(action, "dev")
    assert e.value.field == field


# -- ed25519 -----------------------------------------------------------------------------


def test_ed25519_round_trip_and_format() -> None:
    signer = Ed25519Signer.generate()
    sig = signer.sign(DATA)
    assert sig.startswith("ed25519:") and "=" not in sig
    assert signer.method is SignatureMethod.ED25519
    assert signer.key_id.startswith("ed25519-")
    verify_signature("ed25519", signer.public_key_raw, DATA, sig)
    verify_signature(SignatureMethod.ED25519, signer.public_key_raw, DATA, sig)


def test_ed25519_wrong_key_and_wrong_data() -> None:
    signer, other = Ed25519Signer.generate(), Ed25519Signer.generate()
    sig = signer.sign(DATA)
    with pytest.raises(ApprovalInvalid, match="does not verify with the registered key") as e:
        verify_signature("ed25519", other.public_key_raw, DATA, sig)
    assert e.value.reason == "signature_invalid"
    with pytest.raises(ApprovalInvalid, match="does not verify"):
        verify_signature("ed25519", signer.public_key_raw, DATA + b" ", sig)


# -- transit (offline verification of OpenBao's format) -----------------------------------


def test_transit_signature_verifies_offline() -> None:
    key = Ed25519PrivateKey.generate()
    sig = transit_sign(key, DATA, version=3)
    assert transit_key_version(sig) == 3
    verify_signature("vault-transit", public_key_raw(key.public_key()), DATA, sig)


def test_transit_signature_with_another_versions_key_fails() -> None:
    v1, v2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sig = transit_sign(v2, DATA, version=2)
    with pytest.raises(ApprovalInvalid, match="does not verify") as e:
        verify_signature("vault-transit", public_key_raw(v1.public_key()), DATA, sig)
    assert e.value.reason == "signature_invalid"


def test_a_signature_is_only_valid_under_its_own_method() -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_raw(key.public_key())
    with pytest.raises(ApprovalInvalid, match="must be 'ed25519:"):
        verify_signature("ed25519", pub, DATA, transit_sign(key, DATA))
    with pytest.raises(ApprovalInvalid, match="must be 'vault:v<N>:"):
        verify_signature("vault-transit", pub, DATA, Ed25519Signer(key).sign(DATA))


# -- malformed input ---------------------------------------------------------------------

_GOOD = Ed25519PrivateKey.generate()
_PUB = public_key_raw(_GOOD.public_key())
_SIG = _GOOD.sign(DATA)
_URL = base64.urlsafe_b64encode(_SIG).decode().rstrip("=")
_STD = base64.b64encode(_SIG).decode()


@pytest.mark.parametrize(
    ("method", "signature", "match"),
    [
        ("rsa", "ed25519:" + _URL, "unknown signature method 'rsa'"),
        ("", "ed25519:" + _URL, "unknown signature method ''"),
        ("ed25519", "", "must be 'ed25519:"),
        ("ed25519", _URL, "must be 'ed25519:"),
        ("ed25519", "ed25519:", "must be 'ed25519:"),
        ("ed25519", "ed25519:" + _URL + "==", "must be 'ed25519:"),
        ("ed25519", "ed25519:" + _STD, "must be 'ed25519:"),
        ("ed25519", "ed25519:" + _URL[:-6], "is 64 bytes, got 60"),
        ("ed25519", "ed25519:" + _URL + "AAAA", "is 64 bytes, got 67"),
        ("ed25519", "ed25519:" + "A" * 300, "at most 256"),
        ("vault-transit", "vault:v0:" + _STD, "must be 'vault:v<N>:"),
        ("vault-transit", "vault:v01:" + _STD, "must be 'vault:v<N>:"),
        ("vault-transit", "vault:1:" + _STD, "must be 'vault:v<N>:"),
        ("vault-transit", "vault:v1:" + _URL, "must be 'vault:v<N>:|not valid base64"),
        ("vault-transit", "vault:v1:" + _STD.rstrip("="), "not valid base64"),
        ("vault-transit", "vault:v1:" + _STD + " ", "must be 'vault:v<N>:"),
        ("vault-transit", "vault:v1:" + base64.b64encode(b"x" * 32).decode(), "got 32"),
    ],
)
def test_malformed_signatures_are_refused(method: str, signature: str, match: str) -> None:
    with pytest.raises(ApprovalInvalid, match=match) as e:
        verify_signature(method, _PUB, DATA, signature)
    assert e.value.reason == "signature_invalid"


def test_non_canonical_base64_is_refused() -> None:
    # The last character of an unpadded 64-byte base64url string carries 2 unused bits.
    last = _URL[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(last) ^ 1]
    with pytest.raises(ApprovalInvalid, match="not canonically encoded"):
        verify_signature("ed25519", _PUB, DATA, "ed25519:" + _URL[:-1] + twin)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_public_key_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(ApprovalInvalid, match=f"is {size} bytes, not a raw Ed25519 key") as e:
        verify_signature("ed25519", b"\x01" * size, DATA, "ed25519:" + _URL)
    assert e.value.reason == "signature_invalid"


# -- key files ---------------------------------------------------------------------------


def test_private_key_file_round_trip_mode_0600(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "approver.pem"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert public_key_raw(loaded.public_key()) == public_key_raw(key.public_key())
    assert base64.b64decode(public_key_b64(key.public_key())) == public_key_raw(key.public_key())
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        save_private_key(path, Ed25519PrivateKey.generate())


def test_encrypted_private_key(tmp_path: Path) -> None:
    key, path = Ed25519PrivateKey.generate(), tmp_path / "k.pem"
    save_private_key(path, key, password=b"pw")
    load_private_key(path, password=b"pw")
    with pytest.raises(ConfigError, match="not a readable PEM private key"):
        load_private_key(path, password=b"wrong")


def test_load_refuses_group_readable_missing_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    save_private_key(path, Ed25519PrivateKey.generate())
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="mode 0640; a private key must be 0600"):
        load_private_key(path)
    with pytest.raises(ConfigError, match="cannot read private key"):
        load_private_key(tmp_path / "absent.pem")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="not a readable PEM"):
        load_private_key(junk)


# -- transit signer against a stand-in client (the real server is in integration) ------


class _Transit:
    def __init__(self, key: Ed25519PrivateKey | None, error: Exception | None = None) -> None:
        self.key, self.error = key, error
        self.calls: list[dict[str, Any]] = []

    def sign_data(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        if self.error is not None:
            raise self.error
        assert self.key is not None
        data = base64.b64decode(kw["hash_input"])
        return {"data": {"key_version": 1, "signature": transit_sign(self.key, data, 1)}}

    def read_key(self, **kw: Any) -> dict[str, Any]:
        assert self.key is not None
        pub = public_key_b64(self.key.public_key())
        return {
            "data": {"type": "ed25519", "latest_version": 1, "keys": {"1": {"public_key": pub}}}
        }


class _Client:
    def __init__(self, transit: _Transit) -> None:
        self.secrets = type("S", (), {"transit": transit})()


def test_transit_signer_signs_base64_input_and_verifies_offline() -> None:
    key = Ed25519PrivateKey.generate()
    transit = _Transit(key)
    signer = TransitSigner(_Client(transit), "approver-a", key_version=1)
    assert signer.key_id == "approver-a@v1" and signer.method is SignatureMethod.VAULT_TRANSIT
    sig = signer.sign(DATA)
    assert transit.calls[0]["hash_input"] == base64.b64encode(DATA).decode()
    assert transit.calls[0]["name"] == "approver-a" and transit.calls[0]["key_version"] == 1
    verify_signature("vault-transit", signer.public_key(), DATA, sig)


def test_transit_signer_refuses_a_different_version_than_pinned() -> None:
    signer = TransitSigner(_Client(_Transit(Ed25519PrivateKey.generate())), "k", key_version=2)
    with pytest.raises(ApprovalInvalid, match="asked OpenBao to sign with v2 of k, got v1") as e:
        signer.sign(DATA)
    assert e.value.reason == "signer_unavailable"


@pytest.mark.parametrize(
    ("error", "kind", "match"),
    [
        (hvac.exceptions.Forbidden("permission denied"), ConfigError, "OpenBao refused"),
        (hvac.exceptions.InvalidRequest("signing key not found"), ConfigError, "key exists"),
        (hvac.exceptions.VaultDown("sealed"), ApprovalInvalid, "could not sign"),
        (hvac.exceptions.InternalServerError("boom"), ApprovalInvalid, "could not sign"),
        (requests.ConnectionError("refused"), ApprovalInvalid, "retry when it is reachable"),
    ],
)
def test_transit_errors_are_translated(error: Exception, kind: type[Exception], match: str) -> None:
    signer = TransitSigner(_Client(_Transit(None, error)), "k")
    with pytest.raises(kind, match=match) as e:
        signer.sign(DATA)
    assert e.value.__cause__ is error
    if kind is ApprovalInvalid:
        assert e.value.reason == "signer_unavailable"  # type: ignore[attr-defined]
