"""The degraded-mode matrix of DESIGN §8, against the real dependencies.

One world is started for the module: a signed bundle in a real OPA child, the ledger
service as its own process over a real PostgreSQL cluster, a real OpenBao dev server
(OIDC issuer and KV secrets; the engine reaches its JWKS through a relay on its own
port), the engine and gateway in this process (``Stack``), and a second engine as its
own process behind the same gateway. Each row of ``ROWS`` then breaks one dependency
for real (SIGKILL, ``pg_ctl stop``, seal, a closed port, a row rewritten in the
database, a bad bundle file that OPA fetches on its next poll and must refuse) and the
one parametrized test asserts:

* a governed tool is refused with the row's (gRPC status, reason) and its body never runs;
* where the ledger is up and a decision was made, the refusal is on the record (read back
  from the ledger, with OPA's own reason for a refused bundle); where the refusal came
  before any decision (the ledger down, the caller's token unverifiable, the engine dead),
  the ledger holds nothing half-written;
* where the row says so, a grant issued before the break is refused by the gateway, and a
  signed approval is refused;
* after ``restore()`` the same Stack, Engine, OPA object and children serve again (the
  same grant is accepted, the approval counts, the tool runs): nothing else was restarted.

``world`` repairs every dependency and checks an ALLOW before each row, so one row's
damage cannot leak into the next.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from l7.authority.approval import ApprovalPayload, Rationale, Verdict, sign_approval
from l7.client import GovernanceClient, RemoteError
from l7.crypto import Ed25519Signer
from l7.errors import GatewayDegraded, PolicyStoreDegraded
from l7.gateway.client import Denied, GatewayClient, Governed, current_execution
from l7.identity import JwksUrl, JwtVerifier, claim_map_for_openbao
from l7.policy import verify_lock
from l7.policy.opa_process import OpaProcess, find_opa, free_port
from l7.secrets.refs import BaoSecretStore
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from l7.v1 import governance_pb2 as pb
from ledger import LedgerError, SqlLedger, StoredEvent
from tests.conftest import REPO, flip_one_byte, request, rewrite_bundle
from tests.integration.openbao import OpenBaoDev
from tests.ledger.postgres import PostgresCluster

pytestmark = pytest.mark.integration

T = TypeVar("T")
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED

SECRET_REF = "vault:secret/app/db#password"
JWKS_CACHE_S = 300.0
WHY = Rationale(summary="change reviewed in CAB-7", ticket="CAB-7")
# name: (level, role, scopes)
PEOPLE = {
    "alice": (1, "engineer", ["*"]),
    "mgr1": (3, "manager", ["data"]),
    "sec1": (4, "security", ["*"]),
}


# -- the real dependencies, and handles to break them --------------------------------------


class Child:
    """A Python child serving gRPC on a fixed loopback port: SIGKILL it, start it again on
    the same port. Readiness is the gRPC health service reporting ``service`` SERVING."""

    def __init__(self, name: str, argv: list[str], port: int, service: str, log: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.service = service
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 60) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.proc.poll() is None, f"{self.name} exited: {self.log.read_text()}"
                try:
                    r = stub.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(service=self.service), timeout=1
                    )
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, f"no {self.name}: {self.log.read_text()}"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class JwksRelay:
    """The issuer's key set as the engine reaches it: an HTTP relay on its own loopback port
    in front of OpenBao's JWKS. ``stop()`` makes the URL unreachable (connection refused),
    ``start()`` serves it again on the same port."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks"

    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        upstream = self.upstream

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                r = requests.get(upstream, timeout=5)
                self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


@dataclass
class SkewClock:
    """The JWKS cache's monotonic clock; ``skew`` lets a row age the cached keys out."""

    skew: float = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


