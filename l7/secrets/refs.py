"""Secret references resolved against OpenBao KV, and the hash of a secret value.

``BaoSecretStore`` implements ``SecretStore`` over hvac:

* ``metadata(ref)`` checks that the secret, and the version the reference names (the
  current one when it names none), exist and are neither deleted nor destroyed. It reads
  KV v2 ``<mount>/metadata/<path>`` (KV v1: lists the parent folder) and never the value,
  so it cannot check that ``#<field>`` exists; ``resolve`` does.
* ``check_access(ref, token)`` asks ``sys/capabilities`` what the *actor's* token may do
  on the data path (``<mount>/data/<path>`` on KV v2) and refuses without ``read``.
* ``token_subject(token)`` says whose token it is: the name of the identity entity it
  belongs to (the OIDC subject when OpenBao is the issuer), via ``auth/token/lookup`` and
  ``identity/entity/id/<id>`` with the service's own token; a token of no entity is refused.
* ``resolve(ref)`` reads the value just in time (gateway only). It is returned, never
  logged and never put in an exception.

Refusals: missing path / version / field -> ``RequestInvalid("secret_ref", "secret not
found: ...")``; no permission -> ``Forbidden(reason="secret_forbidden")``; OpenBao down,
sealed or failing -> ``SecretsDegraded``. hvac errors are translated in ``_bao.call``.

``hash_value`` is what a payload carries instead of a value for integrity checks:
``sha256:`` + hex SHA-256 of the UTF-8 of the *normalized* value, where normalizing is
Unicode NFC, then stripping leading and trailing whitespace (``str.strip``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import hvac

from l7.crypto import sha256_hex
from l7.errors import ConfigError, Forbidden, RequestInvalid
from l7.secrets import _bao
from l7.secrets.interface import SecretMeta, SecretRef, SecretStore

__all__ = [
    "BaoSecretStore",
    "SecretMeta",
    "SecretRef",
    "SecretStore",
    "hash_value",
    "normalize_value",
]

_FRACTION = re.compile(r"(\.\d{6})\d+")
_READ_CAPABILITIES = frozenset({"read", "root"})


def normalize_value(value: str) -> str:
    """NFC, then strip leading and trailing whitespace."""
    return unicodedata.normalize("NFC", value).strip()


def hash_value(value: str) -> str:
    """``sha256:<hex>`` of the UTF-8 bytes of ``normalize_value(value)``."""
    return "sha256:" + sha256_hex(normalize_value(value).encode("utf-8"))


def _not_found(ref: SecretRef, detail: str) -> RequestInvalid:
    return RequestInvalid(
        "secret_ref",
        f"secret not found: {ref}: {detail}; check the reference or write the secret first",
    )


def _secret_forbidden(message: str) -> Forbidden:
    return Forbidden(message, reason="secret_forbidden")


def _deleted(deletion_time: object, now: datetime) -> bool:
    """KV v2 sets ``deletion_time`` on delete, or ahead of time (``delete_version_after``);
    an unreadable time counts as deleted."""
    if not deletion_time:
        return False
    if not isinstance(deletion_time, str):
        return True
    try:
        when = datetime.fromisoformat(_FRACTION.sub(r"\1", deletion_time))
    except ValueError:
        return True
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when <= now


class BaoSecretStore:
    """``SecretStore`` over an OpenBao (or Vault) KV mount. ``client`` is the service's
    own client: it needs ``read`` on ``<mount>/metadata/*`` and ``<mount>/data/*`` (KV v1:
    ``list`` and ``read`` on ``<mount>/*``), ``update`` on ``sys/capabilities`` and
    ``auth/token/lookup``, and ``read`` on ``identity/entity/id/*``."""

    def __init__(self, client: hvac.Client, *, kv_version: int = 2) -> None:
        if kv_version not in (1, 2):
            raise ConfigError(f"kv_version must be 1 or 2, got {kv_version!r}")
        self._client = client
        self.kv_version = kv_version

    def data_path(self, ref: SecretRef) -> str:
        """The API path an ACL policy grants ``read`` on to read ``ref``."""
        if self.kv_version == 2:
            return f"{ref.mount}/data/{ref.path}"
        return f"{ref.mount}/{ref.path}"

    def _call(self, what: str, ref: SecretRef, fn: Callable[[], Any]) -> Any:
        return _bao.call(
            fn,
            where=f"{what} for {ref}",
            not_found=lambda: _not_found(ref, f"no secret at {ref.mount}/{ref.path}"),
            forbidden=lambda: _secret_forbidden(
                f"OpenBao refused the secret store's token ({what} for {ref}); grant it "
                "the access listed in BaoSecretStore's docstring"
            ),
            invalid=lambda: RequestInvalid(
                "secret_ref",
                f"secret not found: OpenBao rejected {what} for {ref}; is {ref.mount!r} "
                f"a KV v{self.kv_version} mount?",
            ),
        )

    # -- metadata (never the value) -----------------------------------------------------

    def metadata(self, ref: SecretRef) -> SecretMeta:
        if self.kv_version == 1:
            return self._metadata_v1(ref)
        kv = self._client.secrets.kv.v2
        resp = self._call(
            "reading metadata",
            ref,
            lambda: kv.read_secret_metadata(path=ref.path, mount_point=ref.mount),
        )
        try:
            data = resp["data"]
            versions: dict[str, Any] = data["versions"]
            current = int(data["current_version"])
        except (KeyError, TypeError, ValueError) as e:
            raise _bao.shape_error(f"metadata for {ref}", e) from e
        version = ref.version if ref.version is not None else current
        entry = versions.get(str(version))
        if not isinstance(entry, dict):
            raise _not_found(ref, f"version {version} does not exist (current is {current})")
        if entry.get("destroyed"):
            raise _not_found(ref, f"version {version} is destroyed")
        if _deleted(entry.get("deletion_time"), datetime.now(UTC)):
            raise _not_found(ref, f"version {version} is deleted")
        return SecretMeta(
            ref=ref,
            version=version,
            created_time=str(entry.get("created_time", "")),
            current_version=current,
        )

    def _metadata_v1(self, ref: SecretRef) -> SecretMeta:
        if ref.version is not None:
            raise RequestInvalid(
                "secret_ref", f"{ref.mount!r} is a KV v1 mount, which has no versions; drop '@N'"
            )
        parent, _, leaf = ref.path.rpartition("/")
        kv = self._client.secrets.kv.v1
        resp = self._call(
            "listing", ref, lambda: kv.list_secrets(path=parent, mount_point=ref.mount)
        )
        try:
            keys = resp["data"]["keys"]
        except (KeyError, TypeError) as e:
            raise _bao.shape_error(f"the listing for {ref}", e) from e
        if leaf not in keys:
            raise _not_found(ref, f"no secret at {ref.mount}/{ref.path}")
        return SecretMeta(ref=ref, version=None, created_time="", current_version=None)

    # -- access ---------------------------------------------------------------------------

    def check_access(self, ref: SecretRef, token: str) -> None:
        """Refuse unless ``token`` (the actor's OpenBao token) may read ``ref``."""
        if not token:
            raise _secret_forbidden(f"no OpenBao token for the actor; cannot read {ref}")
        path = self.data_path(ref)
        refused = _secret_forbidden(
            f"OpenBao did not accept the actor's token when asked about {ref}; "
            "log in again and retry"
        )
        resp = _bao.call(
            lambda: self._client.sys.get_capabilities(paths=[path], token=token),
            where=f"sys/capabilities for {ref}",
            not_found=lambda: refused,
            forbidden=lambda: refused,
            invalid=lambda: refused,
        )
        try:
            caps = resp.get("data", resp)[path]
            granted = {str(c) for c in caps}
        except (AttributeError, KeyError, TypeError) as e:
            raise _bao.shape_error(f"sys/capabilities for {ref}", e) from e
        if "deny" in granted or not granted & _READ_CAPABILITIES:
            raise _secret_forbidden(
                f"the actor may not read {ref}: its capabilities on {path} are "
                f"{sorted(granted)}; ask for 'read' on that path in its OpenBao policy"
            )

    def token_subject(self, token: str) -> str:
        """The entity name ``token`` belongs to; ``Forbidden(secret_forbidden)`` for a
        token OpenBao does not accept or one bound to no entity."""
        if not token:
            raise _secret_forbidden("no OpenBao token for the actor")
        refused = _secret_forbidden(
            "OpenBao does not accept the actor's token (expired, revoked or not a token); "
            "log in again and retry"
        )
        resp = _bao.call(
            lambda: self._client.auth.token.lookup(token),
            where="auth/token/lookup for the actor's token",
            not_found=lambda: refused,
            forbidden=lambda: refused,
            invalid=lambda: refused,
        )
        try:
            entity_id = resp["data"]["entity_id"]
        except (KeyError, TypeError) as e:
            raise _bao.shape_error("auth/token/lookup", e) from e
        if not isinstance(entity_id, str) or not entity_id:
            raise _secret_forbidden(
                "the actor's OpenBao token belongs to no identity entity, so it speaks for "
                "nobody; use the actor's own login token"
            )
        entity = _bao.call(
            lambda: self._client.read(f"identity/entity/id/{entity_id}"),
            where="identity/entity/id for the actor's token",
            not_found=lambda: refused,
            forbidden=lambda: _secret_forbidden(
                "the secret store's token may not read identity/entity/id/*; grant it read"
            ),
            invalid=lambda: refused,
        )
        try:
            name = entity["data"]["name"]
        except (KeyError, TypeError) as e:
            raise _bao.shape_error("identity/entity/id", e) from e
        if not isinstance(name, str) or not name:
            raise _bao.shape_error("identity/entity/id", ValueError("name"))
        return name

    # -- the value (gateway only) -------------------------------------------------------

    def resolve(self, ref: SecretRef) -> str:
        """The value of ``ref``'s field: read now, returned, never logged or raised."""
        if self.kv_version == 1:
            if ref.version is not None:
                self._metadata_v1(ref)  # raises: KV v1 has no versions
            kv1 = self._client.secrets.kv.v1
            resp = self._call(
                "reading", ref, lambda: kv1.read_secret(path=ref.path, mount_point=ref.mount)
            )
            fields = _extract(resp, ref, ("data",))
        else:
            kv2 = self._client.secrets.kv.v2
            resp = self._call(
                "reading",
                ref,
                lambda: kv2.read_secret_version(
                    path=ref.path,
                    version=ref.version,
                    mount_point=ref.mount,
                    raise_on_deleted_version=True,
                ),
            )
            meta = _extract(resp, ref, ("data", "metadata"))
            if meta.get("destroyed") or _deleted(meta.get("deletion_time"), datetime.now(UTC)):
                raise _not_found(ref, "that version is deleted or destroyed")
            fields = _extract(resp, ref, ("data", "data"))
        if ref.field not in fields:
            raise _not_found(ref, f"the secret has no field {ref.field!r}")
        value = fields[ref.field]
        if not isinstance(value, str):
            raise RequestInvalid(
                "secret_ref",
                f"{ref} holds a {type(value).__name__}, not a string; point at a string field",
            )
        return value


def _extract(resp: Any, ref: SecretRef, keys: tuple[str, ...]) -> dict[str, Any]:
    """``resp[k0][k1]...`` as a dict, or SecretsDegraded (the error names keys only)."""
    node = resp
    try:
        for k in keys:
            node = node[k]
    except (KeyError, TypeError) as e:
        raise _bao.shape_error(f"reading {ref}", e) from e
    if not isinstance(node, dict):
        raise _bao.shape_error(f"reading {ref}", TypeError("/".join(keys)))
    return node


_STORE_IS_A_SECRET_STORE: type[SecretStore] = BaoSecretStore


_CIPHERTEXT = re.compile(r"^vault:v[0-9]+:")


def secret_refs(payload: Any, path: str = "action.payload") -> list[SecretRef]:
    """Every ``vault:<mount>/<path>#<field>[@<version>]`` value in a payload (transit
    ciphertext ``vault:vN:...`` is not a reference). A value that starts like a reference
    but does not parse is refused, naming its field."""
    out: list[SecretRef] = []
    if isinstance(payload, Mapping):
        for k, v in payload.items():
            out.extend(secret_refs(v, f"{path}.{k}"))
    elif isinstance(payload, list):
        for i, v in enumerate(payload):
            out.extend(secret_refs(v, f"{path}[{i}]"))
    elif (
        isinstance(payload, str) and payload.startswith("vault:") and not _CIPHERTEXT.match(payload)
    ):
        out.append(SecretRef.parse(payload, field=path))
    return out
