"""Issue #14 item 3: a break-glass read of the ledger service is a break-glass the ledger
can prove. Real OpenBao identities (OIDC tokens verified by the service's authorizer), a
real engine opening real break-glass through the Governance API, and the ledger service
in process over gRPC on the same SQLite file, with the deployment's pinned tier keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from l7.identity.ledger_reader import OidcReadAuthorizer
from ledger import EventType, NewEvent, SqlLedger
from ledger.access import AccessDenied, BreakGlassRefused
from ledger.checkpoint import Ed25519CheckpointSigner
from ledger.remote import RemoteLedger
from ledger.service import create_ledger_server
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _verifier, _world
from tests.integration.test_breakglass import TARGET, open_bg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bg_people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


class Service:
    """The ledger service over the stack's own ledger file, judging windows by its clock."""

    def __init__(self, world: World, db: Path) -> None:
        assert world.stack.trust is not None
        self.world = world
        self.ledger = SqlLedger(
            f"sqlite:///{db}", checkpoint_signer=Ed25519CheckpointSigner.generate()
        )
        self.server, port = create_ledger_server(
            "127.0.0.1:0",
            self.ledger,
            OidcReadAuthorizer(_verifier(world.bao)),
            tier_keys=world.stack.trust.keys,
            clock=lambda: float(world.clock.unix()),
        )
        self.server.start()
        self.target = f"127.0.0.1:{port}"
        self._clients: list[RemoteLedger] = []

    def reader(self, who: str, breakglass: str | None) -> RemoteLedger:
        md = [
            ("authorization", f"Bearer {self.world.bao.token_for(who)}"),
            ("x-l7-reason", "INC-7: payments API down"),
        ]
        if breakglass is not None:
            md.append(("x-l7-breakglass", breakglass))
        c = RemoteLedger(self.target, metadata=md, timeout_s=10)
        self._clients.append(c)
        return c

    def breakglass_reads(self) -> list[dict[str, Any]]:
        return [
            dict(e.payload)
            for e in self.ledger.iter_events()
            if e.event_type == EventType.LEDGER_ACCESSED_BREAKGLASS.value
        ]

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.server.stop(grace=None).wait(5)
        self.ledger.close()


