"""Readiness from OPA's /v1/status on a running stack: a bundle changed on disk is refused
by OPA on its next poll and the engine denies with policy_store_degraded (recorded), with
no restart; putting the signed file back makes the same processes serve again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from l7.client import GovernanceClient
from l7.policy.opa_process import BUNDLE_NAME
from l7.policy.readiness import fetch_bundle_status
from l7.stack import Stack, StackConfig
from ledger import open_ledger
from tests.conftest import example, flip_one_byte, rewrite_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Stack]:
    cfg = StackConfig(
        env="local",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        sweep_interval_s=0,
    )
    with Stack(cfg) as s:
        yield s


def _until(cond: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.2)


def test_status_shows_the_pinned_revision_active(running: Stack) -> None:
    assert running.opa is not None and running.bundle is not None
    st = fetch_bundle_status(running.opa.url, BUNDLE_NAME)
    assert st.active_revision == running.bundle.revision
    assert st.last_successful_activation is not None
    assert st.error_code == ""


def test_tampered_bundle_on_disk_denies_until_restored(running: Stack, tmp_path: Path) -> None:
    assert running.opa is not None and running.bundle is not None
    opa_pid = running.opa.pid
    path = running.bundle.path
    original = path.read_bytes()
    with GovernanceClient(running.target) as c:
        assert c.decide(example("read-dev.json"))["outcome"] == "ALLOW"

        path.write_bytes(rewrite_bundle(original, flip_one_byte("l7/risk/risk.rego")))
        _until(
            lambda: fetch_bundle_status(running.opa.url, BUNDLE_NAME).error_code != "",  # type: ignore[union-attr]
            "OPA to refuse the altered bundle",
        )
        st = fetch_bundle_status(running.opa.url, BUNDLE_NAME)
        assert "l7/risk/risk.rego: digest mismatch" in st.error_message
        # OPA itself would still answer with the revision it activated before...
        r = requests.post(f"{running.opa.url}/v1/data/l7/decision/result", json={"input": {}})
        assert r.status_code == 200
        # ...but the engine will not judge with a policy store it cannot trust.
        req = dict(example("read-dev.json"), idempotency_key="after-tamper")
        _until(
            lambda: (
                c.decide(dict(req, idempotency_key=f"t-{time.monotonic_ns()}"))["outcome"] == "DENY"
            ),
            "the engine to notice",
        )
        denied = c.decide(req)
        assert (denied["outcome"], denied["reason_code"]) == ("DENY", "policy_store_degraded")
        assert "digest mismatch" in " ".join(denied["reasons"])

        path.write_bytes(original)  # the signed file is back: same processes resume
        _until(
            lambda: (
                c.decide(dict(req, idempotency_key=f"r-{time.monotonic_ns()}"))["outcome"]
                == "ALLOW"
            ),
            "service to resume",
        )
    assert running.opa.pid == opa_pid  # nothing was restarted
    led = open_ledger(running.config.ledger_url)
    try:
        events = led.get_stream(denied["decision_id"])
    finally:
        led.close()
    assert events, "the refusal is recorded"
    assert any("policy_store_degraded" in str(e.payload) for e in events)


def test_crashed_opa_is_restarted_by_the_stack(tmp_path: Path) -> None:
    cfg = StackConfig(
        env="local",
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        work_dir=tmp_path,
        sweep_interval_s=0,
        opa_restart_s=0.5,
    )
    with Stack(cfg) as s, GovernanceClient(s.target) as c:
        assert s.opa is not None
        first = s.opa.pid
        s.opa.kill()  # SIGKILL, as a crash would
        _until(lambda: s.opa is not None and s.opa.running() and s.opa.pid != first, "restart")
        _until(
            lambda: (
                c.decide(dict(example("read-dev.json"), idempotency_key=f"k{time.time_ns()}"))[
                    "outcome"
                ]
                == "ALLOW"
            ),
            "service to resume on the restarted OPA",
        )
