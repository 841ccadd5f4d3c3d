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
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.crypto import Ed25519Signer
from l7.domain import KNOWN_ENVIRONMENTS
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
from l7.gateway.service import GatewayService, parse_environments
from l7.identity import TokenVerifier
from l7.policy.activation import activate_recorded
from l7.policy.bundle import DEFAULT_SIGNING_KEY, BuiltBundle, verify_built, verify_lock
from l7.policy.evaluator import OpaEvaluator
from l7.policy.opa_process import BUNDLE_NAME, OpaProcess, find_opa
from l7.policy.readiness import PolicyReadiness, ReadinessGatedEvaluator
from l7.policy.signing import load_or_create_signing_key
from l7.posture import Requirement, check_server_posture
from l7.secrets.envelope import Envelope
from l7.secrets.interface import SecretStore
from l7.server.app import create_server
from l7.signed_ledger import SignedLedger
from l7.tls import client_credentials, server_tls
from l7.trust import TrustFile, load_tier_signer, load_trust
from ledger import IntegrityViolation, LedgerClient, LedgerError, SqlLedger, open_ledger
from ledger.attestation import Tier
from ledger.checkpoint import (
    Ed25519CheckpointSigner,
    default_origin,
    load_private_key,
    log_key,
    save_private_key,
)
from ledger.checkpointer import IntegrityMonitor
from ledger.files import private_dir
from ledger.remote import RemoteLedger
from ledger.witness import WitnessProcess
from ledger.witness_client import WitnessEndpoint

__all__ = [
    "REPO_ROOT",
    "Stack",
    "StackConfig",
    "check_production_posture",
    "connect_ledger",
]

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
    gateway_environments: tuple[str, ...] = ()
    """The environments the in-process gateway guards (it refuses any other with
    ``environment_mismatch``). Empty: the bundle environment when it is one policy judges
    (dev, staging, production), else (``local``, a developer's own loop) all three."""
    secret_store: SecretStore | None = None
    """Where secret references are checked (engine) and resolved (gateway): OpenBao KV."""
    envelope: Envelope | None = None
    """OpenBao transit key sealing policy's envelope fields before they reach the ledger."""
    ledger_token: str | None = None
    """Bearer token (role writer) for a ledger reached over gRPC (ledger_url grpc://...)."""
    integrity_check_s: float = 0.0
    """Re-verify the ledger this often (0: never); a failure enters restriction mode."""
    bundle_signing_key: Path | None = None
    """ES256 key signing the locked bundle (``--bundle-signing-key``). It must be pinned in
    the trust file's ``bundle_signers``; where the trust file says ``local_keys: false``
    (staging, production) it is required and never created. Default, under local keys
    only: <work_dir>/keys/bundle-signing.pem, created if missing."""
    allow_rollback: bool = False
    """Activate a bundle revision older than the newest ever activated (--allow-rollback)."""
    rate_limit_url: str | None = None
    """PostgreSQL database for token buckets shared by every engine replica; default: the
    ledger's own database when ``ledger_url`` is PostgreSQL, else buckets per process."""
    opa_restart_s: float = 0.0
    """Check the OPA child this often and start it again on its port when it died (0: never;
    ``l7 serve`` uses 2). Until it is back every decision is DENY policy_store_degraded."""
    trust_file: Path | None = None
    """Pinned tier keys (default ``bundles/<env>.trust.json`` plus, where it allows local
    keys, ``<work_dir>/trust/<env>.json``): which signatures make authority real."""
    tier_key: Path | None = None
    """The engine's tier signing key (default ``<work_dir>/keys/tier-engine.pem``, created
    only where the trust file allows local keys)."""
    gateway_tier_key: Path | None = None
    """The in-process gateway's tier key (default ``<work_dir>/keys/tier-gateway.pem``)."""
    cert_dir: Path | None = None
    """mTLS for every tier (``l7 certs init`` layout): the engine and gateway ports require
    client certificates from this CA and accept only their allowed peers (``l7.tls.ACCEPTS``);
    a ``grpc://`` ledger is reached with the engine's certificate. None: plaintext loopback."""
    checkpoints: bool = True
    """An in-process ledger signs continuous checkpoints (C2SP notes) with ``checkpoint_key``."""
    checkpoint_key: Path | None = None
    """Ed25519 checkpoint key (created if missing); default <work_dir>/keys/checkpoint.pem."""
    checkpoint_every_s: float = 1.0
    checkpoint_every_events: int = 1000
    origin: str | None = None
    """The log's origin line; default layer7.local/ledger/<env>."""
    local_witness: bool = False
    """Start one witness process (``python -m ledger.witness``, state in
    <work_dir>/witness/<env>) that cosigns the in-process ledger's checkpoints."""
    witnesses: tuple[WitnessEndpoint, ...] = ()
    """Further witnesses the in-process ledger sends its checkpoints to (and the monitor
    compares the ledger with)."""
    checkpoint_public_key: bytes | None = None
    """The checkpoint public key of a ledger service (``grpc://``), for the integrity monitor."""
    integrity_degraded_after_s: float | None = None
    integrity_full_every: int = 10
    """Every n-th integrity check re-reads the whole ledger; the others only what is new."""
    """Deny governed actions (``ledger_degraded``) once no integrity check has completed for
    this long (default: three monitor intervals)."""


