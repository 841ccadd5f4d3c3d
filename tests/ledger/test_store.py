"""SqlLedger on SQLite and PostgreSQL: append, group commit, append-only triggers, locks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from ledger import (
    GENESIS_HASH,
    Confirmation,
    DuplicateKey,
    EventType,
    InvalidEvent,
    LedgerUnavailable,
    NewEvent,
    SqlLedger,
    chain_hash,
    open_ledger,
)
from tests.ledger.conftest import Backend, ev


def _wait_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_confirmations_are_contiguous_and_chained(led: SqlLedger) -> None:
    first = led.append([ev("d1", 0), ev("d1", 1), ev("d2", 0)])
    second = led.append([ev("d1", 2), ev("d2", 1)])
    assert [c.global_seq for c in first + second] == [1, 2, 3, 4, 5]
    assert [(c.decision_id, c.sequence) for c in first + second] == [
        ("d1", 1),
        ("d1", 2),
        ("d2", 1),
        ("d1", 3),
        ("d2", 2),
    ]
    stream = led.get_stream("d1")
    assert [e.sequence for e in stream] == [1, 2, 3]
    assert stream[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in stream[1:]] == [e.hash for e in stream[:-1]]
    assert [e.hash for e in stream] == [first[0].hash, first[1].hash, second[0].hash]
    assert stream[1].payload == {"gate": "g1", "result": "pass"}
    assert led.count() == 5


def test_stored_event_carries_clock_time_and_hash_of_its_body(
    led: SqlLedger, backend: Backend
) -> None:
    (c,) = led.append([ev("d1", key="idem:alice:1")])
    stored = led.find_by_unique_key("idem:alice:1")
    assert stored is not None
    assert stored.at == "2026-11-25T20:44:12.123456Z"
    assert (stored.event_id, stored.global_seq, stored.schema_version) == (c.event_id, 1, 1)
    ((body,),) = backend.sql("SELECT body FROM events")
    assert chain_hash(GENESIS_HASH, body.encode()) == c.hash
    assert led.find_by_unique_key("idem:alice:2") is None


def test_iter_events_streams_in_global_order(led: SqlLedger) -> None:
    for i in range(5):
        led.append([ev(f"d{j}", i) for j in range(1000)])
    got = [e.global_seq for e in led.iter_events(after_global_seq=10)]
    assert got == list(range(11, 5001))
    assert list(led.iter_events(after_global_seq=5000)) == []


def test_batch_with_taken_unique_key_writes_nothing(led: SqlLedger) -> None:
    led.append([ev("d1", key="nonce-1")])
    with pytest.raises(DuplicateKey, match=r"unique key 'nonce-1' is already recorded") as info:
        led.append([ev("d2", 0), ev("d2", 1, key="nonce-1")])
    assert info.value.unique_key == "nonce-1"
    assert led.get_stream("d2") == []
    assert led.count() == 1
    (c,) = led.append([ev("d2", 0)])
    assert c.global_seq == 2  # the failed batch left no gap


def test_repeated_unique_key_inside_one_batch_is_refused(led: SqlLedger) -> None:
    with pytest.raises(DuplicateKey, match=r"'k'"):
        led.append([ev("d1", 0, key="k"), ev("d1", 1, key="k")])
    assert led.count() == 0


def test_invalid_event_is_refused_before_the_store(led: SqlLedger) -> None:
    with pytest.raises(InvalidEvent, match=r"^payload\.score: nan is not a JSON number"):
        led.append([ev("d1", 0), ev("d1", 1, payload={"score": float("nan")})])
    bad_type: Any = "policy.invented"
    with pytest.raises(InvalidEvent, match=r"event_type: 'policy.invented' is not a ledger"):
        led.append([NewEvent("d1", bad_type, "a", "r")])
    assert led.count() == 0
    assert led.append([]) == []


def _hold_writer(backend: Backend, led: SqlLedger, pending: int) -> Callable[[], None]:
    """Block the writer on the write lock until ``pending`` batches are queued; return release."""
    lock = backend.lock()

    def release() -> None:
        _wait_until(lambda: led.stats().pending >= pending, f"{pending} pending batches")
        lock.release()

    return release


def test_failed_batch_rolls_back_alone_within_a_group_commit(backend: Backend) -> None:
    with SqlLedger(backend.url, busy_timeout_s=30) as led:
        led.append([ev("taken", key="nonce-1")])
        before = led.stats().commits
        release = _hold_writer(backend, led, pending=3)
        with ThreadPoolExecutor(3) as pool:
            # The first batch is taken alone and blocks on the lock; the next two queue
            # up behind it and are then drained together into ONE transaction.
            blocker = pool.submit(led.append, [ev("first", 0)])
            _wait_until(
                lambda: led.stats().pending == 1 and led.stats().queued == 0,
                "the blocker to be taken by the writer",
            )
            good: Future[list[Confirmation]] = pool.submit(
                led.append, [ev("good", 0), ev("good", 1)]
            )
            bad = pool.submit(led.append, [ev("bad", 0), ev("bad", 1, key="nonce-1")])
            release()
            assert len(blocker.result()) == 1
            assert [c.sequence for c in good.result()] == [1, 2]
            with pytest.raises(DuplicateKey, match=r"'nonce-1'"):
                bad.result()
        stats = led.stats()
        assert stats.commits - before == 2  # blocker alone, then good + bad together
        assert led.get_stream("bad") == []
        assert led.count() == 4
        assert led.verify().last_global_seq == 4


def test_group_commit_groups_concurrent_batches(backend: Backend) -> None:
    with SqlLedger(backend.url, busy_timeout_s=30) as led:
        release = _hold_writer(backend, led, pending=8)
        with ThreadPoolExecutor(8) as pool:
            futs = [pool.submit(led.append, [ev(f"d{t}", i) for i in range(5)]) for t in range(8)]
            release()
            confs = [c for f in futs for c in f.result()]
        stats = led.stats()
        assert stats.batches == 8 and stats.events == 40 and stats.pending == 0
        assert stats.commits <= 2 < stats.batches  # at most the first batch committed alone
        assert sorted(c.global_seq for c in confs) == list(range(1, 41))


def test_many_threads_appending_concurrently(led: SqlLedger) -> None:
    threads, per_thread, batch, streams = 8, 200, 10, 50
    confs: list[Confirmation] = []
    mu = threading.Lock()

    def writer(t: int) -> None:
        for b in range(per_thread // batch):
            got = led.append(
                [ev(f"s{(t * per_thread + b * batch + i) % streams}", i) for i in range(batch)]
            )
            assert [c.global_seq for c in got] == list(
                range(got[0].global_seq, got[0].global_seq + batch)
            )
            with mu:
                confs.extend(got)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(writer, range(threads)))
    total = threads * per_thread
    assert sorted(c.global_seq for c in confs) == list(range(1, total + 1))
    for s in range(streams):
        seqs = sorted(c.sequence for c in confs if c.decision_id == f"s{s}")
        assert seqs == list(range(1, len(seqs) + 1))
    report = led.verify()
    assert (report.events, report.streams, report.last_global_seq) == (total, streams, total)


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE events SET actor='mallory' WHERE global_seq=1", "append-only: UPDATE refused"),
        ("DELETE FROM events WHERE global_seq=1", "append-only: DELETE refused"),
    ],
)
def test_triggers_refuse_update_and_delete(
    led: SqlLedger, backend: Backend, sql: str, match: str
) -> None:
    """Even the schema owner (file owner / superuser) is refused while the triggers stand
    (TRUNCATE, which SQLite lacks, is in test_postgres)."""
    led.append([ev("d1")])
    with pytest.raises(DBAPIError, match=match):
        backend.sql(sql)
    assert led.get_stream("d1")[0].actor == "alice"


def test_append_after_close_is_unavailable(backend: Backend) -> None:
    led = open_ledger(backend.url)
    led.append([ev("d1")])
    led.close()
    led.close()  # idempotent
    with pytest.raises(LedgerUnavailable, match=r"^ledger is closed"):
        led.append([ev("d1")])
    with pytest.raises(LedgerUnavailable, match=r"^ledger is closed"):
        led.count()


def test_close_commits_what_is_pending(backend: Backend) -> None:
    led = SqlLedger(backend.url, busy_timeout_s=30)
    release = _hold_writer(backend, led, pending=1)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(led.append, [ev("d1")])
        release()
        led.close()
        assert fut.result()[0].global_seq == 1
    with open_ledger(backend.url) as again:
        assert again.count() == 1


def test_locked_database_is_unavailable_then_recovers(backend: Backend) -> None:
    with SqlLedger(backend.url, busy_timeout_s=0.2) as led:
        led.append([ev("d1", 0)])
        lock = backend.lock()
        try:
            t0 = time.monotonic()
            with pytest.raises(LedgerUnavailable, match=r"is locked by another connection"):
                led.append([ev("d1", 1)])
            assert time.monotonic() - t0 < 2.0
            assert led.count() == 1  # reads still work beside the lock (WAL / MVCC)
        finally:
            lock.release()
        (c,) = led.append([ev("d1", 1)])
        assert (c.sequence, c.global_seq) == (2, 2)
        led.verify()


def test_in_memory_and_unknown_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LedgerUnavailable, match=r"in-memory SQLite"):
        SqlLedger("sqlite://")
    with pytest.raises(LedgerUnavailable, match=r"unsupported ledger URL scheme 'mysql'"):
        SqlLedger("mysql://u@localhost/x")
    with pytest.raises(LedgerUnavailable, match=r"scheme 'postgresql\+asyncpg': use sqlite"):
        SqlLedger("postgresql+asyncpg://u@localhost/x")
    with pytest.raises(LedgerUnavailable, match=r"no ledger file at"):
        open_ledger(f"sqlite:///{tmp_path / 'missing.sqlite'}", create=False)


def test_unreachable_postgresql_url_is_accepted_but_unavailable() -> None:
    # port 1 on localhost: nothing listens, so connecting fails fast
    with pytest.raises(
        LedgerUnavailable, match=r"^cannot connect to ledger postgresql://ledger@127.0.0.1:1/ledger"
    ):
        SqlLedger("postgresql://ledger@127.0.0.1:1/ledger")


def test_event_types_round_trip(led: SqlLedger) -> None:
    """Every type but batch.attested, whose payload the ledger checks (test_attestation)."""
    kinds = [k for k in EventType if k is not EventType.BATCH_ATTESTED]
    led.append([ev("d1", kind=k) for k in kinds])
    assert [e.event_type for e in led.get_stream("d1")] == [k.value for k in kinds]


def test_savepoint_rolls_back_a_batch_that_fails_inside_the_insert(backend: Backend) -> None:
    """White-box: a batch whose INSERT itself fails (a repeated event_id, which the public
    API cannot produce) rolls back to its SAVEPOINT while the batch grouped with it commits."""
    with SqlLedger(backend.url, busy_timeout_s=30) as led:
        at = "2026-11-25T20:44:12.123456Z"
        one = led._prepare(ev("broken", 0), at)
        broken = [one, one]  # the second row repeats event_id -> UNIQUE fails mid-executemany
        release = _hold_writer(backend, led, pending=3)
        with ThreadPoolExecutor(3) as pool:
            blocker = pool.submit(led.append, [ev("first", 0)])
            _wait_until(
                lambda: led.stats().pending == 1 and led.stats().queued == 0,
                "the blocker to be taken by the writer",
            )
            bad = pool.submit(led._writer.submit, broken)
            good = pool.submit(led.append, [ev("good", 0)])
            release()
            blocker.result()
            with pytest.raises(
                LedgerUnavailable,
                match=r"UNIQUE constraint failed: events.event_id"
                r"|violates unique constraint \"uq_events_event_id\"",
            ):
                bad.result()
            assert good.result()[0].global_seq == 2
        assert led.stats().commits == 2
        assert led.get_stream("broken") == []
        assert led.verify().events == 2