@dataclass
class World:
    tmp: Path
    bao: OpenBaoDev
    jwks: JwksRelay
    jwks_clock: SkewClock
    pg: PostgresCluster
    pg_url: str
    ledger_proc: Child
    stack: Stack
    engine_proc: Child
    good_bundle: bytes
    bad_bundles: dict[str, bytes]
    secret_value: str
    signers: dict[str, Ed25519Signer] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    """OIDC tokens minted at setup (a sealed OpenBao mints none)."""
    lock_holder: Engine | None = None
    lock_conn: Connection | None = None
    """A database session holding the ledger's write lock (the write-unconfirmed row)."""
    tampered: tuple[int, str] | None = None
    """(global_seq, original body) of the row the corruption row rewrote."""

    @property
    def opa(self) -> OpaProcess:
        assert self.stack.opa is not None
        return self.stack.opa

    def token(self, who: str) -> str:
        return self.tokens[who]

    def client(self, who: str) -> GovernanceClient:
        return GovernanceClient(self.stack.target, token=self.token(who), timeout_s=10)

    def governed(self, *, engine_process: bool = False) -> Governed:
        if engine_process:  # the second engine has no identity provider: Decide is open
            return Governed(
                engine=self.engine_proc.target,
                gateway=self.stack.gateway_target,
                actor={"id": "alice", "role": "engineer", "level": 1},
                environment="dev",
                timeout_s=5,
            )
        return Governed(
            engine=self.stack.target,
            gateway=self.stack.gateway_target,
            actor={"id": "alice", "role": "engineer", "level": 1},
            environment="dev",
            token=self.token("alice"),
            timeout_s=5,
            bao_token=self.bao.user_token("alice"),
        )


def eventually(fn: Callable[[], T], *, seconds: float = 20, what: str = "") -> T:
    """``fn()`` once it stops raising (a restarted dependency being reconnected to)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except (
            LedgerError,
            RemoteError,
            GatewayDegraded,
            PolicyStoreDegraded,
            requests.RequestException,
        ) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or fn} did not recover in {seconds}s: {e}") from e
            time.sleep(0.2)


# -- bundles OPA must refuse ---------------------------------------------------------------


# -- the world -----------------------------------------------------------------------------

_ENGINE_MAIN = """
import signal, sys, threading
from pathlib import Path
from l7.stack import Stack, StackConfig
opa_url, ledger_url, addr, work_dir, grant_key = sys.argv[1:6]
stack = Stack(StackConfig(opa_url=opa_url, ledger_url=ledger_url, addr=addr,
                          work_dir=Path(work_dir), grant_key=Path(grant_key),
                          sweep_interval_s=0)).start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
