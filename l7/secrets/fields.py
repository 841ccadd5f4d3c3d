"""The one schema of how each RPC field is screened for secrets (issue #13, decision 0011).

Every string, bytes and ``Struct`` value of every request message is screened by
``l7.secrets.screen`` with the scanner's full rule set (shapes, encodings, long random
tokens, secret-named fields). This module lists the only departures, by message and
field path (proto field names, dotted; ``Struct`` keys continue the path):

``Exempt``    the field holds a known digest, id, signature or issued token: a value
              that matches the declared ``shape`` is not screened (its randomness is
              its job); any other value is screened like everything else.
``Json``      the field is JSON text: it is parsed and its members screened, with
              their own exemptions (a malformed document is screened as text).
``ENGINE``    screened later by ``Engine.screen`` with the same scanner, because signed
              policy (``secrets.on_secret``) may choose redaction there.
``REDACT``    a finding is redacted in place instead of refused: the fact being
              recorded (an execution that already happened) must still be recorded.

Anything not named here is screened and refused on a finding: a new field is covered
the day it is added, and exempting it is a change to this file, reviewed like code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

__all__ = [
    "ENGINE",
    "REDACT",
    "RULES",
    "Exempt",
    "Json",
    "Mode",
    "Rule",
    "is_digest_field",
]


class Mode(str, Enum):
    ENGINE = "engine"
    REDACT = "redact"


ENGINE = Mode.ENGINE
REDACT = Mode.REDACT


@dataclass(frozen=True)
class Exempt:
    """A value of this ``shape`` (a full match; for bytes, ``size`` bytes) is not a secret."""

    what: str
    shape: re.Pattern[str] | None = None
    size: int | None = None

    def matches(self, value: object) -> bool:
        if isinstance(value, bytes):
            return self.size is not None and len(value) == self.size
        return (
            isinstance(value, str) and self.shape is not None and bool(self.shape.fullmatch(value))
        )


@dataclass(frozen=True)
class Json:
    """JSON text whose members are screened; ``members`` maps member paths to rules."""

    what: str
    members: Mapping[str, Exempt] = field(default_factory=dict)


Rule = Exempt | Json | Mode

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DECISION_ID = Exempt("a decision id (UUID)", _UUID)
EXECUTION_ID = Exempt("an execution id: the grant's jti (UUID)", _UUID)
GRANT = Exempt(
    "the execution grant the engine issued (compact JWS): verified, never stored",
    re.compile(r"[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,16384}\.[A-Za-z0-9_-]{1,1024}"),
)
CONFIRMATION_TOKEN = Exempt(
    "the confirmation token the gateway issued at Authorize ('l7c_' + 32 random bytes, "
    "base64url): checked against its digest, never stored",
    re.compile(r"l7c_[A-Za-z0-9_-]{43}"),
)
SIGNATURE = Exempt(
    "an approval signature ('ed25519:<base64url>', or OpenBao transit 'vault:vN:<base64>')",
    re.compile(r"ed25519:[A-Za-z0-9_-]{86}|vault:v[1-9][0-9]{0,8}:[A-Za-z0-9+/]{1,512}={0,2}"),
)
APPROVAL_PAYLOAD = Json(
    "the signed approval payload",
    {
        "nonce": Exempt(
            "the approval nonce (base64url, random)", re.compile(r"[A-Za-z0-9_-]{16,128}")
        ),
        "decision_id": DECISION_ID,
        "intent_hash": Exempt("the intent hash", re.compile(r"sha256:[0-9a-f]{64}")),
    },
)
PUBLIC_KEY = Exempt("a raw Ed25519 public key (32 bytes)", size=32)

_DECISION_ONLY: Mapping[str, Rule] = {"decision_id": DECISION_ID}
_APPROVAL: Mapping[str, Rule] = {"signature": SIGNATURE, "payload_json": APPROVAL_PAYLOAD}

RULES: Mapping[str, Mapping[str, Rule]] = MappingProxyType(
    {
        "l7.v1.DecideRequest": {"action.payload": ENGINE},
        "l7.v1.GetDecisionRequest": _DECISION_ONLY,
        "l7.v1.GetGrantRequest": _DECISION_ONLY,
        "l7.v1.CancelRequest": _DECISION_ONLY,
        "l7.v1.ReviewBreakGlassRequest": _DECISION_ONLY,
        "l7.v1.OpenEnvelopeRequest": _DECISION_ONLY,
        "l7.v1.ApproveRequest": {
            "decision_id": DECISION_ID,
            **{f"approval.{k}": v for k, v in _APPROVAL.items()},
        },
        "l7.v1.RejectRequest": {
            "decision_id": DECISION_ID,
            **{f"rejection.{k}": v for k, v in _APPROVAL.items()},
        },
        "l7.v1.RegisterKeyRequest": {"public_key": PUBLIC_KEY},
        "l7.v1.AuthorizeRequest": {"grant": GRANT},
        "l7.v1.ToolCallRequest": {"grant": GRANT},
        "l7.v1.ConfirmExecutionRequest": {
            "decision_id": DECISION_ID,
            "execution_id": EXECUTION_ID,
            "confirmation_token": CONFIRMATION_TOKEN,
            "result": REDACT,
        },
    }
)

# Inside free-form objects (payloads, results) a digest is recognised by its key and its
# exact shape together: {"sha256": "<64 hex>"} (what result summaries carry for large
# values) or {"payload_sha256": ...}. Elsewhere a bare 64-hex value is key material.
_DIGEST_WORDS = frozenset({"sha256", "digest", "hash"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest_field(name: str, value: str) -> bool:
    """Whether ``value`` under key ``name`` is a sha256 digest by schema."""
    last = re.split(r"[^a-z0-9]+", name.lower())[-1]
    return last in _DIGEST_WORDS and bool(_HEX_DIGEST.fullmatch(value))
