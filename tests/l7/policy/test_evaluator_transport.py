"""The OPA session: plain (not gzipped) answers, and no proxy from the environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from l7.policy.evaluator import OpaEvaluator
from tests.l7.policy.test_evaluator import GOOD


class _FakeOpa(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _FakeOpa.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps(GOOD).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_opa() -> Iterator[str]:
    _FakeOpa.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpa)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_answers_are_asked_for_uncompressed(fake_opa: str) -> None:
    ev = OpaEvaluator(fake_opa)
    try:
        assert ev.evaluate({"action": {}}).policy_version == "abc"
    finally:
        ev.close()
    assert _FakeOpa.seen[-1]["accept-encoding"] == "identity"


def test_a_proxy_in_the_environment_does_not_carry_policy_traffic(
    fake_opa: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that does not exist: if the session honoured it, the query would fail.
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    ev = OpaEvaluator(fake_opa)
    try:
        assert ev.evaluate({"action": {}}).outcome.value == "QUEUE"
    finally:
        ev.close()
    assert len(_FakeOpa.seen) == 1
