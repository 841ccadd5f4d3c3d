"""The ledger service in-process on 127.0.0.1:0 over a real SQLite ledger, used through
``RemoteLedger`` exactly as the engine and the gateway would use ``SqlLedger``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ledger import (
    DuplicateKey,
    EventType,
    IntegrityViolation,
    InvalidEvent,
    LedgerUnavailable,
    NewEvent,
    SqlLedger,
    StoredEvent,
)
from ledger.access import (
    AccessDenied,
    AllowAll,
    Reader,
    ReadMode,
    RequestInvalid,
    StaticTokens,
    access_event,
    access_for,
)
from ledger.checkpoint import Ed25519CheckpointSigner
from ledger.export import verify_export
from ledger.merkle import ProofInvalid, event_leaf_hash, verify_consistency, verify_inclusion
from ledger.remote import REDACTED, RemoteLedger
from ledger.service import create_ledger_server
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

SIGNER = Ed25519CheckpointSigner.generate()


READERS = {
    "t-engine": Reader("engine", frozenset({"writer"})),
    "t-dash": Reader("dashboard", frozenset({"viewer"})),
    "t-alice": Reader("alice", frozenset({"auditor"})),
    "t-sec": Reader("sam", frozenset({"security"})),
    "t-bob": Reader("bob", frozenset({"raw-reader"})),
    "t-carol": Reader("carol", frozenset(), breakglass="bg-carol"),
}


class Service:
    def __init__(self, tmp: Path, authorizer: Any = None) -> None:
        self.url = f"sqlite:///{tmp / 'ledger.sqlite'}"
        self.ledger = SqlLedger(self.url, checkpoint_signer=SIGNER)
        self.server, self.port = create_ledger_server(
            "127.0.0.1:0", self.ledger, authorizer or StaticTokens(READERS)
        )
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"
        self._clients: list[RemoteLedger] = []

    def client(self, token: str | None = None, reason: str | None = None) -> RemoteLedger:
        md = []
        if token is not None:
            md.append(("authorization", f"Bearer {token}"))
        if reason is not None:
            md.append(("x-l7-reason", reason))
        c = RemoteLedger(self.target, metadata=md, timeout_s=5)
        self._clients.append(c)
        return c

    def accessed(self) -> list[StoredEvent]:
        kinds = ("ledger.accessed", "ledger.accessed.breakglass")
        return [e for e in self.ledger.iter_events() if e.event_type in kinds]

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.stop()
        self.ledger.close()


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.close()


def ev(
    decision_id: str,
    i: int = 0,
    *,
    key: str | None = None,
    payload: Mapping[str, Any] | None = None,
    kind: EventType = EventType.POLICY_GATE,
) -> NewEvent:
    return NewEvent(
        decision_id,
        kind,
        "engine",
        "rev-1",
        payload if payload is not None else {"gate": f"g{i}", "n": 2**53 - 1, "f": 0.1},
        key,
    )


def seed(svc: Service) -> None:
    w = svc.client("t-engine")
    w.append([ev("d-1", 0, key="idem-1"), ev("d-1", 1), ev("d-2", 0)])


# -- append and read: the same as in-process --------------------------------------------------


def test_round_trip_matches_in_process(svc: Service) -> None:
    w = svc.client("t-engine")
    confs = w.append([ev("d-1", 0, key="idem-1"), ev("d-1", 1), ev("d-2", 0)])
    local = svc.ledger.append([ev("d-2", 1)])
    assert [type(c) for c in confs] == [type(local[0])] * 3
    assert [(c.decision_id, c.sequence, c.global_seq) for c in confs] == [
        ("d-1", 1, 1),
        ("d-1", 2, 2),
        ("d-2", 1, 3),
    ]
    assert local[0].global_seq == 4
    # the checkpoint reference is the same as a local append's (covered from global_seq on)
    assert [c.checkpoint for c in confs] == [1, 2, 3] and local[0].checkpoint == 4
    for d in ("d-1", "d-2"):
        remote_stream = w.get_stream(d)
        assert remote_stream == svc.ledger.get_stream(d)
    stream = w.get_stream("d-1")
    assert [e.hash for e in stream] == [c.hash for c in confs[:2]]
    assert stream[0].payload == {"gate": "g0", "n": 2**53 - 1, "f": 0.1}  # exact integers
    assert w.find_by_unique_key("idem-1") == svc.ledger.find_by_unique_key("idem-1")
    assert w.find_by_unique_key("nope") is None
    assert w.get_stream("nope") == []
    assert w.count() == 4
    assert list(w.iter_events(after_global_seq=1)) == list(
        svc.ledger.iter_events(after_global_seq=1)
    )
    assert svc.client("t-alice").verify() == svc.ledger.verify()
    assert w.append([]) == []


def test_duplicate_key_crosses_the_wire_and_writes_nothing(svc: Service) -> None:
    w = svc.client("t-engine")
    w.append([ev("d-1", 0, key="grant-7")])
    with pytest.raises(DuplicateKey, match="'grant-7' is already recorded") as e:
        w.append([ev("d-1", 1), ev("d-2", 0, key="grant-7")])
    assert e.value.unique_key == "grant-7"
    assert w.count() == 1


def test_invalid_events_are_refused_like_in_process(svc: Service) -> None:
    w = svc.client("t-engine")
    for bad in (
        ev("d-1", payload={"x": float("nan")}),
        ev("d-1", payload={"big": 2**60}),
        ev("d-1", payload=cast(dict[str, Any], {1: "non-string key"})),
        ev("", 0),
    ):
        with pytest.raises(InvalidEvent) as local:
            svc.ledger.append([bad])
        with pytest.raises(InvalidEvent) as remote:
            w.append([bad])
        assert str(remote.value) == str(local.value)
    # Whatever a client sends, the service checks again.
    stub = pb_grpc.LedgerStub(grpc.insecure_channel(svc.target))
    md = (("authorization", "Bearer t-engine"),)
    for event, reason in (
        (pb.NewEvent(decision_id="d", event_type="no.such", actor="a"), "not a ledger EventType"),
        (
            pb.NewEvent(decision_id="d", event_type="policy.gate", actor="a", payload_json="[1]"),
            "JSON object",
        ),
        (
            pb.NewEvent(
                decision_id="d", event_type="policy.gate", actor="a", payload_json='{"a":1,"a":2}'
            ),
            "duplicate",
        ),
        (
            pb.NewEvent(decision_id="d", event_type="policy.gate", actor="a", payload_json="{"),
            "not valid JSON",
        ),
    ):
        with pytest.raises(grpc.RpcError) as rpc:
            stub.Append(pb.AppendRequest(events=[event]), metadata=md)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in (rpc.value.details() or "")
        assert _reason(rpc.value) == "invalid_event"
    assert w.count() == 0


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "layer7.ledger"
    return str(info.reason)


# -- access -----------------------------------------------------------------------------------


def test_writer_only_calls_and_authentication(svc: Service) -> None:
    seed(svc)
    with pytest.raises(AccessDenied, match="Append needs one of the roles \\['writer'\\]") as e:
        svc.client("t-alice", reason="audit").append([ev("d-9")])
    assert e.value.authenticated
    with pytest.raises(AccessDenied, match="FindByUniqueKey needs"):
        svc.client("t-dash").find_by_unique_key("idem-1")
    for anon in (svc.client(), svc.client("t-unknown")):
        with pytest.raises(AccessDenied, match="Bearer|not known") as e:
            anon.get_stream("d-1")
        assert not e.value.authenticated
        with pytest.raises(AccessDenied):
            anon.count()
    assert svc.ledger.count() == 3


def test_summary_view_for_readers_without_payload_rights(svc: Service) -> None:
    seed(svc)
    dash = svc.client("t-dash")
    stream = dash.get_stream("d-1")
    full = svc.ledger.get_stream("d-1")
    assert [e.payload for e in stream] == [REDACTED, REDACTED]
    assert stream[0].payload is REDACTED and dict(stream[0].payload) == {}
    assert [e.unique_key for e in stream] == [None, None]
    assert [(e.hash, e.prev_hash, e.event_type, e.actor, e.at) for e in stream] == [
        (e.hash, e.prev_hash, e.event_type, e.actor, e.at) for e in full
    ]
    assert all(e.payload is REDACTED for e in dash.query(decision_id="d-2"))
    assert svc.accessed() == []  # summaries are not recorded


@pytest.mark.parametrize(
    ("token", "subject", "mode"),
    [
        ("t-alice", "alice", "raw"),
        ("t-sec", "sam", "raw"),
        ("t-bob", "bob", "raw"),
    ],
)
def test_each_raw_read_appends_exactly_one_access_event_first(
    svc: Service, token: str, subject: str, mode: str
) -> None:
    seed(svc)
    reader = svc.client(token, reason="INC-42 customer complaint")
    stream = reader.get_stream("d-1")
    assert stream == svc.ledger.get_stream("d-1")[:2]  # payloads included
    (acc,) = svc.accessed()
    assert acc.global_seq == 4  # recorded before the answer, after the seeded events
    # Break-glass reads have their own event type; routine raw reads are ledger.accessed.
    assert acc.event_type == (
        "ledger.accessed.breakglass" if mode == "breakglass" else "ledger.accessed"
    )
    assert acc.decision_id == f"ledger-access/{subject}"
    assert acc.actor == subject
    assert acc.payload == {
        "mode": mode,
        "breakglass": mode == "breakglass",
        "subject": subject,
        "roles": sorted(READERS[token].roles),
        "rpc": "GetStream",
        "what": {"decision_ids": ["d-1"]},
        "reason": "INC-42 customer complaint",
    }
    page = reader.query(event_type="policy.gate", limit=2)
    assert [e.payload for e in page] == [e.payload for e in svc.ledger.query(limit=2)]
    accessed = svc.accessed()
    assert len(accessed) == 2
    assert accessed[1].payload["rpc"] == "Query"
    assert accessed[1].payload["what"] == {
        "query": {"event_type": "policy.gate", "after_global_seq": 0, "limit": 2}
    }


def test_a_breakglass_claim_the_ledger_cannot_prove_reads_nothing(svc: Service) -> None:
    """Issue #14: the header alone is no break-glass. Without pinned tier keys this service
    can prove none, so the read is refused (never answered as the reader's roles)."""
    seed(svc)
    carol = svc.client("t-carol", reason="INC-42")
    for read in (lambda: carol.get_stream("d-1"), lambda: carol.query(decision_id="d-1")):
        with pytest.raises(AccessDenied, match=r"breakglass_unverifiable.*no pinned tier keys"):
            read()
    assert svc.accessed() == []


def test_raw_read_without_reason_is_refused_and_records_nothing(svc: Service) -> None:
    seed(svc)
    for token in ("t-alice", "t-bob", "t-carol"):
        for blank in (None, "   "):
            c = svc.client(token, reason=blank)
            with pytest.raises(AccessDenied, match="needs a reason: send metadata 'x-l7-reason"):
                c.get_stream("d-1")
            with pytest.raises(AccessDenied, match="x-l7-reason"):
                c.query()
    assert svc.accessed() == []
    assert svc.ledger.count() == 3


def test_writer_reads_payloads_without_records(svc: Service) -> None:
    seed(svc)
    w = svc.client("t-engine")
    assert w.get_stream("d-1") == svc.ledger.get_stream("d-1")
    assert w.query() == svc.ledger.query()
    assert svc.accessed() == []


def test_export_only_for_auditor_or_security_and_recorded(svc: Service) -> None:
    seed(svc)
    for token in ("t-dash", "t-bob", "t-engine", "t-carol"):
        with pytest.raises(AccessDenied, match="Export needs one of the roles"):
            svc.client(token, reason="curious").export(decision_ids=["d-1"])
    with pytest.raises(AccessDenied, match="x-l7-reason"):
        svc.client("t-alice").export(decision_ids=["d-1"])
    assert svc.accessed() == []
    alice = svc.client("t-alice", reason="SOC2 sample")
    raw = alice.export_bytes(decision_ids=["d-1"])
    report = verify_export(raw, SIGNER.public_key_raw)
    assert report.decision_ids == ("d-1",) and report.events == 2
    (acc,) = svc.accessed()
    assert acc.payload["rpc"] == "Export"
    assert acc.payload["what"] == {"decision_ids": ["d-1"], "since": None}
    assert acc.payload["reason"] == "SOC2 sample"
    assert report.tree_size >= acc.global_seq  # the record is under the exported checkpoint
    doc = alice.export()
    assert verify_export(doc, SIGNER.public_key_raw).events == 5  # whole log, both records
    assert len(svc.accessed()) == 2


# -- checkpoints, proofs, audit, integrity ----------------------------------------------------


def test_checkpoints_and_proofs(svc: Service) -> None:
    seed(svc)
    dash = svc.client("t-dash")
    assert dash.checkpoint() is None
    with pytest.raises(AccessDenied, match="SignCheckpoint needs"):
        dash.sign_checkpoint()
    w = svc.client("t-engine")
    cp3 = w.sign_checkpoint()
    assert cp3.tree_size == 3 and w.last_checkpoint == cp3
    confs = w.append([ev("d-3"), ev("d-3", 1)])
    assert w.last_checkpoint == cp3  # the checkpoint reference of the append
    cp5 = svc.client("t-alice").sign_checkpoint()
    assert dash.checkpoints() == [cp3, cp5]
    assert dash.checkpoint() == cp5 and dash.checkpoint(3) == cp3 and dash.checkpoint(4) is None
    proof = dash.inclusion_proof(confs[1].global_seq, 5)
    verify_inclusion(event_leaf_hash(confs[1].hash), 4, 5, proof, cp5.root)
    verify_consistency(3, 5, cp3.root, cp5.root, dash.consistency_proof(3, 5))
    with pytest.raises(AccessDenied, match="Verify needs one of the roles"):
        dash.audit()  # a full pass over the log is an auditor's, not any reader's
    report = svc.client("t-alice").audit()
    assert (report.events, report.checkpoints, report.witnessed_size) == (5, 2, 5)
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: dash.inclusion_proof(6, 6), "tree_size"),
        (lambda: dash.inclusion_proof(0, 5), "global_seq"),
        (lambda: dash.consistency_proof(4, 3), "size1"),
        (lambda: dash.consistency_proof(1, 9), "size2"),
    ]
    for call, field in calls:
        with pytest.raises(RequestInvalid) as e:
            call()
        assert e.value.field == field
    with pytest.raises(RequestInvalid, match="is not an RFC 3339 time") as e:
        dash.query(since="yesterday")
    assert e.value.field == "since"
    with pytest.raises(RequestInvalid, match="limit: must be 1..1000"):
        dash.query(limit=5000)


