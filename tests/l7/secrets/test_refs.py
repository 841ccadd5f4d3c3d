"""Secret references: the strict grammar, the value hash, and OpenBao being unreachable."""

from __future__ import annotations

import hashlib

import hvac
import pytest

from l7.errors import ConfigError, RequestInvalid
from l7.policy.opa_process import free_port
from l7.secrets import BaoSecretStore, SecretRef, SecretsDegraded, hash_value, normalize_value


@pytest.mark.parametrize(
    ("text", "mount", "path", "field", "version"),
    [
        ("vault:kv/app/db#password@3", "kv", "app/db", "password", 3),
        ("vault:kv/app/db#password", "kv", "app/db", "password", None),
        ("vault:secret/x#y", "secret", "x", "y", None),
        ("vault:secret/team-a/svc_1/db.prod#conn-string@999999999", "secret",
         "team-a/svc_1/db.prod", "conn-string", 999999999),
    ],
)  # fmt: skip
def test_parse(text: str, mount: str, path: str, field: str, version: int | None) -> None:
    ref = SecretRef.parse(text)
    assert (ref.mount, ref.path, ref.field, ref.version) == (mount, path, field, version)
    assert str(ref) == text
    assert SecretRef.parse(str(ref)) == ref


def test_with_version_and_frozen() -> None:
    ref = SecretRef.parse("vault:kv/app/db#password")
    assert str(ref.with_version(4)) == "vault:kv/app/db#password@4"
    with pytest.raises(AttributeError):
        ref.version = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kv/app/db#password", "does not start with 'vault:'"),
        ("vault://kv/app/db#password", "every mount and path segment"),
        ("vault:kv/app/db", "'#<field>' part is missing"),
        ("vault:kv/app/db#", "field is empty"),
        ("vault:kv/app/db#pass word", "field is empty or not"),
        ("vault:kv/app/db#password@0", "positive integer without leading zeros"),
        ("vault:kv/app/db#password@03", "positive integer without leading zeros"),
        ("vault:kv/app/db#password@latest", "positive integer"),
        ("vault:kv/app/db#password@1234567890", "positive integer"),
        ("vault:kv/app/db#password@", "positive integer"),
        ("vault:kv#password", "needs a mount and a path"),
        ("vault:kv/#password", "every mount and path segment"),
        ("vault:kv/app//db#password", "every mount and path segment"),
        ("vault:kv/app/../db#password", "every mount and path segment"),
        ("vault:kv/./db#password", "every mount and path segment"),
        ("vault:kv/app/db/#password", "every mount and path segment"),
        ("vault:kv/app/db#a#b", "field is empty or not"),
        ("vault:kv/app/db#password@3 ", "positive integer"),
        (" vault:kv/app/db#password", "does not start with 'vault:'"),
        ("vault:v1:abcd", "'#<field>' part is missing"),
        ("vault:kv/" + "a" * 129 + "#x", "every mount and path segment"),
    ],
)
def test_bad_refs_name_the_field(text: str, problem: str) -> None:
    with pytest.raises(RequestInvalid, match=r"^secret_ref: must be vault:<mount>") as info:
        SecretRef.parse(text)
    assert info.value.field == "secret_ref"
    assert info.value.reason == "invalid_request"
    assert problem in str(info.value)


def test_bad_ref_names_the_given_field() -> None:
    with pytest.raises(RequestInvalid, match=r"^action\.payload\.db\.secret_ref: must be"):
        SecretRef.parse("nope", field="action.payload.db.secret_ref")


@pytest.mark.parametrize("value", [None, 3, b"vault:kv/a#b", ["vault:kv/a#b"]])
def test_non_string_refs(value: object) -> None:
    with pytest.raises(RequestInvalid, match="must be a string"):
        SecretRef.parse(value)


def test_overlong_ref() -> None:
    with pytest.raises(RequestInvalid, match="longer than 512"):
        SecretRef.parse("vault:kv/" + "/".join(["a" * 100] * 5) + "#x")


@pytest.mark.parametrize("version", [0, -1, True, 1_000_000_000])
def test_constructed_ref_is_checked(version: int) -> None:
    with pytest.raises(RequestInvalid, match="version must be an integer"):
        SecretRef("kv", "app", "f", version)
    with pytest.raises(RequestInvalid, match="must match"):
        SecretRef("kv", "app/../etc", "f")


# -- hash -----------------------------------------------------------------------------------


def test_hash_value_known_answer() -> None:
    assert hash_value("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert hash_value("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_hash_value_normalizes_nfc_and_strips() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert hash_value(f"  {decomposed}\n") == hash_value(composed)
    assert normalize_value(f"\t{decomposed} ") == composed
    assert hash_value("a b") != hash_value("ab")  # inner whitespace is kept


# -- OpenBao unreachable (no server needed) -----------------------------------------------


def test_connection_refused_is_degraded() -> None:
    client = hvac.Client(url=f"http://127.0.0.1:{free_port()}", token="x", timeout=2)
    store = BaoSecretStore(client)
    ref = SecretRef.parse("vault:secret/app/db#password")
    for call in (
        lambda: store.metadata(ref),
        lambda: store.resolve(ref),
        lambda: store.check_access(ref, "actor-token"),
    ):
        with pytest.raises(SecretsDegraded, match="OpenBao did not answer") as info:
            call()
        assert info.value.reason == "secrets_degraded"


def test_kv_version_is_checked() -> None:
    with pytest.raises(ConfigError, match="kv_version must be 1 or 2"):
        BaoSecretStore(hvac.Client(url="http://127.0.0.1:1"), kv_version=3)
