"""``l7 certs init``: a local CA and one mTLS certificate per tier and client.

    l7 certs init [--dir .build/certs] [--ca-dir .build/ca]
                  [--services engine,gateway,ledger,cli,auditor,tool] [--days 30] [--rotate]

The CA (``ca.pem``/``ca.key``) lives in ``--ca-dir`` (0700), created unless a CA is
already there; the tiers' directory ``--dir`` (0700) receives only ``ca.pem`` and
``<service>.pem``/``<service>.key`` for each service (keys 0600), never the CA key.
Server tiers (engine, gateway, ledger) get the server name their clients verify
(``<service>.layer7.local``); cli, auditor and tool get client certificates only.
Without ``--rotate`` an existing certificate is kept; with it, every named certificate
is re-issued from the existing CA (running servers pick the new files up on their next
connection). A new CA needs a restart of every server (the CA is pinned at start). Both
directories are git-ignored; nothing here is ever committed. Give each host only
``ca.pem`` and its own pair.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from l7.errors import ConfigError

__all__ = ["add_certs_commands", "add_tls_flag", "cmd_certs_init", "tls_credentials", "tls_dir"]


def add_tls_flag(sp: argparse.ArgumentParser, who: str) -> None:
    """``--tls-dir DIR``: speak mTLS with the certificates ``l7 certs init`` wrote there
    (default $L7_TLS_DIR); ``who`` says which certificate this command presents."""
    sp.add_argument(
        "--tls-dir",
        default=os.environ.get("L7_TLS_DIR") or None,
        help=f"mTLS certificate directory from `l7 certs init` (presents {who}.pem; "
        "default $L7_TLS_DIR; unset: plaintext loopback)",
    )


def tls_dir(a: argparse.Namespace) -> Path | None:
    """The ``--tls-dir`` directory, checked to hold a CA (None: no mTLS)."""
    raw = getattr(a, "tls_dir", None)
    if not raw:
        return None
    from l7.tls import tls_dir_problem

    d = Path(raw)
    problem = tls_dir_problem(d)
    if problem is not None:
        raise ConfigError(f"--tls-dir {d}: {problem}")
    return d


def tls_credentials(a: argparse.Namespace, service: str) -> Any:
    """Client credentials presenting ``<tls-dir>/<service>.pem``, or None without --tls-dir."""
    from l7.tls import client_credentials

    d = tls_dir(a)
    return client_credentials(d, service) if d else None


def _services(raw: str) -> list[str]:
    from l7.tls import spiffe_id

    names = [s.strip() for s in raw.split(",") if s.strip()]
    if not names:
        raise ConfigError("--services: name at least one service (e.g. engine,ledger)")
    for n in names:
        if n.startswith("spiffe://"):
            raise ConfigError(f"--services {n}: give the service name, not the SPIFFE id")
        spiffe_id(n)  # validates
    return list(dict.fromkeys(names))


def cmd_certs_init(a: argparse.Namespace) -> int:
    from l7 import tls

    d, ca_dir = Path(a.dir), Path(a.ca_dir)
    names = _services(a.services)
    if a.days <= 0:
        raise ConfigError(f"--days {a.days}: must be positive")
    if d.resolve() == ca_dir.resolve():
        raise ConfigError(
            f"--ca-dir {ca_dir} is --dir: the CA key must not sit beside the tiers' keys"
        )
    if (d / "ca.key").exists():
        raise ConfigError(
            f"{d / 'ca.key'}: a CA key in the tiers' directory (an older layout) lets any "
            f"tier mint any identity; move it out (mv {d / 'ca.key'} {d / 'ca.pem'} "
            f"{ca_dir}/) and run this again, or delete both and re-issue everything"
        )
    if (ca_dir / "ca.pem").exists() and (ca_dir / "ca.key").exists():
        ca = tls.load_ca(ca_dir)
        print(f"CA        {ca.cert_path} (existing)")
    else:
        ca = tls.init_ca(ca_dir)
        print(f"CA        {ca.cert_path} (new; its key stays in {ca_dir})")
    tls.publish_ca(ca, d)
    for n in names:
        cert = d / f"{n}.pem"
        if cert.exists() and (d / f"{n}.key").exists() and not a.rotate:
            print(f"{n:<9} {cert} (existing; --rotate to re-issue)")
            continue
        cert, _ = tls.issue(ca, n, d, validity=dt.timedelta(days=a.days))
        served = f"  server name {tls.server_name(n)}" if n in tls.SERVER_TIERS else ""
        print(f"{n:<9} {cert}  {tls.spiffe_id(n)}{served}")
    return 0


def add_certs_commands(sub: Any) -> None:
    """Register ``certs init`` on the top-level subparsers (``sub``); each leaf parser sets
    ``fn`` to a ``(argparse.Namespace) -> int`` handler."""
    from l7.tls import DEFAULT_CA_DIR, DEFAULT_CERT_DIR, SERVICES

    certs = sub.add_parser("certs", help="local CA and mTLS certificates for the tiers")
    csub = certs.add_subparsers(dest="certs_cmd", required=True)
    init = csub.add_parser(
        "init",
        help="create a local CA and one certificate per service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--dir", default=str(DEFAULT_CERT_DIR), help="the tiers' directory (%(default)s)"
    )
    init.add_argument(
        "--ca-dir",
        default=str(DEFAULT_CA_DIR),
        help="the CA's own directory, holding its key (%(default)s); never --dir",
    )
    init.add_argument(
        "--services", default=",".join(SERVICES), help="comma-separated (%(default)s)"
    )
    init.add_argument("--days", type=int, default=30, help="leaf validity in days (%(default)s)")
    init.add_argument("--rotate", action="store_true", help="re-issue existing certificates")
    init.set_defaults(fn=cmd_certs_init)
