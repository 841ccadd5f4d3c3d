"""mTLS wired into the real tiers: the engine, the gateway and the ledger service each
refuse a caller without a client certificate, with a certificate from another CA, or
with the wrong service identity, and serve the peers they should (issue #7 acceptance).

Topology (all on 127.0.0.1): ledger service (mTLS, accepts engine/gateway/auditor) <-
engine + gateway from ``Stack(cert_dir=...)`` (engine accepts cli/tool, gateway accepts
tool); the engine reaches the ledger over mTLS with its own certificate, so every
decision below also proves engine -> ledger works.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from l7 import tls
from l7.client import GovernanceClient, RemoteError
from l7.errors import ConfigError
from l7.gateway.client import GatewayClient
from l7.identity import JwksFile, JwtVerifier, claim_map_for_openbao
from l7.stack import Stack, StackConfig
from ledger import SqlLedger
from ledger.access import AllowAll
from ledger.service import create_ledger_server
from tests.l7.identity.forge import AUDIENCE, ISSUER, IssuerKey, claims, jwks, new_key

pytestmark = pytest.mark.integration

SERVICES = ("engine", "gateway", "ledger", "cli", "auditor", "tool")


@dataclass(frozen=True)
class Pki:
    ours: Path
    other: Path  # a second CA with the same service names: must be worthless to us


@dataclass(frozen=True)
class Tiers:
    stack: Stack
    ledger_port: int
    ledger: SqlLedger
    issuer: IssuerKey
    pki: Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    out = []
    for name in ("ours", "other"):
        d = root / name
        ca = tls.init_ca(root / f"{name}-ca", common_name=f"Layer-7 test CA ({name})")
        tls.publish_ca(ca, d)  # the tiers' directory: ca.pem and leaves, no CA key
        for s in SERVICES:
            tls.issue(ca, s, d)
        out.append(d)
    return Pki(*out)


@pytest.fixture(scope="module")
def tiers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    work = tmp_path_factory.mktemp("tiers")
    key = new_key("ES256")
    (work / "jwks.json").write_text(json.dumps(jwks(key)))
    verifier = JwtVerifier(
        JwksFile(work / "jwks.json"),
        issuer=ISSUER,
        audience=AUDIENCE,
        claim_map=claim_map_for_openbao(),
    )
    led = SqlLedger(f"sqlite:///{work / 'ledger.sqlite'}")
    st = tls.server_tls(pki.ours, "ledger")
    server, port = create_ledger_server(
        "127.0.0.1:0",
        led,
        AllowAll(),
        credentials=st.credentials,
        interceptors=[st.interceptor],
    )
    server.start()
    cfg = StackConfig(
        env="local",
        ledger_url=f"grpc://127.0.0.1:{port}",
        work_dir=work,
        cert_dir=pki.ours,
        gateway=True,
        verifier=verifier,
        sweep_interval_s=0,
    )
    try:
        with Stack(cfg) as stack:
            yield Tiers(stack, port, led, key, pki)
    finally:
        server.stop(None)
        led.close()


def _targets(t: Tiers) -> dict[str, str]:
    return {
        "engine": t.stack.target,
        "gateway": t.stack.gateway_target,
        "ledger": f"127.0.0.1:{t.ledger_port}",
    }


def _health(channel: grpc.Channel) -> grpc.RpcError | None:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as e:
        return e
    return None


def _reason(e: grpc.RpcError) -> str:
    st = rpc_status.from_call(e)  # type: ignore[arg-type]
    if st is None:
        return ""
    from google.rpc import error_details_pb2

    for d in st.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return str(info.reason)
    return ""


# Which certificate each server must refuse even though our own CA issued it.
WRONG_PEER = {"engine": "gateway", "gateway": "cli", "ledger": "tool"}
RIGHT_PEER = {"engine": "cli", "gateway": "tool", "ledger": "auditor"}


@pytest.mark.parametrize("server", ["engine", "gateway", "ledger"])
def test_plaintext_connection_refused(tiers: Tiers, server: str) -> None:
    with grpc.insecure_channel(_targets(tiers)[server]) as ch:
        err = _health(ch)
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("server", ["engine", "gateway", "ledger"])
def test_tls_without_client_certificate_refused(tiers: Tiers, server: str) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(tiers.pki.ours / "ca.pem").read_bytes())
    with tls.secure_channel(_targets(tiers)[server], creds, expect=server) as ch:
        err = _health(ch)
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("server", ["engine", "gateway", "ledger"])
def test_certificate_from_another_ca_refused(tiers: Tiers, server: str) -> None:
    other = tiers.pki.other
    peer = RIGHT_PEER[server]  # the right *name*, signed by the wrong CA
    creds = tls.channel_credentials(
        other / f"{peer}.pem", other / f"{peer}.key", tiers.pki.ours / "ca.pem"
    )
    with tls.secure_channel(_targets(tiers)[server], creds, expect=server) as ch:
        err = _health(ch)
    assert err is not None and err.code() is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("server", ["engine", "gateway", "ledger"])
def test_wrong_service_identity_refused(tiers: Tiers, server: str) -> None:
    creds = tls.client_credentials(tiers.pki.ours, WRONG_PEER[server])
    with tls.secure_channel(_targets(tiers)[server], creds, expect=server) as ch:
        err = _health(ch)
    assert err is not None
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert _reason(err) == "peer_not_allowed"


@pytest.mark.parametrize("server", ["engine", "gateway", "ledger"])
def test_allowed_peer_served(tiers: Tiers, server: str) -> None:
    creds = tls.client_credentials(tiers.pki.ours, RIGHT_PEER[server])
    with tls.secure_channel(_targets(tiers)[server], creds, expect=server) as ch:
        assert _health(ch) is None


def _request(key: str) -> dict[str, Any]:
    return {
        "action": {
            "class": "data.read",
            "intent": "read the weekly order counts",
            "target": {"type": "dataset", "id": "orders-weekly"},
            "payload": {"blast_radius": 1},
        },
        "context": {
            "actor": {"id": "agent-reporter", "role": "agent", "level": 1},
            "environment": "dev",
            "request_source": "test:mtls",
        },
        "idempotency_key": key,
    }


def _token(t: Tiers, **extra: Any) -> str:
    return t.issuer.sign(
        claims(time.time(), name="agent-reporter", level=1, roles=["agent"], **extra)
    )


def test_tool_runs_end_to_end_over_mtls(tiers: Tiers) -> None:
    """tool -> engine (Decide, over mTLS; engine -> ledger over mTLS) -> gateway (Authorize)."""
    creds = tls.client_credentials(tiers.pki.ours, "tool")
    with GovernanceClient(tiers.stack.target, token=_token(tiers), credentials=creds) as c:
        resp = c.decide_proto(_proto(_request("mtls-e2e")))
    assert resp.grant, "an ALLOW over mTLS carries an execution grant"
    gw = GatewayClient(tiers.stack.gateway_target, credentials=creds)
    try:
        auth = gw.authorize(resp.grant, _request("mtls-e2e")["action"], environment="dev")
    finally:
        gw.close()
    assert auth.decision_id == resp.decision.decision_id
    # both the decision and the authorization reached the ledger service over mTLS
    types = {e.event_type for e in tiers.ledger.get_stream(resp.decision.decision_id)}
    assert {"decision.created", "execution.authorized"} <= types


def _proto(req: dict[str, Any]) -> Any:
    from l7.server.convert import request_to_proto

    return request_to_proto(req)


def test_certificate_bound_token_must_match_the_presented_certificate(tiers: Tiers) -> None:
    """RFC 8705: a token with cnf.x5t#S256 works only over the certificate it names."""
    d = tiers.pki.ours
    tool_x5t = tls.cert_thumbprint_s256((d / "tool.pem").read_bytes())
    cli_x5t = tls.cert_thumbprint_s256((d / "cli.pem").read_bytes())
    creds = tls.client_credentials(d, "tool")
    bound_ok = _token(tiers, cnf={"x5t#S256": tool_x5t})
    with GovernanceClient(tiers.stack.target, token=bound_ok, credentials=creds) as c:
        assert c.decide_proto(_proto(_request("mtls-cnf-ok"))).decision.decision_id
    bound_other = _token(tiers, cnf={"x5t#S256": cli_x5t})
    with (
        GovernanceClient(tiers.stack.target, token=bound_other, credentials=creds) as c,
        pytest.raises(RemoteError) as err,
    ):
        c.decide_proto(_proto(_request("mtls-cnf-other")))
    assert err.value.reason == "cnf_mismatch"
    assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_production_refuses_to_start_without_identity_and_tls(tmp_path: Path) -> None:
    cfg = StackConfig(env="production", ledger_url="sqlite://", work_dir=tmp_path)
    with pytest.raises(ConfigError, match="--oidc-issuer and --tls-dir"):
        Stack(cfg).start()
