"""The envelope pattern (DESIGN §5): a sensitive blob sealed with OpenBao transit.

The ledger may carry ``vault:v<N>:<base64>``: ciphertext of an ``aes256-gcm96`` transit
key created *derived* (``ensure_key``), so every seal is bound to a ``context`` and opens
only under the same context. The engine's context is ``field_context(decision_id, path)``
(``l7.envelope.v1/<decision id>/<field path>``): a ciphertext copied into another decision
or another field does not open there (``EnvelopeContextMismatch``, reason
``envelope_context_mismatch``), and the engine refuses a request whose envelope field
already looks sealed (``EnvelopeForged``): only ciphertext it sealed itself, for that
decision and field, is ever recorded. Key access is restricted twice: ``open`` refuses a
role not in ``allowed_roles`` before asking OpenBao (``Forbidden(reason=
"decrypt_forbidden")``), and OpenBao's own policy on ``transit/decrypt/<key>`` applies to
the client's token. The caller records each open (``ledger.accessed``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection
from typing import Any

import hvac

from l7.errors import ConfigError, Forbidden, RequestInvalid
from l7.secrets import _bao

__all__ = [
    "CONTEXT_PREFIX",
    "KEY_TYPE",
    "Envelope",
    "EnvelopeContextMismatch",
    "EnvelopeForged",
    "ensure_key",
    "field_context",
    "looks_sealed",
]

KEY_TYPE = "aes256-gcm96"
CONTEXT_PREFIX = "l7.envelope.v1"
_CIPHERTEXT = re.compile(r"vault:v[1-9][0-9]{0,8}:[A-Za-z0-9+/]+={0,2}")
_LOOKS_SEALED = re.compile(r"\s*vault:v[0-9]")
MAX_CIPHERTEXT_CHARS = 1 << 20


class EnvelopeContextMismatch(RequestInvalid):
    """The ciphertext does not open under this decision and field: it was sealed for
    another (copied), with another key, or altered."""

    reason = "envelope_context_mismatch"


class EnvelopeForged(RequestInvalid):
    """A request carries a value that looks sealed in an envelope field: the engine seals
    those fields itself and never records ciphertext it did not make."""

    reason = "envelope_forged"


def field_context(decision_id: str, path: str) -> str:
    """The seal context binding an envelope to one decision and one field path."""
    if not decision_id or not path or "/" in decision_id:
        raise RequestInvalid("context", "an envelope needs a decision id (no '/') and a path")
    return f"{CONTEXT_PREFIX}/{decision_id}/{path}"


def looks_sealed(value: object) -> bool:
    """True for a string that starts like transit ciphertext (``vault:v<digit>``)."""
    return isinstance(value, str) and _LOOKS_SEALED.match(value) is not None


def _key_config(where: str) -> ConfigError:
    return ConfigError(
        f"OpenBao refused {where}; check that the transit mount and key exist and that "
        "the client's token may use them"
    )


def _check_key(data: Any, name: str) -> None:
    try:
        key_type, derived = data["data"]["type"], data["data"]["derived"]
    except (KeyError, TypeError) as e:
        raise _bao.shape_error(f"transit key {name}", e) from e
    if key_type != KEY_TYPE or derived is not True:
        raise ConfigError(
            f"transit key {name} is {key_type} (derived={derived}); envelopes need a derived "
            f"{KEY_TYPE} key: use another name, or create it with ensure_key"
        )


class _Missing(ConfigError):
    """Internal: the key does not exist yet."""


def ensure_key(client: hvac.Client, key_name: str, *, mount_point: str = "transit") -> None:
    """Create the derived ``aes256-gcm96`` key ``key_name`` unless it exists; raise
    ``ConfigError`` if a key of that name exists with another type."""
    transit = client.secrets.transit
    where = f"{mount_point}/keys/{key_name}"

    def read() -> Any:
        return _bao.call(
            lambda: transit.read_key(name=key_name, mount_point=mount_point),
            where=where,
            not_found=_Missing,
            forbidden=lambda: _key_config(where),
            invalid=lambda: _key_config(where),
        )

    try:
        data = read()
    except _Missing:
        _bao.call(
            lambda: transit.create_key(
                name=key_name,
                key_type=KEY_TYPE,
                derived=True,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=mount_point,
            ),
            where=where,
            not_found=lambda: _key_config(where),
            forbidden=lambda: _key_config(where),
            invalid=lambda: _key_config(where),
        )
        data = read()
    _check_key(data, key_name)


class Envelope:
    """Seal and open blobs with one derived transit key (see module doc)."""

    def __init__(self, client: hvac.Client, key_name: str, *, mount_point: str = "transit"):
        if not key_name:
            raise ConfigError("transit key name is empty")
        self._client = client
        self.key_name = key_name
        self.mount_point = mount_point
        self._key_checked = False

    def _verify_key(self) -> None:
        """Once per instance: transit encrypt would silently create a missing key."""
        if self._key_checked:
            return
        where = f"{self.mount_point}/keys/{self.key_name}"
        data = _bao.call(
            lambda: self._client.secrets.transit.read_key(
                name=self.key_name, mount_point=self.mount_point
            ),
            where=where,
            not_found=lambda: ConfigError(
                f"transit key {where} does not exist; create it with ensure_key"
            ),
            forbidden=lambda: _key_config(where),
            invalid=lambda: _key_config(where),
        )
        _check_key(data, self.key_name)
        self._key_checked = True

    def seal(self, plaintext: bytes, *, context: str) -> str:
        """``vault:v<N>:...`` ciphertext of ``plaintext``, bound to ``context``."""
        ctx = _context_b64(context)
        self._verify_key()
        where = f"{self.mount_point}/encrypt/{self.key_name}"
        resp = _bao.call(
            lambda: self._client.secrets.transit.encrypt_data(
                name=self.key_name,
                plaintext=base64.b64encode(bytes(plaintext)).decode("ascii"),
                context=ctx,
                mount_point=self.mount_point,
            ),
            where=where,
            not_found=lambda: _key_config(where),
            forbidden=lambda: _key_config(where),
            invalid=lambda: _key_config(where),
        )
        try:
            ciphertext = resp["data"]["ciphertext"]
        except (KeyError, TypeError) as e:
            raise _bao.shape_error(where, e) from e
        if not isinstance(ciphertext, str) or not _CIPHERTEXT.fullmatch(ciphertext):
            raise _bao.shape_error(where, ValueError("ciphertext"))
        return ciphertext

    def open(
        self, ciphertext: str, *, context: str, role: str, allowed_roles: Collection[str]
    ) -> bytes:
        """The plaintext sealed under ``context``, for a ``role`` in ``allowed_roles``
        (checked before OpenBao is asked)."""
        if isinstance(allowed_roles, str):
            raise ConfigError("allowed_roles must be a collection of role names, not a string")
        if not role or role not in allowed_roles:
            raise Forbidden(
                f"role {role!r} may not open envelopes sealed with transit key "
                f"{self.key_name}; allowed roles: {sorted(allowed_roles)}",
                reason="decrypt_forbidden",
            )
        if (
            not isinstance(ciphertext, str)
            or len(ciphertext) > MAX_CIPHERTEXT_CHARS
            or not _CIPHERTEXT.fullmatch(ciphertext)
        ):
            raise RequestInvalid("ciphertext", "must be transit ciphertext 'vault:v<N>:<base64>'")
        ctx = _context_b64(context)
        where = f"{self.mount_point}/decrypt/{self.key_name}"
        resp = _bao.call(
            lambda: self._client.secrets.transit.decrypt_data(
                name=self.key_name,
                ciphertext=ciphertext,
                context=ctx,
                mount_point=self.mount_point,
            ),
            where=where,
            not_found=lambda: ConfigError(
                f"transit key {self.mount_point}/keys/{self.key_name} does not exist"
            ),
            forbidden=lambda: Forbidden(
                f"OpenBao refused {where} for the client's token", reason="decrypt_forbidden"
            ),
            invalid=lambda: EnvelopeContextMismatch(
                "ciphertext",
                f"does not open with transit key {self.key_name} under this context: it was "
                "sealed for another decision or field, with another key, or it was altered",
            ),
        )
        try:
            return base64.b64decode(resp["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error) as e:
            raise _bao.shape_error(where, e) from e


def _context_b64(context: str) -> str:
    if not isinstance(context, str) or not context:
        raise RequestInvalid("context", "must be a non-empty string (e.g. '<decision_id>/<field>')")
    return base64.b64encode(context.encode("utf-8")).decode("ascii")