stack.stop()
"""


def _setup_openbao(bao: OpenBaoDev, secret_value: str) -> None:
    for name, (level, role, scopes) in PEOPLE.items():
        bao.make_user(name, level, team="platform", scopes=scopes, roles=[role])
    bao.client.secrets.kv.v2.create_or_update_secret(
        path="app/db", secret={"password": secret_value}, mount_point="secret"
    )
    bao.grant_read("alice", "kv-app", ["secret/data/app/*"])  # alice's own capability


@pytest.fixture(scope="module")
def world_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("degraded")
    secret_value = secrets.token_urlsafe(18)  # made at run time, never committed
    bao = OpenBaoDev(work_dir=tmp / "openbao")
    (tmp / "openbao").mkdir()
    pg = PostgresCluster()
    jwks: JwksRelay | None = None
    ledger_proc: Child | None = None
    engine_proc: Child | None = None
    stack: Stack | None = None
    try:
        bao.start()
        _setup_openbao(bao, secret_value)
        jwks = JwksRelay(bao.jwks_url)
        jwks.start()
        pg.start()
        pg.sql('CREATE DATABASE "ledger"')
        pg_url = pg.url("ledger")
        SqlLedger(pg_url, create=True).close()  # the schema, migrated by its owner
        port = free_port()
        ledger_proc = Child(
            "ledger service",
            [sys.executable, "-m", "ledger.service", "--ledger", pg_url,
             "--addr", f"127.0.0.1:{port}", "--insecure-allow-all",
             "--insecure-tier", "engine"],  # its monitor may audit (Verify)
            port, "l7.ledger.v1.Ledger", tmp / "ledger-service.log",
        )  # fmt: skip
        ledger_proc.start()
        clock = SkewClock()
        verifier = JwtVerifier(
            JwksUrl(jwks.url, cache_ttl_s=JWKS_CACHE_S, min_refetch_interval_s=0, clock=clock),
            issuer=bao.issuer,
            audience=bao.audience,
            claim_map=claim_map_for_openbao(),
        )
        stack = Stack(
            StackConfig(
                env="local",
                ledger_url=f"grpc://{ledger_proc.target}",
                work_dir=tmp / "stack",
                verifier=verifier,
                secret_store=BaoSecretStore(bao.client),
                gateway=True,
                sweep_interval_s=0,
                integrity_check_s=3600,  # the corruption row runs the check itself
            )
        ).start()
        assert stack.bundle is not None and stack.opa is not None
        good = stack.bundle.path.read_bytes()
        other = verify_lock(  # the same policy, signed by a key OPA was not given
            "local",
            repo_root=REPO,
            out_dir=tmp / "other-bundles",
            opa_bin=find_opa(),
            signing_key=tmp / "other-keys" / "bundle-signing.pem",
        )
        bad = {
            "unsigned": rewrite_bundle(good, lambda n, d: None if n == ".signatures.json" else d),
            "wrong_key": other.path.read_bytes(),
            "tampered": rewrite_bundle(good, flip_one_byte("l7/gates/gates.rego")),
        }
        port = free_port()
        engine_proc = Child(
            "engine process",
            [sys.executable, "-c", _ENGINE_MAIN, stack.opa.url, f"grpc://{ledger_proc.target}",
             f"127.0.0.1:{port}", str(tmp / "stack"), str(tmp / "stack/keys/grant.pem")],
            port, "l7.v1.Governance", tmp / "engine-process.log",
        )  # fmt: skip
        engine_proc.start()
        w = World(
            tmp=tmp, bao=bao, jwks=jwks, jwks_clock=clock, pg=pg, pg_url=pg_url,
            ledger_proc=ledger_proc, stack=stack, engine_proc=engine_proc, good_bundle=good,
            bad_bundles=bad, secret_value=secret_value,
        )  # fmt: skip
        w.tokens = {name: bao.token_for(name) for name in PEOPLE}
        w.signers["mgr1"] = Ed25519Signer.generate(key_id="mgr1-ed25519")
        with w.client("sec1") as sec:
            s = w.signers["mgr1"]
            sec.register_key("mgr1", s.key_id, "ed25519", s.public_key_raw)
        yield w
    finally:
        for child in (engine_proc, ledger_proc):
            if child is not None:
                child.stop()
        if stack is not None:
            stack.stop()
        if jwks is not None:
            jwks.stop()
        pg.remove()
        bao.stop()


# -- what a row does to the world ------------------------------------------------------------


def _kill_opa(w: World) -> None:
    w.opa.kill()  # SIGKILL: OPA crashed


def _restore_opa(w: World) -> None:
    assert w.stack.bundle is not None
    w.stack.bundle.path.write_bytes(w.good_bundle)
    if not w.opa.running():
        w.opa.start()  # the same OpaProcess, the same port the evaluator knows
    _policy_ready(w)


REFUSALS = {
    "unsigned": r"bundle missing \.signatures\.json",
    "wrong_key": r"failed to verify JWT signature",
    "tampered": r"l7/gates/gates\.rego: digest mismatch",
}


def _policy_ready(w: World) -> None:
    """The engine's own evaluator judges again (OPA up, the pinned bundle verified)."""
    assert w.stack.engine is not None
    policy = w.stack.engine.policy
    eventually(lambda: policy.query("l7/config", "rate_limits", {}), what="the policy store")


def _serve_bundle(variant: str) -> Callable[[World], None]:
    """Put a bad bundle file where OPA fetches its bundle from: OPA re-downloads it on its
    next poll and must refuse it; the engine's evaluator then reports OPA's reason."""

    def break_(w: World) -> None:
        assert w.stack.bundle is not None and w.stack.engine is not None
        w.stack.bundle.path.write_bytes(w.bad_bundles[variant])
        policy = w.stack.engine.policy
        deadline = time.monotonic() + 20
        seen = ""
        while time.monotonic() < deadline:
            try:
                policy.query("l7/config", "rate_limits", {})
            except PolicyStoreDegraded as e:
                seen = str(e)
                if re.search(REFUSALS[variant], seen):
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"OPA did not refuse the {variant} bundle; last: {seen!r}")
        assert w.opa.running()  # refused and still up: nothing to restart

    return break_


def _ledger_reachable(w: World) -> None:
    assert w.stack.ledger is not None
    led = w.stack.ledger
    eventually(led.count, what="the engine's ledger connection")


def _kill_ledger(w: World) -> None:
    w.ledger_proc.kill()


def _restore_ledger(w: World) -> None:
    if not w.ledger_proc.running():
        w.ledger_proc.start()  # the same database, the same address
    _ledger_reachable(w)


def _stop_postgres(w: World) -> None:
    w.pg.stop()  # pg_ctl stop -m fast: every pooled connection of the ledger service dies


def _restore_postgres(w: World) -> None:
    if not (w.pg.data / "postmaster.pid").exists():
        w.pg.start()  # the same port
    _ledger_reachable(w)


