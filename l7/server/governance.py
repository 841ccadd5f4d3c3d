"""The Governance gRPC service: a thin edge over the engine and the authority service.

Identity: every authority call, and Decide when an identity provider is
configured, carries ``authorization: Bearer <OIDC JWT>``. The token is verified
here, once per call, and the verified ``Identity`` is all the layers below see.

Reads (GetDecision, ListPending, ListBreakGlass, GetGrant, GetRestriction) follow
``l7.engine.reads`` when identity is on: a token, a basis to see each decision, the raw
payload only where policy allows, and a ``ledger.accessed`` record of every read of
another's decision before the answer. Without identity (dev), reads are answered to
loopback peers only (the stack also refuses to bind anything else without identity).
"""

from __future__ import annotations

import grpc

from l7.authority.approval import SignedApproval, Verdict
from l7.domain import Decision, Status
from l7.engine import Engine
from l7.engine.authority import AuthorityService
from l7.engine.breakglass import BreakGlassRequest, BreakGlassService
from l7.engine.reads import Basis, ReadAccess, ReadView, payload_digest
from l7.engine.validate import MAX_ID, MAX_REASON_TEXT, check_text, loads_json
from l7.errors import ApprovalInvalid, Forbidden, GrantRefused, RequestInvalid, Unauthenticated
from l7.gateway.grant import GrantIssuer
from l7.identity import Identity, TokenVerifier
from l7.server.convert import confirmation_to_proto, decision_to_proto, request_from_proto
from l7.tls import check_cnf_binding, peer_cert_der, peer_spiffe_id
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc

__all__ = ["GovernanceService", "bearer_token", "is_loopback_peer", "peer_host", "rate_key"]


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return None


def peer_host(context: grpc.ServicerContext) -> str:
    """The peer's address without its port (``ipv4:10.0.0.7``, ``ipv6:[::1]``,
    ``unix:/run/l7.sock``): a caller opens new connections on new ports at will."""
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return f"ipv4:{rest.rsplit(':', 1)[0]}"
    if kind == "ipv6":
        return f"ipv6:{rest.rsplit(']', 1)[0]}]" if rest.startswith("[") else peer
    return peer


def is_loopback_peer(context: grpc.ServicerContext) -> bool:
    """The peer is this machine: 127.0.0.0/8, ::1 or a unix socket."""
    host = peer_host(context)
    return host.startswith(("ipv4:127.", "unix:")) or host == "ipv6:[::1]"


def _shown(view: ReadView) -> pb.Decision:
    """The decision as this reader may see it: the raw payload, or its digest only."""
    msg = decision_to_proto(view.decision)
    if view.payload:
        msg.view = "full"
    else:
        msg.action.ClearField("payload")
        msg.view = "summary"
        msg.payload_sha256 = payload_digest(view.decision)
    return msg


def _full(d: Decision) -> pb.Decision:
    msg = decision_to_proto(d)
    msg.view = "full"
    return msg


def rate_key(context: grpc.ServicerContext, who: Identity | None) -> str:
    """The rate-limit key of a call, never a field of the request: the verified token
    subject when identity is on, else the mTLS identity, else the peer address."""
    if who is not None:
        return f"sub:{who.subject}"
    spiffe = peer_spiffe_id(context)
    return f"mtls:{spiffe}" if spiffe else f"peer:{peer_host(context)}"


_ALL_PENDING = 1 << 30


def _signed(msg: pb.SignedApproval, field: str, verdict: Verdict) -> SignedApproval:
    if not msg.payload_json:
        raise RequestInvalid(f"{field}.payload_json", "is required")
    obj = loads_json(msg.payload_json, f"{field}.payload_json")  # size, depth, NaN refused
    signed = SignedApproval.from_json(
        {"payload": obj, "method": msg.method, "signature": msg.signature}
    )
    if signed.payload.verdict != verdict.value:
        raise ApprovalInvalid(
            f"{field} carries verdict {signed.payload.verdict!r}; this call takes "
            f"{verdict.value!r}",
            reason="verdict_mismatch",
        )
    return signed


