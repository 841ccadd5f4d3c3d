"""Load generators, latency statistics and server processes for ``make bench``.

Servers run as their own processes (``l7 serve``, ``l7 gateway serve``), as they do in
production, so the load generator does not share a GIL with the engine. Load is issued
with gRPC futures from one thread:

* ``closed_loop``: N requests in flight; a completion issues the next request.
* ``fixed_rate``: open loop, request i is sent at t0 + i / rate whatever happened to the
  earlier ones; latency is measured from the *scheduled* send time, so a stalled server
  (or a lagging client) shows up in the numbers instead of silently lowering the rate.

Nothing here asserts a time; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "Latency",
    "Server",
    "closed_loop",
    "fixed_rate",
    "log",
    "timed",
]

_T0 = time.monotonic()


def log(msg: str) -> None:
    """A progress line on stderr with the time since the bench started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Latency:
    """Latencies (seconds) and errors of one run, summarised by ``summary``."""

    wall_s: float = 0.0
    samples: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.samples)
        n = len(lat)

        def pct(p: float) -> float:
            return 1000 * lat[min(n - 1, int(p * n))] if n else float("nan")

        out: dict[str, Any] = {
            "n": n,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "wall_s": round(self.wall_s, 3),
            "per_s": (n / self.wall_s) if self.wall_s > 0 else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": 1000 * lat[-1] if n else float("nan"),
            "mean_ms": 1000 * sum(lat) / n if n else float("nan"),
        }
        out.update(self.extra)
        return out


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return str(exc.code().name)
    return type(exc).__name__


def timed(fn: Callable[[int], object], n: int, *, warmup: int = 50) -> Latency:
    """``fn(i)`` n times in this thread (after ``warmup`` unmeasured calls)."""
    for i in range(warmup):
        fn(-1 - i)
    out = Latency()
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        try:
            fn(i)
        except Exception as e:
            out.errors[_error_kind(e)] += 1
            continue
        out.samples.append(time.perf_counter() - s)
    out.wall_s = time.perf_counter() - t0
    return out


def closed_loop(
    issue: Callable[[int], grpc.Future[Any]], n: int, inflight: int, *, timeout_s: float = 300.0
) -> Latency:
    """Keep ``inflight`` requests outstanding until ``n`` have completed."""
    out = Latency()
    lock = threading.Lock()
    done = threading.Event()
    state = {"next": 0, "finished": 0}

    def launch() -> None:
        with lock:
            i = state["next"]
            if i >= n:
                return
            state["next"] = i + 1
        start = time.perf_counter()
        try:
            fut = issue(i)
        except Exception as e:  # could not even send: count it, keep the loop going
            finish(None, start, e)
            return
        fut.add_done_callback(lambda f: finish(f, start, None))

    def finish(f: grpc.Future[Any] | None, start: float, exc: BaseException | None) -> None:
        dt = time.perf_counter() - start
        if exc is None and f is not None:
            exc = f.exception()
        with lock:
            if exc is None:
                out.samples.append(dt)
            else:
                out.errors[_error_kind(exc)] += 1
            state["finished"] += 1
            last = state["finished"] >= n
        if last:
            done.set()
        else:
            launch()

    t0 = time.perf_counter()
    for _ in range(min(inflight, n)):
        launch()
    if not done.wait(timeout_s):
        out.errors["bench_timeout"] += n - state["finished"]
    out.wall_s = time.perf_counter() - t0
    out.extra["inflight"] = inflight
    return out