def test_audit_without_checkpoint_is_proof_invalid(svc: Service) -> None:
    seed(svc)
    with pytest.raises(ProofInvalid, match="at least one signed checkpoint"):
        svc.client("t-sec").audit()


def test_integrity_violation_crosses_the_wire(svc: Service) -> None:
    seed(svc)
    db = sqlite3.connect(svc.url.removeprefix("sqlite:///"))
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')
    db.execute("UPDATE events SET body = replace(body, 'g1', 'gX') WHERE global_seq = 2")
    db.commit()
    db.close()
    with pytest.raises(IntegrityViolation) as local:
        svc.ledger.verify()
    with pytest.raises(IntegrityViolation) as remote:
        svc.client("t-alice").verify()
    assert str(remote.value) == str(local.value)
    assert (remote.value.what, remote.value.decision_id, remote.value.global_seq) == (
        "hash_mismatch",
        "d-1",
        2,
    )


# -- failures never look like success ---------------------------------------------------------


def test_stopped_server_is_ledger_unavailable(svc: Service) -> None:
    w = svc.client("t-engine")
    w.append([ev("d-1")])
    svc.stop()
    with pytest.raises(LedgerUnavailable, match=f"ledger service at {svc.target} is unreachable"):
        w.append([ev("d-1", 1)])
    with pytest.raises(LedgerUnavailable, match="unreachable"):
        w.get_stream("d-1")
    assert svc.ledger.count() == 1


