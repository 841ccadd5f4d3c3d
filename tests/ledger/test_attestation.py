"""Tier attestations (ledger.attestation): what a signature covers, and what a database
writer who cannot sign can and cannot make a reader honour."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import GENESIS_HASH, EventType, InvalidEvent, NewEvent, SqlLedger, StaleHead
from ledger.attestation import (
    Statement,
    Tier,
    TierKeys,
    attestation_event,
    content_digest,
    require_authority,
)
from ledger.errors import IntegrityViolation
from tests.insider import forge_event


class _Key:
    def __init__(self, tier: Tier, kid: str) -> None:
        self.tier, self.kid = tier, kid
        self._k = Ed25519PrivateKey.generate()
        self.raw = self._k.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, data: bytes) -> str:
        return "ed25519:" + base64.urlsafe_b64encode(self._k.sign(data)).decode().rstrip("=")


ENGINE = _Key(Tier.ENGINE, "engine-1")
GATEWAY = _Key(Tier.GATEWAY, "gateway-1")
KEYS = TierKeys({k.kid: (k.tier, k.raw) for k in (ENGINE, GATEWAY)})


def _signed(
    led: SqlLedger, events: Sequence[NewEvent], key: _Key = ENGINE, *, tier: Tier | None = None
) -> None:
    """Append ``events`` (one stream) with an attestation, as a tier would."""
    stream = led.get_stream(events[0].decision_id)
    head = (stream[-1].sequence, stream[-1].hash) if stream else (0, GENESIS_HASH)
    statement = Statement(
        events[0].decision_id,
        tier or key.tier,
        key.kid,
        head[0],
        head[1],
        tuple(
            content_digest(
                EventType(e.event_type).value, e.actor, e.policy_version, e.payload, e.unique_key
            )
            for e in events
        ),
    )
    led.append([*events, attestation_event(statement, key.sign(statement.signed_bytes()))])


def _authorized(d: str) -> NewEvent:
    return NewEvent(
        d,
        EventType.ENFORCEMENT_RESULT,
        "l7-engine",
        "rev",
        {"status": "authorized", "outcome": "ALLOW", "reason_code": "policy", "reasons": []},
    )


def _created(d: str) -> NewEvent:
    return NewEvent(d, EventType.DECISION_CREATED, "l7-engine", "rev", {"request": {}})


@pytest.fixture
def led(tmp_path: Path) -> SqlLedger:
    ledger = SqlLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield ledger  # type: ignore[misc]
    ledger.close()


def test_a_signed_batch_covers_each_of_its_events_for_its_tier(led: SqlLedger) -> None:
    _signed(led, [_created("d1"), _authorized("d1")])
    stream = led.get_stream("d1")
    assert [e.event_type for e in stream] == [
        "decision.created",
        "enforcement.result",
        "batch.attested",
    ]
    checker = require_authority(stream, KEYS)
    assert (checker.attestations, checker.covered) == (1, 2)


def test_a_forged_authority_event_with_correct_hashes_is_refused(led: SqlLedger) -> None:
    _signed(led, [_created("d1")])
    forge_event(
        led._url,
        "d1",
        "enforcement.result",
        {"status": "authorized", "outcome": "ALLOW", "reason_code": "policy", "reasons": []},
    )
    led.verify()  # the hash chain and global sequence are perfect: hashes prove order only
    with pytest.raises(IntegrityViolation, match="authority_unsigned") as e:
        require_authority(led.get_stream("d1"), KEYS)
    assert (e.value.decision_id, e.value.sequence) == ("d1", 3)
    assert "enforcement.result signed by engine" in e.value.expected


def test_a_forged_attestation_with_an_unpinned_key_is_refused(led: SqlLedger) -> None:
    rogue = _Key(Tier.ENGINE, "engine-1")  # claims the pinned key id, holds another key
    _signed(led, [_created("d1"), _authorized("d1")], rogue)
    with pytest.raises(IntegrityViolation, match="attestation_signature"):
        require_authority(led.get_stream("d1"), KEYS)


def test_a_tier_cannot_sign_for_another(led: SqlLedger) -> None:
    # the gateway's key, claiming to be the engine
    _signed(led, [_created("d1")], GATEWAY, tier=Tier.ENGINE)
    with pytest.raises(IntegrityViolation, match="pinned for tier gateway"):
        require_authority(led.get_stream("d1"), KEYS)
    # the gateway signing, as itself, an event type only the engine may write
    _signed(led, [_created("d2")])
    _signed(led, [_authorized("d2")], GATEWAY)
    with pytest.raises(IntegrityViolation, match="authority_unsigned") as e:
        require_authority(led.get_stream("d2"), KEYS)
    assert e.value.actual == "signed by gateway"


def test_content_changed_after_signing_is_refused(led: SqlLedger) -> None:
    _signed(led, [_created("d1"), _authorized("d1")])
    stream = led.get_stream("d1")
    from dataclasses import replace

    edited = [stream[0], replace(stream[1], payload={**stream[1].payload, "outcome": "X"})]
    with pytest.raises(IntegrityViolation, match="attestation_mismatch"):
        require_authority([*edited, stream[2]], KEYS)


def test_a_signed_event_moved_to_another_position_is_refused(led: SqlLedger) -> None:
    """prev_hash pins the batch's place: a copy of a signed batch appended later (an old
    authorization replayed after a cancel) does not verify where it now stands."""
    _signed(led, [_created("d1"), _authorized("d1")])
    old = led.get_stream("d1")
    _signed(led, [NewEvent("d1", EventType.DECISION_CANCELLED, "x", "rev", {"status": "c"})])
    for e in (old[1], old[2]):  # re-insert the authorization and its attestation
        forge_event(
            led._url, "d1", e.event_type, dict(e.payload), actor=e.actor,
            policy_version=e.policy_version,
        )  # fmt: skip
    with pytest.raises(IntegrityViolation, match="attestation_(mismatch|overlap)"):
        require_authority(led.get_stream("d1"), KEYS)


def test_the_ledger_places_a_batch_only_where_its_attestation_says(led: SqlLedger) -> None:
    _signed(led, [_created("d1")])
    statement = Statement(
        "d1",
        Tier.ENGINE,
        ENGINE.kid,
        0,  # signed for a stream that was empty: it moved since
        GENESIS_HASH,
        (content_digest("enforcement.result", "l7-engine", "rev", {"status": "x"}, None),),
    )
    ev = NewEvent("d1", EventType.ENFORCEMENT_RESULT, "l7-engine", "rev", {"status": "x"})
    with pytest.raises(StaleHead, match="sign again"):
        led.append([ev, attestation_event(statement, ENGINE.sign(statement.signed_bytes()))])
    assert len(led.get_stream("d1")) == 2  # nothing of the batch was written
    with pytest.raises(InvalidEvent, match="covers 1 events, the batch has 2"):
        head = led.get_stream("d1")[-1]
        s2 = Statement("d1", Tier.ENGINE, ENGINE.kid, head.sequence, head.hash, statement.events)
        led.append([ev, ev, attestation_event(s2, ENGINE.sign(s2.signed_bytes()))])


def test_the_restriction_clear_is_authority_and_entering_is_not(led: SqlLedger) -> None:
    for kind in ("restriction_entered", "restriction_cleared"):
        forge_event(led._url, "restriction/ledger", "anomaly.detected", {"kind": kind})
    with pytest.raises(IntegrityViolation, match="authority_unsigned") as e:
        require_authority(led.get_stream("restriction/ledger"), KEYS)
    assert e.value.sequence == 2


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_single_byte_change_to_a_signature_fails(data: st.DataObject) -> None:
    statement = Statement("d", Tier.ENGINE, ENGINE.kid, 0, GENESIS_HASH, ("a" * 64,))
    sig = ENGINE.sign(statement.signed_bytes())
    assert KEYS.verify(statement, sig) is Tier.ENGINE
    i = data.draw(st.integers(0, len(sig) - 1))
    ch = data.draw(st.sampled_from("ABCabc012_-:=+/"))
    if ch == sig[i]:
        return
    with pytest.raises(ValueError):
        KEYS.verify(statement, sig[:i] + ch + sig[i + 1 :])
