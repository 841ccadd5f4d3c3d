"""Signed approvals: round trip, each numbered check of verify_approval, strict JSON."""

from __future__ import annotations

import base64
import copy
import dataclasses
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import event, given
from hypothesis import strategies as st

from l7.authority.approval import (
    ApprovalPayload,
    Rationale,
    SignedApproval,
    Verdict,
    payload_hash,
    sign_approval,
    verify_approval,
)
from l7.crypto import (
    Ed25519Signer,
    SignatureMethod,
    canonical,
    public_key_raw,
    sha256_hex,
)
from l7.errors import ApprovalInvalid, ConfigError

NOW = 1_800_000_000
DECISION = "dec-0001"
INTENT = "sha256:" + "ab" * 32
APPROVER = "alice@example.com"
SIGNER = Ed25519Signer.generate(key_id="alice-1")


def payload(**changes: Any) -> ApprovalPayload:
    p = ApprovalPayload.new(
        DECISION,
        INTENT,
        Verdict.APPROVE,
        APPROVER,
        SIGNER.key_id,
        ttl_s=600,
        now=NOW,
        rationale=Rationale("customer escalation", ticket="CHG-12"),
    )
    return dataclasses.replace(p, **changes)


def verify(signed: SignedApproval, **overrides: Any) -> ApprovalPayload:
    kw: dict[str, Any] = {
        "public_key_raw": SIGNER.public_key_raw,
        "expected_decision_id": DECISION,
        "expected_intent_hash": INTENT,
        "expected_approver": APPROVER,
        "now": NOW + 10,
    }
    kw.update(overrides)
    return verify_approval(signed, **kw)


def transit_signed(p: ApprovalPayload, key: Ed25519PrivateKey) -> SignedApproval:
    sig = "vault:v1:" + base64.b64encode(key.sign(p.signing_bytes())).decode()
    return SignedApproval(p, SignatureMethod.VAULT_TRANSIT, sig)


# -- round trip ---------------------------------------------------------------------------


def test_ed25519_round_trip_through_json() -> None:
    p = payload()
    signed = sign_approval(p, SIGNER)
    again = SignedApproval.from_json(copy.deepcopy(signed.to_json()))
    assert again == signed
    assert verify(again) == p
    assert p.to_signed_dict()["type"] == "l7.approval" and p.to_signed_dict()["version"] == 1
    assert p.signing_bytes() == canonical(signed.to_json()["payload"])
    assert payload_hash(p) == sha256_hex(p.signing_bytes())


def test_transit_format_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    p = payload(key_id="transit-alice@v1")
    signed = SignedApproval.from_json(transit_signed(p, key).to_json())
    assert verify(signed, public_key_raw=public_key_raw(key.public_key())) == p


def test_new_payload_has_a_fresh_128_bit_nonce() -> None:
    a, b = payload(), payload()
    assert a.nonce != b.nonce
    assert len(base64.urlsafe_b64decode(a.nonce + "==")) >= 16
    assert (a.issued_at, a.expires_at) == (NOW, NOW + 600)


def test_sign_approval_refuses_a_mismatched_key_id() -> None:
    with pytest.raises(ConfigError, match="names key 'other' but the signer holds 'alice-1'"):
        sign_approval(payload(key_id="other"), SIGNER)


# -- each numbered check ------------------------------------------------------------------


def test_1_signature_by_another_key() -> None:
    mallory = Ed25519Signer.generate(key_id=SIGNER.key_id)
    signed = sign_approval(payload(), mallory)
    with pytest.raises(ApprovalInvalid, match="does not verify with the registered key") as e:
        verify(signed)
    assert e.value.reason == "signature_invalid"


def test_1_method_is_part_of_the_check() -> None:
    signed = sign_approval(payload(), SIGNER)
    swapped = dataclasses.replace(signed, method=SignatureMethod.VAULT_TRANSIT)
    with pytest.raises(ApprovalInvalid, match="must be 'vault:v<N>:") as e:
        verify(swapped)
    assert e.value.reason == "signature_invalid"


def test_1_transit_signature_by_another_key() -> None:
    signed = transit_signed(payload(), Ed25519PrivateKey.generate())
    other = public_key_raw(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ApprovalInvalid, match="vault-transit signature does not verify") as e:
        verify(signed, public_key_raw=other)
    assert e.value.reason == "signature_invalid"


