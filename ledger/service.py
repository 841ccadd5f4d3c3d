"""The ledger as its own gRPC service (``l7.ledger.v1.Ledger``, DESIGN §4).

``create_ledger_server(addr, ledger, authorizer)`` builds the server over any
``AuditableLedger`` with health checking, reflection and ``ErrorInterceptor``,
the one place where the ledger error tree becomes gRPC statuses with a
``google.rpc.ErrorInfo`` (domain ``layer7.ledger``)::

    LedgerUnavailable   UNAVAILABLE          ledger_unavailable
    DuplicateKey        ALREADY_EXISTS       duplicate_key        {unique_key}
    InvalidEvent        INVALID_ARGUMENT     invalid_event
    IntegrityViolation  DATA_LOSS            integrity_violation  {what, decision_id, ...}
    ProofInvalid        FAILED_PRECONDITION  proof_invalid
    BreakGlassRefused   PERMISSION_DENIED    <its why>            {breakglass_id}
                                             (breakglass_expired, breakglass_out_of_scope, ...)
    AccessDenied        PERMISSION_DENIED    permission_denied    (UNAUTHENTICATED if not
                                                                   authenticated)
    RequestInvalid      INVALID_ARGUMENT     invalid_request      {field}
    ReadLimited         RESOURCE_EXHAUSTED   rate_limited         {retry_after_s}
    anything else       INTERNAL             internal             {ref}, logged here

Who may call what is ``ledger.access``; the host supplies the ``ReadAuthorizer``.
``serve(url, addr, authorizer)`` runs the service until SIGINT/SIGTERM (the l7
CLI's ``l7 ledger serve``); ``python -m ledger.service --ledger URL --addr ADDR
--insecure-allow-all`` runs it without authentication for local tests.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from ledger._readlimit import ReadBudget
from ledger.access import (
    EXPORT_ROLES,
    WRITER_ROLE,
    AccessDenied,
    AllowAll,
    BreakGlassRefused,
    ReadAuthorizer,
    Reader,
    ReadMode,
    RequestInvalid,
    access_event,
    access_for,
    reason_from,
    require_role,
)
from ledger.attestation import Tier, TierKeys, authorize_batch
from ledger.breakglass import require_breakglass
from ledger.checkpoint import Checkpoint, Ed25519CheckpointSigner, parse_json_strict
from ledger.errors import (
    DuplicateKey,
    IntegrityViolation,
    InvalidEvent,
    LedgerError,
    LedgerUnavailable,
    ReadLimited,
    StaleHead,
)
from ledger.export import EXPORT_VERSION
from ledger.interface import AuditableLedger, EventType, NewEvent, StoredEvent
from ledger.merkle import ProofInvalid
from ledger.note import Cosignature
from ledger.store import SqlLedger
from ledger.v1 import ledger_pb2 as pb
from ledger.v1 import ledger_pb2_grpc as pb_grpc
from ledger.witness_client import witness_endpoints

__all__ = [
    "DOMAIN",
    "MAX_BATCH",
    "MAX_PAGE",
    "SERVICE_NAME",
    "ErrorInterceptor",
    "LedgerServicer",
    "create_ledger_server",
    "main",
    "serve",
    "status_for",
]

log = logging.getLogger(__name__)

DOMAIN = "layer7.ledger"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Ledger"].full_name
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_BATCH = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
EXPORT_PAGE_EVENTS = 500
EXPORT_PAGE_BYTES = 2 * 1024 * 1024
SIGN_ROLES = frozenset({WRITER_ROLE, *EXPORT_ROLES})

# -- the one place ledger errors become statuses ---------------------------------------------

_CODES: list[tuple[type[LedgerError], int, str]] = [
    (LedgerUnavailable, code_pb2.UNAVAILABLE, "ledger_unavailable"),
    (DuplicateKey, code_pb2.ALREADY_EXISTS, "duplicate_key"),
    (StaleHead, code_pb2.ABORTED, "stale_head"),
    (InvalidEvent, code_pb2.INVALID_ARGUMENT, "invalid_event"),
    (IntegrityViolation, code_pb2.DATA_LOSS, "integrity_violation"),
    (ProofInvalid, code_pb2.FAILED_PRECONDITION, "proof_invalid"),
    (BreakGlassRefused, code_pb2.PERMISSION_DENIED, "breakglass_refused"),
    (AccessDenied, code_pb2.PERMISSION_DENIED, "permission_denied"),
    (RequestInvalid, code_pb2.INVALID_ARGUMENT, "invalid_request"),
    (ReadLimited, code_pb2.RESOURCE_EXHAUSTED, "rate_limited"),
]


def _status(code: int, message: str, reason: str, meta: Mapping[str, str]) -> status_pb2.Status:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(meta)))
    return status_pb2.Status(code=code, message=message, details=[detail])


def _internal(ref: str) -> status_pb2.Status:
    return _status(
        code_pb2.INTERNAL,
        f"internal error in the ledger service (ref {ref}); its log has the details",
        "internal",
        {"ref": ref},
    )


def status_for(err: LedgerError) -> status_pb2.Status | None:
    """The status for a known ledger error, or None (the caller reports INTERNAL)."""
    found = next(((c, r) for t, c, r in _CODES if isinstance(err, t)), None)
    if found is None:
        return None
    code, reason = found
    meta: dict[str, str] = {}
    if isinstance(err, DuplicateKey):
        meta["unique_key"] = err.unique_key
    elif isinstance(err, IntegrityViolation):
        meta.update(
            what=err.what,
            decision_id=err.decision_id,
            sequence=str(err.sequence),
            global_seq=str(err.global_seq),
            expected=err.expected,
            actual=err.actual,
        )
    elif isinstance(err, RequestInvalid):
        meta["field"] = err.field
    elif isinstance(err, ReadLimited):
        meta["retry_after_s"] = f"{err.retry_after_s:.0f}"
    elif isinstance(err, BreakGlassRefused):
        reason = err.why
        meta["breakglass_id"] = err.breakglass_id
    elif isinstance(err, AccessDenied) and not err.authenticated:
        code = code_pb2.UNAUTHENTICATED
    return _status(code, str(err), reason, meta)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps every error a Ledger handler raises to a status; never leaks a stack trace."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        def fail(e: Exception, context: grpc.ServicerContext) -> None:
            status = status_for(e) if isinstance(e, LedgerError) else None
            if status is None:
                ref = uuid.uuid4().hex[:12]
                log.exception("unexpected error in %s (ref %s)", method, ref, exc_info=e)
                status = _internal(ref)
            context.abort_with_status(rpc_status.to_status(status))

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner(request, context)
                except Exception as e:
                    fail(e, context)
                return None  # unreachable: abort raises

            return grpc.unary_unary_rpc_method_handler(
                guarded,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def guarded_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                # An error after some messages ends the stream with its status: the client
                # discards what it got (or resumes from its cursor).
                try:
                    yield from inner_stream(request, context)
                except Exception as e:
                    fail(e, context)

            return grpc.unary_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


# -- protobuf at the edge ---------------------------------------------------------------------


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    """The call's text metadata; a repeated key is refused (ambiguous credentials)."""
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key.endswith("-bin") or not isinstance(value, str):
            continue
        if key in out:
            raise RequestInvalid(key, "metadata key is sent more than once")
        out[key] = value
    return out


