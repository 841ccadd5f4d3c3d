"""``l7 ledger serve | verify | export``: the ledger tier from the command line.

verify has three modes:
  l7 ledger verify [--ledger URL]                       chains + global sequence
  l7 ledger verify --checkpoint-key PUB                 ... + the Merkle tree against the
      [--witness VKEY [--witness-url URL]]...           signed checkpoint chain and its
      [--require-witnessed]                             witness cosignatures (and each
                                                        witness's latest view when its URL
                                                        is given); --require-witnessed fails
                                                        on any event no witness cosigned
  l7 ledger verify --export FILE --checkpoint-key PUB   an audit pack, offline: nothing but
      [--witness VKEY]...                               the file and the public keys; every
                                                        given witness must have cosigned it

PUB is the log's Ed25519 public key as PEM (or its private key), or its verifier key
(vkey ``<origin>+<hash>+<base64>``, which also pins the origin). Witness keys are vkey
strings or files holding one (``l7 witness serve`` writes ``witness.vkey``).
"""

from __future__ import annotations

import argparse
import dataclasses
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

__all__ = ["add_ledger_commands", "log_public_key"]


def log_public_key(value: str) -> tuple[bytes, str | None]:
    """(raw Ed25519 public key, pinned origin or None) from a PEM file or a vkey string."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ledger.merkle import ProofInvalid
    from ledger.note import ALG_ED25519, VerifierKey

    path = Path(value)
    if "+" in value and not path.exists():
        try:
            vk = VerifierKey.decode(value)
        except ProofInvalid as e:
            raise ConfigError(f"--checkpoint-key {value!r}: {e}") from e
        if vk.alg != ALG_ED25519:
            raise ConfigError(f"--checkpoint-key {vk.key_id} is not a log (Ed25519 note) key")
        return vk.public_key, vk.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--checkpoint-key {value}: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except ValueError as e:
            raise ConfigError(f"--checkpoint-key {value}: not a PEM Ed25519 key") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"--checkpoint-key {value}: expected an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw), None


def _witness_keys(values: list[str]) -> list[Any]:
    from ledger.merkle import ProofInvalid
    from ledger.witness_client import read_vkey

    try:
        return [read_vkey(v) for v in values]
    except (ProofInvalid, OSError) as e:
        raise ConfigError(f"--witness: {e}") from e


def _verify_export(a: argparse.Namespace) -> int:
    from ledger.export import verify_export_file
    from ledger.merkle import ProofInvalid

    if not a.checkpoint_key:
        raise ConfigError("--export needs --checkpoint-key PUB (the ledger's public key)")
    pub, origin = log_public_key(a.checkpoint_key)
    keys = _witness_keys(a.witness)
    if a.require_witnessed and not keys:
        raise ConfigError("--require-witnessed needs --witness VKEY (a witness public key)")
    try:
        pack = verify_export_file(a.export, pub, witness_keys=keys)  # streamed, line by line
    except OSError as e:
        raise ConfigError(f"--export {a.export}: {e.strerror}") from e
    except (IntegrityViolation, ProofInvalid) as e:
        print(f"FAILED: {a.export}: {e}", file=sys.stderr)
        return 1
    cp = pack.checkpoint
    if origin is not None and cp.origin != origin:
        print(f"FAILED: {a.export} is for log {cp.origin!r}, not {origin!r}", file=sys.stderr)
        return 1
    print(
        f"OK: {a.export} verifies offline: {pack.events} events in {pack.streams} streams, "
        f"included in checkpoint {cp.index} of {cp.origin} (tree_size {cp.tree_size}, root "
        f"{cp.root_hash}); chain {pack.chain[0].index}..{cp.index} consistent; cosigned by "
        f"{', '.join(pack.cosigned_by) or 'no witness given'}"
    )
    return 0


def _witnessed(a: argparse.Namespace, keys: list[Any], origin: str) -> list[Any]:
    """Each --witness-url's latest cosigned checkpoint (verified with its --witness key)."""
    from ledger.errors import LedgerUnavailable
    from ledger.witness_client import WitnessClient, WitnessEndpoint

    if len(a.witness_url) > len(keys):
        raise ConfigError("give a --witness VKEY for each --witness-url, in the same order")
    out = []
    for url, key in zip(a.witness_url, keys, strict=False):
        try:
            got = WitnessClient(WitnessEndpoint.parse(url, key.encode())).latest(origin)
        except (LedgerUnavailable, ValueError) as e:
            raise ConfigError(f"--witness-url {url}: {e}") from e
        if got is not None:
            out.append(got[0])
    return out


