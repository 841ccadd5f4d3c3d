"""Secrets never enter the ledger (DESIGN §5): scanner, references, envelopes, allowlist.

See ``l7.secrets.interface`` for the value types and errors.
"""

from __future__ import annotations

from l7.secrets.allowlist import AllowlistMode, FieldAllowlist
from l7.secrets.envelope import Envelope, ensure_key
from l7.secrets.interface import (
    Finding,
    SecretInPayload,
    SecretKind,
    SecretMeta,
    SecretRef,
    SecretsDegraded,
    SecretStore,
)
from l7.secrets.logfilter import SecretRedactingFilter
from l7.secrets.refs import BaoSecretStore, hash_value, normalize_value
from l7.secrets.scanner import check_payload, redact, redact_text, scan

__all__ = [
    "AllowlistMode",
    "BaoSecretStore",
    "Envelope",
    "FieldAllowlist",
    "Finding",
    "SecretInPayload",
    "SecretKind",
    "SecretMeta",
    "SecretRedactingFilter",
    "SecretRef",
    "SecretStore",
    "SecretsDegraded",
    "check_payload",
    "ensure_key",
    "hash_value",
    "normalize_value",
    "redact",
    "redact_text",
    "scan",
]
