"""Build tokens for tests: locally generated issuer keys (never committed), their JWKS,
and hand-made tokens PyJWT would refuse to produce (``alg: none``, HS256 keyed with a
public key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test/v1/identity/oidc"
AUDIENCE = "layer7"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class IssuerKey:
    kid: str
    alg: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            d = RSAAlgorithm.to_jwk(pub, as_dict=True)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            d = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            d = OKPAlgorithm.to_jwk(pub, as_dict=True)
        return {**d, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(
        self, claims: dict[str, Any], *, alg: str | None = None, kid: str | None = None
    ) -> str:
        return jwt.encode(
            claims, self.private, algorithm=alg or self.alg, headers={"kid": kid or self.kid}
        )


def new_key(alg: str, kid: str | None = None) -> IssuerKey:
    private: PrivateKey
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return IssuerKey(kid or f"kid-{alg.lower()}", alg, private)


def jwks(*keys: IssuerKey, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"keys": [k.jwk() for k in keys] + list(extra or [])}


def claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    """OpenBao-shaped claims for an approver; ``None`` values drop the claim."""
    t = int(now if now is not None else time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "entity-id-1",
        "name": "alice",
        "iat": t,
        "exp": t + 3600,
        "level": 3,
        "roles": ["approver", "sre"],
        "scopes": ["payments", "infra"],
        "team": "payments",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], hmac_secret: bytes | None) -> str:
    """A compact JWS by hand: HS256 over ``hmac_secret``, or unsigned when it is None."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    if hmac_secret is None:
        return signing_input + "."
    mac = hmac.new(hmac_secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)
