"""Assemble a running Layer-7: locked bundle -> OPA child -> ledger -> engine -> gRPC.

``l7 serve``, ``l7 demo``, ``l7 decide --embedded``, the integration tests and
the benchmarks all start the same stack through ``Stack``, so they exercise
the same wiring.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from l7.engine import Clock, Engine
from l7.engine.authority import AuthorityService
from l7.engine.breakglass import BreakGlassService
from l7.engine.engine import _utcnow
from l7.engine.interface import PolicyEvaluator
from l7.engine.ledger_guard import FieldGuardedLedger
from l7.engine.ratelimit import RateLimiter
from l7.engine.ratelimit_store import SqlBuckets
from l7.errors import ConfigError, L7Error
from l7.gateway.grant import (
    DEFAULT_GRANT_TTL_S,
    GrantIssuer,
    GrantVerifier,
    kid_of,
    load_or_create_grant_key,
)
from l7.gateway.server import create_gateway_server
from l7.gateway.service import GatewayService
from l7.identity import TokenVerifier
from l7.policy.bundle import DEFAULT_SIGNING_KEY, BuiltBundle, activate, verify_built, verify_lock
from l7.policy.evaluator import OpaEvaluator
from l7.policy.opa_process import BUNDLE_NAME, OpaProcess, find_opa
from l7.policy.readiness import PolicyReadiness, ReadinessGatedEvaluator
from l7.secrets.envelope import Envelope
from l7.secrets.interface import SecretStore
from l7.server.app import create_server
from l7.tls import client_credentials, server_tls
from ledger import EventType, LedgerClient, NewEvent, SqlLedger, open_ledger
from ledger.checkpointer import IntegrityMonitor
from ledger.files import private_dir
from ledger.remote import RemoteLedger

__all__ = ["REPO_ROOT", "Stack", "StackConfig", "check_production_posture", "connect_ledger"]

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StackConfig:
    env: str = "local"
    ledger_url: str = f"sqlite:///{REPO_ROOT / '.data' / 'ledger.sqlite'}"
    addr: str = "127.0.0.1:0"
    opa_url: str | None = None
    """Use an external OPA instead of starting one (no lock pinning then)."""
    opa_bin: Path | None = None
    repo_root: Path = REPO_ROOT
    work_dir: Path = REPO_ROOT / ".build"
    clock: Clock = field(default=_utcnow)
    verifier: TokenVerifier | None = None
    """Identity provider for callers and approvers (None: Decide is unauthenticated and
    authority calls are refused)."""
    sweep_interval_s: float = 30.0
    """How often pending decisions are checked for escalation and expiry (0: never)."""
    grant_key: Path | None = None
    """Engine's grant-signing key (created if missing); default <work_dir>/keys/grant.pem."""
    grant_ttl_s: int = DEFAULT_GRANT_TTL_S
    gateway: bool = False
    """Also run a gateway (Boundary B) in this process, on its own port."""
    secret_store: SecretStore | None = None
    """Where secret references are checked (engine) and resolved (gateway): OpenBao KV."""
    envelope: Envelope | None = None
    """OpenBao transit key sealing policy's envelope fields before they reach the ledger."""
    ledger_token: str | None = None
    """Bearer token (role writer) for a ledger reached over gRPC (ledger_url grpc://...)."""
    integrity_check_s: float = 0.0
    """Re-verify the ledger this often (0: never); a failure enters restriction mode."""
    bundle_signing_key: Path | None = None
    """ES256 key signing the locked bundle (created if missing);
    default <work_dir>/keys/bundle-signing.pem."""
    allow_rollback: bool = False
    """Activate a bundle revision older than the newest ever activated (--allow-rollback)."""
    rate_limit_url: str | None = None
    """PostgreSQL database for token buckets shared by every engine replica; default: the
    ledger's own database when ``ledger_url`` is PostgreSQL, else buckets per process."""
    opa_restart_s: float = 0.0
    """Check the OPA child this often and start it again on its port when it died (0: never;
    ``l7 serve`` uses 2). Until it is back every decision is DENY policy_store_degraded."""
    cert_dir: Path | None = None
    """mTLS for every tier (``l7 certs init`` layout): the engine and gateway ports require
    client certificates from this CA and accept only their allowed peers (``l7.tls.ACCEPTS``);
    a ``grpc://`` ledger is reached with the engine's certificate. None: plaintext loopback."""