@pytest.mark.parametrize(
    ("override", "reason", "match"),
    [
        ({"expected_approver": "bob"}, "signer_mismatch", "signed as 'alice@example.com' but"),
        ({"expected_decision_id": "dec-2"}, "decision_mismatch", "for decision 'dec-0001', not"),
        ({"expected_intent_hash": "sha256:" + "cd" * 32}, "intent_mismatch", "binds intent"),
        ({"now": NOW - 31}, "approval_not_yet_valid", "31s in the future"),
        ({"now": NOW + 600}, "approval_expired", "expired at 1800000600"),
        ({"max_ttl_s": 599}, "approval_ttl_too_long", "valid for 600s; at most 599s"),
    ],
)
def test_each_check_fails_with_its_reason(
    override: dict[str, Any], reason: str, match: str
) -> None:
    signed = sign_approval(payload(), SIGNER)
    with pytest.raises(ApprovalInvalid, match=match) as e:
        verify(signed, **override)
    assert e.value.reason == reason


def test_time_window_edges() -> None:
    signed = sign_approval(payload(), SIGNER)
    verify(signed, now=NOW - 30)  # issued within the allowed skew
    verify(signed, now=NOW + 599)  # last valid second
    verify(signed, max_ttl_s=600)


def test_checks_run_in_order_signature_first() -> None:
    # Wrong key AND wrong approver AND expired: the signature is reported.
    signed = sign_approval(payload(), Ed25519Signer.generate(key_id="alice-1"))
    with pytest.raises(ApprovalInvalid) as e:
        verify(signed, expected_approver="bob", now=NOW + 10_000)
    assert e.value.reason == "signature_invalid"
    # Right key, wrong approver and wrong decision: the approver is reported.
    with pytest.raises(ApprovalInvalid) as e:
        verify(sign_approval(payload(), SIGNER), expected_approver="bob", expected_decision_id="x")
    assert e.value.reason == "signer_mismatch"


# -- strict JSON --------------------------------------------------------------------------


def _json() -> dict[str, Any]:
    return sign_approval(payload(), SIGNER).to_json()


def _malformed(obj: Any, match: str) -> None:
    with pytest.raises(ApprovalInvalid, match=match) as e:
        SignedApproval.from_json(obj)
    assert e.value.reason == "approval_malformed"


def test_from_json_rejects_unknown_fields_at_every_level() -> None:
    top = _json() | {"extra": 1}
    _malformed(top, r"approval approval\.extra: unknown field")
    inner = _json()
    inner["payload"]["role"] = "admin"
    _malformed(inner, r"approval payload\.role: unknown field")
    rat = _json()
    rat["payload"]["rationale"]["severity"] = "low"
    _malformed(rat, r"approval payload\.rationale\.severity: unknown field")


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("payload", "issued_at"), "1800000000", r"payload\.issued_at: expected an integer"),
        (("payload", "expires_at"), True, r"payload\.expires_at: expected an integer"),
        (("payload", "expires_at"), 1.5, r"payload\.expires_at: expected an integer"),
        (("payload", "issued_at"), 2**60, r"payload\.issued_at: must be between"),
        (("payload", "expires_at"), NOW, r"payload\.expires_at: must be after issued_at"),
        (("payload", "decision_id"), 7, r"payload\.decision_id: expected a string, got int"),
        (("payload", "approver"), " ", r"payload\.approver: must be non-blank"),
        (("payload", "intent_hash"), "ab" * 32, r"payload\.intent_hash: must be 'sha256:'"),
        (("payload", "verdict"), "APPROVE", r"payload\.verdict: expected 'approve' or 'reject'"),
        (("payload", "verdict"), ["approve"], r"payload\.verdict: expected"),
        (("payload", "nonce"), "abc", r"payload\.nonce: must carry 16-64 random bytes, got 2"),
        (("payload", "nonce"), "a+b/" * 8, r"payload\.nonce: must be unpadded base64url"),
        (("payload", "type"), "l7.grant", r"payload\.type: expected 'l7\.approval'"),
        (("payload", "version"), 2, r"payload\.version: expected 1, got 2"),
        (("payload", "version"), True, r"payload\.version: expected 1, got True"),
        (("payload", "rationale"), "because", r"payload\.rationale: expected an object"),
        (("payload", "key_id"), None, r"payload\.key_id: expected a string"),
        (("payload",), [], r"approval payload: expected an object, got list"),
        (("method",), "rsa", r"approval method: expected one of \['ed25519', 'vault-transit'\]"),
        (("signature",), 5, r"approval signature: expected a string"),
    ],
)
def test_from_json_rejects_wrong_types_naming_the_field(
    path: tuple[str, ...], value: Any, match: str
) -> None:
    obj = _json()
    node = obj
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    _malformed(obj, match)


