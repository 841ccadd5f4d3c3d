"""Bench only: ``l7 serve`` with tier signing and continuous checkpoints switched off.

``make bench`` measures Decide with everything on beside this baseline, in the same run,
to show what the insider-proof ledger costs (issue #12: within 10% of Decide
throughput). It patches the stack from outside; the product has no flag that turns
either off, by design (docs/0012).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import l7.stack as stack
from l7.cli.main import main
from ledger import Confirmation, LedgerClient, NewEvent, StoredEvent


class _Unsigned:
    """A pass-through in SignedLedger's place: nothing signed, nothing checked."""

    def __init__(self, inner: LedgerClient, **_: Any) -> None:
        self.inner = inner

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        return self.inner.append(events)

    def get_stream(self, decision_id: str) -> list[StoredEvent]:
        return self.inner.get_stream(decision_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _patch(off: str) -> None:
    """``off``: "both" (the baseline), "signing" or "checkpoints" (which costs what)."""
    if off in ("both", "signing"):
        setattr(stack, "SignedLedger", _Unsigned)  # noqa: B010 (the stack's own name, replaced)
    if off in ("both", "checkpoints"):
        init = stack.Stack.__init__

        def unsigned_init(self: stack.Stack, config: stack.StackConfig) -> None:
            init(self, dataclasses.replace(config, checkpoints=False, local_witness=False))

        setattr(stack.Stack, "__init__", unsigned_init)  # noqa: B010


if __name__ == "__main__":
    _patch(os.environ.get("L7_BENCH_OFF", "both"))
    sys.exit(main(sys.argv[1:]))
