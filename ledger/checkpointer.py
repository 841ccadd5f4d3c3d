"""Background threads around an ``AuditableLedger``: checkpoint signing and integrity checks.

``Checkpointer`` signs a checkpoint (``ledger.sign_checkpoint()``) when the log has
grown AND either ``every_events`` events were appended since the last checkpoint or
``every_s`` seconds have passed since it. It polls ``ledger.count()`` every ``poll_s``.
Errors are logged and retried at the next poll; they never reach the writer or the
callers of ``append``. ``stop()`` signs a last checkpoint if the log grew (best effort).

``IntegrityMonitor`` runs ``ledger.audit()`` every ``every_s`` seconds, or
``ledger.verify()`` while no checkpoint exists anywhere. On an IntegrityViolation it
calls ``on_failure(violation)`` (the engine enters restriction mode there) and
appends an ``anomaly.detected`` event of kind ``ledger_integrity_failed`` to the
stream ``MONITOR_STREAM`` (best effort: a failing append is logged). Each kind of
failure (``violation.what``) is reported once and not again until a check passes (its
message would change with every event appended meanwhile, the anomaly itself included).
A ledger that cannot be read (LedgerUnavailable) is logged, not reported as tampering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ledger.errors import IntegrityViolation, LedgerError
from ledger.interface import AuditableLedger, EventType, NewEvent
from ledger.merkle import ProofInvalid

__all__ = ["MONITOR_ACTOR", "MONITOR_STREAM", "Checkpointer", "IntegrityMonitor"]

log = logging.getLogger(__name__)

MONITOR_STREAM = "ledger/integrity"
"""Decision stream the monitor records ``ledger_integrity_failed`` anomalies in."""
MONITOR_ACTOR = "ledger-integrity-monitor"


class _Periodic:
    """A daemon thread calling ``self._tick()`` every ``interval`` seconds until stopped."""

    def __init__(self, interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._tick()
            except Exception:  # a background thread must not die on one bad tick
                log.exception("%s: unexpected error", self._name)

    def _tick(self) -> None:
        raise NotImplementedError


class Checkpointer(_Periodic):
    """Signs checkpoints in the background (see the module docstring)."""

    def __init__(
        self,
        ledger: AuditableLedger,
        *,
        every_s: float = 60,
        every_events: int = 10_000,
        poll_s: float = 1.0,
    ) -> None:
        if every_events < 1:
            raise ValueError(f"every_events must be at least 1, got {every_events}")
        super().__init__(min(poll_s, every_s), "ledger-checkpointer")
        self.ledger = ledger
        self.every_s = every_s
        self.every_events = every_events
        self._lock = threading.Lock()
        self._signed_size = -1  # unknown until the first tick
        self._signed_at = time.monotonic()
        self.signed = 0
        """Checkpoints signed by this checkpointer."""

    def stop(self, *, final: bool = True) -> None:
        """Stop the thread; with ``final``, sign a last checkpoint if the log grew."""
        self._halt()
        if final:
            try:
                self._maybe_sign(force=True)
            except Exception:
                log.exception("ledger-checkpointer: final checkpoint failed")

    def _tick(self) -> None:
        try:
            self._maybe_sign(force=False)
        except LedgerError:
            log.exception("ledger-checkpointer: signing a checkpoint failed; retrying later")

    def _maybe_sign(self, *, force: bool) -> None:
        with self._lock:
            if self._signed_size < 0:
                cps = self.ledger.checkpoints()
                self._signed_size = int(cps[-1].tree_size) if cps else 0
            grown = self.ledger.count() - self._signed_size
            if grown <= 0:
                return
            due = time.monotonic() - self._signed_at >= self.every_s
            if not (force or due or grown >= self.every_events):
                return
            cp = self.ledger.sign_checkpoint()
            self._signed_size = int(cp.tree_size)
            self._signed_at = time.monotonic()
            self.signed += 1
            log.info("ledger checkpoint signed: tree_size %s root %s", cp.tree_size, cp.root_hash)


class IntegrityMonitor(_Periodic):
    """Audits the ledger in the background and reports tampering (see the module docstring)."""

    def __init__(
        self,
        ledger: AuditableLedger,
        *,
        every_s: float,
        on_failure: Callable[[IntegrityViolation], None],
    ) -> None:
        super().__init__(every_s, "ledger-integrity-monitor")
        self.ledger = ledger
        self.on_failure = on_failure
        self._lock = threading.Lock()
        self._reported: str | None = None

    def stop(self) -> None:
        self._halt()

    def _tick(self) -> None:
        self.check_now()

    def _check(self) -> None:
        if not self.ledger.checkpoints():
            # Nothing signed to audit against yet: the chains and global sequence alone.
            self.ledger.verify()
            return
        try:
            self.ledger.audit()
        except ProofInvalid:
            # No checkpoint anywhere after all (a race with the first signing): chains only.
            if self.ledger.checkpoints():
                raise
            self.ledger.verify()

    def check_now(self) -> IntegrityViolation | None:
        """Run one check now; returns the violation found (already reported), or None.

        LedgerUnavailable (the ledger cannot be read) is logged and returns None.
        """
        with self._lock:
            try:
                self._check()
            except IntegrityViolation as e:
                violation = e
            except ProofInvalid as e:  # evidence itself is malformed: as good as tampering
                violation = IntegrityViolation(
                    "audit_failed",
                    decision_id="-",
                    sequence=0,
                    global_seq=0,
                    expected="checkpoints and proofs that verify",
                    actual=str(e),
                )
                violation.__cause__ = e
            except LedgerError:
                log.exception("ledger integrity check could not run; retrying later")
                return None
            else:
                self._reported = None
                return None
            if violation.what != self._reported:
                self._reported = violation.what
                self._report(violation)
            return violation

    def _report(self, violation: IntegrityViolation) -> None:
        log.error("ledger integrity check failed: %s", violation)
        try:
            self.on_failure(violation)
        except Exception:
            log.exception("ledger integrity monitor: on_failure raised")
        try:
            self.ledger.append(
                [
                    NewEvent(
                        MONITOR_STREAM,
                        EventType.ANOMALY_DETECTED,
                        MONITOR_ACTOR,
                        "",
                        {
                            "kind": "ledger_integrity_failed",
                            "subject": MONITOR_ACTOR,
                            "what": violation.what,
                            "global_seq": violation.global_seq,
                            "detail": str(violation)[:2000],
                        },
                    )
                ]
            )
        except LedgerError:
            log.exception("ledger integrity monitor: could not record the anomaly")
