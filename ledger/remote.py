"""``RemoteLedger``: the ledger service (``ledger.service``) behind the same contract as
``SqlLedger``, so the engine, the gateway and the CLI can use either unchanged.

Every gRPC failure is translated back into the ledger error tree here, in one
place (``_translate``), from the status's ``google.rpc.ErrorInfo``::

    ledger_unavailable, and no answer at all     -> LedgerUnavailable
      (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, a dropped connection, an INTERNAL
       error, or a malformed answer: the service is unreachable or did not confirm)
    duplicate_key                                -> DuplicateKey(unique_key)
    invalid_event                                -> InvalidEvent
    integrity_violation                          -> IntegrityViolation(what, ...)
    proof_invalid                                -> ProofInvalid
    permission_denied                            -> AccessDenied
    breakglass_* (a break-glass read refused)    -> BreakGlassRefused(why, breakglass_id)
    invalid_request                              -> RequestInvalid(field)
    rate_limited                                 -> ReadLimited(retry_after_s)

A call that did not return a well-formed answer never looks like success. One
caveat the in-process ledger does not have: an ``append`` that times out or loses
its connection raises LedgerUnavailable although the service may have committed it.
Nothing unconfirmed may be acted on (no confirmation, no execution); a retry with
the same ``unique_key`` is safe (DuplicateKey if the first attempt landed).

Reads in the summary view (a reader without payload rights) return events whose
``payload`` is ``REDACTED`` (an empty mapping; test with ``is``) and whose
``unique_key`` is None.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.access import AccessDenied, BreakGlassRefused, RequestInvalid
from ledger.audit import AuditReport
from ledger.canonical import canonical_body
from ledger.checkpoint import Checkpoint
from ledger.errors import (
    DuplicateKey,
    IntegrityViolation,
    InvalidEvent,
    LedgerError,
    LedgerUnavailable,
    ReadLimited,
    StaleHead,
)
from ledger.export import EXPORT_FORMAT, ExportReport, PackWriter
from ledger.interface import (
    Confirmation,
    EventHash,
    EventType,
    NewEvent,
    ProgressFn,
    StoredEvent,
    VerifyReport,
)
from ledger.merkle import ProofInvalid
from ledger.note import Cosignature
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc

__all__ = ["LEDGER_SERVER_NAME", "REDACTED", "RemoteLedger"]

DOMAIN = "layer7.ledger"
LEDGER_SERVER_NAME = "ledger.layer7.local"
"""The name a ledger service's certificate carries (l7.tls.server_name("ledger"))."""
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # an export page is at most a few MB
_PAGE = 1000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_M = TypeVar("_M", bound=Message)


