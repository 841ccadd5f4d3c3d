"""The fast canonicalizer is byte-identical to ``rfc8785.dumps``: hashes depend on it.

``ledger.canonical.canonical_json`` writes JCS through the C ``json`` encoder when a
type walk says that is exact, and hands everything else to ``rfc8785``. These tests
compare the two over arbitrary JSON values (including the awkward corners: astral
keys, control characters, lone surrogates, integral and fractional floats, the
+/-2**53 edges, tuples, subclasses) and check that errors are the same errors.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l7.crypto import canonical
from ledger import canonical_body
from ledger.canonical import _fast_bytes, canonical_json

LIMIT = 2**53 - 1

# Characters chosen to hit every escaping and ordering rule: ASCII, all C0 controls,
# quote and backslash, DEL, Latin-1, U+2028/2029, the BMP private-use block above the
# surrogates (which sorts differently in UTF-16 than in code points against astral
# characters), astral characters, and lone surrogates.
_ALPHABET = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x7F),
    st.sampled_from(["\u00e9", "\u2028", "\u2029", "\ue000", "\uffff", "\ufb01", "\u20ac"]),
    st.sampled_from(["\U0001f600", "\U00010000", "\U0010ffff"]),
    st.characters(codec="utf-8"),
    st.sampled_from(["\ud800", "\udfff"]),
)
_TEXT = st.text(_ALPHABET, max_size=12)
_SAFE_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)

_INTS = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.integers(min_value=-LIMIT - 2, max_value=LIMIT + 2),
    st.sampled_from([LIMIT, -LIMIT, LIMIT + 1, -LIMIT - 1, 2**64, 0]),
)
_FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-LIMIT - 2, max_value=LIMIT + 2).map(float),
    st.sampled_from(
        [
            0.0,
            -0.0,
            1.0,
            40.0,
            1e16,
            1e21,
            1e-7,
            0.1,
            2.0**53,
            -(2.0**53),
            5e-324,
            1.7976931348623157e308,
        ]
    ),
)


def _json(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, text)
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.lists(inner, max_size=5).map(tuple),
            st.dictionaries(text, inner, max_size=5),
        ),
        max_leaves=25,
    )


def _reference(value: Any) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(value)
    except Exception as e:
        return type(e)


def _ours(value: Any) -> bytes | type[BaseException]:
    try:
        return canonical_json(value)
    except Exception as e:
        return type(e)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_json(_TEXT))
def test_identical_to_rfc8785_over_arbitrary_values(value: Any) -> None:
    assert _ours(value) == _reference(value)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_SAFE_TEXT, _json(_SAFE_TEXT), max_size=6))
def test_identical_for_valid_objects_and_through_l7_crypto(value: dict[str, Any]) -> None:
    ref = _reference(value)
    assert _ours(value) == ref
    if isinstance(ref, bytes):
        assert canonical(value) == ref


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_TEXT, _json(_TEXT), max_size=6))
def test_event_body_fast_path_equals_the_validating_path(payload: dict[str, Any]) -> None:
    """canonical_body takes the fast path for a plain dict; a Mapping that is not a dict
    takes the validating copy + reference encoder. Same bytes or the same refusal."""

    class Frozen(dict[str, Any]):  # not ``type is dict``: forces the validating path
        pass

    def body(p: Any) -> bytes | str:
        try:
            return canonical_body(
                event_id="e-1",
                decision_id="d-1",
                event_type="policy.gate",
                policy_version="rev",
                actor="alice",
                payload=p,
                unique_key=None,
                at="2026-11-25T20:44:12.123456Z",
            )
        except Exception as e:
            return f"{type(e).__name__}: {e}"

    assert body(payload) == body(Frozen(payload))


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\ue000": 2, "a": 3},  # UTF-16 order: a, U+1F600, U+E000
        {"\uffff": 1, "\U00010000": 2},
        {"k": 40.0, "z": -0.0, "big": 1e16, "frac": 0.5},
        {"ctl": '\x00\x01\x1f\x7f\b\f\n\r\t"\\/'},
        {"ls": "\u2028\u2029", "e": "\u00e9\u20ac\U0001f600"},
        {"edge": [LIMIT, -LIMIT, float(LIMIT), 2.0**53]},
        {"t": (1, "x", (True, None))},
        [],
        {},
        "top-level string \u2028",
        7,
        None,
    ],
)
def test_known_corners(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def test_the_fast_path_is_taken_for_plain_values_and_declined_for_the_rest() -> None:
    assert _fast_bytes({"a": [1, "b", None, True, 40.0]}) == b'{"a":[1,"b",null,true,40]}'
    assert _fast_bytes({"x": 0.5}) is None  # fractional float: the reference formats it
    assert _fast_bytes({"\U0001f600": 1}) is None  # astral key: UTF-16 ordering
    assert _fast_bytes({"s": "\ud800"}) is None  # lone surrogate: the reference refuses
    assert _fast_bytes({"n": 2**53}) is None  # out of range: the reference refuses

    class Color(str, enum.Enum):
        RED = "red"

    assert _fast_bytes({"c": Color.RED}) is None  # subclass: the reference decides
    assert canonical_json({"c": Color.RED}) == rfc8785.dumps({"c": Color.RED})


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"n": math.nan}, rfc8785.FloatDomainError),
        ({"n": math.inf}, rfc8785.FloatDomainError),
        ({"n": 2**53}, rfc8785.IntegerDomainError),
        ({"s": "\udc00"}, rfc8785.CanonicalizationError),
        ({1: "x"}, rfc8785.CanonicalizationError),
        ({"o": object()}, rfc8785.CanonicalizationError),
        ({"b": b"raw"}, rfc8785.CanonicalizationError),
    ],
)
def test_errors_are_the_reference_errors(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        rfc8785.dumps(value)
    with pytest.raises(error):
        canonical_json(value)


def test_a_cycle_fails_as_the_reference_does() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        rfc8785.dumps(loop)
    with pytest.raises(RecursionError):
        canonical_json(loop)