def cmd_verify(a: argparse.Namespace) -> int:
    from ledger.merkle import ProofInvalid

    if a.export:
        return _verify_export(a)
    keys = _witness_keys(a.witness)
    if a.require_witnessed and not (a.checkpoint_key and keys):
        raise ConfigError(
            "--require-witnessed needs --checkpoint-key PUB and --witness VKEY (the log's and "
            "a witness's public keys)"
        )
    opts: dict[str, Any] = {"create": False, "witness_keys": keys}
    origin = None
    if a.checkpoint_key:
        opts["checkpoint_public_key"], origin = log_public_key(a.checkpoint_key)
        if origin is not None:
            opts["origin"] = origin
    tier_keys = trust_from_args(a).keys
    led = open_ledger(a.ledger, **opts)
    try:
        if a.checkpoint_key:
            cps = led.checkpoints()
            log_origin = origin or (cps[0].origin if cps else None)
            witnessed = _witnessed(a, keys, log_origin) if log_origin else []
            report: Any = led.audit(
                progress=Progress("auditing ledger"),
                require_witnessed=a.require_witnessed,
                witnessed=witnessed,
            )
        else:
            report = led.verify(progress=Progress("verifying ledger"))
        signed = check_attestations(led, tier_keys)
    except (IntegrityViolation, ProofInvalid) as e:
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
    from ledger.checkpoint import Ed25519CheckpointSigner, log_key
    from ledger.files import create_private
    from ledger.witness_client import witness_endpoints

    if not (a.decision or a.since):
        raise ConfigError("choose what to export: --decision ID (repeatable) or --since TIME")
    opts: dict[str, Any] = {
        "create": False,
        "checkpoint_every_s": 0,  # one checkpoint for the export, no background signing
        "witnesses": witness_endpoints(a.witness_url, a.witness_key),
    }
    if a.checkpoint_key:
        opts["checkpoint_signer"] = Ed25519CheckpointSigner.from_file(a.checkpoint_key)
    if a.origin:
        opts["origin"] = a.origin
    out = Path(a.out)
    part = out.with_name(out.name + ".part")  # renamed into place only when complete
    led = open_ledger(a.ledger, **opts)
    try:
        part.unlink(missing_ok=True)
        create_private(part)  # 0600: the pack holds raw payloads
        with part.open("r+b") as fp:
            report = led.export_to(fp, decision_ids=tuple(a.decision or ()), since=a.since)
            fp.flush()
        part.replace(out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        led.close()
    print(
        f"wrote {a.out}: {report.events} events with inclusion proofs against a signed checkpoint"
    )
    if a.checkpoint_key:
        signer = opts["checkpoint_signer"]
        print(f"log key (for l7 ledger verify --checkpoint-key): "
              f"{log_key(report.checkpoint.origin, signer.public_key_raw).encode()}")  # fmt: skip
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from grpc_health.v1 import health

    from l7.cli.certs import tls_dir
    from l7.cli.main import _verifier
    from l7.identity.ledger_reader import OidcReadAuthorizer
    from l7.posture import Requirement, check_server_posture
    from l7.tls import server_tls
    from l7.trust import load_tier_signer
    from ledger.attestation import Tier
    from ledger.checkpoint import log_key
    from ledger.checkpointer import IntegrityMonitor
    from ledger.service import checkpoint_options, create_ledger_server

    check_server_posture(
        "the ledger service (l7 ledger serve)",
        env=a.env,
        addr=a.addr,
        tls=bool(a.tls_dir),
        identity=(Requirement("--oidc-issuer", bool(a.oidc_issuer)),),
    )
    certs = tls_dir(a)
    verifier = _verifier(a)
    if verifier is None:
        raise ConfigError(
            "--oidc-issuer is required: the ledger service authenticates every caller "
            "(engines and gateways carry the 'writer' role, auditors 'auditor')"
        )
    try:
        opts = checkpoint_options(a)
        if certs is not None:  # https:// witnesses over mTLS, as the ledger
            from ledger.mtls import WitnessTLS

            wtls = WitnessTLS.client(certs, "ledger")
            opts["witnesses"] = [
                dataclasses.replace(w, tls=wtls) if w.url.startswith("https://") else w
                for w in opts["witnesses"]
            ]
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from e
    if a.dual_write:
        opts["dual_write"] = a.dual_write
    trust = trust_from_args(a)
    if trust.local_keys:  # a local stack's tiers find their keys (and this service trusts them)
        for tier in (Tier.ENGINE, Tier.GATEWAY):
            _, trust = load_tier_signer(tier, trust, key_path=None, work_dir=Path(a.work_dir))
    led = open_ledger(a.ledger, **opts)
    monitor: IntegrityMonitor | None = None
    try:
        hs = health.HealthServicer()
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
        signer = opts.get("checkpoint_signer")
        monitor = IntegrityMonitor(
            led,
            every_s=a.integrity_every_s,
            tier_keys=trust.keys,
            full_every=a.integrity_full_every,
            on_failure=lambda e: print(f"INTEGRITY FAILURE: {e}", file=sys.stderr),
            public_key=signer.public_key_raw if signer is not None else None,
            witnesses=opts["witnesses"],
        )
        monitor.start()
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"Layer-7 ledger service on {a.addr.rsplit(':', 1)[0]}:{port} ({a.ledger})")
        if signer is not None:
            print(f"checkpoint key: {log_key(led.origin, signer.public_key_raw).encode()}")
        sys.stdout.flush()
        stop.wait()
        server.stop(grace=5).wait(10)
    finally:
        if monitor is not None:
            monitor.stop()
        led.close()
    return 0


