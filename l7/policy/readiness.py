"""Policy readiness from OPA's ``/v1/status``: the pinned revision is active, the latest
download verified, and OPA polled its bundle recently.

``/health?bundles=true`` only says the *first* activation happened. Once OPA polls its
bundle (``l7.policy.bundle_server``), ``/v1/status`` says more: which revision is active,
when the last download succeeded, and the error of the last one that did not (a bundle
changed on disk, a bad signature, an unreachable bundle service). The engine asks
``PolicyReadiness.check()`` before every judgement (answers are cached for a fraction of
a second) and denies with ``policy_store_degraded`` when any of that is wrong, even though
OPA would keep answering with the revision it activated earlier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests

from l7.errors import PolicyStoreDegraded

if TYPE_CHECKING:
    from l7.domain import Judgement
    from l7.engine.interface import PolicyEvaluator

__all__ = ["BundleStatus", "PolicyReadiness", "ReadinessGatedEvaluator", "fetch_bundle_status"]


@dataclass(frozen=True)
class BundleStatus:
    name: str
    active_revision: str
    last_successful_activation: datetime | None
    last_successful_request: datetime | None
    error_code: str
    error_message: str


def _when(raw: object) -> datetime | None:
    """OPA's RFC 3339 timestamps carry nanoseconds; Python parses microseconds."""
    if not isinstance(raw, str) or not raw or raw.startswith("0001-"):
        return None
    head, _, frac = raw.rstrip("Z").partition(".")
    try:
        when = datetime.fromisoformat(head + ("." + frac[:6] if frac else ""))
    except ValueError:
        return None
    return when.replace(tzinfo=UTC)


def parse_bundle_status(doc: Mapping[str, Any], name: str) -> BundleStatus:
    result = doc.get("result")
    bundles = result.get("bundles") if isinstance(result, Mapping) else None
    st = bundles.get(name) if isinstance(bundles, Mapping) else None
    if not isinstance(st, Mapping):
        raise PolicyStoreDegraded(
            f"OPA's /v1/status reports no bundle {name!r}: it is not loading our signed bundle"
        )
    errors = st.get("errors")
    message = str(st.get("message") or "")
    if isinstance(errors, list) and errors:
        message = f"{message}: {errors[0]}" if message else str(errors[0])
    return BundleStatus(
        name=name,
        active_revision=str(st.get("active_revision") or ""),
        last_successful_activation=_when(st.get("last_successful_activation")),
        last_successful_request=_when(st.get("last_successful_request")),
        error_code=str(st.get("code") or ""),
        error_message=message,
    )


def fetch_bundle_status(
    opa_url: str, name: str, *, session: requests.Session | None = None, timeout_s: float = 1.0
) -> BundleStatus:
    get = session.get if session is not None else requests.get
    try:
        r = get(f"{opa_url}/v1/status", timeout=timeout_s)
    except requests.RequestException as e:
        raise PolicyStoreDegraded(f"OPA status unreachable at {opa_url}: {type(e).__name__}") from e
    if r.status_code != 200:
        raise PolicyStoreDegraded(f"OPA /v1/status answered HTTP {r.status_code}")
    try:
        doc = r.json()
    except ValueError as e:
        raise PolicyStoreDegraded("OPA /v1/status is not JSON") from e
    if not isinstance(doc, Mapping):
        raise PolicyStoreDegraded("OPA /v1/status is not a JSON object")
    return parse_bundle_status(doc, name)


class PolicyReadiness:
    """Is OPA serving the pinned revision from a bundle it verified recently?

    ``max_age_s`` bounds how long ago OPA's last successful poll may be; ``cache_s`` how
    long an answer (good or bad) is reused before asking OPA again."""

    def __init__(
        self,
        opa_url: str,
        *,
        bundle: str,
        expected_revision: str,
        max_age_s: float = 15.0,
        cache_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.opa_url = opa_url
        self.bundle = bundle
        self.expected_revision = expected_revision
        self.max_age_s = max_age_s
        self.cache_s = cache_s
        self._clock = clock
        self._wall = wall
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: PolicyStoreDegraded | None = None

    def problem(self, st: BundleStatus) -> str | None:
        """Why ``st`` is not ready, or None."""
        if st.error_code:
            return (
                f"OPA refused the bundle on its last download ({st.error_code}: "
                f"{st.error_message}); the policy store cannot be trusted"
            )
        if st.last_successful_activation is None:
            return "OPA has not activated the bundle yet"
        if st.active_revision != self.expected_revision:
            return (
                f"OPA's active revision {st.active_revision or '(none)'} is not the pinned "
                f"{self.expected_revision}"
            )
        last = st.last_successful_request
        age = (self._wall() - last).total_seconds() if last else None
        if age is None or age > self.max_age_s:
            return (
                f"OPA has not verified its bundle for {age:.0f}s (limit {self.max_age_s:.0f}s)"
                if age is not None
                else "OPA reports no successful bundle download"
            )
        return None

    def check(self) -> None:
        """Raise ``PolicyStoreDegraded`` unless the policy store is ready."""
        now = self._clock()
        with self._lock:
            if now - self._checked_at >= self.cache_s:
                try:
                    st = fetch_bundle_status(self.opa_url, self.bundle, session=self._session)
                    why = self.problem(st)
                    self._problem = PolicyStoreDegraded(why) if why else None
                except PolicyStoreDegraded as e:
                    self._problem = e
                self._checked_at = now
            problem = self._problem
        if problem is not None:
            raise PolicyStoreDegraded(str(problem))

    def close(self) -> None:
        self._session.close()


class ReadinessGatedEvaluator:
    """An evaluator that answers only while ``readiness`` holds (else PolicyStoreDegraded)."""

    def __init__(self, inner: PolicyEvaluator, readiness: PolicyReadiness) -> None:
        self.inner = inner
        self.readiness = readiness

    def evaluate(self, policy_input: Mapping[str, Any]) -> Judgement:
        self.readiness.check()
        return self.inner.evaluate(policy_input)

    def query(self, package: str, rule: str, policy_input: Mapping[str, Any]) -> tuple[Any, str]:
        self.readiness.check()
        return self.inner.query(package, rule, policy_input)

    def close(self) -> None:
        self.readiness.close()
        self.inner.close()