def connect_ledger(
    url: str,
    *,
    token: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    **ledger_opts: Any,
) -> LedgerClient:
    """``grpc://host:port`` reaches the ledger service (RemoteLedger, over mTLS with
    ``credentials``); anything else is a database URL opened in-process (``ledger_opts`` go
    to ``SqlLedger``). Both are the same LedgerClient to the engine."""
    if url.startswith("grpc://"):
        meta = (("authorization", f"Bearer {token}"),) if token else ()
        return RemoteLedger(url.removeprefix("grpc://"), metadata=meta, credentials=credentials)
    return open_ledger(url, **ledger_opts)


def load_or_create_checkpoint_key(path: Path) -> Ed25519CheckpointSigner:
    """The in-process ledger's checkpoint signer from ``path`` (0600), created if missing."""
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            save_private_key(path, Ed25519PrivateKey.generate())
        return Ed25519CheckpointSigner(load_private_key(path))
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"checkpoint key {path}: {e}") from e


def check_production_posture(config: StackConfig) -> None:
    """Production (or a non-loopback address) never runs open: callers must be identified
    (OIDC) and every tier must speak mTLS. Refuse to start otherwise, naming the missing
    flags (the one posture every server shares: ``l7.posture``)."""
    check_server_posture(
        "the engine (l7 serve)",
        env=config.env,
        addr=config.addr,
        tls=config.cert_dir is not None,
        identity=(Requirement("--oidc-issuer", config.verifier is not None),),
    )


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.bundle: BuiltBundle | None = None
        self.activation: dict[str, object] | None = None
        """The policy.activated payload recorded in the ledger (None: this revision was
        already the active one)."""
        self.opa: OpaProcess | None = None
        self.ledger: LedgerClient | None = None
        """The engine's view of the ledger: appends signed as the engine, authority checked."""
        self.raw_ledger: LedgerClient | None = None
        """The ledger client itself (no signing, no checks): for audits and tests."""
        self.engine: Engine | None = None
        self.authority: AuthorityService | None = None
        self.breakglass: BreakGlassService | None = None
        self.server: grpc.Server | None = None
        self.port = 0
        self.gateway_server: grpc.Server | None = None
        self.gateway_port = 0
        self.grant_public_key_path: Path | None = None
        self.monitor: IntegrityMonitor | None = None
        self.witness: WitnessProcess | None = None
        self.checkpoint_vkey: str | None = None
        """The in-process ledger's checkpoint verifier key (for auditors and witnesses)."""
        self._stop_sweeper = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._opa_keeper: threading.Thread | None = None
        self.trust: TrustFile | None = None
        self._violations: set[tuple[str, int, str]] = set()
        self._violations_lock = threading.Lock()

    @property
    def target(self) -> str:
        host = self.config.addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    @property
    def gateway_target(self) -> str:
        host = self.config.addr.rsplit(":", 1)[0]
        return f"{host}:{self.gateway_port}"

    def _bundle_signing_key(self, trust: TrustFile) -> Path | None:
        """The key signing the locked bundle, refused before anything starts unless the
        trust file allows it: staging and production name a pinned key with
        ``--bundle-signing-key``; the engine never creates one for them."""
        cfg = self.config
        if cfg.opa_url:
            return None  # an external OPA: no bundle is built here
        signers = trust.signers()
        signers.require()
        if cfg.bundle_signing_key is None and not signers.own_key:
            pinned = ", ".join(s.kid for s in signers.pinned)
            raise ConfigError(
                f"refusing to serve {cfg.env} without --bundle-signing-key: its bundles may "
                f"be signed only by the keys {trust.path} pins ({pinned}), and an engine "
                f"never creates a signing key for {cfg.env}; pass the pinned key's file"
            )
        key = cfg.bundle_signing_key or cfg.work_dir / DEFAULT_SIGNING_KEY
        if signers.pinned:
            _, signer = load_or_create_signing_key(key, create=False)
            signers.check(signer)
        return key

    def start(self) -> Stack:
        cfg = self.config
        check_production_posture(cfg)
        try:
            # The ledger first: the rollback floor is its (signed) policy.activated history.
            trust = load_trust(
                cfg.env, repo_root=cfg.repo_root, work_dir=cfg.work_dir, override=cfg.trust_file
            )
            bundle_key = self._bundle_signing_key(trust)  # before any key or process is made
            engine_key, trust = load_tier_signer(
                Tier.ENGINE, trust, key_path=cfg.tier_key, work_dir=cfg.work_dir
            )
            gateway_key: Ed25519Signer | None = None
            if cfg.gateway or (trust.local_keys and cfg.gateway_tier_key is None):
                # a local stack pins a gateway key too, for `l7 gateway serve --work-dir`
                gateway_key, trust = load_tier_signer(
                    Tier.GATEWAY, trust, key_path=cfg.gateway_tier_key, work_dir=cfg.work_dir
                )
            self.trust = trust
            ledger_opts, monitor_key, witnesses = self._checkpointing()
            self.raw_ledger = raw = connect_ledger(
                cfg.ledger_url,
                token=cfg.ledger_token,
                credentials=client_credentials(cfg.cert_dir, "engine") if cfg.cert_dir else None,
                **ledger_opts,
            )
            if isinstance(raw, SqlLedger) and ledger_opts:
                _ = raw.origin  # a chain of another origin refuses here, not later
            self.ledger = signed = SignedLedger(
                raw,
                tier=Tier.ENGINE,
                signer=engine_key,
                keys=trust.keys,
                on_violation=self._on_violation,
            )
            if cfg.opa_url:
                evaluator: PolicyEvaluator = OpaEvaluator(cfg.opa_url)
            else:
                opa_bin = find_opa(str(cfg.opa_bin) if cfg.opa_bin else None)
                signers = trust.signers()
                self.bundle = verify_lock(
                    cfg.env,
                    repo_root=cfg.repo_root,
                    out_dir=cfg.work_dir / "bundles",
                    opa_bin=opa_bin,
                    signing_key=bundle_key,
                    signers=signers,
                )
                logs = cfg.work_dir / "logs"
                private_dir(logs)  # 0700: OPA's log can carry decision input
                # the file OPA is about to load is the one we signed, with a key pinned for env
                verify_built(self.bundle, signers.trusted(self.bundle.signer))
                self.opa = OpaProcess(
                    self.bundle.path,
                    opa_bin=opa_bin,
                    log_path=logs / f"opa-{cfg.env}.log",
                    signer=self.bundle.signer,
                    scope=self.bundle.scope,
                )
                self.opa.start()
                # Recorded only once OPA has accepted the signature; an unflagged rollback
                # (judged against the ledger's history, never only the local cache) raises
                # here and the except below stops OPA before anything was judged.
                self.activation = activate_recorded(
                    cfg.env,
                    self.bundle,
                    self.ledger,
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
            guarded = FieldGuardedLedger(signed)
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
            if cfg.verifier is None:
                log.warning(
                    "identity is off: reads (GetDecision, GetGrant, GetRestriction) are open "
                    "to every local process on %s, unrecorded; start with --oidc-issuer to "
                    "authorize and record them",
                    self.target,
                )
            service: GatewayService | None = None
            if cfg.gateway:
                pub = grant_key.public_key()
                assert gateway_key is not None
                service = GatewayService(
                    FieldGuardedLedger(
                        SignedLedger(
                            raw,
                            tier=Tier.GATEWAY,
                            signer=gateway_key,
                            keys=trust.keys,
                            on_violation=self._on_violation,
                        ),
                        rules=guarded.rules,
                    ),
                    GrantVerifier({kid_of(pub): pub}, clock=lambda: cfg.clock().timestamp()),
                    environments=parse_environments(
                        cfg.gateway_environments
                        or ((cfg.env,) if cfg.env in KNOWN_ENVIRONMENTS else KNOWN_ENVIRONMENTS)
                    ),
                    policy_env=cfg.env,
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
            if cfg.integrity_check_s > 0 and isinstance(raw, SqlLedger | RemoteLedger):
                restriction = self.engine.restriction
                self.monitor = IntegrityMonitor(
                    raw,
                    every_s=cfg.integrity_check_s,
                    on_failure=lambda e: restriction.enter(str(e)),
                    public_key=monitor_key,
                    origin=cfg.origin or default_origin(cfg.env) if ledger_opts else None,
                    witnesses=witnesses,
                    degraded_after_s=cfg.integrity_degraded_after_s,
                    tier_keys=trust.keys,
                    full_every=cfg.integrity_full_every,
                )
                # A monitor that cannot run for too long denies governed actions.
                restriction.health = self.monitor.degraded
                if service is not None:
                    service.restriction.health = self.monitor.degraded
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

    def _on_violation(self, violation: IntegrityViolation) -> None:
        """An unsigned or mis-signed authority event was read: enter restriction mode, once
        per event (each later read is refused all the same)."""
        key = (violation.decision_id, violation.sequence, violation.what)
        with self._violations_lock:
            if key in self._violations:
                return
            self._violations.add(key)
        log.error("ledger integrity: %s", violation)
        engine = self.engine
        if engine is not None:
            engine.restriction.enter(str(violation))

    def _checkpointing(
        self,
    ) -> tuple[dict[str, object], bytes | None, list[WitnessEndpoint]]:
        """(SqlLedger options, the monitor's checkpoint public key, the witnesses): an
        in-process ledger signs continuous checkpoints, cosigned by the configured
        witnesses and, with ``local_witness``, by one witness process started here."""
        cfg = self.config
        witnesses = list(cfg.witnesses)
        if cfg.ledger_url.startswith("grpc://") or not cfg.checkpoints:
            return {}, cfg.checkpoint_public_key, witnesses
        signer = load_or_create_checkpoint_key(
            cfg.checkpoint_key or cfg.work_dir / "keys" / "checkpoint.pem"
        )
        origin = cfg.origin or default_origin(cfg.env)
        vkey = log_key(origin, signer.public_key_raw)
        self.checkpoint_vkey = vkey.encode()
        if cfg.local_witness:
            logs = cfg.work_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            try:
                self.witness = WitnessProcess(
                    cfg.work_dir / "witness" / cfg.env,
                    [vkey],
                    name=f"layer7.local/witness/{cfg.env}",
                    log_path=logs / f"witness-{cfg.env}.log",
                ).start()
            except OSError as e:
                raise ConfigError(f"the local witness did not start: {e}") from e
            assert self.witness.vkey is not None
            witnesses.append(WitnessEndpoint(self.witness.url, self.witness.vkey))
        opts: dict[str, object] = {
            "checkpoint_signer": signer,
            "origin": origin,
            "witnesses": witnesses,
            "checkpoint_every_s": cfg.checkpoint_every_s,
            "checkpoint_every_events": cfg.checkpoint_every_events,
        }
        return opts, signer.public_key_raw, witnesses

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
        self.ledger = None
        if self.raw_ledger is not None:
            try:
                self.raw_ledger.close()  # signs (and has witnessed) a last checkpoint
            except LedgerError as e:
                log.warning("closing the ledger: %s", e)
            self.raw_ledger = None
        if self.witness is not None:
            self.witness.stop()
            self.witness = None
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
