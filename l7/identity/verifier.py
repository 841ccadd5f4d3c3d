"""OIDC JWT verification with PyJWT against an issuer's key set.

PyJWT's exceptions are translated here, and only here. Messages name the check that
failed and, where the values are not secret, what was expected and what was found.
The token itself is never logged, echoed or put in an error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import jwt

from l7.errors import ConfigError, Unauthenticated
from l7.identity.interface import MAX_LEVEL, MIN_LEVEL, ClaimMap, Identity, JwksSource

__all__ = ["ASYMMETRIC_ALGORITHMS", "DEFAULT_ALGORITHMS", "JwtVerifier"]

# Only public-key signatures: never "none", never HS* (a verifier holding only public
# keys must not let a token choose to be checked as an HMAC keyed with one).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")

_REAUTH = "obtain a new token from the issuer"
_LEVEL_TEXT = re.compile(r"[0-9]{1,3}")


def _show(value: object, limit: int = 80) -> str:
    """A short repr of an attacker-supplied value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JwtVerifier:
    """Verifies OIDC JWTs from one issuer for one audience; implements TokenVerifier."""

    def __init__(
        self,
        jwks: JwksSource,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway_s: float = 30,
        claim_map: ClaimMap | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        algs = tuple(algorithms)
        refused = sorted(set(algs) - ASYMMETRIC_ALGORITHMS)
        if not algs or refused:
            raise ConfigError(
                f"token algorithms must be a non-empty subset of {sorted(ASYMMETRIC_ALGORITHMS)}; "
                f"got {list(algs)} (refused: {refused or 'empty list'})"
            )
        if not issuer:
            raise ConfigError("issuer must be set to the issuer URL tokens carry in 'iss'")
        if not audience:
            raise ConfigError("audience must be set to the client id tokens carry in 'aud'")
        if leeway_s < 0:
            raise ConfigError(f"leeway_s must be >= 0, got {leeway_s}")
        self._jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algs
        self.leeway_s = leeway_s
        self.claim_map = claim_map or ClaimMap()
        self._clock = clock

    def verify(self, token: str) -> Identity:
        if not token:
            raise Unauthenticated(f"no token presented; {_REAUTH}")
        # 1. The header is read unverified only to choose the key; nothing else is trusted.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"token is not a well-formed JWT ({e}); {_REAUTH}") from e
        alg = header.get("alg")
        kid = header.get("kid")
        # 2. The token's algorithm must be on the allowlist (refuses "none" and HS*).
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthenticated(
                f"token algorithm {_show(alg)} is not allowed; expected one of "
                f"{list(self.algorithms)}"
            )
        # 3. The key is chosen by kid, never by trying every key.
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated(f"token header has no key id ('kid'); {_REAUTH}")
        key = self._jwks.key(kid)  # Unauthenticated (unknown kid) or IdentityDegraded
        # 4. The key's own algorithm must be allowed and must be the one the token names.
        if key.algorithm_name not in self.algorithms or key.algorithm_name != alg:
            raise Unauthenticated(
                f"token algorithm {alg!r} does not match key {kid[:80]!r}, which is for "
                f"{key.algorithm_name!r} (allowed: {list(self.algorithms)})"
            )
        # 5. Signature, iss, aud and the presence of exp, checked by PyJWT.
        claims = self._decode(token, key, alg)
        # 6. exp / nbf / iat against our clock, with leeway.
        expires_at = self._check_times(claims)
        # 7. Claims to Identity; anything missing or malformed refuses the token.
        return self._identity(claims, expires_at)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_exp": False,  # checked in _check_times with the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError as e:
            raise Unauthenticated(
                f"token signature does not verify with issuer key {key.key_id!r}; {_REAUTH}"
            ) from e
        except jwt.MissingRequiredClaimError as e:
            raise Unauthenticated(f"token has no {e.claim!r} claim; {_REAUTH}") from e
        except jwt.InvalidIssuerError as e:
            found = self._unverified_claim(token, "iss")
            raise Unauthenticated(
                f"token issuer is {_show(found)}, expected {self.issuer!r}; {_REAUTH}"
            ) from e
        except jwt.InvalidAudienceError as e:
            found = self._unverified_claim(token, "aud")
            raise Unauthenticated(
                f"token audience is {_show(found)}, expected {self.audience!r}; "
                "obtain a token issued for this service"
            ) from e
        except jwt.InvalidKeyError as e:
            raise Unauthenticated(f"issuer key {key.key_id!r} is not acceptable: {e}") from e
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"token refused ({type(e).__name__}: {e}); {_REAUTH}") from e
        return claims

    @staticmethod
    def _unverified_claim(token: str, name: str) -> object:
        """A claim from a token whose signature PyJWT already verified (PyJWT checks
        claims only after the signature), for an expected-vs-actual message."""
        try:
            return jwt.decode(token, options={"verify_signature": False}).get(name)
        except jwt.PyJWTError:
            return None

    def _check_times(self, claims: Mapping[str, Any]) -> int:
        now = self._clock()
        leeway = self.leeway_s
        exp = _numeric_date(claims, "exp")
        assert exp is not None  # required by _decode
        if exp <= now - leeway:
            raise Unauthenticated(
                f"token expired at {int(exp)} (now {int(now)}, leeway {leeway:g}s); {_REAUTH}"
            )
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise Unauthenticated(
                f"token is not valid before {int(nbf)} (now {int(now)}, leeway {leeway:g}s); "
                "check the clocks of this host and the issuer"
            )
        iat = _numeric_date(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise Unauthenticated(
                f"token was issued in the future at {int(iat)} (now {int(now)}, "
                f"leeway {leeway:g}s); check the clocks of this host and the issuer"
            )
        return int(exp)

    def _identity(self, claims: dict[str, Any], expires_at: int) -> Identity:
        cm = self.claim_map
        subject = claims.get(cm.subject)
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthenticated(
                f"token claim {cm.subject!r} (subject) is missing or not a non-empty string; "
                f"found {_show(subject)}"
            )
        team = claims.get(cm.team)
        if team is not None and not isinstance(team, str):
            raise Unauthenticated(
                f"token claim {cm.team!r} (team) must be a string, found {_show(team)}"
            )
        return Identity(
            subject=subject,
            issuer=str(claims["iss"]),
            roles=_string_list(claims.get(cm.roles), cm.roles, cm.separator),
            level=_level(claims.get(cm.level), cm.level),
            scopes=_string_list(claims.get(cm.scopes), cm.scopes, cm.separator),
            team=team or None,
            expires_at=expires_at,
            claims=MappingProxyType(claims),
        )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(
            f"token claim {name!r} must be a NumericDate (seconds since the epoch), "
            f"found {_show(value)}"
        )
    return float(value)


def _level(value: object, claim: str) -> int:
    """An int 1..5, or a numeric string like "3" (OpenBao renders metadata as strings)."""
    level: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        level = value
    elif isinstance(value, str) and _LEVEL_TEXT.fullmatch(value):
        level = int(value)
    if level is None or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise Unauthenticated(
            f"token claim {claim!r} (level) must be an integer {MIN_LEVEL}..{MAX_LEVEL} "
            f"or a string of one, found {_show(value)}; ask the issuer's admin to set it"
        )
    return level


def _string_list(value: object, claim: str, separator: str) -> tuple[str, ...]:
    """A list of strings or one separated string, as a sorted de-duplicated tuple (so equal
    grants compare and record equal); absent or null is empty (grants nothing)."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = list(value.split(separator))
    elif isinstance(value, list):
        items = list(value)
    else:
        raise Unauthenticated(
            f"token claim {claim!r} must be a list of strings or a {separator!r}-separated "
            f"string, found {type(value).__name__}"
        )
    out: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise Unauthenticated(
                f"token claim {claim!r} must hold only strings, found {_show(item)}"
            )
        if item.strip():
            out.add(item.strip())
    return tuple(sorted(out))
