"""A real OpenBao dev server on loopback: OIDC issuer, users, transit (tests and l7 demo).

``OpenBaoDev`` runs ``bao server -dev`` on 127.0.0.1:<free port> as a child (root token
from ``secrets``, passed in the child's environment, never stored in a token helper) and
configures it as Layer-7's identity provider (DESIGN §3):

* ``identity/oidc/config``: ``issuer`` = the server URL, so tokens carry
  ``iss = <url>/v1/identity/oidc`` (``OpenBaoDev.issuer``).
* ``identity/oidc/key/l7-<alg>``: one named key per algorithm (default RS256; ES256 and
  EdDSA also work), ``allowed_client_ids = [AUDIENCE]``.
* ``identity/oidc/role/l7-<alg>[-<ttl>]``: ``client_id = AUDIENCE`` (the ``aud``),
  ``template = CLAIMS_TEMPLATE``; read by a user at ``identity/oidc/token/<role>``.
* users: ``userpass`` login + an entity of the same name (metadata ``level``, ``team``,
  ``scopes`` as a comma-separated string) + an alias on the userpass mount; each role
  is an identity group the entity belongs to. Tokens are minted with the user's own
  Vault token (``identity/oidc/token/*`` needs a caller with an entity; root has none).
  Verify them with ``l7.identity.claim_map_for_openbao()`` (subject = entity name).

Taking the issuer down, two ways:

* ``seal()`` / ``unseal()``: every API path, JWKS included, answers 503 while sealed;
  state (keys, users, tokens) survives, so tokens minted before still verify after.
* ``stop()`` / ``start()``: connection refused while stopped. A dev server keeps its state
  in memory, so ``start()`` brings up a new server on the same port and root token and
  replays the configuration and users; OIDC and transit keys are NEW, tokens minted
  before no longer verify, and transit keys must be created again.

A dev server is for tests and the demo only: it keeps everything in memory and
runs unsealed with a root token. The pytest fixtures live in tests/integration/openbao.py.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import hvac
import requests

from l7.errors import ConfigError
from l7.policy.opa_process import free_port

__all__ = [
    "AUDIENCE",
    "CLAIMS_TEMPLATE",
    "OpenBaoDev",
    "find_bao",
]

AUDIENCE = "layer7"
USER_POLICY = "l7-user"
# OpenBao renders each {{...}} as a JSON value: strings for name and metadata (a missing
# metadata key renders ""), a list for group names (null when the entity has none).
CLAIMS_TEMPLATE = (
    '{"name": {{identity.entity.name}}, '
    '"level": {{identity.entity.metadata.level}}, '
    '"team": {{identity.entity.metadata.team}}, '
    '"scopes": {{identity.entity.metadata.scopes}}, '
    '"roles": {{identity.entity.groups.names}}}'
)
# A user may mint identity tokens and sign with the transit key named after its entity.
_USER_POLICY_HCL = """
path "identity/oidc/token/*" { capabilities = ["read"] }
path "transit/sign/{{identity.entity.name}}" { capabilities = ["update"] }
"""
_UNSEAL_RE = re.compile(r"Unseal Key: (\S+)")


def find_bao() -> Path:
    """The OpenBao CLI: $L7_BAO_BIN, next to this interpreter (.venv/bin/bao), or PATH."""
    for c in (
        os.environ.get("L7_BAO_BIN"),
        str(Path(sys.executable).parent / "bao"),
        shutil.which("bao"),
    ):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise ConfigError(
        "no OpenBao binary (looked at $L7_BAO_BIN, .venv/bin/bao, PATH); run 'make setup'"
    )


@dataclass(frozen=True)
class _User:
    name: str
    password: str
    metadata: dict[str, str]
    roles: tuple[str, ...]


class OpenBaoDev:
    """An OpenBao dev server child on 127.0.0.1, configured as an OIDC issuer."""

    def __init__(
        self,
        *,
        bao_bin: Path | None = None,
        port: int | None = None,
        work_dir: Path | None = None,
        key_algorithm: str = "RS256",
    ) -> None:
        self.bao_bin = bao_bin or find_bao()
        self.port = port or free_port()
        self.root_token = secrets.token_urlsafe(24)
        self.key_algorithm = key_algorithm
        self._work_dir = work_dir or Path(tempfile.mkdtemp(prefix="l7-openbao-"))
        self.log_path = self._work_dir / f"openbao-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._users: dict[str, _User] = {}
        self._user_tokens: dict[str, str] = {}
        self._roles: set[str] = set()
        self._unseal_key: str | None = None
        self.client = hvac.Client(url=self.url, token=self.root_token)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/v1/identity/oidc"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/v1/identity/oidc/.well-known/keys"

    @property
    def audience(self) -> str:
        return AUDIENCE

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, ready_timeout_s: float = 30.0) -> OpenBaoDev:
        """Start the server, wait until healthy, configure the issuer, replay users."""
        if self.running:
            return self
        env = dict(os.environ)
        for k in ("BAO_TOKEN", "VAULT_TOKEN"):
            env.pop(k, None)
        env.update(
            BAO_ADDR=self.url,
            VAULT_ADDR=self.url,
            BAO_DEV_ROOT_TOKEN_ID=self.root_token,  # kept out of argv / ps
            HOME=str(self._work_dir),  # no token helper file in the real HOME
        )
        args = [
            str(self.bao_bin),
            "server",
            "-dev",
            "-dev-no-store-token",
            f"-dev-listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self._wait_healthy(ready_timeout_s)
        self._unseal_key = self._read_unseal_key()
        self._user_tokens.clear()
        self._roles.clear()
        self._configure()
        # Replay one user at a time: group membership is rebuilt from the users created so
        # far, so a role shared by several users must not name one not yet re-created.
        users = list(self._users.values())
        self._users.clear()
        for user in users:
            self._users[user.name] = user
            self._create_user(user)
        return self

    def stop(self) -> None:
        """Terminate the server (kill if it does not exit); its state is lost."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def seal(self) -> None:
        """Seal: every endpoint (JWKS included) answers 503; state is kept."""
        self.client.sys.seal()

    def unseal(self, *, ready_timeout_s: float = 30.0) -> None:
        if self._unseal_key is None:
            raise RuntimeError("no unseal key captured from the dev server output")
        self.client.sys.submit_unseal_key(self._unseal_key)
        self._wait_healthy(ready_timeout_s)

    def __enter__(self) -> OpenBaoDev:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"OpenBao exited early; log:\n{self._log_tail()}")
            try:
                if requests.get(f"{self.url}/v1/sys/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"OpenBao not healthy after {timeout_s}s; log:\n{self._log_tail()}")

    def _read_unseal_key(self) -> str | None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            matches = _UNSEAL_RE.findall(self.log_path.read_text(errors="replace"))
            if matches:
                return str(matches[-1])
            time.sleep(0.05)
        return None

    def _log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(
            line for line in lines[-n:] if "Token" not in line and "Unseal Key" not in line
        )

    # -- OIDC issuer -----------------------------------------------------------------

    def _configure(self) -> None:
        api = self.client.adapter
        api.post("/v1/identity/oidc/config", json={"issuer": self.url})
        self.client.sys.enable_auth_method("userpass")
        self.client.sys.create_or_update_policy(USER_POLICY, _USER_POLICY_HCL)
        self.ensure_role(self.key_algorithm)

    def ensure_key(self, algorithm: str) -> str:
        """The named OIDC key for ``algorithm`` (RS256, ES256, EdDSA, ...), created once."""
        name = f"l7-{algorithm.lower()}"
        self.client.adapter.post(
            f"/v1/identity/oidc/key/{name}",
            json={
                "algorithm": algorithm,
                "allowed_client_ids": [AUDIENCE],
                "rotation_period": "24h",
                "verification_ttl": "24h",
            },
        )
        return name

    def ensure_role(self, algorithm: str | None = None, ttl: str | None = None) -> str:
        """An OIDC role signing with ``algorithm``'s key, ``aud`` = AUDIENCE, token ttl
        ``ttl`` (e.g. "2s", default 1h)."""
        alg = algorithm or self.key_algorithm
        name = f"l7-{alg.lower()}" + (f"-{ttl}" if ttl else "")
        if name in self._roles:
            return name
        key = self.ensure_key(alg)
        self.client.adapter.post(
            f"/v1/identity/oidc/role/{name}",
            json={
                "key": key,
                "client_id": AUDIENCE,
                "ttl": ttl or "1h",
                "template": base64.b64encode(CLAIMS_TEMPLATE.encode()).decode(),
            },
        )
        self._roles.add(name)
        return name

    def rotate_key(self, algorithm: str | None = None) -> None:
        """Rotate the OIDC key. OpenBao publishes the *next* key in the JWKS ahead of
        time, so one rotation signs with an already-published kid; rotate twice to make
        new tokens carry a kid a verifier has never seen."""
        name = self.ensure_key(algorithm or self.key_algorithm)
        self.client.adapter.post(f"/v1/identity/oidc/key/{name}/rotate", json={})

    def make_user(
        self,
        name: str,
        level: int | str | None = 3,
        *,
        team: str | None = None,
        scopes: Sequence[str] = (),
        roles: Sequence[str] = (),
        metadata: dict[str, str] | None = None,
    ) -> None:
        """An entity ``name`` with metadata (level, team, scopes joined by ","), in one
        identity group per role, that logs in with userpass. ``level=None`` omits it."""
        md = dict(metadata or {})
        if level is not None:
            md["level"] = str(level)
        if team is not None:
            md["team"] = team
        if scopes:
            md["scopes"] = ",".join(scopes)
        user = _User(name, secrets.token_urlsafe(16), md, tuple(roles))
        self._users[name] = user
        self._create_user(user)

    def _create_user(self, user: _User) -> None:
        api = self.client.adapter
        api.post(
            f"/v1/auth/userpass/users/{user.name}",
            json={"password": user.password, "token_policies": USER_POLICY},
        )
        api.post(f"/v1/identity/entity/name/{user.name}", json={"metadata": user.metadata})
        entity_id = self._entity_id(user.name)
        accessor = self.client.sys.list_auth_methods()["data"]["userpass/"]["accessor"]
        aliases = api.get(f"/v1/identity/entity/id/{entity_id}")["data"].get("aliases") or []
        if not any(a["mount_accessor"] == accessor for a in aliases):
            api.post(
                "/v1/identity/entity-alias",
                json={"name": user.name, "canonical_id": entity_id, "mount_accessor": accessor},
            )
        for role in {r for u in self._users.values() for r in u.roles}:
            members = [self._entity_id(u.name) for u in self._users.values() if role in u.roles]
            api.post(f"/v1/identity/group/name/{role}", json={"member_entity_ids": members})
        self._user_tokens.pop(user.name, None)

    def _entity_id(self, name: str) -> str:
        data: dict[str, Any] = self.client.adapter.get(f"/v1/identity/entity/name/{name}")["data"]
        return str(data["id"])

    def grant_read(self, name: str, policy: str, paths: Sequence[str]) -> None:
        """An ACL policy ``policy`` reading ``paths``, attached to user ``name``'s entity:
        the user's own OpenBao capability (what the gateway's ``check_access`` asks)."""
        hcl = "\n".join(f'path "{p}" {{ capabilities = ["read"] }}' for p in paths)
        self.client.sys.create_or_update_policy(name=policy, policy=hcl)
        api = self.client.adapter
        entity = api.get(f"/v1/identity/entity/name/{name}")["data"]
        policies = sorted({*(entity.get("policies") or []), policy})
        api.post(f"/v1/identity/entity/id/{entity['id']}", json={"policies": policies})

    def user_token(self, name: str) -> str:
        """The user's own Vault token (userpass login), cached."""
        if name not in self._user_tokens:
            user = self._users[name]
            login = self.client.auth.userpass.login(user.name, user.password, use_token=False)
            self._user_tokens[name] = str(login["auth"]["client_token"])
        return self._user_tokens[name]

    def token_for(self, name: str, *, ttl: str | None = None, algorithm: str | None = None) -> str:
        """An OIDC JWT minted by OpenBao for user ``name`` with the user's own token."""
        role = self.ensure_role(algorithm, ttl)
        as_user = hvac.Client(url=self.url, token=self.user_token(name))
        resp = as_user.adapter.get(f"/v1/identity/oidc/token/{role}")
        return str(resp["data"]["token"])

    # -- transit ---------------------------------------------------------------------

    def enable_transit(self) -> None:
        if "transit/" not in self.client.sys.list_mounted_secrets_engines()["data"]:
            self.client.sys.enable_secrets_engine("transit")

    def create_transit_key(self, name: str, type: str = "ed25519") -> None:
        self.client.secrets.transit.create_key(name, key_type=type)

    def transit_sign(self, name: str, data: bytes, token: str | None = None) -> str:
        """``vault:vN:<base64 signature>`` over ``data``; as root unless ``token`` is given
        (a user token may sign only with the key named after its entity)."""
        signer = self.client if token is None else hvac.Client(url=self.url, token=token)
        resp = signer.secrets.transit.sign_data(name, hash_input=base64.b64encode(data).decode())
        return str(resp["data"]["signature"])

    def transit_public_key(self, name: str, version: int = 1) -> bytes:
        """The raw public key of one version (32 bytes for ed25519)."""
        keys = self.client.secrets.transit.read_key(name)["data"]["keys"]
        return base64.b64decode(keys[str(version)]["public_key"])

    def rotate_transit_key(self, name: str) -> None:
        self.client.secrets.transit.rotate_key(name)
