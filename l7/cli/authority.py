"""``l7 approve | reject | cancel | pending | keys | delegate``: the approver's side.

The approver's token comes from ``--token-file`` or ``$L7_TOKEN``. Before signing,
``approve`` re-reads the decision, recomputes the intent hash from the action it
shows, and refuses to sign if the server's hash differs: an approver signs what
they saw, never an opaque id.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import hvac
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from l7.authority.approval import ApprovalPayload, Rationale, Verdict, sign_approval
from l7.cli.certs import add_tls_flag, tls_credentials
from l7.client import GovernanceClient
from l7.crypto import (
    Ed25519Signer,
    Signer,
    TransitSigner,
    intent_hash,
    key_fingerprint,
    load_private_key,
    public_key_raw,
    save_private_key,
)
from l7.errors import ConfigError
from l7.v1 import governance_pb2 as pb

__all__ = ["add_authority_commands"]


def _token(a: argparse.Namespace) -> str:
    if a.token_file:
        try:
            return Path(a.token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--token-file {a.token_file}: {e.strerror}") from e
    tok = os.environ.get("L7_TOKEN", "").strip()
    if not tok:
        raise ConfigError("no identity token: pass --token-file FILE or set $L7_TOKEN")
    return tok


def _client(a: argparse.Namespace) -> GovernanceClient:
    return GovernanceClient(a.target, token=_token(a), credentials=tls_credentials(a, "cli"))


def _subject(a: argparse.Namespace, token: str) -> str:
    if a.as_subject:
        return str(a.as_subject)
    claims = jwt.decode(token, options={"verify_signature": False})  # server verifies
    sub = claims.get(a.subject_claim)
    if not isinstance(sub, str) or not sub:
        raise ConfigError(f"the token has no {a.subject_claim!r} claim; pass --as SUBJECT")
    return sub


def _bao(a: argparse.Namespace) -> hvac.Client:
    addr = a.bao_addr or os.environ.get("BAO_ADDR") or os.environ.get("VAULT_ADDR")
    if not addr:
        raise ConfigError("--transit needs --bao-addr or $BAO_ADDR")
    token = os.environ.get("BAO_TOKEN") or os.environ.get("VAULT_TOKEN") or ""
    if a.bao_token_file:
        token = Path(a.bao_token_file).read_text(encoding="utf-8").strip()
    return hvac.Client(url=addr, token=token)


def _signer(a: argparse.Namespace) -> Signer:
    if a.key and a.transit:
        raise ConfigError("use either --key or --transit, not both")
    if a.key:
        key = load_private_key(a.key)
        return Ed25519Signer(key, key_id=a.key_id or None)
    if a.transit:
        return TransitSigner(_bao(a), a.transit, key_version=a.transit_version)
    raise ConfigError("choose a signing key: --key FILE (ed25519) or --transit KEY (OpenBao)")


def _show(d: dict[str, Any]) -> None:
    act, risk = d["action"], d.get("risk") or {}
    print(f"decision {d['decision_id']}  status {d['status']}", file=sys.stderr)
    print(
        f"  action  {act['class']} on {act['target']['type']}/{act['target']['id']}: "
        f"{act['intent']}",
        file=sys.stderr,
    )
    print(f"  risk    {risk.get('score', 0)} ({risk.get('band', '?')})", file=sys.stderr)
    for c in d.get("authority_progress", {}).get("clauses", []):
        who = ", ".join(c.get("approvers", [])) or "-"
        print(
            f"  clause  {c['clause_id']}: {c.get('count', 0)} x L{c.get('min_level', 0)}+ "
            f"(signed: {who}; missing {c.get('missing', 0)})",
            file=sys.stderr,
        )


def cmd_sign(a: argparse.Namespace) -> int:
    verdict = Verdict.REJECT if a.cmd == "reject" else Verdict.APPROVE
    token = _token(a)
    with GovernanceClient(a.target, token=token, credentials=tls_credentials(a, "cli")) as c:
        d = c.get_decision(a.decision_id)
        _show(d)
        # The same hash the engine binds: the action and its effective environment.
        local = intent_hash(d["action"], str(d.get("context", {}).get("environment", "")))
        if local != d["intent_hash"]:
            raise ConfigError(
                f"the server's intent hash {d['intent_hash']} does not match the action shown "
                f"({local}); refusing to sign"
            )
        rationale = None
        if a.rationale:
            rationale = Rationale(a.rationale, ticket=a.ticket, risk_accepted=a.risk_accepted)
        signer = _signer(a)
        payload = ApprovalPayload.new(
            a.decision_id,
            local,
            verdict,
            _subject(a, token),
            signer.key_id,
            ttl_s=a.ttl,
            now=int(time.time()),
            rationale=rationale,
        )
        s = sign_approval(payload, signer)
        msg = pb.SignedApproval(
            payload_json=json.dumps(s.payload.to_signed_dict()),
            method=s.method.value,
            signature=s.signature,
        )
        out = (
            c.reject(a.decision_id, msg)
            if verdict is Verdict.REJECT
            else c.approve(a.decision_id, msg)
        )
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    with _client(a) as c:
        print(json.dumps(c.cancel(a.decision_id, a.reason), indent=2, sort_keys=True))
    return 0


def cmd_pending(a: argparse.Namespace) -> int:
    with _client(a) as c:
        items = c.pending(a.limit)
    if a.json:
        print(json.dumps(items, indent=2, sort_keys=True))
        return 0
    now = time.time()
    print(f"{'decision':<38} {'band':<9} {'age':>7}  {'action':<32} missing")
    for d in items:
        missing = [
            f"{c.get('missing', 0)}xL{c.get('min_level', 0)} {c['clause_id']}"
            for c in d.get("authority_progress", {}).get("clauses", [])
            if c.get("missing", 0)
        ]
        created = d.get("created_at", "")
        try:
            from datetime import datetime

            age = int(now - datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            age = 0
        act = f"{d['action']['class']} {d['action']['target']['id']}"
        band = (d.get("risk") or {}).get("band", "?")
        print(f"{d['decision_id']:<38} {band:<9} {age:>6}s  {act:<32} {', '.join(missing)}")
    return 0


def cmd_keys(a: argparse.Namespace) -> int:
    if a.keys_cmd == "generate":
        key = Ed25519PrivateKey.generate()
        save_private_key(a.out, key)
        pub = public_key_raw(key.public_key())
        print(
            json.dumps(
                {
                    "key_file": str(a.out),
                    "key_id": key_fingerprint(pub),
                    "public_key": base64.b64encode(pub).decode(),
                }
            )
        )
        return 0
    with _client(a) as c:
        if a.keys_cmd == "register":
            if a.key:
                pub = public_key_raw(load_private_key(a.key).public_key())
                key_id = a.key_id or key_fingerprint(pub)
                method = "ed25519"
            elif a.public_key:
                pub = base64.b64decode(a.public_key)
                key_id, method = a.key_id, a.method
            else:
                raise ConfigError("register needs --key FILE or --public-key BASE64")
            if not key_id:
                raise ConfigError("--key-id is required with --public-key")
            seq = c.register_key(a.subject, key_id, method, pub)
            print(f"registered {a.subject}/{key_id} ({method}) at global_seq {seq}")
        else:
            seq = c.revoke_key(a.subject, a.key_id, a.reason)
            print(f"revoked {a.subject}/{a.key_id} at global_seq {seq}")
    return 0


def cmd_delegate(a: argparse.Namespace) -> int:
    with _client(a) as c:
        seq = c.delegate(a.to, a.level, a.scope, int(time.time()) + a.hours * 3600, a.reason)
    print(f"delegated L{a.level} to {a.to} for {a.hours}h at global_seq {seq}")
    return 0


def cmd_breakglass(a: argparse.Namespace) -> int:
    with _client(a) as c:
        if a.bg_cmd == "open":
            info, grant = c.breakglass(
                incident_id=a.incident,
                category=a.category,
                text=a.reason,
                ttl_s=a.ttl,
                action_class=a.action_class,
                target=(a.target_type, a.target_id),
                environment=a.environment,
            )
            print(json.dumps({"breakglass": info, "grant": grant}, indent=2, sort_keys=True))
        elif a.bg_cmd == "review":
            print(json.dumps(c.review_breakglass(a.decision_id, a.findings), indent=2))
        else:
            items = c.list_breakglass()
            if a.json:
                print(json.dumps(items, indent=2, sort_keys=True))
                return 0
            print(f"{'decision':<38} {'opened by':<12} {'incident':<12} {'review due':>11}  state")
            for i in items:
                state = "OVERDUE" if i["overdue"] else "awaiting review"
                print(
                    f"{i['decision_id']:<38} {i['opened_by']:<12} {i['incident_id']:<12} "
                    f"{i['review_deadline']:>11}  {state}"
                )
    return 0


def cmd_restriction(a: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(a) as c:
        if a.restriction_cmd == "clear":
            st = c._call("ClearRestriction", pb.ClearRestrictionRequest(reason=a.reason))
        else:
            st = c._call("GetRestriction", pb.GetRestrictionRequest())
    print(json.dumps(json_format.MessageToDict(st, always_print_fields_with_no_presence=True)))
    return 0


def add_authority_commands(sub: Any, default_addr: str) -> None:
    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--target", default=default_addr, help="server address")
        sp.add_argument("--token-file", help="your OIDC token (default $L7_TOKEN)")
        add_tls_flag(sp, "cli")

    for name, text in (("approve", "sign and submit an approval"), ("reject", "sign a rejection")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("decision_id")
        common(sp)
        sp.add_argument("--key", help="ed25519 private key file (PEM)")
        sp.add_argument("--key-id", help="registered key id (default: the key's fingerprint)")
        sp.add_argument("--transit", help="OpenBao transit key name to sign with")
        sp.add_argument("--transit-version", type=int, help="pin the transit key version")
        sp.add_argument("--bao-addr", help="OpenBao address (default $BAO_ADDR)")
        sp.add_argument("--bao-token-file", help="OpenBao token file (default $BAO_TOKEN)")
        sp.add_argument("--rationale", help="why (required for high and critical bands)")
        sp.add_argument("--ticket", help="change or incident ticket for the rationale")
        sp.add_argument("--risk-accepted", help="the residual risk you accept")
        sp.add_argument("--ttl", type=int, default=600, help="seconds the signature is valid")
        sp.add_argument("--as", dest="as_subject", help="your subject (default: from token)")
        sp.add_argument("--subject-claim", default="name", help="token claim naming you")
        sp.set_defaults(fn=cmd_sign)

    sp = sub.add_parser("cancel", help="withdraw a decision (requester or L4+)")
    sp.add_argument("decision_id")
    sp.add_argument("--reason", default="", help="why")
    common(sp)
    sp.set_defaults(fn=cmd_cancel)

    sp = sub.add_parser("pending", help="decisions waiting for authority, most urgent first")
    common(sp)
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.set_defaults(fn=cmd_pending)

    sp = sub.add_parser("keys", help="approver signing keys")
    ks = sp.add_subparsers(dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    g = ks.add_parser("generate", help="create an ed25519 key file (mode 0600)")
    g.add_argument("--out", type=Path, required=True)
    g.set_defaults(fn=cmd_keys)
    r = ks.add_parser("register", help="record an approver's public key (L4+)")
    common(r)
    r.add_argument("--subject", required=True)
    r.add_argument("--key", help="derive the public key from this private key file")
    r.add_argument("--public-key", help="raw public key, base64")
    r.add_argument("--key-id")
    r.add_argument("--method", default="ed25519", choices=["ed25519", "vault-transit"])
    r.set_defaults(fn=cmd_keys)
    v = ks.add_parser("revoke", help="revoke a key (its owner, or L4+)")
    common(v)
    v.add_argument("--subject", required=True)
    v.add_argument("--key-id", required=True)
    v.add_argument("--reason", required=True)
    v.set_defaults(fn=cmd_keys)

    sp = sub.add_parser("breakglass", help="emergency access: open, review, pending")
    bs = sp.add_subparsers(dest="bg_cmd", required=True, metavar="SUBCOMMAND")
    o = bs.add_parser("open", help="open a scoped, time-bound break-glass (L4/L5)")
    common(o)
    o.add_argument("--incident", required=True, help="incident id")
    o.add_argument("--category", required=True, help="one of the policy's categories")
    o.add_argument("--reason", required=True, help="what is on fire and why this is needed")
    o.add_argument("--ttl", type=int, default=900, help="requested window in seconds")
    o.add_argument("--class", dest="action_class", required=True, help="action class in scope")
    o.add_argument("--target-type", required=True)
    o.add_argument("--target-id", required=True)
    o.add_argument("--environment", default="production")
    o.set_defaults(fn=cmd_breakglass)
    r2 = bs.add_parser("review", help="the post-incident review (a different L4/L5)")
    common(r2)
    r2.add_argument("decision_id")
    r2.add_argument("--findings", required=True)
    r2.set_defaults(fn=cmd_breakglass)
    p2 = bs.add_parser("pending", help="break-glass still owed a review")
    common(p2)
    p2.add_argument("--json", action="store_true")
    p2.set_defaults(fn=cmd_breakglass)

    sp = sub.add_parser("restriction", help="restriction mode after a failed ledger check")
    rs = sp.add_subparsers(dest="restriction_cmd", required=True, metavar="SUBCOMMAND")
    show = rs.add_parser("show", help="is the engine in restriction mode, and why")
    common(show)
    show.set_defaults(fn=cmd_restriction)
    clr = rs.add_parser("clear", help="leave restriction mode (L4+, recorded)")
    common(clr)
    clr.add_argument("--reason", required=True, help="what was checked and found")
    clr.set_defaults(fn=cmd_restriction)

    sp = sub.add_parser("delegate", help="delegate your level for a bounded window and scope")
    common(sp)
    sp.add_argument("--to", required=True, help="the delegate's subject")
    sp.add_argument("--level", type=int, required=True)
    sp.add_argument("--scope", action="append", required=True, help="domain/team/target type")
    sp.add_argument("--hours", type=int, default=8)
    sp.add_argument("--reason", required=True)
    sp.set_defaults(fn=cmd_delegate)
