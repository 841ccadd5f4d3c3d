"""Issuer key sets: fetched over HTTP with a cache (``JwksUrl``) or read from a file
(``JwksFile``). requests' exceptions are translated here, and only here.

Keys are indexed by ``kid``. Keys without a ``kid``, keys marked for a use other than
``sig``, symmetric (``oct``) keys and keys PyJWT cannot load are dropped: a public key
set has no business carrying a shared secret.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import requests

from l7.errors import ConfigError, IdentityDegraded, Unauthenticated

__all__ = ["JwksFile", "JwksUrl", "parse_jwks"]

_REAUTH = "re-authenticate once the issuer is reachable again"


def parse_jwks(doc: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid. Raises TypeError when the
    document is not a key set and ValueError when it holds no usable key."""
    if not isinstance(doc, Mapping):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        raise TypeError("expected a 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict):
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        if raw.get("kty") == "oct" or raw.get("use", "sig") != "sig":
            continue
        try:
            keys[kid] = jwt.PyJWK(raw)
        except jwt.PyJWTError:
            continue
    if not keys:
        raise ValueError(f"no usable signing key among {len(raw_keys)} entries")
    return keys


class JwksUrl:
    """An issuer's JWKS over HTTP(S), cached by kid; thread-safe.

    The cache is trusted for ``cache_ttl_s``; after that the next lookup refetches and,
    if the issuer cannot be reached, fails with ``IdentityDegraded`` rather than serve
    stale keys. A kid missing from a fresh cache (key rotation) triggers a refetch, at
    most once per ``min_refetch_interval_s`` so random kids cannot hammer the issuer.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_ttl_s: float = 300,
        timeout_s: float = 2,
        min_refetch_interval_s: float = 5,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"JWKS url must be http(s)://..., got {url!r}")
        self.url = url
        self.cache_ttl_s = cache_ttl_s
        self.timeout_s = timeout_s
        self.min_refetch_interval_s = min_refetch_interval_s
        self._session = session or requests.Session()
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt, success or not
        self._fetches = 0

    @property
    def fetches(self) -> int:
        """How many HTTP fetches were attempted (for tests and metrics)."""
        return self._fetches

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self.cache_ttl_s:
                self._refresh(now)
            found = self._keys.get(kid)
            if found is not None:
                return found
            if (
                self._attempted_at is None
                or now - self._attempted_at >= self.min_refetch_interval_s
            ):
                self._refresh(now)
                found = self._keys.get(kid)
                if found is not None:
                    return found
        raise Unauthenticated(
            f"token names key id {kid[:80]!r}, which the issuer's key set at {self.url} does not "
            "contain; the token was not issued by this issuer or its key was retired — "
            "obtain a new token"
        )

    def _refresh(self, now: float) -> None:
        """Replace the cache with a fresh fetch. Caller holds the lock."""
        self._attempted_at = now
        self._fetches += 1
        try:
            resp = self._session.get(
                self.url, timeout=self.timeout_s, headers={"Accept": "application/json"}
            )
        except requests.RequestException as e:
            raise IdentityDegraded(
                f"cannot fetch the issuer's keys from {self.url} ({type(e).__name__}); "
                f"identity cannot be verified, {_REAUTH}"
            ) from e
        if resp.status_code != 200:
            raise IdentityDegraded(
                f"issuer key set {self.url} answered HTTP {resp.status_code}, expected 200; "
                f"identity cannot be verified, {_REAUTH}"
            )
        try:
            keys = parse_jwks(resp.json())
        except (TypeError, ValueError) as e:  # ValueError includes JSON decoding errors
            raise IdentityDegraded(
                f"issuer key set {self.url} is malformed: {e}; identity cannot be verified, "
                f"{_REAUTH}"
            ) from e
        self._keys = keys
        self._fetched_at = now


class JwksFile:
    """A JWKS read once from a local file (air-gapped issuers, tests)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            self._keys = parse_jwks(doc)
        except OSError as e:
            raise ConfigError(f"cannot read JWKS file {self.path}: {e.strerror}") from e
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"JWKS file {self.path} is not a usable key set: {e}; "
                "expected {'keys': [<JWK with kid>, ...]}"
            ) from e

    def key(self, kid: str) -> jwt.PyJWK:
        found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated(
                f"token names key id {kid[:80]!r}, which the key set in {self.path} does not "
                "contain; obtain a token from the configured issuer"
            )
        return found