def connect_ledger(
    url: str, *, token: str | None = None, credentials: grpc.ChannelCredentials | None = None
) -> LedgerClient:
    """``grpc://host:port`` reaches the ledger service (RemoteLedger, over mTLS with
    ``credentials``); anything else is a database URL opened in-process. Both are the same
    LedgerClient to the engine."""
    if url.startswith("grpc://"):
        meta = (("authorization", f"Bearer {token}"),) if token else ()
        return RemoteLedger(url.removeprefix("grpc://"), metadata=meta, credentials=credentials)
    return open_ledger(url)


def check_production_posture(config: StackConfig) -> None:
    """Production never runs open: callers must be identified (OIDC) and every tier must
    speak mTLS. Refuse to start otherwise, naming the missing flag."""
    if config.env != "production":
        return
    missing = [
        flag
        for flag, ok in (
            ("--oidc-issuer", config.verifier is not None),
            ("--tls-dir", config.cert_dir is not None),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            f"refusing to serve production without {' and '.join(missing)}: production "
            "requires authenticated callers and mTLS between the tiers (run `l7 certs init` "
            "for certificates)"
        )


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.bundle: BuiltBundle | None = None
        self.activation: dict[str, object] | None = None
        """The policy.activated payload (None: this revision was already active)."""
        self.opa: OpaProcess | None = None
        self.ledger: LedgerClient | None = None
        self.engine: Engine | None = None
        self.authority: AuthorityService | None = None
        self.breakglass: BreakGlassService | None = None
        self.server: grpc.Server | None = None
        self.port = 0
        self.gateway_server: grpc.Server | None = None
        self.gateway_port = 0
        self.grant_public_key_path: Path | None = None
        self.monitor: IntegrityMonitor | None = None
        self._stop_sweeper = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._opa_keeper: threading.Thread | None = None

    @property
    def target(self) -> str:
        host = self.config.addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def gateway_target(self) -> str:
        host = self.config.addr.rsplit(":", 1)[0]
        return f"{host}:{self.gateway_port}"

    def start(self) -> Stack:
        cfg = self.config
        check_production_posture(cfg)
        try:
            if cfg.opa_url:
                evaluator: PolicyEvaluator = OpaEvaluator(cfg.opa_url)
            else:
                opa_bin = find_opa(str(cfg.opa_bin) if cfg.opa_bin else None)
                self.bundle = verify_lock(
                    cfg.env,
                    repo_root=cfg.repo_root,
                    out_dir=cfg.work_dir / "bundles",
                    opa_bin=opa_bin,
                    signing_key=cfg.bundle_signing_key or cfg.work_dir / DEFAULT_SIGNING_KEY,
                )
                logs = cfg.work_dir / "logs"
                private_dir(logs)  # 0700: OPA's log can carry decision input
                verify_built(self.bundle)  # the file OPA is about to load is the one we signed
                self.opa = OpaProcess(
                    self.bundle.path,
                    opa_bin=opa_bin,
                    log_path=logs / f"opa-{cfg.env}.log",
                    signer=self.bundle.signer,
                    scope=self.bundle.scope,
                )
                self.opa.start()
                # Recorded only once OPA has accepted the signature; an unflagged rollback
                # raises here and the except below stops OPA before anything was judged.
                self.activation = activate(
                    cfg.env,
                    self.bundle,
                    work_dir=cfg.work_dir,
                    # local is a developer's own loop (edit, revert, serve again)
                    allow_rollback=cfg.allow_rollback or cfg.env == "local",
                )
                # Judge only while /v1/status shows the pinned revision active and its last
                # download verified recently (a tampered file on disk fails the next poll).
                evaluator = ReadinessGatedEvaluator(
                    OpaEvaluator(self.opa.url, expected_revision=self.bundle.revision),
                    PolicyReadiness(
                        self.opa.url, bundle=BUNDLE_NAME, expected_revision=self.bundle.revision
                    ),
                )
            self.ledger = connect_ledger(
                cfg.ledger_url,
                token=cfg.ledger_token,
                credentials=client_credentials(cfg.cert_dir, "engine") if cfg.cert_dir else None,
            )
            if self.activation is not None:
                # Every activation (and any rollback) of a signed revision is on the record.
                self.ledger.append(
                    [
                        NewEvent(
                            f"policy/{cfg.env}",
                            EventType.POLICY_ACTIVATED,
                            "l7-engine",
                            str(self.activation.get("revision", "")),
                            dict(self.activation),
                        )
                    ]
                )
            guarded = FieldGuardedLedger(self.ledger)
            self.engine = Engine(
                evaluator,
                guarded,  # a LedgerClient by delegation
                clock=cfg.clock,
                secrets=cfg.secret_store,
                envelope=cfg.envelope,
            )
            engine = self.engine
            guarded.rules = lambda: engine.secrets_config().get("ledger_fields")
            shared = cfg.rate_limit_url or (
                cfg.ledger_url if cfg.ledger_url.startswith("postgresql") else None
            )
            if shared:  # replicas share one set of buckets, or each would grant the burst
                engine.rate_limiter = RateLimiter(engine.rate_limits, store=SqlBuckets(shared))
            self.authority = AuthorityService(self.engine)
            self.breakglass = BreakGlassService(self.engine)
            key_path = cfg.grant_key or cfg.work_dir / "keys" / "grant.pem"
            grant_key = load_or_create_grant_key(key_path)
            self.grant_public_key_path = Path(str(key_path) + ".pub")
            issuer = GrantIssuer(
                grant_key, ttl_s=cfg.grant_ttl_s, clock=lambda: cfg.clock().timestamp()
            )
            self.server, self.port, _ = create_server(
                cfg.addr,
                self.engine,
                authority=self.authority,
                verifier=cfg.verifier,
                grants=issuer,
                breakglass=self.breakglass,
                tls=server_tls(cfg.cert_dir, "engine") if cfg.cert_dir else None,
            )
            self.server.start()
            if cfg.gateway:
                pub = grant_key.public_key()
                service = GatewayService(
                    guarded,
                    GrantVerifier({kid_of(pub): pub}, clock=lambda: cfg.clock().timestamp()),
                    clock=lambda: cfg.clock().timestamp(),
                    secrets=cfg.secret_store,
                )
                host = cfg.addr.rsplit(":", 1)[0]
                self.gateway_server, self.gateway_port = create_gateway_server(
                    f"{host}:0",
                    service,
                    tls=server_tls(cfg.cert_dir, "gateway") if cfg.cert_dir else None,
                )
                self.gateway_server.start()
            # A ledger service is audited over gRPC (Verify/Audit) exactly like a local file.
            if cfg.integrity_check_s > 0 and isinstance(self.ledger, SqlLedger | RemoteLedger):
                restriction = self.engine.restriction
                self.monitor = IntegrityMonitor(
                    self.ledger,
                    every_s=cfg.integrity_check_s,
                    on_failure=lambda e: restriction.enter(str(e)),
                )
                self.monitor.start()
            if cfg.opa_restart_s > 0 and self.opa is not None:
                self._opa_keeper = threading.Thread(
                    target=self._keep_opa, name="l7-opa-keeper", daemon=True
                )
                self._opa_keeper.start()
            if cfg.sweep_interval_s > 0:
                self._sweeper = threading.Thread(
                    target=self._sweep_loop, name="l7-sweeper", daemon=True
                )
                self._sweeper.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _keep_opa(self) -> None:
        """Supervise the OPA child: a crashed OPA is started again with the same signed
        bundle on the same port (readiness then re-checks it before anything is judged)."""
        while not self._stop_sweeper.wait(self.config.opa_restart_s):
            opa = self.opa
            if opa is None:
                return
            if opa.running():
                continue
            log.warning("OPA (policy store) is down; restarting it on %s", opa.url)
            try:
                opa.start()
            except L7Error as e:  # refused bundle, port taken, ...: deny on, retry next round
                log.warning("OPA restart failed: %s", e)

    def _sweep_loop(self) -> None:
        while not self._stop_sweeper.wait(self.config.sweep_interval_s):
            authority = self.authority
            if authority is None:
                return
            try:
                authority.sweep()
                if self.breakglass is not None:
                    self.breakglass.sweep()
            except L7Error as e:  # a degraded dependency: try again next round
                log.warning("sweep skipped: %s", e)

    def stop(self) -> None:
        self._stop_sweeper.set()
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
            self._sweeper = None
        if self._opa_keeper is not None:
            self._opa_keeper.join(timeout=30)
            self._opa_keeper = None
        if self.gateway_server is not None:
            self.gateway_server.stop(grace=2).wait(5)
            self.gateway_server = None
        if self.server is not None:
            self.server.stop(grace=2).wait(5)
            self.server = None
        self.authority = None
        if self.engine is not None:
            self.engine.rate_limiter.close()
            self.engine.close()
            self.engine = None
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        if self.opa is not None:
            self.opa.stop()
            self.opa = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
