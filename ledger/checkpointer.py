"""Background threads around an ``AuditableLedger``: checkpoint signing and integrity checks.

``Checkpointer`` signs a checkpoint (``ledger.sign_checkpoint()``) when the log has
grown AND either ``every_events`` events were appended since the last checkpoint or
``every_s`` seconds have passed since it. It polls the log's size every ``poll_s``;
``nudge()`` (the writer calls it after ``every_events`` events) makes it look at once.
Errors are logged and retried at the next poll; they never reach the writer or the
callers of ``append``. ``stop()`` signs a last checkpoint if the log grew (best effort).

``IntegrityMonitor`` checks the ledger every ``every_s`` seconds with PUBLIC keys only:
the log's checkpoint key (``public_key``) and the witnesses' keys (``witnesses``, whose
latest cosigned checkpoint of the log ``origin`` it also fetches: give the origin, or a
monitor that starts after every checkpoint row was deleted cannot ask for it). Against
an ``SqlLedger`` it runs ``ledger.audit.verify_log`` itself over the rows, the stored
checkpoint chain and the cosignatures; against a ledger service (``RemoteLedger``) it
asks the service to audit and checks the checkpoint chain, the cosignatures and the
witnesses' view itself. A checkpoint it verified once is remembered, so a chain that
later loses it fails. These are integrity failures: a hash or signature mismatch, a
checkpoint missing from the chain, a tail shorter than the newest witnessed size
(``truncated``), a fork against a witness cosignature (``witness_fork``), a bad
cosignature.

On an IntegrityViolation it calls ``on_failure(violation)`` (the engine enters restriction
mode there) and appends an ``anomaly.detected`` event of kind ``ledger_integrity_failed``
to the stream ``MONITOR_STREAM`` (best effort). Each kind of failure (``violation.what``)
is reported once and not again until a check passes.

A check that cannot run (ledger unreadable, no public key for a signed chain) is logged;
once no check has completed for ``degraded_after_s``, ``degraded()`` returns the reason,
and the host denies governed actions (``ledger_degraded``) until a check completes again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ledger.attestation import TierKeys
from ledger.audit import verify_checkpoint_chain
from ledger.checkpoint import Checkpoint
from ledger.errors import IntegrityViolation, LedgerError, LedgerUnavailable
from ledger.incremental import IncrementalAudit
from ledger.interface import AuditableLedger, EventType, NewEvent
from ledger.merkle import ProofInvalid
from ledger.note import Cosignature, VerifierKey
from ledger.witness_client import WitnessClient, WitnessEndpoint

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
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Run the next tick now rather than at the end of the interval."""
        self._wake.set()

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stop.is_set():
                return
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
        every_s: float = 1.0,
        every_events: int = 1000,
        poll_s: float = 0.25,
        size: Callable[[], int] | None = None,
    ) -> None:
        if every_events < 1:
            raise ValueError(f"every_events must be at least 1, got {every_events}")
        super().__init__(min(poll_s, every_s), "ledger-checkpointer")
        self.ledger = ledger
        self.every_s = every_s
        self.every_events = every_events
        self._size = size or ledger.count
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
            grown = self._size() - self._signed_size
            if grown <= 0:
                return
            due = time.monotonic() - self._signed_at >= self.every_s
            if not (force or due or grown >= self.every_events):
                return
            cp = self.ledger.sign_checkpoint()
            self._signed_size = int(cp.tree_size)
            self._signed_at = time.monotonic()
            self.signed += 1
            log.debug("ledger checkpoint %s signed: tree_size %s", cp.index, cp.tree_size)


