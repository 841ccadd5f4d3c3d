"""Secret references and envelopes against a real OpenBao dev server (DESIGN §5)."""

from __future__ import annotations

import logging
import secrets

import hvac
import pytest

from l7.devstack.openbao import OpenBaoDev
from l7.errors import ConfigError, Forbidden, RequestInvalid
from l7.policy.opa_process import free_port
from l7.secrets import (
    BaoSecretStore,
    Envelope,
    SecretRef,
    SecretsDegraded,
    ensure_key,
)
from l7.secrets.logfilter import install, uninstall

pytestmark = pytest.mark.integration

MOUNT = "secret"
READ_POLICY = "l7-test-kv-app-read"
DENY_POLICY = "l7-test-kv-app-deny"
ENCRYPT_ONLY_POLICY = "l7-test-envelope-encrypt-only"
KEY = "l7-envelope"


def value() -> str:
    return "v-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def store(openbao: OpenBaoDev) -> BaoSecretStore:
    return BaoSecretStore(openbao.client)


@pytest.fixture(scope="module")
def db_secret(openbao: OpenBaoDev) -> tuple[str, str]:
    """``app/db``: version 1 and version 2 (latest) of ``password``."""
    kv = openbao.client.secrets.kv.v2
    v1, v2 = value(), value()
    kv.create_or_update_secret(path="app/db", secret={"password": v1}, mount_point=MOUNT)
    kv.create_or_update_secret(
        path="app/db", secret={"password": v2, "port": 5432}, mount_point=MOUNT
    )
    return v1, v2


def test_dev_server_mounts_kv_v2_at_secret(openbao: OpenBaoDev) -> None:
    mounts = openbao.client.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{MOUNT}/"]["type"] == "kv"
    assert mounts[f"{MOUNT}/"]["options"]["version"] == "2"


# -- metadata: never the value ------------------------------------------------------------


def test_metadata_latest_and_pinned(store: BaoSecretStore, db_secret: tuple[str, str]) -> None:
    latest = store.metadata(SecretRef.parse("vault:secret/app/db#password"))
    assert (latest.version, latest.current_version) == (2, 2)
    assert latest.created_time
    pinned = store.metadata(SecretRef.parse("vault:secret/app/db#password@1"))
    assert (pinned.version, pinned.current_version) == (1, 2)


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("vault:secret/app/nothing#password", "no secret at secret/app/nothing"),
        ("vault:secret/app/db#password@9", "version 9 does not exist (current is 2)"),
        ("vault:nomount/app/db#password", "secret not found"),
    ],
)
def test_metadata_missing(
    store: BaoSecretStore, db_secret: tuple[str, str], ref: str, problem: str
) -> None:
    with pytest.raises(RequestInvalid, match=r"^secret_ref: secret not found") as info:
        store.metadata(SecretRef.parse(ref))
    assert info.value.reason == "invalid_request"
    assert problem in str(info.value)


def test_deleted_and_destroyed_versions_are_refused(
    openbao: OpenBaoDev, store: BaoSecretStore
) -> None:
    kv = openbao.client.secrets.kv.v2
    for _ in range(3):
        kv.create_or_update_secret(path="app/rotated", secret={"k": value()}, mount_point=MOUNT)
    kv.destroy_secret_versions(path="app/rotated", versions=[1], mount_point=MOUNT)
    kv.delete_secret_versions(path="app/rotated", versions=[2], mount_point=MOUNT)
    for version, word in ((1, "destroyed"), (2, "deleted")):
        ref = SecretRef.parse(f"vault:secret/app/rotated#k@{version}")
        with pytest.raises(RequestInvalid, match=f"version {version} is {word}"):
            store.metadata(ref)
        with pytest.raises(RequestInvalid, match="secret not found"):
            store.resolve(ref)
    assert store.metadata(SecretRef.parse("vault:secret/app/rotated#k")).version == 3
    kv.delete_latest_version_of_secret(path="app/rotated", mount_point=MOUNT)
    with pytest.raises(RequestInvalid, match="version 3 is deleted"):
        store.metadata(SecretRef.parse("vault:secret/app/rotated#k"))


# -- resolve: the value, and only to the caller ---------------------------------------------