def _hold_write_lock(w: World) -> None:
    """Another session takes the ledger's cross-process write lock and hangs on to it (a
    stuck writer): reads still work, but no append can be confirmed."""
    eng = create_engine(w.pg_url, poolclass=NullPool)
    w.lock_holder = eng
    conn = eng.connect()  # the admin (a superuser): beyond the lock function's fence
    conn.execute(text("LOCK TABLE ledger_write_lock IN EXCLUSIVE MODE"))  # until close
    w.lock_conn = conn


def _release_write_lock(w: World) -> None:
    if w.lock_conn is not None:
        w.lock_conn.close()  # the session ends: its transaction and the table lock with it
        w.lock_conn = None
    if w.lock_holder is not None:
        w.lock_holder.dispose()
        w.lock_holder = None


def _seal_openbao(w: World) -> None:
    w.bao.seal()


def _unseal_openbao(w: World) -> None:
    if w.bao.client.sys.is_sealed():
        w.bao.unseal()


def _cut_jwks(w: World) -> None:
    w.jwks.stop()
    w.jwks_clock.skew += JWKS_CACHE_S + 1  # the cached keys are due for a refetch


def _restore_jwks(w: World) -> None:
    if not w.jwks.running():
        w.jwks.start()


def _kill_engine(w: World) -> None:
    w.engine_proc.kill()


def _restore_engine(w: World) -> None:
    if not w.engine_proc.running():
        w.engine_proc.start()


def _admin_sql(w: World, statement: str, **params: Any) -> list[Any]:
    """As the database owner, with the append-only triggers off for this one statement:
    what an attacker with DBA rights (or a restore from backup) does."""
    eng = create_engine(w.pg_url)
    try:
        with eng.begin() as conn:
            conn.execute(text("ALTER TABLE events DISABLE TRIGGER USER"))
            result = conn.execute(text(statement), params)
            rows = list(result) if result.returns_rows else []
            for name in ("events_refuse_update_delete", "events_refuse_truncate"):
                conn.execute(text(f"ALTER TABLE events ENABLE ALWAYS TRIGGER {name}"))
        return rows
    finally:
        eng.dispose()


def _corrupt_chain(w: World) -> None:
    (seq, body) = _admin_sql(
        w,
        "SELECT global_seq, body FROM events WHERE event_type = 'policy.gate' "
        "ORDER BY global_seq DESC LIMIT 1",
    )[0]
    assert '"pass"' in body
    w.tampered = (seq, body)
    _admin_sql(
        w, "UPDATE events SET body = :b WHERE global_seq = :s",
        b=body.replace('"pass"', '"PASS"'), s=seq,
    )  # fmt: skip
    assert w.stack.monitor is not None
    failure = w.stack.monitor.check_now()  # the periodic audit, now
    assert failure is not None and failure.what == "hash_mismatch"


def _repair_chain(w: World) -> None:
    if w.tampered is not None:
        seq, body = w.tampered
        _admin_sql(w, "UPDATE events SET body = :b WHERE global_seq = :s", b=body, s=seq)
        w.tampered = None
    assert w.stack.monitor is not None and w.stack.engine is not None
    assert w.stack.monitor.check_now() is None  # the ledger verifies again
    if w.stack.engine.restriction.state().active:
        with w.client("sec1") as sec:  # an L4 clears restriction mode, on the record
            st = sec._call(
                "ClearRestriction",
                pb.ClearRestrictionRequest(reason="row restored from backup; verify passes"),
            )
        assert not st.active


# -- the matrix ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    dependency: str
    """The DESIGN §8 row this covers."""
    expect: tuple[grpc.StatusCode, str]
    """(gRPC status, ErrorInfo reason) of the refused governed call; OK + reason_code for an
    in-band DENY decision."""
    break_: Callable[[World], None]
    restore: Callable[[World], None]
    recorded: bool
    """The refusal is a DENY decision in the ledger (the ledger is up)."""
    probe: str = "read"
    """read: a plain governed read; secret: one needing a secret reference; engine: through
    the engine process."""
    gateway: tuple[grpc.StatusCode, str] | None = None
    """A grant issued before the break is refused by the gateway with this."""
    approval: bool = False
    """A signed approval is refused with ``expect`` too."""
    detail: str = ""
    """A pattern the recorded DENY's reasons match (what exactly was wrong)."""