class GovernanceService(pb_grpc.GovernanceServicer):
    def __init__(
        self,
        engine: Engine,
        authority: AuthorityService,
        verifier: TokenVerifier | None,
        grants: GrantIssuer | None = None,
        breakglass: BreakGlassService | None = None,
    ) -> None:
        self.engine = engine
        self.authority = authority
        self.verifier = verifier
        self.grants = grants
        self.breakglass = breakglass or BreakGlassService(engine)
        self.reads = ReadAccess(authority)

    def _bg_info(self, d: Decision) -> pb.BreakGlassInfo:
        bg = d.breakglass
        assert bg is not None
        t = d.request.action.target
        return pb.BreakGlassInfo(
            decision_id=d.decision_id,
            opened_by=bg.opened_by,
            incident_id=bg.incident_id,
            category=bg.category,
            text=bg.text,
            expires_at=bg.expires_at,
            review_deadline=bg.review_deadline,
            reviewed_by=bg.reviewed_by or "",
            overdue=bg.reviewed_by is None
            and bg.review_deadline <= int(self.engine.clock().timestamp()),
            action_class=d.request.action.action_class,
            target=pb.Target(type=t.type, id=t.id),
        )

    def BreakGlass(  # noqa: N802
        self, request: pb.BreakGlassRequest, context: grpc.ServicerContext
    ) -> pb.BreakGlassResponse:
        r = request.reason
        for value, path, limit in (
            (r.incident_id, "reason.incident_id", MAX_ID),
            (r.category, "reason.category", 64),
            (request.action_class, "action_class", 128),
            (request.target.type, "target.type", MAX_ID),
            (request.target.id, "target.id", MAX_ID),
            (request.environment, "environment", 64),
        ):
            check_text(value, path, limit=limit)
        check_text(r.text, "reason.text", limit=MAX_REASON_TEXT, free_text=True)
        who = self._identity(context)
        d = self.breakglass.open(
            who,
            BreakGlassRequest(
                incident_id=r.incident_id,
                category=r.category,
                text=r.text,
                ttl_s=request.ttl_s,
                action_class=request.action_class,
                target_type=request.target.type,
                target_id=request.target.id,
                environment=request.environment or "production",
            ),
        )
        return pb.BreakGlassResponse(
            breakglass=self._bg_info(d),
            grant=self._grant_for(d),
            ledger=confirmation_to_proto(d.ledger),
        )

    def ReviewBreakGlass(  # noqa: N802
        self, request: pb.ReviewBreakGlassRequest, context: grpc.ServicerContext
    ) -> pb.ReviewBreakGlassResponse:
        check_text(request.findings, "findings", limit=MAX_REASON_TEXT, free_text=True)
        who = self._identity(context)
        d = self.breakglass.review(who, request.decision_id, request.findings)
        return pb.ReviewBreakGlassResponse(breakglass=self._bg_info(d))

    def _restriction(self) -> pb.RestrictionState:
        st = self.engine.restriction.state()
        return pb.RestrictionState(
            active=st.active, reason=st.reason, since=st.since, cleared_by=st.cleared_by
        )

    def GetRestriction(  # noqa: N802
        self, request: pb.GetRestrictionRequest, context: grpc.ServicerContext
    ) -> pb.RestrictionState:
        self._reader(context)
        return self._restriction()

    def OpenEnvelope(  # noqa: N802
        self, request: pb.OpenEnvelopeRequest, context: grpc.ServicerContext
    ) -> pb.OpenEnvelopeResponse:
        who = self._identity(context)
        text = self.engine.open_envelope(who.subject, who.roles, request.decision_id, request.field)
        return pb.OpenEnvelopeResponse(plaintext=text)

    def ClearRestriction(  # noqa: N802
        self, request: pb.ClearRestrictionRequest, context: grpc.ServicerContext
    ) -> pb.RestrictionState:
        who = self._identity(context)
        self.engine.restriction.clear(who.subject, who.level, request.reason)
        return self._restriction()

    def ListBreakGlass(  # noqa: N802
        self, request: pb.ListBreakGlassRequest, context: grpc.ServicerContext
    ) -> pb.ListBreakGlassResponse:
        who = self._identity(context)
        st = self.reads.standing(who)
        # The opener sees its own, a possible reviewer (a different L4/L5) and an auditor
        # all; the items carry no action payload, so the record says summary.
        views = [
            ReadView(v.decision, v.basis, payload=False)
            for d in self.breakglass.unreviewed()
            if (v := self.reads.view(st, d)) is not None
        ]
        self.reads.record(who, "ListBreakGlass", views)
        return pb.ListBreakGlassResponse(items=[self._bg_info(v.decision) for v in views])

    def _grant_for(self, decision: Decision) -> str:
        if self.grants is None or decision.status is not Status.AUTHORIZED:
            return ""
        if decision.execution_id is not None:
            return ""
        return self.grants.issue(decision)

    def _identity(self, context: grpc.ServicerContext) -> Identity:
        token = bearer_token(context)
        if self.verifier is None:
            raise Unauthenticated(
                "this server has no identity provider configured; start it with "
                "--oidc-issuer/--oidc-audience to accept authority calls"
            )
        if token is None:
            raise Unauthenticated("no bearer token: send 'authorization: Bearer <OIDC JWT>'")
        who = self.verifier.verify(token)
        # A certificate-bound token (RFC 8705 cnf.x5t#S256) is only good over its own cert.
        check_cnf_binding(who.claims, peer_cert_der(context))
        return who

    def _reader(self, context: grpc.ServicerContext) -> Identity | None:
        """Who reads: the verified token when identity is on (required); None in dev mode
        without identity, where only a loopback peer is answered."""
        if self.verifier is not None:
            return self._identity(context)
        if not is_loopback_peer(context):
            raise Forbidden(
                f"this server has no identity provider, so reads are answered on loopback "
                f"only, and {peer_host(context)} is not loopback; start the server with "
                "--oidc-issuer to serve reads to other hosts",
                reason="loopback_only",
            )
        return None

    def Decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.DecideResponse:  # noqa: N802
        # Rate limits first (cheapest refusal of a flood), keyed by what the caller cannot
        # choose: the token subject, else the mTLS identity, else the peer address. The
        # same key holds the per-actor bucket inside the engine.
        who = self._identity(context) if self.verifier is not None else None
        key = rate_key(context, who)
        self.engine.rate_limiter.check("decide_per_caller", key)
        req = request_from_proto(request)
        if who is not None:
            actor = req.context.actor
            if actor.role and actor.role not in who.roles:
                raise Forbidden(
                    f"the request claims role {actor.role!r}; the token grants "
                    f"{list(who.roles) or 'no roles'}",
                    reason="actor_mismatch",
                )
            if (who.subject, who.level) != (actor.id, actor.level):
                raise Forbidden(
                    f"the request names actor {actor.id!r} at L{actor.level}, but the token "
                    f"is {who.subject!r} at L{who.level}",
                    reason="actor_mismatch",
                )
        decision, replayed = self.engine.decide(req, rate_key=key)
        self.authority.track(decision)
        return pb.DecideResponse(
            decision=_full(decision),
            replayed=replayed,
            grant=self._grant_for(decision),
        )

    def GetGrant(  # noqa: N802
        self, request: pb.GetGrantRequest, context: grpc.ServicerContext
    ) -> pb.GetGrantResponse:
        who = self._reader(context)  # authorization guard: a token, or loopback in dev
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        d = self.authority.refresh(request.decision_id)
        if who is not None and who.subject != d.request.context.actor.id:
            raise Forbidden(
                f"only the requester ({d.request.context.actor.id}) may fetch the grant",
                reason="not_requester",
            )
        if self.grants is None:
            raise GrantRefused(
                "this engine issues no grants (no grant key)", reason="not_authorized"
            )
        # Only now, for the requester: expire a lapsed authorization and re-judge one made
        # under a policy revision that is no longer active (both recorded; docs/0013).
        d = self.authority.grantable(d.decision_id)
        return pb.GetGrantResponse(grant=self.grants.issue(d))

    def GetDecision(  # noqa: N802
        self, request: pb.GetDecisionRequest, context: grpc.ServicerContext
    ) -> pb.GetDecisionResponse:
        who = self._reader(context)
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        d = self.authority.refresh(request.decision_id)  # escalation changes who may see it
        if who is None:
            return pb.GetDecisionResponse(decision=_full(d))
        view = self.reads.require(self.reads.standing(who), d)
        self.reads.record(who, "GetDecision", [view])
        return pb.GetDecisionResponse(decision=_shown(view))

    def Approve(  # noqa: N802
        self, request: pb.ApproveRequest, context: grpc.ServicerContext
    ) -> pb.ApproveResponse:
        who = self._identity(context)
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        signed = _signed(request.approval, "approval", Verdict.APPROVE)
        d = self.authority.submit(who, request.decision_id, signed)
        return pb.ApproveResponse(decision=_full(d), authorized=d.status is Status.AUTHORIZED)

    def Reject(self, request: pb.RejectRequest, context: grpc.ServicerContext) -> pb.RejectResponse:  # noqa: N802
        who = self._identity(context)
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        signed = _signed(request.rejection, "rejection", Verdict.REJECT)
        d = self.authority.submit(who, request.decision_id, signed)
        return pb.RejectResponse(decision=_full(d))

    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CancelResponse:  # noqa: N802
        who = self._identity(context)
        if not request.decision_id:
            raise RequestInvalid("decision_id", "is required")
        d = self.authority.cancel(who, request.decision_id, request.reason)
        return pb.CancelResponse(decision=_full(d))

    def ListPending(  # noqa: N802
        self, request: pb.ListPendingRequest, context: grpc.ServicerContext
    ) -> pb.ListPendingResponse:
        who = self._identity(context)
        limit = request.limit if request.limit > 0 else 100
        st = self.reads.standing(who)
        # Only what this caller could approve (an auditor: everything, as summaries); the
        # requester's own pending decisions are not its to approve. Filter, then cut.
        views = [
            v
            for d in self.authority.pending(limit=_ALL_PENDING)
            if (v := self.reads.view(st, d)) is not None
            and (v.basis is Basis.APPROVER or st.auditor)
        ][:limit]
        self.reads.record(who, "ListPending", views)
        return pb.ListPendingResponse(decisions=[_shown(v) for v in views])

    def RegisterKey(  # noqa: N802
        self, request: pb.RegisterKeyRequest, context: grpc.ServicerContext
    ) -> pb.RegisterKeyResponse:
        who = self._identity(context)
        c = self.authority.keys.register(
            subject=request.subject,
            key_id=request.key_id,
            method=request.method,
            public_key=request.public_key,
            by=who.subject,
            by_level=who.level,
        )
        return pb.RegisterKeyResponse(ledger=confirmation_to_proto(c))

    def RevokeKey(  # noqa: N802
        self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext
    ) -> pb.RevokeKeyResponse:
        who = self._identity(context)
        c = self.authority.keys.revoke(
            subject=request.subject,
            key_id=request.key_id,
            reason=request.reason,
            by=who.subject,
            by_level=who.level,
        )
        return pb.RevokeKeyResponse(ledger=confirmation_to_proto(c))

    def Delegate(  # noqa: N802
        self, request: pb.DelegateRequest, context: grpc.ServicerContext
    ) -> pb.DelegateResponse:
        who = self._identity(context)
        c = self.authority.delegations.grant(
            delegator=who.subject,
            delegator_level=who.level,
            delegator_scopes=who.scopes,
            delegate=request.delegate,
            level=request.level,
            scopes=tuple(request.scopes),
            now=int(self.engine.clock().timestamp()),
            not_after=request.not_after,
            reason=request.reason,
        )
        return pb.DelegateResponse(ledger=confirmation_to_proto(c))
