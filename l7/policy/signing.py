"""Bundle signing keys and our own check of OPA's bundle signature format.

``opa build --signing-key`` writes ``/.signatures.json`` into the tarball::

    {"signatures": ["<compact JWS>"], "plugin": "_default"}

The JWS (here always ES256, P-256) carries the claims::

    {"files": [{"name": "<path in the bundle>", "hash": "<hex>", "algorithm": "SHA-256"}, ...],
     "keyid": "<signer key id>", "scope": "l7/<env>"}

``hash`` is SHA-256 over the file's bytes, except for ``*.json`` files (and
``.manifest``), which are hashed over OPA's canonical JSON form: keys sorted,
no insignificant whitespace, numbers as written, no HTML escaping. Every file in
the tarball except ``.signatures.json`` must be listed, and every listed file
must be present with that digest; ``verify_bundle_signature`` checks all of it
and names the first file that does not match.

Key ids are derived from the public key (``l7b-`` + the first 16 hex digits of
SHA-256 over its DER SubjectPublicKeyInfo), so a key id can never name two keys.
Private keys are never committed; only where the environment allows its own key
(``BundleSigners.own_key``) is one created on first use, with mode 0600.

**Who may sign** an environment's bundles is ``BundleSigners``: the ``bundle_signers``
the environment's trust file (``bundles/<env>.trust.json``, ``l7.trust``) pins. Where
the trust file says ``local_keys: false`` (staging, production) at least one signer must
be pinned and only pinned keys may sign, never one a deployment created itself; where
it says ``local_keys: true`` (local, dev) an empty list trusts the deployment's own key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from l7.errors import BundleError

__all__ = [
    "SIGNATURES_FILE",
    "SIGNING_ALG",
    "BundleSigners",
    "Signer",
    "bundle_scope",
    "canonical_json",
    "key_id",
    "load_or_create_signing_key",
    "load_public_key",
    "parse_signers",
    "signature_file_hash",
    "signer_of",
    "verify_bundle_signature",
]

SIGNING_ALG = "ES256"
SIGNATURES_FILE = ".signatures.json"
_MAX_MEMBER_BYTES = 64 << 20


def bundle_scope(env: str) -> str:
    """The ``scope`` claim binding a signature to one environment."""
    return f"l7/{env}"


@dataclass(frozen=True)
class Signer:
    """The public half of a bundle-signing key: what OPA and our verifier trust."""

    kid: str
    public_key_pem: str
    alg: str = SIGNING_ALG

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return load_public_key(self.public_key_pem.encode(), where=f"signer {self.kid}")

    def to_json(self) -> dict[str, str]:
        return {"kid": self.kid, "alg": self.alg, "public_key": self.public_key_pem}


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "l7b-" + hashlib.sha256(der).hexdigest()[:16]


def _public_pem(public_key: ec.EllipticCurvePublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def signer_of(public_key: ec.EllipticCurvePublicKey) -> Signer:
    return Signer(kid=key_id(public_key), public_key_pem=_public_pem(public_key))


def load_public_key(pem: bytes, *, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise BundleError(f"{where}: not a PEM public key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise BundleError(f"{where}: expected an ES256 (EC P-256) public key")
    return key


def load_or_create_signing_key(
    path: Path, *, create: bool = True
) -> tuple[ec.EllipticCurvePrivateKey, Signer]:
    """The ES256 private key at ``path`` (created 0600 if missing and ``create``), and its
    Signer. The public key is written beside it as ``<path>.pub`` (safe to share).

    Without ``create`` a missing key is a ``BundleError``: staging and production keys are
    made outside the repository by their holders, never by an engine on first use."""
    if not path.exists() and not create:
        raise BundleError(
            f"no bundle signing key at {path}: this environment's bundle signing keys are "
            "made outside the repository by their holders and pinned in its trust file; "
            "nothing creates one on first use"
        )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, path)  # never clobber a key another builder created meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise BundleError(
            f"bundle signing key {path} is readable by others (mode {mode:o}); "
            f"run 'chmod 600 {path}'"
        )
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise BundleError(f"{path}: not an unencrypted PEM private key: {e}") from e
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise BundleError(f"{path}: expected an ES256 (EC P-256) private key")
    signer = signer_of(loaded.public_key())
    pub = Path(str(path) + ".pub")
    if not pub.is_file() or pub.read_text() != signer.public_key_pem:
        pub.write_text(signer.public_key_pem)
    return loaded, signer


def parse_signers(raw: object, *, where: str) -> tuple[Signer, ...]:
    """Signer pins as written in a trust file: ``[{"kid": "l7b-...", "public_key": PEM}]``.

    Strict: exact fields, ES256 keys, each kid naming its key, no kid twice."""
    if not isinstance(raw, list):
        raise BundleError(f"{where} must be a list of {{'kid': str, 'public_key': PEM}}")
    out: list[Signer] = []
    for i, entry in enumerate(raw):
        if (
            not isinstance(entry, dict)
            or set(entry) != {"kid", "public_key"}
            or not isinstance(entry["kid"], str)
            or not isinstance(entry["public_key"], str)
        ):
            raise BundleError(f"{where}[{i}] must be {{'kid': str, 'public_key': PEM}}")
        pub = load_public_key(entry["public_key"].encode(), where=f"{where}[{i}]")
        if key_id(pub) != entry["kid"]:
            raise BundleError(
                f"{where}[{i}]: kid {entry['kid']!r} does not name its public key "
                f"(expected {key_id(pub)!r})"
            )
        if any(s.kid == entry["kid"] for s in out):
            raise BundleError(f"{where}: signer {entry['kid']} is pinned twice")
        out.append(Signer(kid=entry["kid"], public_key_pem=entry["public_key"]))
    return tuple(out)


@dataclass(frozen=True)
class BundleSigners:
    """Who may sign one environment's bundles: its trust file's ``bundle_signers``."""

    env: str
    pinned: tuple[Signer, ...]
    """The only keys allowed to sign (when non-empty)."""
    own_key: bool
    """With nothing pinned, trust the deployment's own key, created on first use
    (the trust file's ``local_keys``: local and dev only)."""
    source: str
    """The trust file the pins come from (named in every refusal)."""

    def require(self) -> None:
        """Refuse an environment that pins no signer yet may not use its own key."""
        if self.pinned or self.own_key:
            return
        raise BundleError(
            f"{self.source} pins no bundle signers for {self.env!r}, and {self.env} never "
            "trusts a key a deployment created itself: refusing to build or serve its "
            f"bundle (bundles/{self.env}.lock.json pins only the content). The holder of "
            f"the {self.env} signing key runs 'l7 bundle build --env {self.env} "
            f"--signing-key KEY --pin-signer' and commits {self.source} through review"
        )

    def check(self, signer: Signer) -> None:
        """Refuse ``signer`` unless this environment allows it."""
        self.require()
        if self.pinned and all(s.kid != signer.kid for s in self.pinned):
            pinned = ", ".join(s.kid for s in self.pinned)
            raise BundleError(
                f"the {self.env} bundle would be signed by {signer.kid}, but {self.source} "
                f"pins only the bundle signers {pinned}: sign with a pinned key "
                "(or pin this one through review)"
            )

    def trusted(self, signer: Signer | None) -> tuple[Signer, ...]:
        """The keys to verify a bundle with: the pins, else the deployment's own key."""
        self.require()
        if self.pinned:
            return self.pinned
        return (signer,) if signer is not None else ()


# -- OPA's file digests -----------------------------------------------------------------


class _Num(str):
    """A JSON number kept exactly as written (OPA hashes json.Number literals)."""


def _enc_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif o < 0x20 or o in (0x2028, 0x2029):
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _enc(v: Any) -> str:
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode())
        return "{" + ",".join(_enc_str(k) + ":" + _enc(x) for k, x in items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_enc(x) for x in v) + "]"
    if isinstance(v, _Num):
        return str.__str__(v)
    if isinstance(v, str):
        return _enc_str(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    raise TypeError(f"unexpected JSON value {v!r}")


def canonical_json(raw: bytes) -> bytes:
    """OPA's canonical form of a JSON document, the input to its file digest."""
    value = json.loads(raw, parse_int=_Num, parse_float=_Num)
    return _enc(value).encode()


def signature_file_hash(name: str, data: bytes) -> str:
    """The SHA-256 hex digest OPA signs for bundle file ``name`` with content ``data``."""
    base = name.rsplit("/", 1)[-1]
    if base.endswith(".json") or base == ".manifest":
        try:
            data = canonical_json(data)
        except ValueError as e:
            raise BundleError(f"bundle file {name} is not valid JSON: {e}") from e
    return hashlib.sha256(data).hexdigest()


# -- verification -----------------------------------------------------------------------


def _read_members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                name = m.name.lstrip("/")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise BundleError(f"{path}: member {m.name} is not a regular file")
                if m.size > _MAX_MEMBER_BYTES:
                    raise BundleError(f"{path}: member {m.name} is larger than 64 MiB")
                if name in members:
                    raise BundleError(f"{path}: member {name} appears twice")
                f = tar.extractfile(m)
                if f is None:
                    raise BundleError(f"{path}: member {m.name} cannot be read")
                members[name] = f.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise BundleError(f"{path} is not a readable bundle tarball: {e}") from e
    return members


def _b64json(part: str, what: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except ValueError as e:
        raise BundleError(f"bundle signature {what} is not base64url JSON") from e


def verify_bundle_signature(
    path: Path, trusted: Mapping[str, Signer], *, scope: str | None = None
) -> tuple[Signer, dict[str, str]]:
    """Check ``path``'s ``.signatures.json`` against ``trusted`` (kid -> Signer).

    Returns the signer and the signed ``file -> digest`` map; raises ``BundleError``
    naming the problem (and the file, for a digest mismatch) otherwise."""
    members = _read_members(path)
    raw = members.pop(SIGNATURES_FILE, None)
    if raw is None:
        raise BundleError(f"{path} is not signed: it has no {SIGNATURES_FILE}")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BundleError(f"{path}: {SIGNATURES_FILE} is not JSON") from e
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], str):
        raise BundleError(f"{path}: {SIGNATURES_FILE} must hold exactly one signature")
    if doc.get("plugin", "_default") != "_default":
        raise BundleError(f"{path}: signature plugin {doc.get('plugin')!r} is not supported")
    token = sigs[0]
    parts = token.split(".")
    if len(parts) != 3:
        raise BundleError(f"{path}: the bundle signature is not a compact JWS")
    header = _b64json(parts[0], "header")
    claims_unverified = _b64json(parts[1], "payload")
    if not isinstance(header, dict) or header.get("alg") != SIGNING_ALG:
        alg = header.get("alg") if isinstance(header, dict) else None
        raise BundleError(f"{path}: signature algorithm {alg!r}, expected {SIGNING_ALG}")
    kid = header.get("kid") or (
        claims_unverified.get("keyid") if isinstance(claims_unverified, dict) else None
    )
    if not isinstance(kid, str) or not kid:
        raise BundleError(f"{path}: the bundle signature names no key id")
    signer = trusted.get(kid)
    if signer is None:
        raise BundleError(
            f"{path}: signed by key {kid}, which is not trusted "
            f"(trusted: {', '.join(sorted(trusted)) or 'none'})"
        )
    try:
        claims = jwt.decode(
            token,
            signer.public_key(),
            algorithms=[SIGNING_ALG],
            options={"require": [], "verify_aud": False, "verify_iat": False},
        )
    except jwt.InvalidTokenError as e:
        raise BundleError(f"{path}: bundle signature by {kid} does not verify: {e}") from e
    if claims.get("keyid", kid) != kid:
        raise BundleError(f"{path}: signed keyid {claims.get('keyid')!r} differs from {kid!r}")
    if scope is not None and claims.get("scope") != scope:
        raise BundleError(
            f"{path}: signature scope {claims.get('scope')!r}, expected {scope!r} "
            "(a bundle signed for another environment)"
        )
    files = claims.get("files")
    if not isinstance(files, list):
        raise BundleError(f"{path}: signed claims carry no file list")
    signed: dict[str, str] = {}
    for entry in files:
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: malformed signed file entry {entry!r}")
        name, digest, alg = entry.get("name"), entry.get("hash"), entry.get("algorithm")
        if not isinstance(name, str) or not isinstance(digest, str) or alg != "SHA-256":
            raise BundleError(f"{path}: malformed signed file entry {entry!r}")
        name = name.lstrip("/")
        if name in signed:
            raise BundleError(f"{path}: {name} is listed twice in the signature")
        signed[name] = digest
    for name in sorted(signed):
        data = members.get(name)
        if data is None:
            raise BundleError(f"{path}: signed file {name} is missing from the bundle")
        actual = signature_file_hash(name, data)
        if actual != signed[name]:
            raise BundleError(
                f"{path}: {name} does not match its signature "
                f"(signed {signed[name][:12]}, actual {actual[:12]}); the bundle was altered"
            )
    unsigned = sorted(set(members) - set(signed))
    if unsigned:
        raise BundleError(f"{path}: files not covered by the signature: {', '.join(unsigned)}")
    return signer, signed