def add_ledger_commands(sub: Any, ledger_flag: Any) -> None:
    from ledger.service import add_checkpoint_arguments

    sp = sub.add_parser("ledger", help="ledger operations")
    lsub = sp.add_subparsers(dest="ledger_cmd", required=True, metavar="SUBCOMMAND")

    ver = lsub.add_parser("verify", help="chains, global sequence, checkpoints, or an export")
    ledger_flag(ver)
    ver.add_argument("--checkpoint-key", help="the log's public key (PEM, or its vkey)")
    ver.add_argument(
        "--witness",
        action="append",
        default=[],
        help="a witness's public key (vkey, or a file holding it); repeatable",
    )
    ver.add_argument(
        "--witness-url",
        action="append",
        default=[],
        help="also compare with that witness's latest cosigned checkpoint (same order as "
        "--witness)",
    )
    ver.add_argument(
        "--require-witnessed",
        action="store_true",
        help="fail if any event lies beyond the newest checkpoint a given witness cosigned",
    )
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
    exp.add_argument("--origin", help="the log's origin (default: the stored chain's)")
    exp.add_argument("--witness-url", action="append", default=[], help="witness to cosign it")
    exp.add_argument("--witness-key", action="append", default=[], help="that witness's vkey")
    exp.set_defaults(fn=cmd_export)

    srv = lsub.add_parser("serve", help="the ledger as its own gRPC service")
    ledger_flag(srv)
    srv.add_argument("--addr", default="127.0.0.1:50071", help="listen address (loopback)")
    srv.add_argument("--oidc-issuer", help="identity provider for callers (required)")
    srv.add_argument("--oidc-audience", default="layer7")
    srv.add_argument("--jwks-url")
    srv.add_argument("--jwks-file")
    srv.add_argument("--subject-claim", default="sub")
    add_checkpoint_arguments(srv)
    srv.add_argument("--dual-write", help="second sink, jsonl:///path")
    srv.add_argument("--integrity-every-s", type=float, default=30.0)
    srv.add_argument("--integrity-full-every", type=int, default=10)
    srv.add_argument("--env", default="local", help="environment whose trust file applies")
    add_trust_flags(srv, signer=False)
    add_tls_flag(srv, "ledger")
    srv.set_defaults(fn=cmd_serve)
