"""The trust file: which keys may speak for each tier in an environment, pinned in git.

``bundles/<env>.trust.json`` (reviewed like the bundle locks beside it)::

    {"environment": "production", "version": 1, "local_keys": false,
     "tiers": {"engine":  [{"kid": "...", "public_key": "<base64 raw Ed25519>"}],
               "gateway": [...], "ledger": [...]},
     "bundle_signers": [{"kid": "l7b-...", "public_key": "<ES256 public key PEM>"}]}

Readers of the ledger honour an authority event only when an attestation signed by a key
pinned here for a tier that owns that event type covers it (``ledger.attestation``).

``local_keys: true`` (the ``local`` and ``dev`` environments only) lets a developer's
stack create its tier keys on first use under ``<work_dir>/keys/`` and trust them
through ``<work_dir>/trust/<env>.json``, a file the stack writes (committed entries plus
the local keys). Staging and production never do: an engine or gateway whose key is not
pinned in the committed file refuses to start.

``bundle_signers`` pins the ES256 keys allowed to sign the environment's policy bundles
(``l7.policy.signing.BundleSigners``; docs/0006). Where ``local_keys`` is false at least
one must be pinned, and an engine signs with ``--bundle-signing-key`` holding one of
them, never with a key it created; under ``local_keys`` an empty list trusts the work
dir's own key. A file without the field pins no signer (so it fails closed).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l7.crypto import (
    Ed25519Signer,
    key_fingerprint,
    load_private_key,
    public_key_b64,
    save_private_key,
)
from l7.errors import BundleError, ConfigError
from l7.policy.signing import BundleSigners, Signer, parse_signers
from ledger.attestation import Tier, TierKeys

__all__ = [
    "LOCAL_KEY_ENVS",
    "TrustFile",
    "committed_trust_path",
    "load_tier_signer",
    "load_trust",
    "pin_bundle_signer",
    "tier_key_path",
]

LOCAL_KEY_ENVS = frozenset({"local", "dev"})
"""Environments whose trust file may say ``local_keys: true``."""
_FIELDS = frozenset({"environment", "version", "local_keys", "tiers"})
_OPTIONAL = frozenset({"bundle_signers"})


@dataclass(frozen=True)
class TrustFile:
    """A parsed trust file: pinned tier keys for one environment."""

    environment: str
    local_keys: bool
    pinned: Mapping[str, tuple[Tier, bytes]]
    """key id -> (tier, raw Ed25519 public key)."""
    path: Path
    bundle_signers: tuple[Signer, ...] = ()
    """ES256 keys allowed to sign this environment's policy bundles."""

    @property
    def keys(self) -> TierKeys:
        return TierKeys(self.pinned)

    def signers(self) -> BundleSigners:
        """Who may sign this environment's bundles (``local_keys``: else the own key)."""
        return BundleSigners(
            env=self.environment,
            pinned=self.bundle_signers,
            own_key=self.local_keys,
            source=str(self.path),
        )

    @classmethod
    def from_dict(cls, data: object, *, path: Path) -> TrustFile:
        """Parse strictly: exact fields, known tiers, 32-byte keys, ids that match keys."""
        where = str(path)
        if not isinstance(data, dict) or not _FIELDS <= set(data) <= _FIELDS | _OPTIONAL:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(
                f"{where}: expected the fields {sorted(_FIELDS)} (and optionally "
                f"{sorted(_OPTIONAL)}), got {got}"
            )
        if data["version"] != 1:
            raise ConfigError(f"{where}: version must be 1, got {data['version']!r}")
        env, local = data["environment"], data["local_keys"]
        if not isinstance(env, str) or not env:
            raise ConfigError(f"{where}: environment must be a non-empty string")
        if not isinstance(local, bool):
            raise ConfigError(f"{where}: local_keys must be true or false")
        if local and env not in LOCAL_KEY_ENVS:
            raise ConfigError(
                f"{where}: local_keys is allowed only for {sorted(LOCAL_KEY_ENVS)}, not {env}: "
                "pin the tier keys"
            )
        tiers = data["tiers"]
        if not isinstance(tiers, dict):
            raise ConfigError(f"{where}: tiers must be an object of tier -> key list")
        pinned: dict[str, tuple[Tier, bytes]] = {}
        for name, entries in tiers.items():
            try:
                tier = Tier(name)
            except ValueError:
                raise ConfigError(
                    f"{where}: tiers.{name} is not a tier ({[t.value for t in Tier]})"
                ) from None
            if not isinstance(entries, list):
                raise ConfigError(f"{where}: tiers.{name} must be a list of keys")
            for i, entry in enumerate(entries):
                kid, raw = _key_entry(entry, f"{where}: tiers.{name}[{i}]")
                if kid in pinned:
                    raise ConfigError(f"{where}: key id {kid} is pinned twice")
                pinned[kid] = (tier, raw)
        try:
            signers = parse_signers(
                data.get("bundle_signers", []), where=f"{where}: bundle_signers"
            )
        except BundleError as e:
            raise ConfigError(str(e)) from e
        return cls(env, local, pinned, path, signers)

    def with_local(self, extra: Mapping[str, tuple[Tier, bytes]]) -> TrustFile:
        return TrustFile(
            self.environment,
            self.local_keys,
            {**self.pinned, **extra},
            self.path,
            self.bundle_signers,
        )

    def to_dict(self) -> dict[str, Any]:
        tiers: dict[str, list[dict[str, str]]] = {t.value: [] for t in Tier}
        for kid, (tier, raw) in sorted(self.pinned.items()):
            tiers[tier.value].append(
                {"kid": kid, "public_key": base64.b64encode(raw).decode("ascii")}
            )
        return {
            "environment": self.environment,
            "version": 1,
            "local_keys": self.local_keys,
            "tiers": tiers,
            "bundle_signers": [
                {"kid": s.kid, "public_key": s.public_key_pem} for s in self.bundle_signers
            ],
        }


