"""Soak with faults: sustained mixed load while a chaos loop kills real dependencies.

    python -m tests.soak.run --duration 300 --seed 42      # make soak (SOAK_SECONDS=...)

Topology, every part a real process on 127.0.0.1 free ports, started and stopped here:

    PostgreSQL (throwaway cluster, synchronous_commit=on)
      <- ledger service   (l7 ledger serve, own process, callers need a 'writer' JWT)
      <- engine           (l7 serve --ledger grpc://..., with its OPA child; RSS is sampled)
      <- gateway          (l7 gateway serve --ledger grpc://...)
    OpenBao dev server: the OIDC issuer of every caller and approver.

Load (one thread each, sustained until the deadline):

    allow       Decide (data.read, dev) -> Authorize at the gateway -> run a fake tool
                (recorded in memory: decision, execution id, grant jti) -> ConfirmExecution;
                now and then the used grant is presented again and must be refused
    queue       Decide (data.delete, staging) -> QUEUE -> two signed approvals by
                managers (ed25519, or an OpenBao transit key for mgr3) -> GetGrant ->
                Authorize -> execute -> confirm
    breakglass  an L4 opens break-glass -> Authorize -> execute -> confirm -> another L4
                reviews

Chaos: every few seconds one dependency (shuffled rounds over OPA, ledger service, OpenBao,
PostgreSQL) gets SIGKILL and is brought back after a short random downtime:

    opa       the engine's `opa run` child; if the engine does not bring OPA back itself
              within a grace period, the harness starts the same command line again (an
              external supervisor, like systemd would) and says so in the report
    ledger    the ledger service process, restarted on the same port
    openbao   the dev server keeps its state in memory: it is restarted on the same port
              and re-provisioned (users, groups, OIDC role, mgr3's transit key, which is
              registered again under a new key id); OIDC keys are new, so clients re-mint
              tokens after `token_invalid`
    postgres  the postmaster and all its backends; `pg_ctl start` on the same data/port

Errors during chaos are expected and counted by operation, gRPC status and reason.

Invariants, checked after every dependency is back and the system answered again:

    faults_restored         every killed dependency was brought back (by the harness, or
                            by the engine for OPA)
    recovered               a full allow path (decide, authorize, confirm) succeeds again
    executed_authorized     every tool that ran has a confirmed execution.authorized event
                            for its decision and execution id (the very event confirmed)
    confirmations_in_ledger every ledger confirmation (global_seq, hash, event id) returned
                            to a client is present and identical in the ledger
    ledger_verify           `l7 ledger verify` over the PostgreSQL ledger exits 0
    single_use_grants       no grant jti ran twice; the ledger holds at most one
                            execution.authorized per decision and per execution id; no
                            replayed grant was accepted
    rss_growth              engine RSS grows < 10% from a post-warm-up sample to the end

The report is printed and written as JSON (default .build/soak/last.json).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import hvac
import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from l7.authority.approval import ApprovalPayload, Rationale, Verdict, sign_approval
from l7.client import RemoteError, _remote_error, decision_json
from l7.crypto import Ed25519Signer, Signer, TransitSigner
from l7.devstack.openbao import OpenBaoDev
from l7.errors import L7Error
from l7.policy.opa_process import free_port
from l7.server.convert import request_to_proto
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc
from ledger import open_ledger
from ledger.pg_roles import provision
from tests.ledger.postgres import PostgresCluster

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".build" / "soak" / "last.json"
TARGETS = ("opa", "ledger", "openbao", "postgres")
RSS_LIMIT = 0.10
ENGINE_FIRST_SWEEP_S = 30.0  # StackConfig.sweep_interval_s, which `l7 serve` uses
LEDGER_ISSUER = "https://ledger-callers.soak.invalid"
AUDIENCE = "layer7"
# name: (level, scopes, role)
PEOPLE = {
    "alice": (1, ["*"], "engineer"),  # the requester
    "mgr1": (3, ["data"], "manager"),
    "mgr2": (3, ["data"], "manager"),
    "mgr3": (3, ["data"], "manager"),
    "sec1": (4, ["*"], "security"),
    "sec2": (4, ["*"], "security"),
}
APPROVERS = ("mgr1", "mgr2", "mgr3")
TRANSIT_APPROVER = "mgr3"
WHY = Rationale(summary="soak: reviewed change", ticket="SOAK-1")
BG_TEXT = "soak test: rolling a service back by hand during a simulated outage"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- configuration and records -----------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 300.0
    seed: int = 0
    work_dir: Path | None = None
    """Logs and data (default: a fresh temporary directory, removed unless keep)."""
    out: Path = DEFAULT_OUT
    keep: bool = False
    fault_every_s: tuple[float, float] = (2.0, 5.0)
    downtime_s: tuple[float, float] = (0.5, 2.5)
    warmup_s: float = 0.0
    """When the RSS baseline is taken (0: a quarter of the run, at least 10 s)."""
    settle_s: float = 90.0
    """Upper bound on waiting for the system to answer again after the last fault."""
    opa_grace_s: float = 3.0
    workers: tuple[str, ...] = ("allow", "allow", "queue", "breakglass")
    """One load thread per entry (allow, queue, breakglass)."""
    chaos: bool = True
    """False: load only (to tell what the faults cost from what the load costs)."""
    """How long the engine gets to bring OPA back itself before the harness does."""


@dataclass(frozen=True)
class Conf:
    """A ledger confirmation as a client received it."""

    op: str
    decision_id: str
    global_seq: int
    hash: str
    event_id: str


@dataclass(frozen=True)
class Execution:
    """A fake tool run: only ever after Authorize returned."""

    path: str
    decision_id: str
    execution_id: str
    jti: str
    authorized: Conf
    confirmation_token: str = ""
    """What Authorize returned to this executor; ConfirmExecution requires it."""


@dataclass
class ChaosEvent:
    target: str
    at_s: float
    downtime_s: float
    restart_s: float = 0.0
    restarted_by: str = ""
    ok: bool = False
    error: str = ""


def _claims(grant: str) -> dict[str, Any]:
    """The grant's claims, read from the JWS payload (the gateway verifies them)."""
    part = grant.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def _jti(grant: str) -> str:
    """The grant's single-use id."""
    return str(_claims(grant)["jti"])


