"""All of Layer-7's signing, signature verification and canonical hashing.

Canonical bytes are RFC 8785 (JCS) of an explicit dict; every signed record carries a
``type`` tag and a ``version`` (see ``l7.authority.approval``). Signing goes through one
``Signer`` protocol with two implementations:

    method          signer              signature string (as stored in the ledger)
    ed25519         Ed25519Signer       ``ed25519:<base64url, unpadded, of the 64-byte sig>``
    vault-transit   TransitSigner       ``vault:v<N>:<base64 std, padded, of the 64-byte sig>``
                                        (OpenBao transit, ed25519 key, key version N)

Verification is offline for both: a transit signature is checked against the Ed25519
public key OpenBao exports for version N (``transit/keys/<name>`` -> ``keys[N]``), which
the caller has registered. ``verify_signature`` raises ``ApprovalInvalid``; it never
returns False. Signature strings are parsed strictly (one canonical encoding each), so a
stored ``signature_ref`` has exactly one spelling.

hvac and requests exceptions are translated here, and only here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from l7.domain import effective_environment
from l7.errors import ApprovalInvalid, ConfigError, RequestInvalid
from ledger.canonical import canonical_json

__all__ = [
    "Ed25519Signer",
    "SignatureMethod",
    "Signer",
    "TransitSigner",
    "canonical",
    "intent_hash",
    "key_fingerprint",
    "load_private_key",
    "public_key_b64",
    "public_key_raw",
    "save_private_key",
    "sha256_hex",
    "transit_key_version",
    "verify_signature",
]

ED25519_SIG_BYTES = 64
ED25519_PUBLIC_KEY_BYTES = 32
_MAX_SIGNATURE_CHARS = 256
_ED25519_PREFIX = "ed25519:"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_TRANSIT = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]+={0,2})")
_ACTION_KEYS = frozenset({"class", "intent", "target", "payload"})
_OPTIONAL_ACTION_KEYS = frozenset({"tool"})
_TARGET_KEYS = frozenset({"type", "id"})

_T = TypeVar("_T")


class SignatureMethod(str, Enum):
    ED25519 = "ed25519"
    VAULT_TRANSIT = "vault-transit"


# -- canonical bytes and hashes -----------------------------------------------------------


def canonical(obj: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of an explicit dict (``ledger.canonical.canonical_json``, the one JCS
    implementation). Values JCS cannot represent (NaN, integers beyond 2**53) raise
    ``rfc8785.CanonicalizationError`` (a ValueError): callers validate their fields first."""
    return canonical_json(dict(obj))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def intent_hash(action: Mapping[str, Any], environment: str) -> str:
    """What approvals and grants bind to: ``sha256:`` + hex sha256 of JCS(action), where
    action is exactly ``{"class", "intent", "target": {"type", "id"}, "payload"}`` plus,
    when the request names the tool performing it, ``"tool"`` (so a grant for one tool
    cannot run another), plus ``"environment"``: the *effective* environment (missing or
    unknown is production, as policy judges it), so a grant or approval for ``dev`` never
    covers the byte-identical action in production (docs/0013)."""
    keys = set(action) - _OPTIONAL_ACTION_KEYS
    if keys != _ACTION_KEYS:
        extra, missing = sorted(keys - _ACTION_KEYS), sorted(_ACTION_KEYS - keys)
        raise RequestInvalid(
            "action", f"must have exactly {sorted(_ACTION_KEYS)}; missing {missing}, extra {extra}"
        )
    target = action["target"]
    if not isinstance(target, Mapping) or set(target) != _TARGET_KEYS:
        raise RequestInvalid(
            "action.target", f"must be an object with exactly {sorted(_TARGET_KEYS)}"
        )
    explicit = {
        "class": action["class"],
        "intent": action["intent"],
        "target": {"type": target["type"], "id": target["id"]},
        "payload": action["payload"],
    }
    if action.get("tool"):  # absent and "" hash alike: requests from before tools existed
        explicit["tool"] = action["tool"]
    explicit["environment"] = effective_environment(environment)
    return "sha256:" + sha256_hex(canonical(explicit))


# -- keys ---------------------------------------------------------------------------------


def scope_hash(action_class: str, target_type: str, target_id: str, environment: str) -> str:
    """What a break-glass grant binds to: the class, target and effective environment, not
    one exact payload."""
    scope = {
        "class": action_class,
        "target": {"type": target_type, "id": target_id},
        "environment": effective_environment(environment),
    }
    return "scope:" + sha256_hex(canonical(scope))


