"""The ledger service as its own process (``python -m ledger.service``), used by two
``RemoteLedger`` clients at once; killed and restarted on the same SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger import EventType, LedgerUnavailable, NewEvent, open_ledger
from ledger.remote import RemoteLedger

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LedgerProcess:
    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.url = f"sqlite:///{db}"
        self.target = f"127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ledger.service",
                    "--ledger",
                    self.url,
                    "--addr",
                    self.target,
                    "--insecure-allow-all",
                ],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 30
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    r = stub.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(service="l7.ledger.v1.Ledger"), timeout=1
                    )
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"no ledger service: {self.log.read_text()}"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LedgerProcess]:
    p = LedgerProcess(tmp_path / "ledger.sqlite", free_port(), tmp_path / "service.log")
    p.start()
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.kill()


def ev(decision_id: str, i: int) -> NewEvent:
    return NewEvent(
        decision_id, EventType.POLICY_GATE, "engine", "rev-1", {"i": i}, f"k-{decision_id}-{i}"
    )


def eventually(fn: Callable[[], T], seconds: float = 15) -> T:
    """``fn()`` once the restarted service is reachable (the channel reconnects by itself)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except LedgerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_two_clients_kill_and_restart(service: LedgerProcess) -> None:
    a = RemoteLedger(service.target, timeout_s=10)
    b = RemoteLedger(service.target, timeout_s=10)
    errors: list[BaseException] = []

    def writer(client: RemoteLedger, name: str) -> None:
        try:
            for i in range(40):
                client.append([ev(f"{name}-{i % 4}", i), ev("shared", 1000 * ord(name[0]) + i)])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(c, n)) for c, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with open_ledger(service.url, create=False) as led:  # Verify over gRPC is an auditor's
        report = led.verify()
    assert (report.events, report.streams, report.last_global_seq) == (160, 9, 160)
    shared = b.get_stream("shared")
    assert [e.sequence for e in shared] == list(range(1, 81))

    service.kill()
    with pytest.raises(
        LedgerUnavailable, match=f"ledger service at {service.target} is unreachable"
    ):
        a.append([ev("a-0", 999)])
    with pytest.raises(LedgerUnavailable, match="unreachable"):
        b.count()

    service.start()  # the same file, the same address
    (conf,) = eventually(lambda: a.append([ev("shared", 5000)]))
    assert (conf.sequence, conf.global_seq) == (81, 161)
    (conf,) = eventually(lambda: b.append([ev("b-0", 5001)]))
    assert conf.global_seq == 162
    with open_ledger(service.url, create=False) as led:
        report = led.verify()
    assert (report.events, report.last_global_seq) == (162, 162)
    assert a.count() == 162

    assert service.terminate() == 0  # SIGTERM: graceful stop
    a.close()
    b.close()


def test_refuses_to_start_without_auth_flag(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ledger.service", "--ledger", f"sqlite:///{tmp_path / 'l.sqlite'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "no authentication: pass --insecure-allow-all" in r.stderr