class IntegrityMonitor(_Periodic):
    """Audits the ledger in the background with public keys only (see the module docstring)."""

    def __init__(
        self,
        ledger: AuditableLedger,
        *,
        every_s: float,
        on_failure: Callable[[IntegrityViolation], None],
        public_key: bytes | None = None,
        origin: str | None = None,
        witnesses: Sequence[WitnessEndpoint] = (),
        witness_keys: Sequence[VerifierKey] = (),
        degraded_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tier_keys: TierKeys | None = None,
        full_every: int = 20,
    ) -> None:
        super().__init__(every_s, "ledger-integrity-monitor")
        self.tier_keys = tier_keys
        """Pinned tier keys: each check also verifies the new events' tier attestations
        and that no authority event is unsigned (docs/0012)."""
        self.full_every = max(1, full_every)
        """Every ``full_every``-th check re-reads the whole ledger; the others read only
        what was appended since (``ledger.incremental``)."""
        self._incremental: IncrementalAudit | None = None
        self._since_full = 0
        self.ledger = ledger
        self.on_failure = on_failure
        self.public_key = public_key
        self.origin = origin
        self._clients = [WitnessClient(w) for w in witnesses]
        self.witness_keys = [*witness_keys, *(w.key for w in witnesses)]
        self.degraded_after_s = degraded_after_s if degraded_after_s is not None else 3 * every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: str | None = None
        self._seen: Checkpoint | None = None
        self._last_completed = clock()
        self._last_error = ""
        self.checks = 0
        """Checks that completed (passed or found a violation)."""

    def start(self) -> None:
        self._last_completed = self._clock()
        super().start()

    def stop(self) -> None:
        self._halt()

    def _tick(self) -> None:
        self.check_now()

    # -- degraded ------------------------------------------------------------------------

    def degraded(self) -> str | None:
        """Why governed actions must be denied (``ledger_degraded``), or None: no check has
        completed for longer than ``degraded_after_s``."""
        with self._lock:
            idle = self._clock() - self._last_completed
            error = self._last_error
        if idle <= self.degraded_after_s:
            return None
        return (
            f"the ledger integrity monitor has not completed a check for {idle:.0f}s (bound "
            f"{self.degraded_after_s:.0f}s): {error or 'no check ran'}"
        )

    # -- one check ------------------------------------------------------------------------

    def _witnessed(self, origin: str) -> list[Checkpoint]:
        """Each reachable witness's latest cosigned checkpoint (cosignature verified)."""
        out: list[Checkpoint] = []
        for client in self._clients:
            try:
                got = client.latest(origin)
            except LedgerUnavailable as e:
                log.warning("integrity monitor: witness %s not consulted: %s", client.name, e)
                continue
            if got is not None:
                out.append(got[0])
        return out

    def _check(self) -> None:
        cps: list[Checkpoint] = list(self.ledger.checkpoints())
        origin = self.origin or (
            cps[0].origin if cps else self._seen.origin if self._seen else None
        )
        witnessed = self._witnessed(origin) if origin is not None else []
        seen = [self._seen] if self._seen is not None else []
        local = bool(getattr(self.ledger, "rows_are_local", False))
        if not cps and not witnessed and not seen and not local:
            # Nothing signed yet anywhere: the chains and the global sequence alone.
            self.ledger.verify()
            return
        if self.public_key is None and (cps or witnessed or seen):
            raise LedgerUnavailable(
                "the ledger has signed checkpoints but this monitor has no checkpoint public "
                "key to verify them with; configure the log's public key"
            )
        cosigs_fn = getattr(self.ledger, "cosignatures", None)
        cosigs: dict[int, list[Cosignature]] = cosigs_fn() if callable(cosigs_fn) else {}
        if local:
            self._since_full += 1
            if self._incremental is None or self._since_full >= self.full_every:
                self._since_full = 0  # a full pass: every row again, from scratch
                self._incremental = IncrementalAudit(
                    self.public_key or b"",
                    origin=origin,
                    witness_keys=self.witness_keys,
                    tier_keys=self.tier_keys,
                )
            self._incremental.advance(
                self.ledger, cps, cosignatures=cosigs, witnessed=witnessed, seen=seen
            )
        else:
            # A ledger service: it audits the rows; the signed evidence is checked here.
            assert self.public_key is not None  # refused above when anything is signed
            verify_checkpoint_chain(
                cps,
                self.public_key,
                origin=origin,
                cosignatures=cosigs,
                witness_keys=self.witness_keys,
                known=seen,
                witnessed=witnessed,
            )
            self.ledger.audit()
            newest = max((c.tree_size for c in (*witnessed, *seen)), default=0)
            size = self.ledger.count()
            if newest > size:
                raise IntegrityViolation(
                    "truncated",
                    decision_id="-",
                    sequence=0,
                    global_seq=size + 1,
                    expected=f"at least {newest} events (witnessed or seen before)",
                    actual=f"{size} events",
                )
        if cps and (self._seen is None or cps[-1].index >= self._seen.index):
            self._seen = cps[-1]

    def check_now(self, *, full: bool = False) -> IntegrityViolation | None:
        """Run one check now (``full``: re-read the whole ledger, not only what is new);
        returns the violation found (already reported), or None.

        A check that cannot run (LedgerUnavailable and other non-integrity errors) is logged
        and returns None; ``degraded()`` turns it into a denial once it lasts too long.
        """
        with self._lock:
            if full:
                self._incremental = None
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
            except LedgerError as e:
                self._last_error = str(e)
                log.error("ledger integrity check could not run: %s", e)  # noqa: TRY400
                return None
            else:
                self._reported = None
                self._last_completed = self._clock()
                self._last_error = ""
                self.checks += 1
                return None
            self._last_completed = self._clock()
            self.checks += 1
            report = violation.what != self._reported
            if report:
                self._reported = violation.what
        if report:
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
