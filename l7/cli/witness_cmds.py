"""``l7 witness serve``: a C2SP tlog-witness as its own process (``ledger.witness``).

    l7 witness serve --state-dir DIR --log VKEY [--log VKEY]... [--addr 127.0.0.1:50081]

It cosigns checkpoints of the logs whose verifier keys it is given (``l7 ledger serve``
and ``l7 serve`` print theirs), keeps its state in DIR (0700), and refuses, logs and
records as evidence a rewound, shrunk or forked log. Its own verifier key is printed
and written to DIR/witness.vkey: give it to the ledger (``--witness-key``) and to
auditors (``l7 ledger verify --witness``).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["add_witness_commands"]


def cmd_witness_serve(a: argparse.Namespace) -> int:
    from ledger.witness import run

    logging.getLogger("ledger.witness").setLevel(logging.INFO)  # cosignatures and refusals
    return run(a)


def add_witness_commands(sub: Any) -> None:
    from ledger.witness import add_arguments

    sp = sub.add_parser("witness", help="a checkpoint witness (C2SP tlog-witness)")
    wsub = sp.add_subparsers(dest="witness_cmd", required=True, metavar="SUBCOMMAND")
    srv = wsub.add_parser("serve", help="cosign consistent checkpoints of trusted logs")
    add_arguments(srv)
    srv.set_defaults(fn=cmd_witness_serve)