def test_from_json_rejects_missing_fields_and_non_objects() -> None:
    obj = _json()
    del obj["payload"]["nonce"]
    _malformed(obj, r"payload\.nonce: is required")
    obj = _json()
    del obj["payload"]["rationale"]["ticket"]
    _malformed(obj, r"payload\.rationale\.ticket: is required")
    _malformed("{}", "approval: expected an object, got str")


# -- properties ---------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
_nonce = st.binary(min_size=16, max_size=48).map(
    lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
)
_rationale = st.none() | st.builds(
    lambda s, t, r: {"summary": s, "ticket": t, "risk_accepted": r},
    _text,
    st.none() | _text,
    st.none() | _text,
)
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": _text,
    "version": st.integers(min_value=-(2**31), max_value=2**31),
    "decision_id": _text,
    "intent_hash": st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex()),
    "verdict": st.sampled_from(["approve", "reject"]),
    "approver": _text,
    # Mostly inside the window the other field allows, so the signature is what fails.
    "issued_at": st.integers(min_value=0, max_value=NOW + 599) | st.integers(min_value=0),
    "expires_at": st.integers(min_value=NOW + 1, max_value=2**53 - 1) | st.integers(),
    "nonce": _nonce,
    "rationale": _rationale,
    "key_id": _text,
}
_SIGNED = sign_approval(payload(), SIGNER)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("decision_id", "dec-0002"),
        ("intent_hash", "sha256:" + "cd" * 32),
        ("verdict", "reject"),
        ("approver", "alice@example.org"),
        ("issued_at", NOW - 1),
        ("expires_at", NOW + 601),
        ("nonce", "A" * 22),
        ("rationale", None),
        (
            "rationale",
            {"summary": "customer escalation", "ticket": "CHG-13", "risk_accepted": None},
        ),
        ("key_id", "alice-2"),
    ],
)
def test_every_signed_field_is_covered_by_the_signature(field: str, value: Any) -> None:
    obj = _SIGNED.to_json()
    obj["payload"][field] = value
    with pytest.raises(ApprovalInvalid, match="does not verify") as e:
        verify(SignedApproval.from_json(obj))
    assert e.value.reason == "signature_invalid"


@given(
    st.sampled_from(sorted(_FIELD_VALUES)).flatmap(
        lambda f: st.tuples(st.just(f), _FIELD_VALUES[f])
    )
)
def test_any_single_field_change_fails_verification(change: tuple[str, Any]) -> None:
    field, value = change
    obj = _SIGNED.to_json()
    if obj["payload"][field] == value:
        return  # not a change
    obj["payload"][field] = value
    try:
        changed = SignedApproval.from_json(obj)
    except ApprovalInvalid as e:  # a change that is not even well-formed is refused at parse
        assert e.reason == "approval_malformed"
        event("refused as malformed")
        return
    event(f"well-formed change of {field}")
    # A well-formed change is caught by the signature, before any other check.
    with pytest.raises(ApprovalInvalid, match="does not verify with the registered key") as e2:
        verify(changed)
    assert e2.value.reason == "signature_invalid"


@given(st.data())
def test_flipping_any_signature_byte_fails(data: st.DataObject) -> None:
    key = Ed25519PrivateKey.generate()
    pub = public_key_raw(key.public_key())
    p = payload()
    raw = bytearray(key.sign(p.signing_bytes()))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="byte")
    raw[i] ^= data.draw(st.integers(min_value=1, max_value=255), label="mask")
    method = data.draw(st.sampled_from(list(SignatureMethod)), label="method")
    if method is SignatureMethod.ED25519:
        sig = "ed25519:" + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    else:
        sig = "vault:v1:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(ApprovalInvalid, match="does not verify") as e:
        verify(SignedApproval(p, method, sig), public_key_raw=pub)
    assert e.value.reason == "signature_invalid"
