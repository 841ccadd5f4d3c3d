"""l7.posture: the one production posture every server checks before opening a port."""

from __future__ import annotations

import pytest

from l7.errors import ConfigError
from l7.posture import Requirement, check_server_posture, is_loopback


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:1", True),
        ("localhost:0", True),
        ("[::1]:50051", True),
        ("unix:/run/l7.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.5:50051", False),
        ("ledger.internal:443", False),
        ("localhost.evil.example:1", False),
    ],
)
def test_is_loopback(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


OIDC_MISSING = (Requirement("--oidc-issuer", False),)
OIDC_SET = (Requirement("--oidc-issuer", True),)


def test_loopback_outside_production_may_run_open() -> None:
    check_server_posture("x", env="local", addr="127.0.0.1:0", tls=False, identity=OIDC_MISSING)
    check_server_posture("x", env="staging", addr="[::1]:0", tls=False)


@pytest.mark.parametrize(
    ("env", "addr", "tls", "identity", "missing", "why"),
    [
        (
            "production",
            "127.0.0.1:0",
            False,
            OIDC_MISSING,
            "--oidc-issuer and --tls-dir",
            "production",
        ),
        ("production", "127.0.0.1:0", True, OIDC_MISSING, "without --oidc-issuer:", "production"),
        ("production", "127.0.0.1:0", False, OIDC_SET, "without --tls-dir:", "production"),
        ("production", "127.0.0.1:0", False, (), "without --tls-dir:", "production"),
        ("local", "0.0.0.0:50071", False, OIDC_SET, "without --tls-dir:", "--addr 0.0.0.0:50071"),
        ("local", "10.1.2.3:1", True, OIDC_MISSING, "without --oidc-issuer:", "non-loopback"),
    ],
)
def test_exposed_servers_refuse_without_mtls_and_identity(
    env: str, addr: str, tls: bool, identity: tuple[Requirement, ...], missing: str, why: str
) -> None:
    with pytest.raises(ConfigError) as e:
        check_server_posture("the ledger service", env=env, addr=addr, tls=tls, identity=identity)
    assert missing in str(e.value)
    assert why in str(e.value)
    assert "refusing to serve the ledger service" in str(e.value)


def test_exposed_server_with_mtls_and_identity_runs() -> None:
    check_server_posture("x", env="production", addr="0.0.0.0:1", tls=True, identity=OIDC_SET)
    check_server_posture("gateway", env="production", addr="10.0.0.1:1", tls=True)
