"""Execution grants: what the engine hands out on authorization and the gateway checks.

A grant is a compact JWS signed with EdDSA (Ed25519) by the engine's grant key::

    header  {"alg": "EdDSA", "typ": "l7-grant+jwt", "kid": <key fingerprint>}
    claims  {"iss": "layer7-engine", "aud": "layer7-gateway", "decision_id",
             "action_hash", "environment", "target": {"type", "id"}, "ledger_hash",
             "policy_version", "iat", "exp", "jti"}

``action_hash`` is the decision's intent hash (sha256 of the canonical action and its
effective environment), ``environment`` that environment in clear so a gateway refuses a
grant for an environment it does not serve before anything else, ``ledger_hash`` the
hash of the ledger event that authorized the decision. ``exp`` never passes the
decision's execution window (``execute_by``). The grant is single-use: the gateway
consumes its ``jti`` in the ledger.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from l7.crypto import (
    key_fingerprint,
    load_private_key,
    public_key_raw,
    save_private_key,
    scope_hash,
)
from l7.domain import Decision, Status
from l7.errors import ConfigError, GrantRefused

__all__ = [
    "DEFAULT_GRANT_TTL_S",
    "Grant",
    "GrantIssuer",
    "GrantVerifier",
    "load_grant_public_key",
    "load_or_create_grant_key",
]

ISSUER = "layer7-engine"
AUDIENCE = "layer7-gateway"
TYP = "l7-grant+jwt"
DEFAULT_GRANT_TTL_S = 300
_REQUIRED = (
    "decision_id",
    "action_hash",
    "environment",
    "target",
    "ledger_hash",
    "policy_version",
    "jti",
)


@dataclass(frozen=True)
class Grant:
    decision_id: str
    action_hash: str
    target_type: str
    target_id: str
    ledger_hash: str
    policy_version: str
    issued_at: int
    expires_at: int
    jti: str
    environment: str
    """The effective environment the decision was judged for (also inside action_hash)."""
    breakglass: bool = False
    """A break-glass grant binds a scope (class + target), not one exact action."""


def load_or_create_grant_key(path: Path) -> Ed25519PrivateKey:
    """The engine's grant key (PEM, 0600); created on first use. Writes ``<path>.pub``."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_private_key(path, Ed25519PrivateKey.generate())
    key = load_private_key(path)
    pub = Path(str(path) + ".pub")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not pub.exists() or pub.read_bytes() != pem:
        pub.write_bytes(pem)
    return key


def load_grant_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--grant-public-key {path}: cannot load a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"--grant-public-key {path}: expected an Ed25519 public key")
    return key


def kid_of(public_key: Ed25519PublicKey) -> str:
    return key_fingerprint(public_key_raw(public_key))


class GrantIssuer:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        *,
        ttl_s: int = DEFAULT_GRANT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self.kid = kid_of(key.public_key())
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, decision: Decision) -> str:
        if decision.status is not Status.AUTHORIZED or decision.authorized_by is None:
            raise GrantRefused(
                f"decision {decision.decision_id} is {decision.status.value}; grants are issued "
                "for authorized decisions only",
                reason="not_authorized",
            )
        if decision.execution_id is not None:
            raise GrantRefused(
                f"decision {decision.decision_id} has already been executed "
                f"(execution {decision.execution_id})",
                reason="grant_replayed",
            )
        now = int(self._clock())
        target = decision.request.action.target
        exp, action_hash = now + self.ttl_s, decision.intent_hash
        bg = decision.breakglass
        if bg is not None:
            if bg.expires_at <= now:
                raise GrantRefused(
                    f"the break-glass window of {decision.decision_id} closed at {bg.expires_at}",
                    reason="grant_expired",
                )
            exp = min(exp, bg.expires_at)
            action_hash = scope_hash(
                decision.request.action.action_class, target.type, target.id, decision.environment
            )
        elif decision.execute_by is None or decision.execute_by <= now:
            raise GrantRefused(
                f"the authorization of {decision.decision_id} expired at {decision.execute_by}",
                reason="authorization_expired",
            )
        else:
            exp = min(exp, decision.execute_by)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "decision_id": decision.decision_id,
            "action_hash": action_hash,
            "environment": decision.environment,
            "breakglass": bg is not None,
            "target": {"type": target.type, "id": target.id},
            "ledger_hash": decision.authorized_by.hash,
            "policy_version": decision.policy_version,
            "iat": now,
            "exp": exp,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, self._key, algorithm="EdDSA", headers={"kid": self.kid, "typ": TYP}
        )


class GrantVerifier:
    """Verifies grants for the gateway. Every failure raises GrantRefused with a reason."""

    def __init__(
        self,
        public_keys: Mapping[str, Ed25519PublicKey],
        *,
        leeway_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not public_keys:
            raise ConfigError(
                "the gateway has no grant verification key; refusing to run with checks disabled "
                "(pass --grant-public-key)"
            )
        self._keys = dict(public_keys)
        self.leeway_s = leeway_s
        self._clock = clock

    def verify(self, token: str) -> Grant:
        def refuse(msg: str, reason: str = "grant_invalid") -> GrantRefused:
            return GrantRefused(msg, reason=reason)

        # 1. The header names our type, EdDSA, and a key we trust.
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise refuse(f"the grant is not a compact JWS ({e})") from e
        if header.get("alg") != "EdDSA" or header.get("typ") != TYP:
            raise refuse(
                f"grant header must be EdDSA/{TYP}, got {header.get('alg')}/{header.get('typ')}"
            )
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise refuse(f"grant key id {header.get('kid')!r} is not trusted by this gateway")
        # 2. The signature, issuer and audience hold (time is checked below on our clock).
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat"]},
            )
        except jwt.PyJWTError as e:
            raise refuse(f"grant verification failed: {e}") from e
        # 3. Every binding claim is present and well-typed.
        missing = [c for c in _REQUIRED if c not in claims]
        target = claims.get("target")
        if missing or not isinstance(target, dict):
            raise refuse(f"grant lacks claims {missing or ['target']}")
        # 4. It is inside its short window.
        now = self._clock()
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int) or not isinstance(iat, int) or iat > now + self.leeway_s:
            raise refuse("grant times are malformed or in the future")
        if exp + self.leeway_s <= now:
            raise refuse(f"grant expired at {exp} (now {int(now)})", "grant_expired")
        return Grant(
            decision_id=str(claims["decision_id"]),
            action_hash=str(claims["action_hash"]),
            target_type=str(target.get("type")),
            target_id=str(target.get("id")),
            ledger_hash=str(claims["ledger_hash"]),
            policy_version=str(claims["policy_version"]),
            issued_at=iat,
            expires_at=exp,
            jti=str(claims["jti"]),
            environment=str(claims["environment"]),
            breakglass=claims.get("breakglass") is True,
        )
