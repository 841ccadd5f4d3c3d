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
``BundleError`` naming every difference.

**Signing.** With a signing key, the same staged content is built a second time
with ``opa build --signing-key <ES256 PEM> --signing-alg ES256
--verification-key-id <kid> --claims-file {"keyid": kid, "scope": "l7/<env>"}``
(``opa build`` has no ``--signing-key-id``; ``--verification-key-id`` is what
sets the JWS ``kid``). An ECDSA signature is randomised, so the signed tarball is
not reproducible: the lock pins the revision and ``bundle_sha256`` of the
*unsigned* build (reproducible on every machine), and the built, signed tarball
is stored under its own digest, ``<out>/<sha256>.tar.gz``. After building we
check with our own code (``l7.policy.signing``) that the signature verifies and
that the signed tarball holds exactly the unsigned tarball's files.

The lock's ``signing`` object names how the environment's bundles are signed:
``{"alg": "ES256", "scope": "l7/<env>"}``. *Who* may sign is not in the lock: the
environment's trust file pins it (``bundles/<env>.trust.json`` ``bundle_signers``,
``l7.trust`` and ``l7.policy.signing.BundleSigners``), beside the tier keys, so one
file holds every key of an environment and a lock rebuilt for a policy change never
carries a key change. Where the trust file says ``local_keys: false`` (staging,
production) an empty ``bundle_signers`` is refused and only pinned keys may sign; no
signing key is ever created for such an environment. Under ``local_keys`` an empty list
trusts the deployment's own key (created on first use under
``.build/keys/bundle-signing.pem``). Private keys are never committed. A lock without a
signing object (``null``), or one still carrying ``signers``, is refused: fail closed.

**Activation and rollback.** Activating a revision that was activated before but
is not the newest one ever activated is a rollback and is refused unless
``allow_rollback=True`` (``--allow-rollback``). The engine takes that history from the
ledger's ``policy.activated`` events (``l7.policy.activation``); the file
``.build/activations/<env>.json`` is only its cache there, rewritten from the ledger.
``activate`` here is the file-only form (no ledger), for tools and tests.
``activation_record`` is the ``policy.activated`` ledger payload; it names the
enforcement configuration the bundle carries (``l7/deployment`` ``enforcement``) and
the one in force before, so every change of enforcement mode is a
``policy.activated`` event (docs/0007-enforcement-modes.md).

