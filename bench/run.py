"""``make bench``: Layer-7 against bare OPA, measured in the same run.

Every number is printed next to a baseline taken in this run on this machine:
  1. bare OPA REST from Python (kept-alive session), same policy, same input
  2. Decide over gRPC with the durable SQLite ledger (WAL, synchronous=FULL),
     1 request in flight and 8 in flight; ratio against (1)
  3. ledger batched durable appends/s (100 events a batch, 4 writers)
  4. ledger verify events/s on a 100k-event ledger
Results go to bench/results.json with machine info. Bounded: a few thousand
requests each; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from l7.cli.progress import Progress
from l7.client import GovernanceClient
from l7.gateway.client import GatewayClient
from l7.policy.evaluator import ENTRYPOINT, OpaEvaluator
from l7.server.convert import request_to_proto
from l7.stack import REPO_ROOT, Stack, StackConfig
from ledger import EventType, NewEvent, open_ledger

RESULTS = REPO_ROOT / "bench" / "results.json"
REQUEST: dict[str, Any] = json.loads(
    (REPO_ROOT / "examples" / "requests" / "deploy-prod.json").read_text()
)


def _latency_run(fn: Callable[[], object], n: int, warmup: int = 100) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        s = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - s)
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "n": n,
        "per_s": n / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (n - 1))],
    }


def _concurrent_run(fn: Callable[[], object], n: int, inflight: int) -> dict[str, float]:
    lat: list[float] = []

    def one(_: int) -> None:
        s = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - s)

    with ThreadPoolExecutor(inflight) as pool:
        list(pool.map(one, range(min(n, 50))))  # warm-up
        lat.clear()
        t0 = time.perf_counter()
        list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {
        "n": n,
        "inflight": inflight,
        "per_s": n / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[int(0.99 * (n - 1))],
    }


def bench_decide(n: int, work: Path) -> dict[str, Any]:
    url = f"sqlite:///{work / 'decide.sqlite'}"
    cfg = StackConfig(ledger_url=url, work_dir=work, gateway=True, sweep_interval_s=0)
    with Stack(cfg) as stack:
        assert stack.opa is not None
        opa = OpaEvaluator(stack.opa.url)
        policy_input = {k: REQUEST[k] for k in ("action", "context")}

        def bare() -> object:
            return opa._client.query_rule(  # the exact REST call the engine makes
                policy_input, ENTRYPOINT[0], ENTRYPOINT[1], {"provenance": True}
            )

        print("  bare OPA REST ...", file=sys.stderr)
        baseline = _latency_run(bare, n)
        opa.close()
        proto = request_to_proto({k: REQUEST[k] for k in ("action", "context")})
        with GovernanceClient(stack.target) as client:
            print("  Decide over gRPC, 1 in flight ...", file=sys.stderr)
            decide1 = _latency_run(lambda: client.decide_proto(proto), n)
            print("  Decide over gRPC, 8 in flight ...", file=sys.stderr)
            decide8 = _concurrent_run(lambda: client.decide_proto(proto), n, 8)
            print("  Authorize at the gateway, 1 in flight ...", file=sys.stderr)
            grants = []
            for i in range(n + 100):
                req = json.loads((REPO_ROOT / "examples/requests/read-dev.json").read_text())
                req["idempotency_key"] = ""
                req["action"]["target"]["id"] = f"bench-{i}"
                r = client.decide_proto(request_to_proto(req))
                grants.append((r.grant, req["action"]))
        gw = GatewayClient(stack.gateway_target)
        it = iter(grants)
        authorize1 = _latency_run(lambda: gw.authorize(*next(it)), n)
        gw.close()
        assert stack.ledger is not None
        events = stack.ledger.count()
    return {
        "bare_opa": baseline,
        "decide_1": decide1,
        "decide_8": decide8,
        "authorize_1": authorize1,
        "ledger_events": events,
    }


def bench_append(
    total: int, work: Path, batch: int = 100, writers: int = 4, url: str | None = None
) -> dict[str, float]:
    led = open_ledger(url or f"sqlite:///{work / 'append.sqlite'}")
    per_writer = total // (batch * writers)

    def writer(w: int) -> None:
        for b in range(per_writer):
            did = f"bench-{w}-{b}"
            led.append(
                [
                    NewEvent(did, EventType.POLICY_GATE, "bench", "rev", {"i": i, "gate": "g"})
                    for i in range(batch)
                ]
            )

    t0 = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(writer, range(writers)))
    wall = time.perf_counter() - t0
    n = per_writer * batch * writers
    led.close()
    return {"events": n, "batch": batch, "writers": writers, "per_s": n / wall}


def bench_verify(
    events: int, work: Path, url: str | None = None, name: str = "verify"
) -> dict[str, float]:
    led = open_ledger(url or f"sqlite:///{work / f'{name}-{events}.sqlite'}")
    prog = Progress(f"  filling ledger with {events:,} events for verify")
    batch, done = 500, 0
    while done < events:
        led.append(
            [
                NewEvent(
                    f"v-{(done + i) // 10}",
                    EventType.RISK_SCORED,
                    "bench",
                    "rev",
                    {"score": i % 100, "band": "low", "reasons": ["r"]},
                )
                for i in range(batch)
            ]
        )
        done += batch
        prog(done, events)
    t0 = time.perf_counter()
    report = led.verify(progress=Progress("  verifying"))
    wall = time.perf_counter() - t0
    led.close()
    return {"events": report.events, "per_s": report.events / wall, "seconds": wall}


def bench_postgres(append_events: int, verify_events: int, work: Path) -> dict[str, Any]:
    """The same ledger runs on a throwaway PostgreSQL cluster (tests/ledger/postgres.py),
    with fsync and synchronous_commit ON so the numbers are durable ones."""
    from tests.ledger.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    try:
        cluster.sql("ALTER SYSTEM SET fsync = on")
        cluster.sql("ALTER SYSTEM SET synchronous_commit = on")
        cluster.sql("ALTER SYSTEM SET full_page_writes = on")
        cluster.sql("SELECT pg_reload_conf()")
        db1, db2 = cluster.create_database(), cluster.create_database()
        append = bench_append(append_events, work, url=cluster.url(db1))
        verify = bench_verify(verify_events, work, url=cluster.url(db2))
    finally:
        cluster.stop()
        cluster.remove()
    return {"append": append, "verify": verify}


def main() -> int:
    ap = argparse.ArgumentParser(prog="make bench")
    ap.add_argument("--requests", type=int, default=2000, help="requests per latency run")
    ap.add_argument("--append-events", type=int, default=100_000)
    ap.add_argument("--verify-events", type=int, default=100_000)
    ap.add_argument(
        "--growth", default="10000,100000,1000000", help="SQLite verify sizes (comma list)"
    )
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL rows")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="l7-bench-") as tmp:
        work = Path(tmp)
        print("bench: Decide vs bare OPA", file=sys.stderr)
        decide = bench_decide(a.requests, work)
        print("bench: ledger appends", file=sys.stderr)
        append = bench_append(a.append_events, work)
        print("bench: ledger verify", file=sys.stderr)
        verify = bench_verify(a.verify_events, work)
        growth = [
            bench_verify(int(n), work, name="growth") for n in a.growth.split(",") if n.strip()
        ]
        pg: dict[str, Any] = {}
        if not a.no_postgres:
            print("bench: PostgreSQL ledger (durable: fsync on)", file=sys.stderr)
            pg = bench_postgres(a.append_events, a.verify_events, work)
    base = decide["bare_opa"]
    rows = [
        ("bare OPA REST (baseline)", base["per_s"], base["p50_ms"], base["p99_ms"], 1.0),
        (
            "Decide gRPC + SQLite, 1 in flight",
            decide["decide_1"]["per_s"],
            decide["decide_1"]["p50_ms"],
            decide["decide_1"]["p99_ms"],
            decide["decide_1"]["p50_ms"] / base["p50_ms"],
        ),
        (
            "Decide gRPC + SQLite, 8 in flight",
            decide["decide_8"]["per_s"],
            decide["decide_8"]["p50_ms"],
            decide["decide_8"]["p99_ms"],
            decide["decide_8"]["p50_ms"] / base["p50_ms"],
        ),
    ]
    print()
    print(f"{'benchmark':<38} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p50 / bare':>11}")
    print("-" * 79)
    for name, per_s, p50, p99, ratio in rows:
        print(f"{name:<38} {per_s:>10,.0f} {p50:>8.2f} {p99:>8.2f} {ratio:>10.2f}x")
    a1 = decide["authorize_1"]
    print(
        f"{'Authorize at gateway, 1 in flight':<38} {a1['per_s']:>10,.0f} {a1['p50_ms']:>8.2f} "
        f"{a1['p99_ms']:>8.2f} {a1['p50_ms'] / base['p50_ms']:>10.2f}x"
    )
    print(f"{'ledger append (batch 100, 4 writers)':<38} {append['per_s']:>10,.0f} events/s")
    label = f"ledger verify ({verify['events']:,} events)"
    print(f"{label:<38} {verify['per_s']:>10,.0f} events/s")
    if pg:
        pa, v = pg["append"], pg["verify"]
        print(f"{'PostgreSQL append (batch 100, 4 writers)':<38} {pa['per_s']:>10,.0f} events/s")
        vlabel = f"PostgreSQL verify ({v['events']:,} events)"
        print(f"{vlabel:<38} {v['per_s']:>10,.0f} events/s")
    print("\nSQLite verify time as the ledger grows:")
    for g in growth:
        print(f"  {g['events']:>10,} events  {g['seconds']:>7.2f} s  {g['per_s']:>10,.0f} events/s")
    tput = decide["decide_1"]["per_s"] / base["per_s"]
    print(f"{'throughput ratio Decide(1)/bare':<38} {tput:>10.2f}")
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "decide": decide,
        "ledger_append": append,
        "ledger_verify": verify,
        "ledger_verify_growth_sqlite": growth,
        "postgres": pg,
        "ratios": {
            "decide_1_p50_over_bare_p50": rows[1][4],
            "decide_8_p50_over_bare_p50": rows[2][4],
            "decide_1_throughput_over_bare": decide["decide_1"]["per_s"] / base["per_s"],
        },
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