def fixed_rate(
    issue: Callable[[int], grpc.Future[Any]],
    rate: float,
    seconds: float,
    *,
    drain_s: float = 30.0,
    max_backlog_s: float = 2.0,
) -> Latency:
    """Send at ``rate`` per second for ``seconds`` (open loop); latency from schedule.

    A server slower than ``rate`` builds an ever-growing backlog; once more than
    ``max_backlog_s`` seconds' worth of requests are outstanding the run stops sending
    (``saturated_after_s`` says when) so that the backlog stays bounded and does not
    spill into the next benchmark. Latencies are those of the requests sent."""
    n = int(rate * seconds)
    out = Latency()
    lock = threading.Lock()
    done = threading.Event()
    finished = [0]
    behind = [0.0]
    saturated_after: float | None = None
    max_outstanding = max(1, int(rate * max_backlog_s))

    def finish(f: grpc.Future[Any], scheduled: float) -> None:
        dt = time.perf_counter() - scheduled
        exc = f.exception()
        with lock:
            if exc is None:
                out.samples.append(dt)
            else:
                out.errors[_error_kind(exc)] += 1
            finished[0] += 1
            last = finished[0] >= sent[0] and sending_done[0]
        if last:
            done.set()

    sent = [0]
    sending_done = [False]
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = t0 + i / rate
        now = time.perf_counter()
        if scheduled > now:
            time.sleep(scheduled - now)
        else:
            behind[0] = max(behind[0], now - scheduled)
        with lock:
            if sent[0] - finished[0] > max_outstanding:
                saturated_after = scheduled - t0
                break
            sent[0] += 1
        try:
            fut = issue(i)
        except Exception as e:
            with lock:
                out.errors[_error_kind(e)] += 1
                finished[0] += 1
            continue
        fut.add_done_callback(functools.partial(_done, finish, scheduled))
    with lock:
        sending_done[0] = True
        if finished[0] >= sent[0]:
            done.set()
    if not done.wait(drain_s):
        out.errors["bench_timeout"] += sent[0] - finished[0]
    out.wall_s = time.perf_counter() - t0  # first send to last answer: the rate achieved
    out.extra.update(
        {
            "target_per_s": rate,
            "seconds": seconds,
            "sent": sent[0],
            "saturated_after_s": None if saturated_after is None else round(saturated_after, 2),
            "client_max_lag_ms": round(1000 * behind[0], 3),
        }
    )
    return out


def _done(
    finish: Callable[[grpc.Future[Any], float], None], scheduled: float, f: grpc.Future[Any]
) -> None:
    finish(f, scheduled)


class Server:
    """A Layer-7 server process (``l7 serve`` / ``l7 gateway serve``) on a free port.

    ``ready`` is a regex matched against stdout lines; the named groups of every line
    matched by ``fields`` are collected. Output goes to ``log_path``. ``stop`` sends
    SIGTERM to the process group it started and waits (bounded), then SIGKILL.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        ready: str,
        fields: Sequence[str] = (),
        log_path: Path,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.info: dict[str, str] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log = log_path.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stop() reaches OPA too
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        patterns = [re.compile(ready), *(re.compile(f) for f in fields)]
        deadline = time.monotonic() + timeout_s
        seen_ready = False
        while not seen_ready:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.1, left))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                self.stop()
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(self.args[:3])} did not become ready:\n{tail}")
            for i, p in enumerate(patterns):
                m = p.search(line)
                if m:
                    self.info.update(m.groupdict())
                    seen_ready = seen_ready or i == 0
        # the lines after the ready one (OPA url, grant key, ...) come right after it
        end = time.monotonic() + 2.0
        while time.monotonic() < end and not all(k in self.info for k in _names(fields)):
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            for p in patterns[1:]:
                m = p.search(line)
                if m:
                    self.info.update(m.groupdict())

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by this process and each of its children
        (``l7 serve`` runs OPA as a child), keyed by command name."""
        out: dict[str, float] = {}
        pids = [self.proc.pid, *_children(self.proc.pid)]
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime
            out[name] = out.get(name, 0.0) + ticks / _CLK_TCK
        return out

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._pump_thread.join(5)  # the last lines reach the log before it is closed
        self._log.close()


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            out += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            continue
    return out


def _names(patterns: Sequence[str]) -> list[str]:
    return [n for p in patterns for n in re.compile(p).groupindex]
