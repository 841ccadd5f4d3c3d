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

from l7.client import GovernanceClient, RemoteError
from l7.gateway.client import GatewayClient
from l7.server.convert import request_to_proto
from l7.stack import Stack, StackConfig
from ledger import EventType, NewEvent, SqlLedger, open_ledger
from ledger.access import Reader, StaticTokens
from ledger.note import VerifierKey
from ledger.service import create_ledger_server
from ledger.witness import WitnessProcess
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
        gw.authorize(r.grant, req["action"], environment="dev")
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
        # An edit of an event the monitor already verified: its incremental checks read
        # only what is new; the next full pass (every full_every checks) re-reads it all.
        assert stack.monitor.check_now() is None
        failure = stack.monitor.check_now(full=True)
        assert failure is not None and failure.what == "hash_mismatch"
        d = c.decide(request(key="after-tamper"))
        assert (d["outcome"], d["reason_code"]) == ("DENY", "ledger_integrity_failed")
        gw = GatewayClient(stack.gateway_target)
        with pytest.raises(RemoteError) as ei:
            gw.authorize(first.grant, request()["action"], environment="dev")
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
    work = tmp_path / "w"
    # The stack's in-process ledger signs continuous checkpoints; one witness process
    # (as make run starts) cosigns them.
    cfg = StackConfig(ledger_url=url, work_dir=work, sweep_interval_s=0, local_witness=True)
    with Stack(cfg) as s, GovernanceClient(s.target) as c:
        ids = [c.decide(request(target=("dataset", f"d{i}")))["decision_id"] for i in range(3)]
        assert s.witness is not None and s.witness.vkey is not None and s.checkpoint_vkey
        log_vkey, witness_vkey = s.checkpoint_vkey, s.witness.vkey.encode()
        # the witness outlives the stack for the CLI below: start our own on its state
    witness = WitnessProcess(work / "witness" / "local", [VerifierKey.decode(log_vkey)],
                             name="layer7.local/witness/local").start()  # fmt: skip
    try:
        assert witness.vkey is not None and witness.vkey.encode() == witness_vkey
        out = tmp_path / "pack.json"
        r = _l7("ledger", "export", "--ledger", url, "--decision", ids[1], "--out", str(out),
                "--checkpoint-key", str(work / "keys" / "checkpoint.pem"),
                "--witness-url", witness.url, "--witness-key", witness_vkey)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert log_vkey in r.stdout
        events = [json.loads(line) for line in out.read_text().splitlines()[1:-1]]  # JSON lines
        assert {json.loads(e["body"])["decision_id"] for e in events} == {ids[1]}
        ok = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", log_vkey,
                 "--witness", witness_vkey)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("OK:") and witness.vkey.key_id in ok.stdout
        # --witness is honoured with --export: a key that cosigned nothing fails it ...
        other = VerifierKey("layer7.local/witness/other", 4, bytes(32)).encode()
        no = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", log_vkey,
                 "--witness", other)  # fmt: skip
        assert no.returncode == 1 and "unwitnessed_events" in no.stderr
        # ... and a file that is not a witness key is refused, not ignored.
        junk = tmp_path / "junk"
        junk.write_text("this is not a witness")
        bad_key = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", log_vkey,
                      "--witness", str(junk))  # fmt: skip
        assert bad_key.returncode == 2, bad_key.stdout
        raw = bytearray(out.read_bytes())
        i = raw.index(b'"hash"') + 12  # a byte inside the first event's hash
        raw[i] = ord("0") if raw[i] != ord("0") else ord("1")
        out.write_bytes(bytes(raw))
        bad = _l7("ledger", "verify", "--export", str(out), "--checkpoint-key", log_vkey)
        assert bad.returncode == 1
        assert "FAILED" in bad.stderr
        # Online, with public keys only: every event is under a cosigned checkpoint.
        audit = _l7("ledger", "verify", "--ledger", url, "--checkpoint-key", log_vkey,
                    "--witness", witness_vkey, "--witness-url", witness.url,
                    "--require-witnessed", "--work-dir", str(work))  # fmt: skip
        assert audit.returncode == 0, audit.stderr
        # An event appended and never checkpointed is beyond the witnessed checkpoint.
        with open_ledger(url, checkpoint_every_s=0) as led:
            led.append([NewEvent("late", EventType.DECISION_CREATED, "x", "pv", {})])
        late = _l7("ledger", "verify", "--ledger", url, "--checkpoint-key", log_vkey,
                   "--witness", witness_vkey, "--require-witnessed",
                   "--work-dir", str(work))  # fmt: skip
        assert late.returncode == 1 and "unwitnessed_events" in late.stderr
    finally:
        witness.stop()


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
