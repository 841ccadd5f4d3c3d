"""Issue #13 item 7: rate-limit keys the caller cannot choose.

Against the real stack (OPA, SQLite ledger, gRPC): without identity the key is the peer
address, so rotating ``request_source``, ``session`` or ``actor.id`` no longer lifts a
limit; with identity (OpenBao as the OIDC issuer) it is the token subject.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from l7.client import GovernanceClient, RemoteError
from l7.engine.ratelimit import RateLimiter
from l7.stack import Stack
from tests.conftest import request
from tests.integration.openbao import OpenBaoDev
from tests.integration.test_authority import World, _setup_people, _world

pytestmark = pytest.mark.integration

BURST = 3


def limited(bucket: str) -> RateLimiter:
    return RateLimiter(lambda: {bucket: {"rate_per_s": 0.001, "burst": BURST}})


def rotated(i: int, actor: str = "agent-1", **kw: Any) -> dict[str, Any]:
    """A request whose caller-chosen fields are all new."""
    req = request(actor=actor, key=f"k-{actor}-{i}", **kw)
    req["context"]["request_source"] = f"service-{i}"
    req["context"]["session"] = f"session-{i}"
    return req


@pytest.mark.parametrize("bucket", ["decide_per_caller", "decide_per_actor"])
def test_without_identity_rotating_source_session_and_actor_does_not_lift_the_limit(
    stack: Stack, client: GovernanceClient, bucket: str
) -> None:
    assert stack.engine is not None and stack.ledger is not None
    stack.engine.rate_limiter = limited(bucket)
    for i in range(BURST):
        assert client.decide(rotated(i, actor=f"actor-{i}"))["outcome"] == "ALLOW"
    before = stack.ledger.count()
    for i in range(BURST, BURST + 4):
        with pytest.raises(RemoteError) as ei:
            client.decide(rotated(i, actor=f"actor-{i}"))
        assert ei.value.reason == "rate_limited"
        assert bucket in ei.value.message and "peer:ipv4:127.0.0.1" in ei.value.message
    assert stack.ledger.count() == before  # nothing judged or recorded


@pytest.fixture(scope="module")
def people(openbao: OpenBaoDev) -> OpenBaoDev:
    _setup_people(openbao)
    return openbao


@pytest.fixture
def world(people: OpenBaoDev, tmp_path: Path) -> Iterator[World]:
    yield from _world(people, tmp_path)


def test_with_identity_the_key_is_the_token_subject(world: World) -> None:
    engine = world.stack.engine
    assert engine is not None
    engine.rate_limiter = limited("decide_per_caller")
    for i in range(BURST):
        assert world.decide(rotated(i, actor="alice"))["outcome"] == "ALLOW"
    with pytest.raises(RemoteError) as ei:
        world.decide(rotated(BURST, actor="alice"))
    assert ei.value.reason == "rate_limited" and "sub:alice" in ei.value.message
    # Another subject from the same address has its own bucket.
    other = rotated(0, actor="mgr1", level=3)
    other["context"]["actor"]["role"] = "manager"
    assert world.decide(other)["outcome"] == "ALLOW"
