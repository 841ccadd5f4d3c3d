"""Who is calling: the verified identity behind an OIDC token, and what produces it.

``TokenVerifier.verify`` raises ``Unauthenticated`` (reason ``token_invalid``) for any
token it does not accept and ``IdentityDegraded`` when the issuer's keys cannot be
fetched; it never returns a half-verified identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

__all__ = [
    "MAX_LEVEL",
    "MIN_LEVEL",
    "ClaimMap",
    "Identity",
    "JwksSource",
    "TokenVerifier",
    "claim_map_for_openbao",
]

MIN_LEVEL = 1
MAX_LEVEL = 5


@dataclass(frozen=True)
class Identity:
    """A caller or approver, built only from claims whose signature was verified.

    ``scopes`` names the domains, teams or target types this identity may approve in;
    an empty tuple means none. ``roles`` and ``scopes`` are sorted and de-duplicated.
    ``claims`` is the full verified claim set (read-only).
    """

    subject: str
    issuer: str
    roles: tuple[str, ...]
    level: int
    scopes: tuple[str, ...]
    team: str | None
    expires_at: int
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.subject:
            raise ValueError("Identity.subject must be a non-empty string")
        if isinstance(self.level, bool) or not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise ValueError(f"Identity.level must be {MIN_LEVEL}..{MAX_LEVEL}, got {self.level!r}")


@dataclass(frozen=True)
class ClaimMap:
    """Which claim carries each Identity field (top-level claim names).

    ``roles`` and ``scopes`` may be a JSON list of strings or one string split on
    ``separator`` (OpenBao renders entity metadata as strings, e.g. ``"payments,infra"``).
    ``level`` may be an int or a numeric string (``"3"``) for the same reason.
    """

    subject: str = "sub"
    roles: str = "roles"
    level: str = "level"
    scopes: str = "scopes"
    team: str = "team"
    separator: str = ","


def claim_map_for_openbao() -> ClaimMap:
    """Claims as written by the OpenBao identity-token template Layer-7 uses.

    OpenBao puts the entity *id* in ``sub``; the template adds the entity *name*
    as ``name``, which is the stable approver id Layer-7 records::

        {"name": {{identity.entity.name}},
         "level": {{identity.entity.metadata.level}},
         "team": {{identity.entity.metadata.team}},
         "scopes": {{identity.entity.metadata.scopes}},
         "roles": {{identity.entity.groups.names}}}

    Metadata values are strings, so ``level`` arrives as ``"3"`` and ``scopes`` as
    ``"payments,infra"``; a missing metadata key renders as ``""`` and an entity in no
    group renders ``roles`` as ``null``.
    """
    return ClaimMap(subject="name")


class JwksSource(Protocol):
    """Public keys of one issuer, by key id."""

    def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``. Raises ``Unauthenticated`` when the issuer has no such
        key and ``IdentityDegraded`` when the key set cannot be fetched."""
        ...


class TokenVerifier(Protocol):
    """Turns a bearer token into a verified Identity, or raises."""

    def verify(self, token: str) -> Identity: ...
