"""The per-event-type field allowlist (DESIGN §5): only approved keys enter the ledger.

Built from policy data::

    {"mode": "refuse",                      # or "drop"; absent means "refuse"
     "event_types": {"decision.created": ["status", "request", ...], ...}}

``apply(event_type, payload)`` checks the payload's top-level keys, then screens every
object below an allowed key, at every depth, with the request scanner
(``l7.secrets.scanner``: credential shapes, and secret-named keys holding anything but a
reference, digest or ciphertext). An event type with no list is refused in both modes
(fail closed: a new event type needs a policy change). In ``refuse`` mode a key not on the
list raises ``RequestInvalid("ledger.<type>.<key>", ...)`` and a finding below one raises
``SecretInPayload("ledger.<type>.<key>.<path>", kind)``; in ``drop`` mode the key is removed
and returned, and a finding is redacted (``[redacted:<kind>]``) and its path returned, so
the caller can record that it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from l7.errors import ConfigError, RequestInvalid
from l7.secrets.interface import SecretInPayload
from l7.secrets.scanner import redact, redact_text

__all__ = ["AllowlistMode", "FieldAllowlist"]

_POLICY_KEYS = frozenset({"mode", "event_types"})


class AllowlistMode(str, Enum):
    REFUSE = "refuse"
    DROP = "drop"


@dataclass(frozen=True)
class FieldAllowlist:
    """Allowed top-level payload keys per ledger event type."""

    rules: Mapping[str, frozenset[str]]
    mode: AllowlistMode = AllowlistMode.REFUSE

    def __post_init__(self) -> None:
        if not isinstance(self.mode, AllowlistMode):
            object.__setattr__(self, "mode", _mode(self.mode))
        rules: dict[str, frozenset[str]] = {}
        for event_type, keys in self.rules.items():
            if not isinstance(event_type, str) or not event_type:
                raise ConfigError("ledger allowlist: event types must be non-empty strings")
            if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys):
                raise ConfigError(f"ledger allowlist: {event_type} must list non-empty key names")
            rules[event_type] = frozenset(keys)
        object.__setattr__(self, "rules", MappingProxyType(rules))

    @classmethod
    def from_policy(cls, data: Mapping[str, Any]) -> FieldAllowlist:
        """Parse ``{"mode": ..., "event_types": {...}}``; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise ConfigError("ledger allowlist: policy data must be an object")
        extra = sorted(set(data) - _POLICY_KEYS)
        if extra:
            raise ConfigError(f"ledger allowlist: unknown keys {extra}; expected mode, event_types")
        event_types = data.get("event_types")
        if not isinstance(event_types, Mapping):
            raise ConfigError("ledger allowlist: 'event_types' must map event type -> [keys]")
        rules: dict[str, frozenset[str]] = {}
        for event_type, keys in event_types.items():
            if not isinstance(keys, list | tuple):
                raise ConfigError(f"ledger allowlist: {event_type} must be a list of key names")
            rules[event_type] = frozenset(keys)
        return cls(rules, _mode(data.get("mode", AllowlistMode.REFUSE.value)))

    def apply(
        self, event_type: str, payload: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The payload restricted to allowed keys (a new dict) and the dropped keys
        (sorted; always empty in refuse mode, which raises instead)."""
        allowed = self.rules.get(event_type)
        if allowed is None:
            raise RequestInvalid(
                f"ledger.{event_type}",
                "has no field allowlist; add the event type to the policy's ledger allowlist",
            )
        if not isinstance(payload, Mapping):
            raise RequestInvalid(f"ledger.{event_type}", "payload must be an object")
        extra = sorted((k for k in payload if k not in allowed), key=str)
        if extra and self.mode is AllowlistMode.REFUSE:
            key = _printable(extra[0])
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise RequestInvalid(
                f"ledger.{event_type}.{key}", f"is not on the ledger field allowlist{more}"
            )
        kept = {k: v for k, v in payload.items() if k in allowed}
        dropped = [_printable(k) for k in extra]
        for k, v in kept.items():
            if not isinstance(v, Mapping):
                continue  # scalars and lists (reasons, roles) are the writer's own fields
            clean, findings = redact(v, f"ledger.{event_type}.{_printable(k)}")
            if not findings:
                continue
            if self.mode is AllowlistMode.REFUSE:
                raise SecretInPayload(findings[0].path, findings[0].kind)
            kept[k] = clean
            dropped.extend(f.path for f in findings)
        return kept, tuple(dropped)


def _mode(value: object) -> AllowlistMode:
    try:
        return AllowlistMode(value)
    except ValueError:
        raise ConfigError(
            f"ledger allowlist: mode must be 'refuse' or 'drop', got {value!r}"
        ) from None


def _printable(key: object) -> str:
    """A key fit for an error message: a key that looks like a secret is redacted."""
    return redact_text(key if isinstance(key, str) else repr(key))
