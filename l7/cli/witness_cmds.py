"""``l7 witness serve``: a C2SP tlog-witness as its own process (``ledger.witness``).

    l7 witness serve --state-dir DIR --log VKEY [--log VKEY]... [--addr 127.0.0.1:50081]
                     [--env local] [--tls-dir DIR]

It cosigns checkpoints of the logs whose verifier keys it is given (``l7 ledger serve``
and ``l7 serve`` print theirs), keeps its state in DIR (0700), and refuses, logs and
records as evidence a rewound, shrunk or forked log. Its own verifier key is printed
and written to DIR/witness.vkey: give it to the ledger (``--witness-key``) and to
auditors (``l7 ledger verify --witness``).

With ``--tls-dir`` (``l7 certs init``) it serves HTTPS, requires a client certificate from
that CA and answers only the ledger, engines and auditors (``ledger.mtls``). Like every
server it refuses ``--env production`` or a non-loopback ``--addr`` without it
(``l7.posture``).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["add_witness_commands"]


def cmd_witness_serve(a: argparse.Namespace) -> int:
    from l7.cli.certs import tls_dir
    from l7.errors import ConfigError
    from l7.posture import check_server_posture
    from ledger.mtls import witness_server_tls
    from ledger.witness import run

    check_server_posture(
        "the witness (l7 witness serve)", env=a.env, addr=a.addr, tls=bool(a.tls_dir)
    )
    certs = tls_dir(a)
    try:
        tls = witness_server_tls(certs) if certs else None
    except (ValueError, OSError) as e:
        raise ConfigError(f"--tls-dir {certs}: {e}") from e
    logging.getLogger("ledger.witness").setLevel(logging.INFO)  # cosignatures and refusals
    return run(a, tls=tls)


def add_witness_commands(sub: Any) -> None:
    from l7.cli.certs import add_tls_flag
    from ledger.witness import add_arguments

    sp = sub.add_parser("witness", help="a checkpoint witness (C2SP tlog-witness)")
    wsub = sp.add_subparsers(dest="witness_cmd", required=True, metavar="SUBCOMMAND")
    srv = wsub.add_parser("serve", help="cosign consistent checkpoints of trusted logs")
    add_arguments(srv)
    srv.add_argument(
        "--env", default="local", help="production requires --tls-dir (as every server does)"
    )
    add_tls_flag(srv, "witness")
    srv.set_defaults(fn=cmd_witness_serve)
