"""Identity: verify OIDC JWTs against an issuer's JWKS and map claims to an Identity."""

from __future__ import annotations

from l7.identity.interface import (
    MAX_LEVEL,
    MIN_LEVEL,
    ClaimMap,
    Identity,
    JwksSource,
    TokenVerifier,
    claim_map_for_openbao,
)
from l7.identity.jwks import JwksFile, JwksUrl, parse_jwks
from l7.identity.verifier import ASYMMETRIC_ALGORITHMS, DEFAULT_ALGORITHMS, JwtVerifier

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "MAX_LEVEL",
    "MIN_LEVEL",
    "ClaimMap",
    "Identity",
    "JwksFile",
    "JwksSource",
    "JwksUrl",
    "JwtVerifier",
    "TokenVerifier",
    "claim_map_for_openbao",
    "parse_jwks",
]
