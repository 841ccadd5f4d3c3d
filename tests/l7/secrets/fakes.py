"""Fake credentials built at test time from a seeded ``random.Random``.

Every value is assembled from parts when a test runs, so no secret-shaped literal is
committed (and no secret scanner flags this repository). None of them is a real
credential: they have the right shape and random content.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from typing import Any

import jwt

from l7.secrets import SecretKind

UPPER_DIGITS = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"

_DASHES = "-" * 5
_PK = "PRIVATE " + "KEY"


def rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    """``n`` characters holding each of digit / lower / upper the alphabet has (when
    ``n >= 3``), so a token never reads like a word."""
    classes = [
        c
        for c in (string.digits, string.ascii_lowercase, string.ascii_uppercase)
        if set(c) & set(alphabet)
    ]
    while True:
        s = "".join(rng.choices(alphabet, k=n))
        if n < len(classes) or all(set(c) & set(s) for c in classes):
            return s


def private_key(rng: random.Random) -> str:
    label = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA "])
    body = base64.b64encode(rng.randbytes(rng.randint(48, 300))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        [f"{_DASHES}BEGIN {label}{_PK}{_DASHES}", *lines, f"{_DASHES}END {label}{_PK}{_DASHES}"]
    )


def jwt_token(rng: random.Random) -> str:
    claims = {"sub": rand(rng, 8), "iat": rng.randint(1_600_000_000, 1_900_000_000)}
    return jwt.encode(claims, rand(rng, 48), algorithm="HS256")


def aws_access_key(rng: random.Random) -> str:
    return rng.choice(["AK" + "IA", "AS" + "IA"]) + rand(rng, 16, UPPER_DIGITS)


def aws_secret_key(rng: random.Random) -> str:
    return rand(rng, 40, B64)


def gcp_service_account(rng: random.Random) -> dict[str, Any]:
    return {
        "type": "service_" + "account",
        "project_id": "demo-" + rand(rng, 6, string.ascii_lowercase),
        "private_key_id": rand(rng, 40, string.hexdigits.lower()),
        "private_key": private_key(rng),
        "client_email": "svc@demo.iam.example",
    }


def gcp_service_account_json(rng: random.Random) -> str:
    return json.dumps(gcp_service_account(rng))


def azure_connection_string(rng: random.Random) -> str:
    key = base64.b64encode(rng.randbytes(64)).decode()
    return (
        "DefaultEndpointsProtocol=https;AccountName=demo;Account" + "Key=" + key + ";"
        "EndpointSuffix=core.windows.example"
    )


def github_token(rng: random.Random) -> str:
    prefix = rng.choice(["ghp", "gho", "ghs", "ghu"])
    if rng.random() < 0.2:
        return "github" + "_pat_" + rand(rng, 22) + "_" + rand(rng, 59)
    return prefix + "_" + rand(rng, 36)


def slack_token(rng: random.Random) -> str:
    return (
        "xox"
        + rng.choice("baprs")
        + "-"
        + rand(rng, 12, string.digits)
        + "-"
        + rand(rng, 13, string.digits)
        + "-"
        + rand(rng, 24)
    )


def stripe_key(rng: random.Random) -> str:
    return "sk" + "_live_" + rand(rng, 24)


def bearer(rng: random.Random) -> str:
    return "Bearer " + rand(rng, rng.randint(24, 48), ALNUM + "-_")


def url_with_password(rng: random.Random) -> str:
    scheme = rng.choice(["postgres", "mysql", "redis", "amqp", "mongodb+srv", "https"])
    return f"{scheme}://app_user:{rand(rng, 16)}@db.internal.example:5432/app"


def ado_connection_string(rng: random.Random) -> str:
    return (
        "Server=tcp:db.example.net,1433;Database=app;User ID=app;"
        "Pass" + f"word={rand(rng, 14)};Encrypt=True;"
    )


def high_entropy(rng: random.Random) -> str:
    return rand(rng, rng.randint(24, 64), ALNUM + "!#%*-_+.~/")


def short_password(rng: random.Random) -> str:
    """A low-entropy password: only its field's name gives it away."""
    return rng.choice(["hunter", "letmein", "summer", "dragon"]) + str(rng.randint(1, 99))


# kind -> generators of a value of that kind; ``NAMED`` kinds need a secret-named field
GENERATORS: dict[SecretKind, tuple[Callable[[random.Random], Any], ...]] = {
    SecretKind.PRIVATE_KEY: (private_key,),
    SecretKind.JWT: (jwt_token,),
    SecretKind.AWS_ACCESS_KEY: (aws_access_key,),
    SecretKind.AWS_SECRET_KEY: (aws_secret_key,),
    SecretKind.GCP_SERVICE_ACCOUNT: (gcp_service_account, gcp_service_account_json),
    SecretKind.AZURE_STORAGE_KEY: (azure_connection_string,),
    SecretKind.GITHUB_TOKEN: (github_token,),
    SecretKind.SLACK_TOKEN: (slack_token,),
    SecretKind.STRIPE_KEY: (stripe_key,),
    SecretKind.BEARER_TOKEN: (bearer,),
    SecretKind.CONNECTION_STRING: (url_with_password, ado_connection_string),
    SecretKind.HIGH_ENTROPY: (high_entropy,),
    SecretKind.SECRET_FIELD: (short_password,),
}
NAMED = frozenset({SecretKind.AWS_SECRET_KEY, SecretKind.HIGH_ENTROPY, SecretKind.SECRET_FIELD})
# values that stay whole (embedding them in prose would change what they are)
WHOLE = frozenset(
    {
        SecretKind.AWS_SECRET_KEY,
        SecretKind.HIGH_ENTROPY,
        SecretKind.GCP_SERVICE_ACCOUNT,
        SecretKind.SECRET_FIELD,
    }
)


def fake(kind: SecretKind, rng: random.Random) -> Any:
    return rng.choice(GENERATORS[kind])(rng)


def core(value: Any) -> str:
    """The part of a fake that must never show up in output (the random material)."""
    if isinstance(value, dict):
        return str(value["private_key_id"])
    text = str(value)
    for sep in ("Bearer ", "Key=", "word="):
        if sep in text:
            return text.split(sep, 1)[1].split(";", 1)[0]
    if "://" in text:
        return text.split("://", 1)[1].split(":", 1)[1].split("@", 1)[0]
    return text