class _Redacted(Mapping[str, Any]):
    """The payload of an event read in the summary view: empty, and recognisably so."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "REDACTED"


REDACTED: Mapping[str, Any] = _Redacted()


class _Malformed(Exception):
    """The service answered with something that is not a valid answer."""


def _payload_json(ev: NewEvent) -> str:
    """The payload as JSON text, refused exactly as ``SqlLedger`` would refuse it."""
    if not isinstance(ev, NewEvent):
        raise InvalidEvent(f"expected a NewEvent, got {type(ev).__name__}")
    try:
        etype = EventType(ev.event_type).value
    except ValueError as e:
        raise InvalidEvent(f"event_type: {ev.event_type!r} is not a ledger EventType") from e
    # The same checks (and messages) as the store, on placeholder ids and time.
    canonical_body(
        event_id="-",
        decision_id=ev.decision_id,
        event_type=etype,
        policy_version=ev.policy_version,
        actor=ev.actor,
        payload=ev.payload,
        unique_key=ev.unique_key,
        at="-",
    )
    return json.dumps(
        ev.payload,
        ensure_ascii=False,
        allow_nan=False,
        default=lambda o: dict(o) if isinstance(o, Mapping) else list(o),
    )


def _hash(value: str) -> EventHash:
    if not _HEX64.fullmatch(value):
        raise _Malformed(f"hash {value!r:.80} is not 64 lower-case hex digits")
    return EventHash(value)


def _stored(e: pb.Event, view: int) -> StoredEvent:
    if view == pb.VIEW_RAW:
        try:
            payload = json.loads(e.payload_json) if e.payload_json else {}
        except ValueError as err:
            raise _Malformed(f"event payload is not JSON: {err}") from err
        if not isinstance(payload, dict):
            raise _Malformed("event payload is not a JSON object")
        unique_key = e.unique_key if e.HasField("unique_key") else None
    elif view == pb.VIEW_SUMMARY:
        payload, unique_key = REDACTED, None
    else:
        raise _Malformed(f"unknown view {view}")
    return StoredEvent(
        event_id=e.event_id,
        decision_id=e.decision_id,
        event_type=e.event_type,
        schema_version=e.schema_version,
        policy_version=e.policy_version,
        actor=e.actor,
        payload=payload,
        unique_key=unique_key,
        at=e.at,
        sequence=e.sequence,
        prev_hash=_hash(e.prev_hash),
        hash=_hash(e.hash),
        global_seq=e.global_seq,
    )


def _checkpoint(c: pb.Checkpoint) -> tuple[Checkpoint, list[Cosignature]]:
    """The checkpoint note (the authority) with its cosignatures; the display fields must
    agree with it."""
    cp, cosigs = Checkpoint.decode_cosigned(c.note)
    if (c.tree_size, c.root_hash, c.index) != (cp.tree_size, cp.root_hash, cp.index):
        raise ProofInvalid("the checkpoint's fields disagree with its signed note")
    return cp, cosigs


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:  # details that contradict the code/message: treat as none
        return None
    if status is None:
        return None
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Is(info.DESCRIPTOR) and d.Unpack(info) and info.domain == DOMAIN:
            return info
    return None


class RemoteLedger:
    """An ``AuditableLedger`` over gRPC. Thread-safe (one channel, shared by ``with_metadata``).

    ``metadata`` goes with every call: typically ``("authorization", "Bearer <token>")``
    and, for recorded raw reads, ``("x-l7-reason", "<why>")``. ``timeout_s`` bounds
    appends and reads; ``long_timeout_s`` bounds verify, audit, export, signing and proofs.
    """

    def __init__(
        self,
        target: str,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout_s: float = 5.0,
        long_timeout_s: float = 600.0,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = LEDGER_SERVER_NAME,
        _channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target
        self.metadata = tuple(metadata)
        self.timeout_s = timeout_s
        self.long_timeout_s = long_timeout_s
        self._owns_channel = _channel is None
        options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if _channel is not None:
            self._channel = _channel
        elif credentials is not None:
            # mTLS: present our certificate, trust only our CA, and accept only a server
            # holding the ledger's certificate (its DNS SAN, checked in the handshake before
            # the writer token is sent; l7.tls issues it with spiffe://layer7.local/ledger)
            options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.LedgerStub(self._channel)
        self.last_checkpoint: Checkpoint | None = None
        """The checkpoint reference of the latest append (or checkpoint call), if any."""

    def with_metadata(self, *extra: tuple[str, str]) -> RemoteLedger:
        """A client on the same channel sending ``extra`` too (e.g. ``x-l7-reason``)."""
        return RemoteLedger(
            self.target,
            metadata=(*self.metadata, *extra),
            timeout_s=self.timeout_s,
            long_timeout_s=self.long_timeout_s,
            _channel=self._channel,
        )

    # -- the one place gRPC errors become ledger errors -----------------------------------------

    def _translate(self, method: str, err: grpc.RpcError) -> LedgerError:
        code: grpc.StatusCode = err.code()
        message = err.details() or ""
        info = _error_info(err)
        reason = info.reason if info is not None else ""
        meta: Mapping[str, str] = info.metadata if info is not None else {}
        if reason == "duplicate_key" and meta.get("unique_key"):
            return DuplicateKey(meta["unique_key"])
        if reason == "invalid_event":
            return InvalidEvent(message)
        if reason == "stale_head":
            return StaleHead(message)
        if reason == "integrity_violation":
            try:
                return IntegrityViolation(
                    meta["what"],
                    decision_id=meta["decision_id"],
                    sequence=int(meta["sequence"]),
                    global_seq=int(meta["global_seq"]),
                    expected=meta["expected"],
                    actual=meta["actual"],
                )
            except (KeyError, ValueError):
                return IntegrityViolation(
                    "unknown",
                    decision_id="-",
                    sequence=0,
                    global_seq=0,
                    expected="a ledger that verifies",
                    actual=message,
                )
        if reason == "proof_invalid":
            return ProofInvalid(message)
        if reason == "permission_denied":
            return AccessDenied(
                f"the ledger service refused {method}: {message}",
                authenticated=code != grpc.StatusCode.UNAUTHENTICATED,
            )
        if reason.startswith("breakglass_") and code == grpc.StatusCode.PERMISSION_DENIED:
            return BreakGlassRefused(
                reason,
                meta.get("breakglass_id", ""),
                f"the ledger service refused {method}: {message}",
            )
        if reason == "invalid_request":
            field = meta.get("field", "request")
            prefix = f"{field}: "
            return RequestInvalid(field, message.removeprefix(prefix))
        if reason == "rate_limited":
            try:
                retry = float(meta.get("retry_after_s", "5"))
            except ValueError:
                retry = 5.0
            return ReadLimited(
                f"the ledger service refused {method}: {message}", retry_after_s=retry
            )
        if reason == "ledger_unavailable":
            return LedgerUnavailable(
                f"the ledger service at {self.target} could not complete {method}: {message}"
            )
        hint = (
            "; the batch may or may not have been recorded: act on nothing unconfirmed, "
            "retry with the same unique_key"
            if method == "Append"
            else ""
        )
        return LedgerUnavailable(
            f"the ledger service at {self.target} is unreachable or failed "
            f"({code.name} on {method}: {message or 'no details'}){hint}"
        )

    def _call(
        self, method: str, request: Message, response_type: type[_M], *, long: bool = False
    ) -> _M:
        try:
            resp = getattr(self._stub, method)(
                request,
                timeout=self.long_timeout_s if long else self.timeout_s,
                metadata=self.metadata,
            )
        except grpc.RpcError as e:
            raise self._translate(method, e) from None
        if not isinstance(resp, response_type):  # pragma: no cover - the stub deserializes
            self._malformed(method, f"a {type(resp).__name__}")
        return resp

    def _malformed(self, method: str, why: str) -> NoReturn:
        raise LedgerUnavailable(
            f"the ledger service at {self.target} answered {method} with {why}; "
            "treating it as no answer"
        )

    def _events(self, method: str, events: Sequence[pb.Event], view: int) -> list[StoredEvent]:
        try:
            return [_stored(e, view) for e in events]
        except _Malformed as e:
            self._malformed(method, str(e))

    # -- LedgerClient ---------------------------------------------------------------------------

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        """Append a batch atomically through the service (see LedgerClient.append)."""
        if not events:
            return []
        req = pb.AppendRequest()
        for ev in events:
            payload = _payload_json(ev)  # refuses what SqlLedger refuses, before any I/O
            pe = req.events.add(
                decision_id=ev.decision_id,
                event_type=EventType(ev.event_type).value,
                actor=ev.actor,
                policy_version=ev.policy_version,
                payload_json=payload,
            )
            if ev.unique_key is not None:
                pe.unique_key = ev.unique_key
        resp = self._call("Append", req, pb.AppendResponse)
        if len(resp.confirmations) != len(events):
            self._malformed(
                "Append", f"{len(resp.confirmations)} confirmations for {len(events)} events"
            )
        out: list[Confirmation] = []
        for ev, c in zip(events, resp.confirmations, strict=True):
            if c.decision_id != ev.decision_id or not c.event_id or c.sequence < 1:
                self._malformed("Append", "a confirmation that does not match the batch")
            try:
                h = _hash(c.hash)
            except _Malformed as e:
                self._malformed("Append", str(e))
            # same reference a local SqlLedger gives: the first checkpoint covering global_seq
            out.append(
                Confirmation(
                    c.event_id, c.decision_id, c.sequence, c.global_seq, h, checkpoint=c.global_seq
                )
            )
        if resp.HasField("checkpoint"):
            self.last_checkpoint = self._checkpoint("Append", resp.checkpoint)
        return out

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        resp = self._call(
            "GetStream", pb.GetStreamRequest(decision_id=decision_id), pb.GetStreamResponse
        )
        return self._events("GetStream", resp.events, resp.view)

    def find_by_unique_key(self, unique_key: str) -> StoredEvent | None:
        resp = self._call(
            "FindByUniqueKey",
            pb.FindByUniqueKeyRequest(unique_key=unique_key),
            pb.FindByUniqueKeyResponse,
        )
        if not resp.HasField("event"):
            return None
        return self._events("FindByUniqueKey", [resp.event], pb.VIEW_RAW)[0]

    def iter_events(self, *, after_global_seq: int = 0) -> Iterator[StoredEvent]:
        cursor = after_global_seq
        while True:
            page = self.query(after_global_seq=cursor, limit=_PAGE)
            yield from page
            if len(page) < _PAGE:
                return
            cursor = page[-1].global_seq

    def count(self) -> int:
        return int(self._call("Count", pb.CountRequest(), pb.CountResponse).events)

    def verify(self, progress: ProgressFn | None = None) -> VerifyReport:
        """Verify on the service (``progress`` is called once, at the end)."""
        resp = self._call(
            "Verify", pb.VerifyRequest(mode=pb.VERIFY_MODE_CHAINS), pb.VerifyResponse, long=True
        )
        if resp.WhichOneof("report") != "chains":
            self._malformed("Verify", "no chains report")
        r = resp.chains
        if progress is not None:
            progress(r.events, r.events)
        try:
            head = _hash(r.head_hash)
        except _Malformed as e:
            self._malformed("Verify", str(e))
        return VerifyReport(r.events, r.streams, r.last_global_seq, head)

    def close(self) -> None:
        """Close the channel (a client from ``with_metadata`` leaves it to its parent)."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- AuditableLedger ------------------------------------------------------------------------

    def iter_rows(self, *, after_global_seq: int = 0) -> Iterator[tuple[object, ...]]:
        """Not offered remotely: stored bodies stay in the service. Use ``audit`` or ``export``,
        which run there."""
        raise LedgerUnavailable(
            "iter_rows reads stored event bodies, which the ledger service does not send; "
            "use RemoteLedger.audit() or .export(), which run on the service"
        )

    def query(
        self,
        *,
        decision_id: str | None = None,
        event_type: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_global_seq: int = 0,
        limit: int = 100,
    ) -> list[StoredEvent]:
        req = pb.QueryRequest(after_global_seq=after_global_seq, limit=limit)
        for name, value in (
            ("decision_id", decision_id),
            ("event_type", event_type),
            ("actor", actor),
            ("since", since),
            ("until", until),
        ):
            if value is not None:
                setattr(req, name, value)
        resp = self._call("Query", req, pb.QueryResponse)
        return self._events("Query", resp.events, resp.view)

    def _checkpoint(self, method: str, c: pb.Checkpoint) -> Checkpoint:
        return self._cosigned(method, c)[0]

    def _cosigned(self, method: str, c: pb.Checkpoint) -> tuple[Checkpoint, list[Cosignature]]:
        try:
            return _checkpoint(c)
        except ProofInvalid as e:
            self._malformed(method, f"a malformed checkpoint ({e})")

    def sign_checkpoint(self) -> Checkpoint:
        resp = self._call(
            "SignCheckpoint", pb.SignCheckpointRequest(), pb.SignCheckpointResponse, long=True
        )
        if not resp.HasField("checkpoint"):
            self._malformed("SignCheckpoint", "no checkpoint")
        self.last_checkpoint = self._checkpoint("SignCheckpoint", resp.checkpoint)
        return self.last_checkpoint

    def checkpoints(self) -> list[Checkpoint]:
        resp = self._call(
            "ListCheckpoints", pb.ListCheckpointsRequest(), pb.ListCheckpointsResponse
        )
        return [self._checkpoint("ListCheckpoints", c) for c in resp.checkpoints]

    def cosignatures(self) -> dict[int, list[Cosignature]]:
        """Witness cosignatures per checkpoint index, as the service stores them (parsed,
        not verified: the caller verifies them with the witness keys it pins)."""
        resp = self._call(
            "ListCheckpoints", pb.ListCheckpointsRequest(), pb.ListCheckpointsResponse
        )
        out: dict[int, list[Cosignature]] = {}
        for c in resp.checkpoints:
            cp, cosigs = self._cosigned("ListCheckpoints", c)
            if cosigs:
                out[cp.index] = cosigs
        return out

    def checkpoint(self, tree_size: int | None = None) -> Checkpoint | None:
        """The newest checkpoint, or the one of ``tree_size``; None if there is none."""
        req = pb.GetCheckpointRequest()
        if tree_size is not None:
            req.tree_size = tree_size
        resp = self._call("GetCheckpoint", req, pb.GetCheckpointResponse)
        if not resp.HasField("checkpoint"):
            return None
        return self._checkpoint("GetCheckpoint", resp.checkpoint)

    def inclusion_proof(self, global_seq: int, tree_size: int) -> list[bytes]:
        resp = self._call(
            "GetInclusionProof",
            pb.GetInclusionProofRequest(global_seq=global_seq, tree_size=tree_size),
            pb.ProofResponse,
            long=True,
        )
        return list(resp.nodes)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        resp = self._call(
            "GetConsistencyProof",
            pb.GetConsistencyProofRequest(size1=size1, size2=size2),
            pb.ProofResponse,
            long=True,
        )
        return list(resp.nodes)

    def audit(self, progress: ProgressFn | None = None) -> AuditReport:
        """Audit on the service (``progress`` is called once, at the end)."""
        resp = self._call(
            "Verify", pb.VerifyRequest(mode=pb.VERIFY_MODE_AUDIT), pb.VerifyResponse, long=True
        )
        if resp.WhichOneof("report") != "audit":
            self._malformed("Verify", "no audit report")
        a = resp.audit
        if progress is not None:
            progress(a.events, a.events)
        try:
            head = _hash(a.head_hash)
        except _Malformed as e:
            self._malformed("Verify", str(e))
        return AuditReport(
            events=a.events,
            streams=a.streams,
            head_hash=head,
            checkpoints=a.checkpoints,
            witnessed_size=a.witnessed_size,
            witnessed_root=a.witnessed_root,
            unwitnessed_events=a.unwitnessed_events,
            key_id=a.key_id,
            cosigned_size=a.cosigned_size,
        )

    def export(
        self, *, decision_ids: Sequence[str] = (), since: str | None = None
    ) -> dict[str, Any]:
        """The audit pack as a dict (small selections; verify it offline with
        ``ledger.export.verify_export``). Large ones: ``export_to`` a file."""
        buf = io.BytesIO()
        self.export_to(buf, decision_ids=decision_ids, since=since)
        lines = [json.loads(line) for line in buf.getvalue().splitlines()]
        return {**lines[0], "events": lines[1:-1], **lines[-1]}

    def export_bytes(self, *, decision_ids: Sequence[str] = (), since: str | None = None) -> bytes:
        """The audit pack file's bytes (JSON lines, ``ledger.export``)."""
        buf = io.BytesIO()
        self.export_to(buf, decision_ids=decision_ids, since=since)
        return buf.getvalue()

    def export_to(
        self,
        out: BinaryIO,
        *,
        decision_ids: Sequence[str] = (),
        since: str | None = None,
        resume_attempts: int = 3,
    ) -> ExportReport:
        """Stream the audit pack from the service into ``out`` page by page (bounded memory
        here and there), checking each line before writing it (``PackWriter``), and add the
        verification block. An interrupted stream (UNAVAILABLE, a dropped connection) is
        resumed from the last event written, against the same anchor, up to
        ``resume_attempts`` times; any other error is raised and ``out`` must be discarded.
        Verify the file with the log's key (``verify_export_file``) before trusting it."""
        writer = PackWriter(out)
        anchor = 0
        attempts = 0
        while True:
            req = pb.ExportRequest(
                decision_ids=list(decision_ids),
                anchor_tree_size=anchor,
                after_global_seq=writer.last_global_seq if anchor else 0,
            )
            if since is not None:
                req.since = since
            try:
                for chunk in self._stub.Export(
                    req, timeout=self.long_timeout_s, metadata=self.metadata
                ):
                    anchor = self._export_chunk(chunk, writer, anchor)
            except grpc.RpcError as e:
                err = self._translate("Export", e)
                if type(err) is not LedgerUnavailable or not anchor or attempts >= resume_attempts:
                    raise err from None
                attempts += 1
                continue
            except _Malformed as e:
                self._malformed("Export", str(e))
            if not anchor:
                self._malformed("Export", "a stream without a header")
            return writer.finish()

    def _export_chunk(self, chunk: pb.ExportChunk, writer: PackWriter, anchor: int) -> int:
        part = chunk.WhichOneof("part")
        if part == "header":
            h = chunk.header
            header = {
                "format": EXPORT_FORMAT,
                "version": h.version,
                "origin": h.origin,
                "checkpoints": list(h.checkpoints),
                "consistency_proofs": [[n.hex() for n in p.nodes] for p in h.consistency_proofs],
            }
            if anchor:  # a resumed stream repeats the header it started with
                if header != writer.header_fields or h.anchor_tree_size != anchor:
                    raise _Malformed("a resumed export with another header")
                return anchor
            try:
                writer.header(header)
            except ProofInvalid as e:
                raise _Malformed(f"a malformed export header ({e})") from e
            if h.anchor_tree_size != writer.anchor_tree_size:
                raise _Malformed("an export header whose anchor_tree_size is not its anchor's")
            return int(h.anchor_tree_size)
        if part != "events" or not anchor:
            raise _Malformed("export events before the header")
        for ev in chunk.events.events:
            if ev.global_seq <= writer.last_global_seq:
                continue  # already written before a resume
            writer.event(
                {
                    "global_seq": ev.global_seq,
                    "sequence": ev.sequence,
                    "prev_hash": ev.prev_hash,
                    "hash": ev.hash,
                    "body": ev.body,
                    "inclusion_proof": [n.hex() for n in ev.inclusion_proof],
                }
            )
        return anchor
