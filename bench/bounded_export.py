"""A large export through a real ledger service process, its RSS read from /proc.

``measure_export(work, events)``: a bulk-made ledger (``bench.bulk``) of ``events``
events, ``python -m ledger.service`` on it (a real subprocess, callers authenticated as
an auditor), the standing state warmed first (the Merkle tree, ~64 MB per million
events, is the service's to keep whatever it serves), then one export streamed through
``RemoteLedger.export_to`` into a file while a sampler reads the service's VmRSS, and the
file verified offline (``verify_export_file``) with the log's public key only.

``make bench`` runs it at 1M events (``python -m bench.bounded_export 1000000``);
``tests/integration/test_bounded_reads.py`` at 100k.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bulk import bulk_ledger
from ledger.checkpoint import Ed25519CheckpointSigner
from ledger.export import ExportReport, verify_export_file
from ledger.remote import RemoteLedger

__all__ = ["ExportMeasurement", "measure_export", "rss_bytes"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ExportMeasurement:
    events: int
    rss_before: int
    rss_peak: int
    pack_bytes: int
    written: ExportReport
    verified: ExportReport

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(target: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ledger service exited: {log.read_text()}")
            try:
                req = health_pb2.HealthCheckRequest(service="l7.ledger.v1.Ledger")
                r = stub.Check(req, timeout=1)  # type: ignore[attr-defined]
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ledger service: {log.read_text()}")
            time.sleep(0.1)


def measure_export(work: Path, events: int) -> ExportMeasurement:
    signer = Ed25519CheckpointSigner.generate()
    url = bulk_ledger(work / "db" / "ledger.sqlite", events, signer)
    target = f"127.0.0.1:{_free_port()}"
    log = work / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.service", "--ledger", url, "--addr", target,
             "--insecure-allow-all", "--insecure-role", "auditor",
             "--checkpoint-every-s", "0"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        _wait_serving(target, proc, log)
        with RemoteLedger(
            target, metadata=[("x-l7-reason", "bounded export benchmark")], long_timeout_s=1800
        ) as client:
            client.inclusion_proof(1, events)  # warm: the service's Merkle tree is built
            before = rss_bytes(proc.pid)
            peak = before
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_bytes(proc.pid))
                    done.wait(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            pack = work / "pack.jsonl"
            try:
                with pack.open("wb") as fp:
                    written = client.export_to(fp)
            finally:
                done.set()
                sampler.join()
            peak = max(peak, rss_bytes(proc.pid))
        verified = verify_export_file(pack, signer.public_key_raw)
        return ExportMeasurement(
            events=events,
            rss_before=before,
            rss_peak=peak,
            pack_bytes=pack.stat().st_size,
            written=written,
            verified=verified,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main(argv: list[str]) -> int:
    import tempfile

    events = int(argv[0]) if argv else 1_000_000
    with tempfile.TemporaryDirectory(prefix="l7-bounded-export-") as tmp:
        t0 = time.monotonic()
        m = measure_export(Path(tmp), events)
        took = time.monotonic() - t0
    mb = 1024 * 1024
    print(
        f"bounded export: {m.events} events, pack {m.pack_bytes / mb:.0f} MB, service RSS "
        f"{m.rss_before / mb:.0f} MB -> peak {m.rss_peak / mb:.0f} MB (growth "
        f"{m.growth / mb:.0f} MB, bound 100 MB: {'met' if m.growth < 100 * mb else 'MISSED'}); "
        f"verified offline: {m.verified.events} events, {m.verified.streams} streams; "
        f"{took:.0f} s in all"
    )
    return 0 if m.growth < 100 * mb and m.verified.events == events else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
