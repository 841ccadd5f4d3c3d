"""Issue #14 item 5: an envelope opens only in the decision and field it was sealed for.
Real OpenBao transit (derived key), real OPA, the engine over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from l7.client import RemoteError
from l7.secrets.envelope import Envelope
from l7.secrets.refs import BaoSecretStore
from l7.v1 import governance_pb2 as pb
from ledger import EventType, NewEvent
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _world
from tests.integration.test_secrets_e2e import NOTE, as_alice
from tests.integration.test_secrets_e2e import sbao as _sbao

pytestmark = pytest.mark.integration

sbao = _sbao


@pytest.fixture
def world(sbao: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(
        sbao,
        tmp_path,
        secret_store=BaoSecretStore(sbao.client),
        envelope=Envelope(sbao.client, "l7-envelope"),
    )


def open_envelope(world: World, decision_id: str, field: str) -> str:
    with world.client("aud1") as c:
        r = c._call("OpenEnvelope", pb.OpenEnvelopeRequest(decision_id=decision_id, field=field))
    return str(r.plaintext)


def decrypts(world: World, decision_id: str) -> list[object]:
    assert world.stack.ledger is not None
    return [
        e.payload
        for e in world.stack.ledger.get_stream(decision_id)
        if e.event_type == "ledger.accessed"
    ]


def test_a_value_that_looks_sealed_is_refused_not_stored(world: World) -> None:
    """The attack: copy decision A's ciphertext into a new request. It used to be stored as
    is (it "was already sealed") and then opened in B, recorded on B."""
    a = as_alice(world, {"customer_note": NOTE})
    copied = a["action"]["payload"]["customer_note"]
    for forged in (copied, "vault:v1:AAAA", " vault:v2:bm90IHNlYWxlZA=="):
        with pytest.raises(RemoteError) as ei:
            as_alice(world, {"customer_note": forged})
        assert (ei.value.code, ei.value.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "envelope_forged",
        )
        assert "action.payload.customer_note" in ei.value.message
    assert open_envelope(world, a["decision_id"], "customer_note") == NOTE  # A still opens


def test_ciphertext_copied_into_another_decision_or_field_does_not_open(world: World) -> None:
    """Someone who can write the ledger's rows copies A's ciphertext into decision B (and
    into another envelope field of A's class): the seal context names decision and field,
    so OpenBao refuses, and no decrypt is recorded on the wrong decision."""
    a = as_alice(world, {"customer_note": NOTE})
    sealed = a["action"]["payload"]["customer_note"]
    assert world.stack.raw_ledger is not None and world.stack.ledger is not None
    (created_a,) = [
        e for e in world.stack.ledger.get_stream(a["decision_id"])
        if e.event_type == "decision.created"
    ]  # fmt: skip
    for stream, payload in (
        ("copied-b", {"customer_note": sealed}),
        ("copied-c", {"sensitive_note": sealed}),
    ):
        req = dict(created_a.payload["request"])
        req["action"] = {**req["action"], "payload": payload}
        world.stack.raw_ledger.append(
            [
                NewEvent(
                    stream, EventType.DECISION_CREATED, "alice", created_a.policy_version,
                    {**created_a.payload, "request": req},
                )
            ]
        )  # fmt: skip
        field = next(iter(payload))
        with pytest.raises(RemoteError) as ei:
            open_envelope(world, stream, field)
        assert ei.value.reason == "envelope_context_mismatch", ei.value.message
        assert decrypts(world, stream) == []
    assert open_envelope(world, a["decision_id"], "customer_note") == NOTE
    assert len(decrypts(world, a["decision_id"])) == 1
