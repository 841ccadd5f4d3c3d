"""Trust flags shared by every command that writes or judges the ledger, and
``l7 trust keygen`` (a tier key and the trust-file entry an operator pins)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from l7.crypto import Ed25519Signer, load_private_key
from l7.errors import ConfigError
from l7.signed_ledger import SignedLedger
from l7.trust import TrustFile, load_tier_signer, load_trust, public_entry
from ledger import LedgerClient
from ledger.attestation import Tier

__all__ = ["add_trust_commands", "add_trust_flags", "signed_ledger", "trust_from_args"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def add_trust_flags(sp: argparse.ArgumentParser, *, signer: bool) -> None:
    """``--env``-scoped trust: ``--trust-file``, ``--work-dir`` and (for writers) ``--tier-key``."""
    sp.add_argument(
        "--trust-file",
        help="pinned tier keys (default bundles/<env>.trust.json, plus <work-dir>/trust/"
        "<env>.json where the environment allows local keys)",
    )
    sp.add_argument(
        "--work-dir",
        default=str(REPO_ROOT / ".build"),
        help="where local tier keys and the local trust file live (default .build)",
    )
    if signer:
        sp.add_argument(
            "--tier-key",
            help="this tier's Ed25519 signing key (default <work-dir>/keys/tier-<tier>.pem, "
            "created only where the environment allows local keys)",
        )


def trust_from_args(a: argparse.Namespace) -> TrustFile:
    return load_trust(
        a.env,
        repo_root=REPO_ROOT,
        work_dir=Path(a.work_dir),
        override=Path(a.trust_file) if a.trust_file else None,
    )


def signed_ledger(a: argparse.Namespace, raw: LedgerClient, tier: Tier) -> SignedLedger:
    """``raw`` as ``tier`` sees it: appends signed with its pinned key, authority checked."""
    signer, trust = load_tier_signer(
        tier,
        trust_from_args(a),
        key_path=Path(a.tier_key) if getattr(a, "tier_key", None) else None,
        work_dir=Path(a.work_dir),
    )
    return SignedLedger(raw, tier=tier, signer=signer, keys=trust.keys)


def cmd_trust_keygen(a: argparse.Namespace) -> int:
    """Create a tier key (0600) and print the entry to pin in bundles/<env>.trust.json."""
    out = Path(a.out)
    if not out.exists():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from l7.crypto import save_private_key

        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_private_key(out, Ed25519PrivateKey.generate())
    elif not a.show:
        raise ConfigError(f"--out {out} exists; pass --show to print its entry")
    entry = public_entry(Ed25519Signer(load_private_key(out)))
    print(json.dumps({"tier": a.tier, **entry}, indent=2))
    print(
        f"pin it: add the kid/public_key object to tiers.{a.tier} in bundles/<env>.trust.json "
        "and have it reviewed; keep the private key out of the repository"
    )
    return 0


def add_trust_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("trust", help="tier keys pinned in bundles/<env>.trust.json")
    tsub = sp.add_subparsers(dest="trust_cmd", required=True, metavar="SUBCOMMAND")
    kg = tsub.add_parser("keygen", help="create a tier signing key and print its trust entry")
    kg.add_argument("--tier", required=True, choices=[t.value for t in Tier])
    kg.add_argument("--out", required=True, help="private key file to create (0600)")
    kg.add_argument("--show", action="store_true", help="print the entry of an existing key")
    kg.set_defaults(fn=cmd_trust_keygen)
