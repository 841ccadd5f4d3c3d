"""JwtVerifier with locally generated keys served from a JwksFile (no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l7.errors import ConfigError, Unauthenticated
from l7.identity import (
    ClaimMap,
    Identity,
    JwksFile,
    JwtVerifier,
    claim_map_for_openbao,
)
from tests.l7.identity.forge import (
    AUDIENCE,
    ISSUER,
    IssuerKey,
    claims,
    forge,
    jwks,
    new_key,
)

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def keys() -> dict[str, IssuerKey]:
    return {alg: new_key(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture(scope="module")
def jwks_file(keys: dict[str, IssuerKey], tmp_path_factory: pytest.TempPathFactory) -> JwksFile:
    oct_key = {"kty": "oct", "kid": "kid-hmac", "k": "c2VjcmV0", "alg": "HS256"}
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(jwks(*keys.values(), extra=[oct_key])))
    return JwksFile(path)


def verifier(jwks_source: JwksFile, **kw: Any) -> JwtVerifier:
    kw.setdefault("issuer", ISSUER)
    kw.setdefault("audience", AUDIENCE)
    kw.setdefault("claim_map", claim_map_for_openbao())
    kw.setdefault("clock", lambda: float(NOW))
    return JwtVerifier(jwks_source, **kw)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_valid_token_maps_claims(alg: str, keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    ident = verifier(jwks_file).verify(keys[alg].sign(claims(NOW)))
    assert ident == Identity(
        subject="alice",
        issuer=ISSUER,
        roles=("approver", "sre"),
        level=3,
        scopes=("infra", "payments"),
        team="payments",
        expires_at=NOW + 3600,
    )
    assert ident.claims["sub"] == "entity-id-1"
    with pytest.raises(TypeError):
        ident.claims["level"] = 5  # type: ignore[index]


def test_openbao_shaped_strings(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    tok = keys["RS256"].sign(
        claims(NOW, level="4", scopes="payments, infra,,", roles=None, team="")
    )
    ident = verifier(jwks_file).verify(tok)
    assert (ident.level, ident.scopes, ident.roles, ident.team) == (
        4,
        ("infra", "payments"),
        (),
        None,
    )


def test_custom_claim_map(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    cm = ClaimMap(subject="sub", roles="groups", level="lvl", scopes="domains", team="org")
    tok = keys["ES256"].sign(
        claims(NOW, groups=["ops"], lvl=2, domains="infra", org="core", roles=None)
    )
    ident = verifier(jwks_file, claim_map=cm).verify(tok)
    assert (ident.subject, ident.roles, ident.level, ident.scopes, ident.team) == (
        "entity-id-1",
        ("ops",),
        2,
        ("infra",),
        "core",
    )
    assert ClaimMap().subject == "sub"


@pytest.mark.parametrize(("raw", "level"), [(1, 1), (5, 5), ("3", 3), ("1", 1)])
def test_level_accepted(
    raw: object, level: int, keys: dict[str, IssuerKey], jwks_file: JwksFile
) -> None:
    assert verifier(jwks_file).verify(keys["EdDSA"].sign(claims(NOW, level=raw))).level == level


@pytest.mark.parametrize(
    "raw", [0, 6, -1, "0", "6", "high", "", " 3", "3.0", 3.0, True, [3], {"v": 3}]
)
def test_level_refused(raw: object, keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    with pytest.raises(Unauthenticated, match=r"claim 'level' \(level\) must be an integer 1\.\.5"):
        verifier(jwks_file).verify(keys["EdDSA"].sign(claims(NOW, level=raw)))


def test_level_missing(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    with pytest.raises(Unauthenticated, match=r"claim 'level'.*found None") as exc:
        verifier(jwks_file).verify(keys["EdDSA"].sign(claims(NOW, level=None)))
    assert exc.value.reason == "token_invalid"


@pytest.mark.parametrize("name", ["name", "exp", "iss", "aud"])
def test_missing_required_claim(name: str, keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    with pytest.raises(Unauthenticated, match=rf"'{name}'"):
        verifier(jwks_file).verify(keys["RS256"].sign(claims(NOW, **{name: None})))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"name": ""}, r"claim 'name' \(subject\) is missing"),
        ({"name": 7}, r"claim 'name' \(subject\)"),
        ({"roles": "a,b", "scopes": 5}, r"claim 'scopes' must be a list of strings"),
        ({"roles": ["ok", 1]}, r"claim 'roles' must hold only strings, found 1"),
        ({"team": ["x"]}, r"claim 'team' \(team\) must be a string"),
        ({"exp": "soon"}, r"claim 'exp' must be a NumericDate"),
    ],
)
def test_malformed_claims(
    overrides: dict[str, Any], match: str, keys: dict[str, IssuerKey], jwks_file: JwksFile
) -> None:
    with pytest.raises(Unauthenticated, match=match):
        verifier(jwks_file).verify(keys["RS256"].sign(claims(NOW, **overrides)))


def test_wrong_audience_and_issuer(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    v = verifier(jwks_file)
    with pytest.raises(Unauthenticated, match=r"audience is 'other', expected 'layer7'"):
        v.verify(keys["RS256"].sign(claims(NOW, aud="other")))
    with pytest.raises(
        Unauthenticated, match=r"issuer is 'https://evil\.test', expected 'https://issuer"
    ):
        v.verify(keys["RS256"].sign(claims(NOW, iss="https://evil.test")))


def test_time_claims_use_clock_and_leeway(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    tok = keys["ES256"].sign(claims(NOW))  # exp = NOW + 3600
    exp = NOW + 3600
    assert verifier(jwks_file, clock=lambda: float(exp + 29)).verify(tok).expires_at == exp
    with pytest.raises(
        Unauthenticated, match=rf"token expired at {exp} \(now {exp + 30}, leeway 30s\)"
    ):
        verifier(jwks_file, clock=lambda: float(exp + 30)).verify(tok)
    with pytest.raises(Unauthenticated, match=r"token expired"):
        verifier(jwks_file, clock=lambda: float(exp), leeway_s=0).verify(tok)
    future = keys["ES256"].sign(claims(NOW, nbf=NOW + 100))
    with pytest.raises(Unauthenticated, match=r"not valid before"):
        verifier(jwks_file).verify(future)
    with pytest.raises(Unauthenticated, match=r"issued in the future"):
        verifier(jwks_file).verify(keys["ES256"].sign(claims(NOW + 100)))
    assert verifier(jwks_file, clock=lambda: float(NOW + 80)).verify(future).subject == "alice"


def test_config_refuses_unsafe_algorithms(jwks_file: JwksFile) -> None:
    for algs in (("none",), ("HS256",), ("RS256", "HS512"), ()):
        with pytest.raises(ConfigError, match=r"non-empty subset"):
            verifier(jwks_file, algorithms=algs)
    with pytest.raises(ConfigError, match=r"issuer"):
        verifier(jwks_file, issuer="")
    with pytest.raises(ConfigError, match=r"audience"):
        verifier(jwks_file, audience="")


def test_algorithm_allowlist(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    only_rsa = verifier(jwks_file, algorithms=("RS256",))
    with pytest.raises(
        Unauthenticated, match=r"algorithm 'ES256' is not allowed; expected one of \['RS256'\]"
    ):
        only_rsa.verify(keys["ES256"].sign(claims(NOW)))
    # An RS256 token that names the EC key's kid: the key's own algorithm decides.
    swapped = keys["RS256"].sign(claims(NOW), kid=keys["ES256"].kid)
    with pytest.raises(
        Unauthenticated, match=r"does not match key 'kid-es256', which is for 'ES256'"
    ):
        verifier(jwks_file).verify(swapped)


def test_alg_none_refused(jwks_file: JwksFile) -> None:
    tok = forge({"alg": "none", "kid": "kid-rs256"}, claims(NOW), None)
    with pytest.raises(Unauthenticated, match=r"algorithm 'none' is not allowed"):
        verifier(jwks_file).verify(tok)


def test_hs256_with_public_key_as_secret_refused(
    keys: dict[str, IssuerKey], jwks_file: JwksFile
) -> None:
    pem = (
        keys["RS256"]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for kid in ("kid-rs256", "kid-hmac"):
        tok = forge({"alg": "HS256", "typ": "JWT", "kid": kid}, claims(NOW), pem)
        with pytest.raises(Unauthenticated, match=r"algorithm 'HS256' is not allowed"):
            verifier(jwks_file).verify(tok)
    # Even when HS256 is smuggled past the allowlist check, the oct key was never loaded.
    with pytest.raises(Unauthenticated, match=r"key id 'kid-hmac'"):
        jwks_file.key("kid-hmac")


def test_bad_signature_unknown_kid_garbage(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    impostor = new_key("EdDSA", kid=keys["EdDSA"].kid)
    with pytest.raises(
        Unauthenticated, match=r"signature does not verify with issuer key 'kid-eddsa'"
    ):
        verifier(jwks_file).verify(impostor.sign(claims(NOW)))
    with pytest.raises(Unauthenticated, match=r"key id 'nope'.*does not contain"):
        verifier(jwks_file).verify(new_key("EdDSA", kid="nope").sign(claims(NOW)))
    with pytest.raises(Unauthenticated, match=r"no key id"):
        verifier(jwks_file).verify(forge({"alg": "RS256"}, claims(NOW), b"x"))
    for garbage in ("", "abc", "a.b.c", "....."):
        with pytest.raises(Unauthenticated):
            verifier(jwks_file).verify(garbage)


def test_errors_never_echo_the_token(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    cases = [
        keys["RS256"].sign(claims(NOW, aud="x")),
        keys["RS256"].sign(claims(NOW - 10_000)),
        new_key("RS256", kid="kid-rs256").sign(claims(NOW)),
    ]
    for tok in cases:
        with pytest.raises(Unauthenticated) as exc:
            verifier(jwks_file).verify(tok)
        text = str(exc.value)
        assert tok not in text
        assert tok.split(".")[2][:16] not in text


def test_identity_is_validated() -> None:
    with pytest.raises(ValueError, match="level"):
        Identity("a", "i", (), 0, (), None, 1)
    with pytest.raises(ValueError, match="subject"):
        Identity("", "i", (), 1, (), None, 1)


def test_jwks_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read JWKS file"):
        JwksFile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    for content in ("not json", "[]", '{"keys": []}', '{"keys": [{"kty": "RSA"}]}'):
        bad.write_text(content)
        with pytest.raises(ConfigError, match=r"is not a usable key set"):
            JwksFile(bad)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_character_change_is_refused_or_harmless(
    data: st.DataObject, keys: dict[str, IssuerKey], jwks_file: JwksFile
) -> None:
    alg = data.draw(st.sampled_from(sorted(keys)))
    tok = keys[alg].sign(claims(NOW))
    v = verifier(jwks_file)
    original = v.verify(tok)
    i = data.draw(st.integers(0, len(tok) - 1))
    c = data.draw(st.sampled_from("ABCabc019-_."))
    mutated = tok[:i] + c + tok[i + 1 :]
    try:
        ident = v.verify(mutated)
    except Unauthenticated:
        return
    # Only base64 padding bits can change without changing the signed bytes.
    assert ident == original
    assert dict(ident.claims) == dict(original.claims)


def test_clock_default_is_wall_time(keys: dict[str, IssuerKey], jwks_file: JwksFile) -> None:
    v = JwtVerifier(jwks_file, issuer=ISSUER, audience=AUDIENCE)
    assert v.verify(keys["RS256"].sign(claims(time.time()))).subject == "entity-id-1"
