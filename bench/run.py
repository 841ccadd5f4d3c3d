"""``make bench``: Layer-7 against bare OPA, measured in the same run, on this machine.

What runs (``BENCH_QUICK=1`` shrinks every size and duration for development):

  1. baseline: bare OPA REST from Python (kept-alive session, the same opa-python-client
     call the engine makes), same policy, same input; 1 and 8 in flight
  2. Decide over gRPC, engine in its own process (``l7 serve``) with the durable SQLite
     ledger (WAL, synchronous=FULL): 1, 8 and 32 requests in flight; ratios to (1);
     input examples/requests/read-dev.json from 200 actors (an ALLOW with a grant), and
     deploy-prod.json (a QUEUE) at 1 in flight
  3. a fixed-rate run: 500 Decide/s for 60 s (open loop), p50 / p99 / max and errors
  4. Authorize at the gateway (``l7 gateway serve``, same ledger), 1 and 8 in flight
  5. approval verification: ed25519 and OpenBao transit signatures (a real OpenBao dev
     server signs; verification is local, with the exported public key)
  6. Decide with the PostgreSQL ledger (fsync on) behind two engine processes
  7. ledger: batched durable appends/s (SQLite, PostgreSQL), verify events/s at 100k and
     1M events, Merkle inclusion-proof time at 1M
Prints one table (targets from issue #8 marked met / MISSED) and writes
bench/results.json with machine info. Progress goes to stderr. Bounded: every run has
a fixed size or duration; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from bench.harness import Latency, Server, closed_loop, fixed_rate, log, timed
from l7.cli.progress import Progress
from l7.engine.validate import request_from_dict
from l7.policy.evaluator import ENTRYPOINT, OpaEvaluator
from l7.server.convert import request_to_proto
from l7.stack import REPO_ROOT
from l7.v1 import gateway_pb2 as gpb
from l7.v1 import gateway_pb2_grpc as gpb_grpc
from l7.v1 import governance_pb2 as pb
from l7.v1 import governance_pb2_grpc as pb_grpc
from ledger import EventType, NewEvent, SqlLedger, open_ledger
from ledger.merkle import event_leaf_hash, verify_inclusion

RESULTS = REPO_ROOT / "bench" / "results.json"
L7 = str(Path(sys.executable).parent / "l7")
ACTORS = 200  # requests rotate over this many actors (the per-actor rate limit is 500/s)
REQUEST_FILE = "read-dev.json"
"""The Decide input: an ALLOW (policy, risk, authority, ledger batch and a signed grant),
the common case. A QUEUE input (deploy-prod.json) leaves a pending decision per request,
and the engine's sweeper re-reads every pending decision each round; thousands of them
are a bench artefact that would dominate the numbers (see docs/performance.md)."""


@dataclass(frozen=True)
class Sizes:
    requests: int = 3000
    """Requests per closed-loop Decide run."""
    fixed_rate: float = 500.0
    fixed_seconds: float = 60.0
    authorize: int = 2000
    approvals: int = 2000
    transit_signs: int = 300
    append_events: int = 200_000
    append_batch: int = 100
    append_writers: int = 8
    verify_sizes: tuple[int, ...] = (100_000, 1_000_000)
    proofs: int = 2000
    pg_verify: int = 100_000


FULL = Sizes()
QUICK = Sizes(
    requests=400,
    fixed_seconds=5.0,
    authorize=300,
    approvals=300,
    transit_signs=30,
    append_events=20_000,
    verify_sizes=(10_000, 50_000),
    proofs=300,
    pg_verify=10_000,
)

TARGETS = {
    "decide_p50_over_bare": 2.5,
    "sqlite_decisions_per_s": 1000.0,
    "fixed_rate_p99_ms": 10.0,
    "sqlite_append_per_s": 20_000.0,
    "pg_append_per_s": 5_000.0,
    "verify_per_s": 100_000.0,
}


# -- requests -----------------------------------------------------------------------------


def _request(name: str) -> dict[str, Any]:
    d: dict[str, Any] = json.loads((REPO_ROOT / "examples" / "requests" / name).read_text())
    return {k: d[k] for k in ("action", "context")}


def _variants(name: str, n: int = ACTORS) -> list[dict[str, Any]]:
    """The same request from ``n`` actors (rate limits are per actor, as in production)."""
    base = _request(name)
    out = []
    for i in range(n):
        d = json.loads(json.dumps(base))
        d["context"]["actor"]["id"] = f"bench-{i:03d}"
        out.append(d)
    return out


# -- servers ------------------------------------------------------------------------------


def start_engine(
    ledger_url: str,
    work: Path,
    name: str,
    *,
    unsigned: bool = False,
    work_name: str | None = None,
    extra: tuple[str, ...] = (),
) -> Server:
    """``work_name``: engines that are replicas of one deployment share a work dir (and so
    their tier keys); each other engine gets its own."""
    log(f"starting engine {name} (l7 serve, ledger {ledger_url.rsplit('@', maxsplit=1)[-1]})")
    cmd = [sys.executable, "-m", "bench.unsigned_engine"] if unsigned else [L7]
    return Server(
        [
            *cmd,
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--ledger",
            ledger_url,
            "--integrity-every-s",
            "0",
            "--work-dir",  # its own keys, bundles and witness state: not the checkout's .build
            str(work / f"engine-{work_name or name}"),
            *extra,
        ],
        ready=r"serving Governance on (?P<target>\S+)",
        fields=[r"OPA\s+: (?P<opa>http\S+)", r"grant key\s+: (?P<grant_key>\S+)"],
        log_path=work / f"engine-{name}.log",
    )


def start_gateway(ledger_url: str, grant_key: str, work: Path, engine: str) -> Server:
    """A gateway beside engine ``engine`` (it shares that engine's work dir: tier keys)."""
    log("starting gateway (l7 gateway serve)")
    return Server(
        [
            L7,
            "gateway",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--ledger",
            ledger_url,
            "--grant-public-key",
            grant_key,
            "--env",
            "dev",
            "--work-dir",
            str(work / f"engine-{engine}"),
        ],
        ready=r"gateway \S+ on (?P<target>\S+)",
        log_path=work / "gateway.log",
    )


@contextmanager
def channel(target: str) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch
    finally:
        ch.close()


def with_cpu(servers: list[Server], run: Callable[[], Latency]) -> dict[str, Any]:
    """``run()``'s summary plus the server-side CPU per completed request (ms), per
    process kind (the engine's Python, its OPA child), summed over ``servers``."""
    before = [s.cpu_seconds() for s in servers]
    lat = run()
    after = [s.cpu_seconds() for s in servers]
    out = lat.summary()
    n = max(1, out["n"])
    cpu: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        for name, sec in a.items():
            cpu[name] = cpu.get(name, 0.0) + sec - b.get(name, 0.0)
    out["server_cpu_ms_per_req"] = {k: round(1000 * v / n, 3) for k, v in sorted(cpu.items())}
    return out


def _decide_issuer(stubs: list[pb_grpc.GovernanceStub], reqs: list[pb.DecideRequest]) -> Any:
    def issue(i: int) -> grpc.Future[Any]:
        return stubs[i % len(stubs)].Decide.future(reqs[i % len(reqs)], timeout=30)

    return issue


# -- 1-4: Decide, fixed rate, Authorize ----------------------------------------------------


def bench_bare_opa(opa_url: str, sizes: Sizes) -> dict[str, Any]:
    """The exact REST call the engine makes (opa-python-client, provenance on), kept alive,
    with the policy input the engine would send for the same requests."""
    inputs = [request_from_dict(d).to_dict() for d in _variants(REQUEST_FILE)]
    evaluators = [OpaEvaluator(opa_url) for _ in range(8)]

    def ask(ev: OpaEvaluator, i: int) -> object:
        return ev._client.query_rule(
            inputs[i % len(inputs)], ENTRYPOINT[0], ENTRYPOINT[1], {"provenance": True}
        )

    log("bare OPA REST, 1 in flight")
    one = timed(lambda i: ask(evaluators[0], i), sizes.requests).summary()
    log("bare OPA REST, 8 in flight (8 threads, a session each)")
    out = Latency()
    per = sizes.requests // 8

    def worker(w: int) -> list[float]:
        lat = []
        for i in range(per):
            s = time.perf_counter()
            ask(evaluators[w], i)
            lat.append(time.perf_counter() - s)
        return lat

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        for lat in pool.map(worker, range(8)):
            out.samples += lat
    out.wall_s = time.perf_counter() - t0
    out.extra["inflight"] = 8
    for ev in evaluators:
        ev.close()
    return {"bare_opa_1": one, "bare_opa_8": out.summary()}


def bench_decide_sqlite(work: Path, sizes: Sizes) -> dict[str, Any]:
    url = f"sqlite:///{work / 'decide.sqlite'}"
    engine = start_engine(url, work, "sqlite")
    gateway: Server | None = None
    res: dict[str, Any] = {}
    try:
        res.update(bench_bare_opa(engine.info["opa"], sizes))
        reqs = [request_to_proto(d) for d in _variants(REQUEST_FILE)]
        with channel(engine.info["target"]) as ch:
            stub = pb_grpc.GovernanceStub(ch)
            issue = _decide_issuer([stub], reqs)
            log("Decide warm-up")
            closed_loop(issue, 200, 4)
            for inflight in (1, 8, 32):
                log(f"Decide gRPC + SQLite, {inflight} in flight")
                res[f"decide_{inflight}"] = with_cpu(
                    [engine], functools.partial(closed_loop, issue, sizes.requests, inflight)
                )
            log(f"fixed rate: {sizes.fixed_rate:.0f} Decide/s for {sizes.fixed_seconds:.0f} s")
            res["fixed_rate"] = with_cpu(
                [engine], lambda: fixed_rate(issue, sizes.fixed_rate, sizes.fixed_seconds)
            )
            cap = max(r["per_s"] for k, r in res.items() if k.startswith("decide_"))
            half = max(10.0, round(cap / 2, -1))
            secs = min(sizes.fixed_seconds, 30.0)
            log(f"fixed rate at half the measured capacity: {half:.0f} Decide/s for {secs:.0f} s")
            res["fixed_rate_half"] = with_cpu([engine], lambda: fixed_rate(issue, half, secs))
            log("Decide gRPC + SQLite, QUEUE input (deploy-prod.json), 1 in flight")
            queue_reqs = [request_to_proto(d) for d in _variants("deploy-prod.json")]
            res["decide_queue_1"] = with_cpu(
                [engine],
                functools.partial(
                    closed_loop, _decide_issuer([stub], queue_reqs), sizes.requests // 2, 1
                ),
            )
            log(f"minting {sizes.authorize + 100} grants (ALLOW decisions) for Authorize")
            grants = _grants(stub, sizes.authorize + 100)
        gateway = start_gateway(url, engine.info["grant_key"], work, "sqlite")
        with channel(gateway.info["target"]) as gch:
            gw = gpb_grpc.GatewayStub(gch)
            it = iter(grants)

            def authorize(_: int) -> grpc.Future[Any]:
                grant, action = next(it)
                return gw.Authorize.future(
                    gpb.AuthorizeRequest(grant=grant, action=action, environment="dev"), 30
                )

            closed_loop(authorize, 50, 1)  # warm-up
            log("Authorize at the gateway, 1 in flight")
            res["authorize_1"] = closed_loop(authorize, sizes.authorize // 2, 1).summary()
            log("Authorize at the gateway, 8 in flight")
            res["authorize_8"] = closed_loop(authorize, sizes.authorize // 2, 8).summary()
    finally:
        if gateway is not None:
            gateway.stop()
        engine.stop()
    led = open_ledger(url, create=False)
    res["ledger_events"] = led.count()
    led.close()
    return res


def bench_signing_cost(work: Path, sizes: Sizes) -> dict[str, Any]:
    """What the insider-proof ledger costs (issue #12): Decide on the engine as shipped
    (tier signing, continuous witnessed checkpoints) and on one with both switched off
    from outside (``bench.unsigned_engine``), both running at once, measured in
    alternating rounds (off, on, off, on) so that neither gains from going second; the
    faster round of each counts."""
    on = start_engine(f"sqlite:///{work / 'cost-on.sqlite'}", work, "cost-on")
    off: Server | None = None
    res: dict[str, Any] = {}
    try:
        off = start_engine(f"sqlite:///{work / 'cost-off.sqlite'}", work, "cost-off", unsigned=True)
        reqs = [request_to_proto(d) for d in _variants(REQUEST_FILE)]
        with channel(on.info["target"]) as ch_on, channel(off.info["target"]) as ch_off:
            engines = {
                "on": (on, _decide_issuer([pb_grpc.GovernanceStub(ch_on)], reqs)),
                "off": (off, _decide_issuer([pb_grpc.GovernanceStub(ch_off)], reqs)),
            }
            for _, issue in engines.values():
                closed_loop(issue, 200, 4)  # warm-up
            for inflight in (1, 32):
                rounds: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
                for _ in range(2):
                    for name in ("off", "on"):
                        server, issue = engines[name]
                        log(f"Decide, signing + checkpoints {name.upper()}, {inflight} in flight")
                        rounds[name].append(
                            with_cpu(
                                [server],
                                functools.partial(closed_loop, issue, sizes.requests, inflight),
                            )
                        )
                for name, runs in rounds.items():
                    res[f"decide_{name}_{inflight}"] = max(runs, key=lambda r: r["per_s"])
    finally:
        if off is not None:
            off.stop()
        on.stop()
    return res


def _grants(stub: pb_grpc.GovernanceStub, n: int) -> list[tuple[str, pb.Action]]:
    base = _request("read-dev.json")
    reqs = []
    for i in range(n):
        d = json.loads(json.dumps(base))
        d["action"]["target"]["id"] = f"bench-{i}"
        d["context"]["actor"]["id"] = f"bench-{i % ACTORS:03d}"
        reqs.append(request_to_proto(d))
    futs = []
    out = []
    for i, r in enumerate(reqs):
        futs.append((stub.Decide.future(r, timeout=30), r.action))
        if len(futs) >= 16 or i == len(reqs) - 1:
            for f, action in futs:
                resp = f.result()
                if not resp.grant:
                    raise RuntimeError("read-dev.json was not ALLOWed with a grant; check policy")
                out.append((resp.grant, action))
            futs = []
    return out


# -- 5: approval verification -----------------------------------------------------------


def bench_approvals(work: Path, sizes: Sizes) -> dict[str, Any]:
    from l7.authority.approval import ApprovalPayload, Verdict, sign_approval, verify_approval
    from l7.crypto import Ed25519Signer, TransitSigner, intent_hash, public_key_raw

    action = request_from_dict(_request("deploy-prod.json")).to_dict()["action"]
    ih = intent_hash(action, "production")
    now = int(time.time())

    def payloads(key_id: str, n: int) -> list[ApprovalPayload]:
        return [
            ApprovalPayload.new(
                f"dec-{i}", ih, Verdict.APPROVE, "mgr-1", key_id, ttl_s=600, now=now
            )
            for i in range(n)
        ]

    def verify_run(signed: list[Any], key: bytes) -> dict[str, Any]:
        def one(i: int) -> object:
            s = signed[i % len(signed)]
            return verify_approval(
                s,
                public_key_raw=key,
                expected_decision_id=s.payload.decision_id,
                expected_intent_hash=ih,
                expected_approver="mgr-1",
                now=now,
            )

        return timed(one, sizes.approvals, warmup=20).summary()

    res: dict[str, Any] = {}
    ed = Ed25519Signer.generate(key_id="mgr-1-ed")
    log("approval verification: ed25519")
    signed = [sign_approval(p, ed) for p in payloads(ed.key_id, 200)]
    res["ed25519_verify"] = verify_run(signed, public_key_raw(ed._key.public_key()))
    try:
        from l7.devstack.openbao import OpenBaoDev
    except ImportError as e:  # pragma: no cover - OpenBao ships with the venv
        res["transit_error"] = str(e)
        return res
    log("starting an OpenBao dev server for transit signatures")
    (work / "openbao").mkdir(exist_ok=True)
    bao = OpenBaoDev(work_dir=work / "openbao")
    try:
        bao.start()
        bao.enable_transit()
        bao.create_transit_key("bench-approver")
        signer = TransitSigner(bao.client, "bench-approver", key_version=1)
        pub = signer.public_key(1)
        log(f"transit: {sizes.transit_signs} signatures from OpenBao (the approver's side)")
        ps = payloads(signer.key_id, sizes.transit_signs)
        sign_lat = timed(lambda i: sign_approval(ps[i], signer), len(ps), warmup=0)
        res["transit_sign"] = sign_lat.summary()
        signed = [sign_approval(p, signer) for p in ps[:50]]
        log("approval verification: transit (vault:v1:...) signatures")
        res["transit_verify"] = verify_run(signed, pub)
    except Exception as e:  # OpenBao missing or refused: the row says so, the bench goes on
        res["transit_error"] = f"{type(e).__name__}: {e}"
        log(f"transit rows skipped: {res['transit_error']}")
    finally:
        bao.stop()
    return res


# -- 6: PostgreSQL, two engines ------------------------------------------------------------


@contextmanager
def postgres() -> Iterator[Any]:
    from tests.ledger.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        # durable numbers: the throwaway cluster may be tuned for tests
        cluster.sql("ALTER SYSTEM SET fsync = on")
        cluster.sql("ALTER SYSTEM SET synchronous_commit = on")
        cluster.sql("ALTER SYSTEM SET full_page_writes = on")
        cluster.sql("SELECT pg_reload_conf()")
        yield cluster
    finally:
        cluster.stop()
        cluster.remove()


def bench_decide_postgres(cluster: Any, work: Path, sizes: Sizes) -> dict[str, Any]:
    url = cluster.url(cluster.create_database())
    engines: list[Server] = []
    res: dict[str, Any] = {}
    try:
        # two replicas of one deployment: one work dir (tier keys), one witness between them
        engines.append(start_engine(url, work, "pg-a", work_name="pg"))  # creates the schema
        engines.append(
            start_engine(url, work, "pg-b", work_name="pg", extra=("--no-local-witness",))
        )
        reqs = [request_to_proto(d) for d in _variants(REQUEST_FILE)]
        with channel(engines[0].info["target"]) as ca, channel(engines[1].info["target"]) as cb:
            stubs = [pb_grpc.GovernanceStub(ca), pb_grpc.GovernanceStub(cb)]
            issue = _decide_issuer(stubs, reqs)
            closed_loop(issue, 200, 8)  # warm-up
            for inflight in (1, 32):
                log(f"Decide gRPC + PostgreSQL, 2 engines, {inflight} in flight")
                res[f"decide_{inflight}"] = with_cpu(
                    engines, functools.partial(closed_loop, issue, sizes.requests, inflight)
                )
    finally:
        for e in engines:
            e.stop()
    led = open_ledger(url, create=False)
    report = led.verify()
    res["ledger_events"] = report.events
    res["ledger_verified"] = True
    led.close()
    return res


# -- 7: ledger appends, verify, inclusion proofs ----------------------------------------------


def bench_append(url: str, sizes: Sizes, label: str) -> dict[str, Any]:
    led = open_ledger(url)
    batch, writers = sizes.append_batch, sizes.append_writers
    per_writer = sizes.append_events // (batch * writers)
    total = per_writer * batch * writers
    prog = Progress(f"  {label} appends")
    done = [0]

    def writer(w: int) -> None:
        for b in range(per_writer):
            did = f"bench-{w}-{b}"
            led.append(
                [
                    NewEvent(did, EventType.POLICY_GATE, "bench", "rev", {"i": i, "gate": "g"})
                    for i in range(batch)
                ]
            )
            done[0] += batch
            if w == 0:
                prog(done[0], total)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    wall = time.perf_counter() - t0
    prog(total, total)
    stats = led.stats() if isinstance(led, SqlLedger) else None
    led.close()
    out: dict[str, Any] = {
        "events": total,
        "batch": batch,
        "writers": writers,
        "per_s": total / wall,
        "seconds": wall,
    }
    if stats is not None:
        out["commits"] = stats.commits
        out["events_per_commit"] = stats.events / max(1, stats.commits)
    return out


def _fill(led: Any, upto: int, label: str) -> None:
    """Grow the ledger to ``upto`` events (10 per decision stream, 1000 per batch)."""
    have = led.count()
    prog = Progress(f"  filling {label} to {upto:,} events")
    batch = 1000

    def chunk(start: int) -> None:
        led.append(
            [
                NewEvent(
                    f"v-{(start + i) // 10}",
                    EventType.RISK_SCORED,
                    "bench",
                    "rev",
                    {"score": (start + i) % 100, "band": "low", "reasons": ["r"]},
                )
                for i in range(min(batch, upto - start))
            ]
        )

    starts = list(range(have, upto, batch))
    with ThreadPoolExecutor(4) as pool:
        for k, _ in enumerate(pool.map(chunk, starts)):
            prog(min(upto, have + (k + 1) * batch), upto)


def bench_verify_growth(url: str, sizes: Sizes, label: str) -> dict[str, Any]:
    led = open_ledger(url)
    rows = []
    proofs: dict[str, Any] = {}
    try:
        for size in sizes.verify_sizes:
            _fill(led, size, label)
            log(f"verify {label} at {size:,} events")
            t0 = time.perf_counter()
            report = led.verify(progress=Progress(f"  verifying {size:,}"))
            wall = time.perf_counter() - t0
            rows.append({"events": report.events, "seconds": wall, "per_s": report.events / wall})
        if isinstance(led, SqlLedger):
            proofs = _inclusion_proofs(led, sizes.proofs)
    finally:
        led.close()
    return {"verify": rows, "inclusion_proof": proofs}


def _inclusion_proofs(led: SqlLedger, n: int) -> dict[str, Any]:
    size = led.count()
    log(f"Merkle tree over {size:,} events (built once from the stored hashes)")
    t0 = time.perf_counter()
    led.inclusion_proof(1, size)
    build = time.perf_counter() - t0
    rng = random.Random(8)
    seqs = [rng.randint(1, size) for _ in range(n)]
    hashes = _hashes_at(led, seqs)
    root = led._sync_tree().root(size)
    log(f"{n} inclusion proofs at {size:,} (generate + verify each)")

    def one(i: int) -> None:
        g = seqs[i]
        proof = led.inclusion_proof(g, size)
        verify_inclusion(event_leaf_hash(hashes[g]), g - 1, size, proof, root)

    lat = timed(one, n, warmup=10).summary()
    lat.update(
        {
            "tree_size": size,
            "tree_build_s": build,
            "proof_hashes": len(led.inclusion_proof(1, size)),
        }
    )
    return lat


def _hashes_at(led: SqlLedger, seqs: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for g in set(seqs):
        (ev,) = led.query(after_global_seq=g - 1, limit=1)
        out[g] = ev.hash
    return out


# -- machine info, table, main ------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = ""
    with suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    mem = ""
    with suppress(OSError, StopIteration):
        mem = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )

    def run(*args: str) -> str:
        try:
            return subprocess.run(
                args, capture_output=True, text=True, timeout=10, check=False, cwd=REPO_ROOT
            ).stdout.strip()
        except OSError:
            return ""

    opa = os.environ.get("L7_OPA_BIN") or str(REPO_ROOT / ".tools" / "opa")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "opa": next(iter(re.findall(r"Version: (\S+)", run(opa, "version"))), ""),
        "git_revision": run("git", "rev-parse", "--short", "HEAD"),
        "load_average_at_start": os.getloadavg(),
    }


def _row(name: str, r: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    if not r:
        return [name, "-", "-", "-", "-", "-", "skipped"]
    ratio = f"{r['p50_ms'] / base['p50_ms']:.2f}x" if base else ""
    tput = f"{r['per_s'] / base['per_s']:.2f}x" if base else ""
    errs = f"{r['errors']} err" if r.get("errors") else ""
    return [
        name,
        f"{r['per_s']:,.0f}/s",
        f"{r['p50_ms']:.2f}",
        f"{r['p99_ms']:.2f}",
        f"{r['max_ms']:.1f}",
        f"{ratio} {tput}".strip(),
        errs,
    ]


def build_table(res: dict[str, Any]) -> tuple[list[list[str]], list[tuple[str, str, str, bool]]]:
    d = res.get("decide_sqlite", {})
    base = d.get("bare_opa_1")
    base8 = d.get("bare_opa_8")
    rows = [
        _row("bare OPA REST, 1 in flight (baseline)", base, None),
        _row("bare OPA REST, 8 in flight", base8, base),
    ]
    for k in (1, 8, 32):
        rows.append(_row(f"Decide gRPC + SQLite, {k} in flight", d.get(f"decide_{k}"), base))
    sc = res.get("signing_cost", {})
    for k in (1, 32):
        for name in ("on", "off"):
            rows.append(
                _row(
                    f"  cost run: signing + checkpoints {name.upper()}, {k} in fl.",
                    sc.get(f"decide_{name}_{k}"),
                    base,
                )
            )
    rows.append(_row("Decide, QUEUE input, 1 in flight", d.get("decide_queue_1"), base))
    fr = d.get("fixed_rate")
    if fr:
        row = _row(f"Decide at {fr['target_per_s']:.0f}/s fixed, {fr['seconds']:.0f} s", fr, base)
        if fr.get("saturated_after_s") is not None:
            row[6] = f"saturated: stopped after {fr['saturated_after_s']:.1f} s " + row[6]
        rows.append(row)
    fh = d.get("fixed_rate_half")
    if fh:
        name = f"Decide at {fh['target_per_s']:.0f}/s fixed (half capacity)"
        rows.append(_row(name, fh, base))
    pgd = res.get("decide_postgres", {})
    for k in (1, 32):
        rows.append(
            _row(f"Decide gRPC + PostgreSQL, 2 engines, {k} in fl.", pgd.get(f"decide_{k}"), base)
        )
    rows.append(_row("Authorize at gateway, 1 in flight", d.get("authorize_1"), base))
    rows.append(_row("Authorize at gateway, 8 in flight", d.get("authorize_8"), base))
    ap = res.get("approvals", {})
    rows.append(_row("approval verify, ed25519", ap.get("ed25519_verify"), None))
    rows.append(_row("approval verify, transit (vault:v1)", ap.get("transit_verify"), None))
    rows.append(_row("  (transit sign round trip, OpenBao)", ap.get("transit_sign"), None))

    def ev(name: str, per_s: float | None, note: str | None = "") -> list[str]:
        return [name, "-" if per_s is None else f"{per_s:,.0f} ev/s", "", "", "", "", note or ""]

    sa, pa = res.get("append_sqlite"), res.get("append_postgres")
    rows.append(
        ev(
            "ledger append, SQLite (batched)",
            sa and sa["per_s"],
            sa and f"batch {sa['batch']} x {sa['writers']} writers",
        )
    )
    rows.append(
        ev(
            "ledger append, PostgreSQL (batched)",
            pa and pa["per_s"],
            pa and f"batch {pa['batch']} x {pa['writers']} writers",
        )
    )
    for v in res.get("verify_sqlite", {}).get("verify", []):
        rows.append(
            ev(
                f"ledger verify, SQLite, {v['events']:,} events",
                v["per_s"],
                f"{v['seconds']:.2f} s",
            )
        )
    for v in res.get("verify_postgres", {}).get("verify", []):
        rows.append(
            ev(
                f"ledger verify, PostgreSQL, {v['events']:,} events",
                v["per_s"],
                f"{v['seconds']:.2f} s",
            )
        )
    ip = res.get("verify_sqlite", {}).get("inclusion_proof")
    if ip:
        rows.append(
            [
                f"inclusion proof at {ip['tree_size']:,} (gen + verify)",
                f"{ip['per_s']:,.0f}/s",
                f"{ip['p50_ms']:.3f}",
                f"{ip['p99_ms']:.3f}",
                f"{ip['max_ms']:.1f}",
                "",
                f"tree built in {ip['tree_build_s']:.1f} s",
            ]
        )

    checks: list[tuple[str, str, str, bool]] = []
    if base and d.get("decide_1"):
        r = d["decide_1"]["p50_ms"] / base["p50_ms"]
        checks.append(("Decide p50 within 2.5x of bare OPA p50", f"{r:.2f}x", "<= 2.5x", r <= 2.5))
    best = max((d[f"decide_{k}"]["per_s"] for k in (1, 8, 32) if f"decide_{k}" in d), default=None)
    if best is not None:
        checks.append(
            ("decisions/s, durable SQLite ledger", f"{best:,.0f}/s", ">= 1,000/s", best >= 1000)
        )
    if fr:
        ok = fr["p99_ms"] < 10 and fr["errors"] == 0 and fr.get("saturated_after_s") is None
        checks.append(
            (
                "p99 at 500 decisions/s (no errors)",
                f"{fr['p99_ms']:.2f} ms, {fr['errors']} err",
                "< 10 ms",
                ok,
            )
        )
    if sa:
        checks.append(
            (
                "batched appends, SQLite",
                f"{sa['per_s']:,.0f} ev/s",
                ">= 20,000",
                sa["per_s"] >= 20_000,
            )
        )
    if pa:
        checks.append(
            (
                "batched appends, PostgreSQL",
                f"{pa['per_s']:,.0f} ev/s",
                ">= 5,000",
                pa["per_s"] >= 5_000,
            )
        )
    for k in (1, 32):
        on, off = sc.get(f"decide_on_{k}"), sc.get(f"decide_off_{k}")
        if on and off:
            r = on["per_s"] / off["per_s"]
            checks.append(
                (
                    f"Decide/s with signing + checkpoints, {k} in fl.",
                    f"{r:.2f}x of off",
                    ">= 0.90x (issue #12)",
                    r >= 0.90,
                )
            )
    vs = res.get("verify_sqlite", {}).get("verify", []) + res.get("verify_postgres", {}).get(
        "verify", []
    )
    if vs:
        worst = min(v["per_s"] for v in vs)
        checks.append(
            (
                "verify (slowest of the verify rows)",
                f"{worst:,.0f} ev/s",
                ">= 100,000",
                worst >= 100_000,
            )
        )
    return rows, checks


def print_table(res: dict[str, Any]) -> None:
    rows, checks = build_table(res)
    head = ["benchmark", "rate", "p50 ms", "p99 ms", "max ms", "vs bare p50 / rate", "notes"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, 6) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print()
    print(fmt(head))
    print("-" * len(fmt(head)))
    for r in rows:
        print(fmt(r))
    if checks:
        print("\ntargets (issue #8, 2 cores):")
        for name, got, want, ok in checks:
            print(f"  {'met   ' if ok else 'MISSED'}  {name:<42} {got:>22}  (target {want})")


def main() -> int:
    ap = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (also BENCH_QUICK=1)")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL rows")
    ap.add_argument("--no-openbao", action="store_true", help="skip the transit rows")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of parts: decide,cost,approvals,postgres,append,verify (default: all)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON path")
    a = ap.parse_args()
    quick = a.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0")
    sizes = QUICK if quick else FULL
    only = {p.strip() for p in a.only.split(",") if p.strip()}

    def want(part: str) -> bool:
        return not only or part in only

    res: dict[str, Any] = {}
    info = machine_info()
    mode = "quick" if quick else "full"
    log(f"bench ({mode}) on {info['cpus']} CPUs, load {info['load_average_at_start']}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="l7-bench-") as tmp:
        work = Path(tmp)
        if want("decide"):
            res["decide_sqlite"] = bench_decide_sqlite(work, sizes)
        if want("decide") or want("cost"):
            res["signing_cost"] = bench_signing_cost(work, sizes)
        if want("approvals") and not a.no_openbao:
            res["approvals"] = bench_approvals(work, sizes)
        elif want("approvals"):
            res["approvals"] = bench_approvals(work, replace(sizes, transit_signs=0))
        if want("append"):
            log("ledger appends, SQLite")
            res["append_sqlite"] = bench_append(
                f"sqlite:///{work / 'append.sqlite'}", sizes, "SQLite"
            )
        if want("verify"):
            res["verify_sqlite"] = bench_verify_growth(
                f"sqlite:///{work / 'verify.sqlite'}", sizes, "SQLite"
            )
        if not a.no_postgres and (want("postgres") or want("append") or want("verify")):
            try:
                with postgres() as cluster:
                    if want("postgres"):
                        res["decide_postgres"] = bench_decide_postgres(cluster, work, sizes)
                    if want("append"):
                        log("ledger appends, PostgreSQL (fsync on)")
                        res["append_postgres"] = bench_append(
                            cluster.url(cluster.create_database()), sizes, "PostgreSQL"
                        )
                    if want("verify"):
                        pg_sizes = replace(sizes, verify_sizes=(sizes.pg_verify,))
                        res["verify_postgres"] = bench_verify_growth(
                            cluster.url(cluster.create_database()), pg_sizes, "PostgreSQL"
                        )
            except (RuntimeError, OSError, FileNotFoundError) as e:
                res["postgres_error"] = f"{type(e).__name__}: {e}"
                log(f"PostgreSQL rows skipped: {res['postgres_error']}")
    info["load_average_at_end"] = os.getloadavg()
    info["bench_seconds"] = round(time.perf_counter() - t_all, 1)
    print_table(res)
    _, checks = build_table(res)
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if quick else "full",
        "sizes": asdict(sizes),
        "machine": info,
        "targets": [
            {"target": n, "measured": got, "wanted": w, "met": ok} for n, got, w, ok in checks
        ],
        "results": res,
    }
    a.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten to {a.out}  ({info['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
