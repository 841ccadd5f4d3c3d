"""The field allowlist in force on every append the engine, gateway and authority make.

``FieldGuardedLedger`` wraps a ``LedgerClient``: before a batch reaches the ledger, each
event's payload is checked against ``secrets.ledger_fields`` from the signed policy bundle
(per event type, only approved top-level keys; in ``refuse`` mode anything else refuses
the whole batch naming the field, in ``drop`` mode it is dropped and the drop is logged).
Everything else is delegated unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from l7.secrets.allowlist import FieldAllowlist
from ledger import Confirmation, LedgerClient, NewEvent

__all__ = ["FieldGuardedLedger"]

log = logging.getLogger(__name__)


class FieldGuardedLedger:
    def __init__(
        self,
        inner: LedgerClient,
        *,
        rules: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self.inner = inner
        self.rules: Callable[[], Mapping[str, Any] | None] = rules or (lambda: None)
        self._parsed: tuple[int, FieldAllowlist] | None = None

    def _allowlist(self) -> FieldAllowlist | None:
        data = self.rules()
        if not data:
            return None
        if self._parsed is None or self._parsed[0] != id(data):
            self._parsed = (id(data), FieldAllowlist.from_policy(data))
        return self._parsed[1]

    def append(self, events: Sequence[NewEvent]) -> list[Confirmation]:
        allow = self._allowlist()
        if allow is not None:
            checked = []
            for e in events:
                payload, dropped = allow.apply(e.event_type.value, e.payload)
                if dropped:
                    log.warning("ledger allowlist dropped %s from %s", dropped, e.event_type.value)
                checked.append(
                    NewEvent(e.decision_id, e.event_type, e.actor, e.policy_version, payload,
                             e.unique_key)
                )  # fmt: skip
            events = checked
        return self.inner.append(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
