"""``l7``: serve, decide, inspect decisions, verify the ledger, build bundles, demo.

Exit codes: 0 success, 1 the thing checked failed or was refused, 2 bad usage
or configuration (the message names the flag or file at fault).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l7.cli.authority import add_authority_commands
from l7.cli.certs import add_certs_commands, add_tls_flag, tls_credentials, tls_dir
from l7.cli.decision import add_replay_command
from l7.cli.ledger_cmds import add_ledger_commands
from l7.cli.tool_cmds import add_tool_commands
from l7.cli.trust import add_trust_commands, add_trust_flags, signed_ledger, trust_from_args
from l7.cli.witness_cmds import add_witness_commands
from l7.engine.state import fold_decision
from l7.errors import ConfigError, L7Error, RequestInvalid
from l7.identity import TokenVerifier
from l7.policy.signing import BundleSigners
from l7.posture import check_server_posture
from l7.signed_ledger import SignedLedger
from l7.stack import REPO_ROOT, Stack, StackConfig, connect_ledger
from l7.tls import server_tls
from ledger import LedgerError, open_ledger
from ledger.attestation import Tier
from ledger.files import private_dir

__all__ = ["main"]

DEFAULT_LEDGER = StackConfig().ledger_url
DEFAULT_ADDR = "127.0.0.1:50051"


def _ensure_sqlite_dir(url: str) -> None:
    if url.startswith("sqlite:///"):
        private_dir(Path(url.removeprefix("sqlite:///")).parent)  # 0700 (ledger.files)


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _read_request(path: str) -> dict[str, Any]:
    """The request JSON from a file or stdin, within the request limits (size, nesting,
    finite numbers) and of the DecideRequest shape; any problem is a one-line
    RequestInvalid naming the file and, for a wrong shape, the field."""
    from google.protobuf import json_format

    from l7.engine.validate import MAX_JSON_BYTES, loads_json
    from l7.server.convert import request_to_proto

    src = "stdin" if path == "-" else path
    try:
        if path == "-":
            data: str | bytes = sys.stdin.read(MAX_JSON_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{src}: cannot read request ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise RequestInvalid(src, "is not UTF-8 text") from e
    obj = loads_json(data, src)
    if not isinstance(obj, dict):
        raise RequestInvalid(src, "must contain a JSON object")
    try:
        request_to_proto(obj)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as e:
        problem = " ".join(str(e).split())[:240] or type(e).__name__
        raise RequestInvalid(src, f"does not fit l7.v1.DecideRequest: {problem}") from e
    return obj


# -- commands ----------------------------------------------------------------------------


def _verifier(a: argparse.Namespace) -> TokenVerifier | None:
    from l7.identity import ClaimMap, JwksFile, JwksUrl, JwtVerifier

    if not a.oidc_issuer:
        if a.jwks_url or a.jwks_file:
            raise ConfigError("--jwks-url/--jwks-file need --oidc-issuer")
        return None
    jwks = (
        JwksFile(Path(a.jwks_file))
        if a.jwks_file
        else JwksUrl(a.jwks_url or a.oidc_issuer.rstrip("/") + "/.well-known/keys")
    )
    return JwtVerifier(
        jwks,
        issuer=a.oidc_issuer,
        audience=a.oidc_audience,
        claim_map=ClaimMap(subject=a.subject_claim),
    )


def _bao(a: argparse.Namespace) -> Any:
    """An hvac client for --bao-addr with the token from --bao-token-file or $BAO_TOKEN."""

    import hvac

    if not a.bao_addr:
        return None
    token = os.environ.get("BAO_TOKEN", "")
    if a.bao_token_file:
        try:
            token = Path(a.bao_token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--bao-token-file {a.bao_token_file}: {e.strerror}") from e
    return hvac.Client(url=a.bao_addr, token=token)


def _checkpoint_config(a: argparse.Namespace) -> dict[str, Any]:
    """StackConfig fields for continuous, witnessed checkpoints from ``l7 serve`` flags."""
    from l7.cli.ledger_cmds import log_public_key
    from ledger.mtls import WitnessTLS
    from ledger.witness_client import witness_endpoints

    remote = a.ledger.startswith("grpc://")
    certs = tls_dir(a)
    try:
        wtls = WitnessTLS.client(certs, "engine") if certs and a.witness_url else None
        witnesses = tuple(witness_endpoints(a.witness_url, a.witness_key, tls=wtls))
    except (ValueError, OSError) as e:
        raise ConfigError(str(e)) from e
    out: dict[str, Any] = {
        "witnesses": witnesses,
        "checkpoint_every_s": a.checkpoint_every_s,
        "checkpoint_every_events": a.checkpoint_every_events,
        "local_witness": not remote and a.env == "local" and not a.no_local_witness,
        "integrity_degraded_after_s": a.integrity_degraded_after_s,
    }
    if a.checkpoint_key:
        if remote:
            out["checkpoint_public_key"], origin = log_public_key(a.checkpoint_key)
            out["origin"] = origin
        else:
            out["checkpoint_key"] = Path(a.checkpoint_key)
    return out


def _witness_line(stack: Stack) -> str:
    if stack.witness is not None and stack.witness.vkey is not None:
        return f"{stack.witness.url} ({stack.witness.vkey.encode()})"
    n = len(stack.config.witnesses)
    return f"{n} configured" if n else "none (checkpoints are not cosigned)"


_NO_IDENTITY = (
    "none (dev: Decide unauthenticated, approvals refused; reads open to loopback "
    "callers only, unrecorded)"
)


def cmd_serve(a: argparse.Namespace) -> int:
    from l7.secrets.envelope import Envelope
    from l7.secrets.refs import BaoSecretStore

    _ensure_sqlite_dir(a.ledger)
    bao = _bao(a)
    stack = Stack(
        StackConfig(
            env=a.env,
            ledger_url=a.ledger,
            addr=a.addr,
            opa_url=a.opa_url,
            verifier=_verifier(a),
            secret_store=BaoSecretStore(bao) if bao else None,
            envelope=Envelope(bao, a.transit_key) if bao and a.transit_key else None,
            ledger_token=os.environ.get("L7_LEDGER_TOKEN"),
            integrity_check_s=a.integrity_every_s,
            integrity_full_every=a.integrity_full_every,
            cert_dir=tls_dir(a),
            rate_limit_url=a.rate_limit_db,
            grant_key=Path(a.grant_key) if a.grant_key else None,
            opa_restart_s=a.opa_restart_s,
            work_dir=Path(a.work_dir),
            allow_rollback=a.allow_rollback,
            trust_file=Path(a.trust_file) if a.trust_file else None,
            tier_key=Path(a.tier_key) if a.tier_key else None,
            bundle_signing_key=Path(a.bundle_signing_key) if a.bundle_signing_key else None,
            **_checkpoint_config(a),
        )
    )
    stack.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rev = stack.bundle.revision[:12] if stack.bundle else "external OPA"
    print(
        f"Layer-7 serving Governance on {stack.target}\n"
        f"  policy bundle : {a.env} @ {rev}\n"
        f"  OPA           : {stack.opa.url if stack.opa else a.opa_url}\n"
        f"  ledger        : {a.ledger}\n"
        f"  identity      : {a.oidc_issuer or _NO_IDENTITY}\n"
        f"  mTLS          : {a.tls_dir or 'off (plaintext loopback)'}\n"
        f"  grant key     : {stack.grant_public_key_path} (give it to l7 gateway serve)\n"
        f"  checkpoints   : {stack.checkpoint_vkey or 'signed by the ledger service'}\n"
        f"  witness       : {_witness_line(stack)}\n"
        f"Try it (in another shell):\n"
        f"  .venv/bin/l7 decide --target {stack.target} examples/requests/read-dev.json\n"
        f"Ctrl-C stops.",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        print("stopping...", file=sys.stderr)
        stack.stop()
    return 0


def cmd_decide(a: argparse.Namespace) -> int:
    from l7.client import GovernanceClient, RemoteError

    request = _read_request(a.file)
    if a.embedded:
        _ensure_sqlite_dir(a.ledger)
        cfg = StackConfig(env=a.env, ledger_url=a.ledger, opa_url=a.opa_url)
        with Stack(cfg) as stack, GovernanceClient(stack.target) as client:
            out = client.decide(request)
    else:
        try:
            with GovernanceClient(a.target, credentials=tls_credentials(a, "cli")) as client:
                out = client.decide(request)
        except RemoteError as e:
            _print_json({"error": {"code": e.code.name, "reason": e.reason, "message": e.message}})
            return 1
    _print_json(out)
    return 0


def cmd_decision_show(a: argparse.Namespace) -> int:
    raw = open_ledger(a.ledger, create=False)
    try:
        events = SignedLedger(raw, keys=trust_from_args(a).keys).get_stream(a.decision_id)
    finally:
        raw.close()
    if not events:
        print(f"no decision {a.decision_id!r} in {a.ledger}", file=sys.stderr)
        return 1
    out = fold_decision(events).to_dict()
    out["events"] = [
        {"sequence": e.sequence, "type": e.event_type, "at": e.at, "hash": e.hash} for e in events
    ]
    _print_json(out)
    return 0


def _bundle_key(
    signers: BundleSigners, given: str | None, work_dir: Path, *, pin: bool
) -> Path | None:
    """The key ``l7 bundle`` signs ``signers.env`` with: ``--signing-key``, else the work
    dir's own key where the environment may use one, else none (an unsigned build that
    checks or writes the lock only). Refused before building unless the key may sign:
    pinned, or (with ``--pin-signer``) about to be pinned by its holder."""
    from l7.policy.bundle import DEFAULT_SIGNING_KEY
    from l7.policy.signing import load_or_create_signing_key

    if pin:
        if given is None and not signers.own_key:
            raise ConfigError(
                f"--pin-signer for {signers.env} needs --signing-key KEY: the key its holder "
                "made outside the repository (created there now if missing)"
            )
        return Path(given) if given else work_dir / DEFAULT_SIGNING_KEY
    signers.require()
    if given is None and not signers.own_key:
        return None
    key = Path(given) if given else work_dir / DEFAULT_SIGNING_KEY
    if signers.pinned:
        _, signer = load_or_create_signing_key(key, create=False)
        signers.check(signer)
    return key


def cmd_bundle(a: argparse.Namespace) -> int:
    from l7.policy.bundle import build_bundle, committed_signers, promote, verify_lock, write_lock
    from l7.policy.opa_process import find_opa
    from l7.policy.signing import load_or_create_signing_key
    from l7.trust import pin_bundle_signer

    opa_bin = find_opa(a.opa_bin)
    work_dir = REPO_ROOT / ".build"
    out_dir = work_dir / "bundles"
    if a.bundle_cmd == "promote":
        signers = committed_signers(a.to_env, REPO_ROOT)
        key = _bundle_key(signers, a.signing_key, work_dir, pin=False)
        built, summary = promote(
            a.from_env,
            a.to_env,
            repo_root=REPO_ROOT,
            out_dir=out_dir,
            opa_bin=opa_bin,
            signing_key=key,
            signers=signers,
        )
        print("\n".join(summary))
        print(f"{a.to_env}: lock updated; review 'git diff bundles/{a.to_env}.lock.json'")
        return 0
    envs = a.env or sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if p.is_dir())
    pin = a.bundle_cmd == "build" and a.pin_signer
    for env in envs:
        signers = committed_signers(env, REPO_ROOT)
        key = _bundle_key(signers, a.signing_key, work_dir, pin=pin)
        note = (
            f"not signed here: sign with a key {signers.source} pins "
            "(--signing-key; l7 serve --bundle-signing-key)"
        )
        if a.bundle_cmd == "build":
            if pin and key is not None:
                _, signer = load_or_create_signing_key(key)  # the holder's own key ceremony
                path, changed = pin_bundle_signer(env, signer, repo_root=REPO_ROOT)
                done = "pinned" if changed else "already pins"
                print(f"{env}: {done} signer {signer.kid} in {path}")
                signers = committed_signers(env, REPO_ROOT)
            built = build_bundle(
                env,
                repo_root=REPO_ROOT,
                out_dir=out_dir,
                opa_bin=opa_bin,
                signing_key=key,
                create_key=signers.own_key and not signers.pinned,
            )
            if built.signer is not None:
                signers.check(built.signer)
            else:
                signers.require()
            write_lock(built, REPO_ROOT)
            kid = f"signed by {built.signer.kid}" if built.signer else note
            print(f"{env}: revision {built.revision} {kid} -> {built.path} (lock updated)")
        else:
            built = verify_lock(
                env,
                repo_root=REPO_ROOT,
                out_dir=out_dir,
                opa_bin=opa_bin,
                signing_key=key,
                signers=signers,
            )
            how = f"signature by {built.signer.kid} verified" if built.signer else note
            print(f"{env}: lock matches, revision {built.revision}, {how}")
    return 0


def cmd_gateway_serve(a: argparse.Namespace) -> int:
    from l7.gateway.grant import GrantVerifier, kid_of, load_grant_public_key
    from l7.gateway.server import create_gateway_server
    from l7.gateway.service import GatewayService, parse_environments

    guarded = parse_environments(a.guarded_envs)  # before anything starts
    # its callers prove their tier by mTLS (tool) and carry a grant the engine signed;
    # guarding production is a production posture whatever the trust environment is
    check_server_posture(
        "the gateway (l7 gateway serve)",
        env="production" if "production" in guarded else a.env,
        addr=a.addr,
        tls=bool(a.tls_dir),
    )
    certs = tls_dir(a)
    if not a.grant_public_key:
        raise ConfigError(
            "--grant-public-key is required: a gateway without a verification key would run "
            "with checks disabled, so it refuses to start"
        )
    from l7.secrets.refs import BaoSecretStore

    keys = {kid_of(k): k for k in (load_grant_public_key(Path(p)) for p in a.grant_public_key)}
    bao = _bao(a)
    raw = (
        connect_ledger(
            a.ledger,
            token=os.environ.get("L7_LEDGER_TOKEN"),
            credentials=tls_credentials(a, "gateway"),
        )
        if a.ledger.startswith("grpc://")
        else open_ledger(a.ledger, create=False)
    )
    try:
        led = signed_ledger(a, raw, Tier.GATEWAY)
    except BaseException:
        raw.close()
        raise
    server, port = create_gateway_server(
        a.addr,
        GatewayService(
            led,
            GrantVerifier(keys),
            environments=parse_environments(a.guarded_envs),
            policy_env=a.env,
            gateway_id=a.gateway_id,
            secrets=BaoSecretStore(bao) if bao else None,
        ),
        tls=server_tls(certs, "gateway") if certs else None,
    )
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    host = a.addr.rsplit(":", 1)[0]
    print(
        f"Layer-7 gateway {a.gateway_id} on {host}:{port} guarding {', '.join(sorted(guarded))} "
        f"(ledger {a.ledger}, policy and trust of {a.env})",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        server.stop(grace=2).wait(5)
        led.close()
    return 0


def cmd_secrets_check(a: argparse.Namespace) -> int:
    from l7.secrets.interface import SecretRef
    from l7.secrets.refs import BaoSecretStore

    bao = _bao(a)
    if bao is None:
        raise ConfigError("--bao-addr is required (or $BAO_ADDR)")
    ref = SecretRef.parse(a.ref, field="REF")
    meta = BaoSecretStore(bao).metadata(ref)
    print(f"OK: {ref} exists (version {meta.version}, written {meta.created_time}); value not read")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from l7.cli.demo import run_demo

    return run_demo(keep=a.keep)


# -- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l7", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def ledger_flag(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--ledger", default=DEFAULT_LEDGER, help="ledger database URL")

    def bao_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--bao-addr", help="OpenBao for secret references (KV v2 at secret/)")
        sp.add_argument("--bao-token-file", help="OpenBao token file (default $BAO_TOKEN)")

    sp = sub.add_parser("secrets", help="secret references")
    ssub = sp.add_subparsers(dest="secrets_cmd", required=True, metavar="SUBCOMMAND")
    chk = ssub.add_parser("check", help="does a secret reference resolve (metadata only)?")
    chk.add_argument("ref", help="vault:<mount>/<path>#<field>[@<version>]")
    bao_flags(chk)
    chk.set_defaults(fn=cmd_secrets_check)

    sp = sub.add_parser("serve", help="serve the Governance API (starts OPA with the bundle)")
    sp.add_argument("--env", default="local", help="bundle environment under bundles/")
    sp.add_argument("--addr", default=DEFAULT_ADDR, help="listen address (loopback)")
    sp.add_argument("--opa-url", help="use this running OPA instead of starting one")
    sp.add_argument("--oidc-issuer", help="identity provider issuer URL (enables authority)")
    sp.add_argument("--oidc-audience", default="layer7", help="expected token audience")
    sp.add_argument("--jwks-url", help="issuer keys URL (default ISSUER/.well-known/keys)")
    sp.add_argument("--jwks-file", help="issuer keys as a JWKS file instead of a URL")
    sp.add_argument("--subject-claim", default="sub", help="token claim naming the identity")
    bao_flags(sp)
    sp.add_argument("--transit-key", help="OpenBao transit key for envelope fields")
    sp.add_argument(
        "--integrity-every-s",
        type=float,
        default=30.0,
        help="check what the ledger appended since the last check this often (0: off)",
    )
    sp.add_argument(
        "--integrity-full-every",
        type=int,
        default=10,
        help="every n-th integrity check re-reads the whole ledger (default 10: every 300 s)",
    )
    sp.add_argument(
        "--integrity-degraded-after-s",
        type=float,
        help="deny governed actions (ledger_degraded) when no integrity check completed for "
        "this long (default: three intervals)",
    )
    sp.add_argument(
        "--checkpoint-key",
        help="in-process ledger: its Ed25519 checkpoint key (created if missing; default "
        ".build/keys/checkpoint.pem); grpc:// ledger: the service's checkpoint public key "
        "(PEM or vkey) the integrity monitor verifies with",
    )
    sp.add_argument("--checkpoint-every-s", type=float, default=1.0)
    sp.add_argument("--checkpoint-every-events", type=int, default=1000)
    sp.add_argument(
        "--witness-url", action="append", default=[], help="a witness cosigning checkpoints"
    )
    sp.add_argument(
        "--witness-key", action="append", default=[], help="that witness's vkey (or a file)"
    )
    sp.add_argument(
        "--no-local-witness",
        action="store_true",
        help="do not start the local witness process (started by default with --env local)",
    )
    sp.add_argument(
        "--opa-restart-s",
        type=float,
        default=2.0,
        help="restart a crashed OPA child after this many seconds (0: never; default 2)",
    )
    sp.add_argument(
        "--grant-key",
        help="Ed25519 key signing execution grants (created if missing; default "
        ".build/keys/grant.pem); replicas behind one gateway share it",
    )
    sp.add_argument(
        "--rate-limit-db",
        help="PostgreSQL URL for rate-limit buckets shared by all engine replicas "
        "(default: the ledger's database when --ledger is PostgreSQL; else per process)",
    )
    sp.add_argument(
        "--bundle-signing-key",
        help="ES256 key signing the locked policy bundle; must be pinned in the trust file's "
        "bundle_signers. Required where the trust file says local_keys: false (staging, "
        "production: never created); default under local keys: "
        "<work-dir>/keys/bundle-signing.pem, created if missing",
    )
    sp.add_argument(
        "--allow-rollback",
        action="store_true",
        help="activate a bundle revision older than the newest ever activated for --env "
        "(recorded as a rollback in the ledger); refused without it",
    )
    add_tls_flag(sp, "engine")
    add_trust_flags(sp, signer=True)
    ledger_flag(sp)
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("decide", help="judge a JSON request from FILE or stdin")
    sp.add_argument("file", nargs="?", default="-", help="request JSON file, - for stdin")
    sp.add_argument("--target", default=DEFAULT_ADDR, help="server address")
    sp.add_argument("--embedded", action="store_true", help="start a private stack for this call")
    sp.add_argument("--env", default="local", help="bundle environment (with --embedded)")
    sp.add_argument("--opa-url", help="external OPA (with --embedded)")
    add_tls_flag(sp, "cli")
    ledger_flag(sp)
    sp.set_defaults(fn=cmd_decide)

    sp = sub.add_parser("decision", help="inspect decisions")
    dsub = sp.add_subparsers(dest="decision_cmd", required=True, metavar="SUBCOMMAND")
    show = dsub.add_parser("show", help="a decision rebuilt from its ledger events alone")
    show.add_argument("decision_id")
    show.add_argument("--env", default="local", help="environment whose trust file applies")
    add_trust_flags(show, signer=False)
    ledger_flag(show)
    show.set_defaults(fn=cmd_decision_show)
    add_replay_command(dsub, ledger_flag)

    add_ledger_commands(sub, ledger_flag)
    add_witness_commands(sub)
    add_tool_commands(sub)

    sp = sub.add_parser("bundle", help="build, verify or promote signed policy bundles")
    bsub = sp.add_subparsers(dest="bundle_cmd", required=True, metavar="SUBCOMMAND")
    key_help = (
        "ES256 private key PEM; must be pinned in bundles/<env>.trust.json bundle_signers. "
        "Default where the env allows local keys: .build/keys/bundle-signing.pem (created "
        "if missing); elsewhere none: the lock is built or checked unsigned"
    )
    for name, text in (
        ("build", "build, sign and update the lock"),
        ("verify", "rebuild, check the lock and the signature"),
    ):
        b = bsub.add_parser(name, help=text)
        b.add_argument("--env", action="append", help="environment (repeatable; default all)")
        b.add_argument("--opa-bin", help="OPA binary (default .tools/opa)")
        b.add_argument("--signing-key", help=key_help)
        if name == "build":
            b.add_argument(
                "--pin-signer",
                action="store_true",
                help="the key holder pins --signing-key (created if missing) in "
                "bundles/<env>.trust.json bundle_signers: only pinned keys may sign",
            )
        b.set_defaults(fn=cmd_bundle)
    b = bsub.add_parser("promote", help="pin one environment's reviewed policy in another's lock")
    b.add_argument("--from", dest="from_env", required=True, help="environment to promote from")
    b.add_argument("--to", dest="to_env", required=True, help="environment whose lock to write")
    b.add_argument("--opa-bin", help="OPA binary (default .tools/opa)")
    b.add_argument("--signing-key", help=key_help)
    b.set_defaults(fn=cmd_bundle)

    add_authority_commands(sub, DEFAULT_ADDR)
    add_certs_commands(sub)
    add_trust_commands(sub)

    sp = sub.add_parser("gateway", help="the execution gateway (Boundary B)")
    gsub = sp.add_subparsers(dest="gateway_cmd", required=True, metavar="SUBCOMMAND")
    gs = gsub.add_parser("serve", help="serve Authorize / ConfirmExecution")
    gs.add_argument("--addr", default="127.0.0.1:50061", help="listen address (loopback)")
    gs.add_argument(
        "--grant-public-key",
        action="append",
        help="engine grant key (PEM, repeatable for rotation); required",
    )
    gs.add_argument("--gateway-id", default="gateway", help="name recorded in the ledger")
    gs.add_argument(
        "--env",
        dest="guarded_envs",
        action="append",
        required=True,
        metavar="ENV",
        help="environment this gateway guards: dev, staging or production (required; "
        "repeatable or a comma list); a grant for any other is refused environment_mismatch",
    )
    gs.add_argument(
        "--trust-env",
        dest="env",
        default="local",
        help="bundle environment whose trust file pins the tier keys and whose signed "
        "policy.activated events name the active policy revision (default local)",
    )
    add_trust_flags(gs, signer=True)
    add_tls_flag(gs, "gateway")
    bao_flags(gs)
    ledger_flag(gs)
    gs.set_defaults(fn=cmd_gateway_serve)

    sp = sub.add_parser("demo", help="start a private stack and walk a readable scenario")
    sp.add_argument("--keep", action="store_true", help="keep the demo's work directory")
    sp.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from l7.secrets.logfilter import install

    install()  # every log line passes the secret scanner's redaction
    try:
        rc: int = args.fn(args)
    except ConfigError as e:
        print(f"l7: configuration error: {e}", file=sys.stderr)
        return 2
    except L7Error as e:
        print(f"l7: {e.reason}: {e}", file=sys.stderr)
        return 1
    except LedgerError as e:
        print(f"l7: ledger error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