POLICY = "OPA unreachable, bundle not activated, bundle signature invalid"
LEDGER = "ledger unreachable or write unconfirmed"
DESIGN_8 = (  # the rows of DESIGN §8, each covered below by at least one Row
    POLICY,
    LEDGER,
    "JWKS / identity unreachable",
    "engine unreachable",
    "ledger chain fails verification",
)
ROWS = [
    Row("opa_killed", POLICY, (OK, "policy_store_degraded"), _kill_opa, _restore_opa, True),
    Row("opa_bundle_unsigned", POLICY, (OK, "policy_store_degraded"),
        _serve_bundle("unsigned"), _restore_opa, True, detail=REFUSALS["unsigned"]),
    Row("opa_bundle_wrong_key", POLICY, (OK, "policy_store_degraded"),
        _serve_bundle("wrong_key"), _restore_opa, True, detail=REFUSALS["wrong_key"]),
    Row("opa_bundle_one_byte_tampered", POLICY, (OK, "policy_store_degraded"),
        _serve_bundle("tampered"), _restore_opa, True, detail=REFUSALS["tampered"]),
    Row("ledger_service_killed", LEDGER, (UNAVAILABLE, "ledger_degraded"), _kill_ledger,
        _restore_ledger, False, gateway=(UNAVAILABLE, "ledger_degraded")),
    Row("postgres_stopped", LEDGER, (UNAVAILABLE, "ledger_degraded"), _stop_postgres,
        _restore_postgres, False, gateway=(UNAVAILABLE, "ledger_degraded")),
    Row("ledger_write_unconfirmed", LEDGER, (UNAVAILABLE, "ledger_degraded"),
        _hold_write_lock, _release_write_lock, False, gateway=(UNAVAILABLE, "ledger_degraded")),
    Row("openbao_sealed", "secret store (OpenBao) unreachable", (OK, "secrets_degraded"),
        _seal_openbao, _unseal_openbao, True, probe="secret"),
    Row("jwks_unreachable", "JWKS / identity unreachable", (UNAVAILABLE, "identity_degraded"),
        _cut_jwks, _restore_jwks, False, approval=True),
    Row("engine_killed", "engine unreachable", (UNAVAILABLE, "gateway_degraded"), _kill_engine,
        _restore_engine, False, probe="engine"),
    Row("ledger_chain_corrupted", "ledger chain fails verification",
        (OK, "ledger_integrity_failed"), _corrupt_chain, _repair_chain, True,
        gateway=(PERMISSION_DENIED, "ledger_integrity_failed")),
]  # fmt: skip


def _repair_all(w: World) -> None:
    for row in ROWS:
        row.restore(w)


@pytest.fixture
def world(world_base: World) -> World:
    """The shared world, repaired and serving an ALLOW before each row."""
    _repair_all(world_base)
    ran: list[str] = []
    gov = world_base.governed()

    @gov.tool("data.read", target=lambda name: ("dataset", name))
    def read(name: str) -> dict[str, Any]:
        ran.append(name)
        return {"rows": 1}

    try:
        assert eventually(lambda: read("preflight"), what="the preflight read") == {"rows": 1}
    finally:
        gov.close()
    assert ran[-1:] == ["preflight"]
    return world_base


# -- the test ------------------------------------------------------------------------------


def _refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str]:
    """(status, reason, decision id or "") of a governed call that must not go through."""
    try:
        call()
    except Denied as e:  # an in-band DENY decision
        return OK, e.reason_code, e.decision_id
    except RemoteError as e:
        return e.code, e.reason, ""
    except GatewayDegraded as e:  # raised by the client: the engine did not answer
        return UNAVAILABLE, e.reason, ""
    raise AssertionError("the governed call went through while a dependency was down")


def _tool(w: World, probe: str, ran: list[str]) -> tuple[Governed, Callable[[str], Any]]:
    gov = w.governed(engine_process=probe == "engine")
    if probe == "secret":

        @gov.tool(
            "data.read", target=lambda name: ("dataset", name), payload=lambda name: {
                "db_password": SECRET_REF}
        )  # fmt: skip
        def read_with_secret(name: str) -> dict[str, Any]:
            secret = current_execution().secret(SECRET_REF)
            ran.append(name if secret == w.secret_value else f"{name}: wrong secret")
            return {"rows": 1}

        return gov, read_with_secret

    @gov.tool("data.read", target=lambda name: ("dataset", name))
    def read(name: str) -> dict[str, Any]:
        ran.append(name)
        return {"rows": 1}

    return gov, read


def _signed(w: World, who: str, d: dict[str, Any]) -> pb.SignedApproval:
    signer = w.signers[who]
    payload = ApprovalPayload.new(
        d["decision_id"], d["intent_hash"], Verdict.APPROVE, who, signer.key_id,
        ttl_s=600, now=int(time.time()), rationale=WHY,
    )  # fmt: skip
    s = sign_approval(payload, signer)
    return pb.SignedApproval(
        payload_json=json.dumps(s.payload.to_signed_dict()),
        method=s.method.value,
        signature=s.signature,
    )


