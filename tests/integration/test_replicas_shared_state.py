"""Two engine replicas on one PostgreSQL ledger see the same security state (issue #12 item 5).

Each replica is a full Stack (its own OPA child, gRPC server, memory and work dir) on the
same throwaway PostgreSQL database, with OpenBao as the identity provider. Before the
change, the overdue-review block, the pending index and the refused-signature counter lived
in one process: replica B let an actor with an overdue review (opened on A) open another
break-glass, listed no decision queued on A, and each replica spent its own bad-signature
budget. Time is one injected clock shared by both; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from l7.crypto import Ed25519Signer
from l7.engine.shared_state import SIGNATURE_REFUSED
from l7.stack import Stack, StackConfig
from tests.conftest import shared_tier_keys
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import (
    PEOPLE,
    Clock,
    World,
    _setup_people,
    _verifier,
    delete,
    deploy,
)
from tests.integration.test_breakglass import open_bg, refused_open

pytestmark = pytest.mark.integration


@dataclass
class Pair:
    a: World
    b: World
    clock: Clock


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


def _stack(bao: OpenBaoDev, pg_url: str, work_dir: Path, clock: Clock) -> Stack:
    # one deployment: both replicas sign with the engine key pinned for it (docs/0012)
    keys = shared_tier_keys(work_dir.parent / "tier-keys")
    return Stack(
        StackConfig(
            ledger_url=pg_url,
            work_dir=work_dir,
            clock=clock,
            verifier=_verifier(bao),
            sweep_interval_s=0,
            **keys,  # type: ignore[arg-type]
        )
    )


@pytest.fixture
def pair(people: OpenBaoDev, pg_url: str, tmp_path: Path) -> Iterator[Pair]:
    clock = Clock()
    with (
        _stack(people, pg_url, tmp_path / "a", clock) as sa,
        _stack(people, pg_url, tmp_path / "b", clock) as sb,
    ):
        a, b = World(people, sa, clock), World(people, sb, clock)
        for name in PEOPLE:
            a.signers[name] = Ed25519Signer.generate(key_id=f"{name}-ed25519")
        b.signers = a.signers
        with a.client("sec1") as sec:  # registered through A only: keys are ledger streams
            for name, s in a.signers.items():
                assert isinstance(s, Ed25519Signer)
                sec.register_key(name, s.key_id, "ed25519", s.public_key_raw)
        yield Pair(a, b, clock)


def _pending(w: World) -> list[str]:
    with w.client("mgr1") as c:
        return sorted(p["decision_id"] for p in c.pending())


def _overdue(w: World) -> list[tuple[str, bool]]:
    with w.client("sec2") as c:
        return [(p["decision_id"], p["overdue"]) for p in c.list_breakglass()]


def test_an_overdue_review_blocks_break_glass_on_every_replica(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert _overdue(a) == _overdue(b) == []  # both replicas have answered already
    info, _ = open_bg(a)  # sec1 opens on A
    pair.clock.advance(86400 + 1)  # the review deadline passes
    assert _overdue(a) == _overdue(b) == [(info["decision_id"], True)]
    # B never saw the break-glass being opened, yet refuses sec1's next one.
    for w in (b, a):
        assert "review is overdue" in refused_open(w).message
    # The overdue alert is raised once, whichever replica sweeps first.
    assert b.stack.breakglass is not None and a.stack.breakglass is not None
    assert b.stack.breakglass.sweep() == 1
    assert a.stack.breakglass.sweep() == 0
    open_bg(b, "sec2")  # another L4 is not blocked
    # Reviewed on B; A lets sec1 open again.
    with b.client("sec2") as c:
        c.review_breakglass(info["decision_id"], "late but justified: INC-7 postmortem")
    assert info["decision_id"] not in {d for d, _ in _overdue(a)}
    open_bg(a)


def test_the_pending_list_is_the_same_on_every_replica(pair: Pair) -> None:
    a, b = pair.a, pair.b
    assert _pending(a) == _pending(b) == []
    d1 = a.decide(delete())  # queued on A
    d2 = b.decide(deploy())  # queued on B
    assert d1["outcome"] == d2["outcome"] == "QUEUE"
    both = sorted([d1["decision_id"], d2["decision_id"]])
    assert _pending(a) == _pending(b) == both
    a.approve("mgr1", d1)
    assert b.approve("mgr3", d1)["status"] == "authorized"  # the quorum completes on B
    assert _pending(a) == _pending(b) == [d2["decision_id"]]
    pair.clock.advance(43200 + 1)  # d2 (high band) reaches the end of its life
    assert a.stack.authority is not None and b.stack.authority is not None
    assert a.stack.authority.sweep() == 1  # A expires what B queued
    assert b.stack.authority.sweep() == 0  # and B learns it from the ledger
    assert _pending(a) == _pending(b) == []


def test_the_sweeper_reads_only_what_changed_since_its_cursor(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair.a, pair.b
    assert a.stack.authority is not None and b.stack.authority is not None
    sweeper = b.stack.authority
    reads: list[str] = []
    real_get = sweeper.engine.get_decision

    def counting(decision_id: str) -> Any:
        reads.append(decision_id)
        return real_get(decision_id)

    monkeypatch.setattr(sweeper.engine, "get_decision", counting)
    ds = [a.decide(delete()) for _ in range(3)]  # queued on A: B has never read them

    def sweep() -> tuple[int, int]:
        reads.clear()
        return sweeper.sweep(), len(set(reads))  # streams read (escalating re-reads one)

    assert sweep() == (0, 3)  # unknown deadlines: each stream once
    cursor = sweeper.index.cursor
    assert sweep() == (0, 0)  # nothing changed, nothing due: no stream read
    assert sweeper.index.cursor == cursor
    with a.client("alice") as c:
        c.cancel(ds[0]["decision_id"], "not needed")
    assert sweep() == (0, 0)  # cancelled: dropped from the index without a read
    assert sweeper.index.cursor > cursor
    pair.clock.advance(7200 + 1)  # the approval window lapses for the other two
    assert sweep() == (2, 2)  # escalated by B
    assert a.stack.authority.sweep() == 0  # A re-reads the two B changed, nothing more due
    assert sweep() == (0, 2)  # B's own escalations came back through the cursor: read once
    assert sweep() == (0, 0)


def test_the_bad_signature_budget_is_shared_by_the_replicas(pair: Pair) -> None:
    a, b = pair.a, pair.b
    d = a.decide(delete())
    forger = Ed25519Signer.generate(key_id="mgr3-ed25519")  # mgr3's key id, another key
    # Policy: 3 refused signatures in 600 s is the budget. Two on A, one on B.
    reasons = [w.refused("mgr3", d, signer=forger).reason for w in (a, b, a)]
    assert reasons == ["signature_invalid"] * 3
    kinds = [p["kind"] for p in a.payloads(d, "anomaly.detected")]
    assert kinds.count(SIGNATURE_REFUSED) == 3
    assert kinds.count("repeated_bad_signatures") == 1
    # mgr3's genuine approval is now blocked on both replicas, not only where it counted.
    assert b.refused("mgr3", d).reason == "anomaly_blocked"
    assert a.refused("mgr3", d).reason == "anomaly_blocked"
    # Another approver's budget is untouched.
    assert b.approve("mgr1", d)["status"] == "pending_authority"
