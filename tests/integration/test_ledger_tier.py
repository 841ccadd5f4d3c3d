"""The ledger tier as the engine and gateway use it: over gRPC, under an integrity monitor,
and exported for an auditor who has nothing but a file and a public key."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.client import GovernanceClient, RemoteError
from l7.gateway.client import GatewayClient
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from ledger import SqlLedger, open_ledger
from ledger.access import Reader, StaticTokens
from ledger.checkpoint import save_private_key
from ledger.service import create_ledger_server
from tests.conftest import REPO, request

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger_service(tmp_path: Path) -> Iterator[tuple[str, SqlLedger]]:
    led = SqlLedger(f"sqlite:///{tmp_path / 'tier.sqlite'}")
    tokens = StaticTokens({"engine-token": Reader("l7-engine", frozenset({"writer"}))})
    server, port = create_ledger_server("127.0.0.1:0", led, tokens)
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}", led
    finally:
        server.stop(grace=1).wait(5)
        led.close()


def test_engine_and_gateway_work_over_the_ledger_service(
    ledger_service: tuple[str, SqlLedger], tmp_path: Path
) -> None:
    url, led = ledger_service
    cfg = StackConfig(
        ledger_url=url, ledger_token="engine-token", work_dir=tmp_path, gateway=True,
        sweep_interval_s=0,
    )  # fmt: skip
    with Stack(cfg) as stack, GovernanceClient(stack.target) as c:
        req = request()
        r = c.decide_proto(request_to_proto(req))
        assert r.grant
        gw = GatewayClient(stack.gateway_target)
        gw.authorize(r.grant, req["action"])
        gw.close()
        assert c.get_decision(r.decision.decision_id)["status"] == "authorized"
    types = [e.event_type for e in led.get_stream(r.decision.decision_id)]
    assert types[0] == "decision.created" and types[-2:] == [
        "execution.authorized",
        "batch.attested",
    ]
    led.verify()


def test_engine_refuses_to_start_when_the_ledger_service_token_is_wrong(
    ledger_service: tuple[str, SqlLedger], tmp_path: Path
) -> None:
    """The stack records the activated policy revision before it serves; a ledger that will
    not take its writes means it never serves at all."""
    from ledger import LedgerError

    url, led = ledger_service
    cfg = StackConfig(ledger_url=url, ledger_token="stolen", work_dir=tmp_path, sweep_interval_s=0)
    stack = Stack(cfg)
    with pytest.raises(LedgerError, match="not known to the ledger"):
        stack.start()
    assert stack.server is None and stack.opa is None  # everything started was stopped
    assert led.count() == 0


def test_failed_integrity_check_enters_restriction_mode(tmp_path: Path) -> None:
    db = tmp_path / "ledger.sqlite"
    cfg = StackConfig(
        ledger_url=f"sqlite:///{db}", work_dir=tmp_path, gateway=True, sweep_interval_s=0,
        integrity_check_s=3600,  # the test triggers the check itself
    )  # fmt: skip
    with Stack(cfg) as stack, GovernanceClient(stack.target) as c:
        first = c.decide_proto(request_to_proto(request()))
        assert stack.monitor is not None and stack.monitor.check_now() is None
        attacker = sqlite3.connect(db, isolation_level=None)
        for (name,) in attacker.execute("SELECT name FROM sqlite_master WHERE type='trigger'"):
            attacker.execute(f'DROP TRIGGER "{name}"')
        attacker.execute(
            "UPDATE events SET body = replace(body, 'pass', 'PASS') WHERE global_seq = "
            "(SELECT min(global_seq) FROM events WHERE event_type = 'policy.gate')"
        )
        attacker.close()
        failure = stack.monitor.check_now()
        assert failure is not None and failure.what == "hash_mismatch"
        d = c.decide(request(key="after-tamper"))
        assert (d["outcome"], d["reason_code"]) == ("DENY", "ledger_integrity_failed")
        gw = GatewayClient(stack.gateway_target)
        with pytest.raises(RemoteError) as ei:
            gw.authorize(first.grant, request()["action"])
        gw.close()
        assert ei.value.reason == "ledger_integrity_failed"
        assert stack.engine is not None
        stack.engine.restriction.clear("sec1", 4, "restored the row from backup")
        assert c.decide(request(key="cleared"))["outcome"] == "ALLOW"


def _l7(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "l7.cli.main", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip


def test_export_of_one_decision_verifies_offline_and_one_byte_breaks_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    cfg = StackConfig(ledger_url=url, work_dir=tmp_path / "w", sweep_interval_s=0)
    with Stack(cfg) as s, GovernanceClient(s.target) as c:
        ids = [c.decide(request(target=("dataset", f"d{i}")))["decision_id"] for i in range(3)]
    key = Ed25519PrivateKey.generate()
    save_private_key(tmp_path / "cp.pem", key)
    pub = tmp_path / "cp.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    out = tmp_path / "pack.json"
    witness = str(tmp_path / "w.jsonl")
    r = _l7("ledger", "export", "--ledger", url, "--decision", ids[1], "--out", str(out),
            "--checkpoint-key", str(tmp_path / "cp.pem"), "--witness", witness)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert {json.loads(e["body"])["decision_id"] for e in doc["events"]} == {ids[1]}
    ok = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK:")
    raw = bytearray(out.read_bytes())
    i = raw.index(b'"hash"') + 12  # a byte inside the first event's hash
    raw[i] = ord("0") if raw[i] != ord("0") else ord("1")
    out.write_bytes(bytes(raw))
    bad = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", str(pub))
    assert bad.returncode == 1
    assert "FAILED" in bad.stderr
    # The online audit passes against the checkpoint the export signed and witnessed.
    led = open_ledger(url, checkpoint_public_key=key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        witness_path=tmp_path / "w.jsonl")  # fmt: skip
    try:
        assert led.audit().witnessed_size >= 1
    finally:
        led.close()
    audit = _l7("ledger", "verify", "--ledger", url, "--checkpoint-key", str(pub),
                "--witness", str(tmp_path / "w.jsonl"),
                "--work-dir", str(tmp_path / "w"))  # fmt: skip
    assert audit.returncode == 0, audit.stderr


def test_the_ledger_service_lets_each_tier_append_only_what_it_owns_and_signs(
    tmp_path: Path,
) -> None:
    """Issue #12: the gateway's writer token cannot append an engine-owned event type (nor
    anything unsigned, nor signed as another tier) through the ledger service."""
    from l7.crypto import Ed25519Signer
    from l7.signed_ledger import SignedLedger
    from ledger import EventType, NewEvent
    from ledger.access import AccessDenied
    from ledger.attestation import Tier, TierKeys
    from ledger.remote import RemoteLedger

    engine_key, gateway_key = Ed25519Signer.generate(), Ed25519Signer.generate()
    keys = TierKeys(
        {
            engine_key.key_id: (Tier.ENGINE, engine_key.public_key_raw),
            gateway_key.key_id: (Tier.GATEWAY, gateway_key.public_key_raw),
        }
    )
    led = SqlLedger(f"sqlite:///{tmp_path / 'tier.sqlite'}")
    tokens = StaticTokens(
        {
            "engine-token": Reader("l7-engine", frozenset({"writer"}), tier="engine"),
            "gateway-token": Reader("gw-1", frozenset({"writer"}), tier="gateway"),
            "tierless-token": Reader("someone", frozenset({"writer"})),
        }
    )
    server, port = create_ledger_server("127.0.0.1:0", led, tokens, tier_keys=keys)
    server.start()

    def client(token: str, tier: Tier, signer: Ed25519Signer) -> SignedLedger:
        remote = RemoteLedger(f"127.0.0.1:{port}", metadata=(("authorization", f"Bearer {token}"),))
        return SignedLedger(remote, tier=tier, signer=signer, keys=keys)

    def authorized(d: str) -> NewEvent:
        return NewEvent(
            d, EventType.ENFORCEMENT_RESULT, "l7-engine", "rev", {"status": "authorized"}
        )

    engine = client("engine-token", Tier.ENGINE, engine_key)
    gateway = client("gateway-token", Tier.GATEWAY, gateway_key)
    try:
        engine.append(
            [NewEvent("d1", EventType.DECISION_CREATED, "l7-engine", "rev", {}), authorized("d1")]
        )
        gateway.append(
            [NewEvent("d1", EventType.EXECUTION_AUTHORIZED, "gw-1", "rev", {"execution_id": "x"})]
        )
        with pytest.raises(AccessDenied, match="tier gateway may not write enforcement.result"):
            gateway.append([authorized("d2")])
        with pytest.raises(AccessDenied, match="tier gateway may not write key.registered"):
            gateway.append([NewEvent("keys/mgr1", EventType.KEY_REGISTERED, "gw-1", "", {})])
        # the gateway's token, a gateway-owned event, attested as if by the engine
        with pytest.raises(AccessDenied, match="attested as engine, the writer is gateway"):
            client("gateway-token", Tier.ENGINE, gateway_key).append(
                [NewEvent("d1", EventType.EXECUTION_CONFIRMED, "gw-1", "rev", {})]
            )
        # unsigned, straight through the service
        raw_gateway = RemoteLedger(
            f"127.0.0.1:{port}", metadata=(("authorization", "Bearer gateway-token"),)
        )
        with pytest.raises(AccessDenied, match="carries no attestation by gateway"):
            raw_gateway.append([NewEvent("d1", EventType.EXECUTION_CONFIRMED, "gw-1", "rev", {})])
        raw_gateway.close()
        with pytest.raises(AccessDenied, match="speaks for no tier"):
            client("tierless-token", Tier.ENGINE, engine_key).append([authorized("d4")])
        assert [e.event_type for e in engine.get_stream("d1")] == [
            "decision.created",
            "enforcement.result",
            "execution.authorized",
        ]
        assert {e.decision_id for e in led.iter_events()} == {"d1"}  # nothing else landed
    finally:
        engine.close()
        gateway.close()
        server.stop(grace=1).wait(5)
        led.close()