@pytest.fixture
def world(bg_people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(bg_people, tmp_path)


@pytest.fixture
def svc(world: World, tmp_path: Path) -> Iterator[Service]:
    s = Service(world, tmp_path / "ledger.sqlite")
    yield s
    s.close()


def decided(world: World, target: tuple[str, str] = TARGET) -> str:
    d = world.decide(request("deploy.release", env="production", target=target, actor="alice"))
    return str(d["decision_id"])


def refused(read: Any) -> BreakGlassRefused:
    with pytest.raises(BreakGlassRefused) as ei:
        read()
    return ei.value


def test_an_open_breakglass_of_the_caller_reads_its_scope_and_is_recorded(
    world: World, svc: Service
) -> None:
    info, _ = open_bg(world)
    in_scope = decided(world)
    sec1 = svc.reader("sec1", info["decision_id"])
    stream = sec1.get_stream(in_scope)
    assert stream and stream[0].payload["request"]["action"]["class"] == "deploy.release"
    assert [e.event_type for e in sec1.query(decision_id=in_scope)] == [
        e.event_type for e in stream
    ]
    reads = svc.breakglass_reads()
    assert [(r["rpc"], r["breakglass_id"], r["subject"]) for r in reads] == [
        ("GetStream", info["decision_id"], "sec1"),
        ("Query", info["decision_id"], "sec1"),
    ]


def test_the_header_naming_no_breakglass_reads_nothing(world: World, svc: Service) -> None:
    """The attack of issue #14: any L4 sent the header with any value, even a decision
    that does not exist, and got raw reads."""
    d = decided(world)
    for claim in ("yes", d, "00000000-0000-4000-8000-000000000000"):
        err = refused(lambda c=claim: svc.reader("sec1", c).get_stream(d))  # type: ignore[misc]
        assert err.why == "breakglass_unknown"
    assert svc.breakglass_reads() == []


def test_another_l4s_breakglass_reads_nothing(world: World, svc: Service) -> None:
    info, _ = open_bg(world)
    d = decided(world)
    err = refused(lambda: svc.reader("sec2", info["decision_id"]).get_stream(d))
    assert err.why == "breakglass_not_caller" and err.breakglass_id == info["decision_id"]
    assert svc.breakglass_reads() == []


def test_a_decision_outside_the_scope_or_an_unbounded_query_reads_nothing(
    world: World, svc: Service
) -> None:
    info, _ = open_bg(world)
    elsewhere = decided(world, ("service", "ledger-api"))
    sec1 = svc.reader("sec1", info["decision_id"])
    assert refused(lambda: sec1.get_stream(elsewhere)).why == "breakglass_out_of_scope"
    assert refused(sec1.query).why == "breakglass_out_of_scope"
    assert refused(lambda: sec1.query(actor="alice")).why == "breakglass_out_of_scope"
    assert svc.breakglass_reads() == []


def test_an_expired_or_reviewed_breakglass_reads_nothing(world: World, svc: Service) -> None:
    info, _ = open_bg(world)
    d = decided(world)
    sec1 = svc.reader("sec1", info["decision_id"])
    sec1.get_stream(d)  # inside the window
    world.clock.advance(601)
    assert refused(lambda: sec1.get_stream(d)).why == "breakglass_expired"
    info2, _ = open_bg(world, incident_id="INC-8")
    with world.client("sec2") as c:
        c.review_breakglass(info2["decision_id"], "justified: INC-8 postmortem done")
    closed = svc.reader("sec1", info2["decision_id"])
    assert refused(lambda: closed.get_stream(d)).why == "breakglass_closed"
    assert len(svc.breakglass_reads()) == 1


def test_a_breakglass_written_without_the_engine_signature_reads_nothing(
    world: World, svc: Service
) -> None:
    """A database writer appends a well-formed override.breakglass in sec1's name: it is
    not attested by the engine tier, so the ledger honours nothing in it."""
    d = decided(world)
    now = world.clock.unix()
    svc.ledger.append(
        [
            NewEvent(
                "forged-bg", EventType.DECISION_CREATED, "sec1", "rev",
                {"request": {"context": {"environment": "production"}}},
            ),
            NewEvent(
                "forged-bg", EventType.OVERRIDE_BREAKGLASS, "sec1", "rev",
                {
                    "opened_by": "sec1",
                    "expires_at": now + 600,
                    "scope": {"action_class": "deploy.release",
                              "target": {"type": TARGET[0], "id": TARGET[1]}},
                },
            ),
        ]
    )  # fmt: skip
    err = refused(lambda: svc.reader("sec1", "forged-bg").get_stream(d))
    assert err.why == "breakglass_unsigned"
    assert svc.breakglass_reads() == []


def test_below_l4_the_header_is_refused_not_ignored(world: World, svc: Service) -> None:
    info, _ = open_bg(world)
    with pytest.raises(AccessDenied, match="break-glass reads need L4"):
        svc.reader("mgr1", info["decision_id"]).get_stream(decided(world))


def test_a_breakglass_export_covers_only_its_scope(world: World, svc: Service) -> None:
    """Export is for auditors and security; under break-glass it, too, names only decisions
    the break-glass covers (none named is everything, which is refused)."""
    info, _ = open_bg(world)
    in_scope, elsewhere = decided(world), decided(world, ("service", "ledger-api"))
    sec1 = svc.reader("sec1", info["decision_id"])
    assert refused(lambda: sec1.export(decision_ids=[in_scope, elsewhere])).why == (
        "breakglass_out_of_scope"
    )
    assert refused(sec1.export).why == "breakglass_out_of_scope"
    doc = sec1.export(decision_ids=[in_scope])
    assert doc
    (read,) = svc.breakglass_reads()
    assert (read["rpc"], read["breakglass_id"]) == ("Export", info["decision_id"])