def _peer_cert_der(context: grpc.ServicerContext) -> bytes | None:
    """The verified client certificate (DER) of an mTLS call, else None."""
    auth: Mapping[str, Any] = context.auth_context()  # lists of bytes per key (stub: bytes)
    pems: list[bytes] = list(auth.get("x509_pem_cert") or [])
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0]).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None


def _new_event(i: int, e: pb.NewEvent) -> NewEvent:
    try:
        etype = EventType(e.event_type)
    except ValueError as err:
        raise InvalidEvent(
            f"events[{i}].event_type: {e.event_type!r} is not a ledger EventType"
        ) from err
    payload: Any = {}
    if e.payload_json:
        try:
            payload = parse_json_strict(e.payload_json)
        except ProofInvalid as err:
            raise InvalidEvent(f"events[{i}].payload_json: {err}") from err
    if not isinstance(payload, dict):
        raise InvalidEvent(
            f"events[{i}].payload_json: must be a JSON object, got {type(payload).__name__}"
        )
    return NewEvent(
        decision_id=e.decision_id,
        event_type=etype,
        actor=e.actor,
        policy_version=e.policy_version,
        payload=payload,
        unique_key=e.unique_key if e.HasField("unique_key") else None,
    )


def _event_pb(ev: StoredEvent, *, payloads: bool) -> pb.Event:
    out = pb.Event(
        event_id=ev.event_id,
        decision_id=ev.decision_id,
        event_type=ev.event_type,
        schema_version=ev.schema_version,
        policy_version=ev.policy_version,
        actor=ev.actor,
        at=ev.at,
        sequence=ev.sequence,
        prev_hash=ev.prev_hash,
        hash=ev.hash,
        global_seq=ev.global_seq,
    )
    if payloads:
        out.payload_json = json.dumps(dict(ev.payload), ensure_ascii=False, allow_nan=False)
        if ev.unique_key is not None:
            out.unique_key = ev.unique_key
    return out


