"""``l7 ledger serve | verify | export``: the ledger tier from the command line.

verify has three modes:
  l7 ledger verify [--ledger URL]                       chains + global sequence
  l7 ledger verify --checkpoint-key PUB [--witness F]   ... + the Merkle tree against every
                                                        stored and witnessed signed checkpoint
  l7 ledger verify --export FILE --checkpoint-key PUB   an audit pack, offline: nothing but
                                                        the file and the public key
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from l7.cli.certs import add_tls_flag
from l7.cli.progress import Progress
from l7.cli.trust import add_trust_flags, trust_from_args
from l7.errors import ConfigError
from ledger import IntegrityViolation, open_ledger
from ledger.attestation import AttestationChecker, TierKeys

__all__ = ["add_ledger_commands"]


def _pubkey(path: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--checkpoint-key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except ValueError as e:
            raise ConfigError(f"--checkpoint-key {path}: not a PEM Ed25519 key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"--checkpoint-key {path}: expected an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def cmd_verify(a: argparse.Namespace) -> int:
    if a.export:
        from ledger.export import verify_export
        from ledger.merkle import ProofInvalid

        if not a.checkpoint_key:
            raise ConfigError("--export needs --checkpoint-key PUB (the ledger's public key)")
        try:
            pack = verify_export(Path(a.export).read_bytes(), _pubkey(a.checkpoint_key))
        except OSError as e:
            raise ConfigError(f"--export {a.export}: {e.strerror}") from e
        except (IntegrityViolation, ProofInvalid) as e:
            print(f"FAILED: {a.export}: {e}", file=sys.stderr)
            return 1
        print(f"OK: {a.export} verifies offline: {pack}")
        return 0
    opts: dict[str, Any] = {"create": False}
    if a.checkpoint_key:
        opts["checkpoint_public_key"] = _pubkey(a.checkpoint_key)
    if a.witness:
        opts["witness_path"] = Path(a.witness)
    keys = trust_from_args(a).keys
    led = open_ledger(a.ledger, **opts)
    try:
        if a.checkpoint_key:
            report: Any = led.audit(progress=Progress("auditing ledger"))
        else:
            report = led.verify(progress=Progress("verifying ledger"))
        signed = check_attestations(led, keys)
    except IntegrityViolation as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        led.close()
    print(f"OK: {report}; {signed}")
    return 0


def check_attestations(led: Any, keys: TierKeys) -> str:
    """Every tier signature in the ledger verifies against the pinned keys and every
    authority event is signed by a tier that owns it (IntegrityViolation naming the first
    that is not); returns a one-line summary."""
    checker = AttestationChecker(keys)
    progress = Progress("checking tier signatures")
    total = led.count()
    for i, e in enumerate(led.iter_events(), 1):
        checker.feed(e)
        if i % 5000 == 0:
            progress(i, total)
    checker.finish()
    progress(total, total)
    return (
        f"{checker.attestations} tier attestations verify, covering {checker.covered} events; "
        "every authority event is signed by its tier"
    )


def cmd_export(a: argparse.Namespace) -> int:
    from ledger.checkpoint import Ed25519CheckpointSigner
    from ledger.export import dump_export

    if not (a.decision or a.since):
        raise ConfigError("choose what to export: --decision ID (repeatable) or --since TIME")
    opts: dict[str, Any] = {"create": False}
    if a.checkpoint_key:
        opts["checkpoint_signer"] = Ed25519CheckpointSigner.from_file(a.checkpoint_key)
    if a.witness:
        opts["witness_path"] = Path(a.witness)
    led = open_ledger(a.ledger, **opts)
    try:
        doc = led.export(decision_ids=tuple(a.decision or ()), since=a.since)
    finally:
        led.close()
    Path(a.out).write_bytes(dump_export(doc))
    n = len(doc.get("events", []))
    print(f"wrote {a.out}: {n} events with inclusion proofs against a signed checkpoint")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from grpc_health.v1 import health

    from l7.cli.certs import tls_dir
    from l7.cli.main import _verifier
    from l7.identity.ledger_reader import OidcReadAuthorizer
    from l7.tls import server_tls
    from l7.trust import load_tier_signer
    from ledger.attestation import Tier
    from ledger.checkpoint import Ed25519CheckpointSigner
    from ledger.checkpointer import Checkpointer, IntegrityMonitor
    from ledger.service import create_ledger_server

    verifier = _verifier(a)
    if verifier is None:
        raise ConfigError(
            "--oidc-issuer is required: the ledger service authenticates every caller "
            "(engines and gateways carry the 'writer' role, auditors 'auditor')"
        )
    opts: dict[str, Any] = {}
    if a.checkpoint_key:
        opts["checkpoint_signer"] = Ed25519CheckpointSigner.from_file(a.checkpoint_key)
    if a.witness:
        opts["witness_path"] = Path(a.witness)
    if a.dual_write:
        opts["dual_write"] = a.dual_write
    trust = trust_from_args(a)
    if trust.local_keys:  # a local stack's tiers find their keys (and this service trusts them)
        for tier in (Tier.ENGINE, Tier.GATEWAY):
            _, trust = load_tier_signer(tier, trust, key_path=None, work_dir=Path(a.work_dir))
    led = open_ledger(a.ledger, **opts)
    workers: list[Checkpointer | IntegrityMonitor] = []
    try:
        hs = health.HealthServicer()
        certs = tls_dir(a)
        st = server_tls(certs, "ledger") if certs else None
        server, port = create_ledger_server(
            a.addr,
            led,
            OidcReadAuthorizer(verifier),
            health_servicer=hs,
            credentials=st.credentials if st else None,
            interceptors=[st.interceptor] if st else (),
            tier_keys=trust.keys,
        )
        server.start()
        if a.checkpoint_key:
            workers.append(Checkpointer(led, every_s=a.checkpoint_every_s))
        workers.append(
            IntegrityMonitor(
                led,
                every_s=a.integrity_every_s,
                on_failure=lambda e: print(f"INTEGRITY FAILURE: {e}", file=sys.stderr),
            )
        )
        for w in workers:
            w.start()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"Layer-7 ledger service on {a.addr.rsplit(':', 1)[0]}:{port} ({a.ledger})")
        sys.stdout.flush()
        stop.wait()
        server.stop(grace=5).wait(10)
    finally:
        for w in workers:
            w.stop()
        led.close()
    return 0


def add_ledger_commands(sub: Any, ledger_flag: Any) -> None:
    sp = sub.add_parser("ledger", help="ledger operations")
    lsub = sp.add_subparsers(dest="ledger_cmd", required=True, metavar="SUBCOMMAND")

    ver = lsub.add_parser("verify", help="chains, global sequence, checkpoints, or an export")
    ledger_flag(ver)
    ver.add_argument("--checkpoint-key", help="ledger checkpoint public key (PEM)")
    ver.add_argument("--witness", help="witness file of signed checkpoints (JSON lines)")
    ver.add_argument("--export", help="verify this audit pack offline instead")
    ver.add_argument("--env", default="local", help="environment whose trust file applies")
    add_trust_flags(ver, signer=False)
    ver.set_defaults(fn=cmd_verify)

    exp = lsub.add_parser("export", help="an offline-verifiable audit pack")
    ledger_flag(exp)
    exp.add_argument("--decision", action="append", help="decision id (repeatable)")
    exp.add_argument("--since", help="every event at or after this RFC 3339 time")
    exp.add_argument("--out", required=True, help="output file")
    exp.add_argument("--checkpoint-key", help="checkpoint signing key (PEM) to sign a fresh one")
    exp.add_argument("--witness", help="witness file to append the checkpoint to")
    exp.set_defaults(fn=cmd_export)

    srv = lsub.add_parser("serve", help="the ledger as its own gRPC service")
    ledger_flag(srv)
    srv.add_argument("--addr", default="127.0.0.1:50071", help="listen address (loopback)")
    srv.add_argument("--oidc-issuer", help="identity provider for callers (required)")
    srv.add_argument("--oidc-audience", default="layer7")
    srv.add_argument("--jwks-url")
    srv.add_argument("--jwks-file")
    srv.add_argument("--subject-claim", default="sub")
    srv.add_argument("--checkpoint-key", help="checkpoint signing key (PEM, 0600)")
    srv.add_argument("--witness", help="append every signed checkpoint to this file")
    srv.add_argument("--dual-write", help="second sink, jsonl:///path")
    srv.add_argument("--checkpoint-every-s", type=float, default=60.0)
    srv.add_argument("--integrity-every-s", type=float, default=300.0)
    srv.add_argument("--env", default="local", help="environment whose trust file applies")
    add_trust_flags(srv, signer=False)
    add_tls_flag(srv, "ledger")
    srv.set_defaults(fn=cmd_serve)
