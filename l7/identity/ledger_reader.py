"""Layer-7's answer to the ledger service's question "who is reading?".

The ledger package knows nothing of OIDC; it asks a ``ReadAuthorizer``. This one
verifies the caller's bearer token with the same verifier as the Governance API
and hands the ledger the subject and roles (``writer`` for engines and gateways,
``auditor`` / ``security`` / ``raw-reader`` for raw reads). A break-glass read is
declared with ``x-l7-breakglass: <break-glass id>`` (the decision id BreakGlass
returned) by an L4+ identity; below L4 the header is refused, not ignored. The claim is
only passed on: the ledger proves the break-glass from its own signed record
(``ledger.breakglass``) and records the read as ``ledger.accessed.breakglass``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from l7.errors import Forbidden, IdentityDegraded, Unauthenticated
from l7.identity.interface import TokenVerifier
from l7.tls import check_cnf_binding, spiffe_id, spiffe_id_of
from ledger import LedgerUnavailable
from ledger.access import BREAKGLASS_HEADER, AccessDenied, Reader

__all__ = ["OidcReadAuthorizer"]

BREAKGLASS_MIN_LEVEL = 4
TIER_ROLE_PREFIX = "tier:"
"""A writer's token carries ``tier:engine`` or ``tier:gateway`` beside ``writer``."""


class OidcReadAuthorizer:
    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def authorize(self, metadata: Mapping[str, str], peer_cert_der: bytes | None = None) -> Reader:
        auth = next((v for k, v in metadata.items() if k.lower() == "authorization"), "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AccessDenied("send 'authorization: Bearer <OIDC JWT>'", authenticated=False)
        try:
            who = self.verifier.verify(token.strip())
        except Unauthenticated as e:
            raise AccessDenied(str(e), authenticated=False) from e
        except IdentityDegraded as e:
            raise LedgerUnavailable(f"identity provider unreachable: {e}") from e
        try:
            check_cnf_binding(who.claims, peer_cert_der)
        except Forbidden as e:
            raise AccessDenied(str(e), authenticated=False) from e
        breakglass = metadata.get(BREAKGLASS_HEADER, "").strip() or None
        if breakglass is not None and who.level < BREAKGLASS_MIN_LEVEL:
            raise AccessDenied(
                f"{BREAKGLASS_HEADER}: break-glass reads need L{BREAKGLASS_MIN_LEVEL}+; "
                f"{who.subject} is L{who.level}. Drop the header to read as your roles allow"
            )
        return Reader(
            subject=who.subject,
            roles=frozenset(who.roles),
            breakglass=breakglass,
            tier=writer_tier(who.roles, peer_cert_der),
        )


def writer_tier(roles: Iterable[str], peer_cert_der: bytes | None) -> str | None:
    """The tier a writer speaks for: its token's ``tier:<name>`` role, which its mTLS
    certificate (when it presents one) must name too (``spiffe://layer7.local/<name>``).
    AccessDenied when the two disagree or the token names several tiers."""
    named = {r.removeprefix(TIER_ROLE_PREFIX) for r in roles if r.startswith(TIER_ROLE_PREFIX)}
    if len(named) > 1:
        raise AccessDenied(f"the token names several tiers {sorted(named)}", authenticated=False)
    tier = next(iter(named), None)
    spiffe = spiffe_id_of(peer_cert_der)
    if tier is not None and spiffe is not None and spiffe != spiffe_id(tier):
        raise AccessDenied(
            f"the token speaks for tier {tier}, the client certificate is {spiffe}",
            authenticated=False,
        )
    return tier
