"""Build hash-addressed OPA bundles per environment and pin them with lock files.

A bundle for environment ``<env>`` is staged from the repository:

    rego/**/*.rego (except *_test.rego)   -> <same path below rego/>
    rego/**/data.json                      -> <same path below rego/>
    bundles/<env>/deployment.json          -> l7/deployment/data.json
    .manifest                              -> {"roots": ["l7"]} (revision added by opa build)

The **revision** names the staged content, independent of OPA and of time:

    sha256( "l7-bundle-revision/v1\\n"
            + "".join(f"{sha256_hex(file)}  {relative_path}\\n"
                      for relative_path in sorted(staged paths, .manifest excluded)) )

(relative paths use ``/``, sorted by their UTF-8 bytes; hex is lowercase). The
same revision is passed to ``opa build --revision``, so OPA reports it as the
policy version of every decision. ``opa build`` runs with ``cwd`` at the staging
directory and ``-b .``; its tarball is byte-for-byte reproducible (fixed
mtimes), so ``bundle_sha256`` is pinned too.

The lock ``bundles/<env>.lock.json`` records env, revision, bundle_sha256, the
per-file digests and the OPA version. ``verify_lock`` rebuilds and raises
``BundleError`` naming every difference. ``signing`` is ``null`` for now: the
hook for ``opa build --signing-key`` is the lock's ``signing`` field, and a lock
that carries a value we do not yet understand is refused (fail closed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from l7.errors import BundleError

__all__ = [
    "REVISION_TAG",
    "BuiltBundle",
    "BundleLock",
    "build_bundle",
    "compute_revision",
    "lock_path",
    "read_lock",
    "verify_lock",
    "write_lock",
]

REVISION_TAG = "l7-bundle-revision/v1"
_ROOTS = ("l7",)
_DEPLOYMENT_DEST = "l7/deployment/data.json"
_ENV_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_LOCK_KEYS = frozenset({"env", "revision", "bundle_sha256", "files", "opa_version", "signing"})
_OPA_TIMEOUT_S = 120


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle tarball on disk and what it was built from."""

    env: str
    revision: str
    path: Path
    bundle_sha256: str
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    opa_version: str | None = None