def test_resolve_returns_the_value_and_never_logs_it(
    store: BaoSecretStore, db_secret: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    v1, v2 = db_secret
    assert store.resolve(SecretRef.parse("vault:secret/app/db#password")) == v2
    assert store.resolve(SecretRef.parse("vault:secret/app/db#password@1")) == v1
    with pytest.raises(RequestInvalid, match="has no field 'user'") as missing:
        store.resolve(SecretRef.parse("vault:secret/app/db#user"))
    with pytest.raises(RequestInvalid, match="holds a int, not a string") as not_str:
        store.resolve(SecretRef.parse("vault:secret/app/db#port"))
    for err in (missing.value, not_str.value):
        assert v1 not in str(err) and v2 not in str(err)
    logging.getLogger("l7.test").debug("resolved %s", SecretRef.parse("vault:secret/app/db#x"))
    assert caplog.records  # capture works
    assert v1 not in caplog.text and v2 not in caplog.text


def test_log_filter_redacts_a_resolved_value_that_is_logged_by_mistake(
    openbao: OpenBaoDev, store: BaoSecretStore, caplog: pytest.LogCaptureFixture
) -> None:
    secret = secrets.token_urlsafe(32)
    openbao.client.secrets.kv.v2.create_or_update_secret(
        path="app/api", secret={"api_key": secret}, mount_point=MOUNT
    )
    caplog.set_level(logging.INFO)
    flt = install()
    try:
        got = store.resolve(SecretRef.parse("vault:secret/app/api#api_key"))
        logging.getLogger("l7.test").info("calling upstream with api_key=%s", got)
    finally:
        uninstall(flt)
    assert got == secret
    assert secret not in caplog.text
    assert "api_key=[redacted:high_entropy]" in caplog.text


# -- check_access: the actor's own capabilities --------------------------------------------


@pytest.fixture(scope="module")
def tokens(openbao: OpenBaoDev) -> dict[str, str]:
    c = openbao.client
    c.sys.create_or_update_policy(
        READ_POLICY, f'path "{MOUNT}/data/app/*" {{ capabilities = ["read"] }}'
    )
    c.sys.create_or_update_policy(
        DENY_POLICY,
        f'path "{MOUNT}/data/app/*" {{ capabilities = ["read"] }}\n'
        f'path "{MOUNT}/data/app/db" {{ capabilities = ["deny"] }}',
    )
    openbao.make_user("nosy-agent", level=2)

    def token(policy: str) -> str:
        return str(c.auth.token.create(policies=[policy], ttl="15m")["auth"]["client_token"])

    return {
        "reader": token(READ_POLICY),
        "denied": token(DENY_POLICY),
        "user": openbao.user_token("nosy-agent"),
    }


def test_reader_may_read(store: BaoSecretStore, tokens: dict[str, str]) -> None:
    store.check_access(SecretRef.parse("vault:secret/app/db#password@1"), tokens["reader"])
    store.check_access(SecretRef.parse("vault:secret/app/anything#x"), tokens["reader"])


@pytest.mark.parametrize(
    ("who", "ref", "problem"),
    [
        ("user", "vault:secret/app/db#password", "capabilities on secret/data/app/db are ['deny']"),
        ("reader", "vault:secret/other/db#password", "are ['deny']"),
        ("denied", "vault:secret/app/db#password", "are ['deny']"),
        ("bogus", "vault:secret/app/db#password", "did not accept the actor's token"),
        ("empty", "vault:secret/app/db#password", "no OpenBao token for the actor"),
    ],
)  # fmt: skip
def test_access_refused(
    store: BaoSecretStore, tokens: dict[str, str], who: str, ref: str, problem: str
) -> None:
    token = {**tokens, "bogus": "s." + secrets.token_urlsafe(18), "empty": ""}[who]
    with pytest.raises(Forbidden) as info:
        store.check_access(SecretRef.parse(ref), token)
    assert info.value.reason == "secret_forbidden"
    assert problem in str(info.value)
    assert token not in str(info.value) or not token


def test_store_token_without_permission_is_forbidden(
    openbao: OpenBaoDev, tokens: dict[str, str], db_secret: tuple[str, str]
) -> None:
    weak = BaoSecretStore(hvac.Client(url=openbao.url, token=tokens["user"]))
    ref = SecretRef.parse("vault:secret/app/db#password")
    for call in (lambda: weak.metadata(ref), lambda: weak.resolve(ref)):
        with pytest.raises(Forbidden) as info:
            call()
        assert info.value.reason == "secret_forbidden"


# -- KV v1 ----------------------------------------------------------------------------------


def test_kv_v1(openbao: OpenBaoDev) -> None:
    c = openbao.client
    if "kv1/" not in c.sys.list_mounted_secrets_engines()["data"]:
        c.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    v = value()
    c.secrets.kv.v1.create_or_update_secret(path="app/db", secret={"pw": v}, mount_point="kv1")
    store = BaoSecretStore(c, kv_version=1)
    ref = SecretRef.parse("vault:kv1/app/db#pw")
    assert store.metadata(ref).version is None
    assert store.resolve(ref) == v
    assert store.data_path(ref) == "kv1/app/db"
    with pytest.raises(RequestInvalid, match="no secret at kv1/app/nope"):
        store.metadata(SecretRef.parse("vault:kv1/app/nope#pw"))
    with pytest.raises(RequestInvalid, match="has no versions"):
        store.metadata(SecretRef.parse("vault:kv1/app/db#pw@1"))


# -- OpenBao sealed / down -------------------------------------------------------------------


def test_sealed_is_degraded(openbao_private: OpenBaoDev) -> None:
    bao = openbao_private
    bao.client.secrets.kv.v2.create_or_update_secret(
        path="app/db", secret={"password": value()}, mount_point=MOUNT
    )
    store = BaoSecretStore(bao.client)
    ref = SecretRef.parse("vault:secret/app/db#password")
    store.metadata(ref)
    bao.enable_transit()
    ensure_key(bao.client, KEY)
    sealed_box = Envelope(bao.client, KEY).seal(b"x", context="d-1")
    bao.seal()
    for call in (
        lambda: store.metadata(ref),
        lambda: store.resolve(ref),
        lambda: store.check_access(ref, bao.root_token),
        lambda: Envelope(bao.client, KEY).seal(b"x", context="d-1"),
        lambda: Envelope(bao.client, KEY).open(
            sealed_box, context="d-1", role="auditor", allowed_roles={"auditor"}
        ),
    ):
        with pytest.raises(SecretsDegraded, match="OpenBao did not answer") as info:
            call()
        assert info.value.reason == "secrets_degraded"
    bao.unseal()
    assert store.metadata(ref).version == 1


# -- envelope --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def envelope(openbao: OpenBaoDev) -> Envelope:
    openbao.enable_transit()
    ensure_key(openbao.client, KEY)
    ensure_key(openbao.client, KEY)  # idempotent
    return Envelope(openbao.client, KEY)


def test_envelope_round_trip(envelope: Envelope) -> None:
    blob = b"incident notes: " + secrets.token_bytes(64)
    ct = envelope.seal(blob, context="decision-123/notes")
    assert ct.startswith("vault:v1:")
    assert blob not in ct.encode()
    assert (
        envelope.open(
            ct, context="decision-123/notes", role="security", allowed_roles={"security", "L5"}
        )
        == blob
    )


def test_envelope_is_bound_to_its_context(envelope: Envelope) -> None:
    ct = envelope.seal(b"payload", context="decision-1/field")
    with pytest.raises(RequestInvalid, match=r"^ciphertext: does not open") as info:
        envelope.open(ct, context="decision-2/field", role="security", allowed_roles={"security"})
    assert info.value.reason == "envelope_context_mismatch"


def test_envelope_refuses_altered_ciphertext(envelope: Envelope) -> None:
    ct = envelope.seal(b"payload", context="c")
    head, body = ct.rsplit(":", 1)
    altered = head + ":" + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(RequestInvalid, match="does not open"):
        envelope.open(altered, context="c", role="security", allowed_roles={"security"})
    with pytest.raises(RequestInvalid, match="must be transit ciphertext"):
        envelope.open("not-a-ciphertext", context="c", role="security", allowed_roles={"security"})


@pytest.mark.parametrize("role", ["engineer", "", "SECURITY"])
def test_envelope_refuses_roles_before_asking_openbao(role: str) -> None:
    dead = hvac.Client(url=f"http://127.0.0.1:{free_port()}", token="x", timeout=1)
    with pytest.raises(Forbidden, match="may not open envelopes") as info:
        Envelope(dead, KEY).open(
            "vault:v1:AAAA", context="c", role=role, allowed_roles={"security"}
        )
    assert info.value.reason == "decrypt_forbidden"
    with pytest.raises(ConfigError, match="not a string"):
        Envelope(dead, KEY).open("vault:v1:AAAA", context="c", role="s", allowed_roles="security")


def test_envelope_openbao_policy_also_applies(openbao: OpenBaoDev, envelope: Envelope) -> None:
    openbao.client.sys.create_or_update_policy(
        ENCRYPT_ONLY_POLICY,
        f'path "transit/encrypt/{KEY}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{KEY}" {{ capabilities = ["read"] }}',
    )
    token = openbao.client.auth.token.create(policies=[ENCRYPT_ONLY_POLICY], ttl="5m")
    limited = Envelope(hvac.Client(url=openbao.url, token=token["auth"]["client_token"]), KEY)
    ct = limited.seal(b"x", context="c")
    with pytest.raises(Forbidden) as info:
        limited.open(ct, context="c", role="security", allowed_roles={"security"})
    assert info.value.reason == "decrypt_forbidden"


def test_envelope_key_must_exist_and_be_derived_aes(openbao: OpenBaoDev) -> None:
    openbao.enable_transit()
    with pytest.raises(ConfigError, match="does not exist; create it with ensure_key"):
        Envelope(openbao.client, "l7-no-such-key").seal(b"x", context="c")
    mounts = openbao.client.secrets.transit.list_keys()["data"]["keys"]
    assert "l7-no-such-key" not in mounts  # not silently created by encrypt
    openbao.client.secrets.transit.create_key("l7-plain-aes", key_type="aes256-gcm96")
    with pytest.raises(ConfigError, match="derived=False"):
        ensure_key(openbao.client, "l7-plain-aes")
    with pytest.raises(ConfigError, match="envelopes need a derived"):
        Envelope(openbao.client, "l7-plain-aes").seal(b"x", context="c")