**The bundle store.** ``<work_dir>/bundles/<digest>.tar.gz`` keeps every built
bundle under its own digest; ``open_stored_bundle`` re-opens one (e.g. for
``l7 decision replay``) and checks its digest, its signature (by a trusted key,
for the environment's scope) and the revision its ``.manifest`` names.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from l7.errors import BundleError, ConfigError
from l7.policy.signing import (
    SIGNATURES_FILE,
    SIGNING_ALG,
    BundleSigners,
    Signer,
    bundle_scope,
    load_or_create_signing_key,
    verify_bundle_signature,
)

__all__ = [
    "DEFAULT_SIGNING_KEY",
    "REVISION_TAG",
    "Activation",
    "BuiltBundle",
    "BundleLock",
    "SigningPolicy",
    "activate",
    "activation_from_record",
    "activation_record",
    "activations_path",
    "build_bundle",
    "bundle_enforcement",
    "committed_signers",
    "compute_revision",
    "is_rollback",
    "lock_path",
    "newest_revision",
    "open_stored_bundle",
    "promote",
    "read_activations",
    "read_lock",
    "stored_revisions",
    "verify_built",
    "verify_lock",
    "write_activations",
    "write_lock",
]

DEFAULT_SIGNING_KEY = Path("keys") / "bundle-signing.pem"
"""Relative to the work dir (``.build``): the deployment's bundle-signing key."""

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
    signer: Signer | None = None
    """Who signed ``path`` (None: an unsigned build, which OPA with a key refuses)."""
    digest: str = ""
    """sha256 of the tarball at ``path`` (its name); equals ``bundle_sha256`` if unsigned."""

    @property
    def scope(self) -> str:
        return bundle_scope(self.env)


@dataclass(frozen=True)
class SigningPolicy:
    """How an environment's bundles are signed (the lock's ``signing`` object); who may
    sign them is the trust file's ``bundle_signers`` (``BundleSigners``)."""

    alg: str
    scope: str


@dataclass(frozen=True)
class BundleLock:
    """The committed pin of one environment's bundle (``bundles/<env>.lock.json``)."""

    env: str
    revision: str
    bundle_sha256: str
    files: Mapping[str, str]
    opa_version: str | None = None
    signing: SigningPolicy | None = None


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


def _opa_build(opa_bin: Path, env: str, staging: Path, out: Path, args: Sequence[str]) -> None:
    cmd = [str(opa_bin), "build", "-b", ".", "-o", str(out), *args]
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


def _members(path: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            if f is not None:
                out[m.name.lstrip("/")] = f.read()
    return out


def build_bundle(
    env: str,
    *,
    repo_root: Path,
    out_dir: Path,
    opa_bin: Path,
    signing_key: Path | None = None,
    create_key: bool = True,
) -> BuiltBundle:
    """Stage, hash and ``opa build`` the bundle for ``env`` into ``out_dir``.

    With ``signing_key`` (an ES256 PEM, created 0600 if missing and ``create_key``) the
    stored bundle is signed; without it, it is the unsigned reproducible build. Whether
    the key may sign ``env`` is the callers' check (``verify_lock``, ``promote``)."""
    _check_env(env)
    _check_opa(opa_bin)
    sources = _sources(env, repo_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    signer: Signer | None = None
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

        unsigned = Path(tmp) / "unsigned.tar.gz"
        _opa_build(opa_bin, env, staging, unsigned, ["--revision", revision])
        bundle_sha256 = _sha256_file(unsigned)
        product = unsigned
        if signing_key is not None:
            _, signer = load_or_create_signing_key(signing_key, create=create_key)
            claims = Path(tmp) / "claims.json"
            claims.write_text(json.dumps({"keyid": signer.kid, "scope": bundle_scope(env)}))
            product = Path(tmp) / "signed.tar.gz"
            _opa_build(
                opa_bin,
                env,
                staging,
                product,
                [
                    "--revision",
                    revision,
                    "--signing-key",
                    str(signing_key),
                    "--signing-alg",
                    SIGNING_ALG,
                    "--verification-key-id",
                    signer.kid,
                    "--claims-file",
                    str(claims),
                ],
            )
            verify_bundle_signature(product, {signer.kid: signer}, scope=bundle_scope(env))
            signed_members = _members(product)
            signed_members.pop(SIGNATURES_FILE, None)
            if signed_members != _members(unsigned):
                raise BundleError(
                    f"the signed bundle for env {env!r} does not hold exactly the content of "
                    f"the unsigned build {bundle_sha256[:12]}; refusing it"
                )
        digest = _sha256_file(product)
        final = out_dir / f"{digest}.tar.gz"
        if not (final.is_file() and _sha256_file(final) == digest):
            # Move into place atomically: concurrent builders never see half a tarball.
            tmp_final = final.with_name(f".{final.name}.{os.getpid()}.tmp")
            shutil.copyfile(product, tmp_final)
            os.replace(tmp_final, final)
    return BuiltBundle(
        env=env,
        revision=revision,
        path=final,
        bundle_sha256=bundle_sha256,
        files=MappingProxyType(dict(sorted(files.items()))),
        opa_version=_opa_version(opa_bin),
        signer=signer,
        digest=digest,
    )


def verify_built(built: BuiltBundle, trusted: Sequence[Signer] = ()) -> Signer:
    """Re-check the signature of the bundle file on disk (e.g. just before OPA loads it).

    ``trusted`` defaults to the signer recorded at build time. Raises ``BundleError``
    naming the altered file, or if the file is unsigned or not the one built."""
    keys = {s.kid: s for s in trusted} if trusted else {}
    if not keys and built.signer is not None:
        keys = {built.signer.kid: built.signer}
    if not keys:
        raise BundleError(f"bundle {built.path} was built unsigned; build it with a signing key")
    signer, signed = verify_bundle_signature(built.path, keys, scope=built.scope)
    bundle_files = {p for p in signed if p not in (".manifest", "data.json")}
    expected = {p for p in built.files if p.endswith(".rego")}
    if not expected <= bundle_files:
        missing = ", ".join(sorted(expected - bundle_files))
        raise BundleError(f"{built.path} lacks policy files it was built from: {missing}")
    if _sha256_file(built.path) != built.digest:
        raise BundleError(f"{built.path} changed after it was built (digest {built.digest[:12]})")
    return signer


# -- lock files --------------------------------------------------------------------------


def _signing_dict(policy: SigningPolicy) -> dict[str, Any]:
    return {"alg": policy.alg, "scope": policy.scope}


def _lock_dict(lock: BundleLock) -> dict[str, Any]:
    return {
        "env": lock.env,
        "revision": lock.revision,
        "bundle_sha256": lock.bundle_sha256,
        "files": dict(sorted(lock.files.items())),
        "opa_version": lock.opa_version,
        "signing": _signing_dict(lock.signing) if lock.signing else None,
    }


def write_lock(built: BuiltBundle, repo_root: Path) -> Path:
    """Write ``bundles/<env>.lock.json`` for ``built`` (atomically); returns its path.

    The lock pins content only; signer pins live in the trust file
    (``l7.trust.pin_bundle_signer``)."""
    path = lock_path(built.env, repo_root)
    lock = BundleLock(
        env=built.env,
        revision=built.revision,
        bundle_sha256=built.bundle_sha256,
        files=built.files,
        opa_version=built.opa_version,
        signing=SigningPolicy(SIGNING_ALG, bundle_scope(built.env)),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_lock_dict(lock), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _hex64(obj: Mapping[str, Any], key: str, where: Path) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not _HEX64_RE.match(v):
        raise BundleError(f"{where}: {key!r} must be a lowercase sha256 hex digest, got {v!r}")
    return v


def _read_signing(raw: Any, env: str, path: Path) -> SigningPolicy:
    if raw is None:
        raise BundleError(
            f"{path}: 'signing' is null: this lock predates signed bundles; "
            f"run 'l7 bundle build --env {env}' and commit the lock"
        )
    if isinstance(raw, dict) and "signers" in raw:
        raise BundleError(
            f"{path}: 'signing.signers' is no longer read from the lock: the keys allowed "
            f"to sign {env!r} bundles are pinned in bundles/{env}.trust.json "
            "('bundle_signers'); move any pin there through review and remove 'signers' "
            "from the lock"
        )
    if not isinstance(raw, dict) or set(raw) != {"alg", "scope"}:
        raise BundleError(f"{path}: 'signing' must be an object with exactly 'alg' and 'scope'")
    if raw["alg"] != SIGNING_ALG:
        raise BundleError(f"{path}: signing alg {raw['alg']!r} is not {SIGNING_ALG!r}")
    if raw["scope"] != bundle_scope(env):
        raise BundleError(f"{path}: signing scope {raw['scope']!r}, expected {bundle_scope(env)!r}")
    return SigningPolicy(alg=SIGNING_ALG, scope=raw["scope"])


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
    signing = _read_signing(raw["signing"], env, path)
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
        signing=signing,
    )


def _file_diff(want: Mapping[str, str], got: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    for rel in sorted(set(want) | set(got)):
        w, g = want.get(rel), got.get(rel)
        if w == g:
            continue
        if w is None:
            problems.append(f"  added:   {rel}")
        elif g is None:
            problems.append(f"  removed: {rel}")
        else:
            problems.append(f"  changed: {rel} (lock {w[:12]}, now {g[:12]})")
    return problems


def committed_signers(env: str, repo_root: Path) -> BundleSigners:
    """Who may sign ``env``'s bundles per its committed trust file."""
    from l7.trust import load_trust  # l7.trust imports l7.policy.signing: not at the top

    try:
        trust = load_trust(env, repo_root=repo_root, work_dir=repo_root / ".build")
    except ConfigError as e:
        raise BundleError(str(e)) from e
    return trust.signers()


def _signing_key(signers: BundleSigners, signing_key: Path | None) -> None:
    """Refuse before building: no signer may sign ``signers.env``, or ``signing_key`` is
    not one of them (a key the deployment would create itself included)."""
    signers.require()
    if signing_key is not None and signers.pinned:
        _, signer = load_or_create_signing_key(signing_key, create=False)
        signers.check(signer)


def verify_lock(
    env: str,
    *,
    repo_root: Path,
    out_dir: Path,
    opa_bin: Path,
    signing_key: Path | None = None,
    signers: BundleSigners | None = None,
) -> BuiltBundle:
    """Rebuild ``env`` and return it only if it matches the committed lock exactly.

    ``signers`` (default: ``env``'s committed trust file) says who may sign; an
    environment that pins none and may not use its own key is refused. With
    ``signing_key`` the rebuilt bundle is signed by it — it must be pinned, and is
    created only where the environment may use its own key — and the signature is
    checked by our own code against the pins. Without it the build is unsigned."""
    if signers is None:
        signers = committed_signers(env, repo_root)
    _signing_key(signers, signing_key)
    lock = read_lock(env, repo_root)
    built = build_bundle(
        env,
        repo_root=repo_root,
        out_dir=out_dir,
        opa_bin=opa_bin,
        signing_key=signing_key,
        create_key=signers.own_key and not signers.pinned,
    )
    problems = _file_diff(lock.files, built.files)
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
    if built.signer is not None:
        signers.check(built.signer)
        verify_built(built, signers.trusted(built.signer))
    return built


def promote(
    from_env: str,
    to_env: str,
    *,
    repo_root: Path,
    out_dir: Path,
    opa_bin: Path,
    signing_key: Path | None = None,
    signers: BundleSigners | None = None,
) -> tuple[BuiltBundle, list[str]]:
    """Pin in ``to_env``'s lock the policy that ``from_env``'s lock pins.

    The policy files (everything but ``l7/deployment/data.json``) of the rebuilt
    ``to_env`` bundle must equal those in ``from_env``'s lock, i.e. the tree must
    hold exactly the policy reviewed for ``from_env``. Writes the ``to_env`` lock and
    returns the build and a summary of what changed in it. ``signers`` (default:
    ``to_env``'s committed trust file) must allow ``signing_key``, as in ``verify_lock``."""
    if from_env == to_env:
        raise BundleError("promote --from and --to name the same environment")
    if signers is None:
        signers = committed_signers(to_env, repo_root)
    _signing_key(signers, signing_key)
    source = read_lock(from_env, repo_root)
    built = build_bundle(
        to_env,
        repo_root=repo_root,
        out_dir=out_dir,
        opa_bin=opa_bin,
        signing_key=signing_key,
        create_key=signers.own_key and not signers.pinned,
    )
    policy_want = {k: v for k, v in source.files.items() if k != _DEPLOYMENT_DEST}
    policy_got = {k: v for k, v in built.files.items() if k != _DEPLOYMENT_DEST}
    drift = _file_diff(policy_want, policy_got)
    if drift:
        raise BundleError(
            f"the policy in the tree is not the policy {lock_path(from_env, repo_root)} pins "
            f"(revision {source.revision[:12]}):\n"
            + "\n".join(drift)
            + f"\nbuild and review {from_env!r} first, or check out its revision"
        )
    try:
        old: BundleLock | None = read_lock(to_env, repo_root)
    except BundleError:
        old = None
    summary: list[str] = []
    if old is None:
        summary.append(f"{to_env}: new lock at revision {built.revision}")
    elif old.revision == built.revision:
        summary.append(f"{to_env}: already at revision {built.revision} (no change)")
    else:
        summary.append(f"{to_env}: revision {old.revision[:12]} -> {built.revision[:12]}")
        summary.extend(_file_diff(old.files, built.files))
    write_lock(built, repo_root)
    return built, summary


# -- activation history (anti-rollback) --------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """One entry of ``.build/activations/<env>.json``."""

    revision: str
    bundle_sha256: str
    signer_kid: str | None
    at: str
    rollback: bool = False
    digest: str | None = None
    """The stored (signed) tarball's digest; None in entries written before it was kept."""
    enforcement: Mapping[str, Any] | None = None
    """The enforcement configuration the bundle carried; None if unknown (older entries)."""


def activations_path(env: str, work_dir: Path) -> Path:
    return work_dir / "activations" / f"{_check_env(env)}.json"


def read_activations(env: str, work_dir: Path) -> tuple[Activation, ...]:
    """The activation history (oldest first); a damaged file is refused, never reset."""
    path = activations_path(env, work_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as e:
        raise BundleError(
            f"{path} is not readable JSON ({e}); it is the anti-rollback record for {env!r}: "
            "restore it from backup rather than deleting it"
        ) from e
    entries = raw.get("activations") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("env") != env or not isinstance(entries, list):
        raise BundleError(f"{path}: expected {{'env': {env!r}, 'activations': [...]}}")
    out: list[Activation] = []
    for entry in entries:
        try:
            kid = entry.get("signer_kid")
            enforcement = entry.get("enforcement")
            out.append(
                Activation(
                    revision=_hex64(entry, "revision", path),
                    bundle_sha256=_hex64(entry, "bundle_sha256", path),
                    signer_kid=kid if isinstance(kid, str) else None,
                    at=str(entry["at"]),
                    rollback=bool(entry.get("rollback", False)),
                    digest=_hex64(entry, "digest", path) if entry.get("digest") else None,
                    enforcement=enforcement if isinstance(enforcement, dict) else None,
                )
            )
        except (AttributeError, KeyError) as err:
            raise BundleError(f"{path}: malformed activation entry {entry!r}") from err
    return tuple(out)


def newest_revision(history: Sequence[Activation]) -> str:
    """The revision whose first activation came last (the high-water mark)."""
    first: dict[str, int] = {}
    for i, a in enumerate(history):
        first.setdefault(a.revision, i)
    return max(first, key=lambda r: first[r])


def is_rollback(revision: str, history: Sequence[Activation]) -> bool:
    """Was ``revision`` activated before, yet is not the newest revision ever activated?

    "Newest" is by first appearance in the history; re-activating the newest one
    (e.g. after a recorded rollback) is not a rollback."""
    if not any(a.revision == revision for a in history):
        return False
    return revision != newest_revision(history)


def activation_record(
    env: str, built: BuiltBundle, previous: Sequence[Activation]
) -> dict[str, Any]:
    """The ``policy.activated`` payload for activating ``built`` after ``previous``.

    ``enforcement`` is the configuration the signed bundle carries and
    ``previous_enforcement`` the one in force before (None: nothing was active, or the
    previous entry predates this record), so a mode change is visible on the record."""
    return {
        "env": env,
        "revision": built.revision,
        "bundle_sha256": built.bundle_sha256,
        "digest": built.digest,
        "signer_kid": built.signer.kid if built.signer else None,
        "previous_revision": previous[-1].revision if previous else None,
        "rollback": is_rollback(built.revision, previous),
        "enforcement": bundle_enforcement(built.path),
        "previous_enforcement": (
            dict(previous[-1].enforcement)
            if previous and previous[-1].enforcement is not None
            else None
        ),
    }


def bundle_enforcement(path: Path) -> dict[str, Any] | None:
    """The ``enforcement`` object of the deployment data inside a built bundle (``{}`` when
    the deployment data sets none: every mode then resolves to enforced; None when there
    is no bundle file to read it from)."""
    if not path.is_file():
        return None
    try:
        raw = _members(path).get("data.json")
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BundleError(f"{path} is not a readable bundle tarball: {e}") from e
    try:
        data = json.loads(raw) if raw is not None else {}
    except ValueError as e:
        raise BundleError(f"{path}: data.json is not JSON: {e}") from e
    node: Any = data
    for key in ("l7", "deployment", "enforcement"):
        node = node.get(key) if isinstance(node, dict) else None
    return dict(node) if isinstance(node, dict) else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def activate(
    env: str,
    built: BuiltBundle,
    *,
    work_dir: Path,
    allow_rollback: bool = False,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Record that ``built`` is being activated for ``env``; refuse an unflagged rollback.

    Returns the ``policy.activated`` payload to put in the ledger, or ``None`` when
    ``built``'s revision is already the active one (a restart, nothing to record)."""
    if env != built.env:
        raise BundleError(f"bundle for env {built.env!r} cannot be activated for {env!r}")
    path = activations_path(env, work_dir)
    with _locked(path):
        history = read_activations(env, work_dir)
        if history and history[-1].revision == built.revision:
            return None
        record = activation_record(env, built, history)
        if record["rollback"] and not allow_rollback:
            newest = newest_revision(history)
            raise BundleError(
                f"activating revision {built.revision[:12]} for {env!r} is a rollback: the "
                f"newest revision ever activated is {newest[:12]} "
                f"(see {path}); pass --allow-rollback to do it deliberately",
                reason="bundle_rollback",
            )
        at = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        _write_activations(path, env, (*history, activation_from_record(record, at)))
    return record


def activation_from_record(record: Mapping[str, Any], at: str) -> Activation:
    """The history entry for a ``policy.activated`` payload made by ``activation_record``."""
    kid, digest, enforcement = (
        record.get("signer_kid"),
        record.get("digest"),
        record.get("enforcement"),
    )
    return Activation(
        revision=str(record["revision"]),
        bundle_sha256=str(record["bundle_sha256"]),
        signer_kid=kid if isinstance(kid, str) else None,
        at=at,
        rollback=bool(record.get("rollback", False)),
        digest=digest if isinstance(digest, str) and digest else None,
        enforcement=dict(enforcement) if isinstance(enforcement, Mapping) else None,
    )


def _write_activations(path: Path, env: str, history: Sequence[Activation]) -> None:
    entries = [
        {
            "revision": a.revision,
            "bundle_sha256": a.bundle_sha256,
            "signer_kid": a.signer_kid,
            "at": a.at,
            "rollback": a.rollback,
            **({"digest": a.digest} if a.digest else {}),
            **({"enforcement": dict(a.enforcement)} if a.enforcement is not None else {}),
        }
        for a in history
    ]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"env": env, "activations": entries}, indent=2) + "\n")
    os.replace(tmp, path)


def write_activations(env: str, work_dir: Path, history: Sequence[Activation]) -> None:
    """Replace the activation file of ``env`` with ``history`` (the ledger's, as a cache)."""
    path = activations_path(env, work_dir)
    with _locked(path):
        _write_activations(path, env, history)


# -- the bundle store (replay) -----------------------------------------------------------


def _manifest_revision(path: Path) -> str:
    try:
        raw = _members(path).get(".manifest")
        manifest = json.loads(raw) if raw is not None else None
    except (OSError, tarfile.TarError, EOFError, ValueError) as e:
        raise BundleError(f"{path} is not a readable bundle tarball: {e}") from e
    rev = manifest.get("revision") if isinstance(manifest, dict) else None
    if not isinstance(rev, str) or not _HEX64_RE.match(rev):
        raise BundleError(f"{path}: its .manifest names no revision")
    return rev


def stored_revisions(store: Path) -> dict[str, list[Path]]:
    """Revision -> stored tarballs with that revision, for every readable bundle in ``store``
    (a directory like ``.build/bundles``); unreadable files are skipped."""
    out: dict[str, list[Path]] = {}
    if not store.is_dir():
        return out
    for p in sorted(store.glob("*.tar.gz")):
        try:
            out.setdefault(_manifest_revision(p), []).append(p)
        except BundleError:
            continue
    return out


def open_stored_bundle(
    path: Path, *, env: str, revision: str, trusted: Sequence[Signer]
) -> BuiltBundle:
    """Re-open a bundle from the store and check it is the one that judged ``revision``:
    its file name is its sha256, a ``trusted`` key signed it for ``env``'s scope, and its
    ``.manifest`` names ``revision``. Raises ``BundleError`` (reason ``bundle_unavailable``
    when the file is missing) naming what does not hold."""
    _check_env(env)
    if not path.is_file():
        raise BundleError(f"bundle {path} is not in the store", reason="bundle_unavailable")
    digest = _sha256_file(path)
    if path.name != f"{digest}.tar.gz":
        raise BundleError(f"{path} is not named by its content (sha256 {digest}); it changed")
    if not trusted:
        raise BundleError(
            f"no trusted bundle-signing key to check {path} with; pass --trust-key PEM "
            "(the .pub beside the signing key) or pin signers in the trust file"
        )
    scope = bundle_scope(env)
    signer, signed = verify_bundle_signature(path, {s.kid: s for s in trusted}, scope=scope)
    found = _manifest_revision(path)
    if found != revision:
        raise BundleError(f"{path} holds revision {found}, not {revision}")
    files = {n: d for n, d in signed.items() if n not in (".manifest",)}
    return BuiltBundle(
        env=env,
        revision=revision,
        path=path,
        bundle_sha256="",
        files=MappingProxyType(dict(sorted(files.items()))),
        signer=signer,
        digest=digest,
    )