def public_key_raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(pub: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (standard, padded): the form keys are registered in."""
    return base64.b64encode(public_key_raw(pub)).decode("ascii")


def key_fingerprint(public_key: bytes) -> str:
    """A short stable id for a raw public key (the default ``key_id`` of a local key)."""
    return "ed25519-" + sha256_hex(public_key)[:16]


def save_private_key(
    path: Path | str, key: Ed25519PrivateKey, *, password: bytes | None = None
) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600. Refuses to overwrite an existing file."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key file") from e
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask said
        f.write(pem)


def load_private_key(path: Path | str, *, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; refuses files readable by group or others."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{p} is mode {stat.S_IMODE(mode):04o}; a private key must be 0600 "
                f"(run: chmod 600 {p})"
            )
        key = serialization.load_pem_private_key(p.read_bytes(), password=password)
    except OSError as e:
        raise ConfigError(f"cannot read private key {p}: {e.strerror or e}") from e
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{p} is not a readable PEM private key (wrong password?): {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{p} holds a {type(key).__name__}; Layer-7 approvals need Ed25519")
    return key


# -- signers ------------------------------------------------------------------------------


class Signer(Protocol):
    @property
    def method(self) -> SignatureMethod: ...

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> str:
        """The signature over ``data`` as it is stored (see the module docstring)."""
        ...


class Ed25519Signer:
    """A local Ed25519 key (the approver's own, registered by its public key)."""

    method = SignatureMethod.ED25519

    def __init__(self, private_key: Ed25519PrivateKey, *, key_id: str | None = None) -> None:
        self._key = private_key
        self.public_key_raw = public_key_raw(private_key.public_key())
        self.key_id = key_id or key_fingerprint(self.public_key_raw)

    @classmethod
    def generate(cls, *, key_id: str | None = None) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate(), key_id=key_id)

    def sign(self, data: bytes) -> str:
        sig = self._key.sign(data)
        return _ED25519_PREFIX + base64.urlsafe_b64encode(sig).decode("ascii").rstrip("=")


class TransitSigner:
    """Signs with an OpenBao/Vault transit key of type ed25519 (``transit/sign/<key>``).

    ``key_version`` pins the version signed with (recommended: the registered public key
    is per version); a response signed with another version is refused. ``key_id``
    defaults to ``<key_name>@v<version>`` (or ``<key_name>`` when unpinned).
    """

    method = SignatureMethod.VAULT_TRANSIT

    def __init__(
        self,
        client: hvac.Client,
        key_name: str,
        *,
        key_version: int | None = None,
        key_id: str | None = None,
        mount_point: str = "transit",
    ) -> None:
        if not key_name:
            raise ConfigError("transit key name is empty")
        if key_version is not None and key_version < 1:
            raise ConfigError(f"transit key version must be >= 1, got {key_version}")
        self._client = client
        self.key_name = key_name
        self.key_version = key_version
        self.mount_point = mount_point
        self.key_id = key_id or (key_name if key_version is None else f"{key_name}@v{key_version}")

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """The one place hvac/requests errors become Layer-7 errors."""
        where = f"{self.mount_point}/{what}/{self.key_name}"
        try:
            return fn()
        except (
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
            hvac.exceptions.InvalidPath,
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.ParamValidationError,
        ) as e:
            raise ConfigError(
                f"OpenBao refused {where}: {e}; check that the transit key exists, is of "
                "type ed25519, and that the token's policy allows this path"
            ) from e
        except (hvac.exceptions.VaultError, requests.RequestException) as e:
            raise ApprovalInvalid(
                f"OpenBao could not sign at {where}: {e}; retry when it is reachable",
                reason="signer_unavailable",
            ) from e

    def sign(self, data: bytes) -> str:
        resp = self._call(
            "sign",
            lambda: self._client.secrets.transit.sign_data(
                name=self.key_name,
                hash_input=base64.b64encode(data).decode("ascii"),
                key_version=self.key_version,
                mount_point=self.mount_point,
            ),
        )
        try:
            signature = resp["data"]["signature"]
            version = transit_key_version(signature)
        except (KeyError, TypeError, ApprovalInvalid) as e:
            raise ApprovalInvalid(
                f"OpenBao answered transit/sign/{self.key_name} without a vault:vN: signature",
                reason="signer_unavailable",
            ) from e
        if self.key_version is not None and version != self.key_version:
            raise ApprovalInvalid(
                f"asked OpenBao to sign with v{self.key_version} of {self.key_name}, got "
                f"v{version}",
                reason="signer_unavailable",
            )
        return str(signature)

    def public_key(self, version: int | None = None) -> bytes:
        """The raw Ed25519 public key OpenBao exports for ``version`` (default: pinned or
        latest), for registration with ``l7 keys register``."""
        resp = self._call(
            "keys",
            lambda: self._client.secrets.transit.read_key(
                name=self.key_name, mount_point=self.mount_point
            ),
        )
        try:
            data = resp["data"]
            if data["type"] != "ed25519":
                raise ConfigError(
                    f"transit key {self.key_name} is {data['type']}; approvals need ed25519"
                )
            v = version or self.key_version or int(data["latest_version"])
            raw = base64.b64decode(data["keys"][str(v)]["public_key"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise ConfigError(
                f"OpenBao's transit/keys/{self.key_name} has no public key for that version"
            ) from e
        if len(raw) != ED25519_PUBLIC_KEY_BYTES:
            raise ConfigError(f"transit key {self.key_name} exported {len(raw)} bytes, want 32")
        return raw


# -- verification -------------------------------------------------------------------------


def _invalid(message: str) -> ApprovalInvalid:
    return ApprovalInvalid(message, reason="signature_invalid")


def _decode_ed25519(signature: str) -> bytes:
    body = signature.removeprefix(_ED25519_PREFIX)
    if body == signature or not _B64URL.fullmatch(body):
        raise _invalid("an ed25519 signature must be 'ed25519:<base64url, unpadded>'")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != body:
        raise _invalid("the ed25519 signature is not canonically encoded")
    return raw


def _parse_transit(signature: str) -> tuple[int, bytes]:
    m = _TRANSIT.fullmatch(signature)
    if m is None:
        raise _invalid("a transit signature must be 'vault:v<N>:<base64>'")
    try:
        raw = base64.b64decode(m.group(2), validate=True)
    except binascii.Error as e:
        raise _invalid("the transit signature is not valid base64") from e
    if base64.b64encode(raw).decode("ascii") != m.group(2):
        raise _invalid("the transit signature is not canonically encoded")
    return int(m.group(1)), raw


def transit_key_version(signature: str) -> int:
    """The key version N of a ``vault:vN:...`` signature (to look up its public key)."""
    if len(signature) > _MAX_SIGNATURE_CHARS:
        raise _invalid(f"the signature is longer than {_MAX_SIGNATURE_CHARS} characters")
    return _parse_transit(signature)[0]


def verify_signature(
    method: SignatureMethod | str, public_key_raw: bytes, data: bytes, signature: str
) -> None:
    """Check ``signature`` over ``data`` with the raw Ed25519 ``public_key_raw``.

    For ``vault-transit`` the key must be the one exported for the version the signature
    names. Raises ``ApprovalInvalid(reason="signature_invalid")``; returns None on success.
    """
    # 1. The method is one we know; anything else is refused, never skipped.
    try:
        m = SignatureMethod(method)
    except ValueError as e:
        raise _invalid(
            f"unknown signature method {method!r}; expected one of "
            f"{[x.value for x in SignatureMethod]}"
        ) from e
    # 2. The signature string is bounded and parses strictly into 64 raw bytes.
    if not isinstance(signature, str) or len(signature) > _MAX_SIGNATURE_CHARS:
        raise _invalid(f"the signature must be a string of at most {_MAX_SIGNATURE_CHARS} chars")
    raw = (
        _decode_ed25519(signature) if m is SignatureMethod.ED25519 else _parse_transit(signature)[1]
    )
    if len(raw) != ED25519_SIG_BYTES:
        raise _invalid(f"an Ed25519 signature is {ED25519_SIG_BYTES} bytes, got {len(raw)}")
    # 3. The public key is a raw 32-byte Ed25519 key.
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as e:
        raise _invalid(
            f"the registered public key is {len(public_key_raw)} bytes, not a raw Ed25519 key"
        ) from e
    # 4. The signature verifies over exactly these bytes.
    try:
        pub.verify(raw, data)
    except InvalidSignature as e:
        raise _invalid(
            f"the {m.value} signature does not verify with the registered key; the payload "
            "was changed or signed with another key"
        ) from e
