"""JwksUrl against a tiny loopback HTTP server: caching, rotation refetch, throttling,
degraded issuer."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from l7.errors import IdentityDegraded, Unauthenticated
from l7.identity import JwksUrl
from l7.policy.opa_process import free_port
from tests.l7.identity.forge import jwks, new_key


class _Issuer:
    """Serves ``body`` with ``status`` at /keys and counts requests."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = b"{}"
        self.hits = 0
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits += 1
                self.send_response(issuer.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(issuer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keys"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, doc: Any) -> None:
        self.body = json.dumps(doc).encode()


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    iss = _Issuer()
    yield iss
    iss.server.shutdown()
    iss.server.server_close()


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_caches_and_refetches_after_ttl(issuer: _Issuer) -> None:
    k1 = new_key("EdDSA", kid="k1")
    issuer.serve(jwks(k1))
    clock = _Clock()
    src = JwksUrl(issuer.url, cache_ttl_s=300, clock=clock)
    assert src.key("k1").key_id == "k1"
    assert src.key("k1").key_id == "k1"
    assert (issuer.hits, src.fetches) == (1, 1)
    clock.t += 300
    src.key("k1")
    assert issuer.hits == 2


def test_unknown_kid_refetches_once_then_throttles(issuer: _Issuer) -> None:
    k1, k2 = new_key("EdDSA", kid="k1"), new_key("ES256", kid="k2")
    issuer.serve(jwks(k1))
    clock = _Clock()
    src = JwksUrl(issuer.url, min_refetch_interval_s=5, clock=clock)
    src.key("k1")
    clock.t += 5
    issuer.serve(jwks(k1, k2))  # the issuer rotated
    assert src.key("k2").algorithm_name == "ES256"
    assert issuer.hits == 2
    with pytest.raises(Unauthenticated, match=r"key id 'random'.*does not contain"):
        src.key("random")  # within 5 s of the last fetch: no request
    assert issuer.hits == 2
    clock.t += 5
    with pytest.raises(Unauthenticated):
        src.key("random")
    assert issuer.hits == 3


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (500, b"{}", r"answered HTTP 500, expected 200"),
        (200, b"<html>", r"is malformed"),
        (200, b'{"keys": "x"}', r"is malformed: expected a 'keys' list"),
        (200, b'{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}', r"no usable signing key"),
    ],
)
def test_bad_answers_degrade(issuer: _Issuer, status: int, body: bytes, match: str) -> None:
    issuer.status, issuer.body = status, body
    with pytest.raises(IdentityDegraded, match=match) as exc:
        JwksUrl(issuer.url).key("k1")
    assert "re-authenticate once the issuer is reachable again" in str(exc.value)
    assert exc.value.reason == "identity_degraded"


def test_unreachable_degrades_and_stale_cache_is_not_served(issuer: _Issuer) -> None:
    with pytest.raises(IdentityDegraded, match=r"cannot fetch the issuer's keys.*ConnectionError"):
        JwksUrl(f"http://127.0.0.1:{free_port()}/keys", timeout_s=0.5).key("k1")
    issuer.serve(jwks(new_key("EdDSA", kid="k1")))
    clock = _Clock()
    src = JwksUrl(issuer.url, cache_ttl_s=10, clock=clock)
    src.key("k1")
    issuer.status = 503
    clock.t += 10
    with pytest.raises(IdentityDegraded, match=r"HTTP 503"):
        src.key("k1")
    issuer.status = 200  # back: the next lookup recovers
    assert src.key("k1").key_id == "k1"


def test_concurrent_lookups_share_one_fetch(issuer: _Issuer) -> None:
    issuer.serve(jwks(new_key("EdDSA", kid="k1")))
    src = JwksUrl(issuer.url)
    errors: list[BaseException] = []

    def look() -> None:
        try:
            for _ in range(20):
                src.key("k1")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=look) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert issuer.hits == 1