@dataclass(frozen=True)
class BundleLock:
    """The committed pin of one environment's bundle (``bundles/<env>.lock.json``)."""

    env: str
    revision: str
    bundle_sha256: str
    files: Mapping[str, str]
    opa_version: str | None = None
    # Hook for signed bundles: stays None until signing lands (see module docstring).
    signing: None = None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def compute_revision(files: Mapping[str, str]) -> str:
    """The revision of staged content given ``relative path -> sha256 hex``."""
    lines = [REVISION_TAG + "\n"]
    for rel in sorted(files, key=lambda p: p.encode()):
        lines.append(f"{files[rel]}  {rel}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def lock_path(env: str, repo_root: Path) -> Path:
    return repo_root / "bundles" / f"{_check_env(env)}.lock.json"


def _check_env(env: str) -> str:
    if not _ENV_RE.match(env):
        raise BundleError(
            f"bundle env {env!r} is not a valid name: expected lowercase letters, digits, "
            "'-' or '_' (like 'production')"
        )
    return env


def _sources(env: str, repo_root: Path) -> dict[str, Path]:
    """Relative path in the bundle -> source file in the repository."""
    rego_dir = repo_root / "rego"
    deployment = repo_root / "bundles" / env / "deployment.json"
    if not rego_dir.is_dir():
        raise BundleError(f"{rego_dir} does not exist: expected the Rego policy tree there")
    if not deployment.is_file():
        known = sorted(p.name for p in (repo_root / "bundles").glob("*/deployment.json"))
        raise BundleError(
            f"unknown bundle env {env!r}: {deployment} does not exist "
            f"(envs with a deployment.json: {', '.join(p for p in known) or 'none'})"
        )
    out: dict[str, Path] = {}
    for p in sorted(rego_dir.rglob("*")):
        if not p.is_file():
            continue
        if (p.suffix == ".rego" and not p.name.endswith("_test.rego")) or p.name == "data.json":
            rel = p.relative_to(rego_dir).as_posix()
            if rel.split("/", 1)[0] not in _ROOTS:
                raise BundleError(
                    f"{p} is outside the bundle roots {list(_ROOTS)}; move it under rego/l7/"
                )
            out[rel] = p
    if not any(rel.endswith(".rego") for rel in out):
        raise BundleError(f"no policy files (*.rego) under {rego_dir}")
    if _DEPLOYMENT_DEST in out:
        raise BundleError(
            f"rego/{_DEPLOYMENT_DEST} exists, but that path is reserved for "
            f"bundles/<env>/deployment.json; remove it"
        )
    out[_DEPLOYMENT_DEST] = deployment
    return out


def _opa_version(opa_bin: Path) -> str | None:
    try:
        proc = subprocess.run(
            [str(opa_bin), "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    m = re.search(r"^Version:\s*(\S+)", proc.stdout, re.MULTILINE)
    return m.group(1) if m else None


def _check_opa(opa_bin: Path) -> None:
    if not opa_bin.is_file() or not os.access(opa_bin, os.X_OK):
        raise BundleError(
            f"OPA binary {opa_bin} is missing or not executable; pass --opa-bin or set "
            "$L7_OPA_BIN, or run 'make setup' to build it into .tools/"
        )


def build_bundle(env: str, *, repo_root: Path, out_dir: Path, opa_bin: Path) -> BuiltBundle:
    """Stage, hash and ``opa build`` the bundle for ``env`` into ``out_dir``."""
    _check_env(env)
    _check_opa(opa_bin)
    sources = _sources(env, repo_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"l7-bundle-{env}-") as tmp:
        staging = Path(tmp) / "bundle"
        files: dict[str, str] = {}
        for rel, src in sources.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            files[rel] = _sha256_file(dest)
        revision = compute_revision(files)
        (staging / ".manifest").write_text(json.dumps({"roots": list(_ROOTS)}) + "\n")

        final = out_dir / f"{env}-{revision[:12]}.tar.gz"
        partial = Path(tmp) / final.name
        cmd = [str(opa_bin), "build", "-b", ".", "-o", str(partial), "--revision", revision]
        try:
            proc = subprocess.run(
                cmd,
                cwd=staging,
                capture_output=True,
                text=True,
                timeout=_OPA_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BundleError(f"could not run {opa_bin} build for env {env!r}: {e}") from e
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise BundleError(
                f"opa build failed for env {env!r} (exit {proc.returncode}); "
                f"fix the policy and rebuild:\n{detail}"
            )
        bundle_sha256 = _sha256_file(partial)
        # Move into place atomically: concurrent builders never see half a tarball.
        tmp_final = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        shutil.copyfile(partial, tmp_final)
        os.replace(tmp_final, final)
    return BuiltBundle(
        env=env,
        revision=revision,
        path=final,
        bundle_sha256=bundle_sha256,
        files=MappingProxyType(dict(sorted(files.items()))),
        opa_version=_opa_version(opa_bin),
    )


# -- lock files --------------------------------------------------------------------------


def _lock_dict(lock: BundleLock) -> dict[str, Any]:
    return {
        "env": lock.env,
        "revision": lock.revision,
        "bundle_sha256": lock.bundle_sha256,
        "files": dict(sorted(lock.files.items())),
        "opa_version": lock.opa_version,
        "signing": lock.signing,
    }


def write_lock(built: BuiltBundle, repo_root: Path) -> Path:
    """Write ``bundles/<env>.lock.json`` for ``built`` (atomically); returns its path."""
    lock = BundleLock(
        env=built.env,
        revision=built.revision,
        bundle_sha256=built.bundle_sha256,
        files=built.files,
        opa_version=built.opa_version,
    )
    path = lock_path(built.env, repo_root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_lock_dict(lock), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _hex64(obj: Mapping[str, Any], key: str, where: Path) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not _HEX64_RE.match(v):
        raise BundleError(f"{where}: {key!r} must be a lowercase sha256 hex digest, got {v!r}")
    return v


def read_lock(env: str, repo_root: Path) -> BundleLock:
    """Read and strictly validate ``bundles/<env>.lock.json``."""
    path = lock_path(env, repo_root)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(
            f"no lock file {path}; run 'l7 bundle build --env {env}' and commit the lock"
        ) from e
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    unknown = sorted(set(raw) - _LOCK_KEYS)
    missing = sorted({"env", "revision", "bundle_sha256", "files", "signing"} - set(raw))
    if unknown or missing:
        raise BundleError(f"{path}: unknown fields {unknown}, missing fields {missing}")
    if raw["env"] != env:
        raise BundleError(f"{path}: env is {raw['env']!r}, expected {env!r}")
    if raw["signing"] is not None:
        raise BundleError(
            f"{path}: 'signing' is set, but this build does not verify bundle signatures yet; "
            "refusing a lock it cannot check"
        )
    files = raw["files"]
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _HEX64_RE.match(v) for k, v in files.items()
    ):
        raise BundleError(f"{path}: 'files' must map relative paths to sha256 hex digests")
    opa_version = raw.get("opa_version")
    if opa_version is not None and not isinstance(opa_version, str):
        raise BundleError(f"{path}: 'opa_version' must be a string or null")
    return BundleLock(
        env=env,
        revision=_hex64(raw, "revision", path),
        bundle_sha256=_hex64(raw, "bundle_sha256", path),
        files=MappingProxyType(dict(files)),
        opa_version=opa_version,
    )


def verify_lock(env: str, *, repo_root: Path, out_dir: Path, opa_bin: Path) -> BuiltBundle:
    """Rebuild ``env`` and return it only if it matches the committed lock exactly."""
    lock = read_lock(env, repo_root)
    built = build_bundle(env, repo_root=repo_root, out_dir=out_dir, opa_bin=opa_bin)
    problems: list[str] = []
    for rel in sorted(set(lock.files) | set(built.files)):
        want, got = lock.files.get(rel), built.files.get(rel)
        if want == got:
            continue
        if want is None:
            problems.append(f"  added:   {rel}")
        elif got is None:
            problems.append(f"  removed: {rel}")
        else:
            problems.append(f"  changed: {rel} (lock {want[:12]}, now {got[:12]})")
    if built.revision != lock.revision:
        problems.append(f"  revision: expected {lock.revision}, actual {built.revision}")
    if built.bundle_sha256 != lock.bundle_sha256:
        problems.append(
            f"  bundle_sha256: expected {lock.bundle_sha256}, actual {built.bundle_sha256} "
            f"(OPA {lock.opa_version} in the lock, {built.opa_version} here)"
        )
    if problems:
        raise BundleError(
            f"bundle for env {env!r} does not match {lock_path(env, repo_root)}:\n"
            + "\n".join(problems)
            + f"\nreview the change, then run 'l7 bundle build --env {env}' and commit the lock"
        )
    return built
