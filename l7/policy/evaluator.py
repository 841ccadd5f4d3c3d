"""Ask OPA for a judgement and check that the answer is trustworthy.

One ``OpaEvaluator`` keeps one HTTP session (kept-alive connections) through
opa-python-client. The answer is pinned to the bundle revision OPA reports in
the same response (``provenance``), so a decision always names the policy
that judged it. Anything short of a complete, well-formed answer from exactly
one active bundle raises ``PolicyStoreDegraded``: the engine then denies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient

from l7.domain import (
    DEFAULT_EXECUTE_WITHIN_S,
    Authority,
    Band,
    Clause,
    Gate,
    Judgement,
    Lifecycle,
    Outcome,
    Risk,
)
from l7.errors import ConfigError, PolicyStoreDegraded

__all__ = ["ENTRYPOINT", "OpaEvaluator", "parse_judgement"]

ENTRYPOINT = ("l7/decision", "result")
_MODES = frozenset({"advisory", "guarded", "enforced"})


class OpaEvaluator:
    """Evaluates ``data.l7.decision.result`` on an OPA server."""

    def __init__(
        self, url: str, *, timeout_s: float = 2.0, expected_revision: str | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ConfigError(f"--opa-url {url!r}: expected http(s)://HOST:PORT")
        self.url = url
        self.expected_revision = expected_revision
        self._client = OpaClient(
            host=parts.hostname,
            port=parts.port,
            ssl=parts.scheme == "https",
            timeout=timeout_s,
            retries=0,
            # OPA gzips answers a client accepts gzip for: on loopback that is CPU on both
            # sides for nothing (about a third of the Python-side cost of a query).
            headers={"Accept-Encoding": "identity"},
        )
        # The session talks to one configured OPA: no proxy or .netrc lookup from the
        # environment (requests re-reads both on every request when trust_env is on, and
        # an HTTP_PROXY must never carry policy traffic).
        session = getattr(self._client, "_session", None)
        if session is not None:
            session.trust_env = False

    def evaluate(self, policy_input: Mapping[str, Any]) -> Judgement:
        judgement = parse_judgement(self._ask(ENTRYPOINT[0], ENTRYPOINT[1], policy_input))
        if self.expected_revision and judgement.policy_version != self.expected_revision:
            raise PolicyStoreDegraded(
                f"OPA serves bundle revision {judgement.policy_version}, but the lock pins "
                f"{self.expected_revision}; refusing to judge with unreviewed policy"
            )
        return judgement

    def query(self, package: str, rule: str, policy_input: Mapping[str, Any]) -> tuple[Any, str]:
        """Any other rule of the active bundle, with the revision that answered."""
        raw = self._ask(package, rule, policy_input)
        revision = _revision(raw)
        if self.expected_revision and revision != self.expected_revision:
            raise PolicyStoreDegraded(
                f"OPA serves bundle revision {revision}, but the lock pins {self.expected_revision}"
            )
        if "result" not in raw:
            raise PolicyStoreDegraded(f"data.{package.replace('/', '.')}.{rule} is undefined")
        return raw["result"], revision

    def _ask(self, package: str, rule: str, policy_input: Mapping[str, Any]) -> Any:
        """One REST query with provenance; OPA's and the transport's errors become
        PolicyStoreDegraded here and only here."""
        try:
            return self._client.query_rule(dict(policy_input), package, rule, {"provenance": True})
        except requests.RequestException as e:
            raise PolicyStoreDegraded(
                f"OPA at {self.url} did not answer ({type(e).__name__}); "
                "check that it is running and has an active bundle"
            ) from e
        except ValueError as e:  # body was not JSON
            raise PolicyStoreDegraded(f"OPA at {self.url} answered with invalid JSON") from e

    def close(self) -> None:
        self._client.close_connection()


def _revision(raw: Mapping[str, Any]) -> str:
    prov = raw.get("provenance")
    bundles = prov.get("bundles") if isinstance(prov, Mapping) else None
    if not isinstance(bundles, Mapping) or len(bundles) != 1:
        n = len(bundles) if isinstance(bundles, Mapping) else 0
        raise PolicyStoreDegraded(
            f"OPA reports {n} active bundles; exactly one signed Layer-7 bundle must be active"
        )
    (info,) = bundles.values()
    rev = info.get("revision") if isinstance(info, Mapping) else None
    if not isinstance(rev, str) or not rev:
        raise PolicyStoreDegraded("the active bundle has no revision; rebuild it with l7 bundle")
    return rev


def _str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise PolicyStoreDegraded(f"policy result field {key!r} is missing or not a string")
    return v


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise PolicyStoreDegraded(f"policy result field {key!r} is missing or not an integer")
    return int(v)


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    v = d.get(key)
    if not isinstance(v, list):
        raise PolicyStoreDegraded(f"policy result field {key!r} is missing or not a list")
    return v


def _map(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = d.get(key)
    if not isinstance(v, Mapping):
        raise PolicyStoreDegraded(f"policy result field {key!r} is missing or not an object")
    return v


def parse_judgement(raw: Mapping[str, Any]) -> Judgement:
    """Strictly convert OPA's response; any deviation is PolicyStoreDegraded."""
    revision = _revision(raw)
    if "result" not in raw:
        raise PolicyStoreDegraded(
            "data.l7.decision.result is undefined: the active bundle is not a Layer-7 bundle"
        )
    res = _map(raw, "result")
    try:
        outcome = Outcome(_str(res, "outcome"))
        risk_d = _map(res, "risk")
        risk = Risk(
            score=_int(risk_d, "score"),
            band=Band(_str(risk_d, "band")),
            reasons=tuple(str(r) for r in _list(risk_d, "reasons")),
        )
        auth_d = _map(res, "authority")
        authority = Authority(
            required_levels=tuple(int(x) for x in _list(auth_d, "required_levels")),
            min_signatures=_int(auth_d, "min_signatures"),
            cosign=tuple(int(x) for x in _list(auth_d, "cosign")),
            clauses=tuple(
                Clause(_str(c, "id"), _int(c, "min_level"), _int(c, "count"))
                for c in _list(auth_d, "clauses")
            ),
        )
        gates = tuple(
            Gate(
                id=_str(g, "id"),
                title=_str(g, "title"),
                passed=_str(g, "result") == "pass",
                reason=_str(g, "reason"),
                severity=_str(g, "severity"),
            )
            for g in _list(res, "gates")
        )
        mode = _str(res, "enforcement_mode")
        life_d = _map(res, "lifecycle")
        rationale = life_d.get("rationale_required")
        if not isinstance(rationale, bool):
            raise PolicyStoreDegraded("policy lifecycle.rationale_required is not a boolean")
        lifecycle = Lifecycle(
            approval_window_s=_int(life_d, "approval_window_s"),
            ttl_s=_int(life_d, "ttl_s"),
            rationale_required=rationale,
            # A bundle from before execution windows names none: the shortest default.
            execute_within_s=_int(life_d, "execute_within_s")
            if "execute_within_s" in life_d
            else DEFAULT_EXECUTE_WITHIN_S,
        )
    except (ValueError, TypeError, AttributeError) as e:
        raise PolicyStoreDegraded(f"policy result is malformed: {e}") from e
    if mode not in _MODES:
        raise PolicyStoreDegraded(f"policy result enforcement_mode {mode!r} is not one of {_MODES}")
    if min(lifecycle.approval_window_s, lifecycle.ttl_s, lifecycle.execute_within_s) <= 0:
        raise PolicyStoreDegraded("policy lifecycle windows must be positive")
    if not 0 <= risk.score <= 100:
        raise PolicyStoreDegraded(f"policy risk score {risk.score} is outside 0..100")
    if not gates:
        raise PolicyStoreDegraded("policy returned no gates; refusing to trust an empty judgement")
    if outcome is not Outcome.DENY and not all(g.passed for g in gates):
        raise PolicyStoreDegraded("policy returned a non-DENY outcome with a failed gate")
    if outcome is Outcome.ALLOW and authority.min_signatures > 0:
        raise PolicyStoreDegraded("policy returned ALLOW while requiring signatures")
    return Judgement(
        outcome=outcome,
        environment=_str(res, "environment"),
        enforcement_mode=mode,
        gates=gates,
        risk=risk,
        authority=authority,
        reasons=tuple(str(r) for r in _list(res, "reasons")),
        policy_version=revision,
        lifecycle=lifecycle,
    )
