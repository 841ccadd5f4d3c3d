"""Bounded reads against a real ledger service process (issue #14, "exports and verifies
without bounds").

Before: an export of 100k events was one ~200 MB message (service RSS 128 MB -> 1.13 GB)
and any token could run Verify, a full pass over the log, as often and as many at once
as it liked. Now the export streams from a keyset cursor and the pack is written and
verified line by line; Verify is an auditor's, one at a time per caller, a few a minute.
The 1M-event run is ``make bench`` (``bench.bounded_export``); here 100k.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from bench.bounded_export import measure_export
from ledger.access import AccessDenied, AllowAll, Reader
from ledger.errors import ReadLimited
from ledger.remote import RemoteLedger
from ledger.service import create_ledger_server
from ledger.store import SqlLedger

MB = 1024 * 1024


def test_a_100k_export_streams_in_bounded_service_memory_and_verifies_offline(
    tmp_path: Path,
) -> None:
    m = measure_export(tmp_path, 100_000)
    assert m.pack_bytes > 150 * MB  # what used to be one message
    assert m.growth < 100 * MB, f"service RSS grew {m.growth / MB:.0f} MB during the export"
    assert (m.verified.events, m.verified.streams) == (100_000, 10_000)
    assert m.verified == m.written
    assert m.verified.streams_from_genesis == m.verified.decision_ids  # whole streams


class _Slow(SqlLedger):
    """A ledger whose verify blocks until released: Verify calls overlap for certain."""

    gate = threading.Event()
    entered = threading.Event()

    def verify(self, progress: object = None) -> object:  # type: ignore[override]
        self.entered.set()
        self.gate.wait(30)
        return super().verify()


class _Tokens:
    def authorize(self, md: dict[str, str], cert: bytes | None) -> Reader:
        token = md.get("authorization", "")
        roles = {"Bearer aud": {"auditor"}, "Bearer aud2": {"auditor"}, "Bearer eng": {"writer"}}
        if token not in roles:
            raise AccessDenied("no such token", authenticated=False)
        return Reader(token.removeprefix("Bearer "), frozenset(roles[token]))


def test_verify_needs_the_auditor_role_and_a_caller_runs_one_at_a_time(tmp_path: Path) -> None:
    led = _Slow(f"sqlite:///{tmp_path / 'l.sqlite'}", checkpoint_every_s=0)
    server, port = create_ledger_server("127.0.0.1:0", led, _Tokens())
    server.start()
    target = f"127.0.0.1:{port}"

    def client(token: str) -> RemoteLedger:
        return RemoteLedger(target, metadata=[("authorization", f"Bearer {token}")])

    try:
        with pytest.raises(AccessDenied, match="Verify needs one of the roles"):
            client("eng").verify()  # the engine's writer token: no full scans
        errors: list[BaseException] = []

        def first() -> None:
            try:
                client("aud").verify()
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=first)
        t.start()
        assert _Slow.entered.wait(30)
        with pytest.raises(ReadLimited, match="at most 1 at a time per caller") as e:
            client("aud").verify()  # the same caller again while its first runs
        assert e.value.retry_after_s > 0
        _Slow.gate.set()
        t.join(30)
        assert errors == []
        assert client("aud2").verify().events == 0  # another auditor is not blocked
    finally:
        _Slow.gate.set()
        server.stop(None)
        led.close()


def test_an_export_resumes_against_the_same_anchor(tmp_path: Path) -> None:
    from bench.bulk import bulk_ledger
    from ledger.checkpoint import Ed25519CheckpointSigner
    from ledger.v1 import ledger_pb2 as pb
    from ledger.v1 import ledger_pb2_grpc as pb_grpc

    signer = Ed25519CheckpointSigner.generate()
    url = bulk_ledger(tmp_path / "l.sqlite", 2_000, signer)
    led = SqlLedger(url, create=False, checkpoint_public_key=signer.public_key_raw)
    server, port = create_ledger_server("127.0.0.1:0", led, AllowAll(roles=("auditor",)))
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.LedgerStub(ch)
            md = [("x-l7-reason", "resume test")]
            full = list(stub.Export(pb.ExportRequest(), metadata=md))
            header = full[0].header
            assert header.anchor_tree_size == 2_000
            events = [e for c in full[1:] for e in c.events.events]
            assert [e.global_seq for e in events] == list(range(1, 2_001))
            assert max(len(c.events.events) for c in full[1:]) <= 500  # pages, not one message
            again = list(
                stub.Export(
                    pb.ExportRequest(anchor_tree_size=2_000, after_global_seq=1_234), metadata=md
                )
            )
            assert again[0].header == header
            rest = [e for c in again[1:] for e in c.events.events]
            assert rest == events[1_234:]
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Export(pb.ExportRequest(anchor_tree_size=1_999), metadata=md))
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None)
        led.close()