def _key_entry(entry: object, where: str) -> tuple[str, bytes]:
    if not isinstance(entry, dict) or set(entry) != {"kid", "public_key"}:
        raise ConfigError(f"{where}: a key is {{'kid': ..., 'public_key': <base64 raw>}}")
    kid, b64 = entry["kid"], entry["public_key"]
    try:
        raw = base64.b64decode(b64, validate=True) if isinstance(b64, str) else b""
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{where}: public_key must be 32 bytes of raw Ed25519, base64")
    if kid != key_fingerprint(raw):
        raise ConfigError(f"{where}: kid {kid!r} is not the key's id {key_fingerprint(raw)}")
    return kid, raw


def _read(path: Path) -> TrustFile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            f"cannot read the trust file {path}: {e.strerror or e}; every environment needs "
            "bundles/<env>.trust.json (or --trust-file)"
        ) from e
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON: {e}") from e
    return TrustFile.from_dict(data, path=path)


def _local_path(work_dir: Path, env: str) -> Path:
    return work_dir / "trust" / f"{env}.json"


def load_trust(
    env: str, *, repo_root: Path, work_dir: Path, override: Path | None = None
) -> TrustFile:
    """The trust in force: ``override`` if given (taken as is), else the committed
    ``bundles/<env>.trust.json``, plus — where it allows local keys — the keys this work
    dir created (``<work_dir>/trust/<env>.json``)."""
    if override is not None:
        return _read(override)
    trust = _read(committed_trust_path(env, repo_root))
    if trust.environment != env:
        raise ConfigError(f"{trust.path} is for environment {trust.environment}, not {env}")
    local = _local_path(work_dir, env)
    if trust.local_keys and local.exists():
        trust = trust.with_local(_read(local).pinned)
    return trust


def committed_trust_path(env: str, repo_root: Path) -> Path:
    return repo_root / "bundles" / f"{env}.trust.json"


def pin_bundle_signer(env: str, signer: Signer, *, repo_root: Path) -> tuple[Path, bool]:
    """Add ``signer`` to ``bundle_signers`` in the committed trust file of ``env`` (the
    key holder's step, reviewed in git like every pin). Returns the file and whether it
    changed; every other byte of the file's content is kept."""
    path = committed_trust_path(env, repo_root)
    trust = _read(path)
    if trust.environment != env:
        raise ConfigError(f"{path} is for environment {trust.environment}, not {env}")
    if any(s.kid == signer.kid for s in trust.bundle_signers):
        return path, False
    data = json.loads(path.read_text(encoding="utf-8"))
    data["bundle_signers"] = [
        *data.get("bundle_signers", []),
        {"kid": signer.kid, "public_key": signer.public_key_pem},
    ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path, True


def tier_key_path(work_dir: Path, tier: Tier) -> Path:
    return work_dir / "keys" / f"tier-{tier.value}.pem"


def load_tier_signer(
    tier: Tier, trust: TrustFile, *, key_path: Path | None, work_dir: Path
) -> tuple[Ed25519Signer, TrustFile]:
    """The tier's signing key, and the trust that pins it.

    ``key_path`` (or ``<work_dir>/keys/tier-<tier>.pem``) must hold a key pinned for
    ``tier``. Under ``local_keys`` a missing default key is created and added to the
    work dir's local trust file; otherwise a missing or unpinned key is a ConfigError."""
    path = key_path or tier_key_path(work_dir, tier)
    if not path.exists():
        if key_path is not None or not trust.local_keys:
            raise ConfigError(
                f"no {tier.value} tier key at {path}: staging and production keys are made "
                f"outside the repo and pinned in {trust.path} (pass --tier-key FILE)"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        save_private_key(path, Ed25519PrivateKey.generate())
    signer = Ed25519Signer(load_private_key(path))
    found = trust.pinned.get(signer.key_id)
    if found is None and trust.local_keys:
        trust = _pin_locally(trust, work_dir, signer.key_id, tier, signer.public_key_raw)
        found = (tier, signer.public_key_raw)
    if found is None or found[0] is not tier:
        raise ConfigError(
            f"the {tier.value} tier key {signer.key_id} ({path}) is not pinned for "
            f"{tier.value} in {trust.path}; add its public key there through review"
        )
    return signer, trust


def _pin_locally(trust: TrustFile, work_dir: Path, kid: str, tier: Tier, raw: bytes) -> TrustFile:
    local = _local_path(work_dir, trust.environment)
    have = _read(local).pinned if local.exists() else {}
    merged = trust.with_local({**have, kid: (tier, raw)})
    local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = local.with_suffix(".tmp")
    body = TrustFile(trust.environment, True, {**have, kid: (tier, raw)}, local).to_dict()
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, local)
    return merged


def public_entry(signer: Ed25519Signer) -> dict[str, str]:
    """The trust-file entry for a key (what an operator pins)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pub = Ed25519PublicKey.from_public_bytes(signer.public_key_raw)
    return {"kid": signer.key_id, "public_key": public_key_b64(pub)}