def _checkpoint_pb(cp: Checkpoint, cosignatures: Sequence[Cosignature] = ()) -> pb.Checkpoint:
    return pb.Checkpoint(
        tree_size=cp.tree_size,
        root_hash=cp.root_hash,
        timestamp=cp.timestamp,
        key_id=cp.key_id,
        signature=base64.b64encode(cp.signature.key_hash + cp.signature.signature).decode(),
        note=cp.encode(cosignatures),
        index=cp.index,
    )


def _request_invalid(err: ValueError, fields: Sequence[str]) -> RequestInvalid:
    """The store's ValueError about a request argument; its message starts with the field."""
    msg = str(err)
    field = next((f for f in fields if msg.startswith(f)), fields[-1])
    return RequestInvalid(field, msg.removeprefix(field).lstrip(" :"))


_VIEW = {False: pb.VIEW_SUMMARY, True: pb.VIEW_RAW}


def _decisions_read(rpc: str, what: Mapping[str, Any]) -> list[str]:
    """The decision streams a recorded read returns, from its record (``what``): GetStream
    and Export name them; a Query only through its decision_id filter (else none: a
    break-glass Query of everything is refused)."""
    if rpc == "Query":
        q = what.get("query")
        d = q.get("decision_id") if isinstance(q, Mapping) else None
        return [d] if isinstance(d, str) and d else []
    ids = what.get("decision_ids")
    return [str(i) for i in ids] if isinstance(ids, list) else []


# -- the servicer -----------------------------------------------------------------------------


