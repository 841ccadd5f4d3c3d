"""Secrets never enter the ledger (DESIGN §5): the value types, the store protocol, errors.

A payload may carry a *pointer* (``secret_ref`` = ``vault:<mount>/<path>#<field>[@<n>]``),
a *hash* (``sha256:<hex>`` of the normalized value), or an *envelope* (OpenBao transit
ciphertext ``vault:v<N>:...``), never the value. ``l7.secrets.scanner`` refuses payloads
that look like they carry one; ``SecretStore`` checks and resolves pointers.

Errors added by this package (to move into ``l7/errors.py``)::

    L7Error
    ├── RequestInvalid
    │   └── SecretInPayload     a payload field looks like a credential (secret_in_payload)
    └── SecretsDegraded         OpenBao is unreachable, sealed or failing (secrets_degraded)

Other refusals reuse the tree: a bad or missing reference is ``RequestInvalid("secret_ref",
...)``; an actor without read access is ``Forbidden(reason="secret_forbidden")``; a role
that may not open an envelope is ``Forbidden(reason="decrypt_forbidden")``. No message,
``repr`` or exception in this package ever carries a secret value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from l7.errors import L7Error, RequestInvalid

__all__ = [
    "Finding",
    "SecretInPayload",
    "SecretKind",
    "SecretMeta",
    "SecretRef",
    "SecretStore",
    "SecretsDegraded",
]


class SecretKind(str, Enum):
    """What a scanner finding looks like. The value names the kind in errors and in
    redaction placeholders (``[redacted:<value>]``)."""

    PRIVATE_KEY = "private_key"
    JWT = "jwt"
    AWS_ACCESS_KEY = "aws_access_key"
    AWS_SECRET_KEY = "aws_secret_key"  # noqa: S105 (a kind name)
    GCP_SERVICE_ACCOUNT = "gcp_service_account"
    AZURE_STORAGE_KEY = "azure_storage_key"
    GITHUB_TOKEN = "github_token"  # noqa: S105 (a kind name)
    SLACK_TOKEN = "slack_token"  # noqa: S105 (a kind name)
    STRIPE_KEY = "stripe_key"
    BEARER_TOKEN = "bearer_token"  # noqa: S105 (a kind name)
    CONNECTION_STRING = "connection_string"
    HIGH_ENTROPY = "high_entropy"
    SECRET_FIELD = "secret_field"  # noqa: S105 (a kind name)


@dataclass(frozen=True)
class Finding:
    """A credential-shaped value at ``path`` (``action.payload.db.conn[2]``). It never
    holds the value, nor its length or position."""

    path: str
    kind: SecretKind


class SecretInPayload(RequestInvalid):
    """A payload field looks like a credential; the message names the field and the
    kind of credential, never the value."""

    reason = "secret_in_payload"

    def __init__(self, field: str, kind: SecretKind) -> None:
        super().__init__(
            field,
            f"looks like a {kind.value.replace('_', ' ')} ({kind.value}); secrets never enter "
            "the ledger: store it in OpenBao and send a secret_ref "
            "(vault:<mount>/<path>#<field>[@<version>]) or its sha256: hash instead",
        )
        self.kind = kind


class SecretsDegraded(L7Error):
    """OpenBao cannot answer (connection refused, sealed, 5xx): nothing that needs a
    secret may proceed."""

    reason = "secrets_degraded"


# -- secret references ------------------------------------------------------------------

MAX_REF_CHARS = 512
_SEG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # no leading '.': '.' and '..' cannot occur
_SEG_RE = re.compile(_SEG)
_VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")
_REF_RE = re.compile(
    rf"vault:(?P<mount>{_SEG})/(?P<path>{_SEG}(?:/{_SEG})*)"
    rf"#(?P<field>{_SEG})(?:@(?P<version>[1-9][0-9]{{0,8}}))?"
)
_REF_FORM = "vault:<mount>/<path>#<field>[@<version>]"


@dataclass(frozen=True)
class SecretRef:
    """A pointer to one field of one secret in a KV mount: ``vault:kv/app/db#password@3``.

    ``mount`` is one path segment; ``path`` is one or more; segments and ``field`` are
    ``[A-Za-z0-9_][A-Za-z0-9_.-]*`` (at most 128 characters each); ``version`` is a
    positive integer, or ``None`` for the latest version. ``str(ref)`` is the one canonical
    spelling, and ``SecretRef.parse(str(ref)) == ref``.
    """

    mount: str
    path: str
    field: str
    version: int | None = None

    def __post_init__(self) -> None:
        segments = [self.mount, *self.path.split("/"), self.field]
        if not all(_SEG_RE.fullmatch(s) for s in segments):
            raise RequestInvalid(
                "secret_ref", f"mount, path segments and field must match {_SEG!r}"
            )
        v = self.version
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 999_999_999
        ):
            raise RequestInvalid("secret_ref", "version must be an integer from 1 to 999999999")

    @classmethod
    def parse(cls, text: object, *, field: str = "secret_ref") -> SecretRef:
        """Parse ``vault:<mount>/<path>#<field>[@<version>]`` strictly; ``field`` names the
        request field in the ``RequestInvalid`` raised for anything else."""
        if not isinstance(text, str):
            raise RequestInvalid(field, f"must be a string {_REF_FORM}, got {type(text).__name__}")
        if len(text) > MAX_REF_CHARS:
            raise RequestInvalid(field, f"is longer than {MAX_REF_CHARS} characters")
        m = _REF_RE.fullmatch(text)
        if m is None:
            raise RequestInvalid(field, f"must be {_REF_FORM}; {_diagnose(text)}")
        version = m.group("version")
        return cls(
            mount=m.group("mount"),
            path=m.group("path"),
            field=m.group("field"),
            version=int(version) if version is not None else None,
        )

    def with_version(self, version: int) -> SecretRef:
        return SecretRef(self.mount, self.path, self.field, version)

    def __str__(self) -> str:
        at = "" if self.version is None else f"@{self.version}"
        return f"vault:{self.mount}/{self.path}#{self.field}{at}"


def _diagnose(text: str) -> str:
    """Say which part of a reference is wrong (the text is a pointer, never a value, but
    it is not echoed anyway: it failed the grammar, so it may be anything)."""
    if not text.startswith("vault:"):
        return "it does not start with 'vault:'"
    rest = text[len("vault:") :]
    locator, hash_sign, field_part = rest.partition("#")
    if not hash_sign:
        return "the '#<field>' part is missing"
    field, at, version = field_part.partition("@")
    if not _SEG_RE.fullmatch(field):
        return f"the field is empty or not {_SEG!r}"
    if at and not _VERSION_RE.fullmatch(version):
        return "the version after '@' must be a positive integer without leading zeros"
    segments = locator.split("/")
    if len(segments) < 2:
        return "it needs a mount and a path ('vault:<mount>/<path>#...')"
    if not all(_SEG_RE.fullmatch(s) for s in segments):
        return f"every mount and path segment must be non-empty and match {_SEG!r}"
    return "it does not match the grammar"


@dataclass(frozen=True)
class SecretMeta:
    """What the store knows about a reference without reading the value: the version the
    reference resolves to (the latest one when ``ref.version`` is None), when it was
    written, and the secret's current version (``None`` on KV v1, which has none)."""

    ref: SecretRef
    version: int | None
    created_time: str
    current_version: int | None


class SecretStore(Protocol):
    """Where ``secret_ref`` pointers live. ``metadata``, ``check_access`` (may this token
    read it?) and ``token_subject`` (whose token is it: the identity name the OIDC tokens
    carry as subject) never read a value; ``resolve`` does, just in time, for the gateway
    only."""

    def metadata(self, ref: SecretRef) -> SecretMeta: ...

    def check_access(self, ref: SecretRef, token: str) -> None: ...

    def token_subject(self, token: str) -> str: ...

    def resolve(self, ref: SecretRef) -> str: ...