def _conf(op: str, decision_id: str, c: pb.LedgerConfirmation) -> Conf:
    return Conf(op, decision_id, int(c.global_seq), str(c.hash), str(c.event_id))


# -- processes ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait_health(
    target: str,
    service: str,
    timeout_s: float,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{service} exited ({proc.returncode}): {_tail(log_path)}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)  # type: ignore[attr-defined]
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service} at {target} not serving: {_tail(log_path)}")
            time.sleep(0.1)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class SoakPostgres(PostgresCluster):
    """The test cluster, but commits wait for the WAL write: a killed server must not lose
    a commit it already confirmed (fsync stays off: the OS is not what is being killed)."""

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """As the base class, but drops privileges with setpriv instead of ``user=``: that
        makes subprocess fork() and run gRPC's fork handlers in a process whose channels
        are busy, which aborts the child (pg_ctl "failed (-6)"); without it Python uses
        vfork, as for every other child here."""
        cmd = [str(self.bin / tool), *args]
        if self.user is not None:
            uid, gid = self.user
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.dir,
            env={**os.environ, "LC_ALL": "C"}, timeout=90,
        )  # fmt: skip
        if proc.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}"
            )
        return proc

    def start(self) -> SoakPostgres:
        port = self.port or free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={self.sock} "
            "-c fsync=off -c synchronous_commit=on -c full_page_writes=off "
            "-c max_connections=200"
        )
        # Lock files left by a SIGKILL name a postmaster that may linger as a zombie (the
        # init of a container does not always reap); postgres takes a zombie for alive.
        for lock in (self.data / "postmaster.pid", *self.sock.glob(".s.PGSQL.*.lock")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _alive(int(lock.read_text().split()[0])):
                    lock.unlink()
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "start",
        )
        self.port = port
        return self

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (an OOM kill or a crashed host)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.05)


