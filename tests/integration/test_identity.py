"""Identity against a real OpenBao OIDC issuer, through JwksUrl."""

from __future__ import annotations

import base64

import hvac
import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from l7.errors import IdentityDegraded, Unauthenticated
from l7.identity import Identity, JwksUrl, JwtVerifier, claim_map_for_openbao
from tests.integration.openbao import OpenBaoDev
from tests.l7.identity.forge import forge

pytestmark = pytest.mark.integration


def verifier(bao: OpenBaoDev, jwks: JwksUrl | None = None, **kw: object) -> JwtVerifier:
    return JwtVerifier(
        jwks or JwksUrl(bao.jwks_url),
        issuer=bao.issuer,
        audience=bao.audience,
        claim_map=claim_map_for_openbao(),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def users(openbao: OpenBaoDev) -> OpenBaoDev:
    openbao.make_user(
        "alice", 3, team="payments", scopes=["payments", "infra"], roles=["approver", "sre"]
    )
    openbao.make_user("bob", None, team="infra")
    openbao.make_user("carol", "high", roles=["approver"])
    return openbao


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_is_an_identity(users: OpenBaoDev, alg: str) -> None:
    tok = users.token_for("alice", algorithm=alg)
    ident = verifier(users).verify(tok)
    assert ident == Identity(
        subject="alice",
        issuer=users.issuer,
        roles=("approver", "sre"),
        level=3,
        scopes=("infra", "payments"),
        team="payments",
        expires_at=ident.expires_at,
    )
    assert ident.claims["aud"] == "layer7"
    assert jwt.get_unverified_header(tok)["alg"] == alg


def test_missing_or_bad_level_metadata_refused(users: OpenBaoDev) -> None:
    with pytest.raises(Unauthenticated, match=r"claim 'level' .*found ''"):
        verifier(users).verify(users.token_for("bob"))
    with pytest.raises(Unauthenticated, match=r"claim 'level' .*found 'high'"):
        verifier(users).verify(users.token_for("carol"))


def test_wrong_audience_refused(users: OpenBaoDev) -> None:
    v = JwtVerifier(
        JwksUrl(users.jwks_url),
        issuer=users.issuer,
        audience="billing",
        claim_map=claim_map_for_openbao(),
    )
    with pytest.raises(Unauthenticated, match=r"audience is 'layer7', expected 'billing'") as exc:
        v.verify(users.token_for("alice"))
    assert exc.value.reason == "token_invalid"


def test_expired_token_refused_with_injected_clock(users: OpenBaoDev) -> None:
    tok = users.token_for("alice", ttl="2s")
    exp = int(jwt.decode(tok, options={"verify_signature": False})["exp"])
    assert verifier(users, leeway_s=0, clock=lambda: exp - 1.0).verify(tok).expires_at == exp
    with pytest.raises(Unauthenticated, match=rf"token expired at {exp} \(now {exp}, leeway 0s\)"):
        verifier(users, leeway_s=0, clock=lambda: float(exp)).verify(tok)


def test_alg_none_refused(users: OpenBaoDev) -> None:
    real = users.token_for("alice")
    header = jwt.get_unverified_header(real)
    payload = jwt.decode(real, options={"verify_signature": False})
    with pytest.raises(Unauthenticated, match=r"algorithm 'none' is not allowed"):
        verifier(users).verify(forge({**header, "alg": "none"}, payload, None))


def test_hs256_keyed_with_the_issuer_public_key_refused(users: OpenBaoDev) -> None:
    real = users.token_for("alice")
    header = jwt.get_unverified_header(real)
    payload = jwt.decode(real, options={"verify_signature": False})
    jwks_doc = requests.get(users.jwks_url, timeout=5).json()
    jwk = next(k for k in jwks_doc["keys"] if k["kid"] == header["kid"])
    public_key = jwt.PyJWK(jwk).key
    assert isinstance(public_key, rsa.RSAPublicKey)
    pem = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for secret in (pem, jwt.utils.base64url_decode(jwk["n"])):
        tok = forge({**header, "alg": "HS256"}, payload, secret)
        with pytest.raises(Unauthenticated, match=r"algorithm 'HS256' is not allowed"):
            verifier(users).verify(tok)


def test_token_from_another_issuer_refused(users: OpenBaoDev, openbao_private: OpenBaoDev) -> None:
    other = openbao_private
    other.make_user("alice", 3, team="payments", roles=["approver"])
    foreign = other.token_for("alice")
    jwks = JwksUrl(users.jwks_url)
    with pytest.raises(Unauthenticated, match=r"key id .* does not contain"):
        verifier(users, jwks).verify(foreign)
    # Keys of the other issuer, iss of ours: the issuer check refuses it.
    v = JwtVerifier(
        JwksUrl(other.jwks_url),
        issuer=users.issuer,
        audience=users.audience,
        claim_map=claim_map_for_openbao(),
    )
    with pytest.raises(
        Unauthenticated, match=rf"issuer is '{other.issuer}', expected '{users.issuer}'"
    ):
        v.verify(foreign)


def test_key_rotation_triggers_one_refetch(openbao_private: OpenBaoDev) -> None:
    bao = openbao_private
    bao.make_user("alice", 4, roles=["approver"])
    jwks = JwksUrl(bao.jwks_url, min_refetch_interval_s=0)
    v = verifier(bao, jwks)
    old = bao.token_for("alice")
    assert v.verify(old).level == 4
    assert jwks.fetches == 1
    # OpenBao pre-publishes the next key; two rotations sign with a kid we never saw.
    bao.rotate_key()
    bao.rotate_key()
    new = bao.token_for("alice")
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    assert v.verify(new).subject == "alice"
    assert jwks.fetches == 2
    assert v.verify(new).subject == "alice"
    assert v.verify(old).subject == "alice"  # old key still published for verification_ttl
    assert jwks.fetches == 2


def test_issuer_down_is_degraded_then_recovers(openbao_private: OpenBaoDev) -> None:
    bao = openbao_private
    bao.make_user("alice", 2, roles=["approver"])
    tok = bao.token_for("alice")
    jwks = JwksUrl(bao.jwks_url, cache_ttl_s=0)
    v = verifier(bao, jwks)
    assert v.verify(tok).level == 2
    # Sealed: JWKS answers 503; state survives, so the same token verifies afterwards.
    bao.seal()
    with pytest.raises(IdentityDegraded, match=r"HTTP 503.*re-authenticate") as exc:
        v.verify(tok)
    assert exc.value.reason == "identity_degraded"
    bao.unseal()
    assert v.verify(tok).subject == "alice"
    # Stopped: connection refused. A fresh JwksUrl never saw the keys.
    bao.stop()
    with pytest.raises(IdentityDegraded, match=r"cannot fetch the issuer's keys"):
        v.verify(tok)
    with pytest.raises(IdentityDegraded):
        verifier(bao).verify(tok)
    # Back (new in-memory state, same URL): old keys are gone, a new token verifies.
    bao.start()
    with pytest.raises(Unauthenticated, match=r"key id"):
        v.verify(tok)
    assert v.verify(bao.token_for("alice")).subject == "alice"


def test_transit_helpers_sign_with_ed25519(users: OpenBaoDev) -> None:
    users.enable_transit()
    users.enable_transit()  # idempotent
    users.create_transit_key("alice")
    sig = users.transit_sign("alice", b"approval", token=users.user_token("alice"))
    assert sig.startswith("vault:v1:")
    public = users.transit_public_key("alice")
    assert len(public) == 32
    Ed25519PublicKey.from_public_bytes(public).verify(
        base64.b64decode(sig.split(":", 2)[2]), b"approval"
    )
    with pytest.raises(hvac.exceptions.Forbidden):  # bob may sign only with key "bob"
        users.transit_sign("alice", b"approval", token=users.user_token("bob"))