class LedgerServicer(pb_grpc.LedgerServicer):
    """``l7.ledger.v1.Ledger`` over an ``AuditableLedger``; access per ``ledger.access``."""

    def __init__(
        self,
        ledger: AuditableLedger,
        authorizer: ReadAuthorizer,
        *,
        tier_keys: TierKeys | None = None,
        verify_budget: ReadBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.authorizer = authorizer
        self.tier_keys = tier_keys
        """Pinned tier keys: with them, a writer appends only event types its tier owns,
        each stream attested by its own tier (``ledger.attestation.authorize_batch``); a
        break-glass read is answered only with them (``ledger.breakglass``)."""
        self.verify_budget = verify_budget or ReadBudget()
        """Full-log verifications per caller and at once (``ledger._readlimit``)."""
        self._clock = clock
        self._cp_lock = threading.Lock()
        self._latest_cp: Checkpoint | None = None
        self._cp_loaded = False

    # -- helpers ------------------------------------------------------------------------------

    def _reader(self, context: grpc.ServicerContext) -> tuple[Reader, dict[str, str]]:
        md = _metadata(context)
        return self.authorizer.authorize(md, _peer_cert_der(context)), md

    def _record(
        self, reader: Reader, mode: ReadMode, rpc: str, what: Mapping[str, Any], reason: str | None
    ) -> None:
        """Append the ledger.accessed event BEFORE answering; no record, no answer. A
        break-glass read is first proven against the ledger (``_require_breakglass``)."""
        if not mode.recorded:
            return
        if reason is None:  # pragma: no cover - access_for refuses a recorded read without one
            raise AccessDenied(f"a {mode.value} read needs a reason")
        if mode is ReadMode.BREAKGLASS:
            self._require_breakglass(reader, _decisions_read(rpc, what))
        self.ledger.append([access_event(reader, mode, rpc, what, reason)])

    def _require_breakglass(self, reader: Reader, decision_ids: Sequence[str]) -> None:
        """The break-glass the reader names is open, in its window, engine-signed, its own
        and covers ``decision_ids``; else BreakGlassRefused (``ledger.breakglass``)."""
        if reader.breakglass is None:  # pragma: no cover - access_for gives no such mode
            raise AccessDenied("a break-glass read names its break-glass")
        require_breakglass(
            reader.breakglass,
            reader.subject,
            decision_ids,
            read_stream=self.ledger.get_stream,
            tier_keys=self.tier_keys,
            now=self._clock(),
        )

    def _seen(self, cps: Sequence[Checkpoint]) -> None:
        """Remember the newest checkpoint for the confirmations' checkpoint reference."""
        with self._cp_lock:
            self._cp_loaded = True
            for cp in cps:
                if self._latest_cp is None or cp.tree_size >= self._latest_cp.tree_size:
                    self._latest_cp = cp

    def _checkpoint_ref(self) -> Checkpoint | None:
        with self._cp_lock:
            loaded = self._cp_loaded
        if not loaded:
            try:
                self._seen(list(self.ledger.checkpoints()))
            except LedgerError as e:  # the reference is informational; the append stands
                log.warning("cannot list checkpoints for the confirmation reference: %s", e)
        with self._cp_lock:
            return self._latest_cp

    # -- writes -------------------------------------------------------------------------------

    def Append(  # noqa: N802
        self, request: pb.AppendRequest, context: grpc.ServicerContext
    ) -> pb.AppendResponse:
        reader, _ = self._reader(context)
        require_role(reader, {WRITER_ROLE}, "Append")
        if len(request.events) > MAX_BATCH:
            raise RequestInvalid("events", f"at most {MAX_BATCH} events per batch")
        events = [_new_event(i, e) for i, e in enumerate(request.events)]
        if self.tier_keys is not None:
            self._authorize_batch(reader, events)
        confs = self.ledger.append(events)
        resp = pb.AppendResponse(
            confirmations=[
                pb.Confirmation(
                    event_id=c.event_id,
                    decision_id=c.decision_id,
                    sequence=c.sequence,
                    global_seq=c.global_seq,
                    hash=c.hash,
                )
                for c in confs
            ]
        )
        cp = self._checkpoint_ref() if confs else None
        if cp is not None:
            resp.checkpoint.CopyFrom(_checkpoint_pb(cp))
        return resp

    def _authorize_batch(self, reader: Reader, events: Sequence[NewEvent]) -> None:
        assert self.tier_keys is not None
        try:
            tier = Tier(reader.tier or "")
        except ValueError:
            raise AccessDenied(
                f"writer {reader.subject} speaks for no tier ({reader.tier!r}): its token needs "
                "a tier:engine or tier:gateway role"
            ) from None
        try:
            authorize_batch(events, tier, self.tier_keys)
        except PermissionError as e:
            raise AccessDenied(f"Append refused for {reader.subject} ({tier.value}): {e}") from e

    def SignCheckpoint(  # noqa: N802
        self, request: pb.SignCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SignCheckpointResponse:
        reader, _ = self._reader(context)
        require_role(reader, SIGN_ROLES, "SignCheckpoint")
        cp: Checkpoint = self.ledger.sign_checkpoint()
        self._seen([cp])
        return pb.SignCheckpointResponse(checkpoint=_checkpoint_pb(cp))

    # -- reads --------------------------------------------------------------------------------

    def GetStream(  # noqa: N802
        self, request: pb.GetStreamRequest, context: grpc.ServicerContext
    ) -> pb.GetStreamResponse:
        reader, md = self._reader(context)
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        reason = reason_from(md)
        mode = access_for(reader, "GetStream", reason)
        self._record(reader, mode, "GetStream", {"decision_ids": [request.decision_id]}, reason)
        events = self.ledger.get_stream(request.decision_id)
        return pb.GetStreamResponse(
            view=_VIEW[mode.payloads],
            events=[_event_pb(e, payloads=mode.payloads) for e in events],
        )

    def Query(  # noqa: N802
        self, request: pb.QueryRequest, context: grpc.ServicerContext
    ) -> pb.QueryResponse:
        reader, md = self._reader(context)
        limit = request.limit or DEFAULT_PAGE
        if limit > MAX_PAGE:
            raise RequestInvalid("limit", f"must be 1..{MAX_PAGE}, got {limit}")
        filters: dict[str, str] = {
            name: getattr(request, name)
            for name in ("decision_id", "event_type", "actor", "since", "until")
            if request.HasField(name)
        }
        if "event_type" in filters:
            try:
                EventType(filters["event_type"])
            except ValueError as e:
                raise RequestInvalid(
                    "event_type", f"{filters['event_type']!r} is not a ledger EventType"
                ) from e
        reason = reason_from(md)
        mode = access_for(reader, "Query", reason)
        what = {"query": {**filters, "after_global_seq": request.after_global_seq, "limit": limit}}
        self._record(reader, mode, "Query", what, reason)
        try:
            events = self.ledger.query(
                decision_id=filters.get("decision_id"),
                event_type=filters.get("event_type"),
                actor=filters.get("actor"),
                since=filters.get("since"),
                until=filters.get("until"),
                after_global_seq=request.after_global_seq,
                limit=limit,
            )
        except ValueError as e:  # a malformed since / until
            raise _request_invalid(e, ("since", "until", "limit")) from e
        return pb.QueryResponse(
            view=_VIEW[mode.payloads],
            events=[_event_pb(e, payloads=mode.payloads) for e in events],
            next_after_global_seq=events[-1].global_seq if len(events) >= limit else 0,
        )

    def FindByUniqueKey(  # noqa: N802
        self, request: pb.FindByUniqueKeyRequest, context: grpc.ServicerContext
    ) -> pb.FindByUniqueKeyResponse:
        reader, _ = self._reader(context)
        require_role(reader, {WRITER_ROLE}, "FindByUniqueKey")
        if not request.unique_key:
            raise RequestInvalid("unique_key", "is required")
        found = self.ledger.find_by_unique_key(request.unique_key)
        if found is None:
            return pb.FindByUniqueKeyResponse()
        return pb.FindByUniqueKeyResponse(event=_event_pb(found, payloads=True))

    def Count(  # noqa: N802
        self, request: pb.CountRequest, context: grpc.ServicerContext
    ) -> pb.CountResponse:
        self._reader(context)
        return pb.CountResponse(events=self.ledger.count())

    def Export(  # noqa: N802
        self, request: pb.ExportRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportChunk]:
        reader, md = self._reader(context)
        reason = reason_from(md)
        mode = access_for(reader, "Export", reason)
        ids = list(request.decision_ids)
        since = request.since if request.HasField("since") else None
        what: dict[str, Any] = {"decision_ids": ids, "since": since}
        if request.anchor_tree_size:
            what["resume"] = {
                "anchor_tree_size": request.anchor_tree_size,
                "after_global_seq": request.after_global_seq,
            }
        stream = getattr(self.ledger, "export_stream", None)
        if not callable(stream):
            raise LedgerUnavailable("this ledger cannot stream exports")
        self._record(reader, mode, "Export", what, reason)
        try:
            header, events = stream(
                decision_ids=ids,
                since=since,
                anchor_tree_size=request.anchor_tree_size or None,
                after_global_seq=request.after_global_seq,
            )
        except ValueError as e:  # a malformed since, an unknown anchor, or nothing matches
            raise _request_invalid(e, ("since", "anchor_tree_size", "decision_ids")) from e
        notes: list[str] = header["checkpoints"]
        anchor = Checkpoint.decode_cosigned(notes[-1])[0]
        self._seen([anchor])
        yield pb.ExportChunk(
            header=pb.ExportHeader(
                origin=header["origin"],
                checkpoints=notes,
                consistency_proofs=[
                    pb.ProofResponse(nodes=[bytes.fromhex(h) for h in p])
                    for p in header["consistency_proofs"]
                ],
                version=EXPORT_VERSION,
                anchor_tree_size=anchor.tree_size,
            )
        )
        page = pb.ExportEvents()
        size = 0
        for ev in events:
            page.events.add(
                global_seq=ev["global_seq"],
                sequence=ev["sequence"],
                prev_hash=ev["prev_hash"],
                hash=ev["hash"],
                body=ev["body"],
                inclusion_proof=[bytes.fromhex(h) for h in ev["inclusion_proof"]],
            )
            size += len(ev["body"]) + 64 * len(ev["inclusion_proof"]) + 200
            if len(page.events) >= EXPORT_PAGE_EVENTS or size >= EXPORT_PAGE_BYTES:
                yield pb.ExportChunk(events=page)
                page, size = pb.ExportEvents(), 0
        if page.events:
            yield pb.ExportChunk(events=page)

    # -- verification -------------------------------------------------------------------------

    def Verify(  # noqa: N802
        self, request: pb.VerifyRequest, context: grpc.ServicerContext
    ) -> pb.VerifyResponse:
        reader, _ = self._reader(context)
        monitor = reader.tier == "engine"  # an engine's integrity monitor; no other writer
        if not monitor:
            require_role(reader, EXPORT_ROLES, "Verify")
        with self.verify_budget.hold(reader.subject, "Verify", per_minute=not monitor):
            return self._verify(request)

    def _verify(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        if request.mode == pb.VERIFY_MODE_AUDIT:
            a = self.ledger.audit()
            return pb.VerifyResponse(
                audit=pb.AuditReport(
                    events=a.events,
                    streams=a.streams,
                    head_hash=a.head_hash,
                    checkpoints=a.checkpoints,
                    witnessed_size=a.witnessed_size,
                    witnessed_root=a.witnessed_root,
                    unwitnessed_events=a.unwitnessed_events,
                    key_id=a.key_id,
                    cosigned_size=a.cosigned_size,
                )
            )
        if request.mode not in (pb.VERIFY_MODE_UNSPECIFIED, pb.VERIFY_MODE_CHAINS):
            raise RequestInvalid("mode", f"unknown verify mode {request.mode}")
        r = self.ledger.verify()
        return pb.VerifyResponse(
            chains=pb.VerifyReport(
                events=r.events,
                streams=r.streams,
                last_global_seq=r.last_global_seq,
                head_hash=r.head_hash,
            )
        )

    def GetCheckpoint(  # noqa: N802
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.GetCheckpointResponse:
        self._reader(context)
        cps: list[Checkpoint] = list(self.ledger.checkpoints())
        self._seen(cps)
        if request.HasField("tree_size"):
            cps = [c for c in cps if c.tree_size == request.tree_size]
        if not cps:
            return pb.GetCheckpointResponse()
        return pb.GetCheckpointResponse(checkpoint=_checkpoint_pb(cps[-1]))

    def ListCheckpoints(  # noqa: N802
        self, request: pb.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> pb.ListCheckpointsResponse:
        self._reader(context)
        cps: list[Checkpoint] = list(self.ledger.checkpoints())
        self._seen(cps)
        cosigs_fn = getattr(self.ledger, "cosignatures", None)
        cosigs: dict[int, list[Cosignature]] = cosigs_fn() if callable(cosigs_fn) else {}
        return pb.ListCheckpointsResponse(
            checkpoints=[_checkpoint_pb(c, cosigs.get(c.index, ())) for c in cps]
        )

    def GetInclusionProof(  # noqa: N802
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.ProofResponse:
        self._reader(context)
        try:
            nodes = self.ledger.inclusion_proof(request.global_seq, request.tree_size)
        except ValueError as e:
            raise _request_invalid(e, ("tree_size", "global_seq")) from e
        return pb.ProofResponse(nodes=nodes)

    def GetConsistencyProof(  # noqa: N802
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.ProofResponse:
        self._reader(context)
        try:
            nodes = self.ledger.consistency_proof(request.size1, request.size2)
        except ValueError as e:
            raise _request_invalid(e, ("size2", "size1")) from e
        return pb.ProofResponse(nodes=nodes)


# -- the server -------------------------------------------------------------------------------


def create_ledger_server(
    addr: str,
    ledger: AuditableLedger,
    authorizer: ReadAuthorizer,
    *,
    health_servicer: health.HealthServicer | None = None,
    max_workers: int = 32,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    tier_keys: TierKeys | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[grpc.Server, int]:
    """A not-yet-started server bound to ``addr`` (port 0 picks a free port).

    Pass ``health_servicer`` to keep a handle on it (``serve`` uses it to report
    NOT_SERVING before a graceful stop). ``credentials`` make it a TLS port (mTLS when
    they require client certificates); ``interceptors`` run before the error mapping
    (a peer allowlist goes there); ``tier_keys`` turn on per-tier Append authorization and
    break-glass reads; ``clock`` (unix seconds) judges break-glass windows.
    Raises ValueError if ``addr`` cannot be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ledger-grpc"),
        interceptors=[*interceptors, ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_LedgerServicer_to_server(
        LedgerServicer(ledger, authorizer, tier_keys=tier_keys, clock=clock), server
    )
    hs = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        port = (
            server.add_secure_port(addr, credentials)
            if credentials is not None
            else server.add_insecure_port(addr)
        )
    except RuntimeError as e:
        raise ValueError(f"ledger service address {addr}: cannot bind ({e})") from e
    if port == 0:
        raise ValueError(f"ledger service address {addr}: cannot bind (in use, or not host:port)")
    return server, port


def serve(
    url: str,
    addr: str,
    authorizer: ReadAuthorizer,
    *,
    grace_s: float = 5.0,
    stop: threading.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    **ledger_opts: Any,
) -> int:
    """Open the ledger at ``url`` and serve it on ``addr`` until SIGINT/SIGTERM (or ``stop``).

    ``ledger_opts`` go to ``SqlLedger``. Stopping: health says NOT_SERVING, new calls are
    refused, calls in flight get ``grace_s`` to finish, then pending writes are flushed and
    the ledger is closed. Returns the exit status (0).
    """
    ledger = SqlLedger(url, **ledger_opts)
    try:
        hs = health.HealthServicer()
        # SqlLedger implements AuditableLedger (ledger.interface).
        server, port = create_ledger_server(
            addr,
            ledger,
            authorizer,
            health_servicer=hs,
            credentials=credentials,
            interceptors=interceptors,
        )
    except BaseException:
        ledger.close()
        raise
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    host = addr.rsplit(":", 1)[0]
    where = make_url(url).render_as_string(hide_password=True)
    print(f"Layer-7 ledger service on {host}:{port} (ledger {where})", flush=True)
    if on_ready is not None:
        on_ready(port)
    try:
        stop.wait()
    finally:
        hs.enter_graceful_shutdown()
        server.stop(grace=grace_s).wait(grace_s + 5)
        ledger.close()
    return 0


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for continuous, witnessed checkpoints (``python -m ledger.service`` and
    ``l7 ledger serve``)."""
    p.add_argument("--checkpoint-key", help="Ed25519 PEM private key (0600) to sign checkpoints")
    p.add_argument("--origin", help="the log's origin line (default: layer7.local/ledger/<db>)")
    p.add_argument(
        "--checkpoint-every-s",
        type=float,
        default=1.0,
        help="sign a checkpoint at least this often while events arrive (default 1)",
    )
    p.add_argument(
        "--checkpoint-every-events",
        type=int,
        default=1000,
        help="and as soon as this many events were appended since the last (default 1000)",
    )
    p.add_argument(
        "--witness-url", action="append", default=[], help="a witness to cosign each checkpoint"
    )
    p.add_argument(
        "--witness-key",
        action="append",
        default=[],
        help="that witness's verifier key (vkey, or a file holding it); one per --witness-url",
    )


def checkpoint_options(a: argparse.Namespace) -> dict[str, Any]:
    """SqlLedger options from ``add_checkpoint_arguments`` flags."""
    opts: dict[str, Any] = {
        "checkpoint_every_s": a.checkpoint_every_s,
        "checkpoint_every_events": a.checkpoint_every_events,
        "witnesses": witness_endpoints(a.witness_url, a.witness_key),
    }
    if a.checkpoint_key:
        opts["checkpoint_signer"] = Ed25519CheckpointSigner.from_file(a.checkpoint_key)
    if a.origin:
        opts["origin"] = a.origin
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ledger.service",
        description="Serve a Layer-7 ledger over gRPC (l7.ledger.v1.Ledger).",
    )
    p.add_argument("--ledger", required=True, help="ledger database URL (sqlite:///... or ...)")
    p.add_argument("--addr", default="127.0.0.1:50071", help="listen address host:port")
    p.add_argument(
        "--insecure-allow-all",
        action="store_true",
        help="treat every caller as the writer 'local' with no authentication (tests only; "
        "'l7 ledger serve' authenticates callers with OIDC instead)",
    )
    p.add_argument(
        "--insecure-role",
        action="append",
        default=[],
        help="with --insecure-allow-all: the roles every caller gets instead of 'writer' "
        "(repeatable; tests only, e.g. 'auditor' to export or verify)",
    )
    p.add_argument(
        "--insecure-tier",
        choices=("engine", "gateway"),
        help="with --insecure-allow-all: the tier every caller speaks for (tests only)",
    )
    add_checkpoint_arguments(p)
    a = p.parse_args(argv)
    if not a.insecure_allow_all:
        p.error(
            "this entry point has no authentication: pass --insecure-allow-all for local "
            "tests, or run 'l7 ledger serve', which verifies callers' tokens"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        authorizer = AllowAll(roles=a.insecure_role or ("writer",), tier=a.insecure_tier)
        return serve(a.ledger, a.addr, authorizer, **checkpoint_options(a))
    except (LedgerError, ValueError, OSError, TypeError) as e:
        print(f"ledger service: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