def test_nothing_listening_is_ledger_unavailable() -> None:
    with RemoteLedger("127.0.0.1:1", timeout_s=1) as c, pytest.raises(LedgerUnavailable):
        c.append([ev("d-1")])


def test_store_unavailable_and_internal_errors_map_to_unavailable(tmp_path: Path) -> None:
    class Broken:
        def authorize(
            self, metadata: Mapping[str, str], peer_cert_der: bytes | None = None
        ) -> Reader:
            raise RuntimeError("secret stack detail")

    s = Service(tmp_path, authorizer=Broken())
    try:
        with pytest.raises(LedgerUnavailable, match=r"INTERNAL.*ref [0-9a-f]{12}") as e:
            s.client("x").count()
        assert "secret stack detail" not in str(e.value)
    finally:
        s.close()
    s = Service(tmp_path, authorizer=AllowAll())
    try:
        s.ledger.close()  # the store is closed under the running service
        with pytest.raises(LedgerUnavailable, match="could not complete Append: ledger is closed"):
            s.client().append([ev("d-1")])
    finally:
        s.close()


def test_health_and_metadata_checks(svc: Service) -> None:
    ch = grpc.insecure_channel(svc.target)
    resp = health_pb2_grpc.HealthStub(ch).Check(  # type: ignore[attr-defined]
        health_pb2.HealthCheckRequest(service="l7.ledger.v1.Ledger"), timeout=5
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    twice = RemoteLedger(
        svc.target,
        metadata=[("authorization", "Bearer t-engine"), ("authorization", "Bearer t-alice")],
    )
    with pytest.raises(RequestInvalid, match="sent more than once"):
        twice.count()
    twice.close()
    ch.close()


# -- the access policy on its own -------------------------------------------------------------


def test_access_policy_matrix() -> None:
    r: Callable[..., Reader] = lambda *roles, bg=None: Reader("x", frozenset(roles), bg)  # noqa: E731
    assert access_for(r("viewer"), "GetStream", None) is ReadMode.SUMMARY
    assert access_for(r(), "Query", None) is ReadMode.SUMMARY
    assert access_for(r("writer"), "GetStream", None) is ReadMode.SERVICE
    assert access_for(r("writer", "auditor"), "GetStream", "why") is ReadMode.RAW
    assert access_for(r("raw-reader"), "Query", "why") is ReadMode.RAW
    assert access_for(r(bg="bg-1"), "GetStream", "why") is ReadMode.BREAKGLASS
    assert access_for(r("security", bg="bg-1"), "Export", "why") is ReadMode.BREAKGLASS
    assert access_for(r("auditor"), "Export", "why") is ReadMode.RAW
    with pytest.raises(AccessDenied, match="needs a reason"):
        access_for(r("writer", "auditor"), "GetStream", None)
    with pytest.raises(AccessDenied, match="Export needs"):
        access_for(r("raw-reader"), "Export", "why")
    with pytest.raises(ValueError, match="not recorded"):
        access_event(r("viewer"), ReadMode.SUMMARY, "GetStream", {}, "why")
    with pytest.raises(AccessDenied, match="non-empty subject"):
        Reader("")
    assert json.loads(
        json.dumps(dict(access_event(r("auditor"), ReadMode.RAW, "Q", {}, "w").payload))
    )
