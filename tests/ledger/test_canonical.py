"""Known-answer vectors for the canonical body (RFC 8785 JCS) and the chain hash."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from ledger import GENESIS_HASH, EventHash, InvalidEvent, canonical_body, chain_hash

AT = "2026-11-25T20:44:12.123456Z"
EVENT_ID = "00000000-0000-4000-8000-000000000001"


def body(payload: Any, unique_key: str | None = None) -> bytes:
    return canonical_body(
        event_id=EVENT_ID,
        decision_id="dec-1",
        event_type="policy.gate",
        policy_version="rev-1",
        actor="alice",
        payload=payload,
        unique_key=unique_key,
        at=AT,
    )


# JCS: keys sorted by UTF-16 code units, 1.0 -> 1, 1e21 -> 1e+21, -0.0 -> 0, control
# characters escaped as \u00XX, other non-ASCII (é, U+2028, €) emitted raw as UTF-8.
VECTOR_PAYLOAD = {
    "gate": "env",
    "result": "pass",
    "score": 1.0,
    "n": [1e21, -0.0, 0.1],
    "é": "ü\u2028",
    "€": 1,
    "a\u0000": True,
}
VECTOR_BODY = (
    b'{"actor":"alice","decision_id":"dec-1",'
    b'"event_id":"00000000-0000-4000-8000-000000000001","event_type":"policy.gate",'
    b'"payload":{"a\\u0000":true,"gate":"env","n":[1e+21,0,0.1],"result":"pass","score":1,'
    b'"\xc3\xa9":"\xc3\xbc\xe2\x80\xa8","\xe2\x82\xac":1},'
    b'"policy_version":"rev-1","schema_version":1,'
    b'"timestamps":{"at":"2026-11-25T20:44:12.123456Z"},"unique_key":null}'
)
VECTOR_HASH = "6234a8190e543bd96522b16623a15b5f23acf7d3210f6069ec371ef36b695eeb"
VECTOR_HASH_2 = "27c668e0d5987438ca1a41727f3c5873ef7f85356d604d82d44c145459a94d87"


def test_body_known_answer() -> None:
    assert body(VECTOR_PAYLOAD) == VECTOR_BODY


def test_chain_hash_known_answer() -> None:
    h = chain_hash(GENESIS_HASH, VECTOR_BODY)
    assert h == VECTOR_HASH
    assert h == hashlib.sha256(b"0" * 64 + VECTOR_BODY).hexdigest()
    assert chain_hash(h, VECTOR_BODY) == VECTOR_HASH_2


def test_unique_key_is_part_of_the_body() -> None:
    assert b'"unique_key":"idem:alice:1"' in body({}, "idem:alice:1")


def test_mapping_key_order_does_not_matter() -> None:
    assert body({"b": 1, "a": {"y": 2, "x": 1}}) == body({"a": {"x": 1, "y": 2}, "b": 1})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"score": float("nan")}, r"^payload\.score: nan is not a JSON number"),
        ({"risk": {"items": [1, float("inf")]}}, r"^payload\.risk\.items\[1\]: inf is not"),
        ({"x": -float("inf")}, r"^payload\.x: -inf is not a JSON number"),
        ({"big": 2**53}, r"^payload\.big: integer 9007199254740992 is outside the JSON-safe"),
        ({"s": {1, 2}}, r"^payload\.s: set is not a JSON value"),
        ({"b": b"raw"}, r"^payload\.b: bytes is not a JSON value"),
        ({"o": {1: "x"}}, r"^payload\.o: object key 1 is not a string"),
        ({"t": "\ud800"}, r"^payload\.t: string is not valid Unicode"),
    ],
)
def test_non_json_values_are_refused_naming_the_field(payload: Any, match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        body(payload)


def test_empty_decision_id_and_unique_key_are_refused() -> None:
    with pytest.raises(InvalidEvent, match=r"^decision_id: must be a non-empty string"):
        canonical_body(
            event_id=EVENT_ID,
            decision_id="",
            event_type="policy.gate",
            policy_version="",
            actor="a",
            payload={},
            unique_key=None,
            at=AT,
        )
    with pytest.raises(InvalidEvent, match=r"^unique_key: must be None or a non-empty string"):
        body({}, "")


def test_chain_hash_refuses_a_malformed_prev_hash() -> None:
    with pytest.raises(InvalidEvent, match=r"^prev_hash: expected 64 lower-case hex digits"):
        chain_hash(EventHash("ABC"), b"{}")