def _stream(w: World, decision_id: str) -> list[StoredEvent]:
    assert w.stack.ledger is not None
    return list(w.stack.ledger.get_stream(decision_id))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_dependency_down_fails_closed_then_resumes(world: World, row: Row) -> None:
    w = world
    assert w.stack.engine is not None
    engine, opa, ledger = w.stack.engine, w.stack.opa, w.stack.ledger
    opa_pid, ledger_popen, engine_popen = w.opa.pid, w.ledger_proc.proc, w.engine_proc.proc
    ran: list[str] = []

    # Before the break: a grant the gateway will be asked to honour, a decision to approve.
    pre: tuple[dict[str, Any], str] | None = None
    if row.gateway is not None:
        req = request(actor="alice", target=("dataset", f"granted-{row.id}"))
        with w.client("alice") as c:
            r = c.decide_proto(request_to_proto(req))
        assert r.decision.outcome == pb.OUTCOME_ALLOW and r.grant
        pre = (req["action"], r.grant)
    pending: dict[str, Any] | None = None
    if row.approval:
        with w.client("alice") as c:
            pending = c.decide(
                request("data.delete", env="production", target=("table", "t"), actor="alice")
            )
        assert pending["status"] == "pending_authority"

    assert w.stack.ledger is not None
    count = w.stack.ledger.count()
    gov, tool = _tool(w, row.probe, ran)
    row.break_(w)
    try:
        try:
            code, reason, decision_id = _refusal(lambda: tool(f"during-{row.id}"))
        finally:
            gov.close()
        assert (code, reason) == row.expect
        assert ran == []  # the governed body never ran
        if row.recorded:
            events = _stream(w, decision_id)
            last = events[-1]
            assert (last.event_type, last.payload["outcome"], last.payload["reason_code"]) == (
                "enforcement.result", "DENY", row.expect[1],
            )  # fmt: skip
            assert not any(e.event_type.startswith("execution.") for e in events)
            assert re.search(row.detail, " ".join(last.payload["reasons"])), last.payload
        if pre is not None:
            gw = GatewayClient(w.stack.gateway_target, timeout_s=10)
            try:
                with pytest.raises(RemoteError) as ei:
                    gw.authorize(pre[1], pre[0], environment="dev")
            finally:
                gw.close()
            assert (ei.value.code, ei.value.reason) == row.gateway
        if pending is not None:
            with w.client("mgr1") as c, pytest.raises(RemoteError) as refused:
                c.approve(pending["decision_id"], _signed(w, "mgr1", pending))
            assert (refused.value.code, refused.value.reason) == row.expect
            assert "re-auth" in refused.value.message.lower()
            types = [e.event_type for e in _stream(w, pending["decision_id"])]
            assert "approval.added" not in types
    finally:
        row.restore(w)

    if not row.recorded:  # refused before anything was decided: nothing half-written
        assert w.stack.ledger.count() == count
    # The same objects serve again: nothing but the broken dependency was restarted.
    assert w.stack.engine is engine and w.stack.opa is opa and w.stack.ledger is ledger
    if row.id == "opa_killed":
        assert w.opa.pid != opa_pid
    else:
        assert w.opa.pid == opa_pid
    assert (w.ledger_proc.proc is ledger_popen) == (row.id != "ledger_service_killed")
    assert (w.engine_proc.proc is engine_popen) == (row.id != "engine_killed")
    if pre is not None:  # the very grant that was refused is honoured now
        gw = GatewayClient(w.stack.gateway_target, timeout_s=10)
        try:
            assert gw.authorize(pre[1], pre[0], environment="dev").execution_id
        finally:
            gw.close()
    if pending is not None:
        with w.client("mgr1") as c:
            d = c.approve(pending["decision_id"], _signed(w, "mgr1", pending))
        assert [a["approver"] for a in d["authority_progress"]["approvals"]] == ["mgr1"]
    gov, tool = _tool(w, row.probe, ran)
    try:
        assert tool(f"after-{row.id}") == {"rows": 1}
    finally:
        gov.close()
    assert ran == [f"after-{row.id}"]


def test_every_row_of_design_section_8_is_in_the_matrix() -> None:
    assert set(DESIGN_8) <= {r.dependency for r in ROWS}
    assert len({r.id for r in ROWS}) == len(ROWS)
