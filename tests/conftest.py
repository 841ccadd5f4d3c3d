"""Shared test helpers: repo paths and request builders."""

from __future__ import annotations

import copy
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "requests"


def example(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return obj


def request(
    cls: str = "data.read",
    *,
    env: str = "dev",
    target: tuple[str, str] = ("dataset", "orders"),
    level: int = 1,
    actor: str = "agent-1",
    payload: dict[str, Any] | None = None,
    key: str = "",
) -> dict[str, Any]:
    return {
        "action": {
            "class": cls,
            "intent": f"{cls} on {target[1]}",
            "target": {"type": target[0], "id": target[1]},
            "payload": payload or {},
        },
        "context": {
            "actor": {"id": actor, "role": "engineer", "level": level},
            "environment": env,
            "request_source": "test",
        },
        "idempotency_key": key,
    }


def without(req: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A deep copy of ``req`` with the field at ``dotted`` removed."""
    out = copy.deepcopy(req)
    node = out
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def rewrite_bundle(tar_gz: bytes, fn: Callable[[str, bytes], bytes | None]) -> bytes:
    """A bundle tarball with each member passed through ``fn(name, data)`` (None drops it);
    the signature file is left as it was, so OPA must refuse any change."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tin,
        tarfile.open(fileobj=out, mode="w:gz") as tout,
    ):
        for m in tin:
            f = tin.extractfile(m)
            data = fn(m.name.lstrip("/"), f.read() if f is not None else b"")
            if data is None:
                continue
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return out.getvalue()


def flip_one_byte(member: str) -> Callable[[str, bytes], bytes]:
    """For ``rewrite_bundle``: flip one bit of the next-to-last byte of ``member``."""

    def fn(name: str, data: bytes) -> bytes:
        return data[:-2] + bytes([data[-2] ^ 1]) + data[-1:] if name == member else data

    return fn


def shared_tier_keys(directory: Path, env: str = "local") -> dict[str, Path]:
    """Engine and gateway tier keys and a bundle-signing key made now, and a trust file
    pinning them (``local_keys: false``): the ``StackConfig`` fields that let several
    replicas (each with its own work dir) sign as one deployment, as operators pin one key
    per tier and the bundle signers (docs/0012, docs/0006)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from l7.crypto import Ed25519Signer, load_private_key, save_private_key
    from l7.policy.signing import load_or_create_signing_key
    from l7.trust import public_entry

    directory.mkdir(parents=True, exist_ok=True)
    tiers: dict[str, list[dict[str, str]]] = {"engine": [], "gateway": [], "ledger": []}
    out: dict[str, Path] = {}
    for tier, field in (("engine", "tier_key"), ("gateway", "gateway_tier_key")):
        path = directory / f"tier-{tier}.pem"
        if not path.exists():
            save_private_key(path, Ed25519PrivateKey.generate())
        tiers[tier].append(public_entry(Ed25519Signer(load_private_key(path))))
        out[field] = path
    out["bundle_signing_key"] = directory / "bundle-signing.pem"
    _, bundle_signer = load_or_create_signing_key(out["bundle_signing_key"])
    trust = directory / f"{env}.trust.json"
    trust.write_text(
        json.dumps(
            {
                "environment": env,
                "version": 1,
                "local_keys": False,
                "tiers": tiers,
                "bundle_signers": [
                    {"kid": bundle_signer.kid, "public_key": bundle_signer.public_key_pem}
                ],
            }
        )
    )
    out["trust_file"] = trust
    return out