class Service:
    """A child process with a gRPC health check (ledger service, engine, gateway)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        target: str,
        health: str,
        log_path: Path,
        env: dict[str, str],
    ) -> None:
        self.name, self.args, self.target, self.health = name, args, target, health
        self.log_path, self.env = log_path, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        _wait_health(self.target, self.health, timeout_s, self.proc, self.log_path)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _l7(*args: str) -> list[str]:
    return [sys.executable, "-m", "l7.cli.main", *args]


# -- identities --------------------------------------------------------------------------


class Identities:
    """OIDC tokens minted by OpenBao, cached; re-minted after token_invalid. The chaos thread
    holds ``lock`` while it kills or re-provisions OpenBao."""

    def __init__(self, bao: OpenBaoDev) -> None:
        self.bao = bao
        self.lock = threading.Lock()
        self._tokens: dict[str, str] = {}

    def token(self, name: str) -> str:
        with self.lock:
            if name not in self._tokens:
                self._tokens[name] = self.bao.token_for(name)
            return self._tokens[name]

    def invalidate(self, name: str) -> None:
        with self.lock:
            self._tokens.pop(name, None)


class IdentityUnavailable(Exception):
    pass


def _ledger_token_keys(work: Path) -> tuple[Ed25519PrivateKey, Path]:
    """The ledger service's callers (engine, gateway) are services: they carry a JWT from a
    static issuer whose JWKS is a file, so an OpenBao restart does not lock them out."""
    key = Ed25519PrivateKey.generate()
    x = key.public_key().public_bytes_raw()
    jwks = {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": "soak-ledger-1",
                "alg": "EdDSA",
                "use": "sig",
                "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode(),
            }
        ]
    }
    path = work / "ledger-callers.jwks.json"
    path.write_text(json.dumps(jwks))
    return key, path


def _service_token(key: Ed25519PrivateKey, subject: str, ttl_s: int, tier: str) -> str:
    now = int(time.time())
    claims = {
        "iss": LEDGER_ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "roles": ["writer", f"tier:{tier}"],
        "level": 1,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "soak-ledger-1"})


# -- the harness -------------------------------------------------------------------------


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if cfg.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="l7-soak-")
            self.work = Path(self._tmp.name)
        else:
            self.work = cfg.work_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self.l7_work = self.work / "l7"
        """--work-dir of every l7 process: the tier keys they share, bundles, grant key."""
        self.stop_load = threading.Event()
        self.lock = threading.Lock()
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.exceptions: list[str] = []
        self.violations: list[str] = []
        self.confirmations: list[Conf] = []
        self.executions: list[Execution] = []
        self.unconfirmed: list[Execution] = []
        self.unreviewed: list[tuple[str, str]] = []
        self.chaos: list[ChaosEvent] = []
        self.notes: list[str] = []
        self.rss_samples: list[tuple[float, int, int]] = []
        """(seconds into the run, engine VmRSS kB, engine threads)"""
        self.rss_baseline: int | None = None
        self.rss_baseline_at = 0.0
        self.first_round_at: float | None = None
        self.engine_started = 0.0
        """When every kind of fault had happened once (seconds into the run)."""
        self.harness_opa: list[subprocess.Popen[bytes]] = []
        self.t0 = 0.0
        self.pg: SoakPostgres | None = None
        self.bao: OpenBaoDev | None = None
        self.ids: Identities | None = None
        self.ledger_svc: Service | None = None
        self.engine: Service | None = None
        self.gateway: Service | None = None
        self.admin_url = ""
        self.signers: dict[str, Signer] = {}
        self.transit_epoch = 0

    # -- bring-up --------------------------------------------------------------------------

    def start(self) -> None:
        log(f"seed {self.cfg.seed}, duration {self.cfg.duration_s:g}s, work dir {self.work}")
        (self.work / "openbao").mkdir(exist_ok=True)
        self.bao = OpenBaoDev(work_dir=self.work / "openbao").start()
        for name, (level, scopes, role) in PEOPLE.items():
            self.bao.make_user(name, level, team="platform", scopes=scopes, roles=[role])
        self.ids = Identities(self.bao)

        self.pg = SoakPostgres()
        self.pg.start()
        self.pg.sql('CREATE DATABASE "soak_ledger"')
        self.admin_url = self.pg.url("soak_ledger")
        app_url = provision(self.admin_url, "l7_soak_app", secrets.token_urlsafe(18))

        key, jwks = _ledger_token_keys(self.work)
        ttl = int(self.cfg.duration_s + self.cfg.settle_s + 3600)
        ledger_port = free_port()
        self.ledger_svc = Service(
            "ledger",
            _l7(
                "ledger",
                "serve",
                "--ledger",
                app_url,
                "--addr",
                f"127.0.0.1:{ledger_port}",
                "--oidc-issuer",
                LEDGER_ISSUER,
                "--jwks-file",
                str(jwks),
                "--work-dir",
                str(self.l7_work),
            ),
            f"127.0.0.1:{ledger_port}",
            "l7.ledger.v1.Ledger",
            self.work / "ledger.log",
            {},
        )
        self.ledger_svc.start()
        engine_port, gw_port = free_port(), free_port()
        self.engine = Service(
            "engine",
            _l7(
                "serve",
                "--env",
                "local",
                "--addr",
                f"127.0.0.1:{engine_port}",
                "--ledger",
                f"grpc://127.0.0.1:{ledger_port}",
                "--oidc-issuer",
                self.bao.issuer,
                "--subject-claim",
                "name",
                "--integrity-every-s",
                "0",
                "--work-dir",
                str(self.l7_work),
            ),
            f"127.0.0.1:{engine_port}",
            "l7.v1.Governance",
            self.work / "engine.log",
            {"L7_LEDGER_TOKEN": _service_token(key, "l7-engine", ttl, "engine")},
        )
        self.engine.start(timeout_s=120)
        self.engine_started = time.monotonic()
        pub = self._grant_public_key()
        self.gateway = Service(
            "gateway",
            _l7(
                "gateway",
                "serve",
                "--addr",
                f"127.0.0.1:{gw_port}",
                "--ledger",
                f"grpc://127.0.0.1:{ledger_port}",
                "--gateway-id",
                "soak-gw",
                "--env",
                "dev,staging",
                "--grant-public-key",
                str(pub),
                "--work-dir",
                str(self.l7_work),
            ),
            f"127.0.0.1:{gw_port}",
            "l7.v1.Gateway",
            self.work / "gateway.log",
            {"L7_LEDGER_TOKEN": _service_token(key, "soak-gw", ttl, "gateway")},
        )
        self.gateway.start()
        self._gov_ch = grpc.insecure_channel(self.engine.target)
        self._gw_ch = grpc.insecure_channel(self.gateway.target)
        self.gov = pb_grpc.GovernanceStub(self._gov_ch)
        self.gw = gpb_grpc.GatewayStub(self._gw_ch)
        # Approvers' keys are registered by an L4 and live in the ledger. mgr1 and mgr2
        # sign with ed25519 keys held here (they survive every restart); mgr3 signs with an
        # OpenBao transit key, which a restarted dev server no longer has: it is created
        # and registered again after each OpenBao restart (_provision_transit).
        for name in APPROVERS[:2]:
            s = Ed25519Signer.generate(key_id=f"{name}-soak")
            self.signers[name] = s
            self._call(
                "sec1",
                "RegisterKey",
                pb.RegisterKeyRequest(
                    subject=name, key_id=s.key_id, method="ed25519", public_key=s.public_key_raw
                ),
            )
        self._provision_transit()
        # The approvers' and L4s' first look at their queues. The engine builds its pending
        # and break-glass indexes on first use by scanning the whole ledger once; done here
        # (as `l7 pending` would) rather than by the sweep 30 s in, under load, whose
        # one-time cost would otherwise read as growth.
        self._call("mgr1", "ListPending", pb.ListPendingRequest(limit=10))
        self._call("sec1", "ListBreakGlass", pb.ListBreakGlassRequest())
        log(
            f"up: engine {self.engine.target} (pid {self.engine_pid}), gateway "
            f"{self.gateway.target}, ledger service {self.ledger_svc.target}, PostgreSQL "
            f"127.0.0.1:{self.pg.port}, OpenBao {self.bao.url}, OPA pid {self._opa_pid()}"
        )

    def _provision_transit(self) -> None:
        """A transit key for mgr3 in (this instance of) OpenBao, registered with the engine
        under a new key id; until then mgr3's approvals fail (counted) and others count."""
        assert self.bao is not None and self.ids is not None
        self.transit_epoch += 1
        with self.ids.lock:
            self.bao.enable_transit()
            self.bao.create_transit_key(TRANSIT_APPROVER)
            as_user = hvac.Client(url=self.bao.url, token=self.bao.user_token(TRANSIT_APPROVER))
            public = self.bao.transit_public_key(TRANSIT_APPROVER)
        signer = TransitSigner(
            as_user, TRANSIT_APPROVER, key_version=1,
            key_id=f"{TRANSIT_APPROVER}-transit-{self.transit_epoch}",
        )  # fmt: skip
        req = pb.RegisterKeyRequest(
            subject=TRANSIT_APPROVER, key_id=signer.key_id, method="vault-transit",
            public_key=public,
        )  # fmt: skip
        if self._retry("register_key", lambda: self._call("sec1", "RegisterKey", req),
                       attempts=20, pause_s=0.5) is None:  # fmt: skip
            self.notes.append(f"transit key {signer.key_id} could not be registered")
            return
        self.signers[TRANSIT_APPROVER] = signer

    def _grant_public_key(self) -> Path:
        assert self.engine is not None
        for line in self.engine.log_path.read_text(errors="replace").splitlines():
            if "grant key" in line and ":" in line:
                return Path(line.split(":", 1)[1].split("(")[0].strip())
        return self.l7_work / "keys" / "grant.pem.pub"

    @property
    def engine_pid(self) -> int:
        assert self.engine is not None and self.engine.proc is not None
        return self.engine.proc.pid

    def _opa_pid(self) -> int | None:
        """The engine's `opa run` child, or one the harness started in its place."""
        for c in _children(self.engine_pid):
            args = _cmdline(c)
            if len(args) > 1 and Path(args[0]).name == "opa" and args[1] == "run" and _alive(c):
                return c
        for p in self.harness_opa:
            if p.poll() is None:
                return p.pid
        return None

    # -- calls -----------------------------------------------------------------------------

    def _call(self, who: str | None, method: str, req: Any, *, stub: Any = None) -> Any:
        assert self.ids is not None
        meta: tuple[tuple[str, str], ...] = ()
        if who is not None:
            try:
                meta = (("authorization", f"Bearer {self.ids.token(who)}"),)
            except Exception as e:  # OpenBao down: no token to be had
                raise IdentityUnavailable(f"cannot mint a token for {who}: {e}") from e
        try:
            return getattr(stub or self.gov, method)(req, timeout=10, metadata=meta)
        except grpc.RpcError as e:
            err = _remote_error(e)
            if who is not None and err.reason in ("token_invalid", "unauthenticated"):
                self.ids.invalidate(who)
            raise err from None

    def _record(self, conf: Conf) -> None:
        with self.lock:
            self.confirmations.append(conf)

    def _op(self, op: str, fn: Callable[[], Any]) -> Any:
        """Run one call; count it as ok or by its error. Returns None on error."""
        try:
            out = fn()
        except RemoteError as e:
            with self.lock:
                self.errors[f"{op} {e.code.name} {e.reason}"] += 1
            return None
        except IdentityUnavailable:
            with self.lock:
                self.errors[f"{op} - identity_unavailable (token mint)"] += 1
            return None
        except L7Error as e:  # refused before the call (e.g. the transit signer is down)
            with self.lock:
                self.errors[f"{op} local {e.reason}"] += 1
            return None
        except Exception as e:
            with self.lock:
                self.errors[f"{op} - exception {type(e).__name__}"] += 1
                if len(self.exceptions) < 10:
                    self.exceptions.append(traceback.format_exc(limit=6))
            return None
        with self.lock:
            self.ops[op] += 1
        return out if out is not None else True

    def _retry(
        self,
        op: str,
        fn: Callable[[], Any],
        attempts: int = 4,
        pause_s: float = 0.5,
        stop_on: tuple[str, ...] = (),
    ) -> Any:
        """``fn`` until it succeeds, a reason in ``stop_on`` comes back (returned as
        ``("stop", reason)``), or attempts run out (None)."""
        for _ in range(attempts):
            try:
                out = fn()
            except RemoteError as e:
                with self.lock:
                    self.errors[f"{op} {e.code.name} {e.reason}"] += 1
                if e.reason in stop_on:
                    return ("stop", e.reason)
            except IdentityUnavailable:
                with self.lock:
                    self.errors[f"{op} - identity_unavailable (token mint)"] += 1
            except L7Error as e:  # refused before the call (e.g. the transit signer is down)
                with self.lock:
                    self.errors[f"{op} local {e.reason}"] += 1
            except Exception as e:
                with self.lock:
                    self.errors[f"{op} - exception {type(e).__name__}"] += 1
                    if len(self.exceptions) < 10:
                        self.exceptions.append(traceback.format_exc(limit=6))
            else:
                with self.lock:
                    self.ops[op] += 1
                return out
            if self.stop_load.is_set() and op not in ("confirm", "breakglass.review"):
                return None
            time.sleep(pause_s)
        return None

    # -- the three paths -------------------------------------------------------------------

    def _execute(self, path: str, grant: str, action: dict[str, Any], rng: random.Random) -> bool:
        """Authorize -> run the fake tool -> confirm. True when the tool ran."""
        req = gpb.AuthorizeRequest(
            grant=grant,
            action=request_to_proto({"action": action}).action,
            environment=str(_claims(grant).get("environment", "")),  # where the tool runs
        )
        jti = _jti(grant)
        r = self._retry(
            "authorize",
            lambda: self._call(None, "Authorize", req, stub=self.gw),
            stop_on=(
                "grant_replayed",
                "not_authorized",
                "action_mismatch",
                "grant_invalid",
                "grant_expired",
            ),
        )
        if r is None or isinstance(r, tuple):
            if isinstance(r, tuple) and r[1] == "grant_replayed":
                with self.lock:  # an earlier try was consumed but never acknowledged
                    self.ops["authorize.unacknowledged_consumed"] += 1
            return False
        conf = _conf("authorize", r.decision_id, r.ledger)
        self._record(conf)
        if r.execution_id != jti:
            self.violations.append(f"authorize returned execution {r.execution_id} for jti {jti}")
        ex = Execution(path, r.decision_id, r.execution_id, jti, conf, r.confirmation_token)
        with self.lock:
            self.executions.append(ex)  # the fake tool ran
            self.ops[f"execute.{path}"] += 1
        if rng.random() < 0.15:  # the same grant again: must never run twice
            self._replay(grant, req)
        self._confirm(ex)
        return True

    def _replay(self, grant: str, req: gpb.AuthorizeRequest) -> None:
        with self.lock:
            self.ops["replay.attempt"] += 1
        try:
            r = self._call(None, "Authorize", req, stub=self.gw)
        except RemoteError as e:
            with self.lock:
                self.ops[f"replay.refused {e.reason}"] += 1
            return
        self.violations.append(f"replayed grant {_jti(grant)} accepted: execution {r.execution_id}")
        with self.lock:
            self.executions.append(
                Execution(
                    "replay",
                    r.decision_id,
                    r.execution_id,
                    _jti(grant),
                    _conf("authorize", r.decision_id, r.ledger),
                )
            )

    def _confirm(self, ex: Execution, attempts: int = 4) -> bool:
        s = struct_pb2.Struct()
        s.update({"ok": True, "path": ex.path})
        req = gpb.ConfirmExecutionRequest(
            decision_id=ex.decision_id,
            execution_id=ex.execution_id,
            succeeded=True,
            result=s,
            confirmation_token=ex.confirmation_token,
        )
        r = self._retry(
            "confirm",
            lambda: self._call(None, "ConfirmExecution", req, stub=self.gw),
            attempts=attempts,
            stop_on=("grant_replayed",),
        )
        if r is None:
            with self.lock:
                if ex not in self.unconfirmed:
                    self.unconfirmed.append(ex)
            return False
        if not isinstance(r, tuple):
            self._record(_conf("confirm", ex.decision_id, r.ledger))
        with self.lock:
            if ex in self.unconfirmed:
                self.unconfirmed.remove(ex)
        return True

    def _decide(self, op: str, req: dict[str, Any]) -> pb.DecideResponse | None:
        r = self._op(op, lambda: self._call("alice", "Decide", request_to_proto(req)))
        if r is None:
            return None
        assert isinstance(r, pb.DecideResponse)
        self._record(_conf(op, r.decision.decision_id, r.decision.ledger))
        return r

    def allow_once(self, i: int, rng: random.Random) -> bool:
        action = {
            "class": "data.read",
            "intent": f"soak read {i}",
            "target": {"type": "dataset", "id": f"soak-{i}"},
            "payload": {},
        }
        r = self._decide("decide.allow", _request(action, "dev"))
        if r is None:
            return False
        if r.decision.outcome != pb.OUTCOME_ALLOW or not r.grant:
            with self.lock:
                self.ops[
                    f"decide.allow -> {decision_json(r.decision)['outcome']} "
                    f"{r.decision.reason_code}"
                ] += 1
            return False
        return self._execute("allow", r.grant, action, rng)

    def queue_once(self, i: int, rng: random.Random) -> bool:
        action = {
            "class": "data.delete",
            "intent": f"soak delete {i}",
            "target": {"type": "table", "id": f"soak-q-{i}"},
            "payload": {},
        }
        r = self._decide("decide.queue", _request(action, "staging"))
        if r is None:
            return False
        d = decision_json(r.decision)
        if d["outcome"] == "ALLOW":
            self.violations.append(f"data.delete in staging allowed without authority: {d}")
            return False
        if d["outcome"] != "QUEUE":
            with self.lock:
                self.ops[f"decide.queue -> {d['outcome']} {d['reason_code']}"] += 1
            return False
        authorized = False
        for who in rng.sample(APPROVERS, 2):

            def approve(who: str = who) -> pb.ApproveResponse:
                s = sign_approval(
                    ApprovalPayload.new(
                        d["decision_id"],
                        d["intent_hash"],
                        Verdict.APPROVE,
                        who,
                        self.signers[who].key_id,
                        ttl_s=600,
                        now=int(time.time()),
                        rationale=WHY,
                    ),
                    self.signers[who],
                )
                signed = pb.SignedApproval(
                    payload_json=json.dumps(s.payload.to_signed_dict()),
                    method=s.method.value,
                    signature=s.signature,
                )
                resp: pb.ApproveResponse = self._call(
                    who, "Approve", pb.ApproveRequest(decision_id=d["decision_id"], approval=signed)
                )
                return resp

            a = self._retry(
                "approve",
                approve,
                stop_on=("duplicate_approver", "illegal_transition", "nonce_replayed"),
            )
            if a is None:
                return False
            if not isinstance(a, tuple):
                self._record(_conf("approve", d["decision_id"], a.decision.ledger))
                authorized = authorized or a.authorized
        g = self._retry(
            "grant",
            lambda: self._call(
                "alice", "GetGrant", pb.GetGrantRequest(decision_id=d["decision_id"])
            ),
        )
        if g is None or not g.grant:
            return False
        return self._execute("queue", g.grant, action, rng)

    def breakglass_once(self, i: int, rng: random.Random) -> bool:
        opener, reviewer = rng.sample(["sec1", "sec2"], 2)
        target = pb.Target(type="service", id=f"soak-bg-{i}")
        req = pb.BreakGlassRequest(
            reason=pb.BreakGlassReason(
                incident_id=f"INC-SOAK-{i}", category="outage", text=BG_TEXT
            ),
            ttl_s=600,
            action_class="deploy.release",
            target=target,
            environment="staging",
        )
        r = self._op("breakglass.open", lambda: self._call(opener, "BreakGlass", req))
        if r is None:
            return False
        did = r.breakglass.decision_id
        self._record(_conf("breakglass.open", did, r.ledger))
        action = {
            "class": "deploy.release",
            "intent": f"soak rollback {i}",
            "target": {"type": "service", "id": f"soak-bg-{i}"},
            "payload": {"version": "1.0.0"},
        }
        ran = self._execute("breakglass", r.grant, action, rng)
        self._review(did, reviewer)
        return ran

    def _review(self, did: str, reviewer: str, attempts: int = 4) -> bool:
        req = pb.ReviewBreakGlassRequest(decision_id=did, findings="soak: justified, reviewed")
        out = self._retry(
            "breakglass.review",
            lambda: self._call(reviewer, "ReviewBreakGlass", req),
            attempts=attempts,
            stop_on=("illegal_transition",),
        )
        with self.lock:
            if out is None:
                if (did, reviewer) not in self.unreviewed:
                    self.unreviewed.append((did, reviewer))
            elif (did, reviewer) in self.unreviewed:
                self.unreviewed.remove((did, reviewer))
        return out is not None

    def _worker(self, kind: str, seed: int, pace_s: float) -> None:
        rng = random.Random(seed)
        fn = {
            "allow": self.allow_once,
            "queue": self.queue_once,
            "breakglass": self.breakglass_once,
        }[kind]
        i = 0
        while not self.stop_load.is_set():
            i += 1
            started = time.monotonic()
            ok = False
            try:
                ok = fn(seed * 1_000_000 + i, rng)
            except Exception:  # never let a worker die silently
                with self.lock:
                    self.errors[f"{kind} - worker exception"] += 1
                    if len(self.exceptions) < 10:
                        self.exceptions.append(traceback.format_exc(limit=8))
            # a refusal (dependency down) backs off a little instead of spinning
            rest = (pace_s if ok else max(pace_s, 0.25)) - (time.monotonic() - started)
            if rest > 0:
                self.stop_load.wait(rest)

    # -- chaos -----------------------------------------------------------------------------

    def _chaos_loop(self, until: float) -> None:
        rng = random.Random(self.cfg.seed ^ 0x5EED)
        order: list[str] = []
        while True:
            wait = rng.uniform(*self.cfg.fault_every_s)
            if time.monotonic() + wait >= until or self.stop_load.wait(wait):
                return
            if not order:
                order = list(TARGETS)
                rng.shuffle(order)
            target = order.pop()
            ev = ChaosEvent(
                target,
                round(time.monotonic() - self.t0, 2),
                round(rng.uniform(*self.cfg.downtime_s), 2),
            )
            self.chaos.append(ev)
            try:
                self._fault(ev)
            except Exception as e:
                ev.error = f"{type(e).__name__}: {e}"[:500]
                log(f"chaos: {target} restart FAILED: {ev.error}")

    def _fault(self, ev: ChaosEvent) -> None:
        assert self.pg and self.bao and self.ids and self.ledger_svc
        log(f"chaos: kill -9 {ev.target}, down for {ev.downtime_s}s")
        if ev.target == "opa":
            pid = self._opa_pid()
            if pid is None:
                raise RuntimeError("no OPA process to kill")
            args = _cmdline(pid)
            os.kill(pid, signal.SIGKILL)
            for p in self.harness_opa:
                if p.pid == pid:
                    p.wait(10)
            time.sleep(ev.downtime_s)
            t = time.monotonic()
            ev.restarted_by = self._revive_opa(pid, args)
        elif ev.target == "ledger":
            self.ledger_svc.kill()
            time.sleep(ev.downtime_s)
            t = time.monotonic()
            self.ledger_svc.start()
            ev.restarted_by = "harness"
        elif ev.target == "openbao":
            with self.ids.lock:
                proc = self.bao._proc  # the dev server child: SIGKILL, not a clean stop
                assert proc is not None
                proc.kill()
                proc.wait(10)
            time.sleep(ev.downtime_s)
            t = time.monotonic()
            with self.ids.lock:
                self.bao.start()  # same port and root token; users and roles replayed
                self.ids._tokens.clear()
            self._provision_transit()
            ev.restarted_by = "harness (re-provisioned: new OIDC and transit keys)"
        else:
            self.pg.kill()
            time.sleep(ev.downtime_s)
            t = time.monotonic()
            self.pg.start()
            ev.restarted_by = "harness"
        ev.restart_s = round(time.monotonic() - t, 2)
        ev.ok = True
        if self.first_round_at is None and {e.target for e in self.chaos if e.ok} >= set(TARGETS):
            self.first_round_at = time.monotonic() - self.t0

    def _revive_opa(self, old_pid: int, args: list[str]) -> str:
        """Give the engine ``opa_grace_s`` to restart OPA itself; else start the same
        command line (same port, same bundle and verification key) as a supervisor would."""
        deadline = time.monotonic() + self.cfg.opa_grace_s
        while time.monotonic() < deadline:
            pid = self._opa_pid()
            if pid is not None and pid != old_pid:
                return "engine"
            time.sleep(0.1)
        addr = args[args.index("--addr") + 1]
        with (self.work / "opa-harness.log").open("ab") as out:
            p = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.harness_opa.append(p)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"OPA restarted by the harness exited ({p.returncode})")
            try:
                if requests.get(f"http://{addr}/health?bundles=true", timeout=0.5).ok:
                    return "harness (the engine did not restart OPA)"
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("OPA restarted by the harness did not activate its bundle")

    def _sample_rss(self) -> None:
        """Every 2 s. The baseline is the first sample after the warm-up: a quarter of the
        run (at least 10 s) and the engine's first sweep have passed, AND every kind of
        fault has happened once and been restored, plus 3 s of service again (one-time
        costs: the sweep's index scan, reconnects; what must not grow is what comes
        after)."""
        warmup = self.cfg.warmup_s or max(10.0, self.cfg.duration_s / 4)
        # The engine's first sweep of pending decisions (30 s after it started) scans the
        # whole ledger once to build its index: a one-time cost, not growth.
        warmup = max(warmup, self.engine_started + ENGINE_FIRST_SWEEP_S + 5 - self.t0)
        while not self.stop_load.wait(2.0):
            now = time.monotonic() - self.t0
            kb = _rss_kb(self.engine_pid)
            self.rss_samples.append((round(now, 1), kb, _threads(self.engine_pid)))
            done = self.first_round_at
            if (
                self.rss_baseline is None
                and now >= warmup
                and done is not None
                and (now >= done + 3)
            ):
                self.rss_baseline = kb
                self.rss_baseline_at = round(now, 1)
                log(f"RSS baseline after warm-up: {kb} kB")

    # -- the run ---------------------------------------------------------------------------

    def run_load(self) -> None:
        self.t0 = time.monotonic()
        until = self.t0 + self.cfg.duration_s
        s = self.cfg.seed
        pace = {"allow": 0.0, "queue": 1.5, "breakglass": 2.0}
        threads = [
            threading.Thread(target=self._worker, args=(kind, s * 10 + i, pace[kind]), daemon=True)
            for i, kind in enumerate(self.cfg.workers, 1)
        ]
        threads.append(threading.Thread(target=self._sample_rss, daemon=True))
        chaos = threading.Thread(target=self._chaos_loop, args=(until,), daemon=True)
        for t in threads:
            t.start()
        if self.cfg.chaos:
            chaos.start()
        while time.monotonic() < until:
            time.sleep(min(5.0, max(0.0, until - time.monotonic())))
            with self.lock:
                done = sum(v for k, v in self.ops.items() if k.startswith("execute."))
                errs = sum(self.errors.values())
            log(
                f"t={time.monotonic() - self.t0:5.1f}s executed={done} errors={errs} "
                f"faults={len(self.chaos)}"
            )
        self.stop_load.set()
        if chaos.is_alive():
            chaos.join(120)
        for t in threads:
            t.join(120)
        self.stop_load.clear()  # settling calls below may retry again

    def restore_all(self) -> None:
        """After the last fault: every dependency up (restarting any a failed restart left
        down)."""
        assert self.pg and self.bao and self.ids and self.ledger_svc
        pidfile = self.pg.data / "postmaster.pid"
        if not (pidfile.exists() and _alive(int(pidfile.read_text().split()[0]))):
            self.pg.start()
            self.notes.append("PostgreSQL was down after the chaos loop; restarted")
        if not self.ledger_svc.running:
            self.ledger_svc.start()
            self.notes.append("ledger service was down after the chaos loop; restarted")
        if self._opa_pid() is None:
            self.notes.append("OPA was down after the chaos loop")
        if not self.bao.running:
            with self.ids.lock:
                self.bao.start()
                self.ids._tokens.clear()
            self._provision_transit()
            self.notes.append("OpenBao was down after the chaos loop; restarted")

    def settle(self) -> dict[str, Any]:
        """Wait until a full allow path works again; then finish what chaos interrupted."""
        t = time.monotonic()
        deadline = t + self.cfg.settle_s
        rng = random.Random(self.cfg.seed)
        recovered = False
        tries = 0
        while time.monotonic() < deadline:
            tries += 1
            before = len(self.unconfirmed)
            if self.allow_once(900_000_000 + tries, rng) and len(self.unconfirmed) <= before:
                recovered = True
                break
            time.sleep(1.0)
        for ex in list(self.unconfirmed):
            self._confirm(ex, attempts=3)
        for did, reviewer in list(self.unreviewed):
            self._review(did, reviewer, attempts=3)
        return {
            "ok": recovered,
            "after_s": round(time.monotonic() - t, 1),
            "probes": tries,
            "unconfirmed_left": len(self.unconfirmed),
            "unreviewed_breakglass_left": len(self.unreviewed),
        }

    # -- invariants ------------------------------------------------------------------------

    def check(self, recovered: dict[str, Any], *, rss_end_kb: int | None = None) -> dict[str, Any]:
        """Every invariant, from the ledger read back directly (not through the service)."""
        rss_end = rss_end_kb if rss_end_kb is not None else _rss_kb(self.engine_pid)
        led = open_ledger(self.admin_url, create=False)
        try:
            events = list(led.iter_events())
        finally:
            led.close()
        by_seq = {e.global_seq: e for e in events}
        inv: dict[str, Any] = {"recovered": recovered}
        failed = [asdict(ev) for ev in self.chaos if not ev.ok]
        inv["faults_restored"] = {
            "ok": bool(self.chaos) and not failed,
            "faults": len(self.chaos),
            "failed_restarts": failed[:5],
        }

        # 1. every executed tool call has its confirmed execution.authorized
        missing = []
        for ex in self.executions:
            e = by_seq.get(ex.authorized.global_seq)
            if not (
                e is not None
                and e.event_type == "execution.authorized"
                and e.decision_id == ex.decision_id
                and e.payload.get("execution_id") == ex.jti
                and e.hash == ex.authorized.hash
            ):
                missing.append(asdict(ex))
        inv["executed_authorized"] = {
            "ok": not missing,
            "executions": len(self.executions),
            "missing": missing[:5],
            "missing_count": len(missing),
        }

        # 2. every confirmation a client received is in the ledger, identical
        bad = []
        for c in self.confirmations:
            e = by_seq.get(c.global_seq)
            if (
                e is None
                or e.hash != c.hash
                or (c.event_id and e.event_id != c.event_id)
                or (c.decision_id and e.decision_id != c.decision_id)
            ):
                bad.append(
                    {
                        **asdict(c),
                        "found": None
                        if e is None
                        else {"hash": e.hash, "event_id": e.event_id, "decision": e.decision_id},
                    }
                )
        inv["confirmations_in_ledger"] = {
            "ok": not bad,
            "confirmations": len(self.confirmations),
            "mismatched": bad[:5],
            "mismatched_count": len(bad),
        }

        # 3. l7 ledger verify
        v = subprocess.run(
            _l7("ledger", "verify", "--ledger", self.admin_url, "--work-dir", str(self.l7_work)),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        out = (v.stdout + v.stderr).strip().splitlines()
        inv["ledger_verify"] = {
            "ok": v.returncode == 0,
            "exit_code": v.returncode,
            "output": [ln for ln in out if "verifying" not in ln][-3:],
        }

        # 4. no grant used twice
        jtis = Counter(ex.jti for ex in self.executions)
        twice = [j for j, n in jtis.items() if n > 1]
        auth = [e for e in events if e.event_type == "execution.authorized"]
        per_decision = Counter(e.decision_id for e in auth)
        per_exec = Counter(str(e.payload.get("execution_id")) for e in auth)
        ran = {ex.jti for ex in self.executions}
        inv["single_use_grants"] = {
            "ok": not twice
            and max(per_decision.values(), default=0) <= 1
            and max(per_exec.values(), default=0) <= 1
            and not self.violations,
            "executed_twice": twice[:5],
            "ledger_execution_authorized": len(auth),
            "consumed_but_not_run": sum(
                1 for e in auth if str(e.payload.get("execution_id")) not in ran
            ),
            "replays_attempted": self.ops["replay.attempt"],
            "replays_accepted": sum(1 for ex in self.executions if ex.path == "replay"),
            "violations": self.violations[:5],
        }

        # 5. engine RSS growth
        base = self.rss_baseline
        if base is None:  # a run too short for one full round of faults: say so
            self.notes.append("RSS baseline: no full round of faults before the end; first sample")
            base = self.rss_samples[0][1] if self.rss_samples else rss_end
        growth = (rss_end - base) / base
        inv["rss_growth"] = {
            "ok": growth < RSS_LIMIT,
            "baseline_at_s": self.rss_baseline_at,
            "baseline_kb": base,
            "end_kb": rss_end,
            "growth_pct": round(100 * growth, 2),
            "max_kb": max((kb for _, kb, _ in self.rss_samples), default=rss_end),
            "limit_pct": 100 * RSS_LIMIT,
        }
        inv["_ledger_events"] = len(events)
        return inv

    def report(self, inv: dict[str, Any], wall_s: float) -> dict[str, Any]:
        by_target: dict[str, dict[str, int]] = {}
        for ev in self.chaos:
            t = by_target.setdefault(ev.target, {"faults": 0, "restart_failed": 0})
            t["faults"] += 1
            t["restart_failed"] += 0 if ev.ok else 1
        ledger_events = inv.pop("_ledger_events")
        checks = {k: v for k, v in inv.items()}
        passed = all(v["ok"] for v in checks.values())
        return {
            "passed": passed,
            "seed": self.cfg.seed,
            "duration_s": self.cfg.duration_s,
            "wall_s": round(wall_s, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": f"python -m tests.soak.run --duration {self.cfg.duration_s:g} "
            f"--seed {self.cfg.seed}",
            "ops": dict(sorted(self.ops.items())),
            "errors": dict(sorted(self.errors.items())),
            "unexpected_exceptions": self.exceptions,
            "chaos": {"by_target": by_target, "events": [asdict(e) for e in self.chaos]},
            "ledger_events": ledger_events,
            "invariants": checks,
            "rss_samples_s_kb_threads": self.rss_samples[:: max(1, len(self.rss_samples) // 30)],
            "notes": self.notes,
        }

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        for ch in (getattr(self, "_gov_ch", None), getattr(self, "_gw_ch", None)):
            if ch is not None:
                ch.close()
        for svc in (self.gateway, self.engine, self.ledger_svc):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()
        for p in self.harness_opa:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if self.bao is not None:
            with contextlib.suppress(Exception):
                self.bao.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.remove()
        if self._tmp is not None and not self.cfg.keep:
            self._tmp.cleanup()


def _request(action: dict[str, Any], env: str) -> dict[str, Any]:
    return {
        "action": action,
        "context": {
            "actor": {"id": "alice", "role": "engineer", "level": 1},
            "environment": env,
            "request_source": "soak",
        },
    }


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    """Bring the topology up, run load + chaos for ``cfg.duration_s``, check the invariants,
    print and write the report; returns it (``report["passed"]``)."""
    soak = Soak(cfg)
    started = time.monotonic()
    try:
        soak.start()
        soak.run_load()
        log("load stopped; restoring every dependency and settling")
        soak.restore_all()
        recovered = soak.settle()
        inv = soak.check(recovered)
        report = soak.report(inv, time.monotonic() - started)
    finally:
        soak.close()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(summarize(report), flush=True)
    print(f"report written to {cfg.out}", flush=True)
    return report


def summarize(r: dict[str, Any]) -> str:
    lines = [
        f"soak {'PASSED' if r['passed'] else 'FAILED'}: seed {r['seed']}, "
        f"{r['duration_s']:g}s of load ({r['wall_s']}s wall), "
        f"{r['ledger_events']} ledger events",
        "operations:",
    ]
    lines += [f"  {k:<45} {v}" for k, v in r["ops"].items()]
    lines.append("errors (expected while dependencies are down):")
    lines += [f"  {k:<45} {v}" for k, v in r["errors"].items()] or ["  none"]
    lines.append("faults injected:")
    for t, s in sorted(r["chaos"]["by_target"].items()):
        by = sorted({e["restarted_by"] for e in r["chaos"]["events"] if e["target"] == t})
        lines.append(
            f"  {t:<10} {s['faults']} kills, {s['restart_failed']} failed restarts; "
            f"restarted by: {', '.join(b for b in by if b) or '-'}"
        )
    lines.append("invariants:")
    for k, v in r["invariants"].items():
        detail = {x: y for x, y in v.items() if x != "ok" and y not in ([], None)}
        lines.append(f"  [{'ok' if v['ok'] else 'FAIL'}] {k}: {json.dumps(detail)[:400]}")
    if r["unexpected_exceptions"]:
        lines.append(f"unexpected exceptions in the harness: {len(r['unexpected_exceptions'])}")
        lines.append(r["unexpected_exceptions"][0])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.soak.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--seed", type=int, help="RNG seed (default: random, printed)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    p.add_argument("--work-dir", type=Path, help="logs and data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    p.add_argument("--workers", default="allow,allow,queue,breakglass",
                   help="load threads, comma-separated: allow, queue, breakglass")  # fmt: skip
    p.add_argument("--no-chaos", action="store_true", help="load only, no faults (diagnosis)")
    a = p.parse_args(argv)
    if a.duration <= 0 or a.duration > 24 * 3600:
        p.error("--duration must be in (0, 86400] seconds")
    seed = a.seed if a.seed is not None else secrets.randbelow(2**31)
    workers = tuple(w.strip() for w in a.workers.split(",") if w.strip())
    if not workers or set(workers) - {"allow", "queue", "breakglass"}:
        p.error("--workers takes allow, queue and breakglass, comma-separated")
    cfg = SoakConfig(
        duration_s=a.duration, seed=seed, out=a.out, work_dir=a.work_dir, keep=a.keep,
        workers=workers, chaos=not a.no_chaos,
    )  # fmt: skip
    return 0 if run_soak(cfg)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
