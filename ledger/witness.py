"""A C2SP ``tlog-witness``: its own process, its own key, its own state.

``Witness`` keeps, per trusted log origin, the latest checkpoint it cosigned, in a state
file (``state.json``, mode 0600, in a mode 0700 directory, replaced atomically) and
answers the C2SP witness protocol over HTTP (``serve``; ``l7 witness serve`` and
``python -m ledger.witness``; 127.0.0.1 by default)::

    POST /add-checkpoint        body: "old <size>\\n", 0..63 base64 consistency proof lines,
                                "\\n", then a checkpoint signed note
      200  text/plain            the cosignature/v1 line ("— <name> <base64>\\n")
      400  text/plain            malformed request, or old size > checkpoint size
      403  text/plain            no signature by the log's trusted key
      404  text/plain            unknown origin
      409  text/x.tlog.size      "<size>\\n": old size is not the size last cosigned, or the
                                 same size with another root (a fork)
      422  text/plain            the consistency proof does not verify (a fork or rewrite)
    GET /latest?origin=<origin> (Layer-7 extension for monitors; C2SP leaves monitor
                                 retrieval open) the latest cosigned checkpoint note with
                                 this witness's cosignature appended; 404 if none

Checks follow the C2SP order. The check against the recorded size and the update of the
state happen under one lock, so two requests cannot roll the state back. Each refusal
of a log-signed checkpoint (a rewind, a size decrease, a fork, a bad proof) is logged as
an ERROR naming both sizes and roots, and appended as evidence to ``refused.jsonl`` in
the state directory: the witness never cosigns it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import load_private_key, parse_json_strict, save_private_key
from ledger.merkle import ProofInvalid, verify_consistency
from ledger.mtls import PeerIdentityError, WitnessTLS
from ledger.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    SignedNote,
    VerifierKey,
    check_key_name,
    cosign,
    parse_note,
    verify_note_signature,
)

__all__ = [
    "SIZE_CONTENT_TYPE",
    "Witness",
    "WitnessProcess",
    "WitnessResponse",
    "create_witness_server",
    "load_or_create_witness_key",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

SIZE_CONTENT_TYPE = "text/x.tlog.size"
_MAX_BODY = 64 * 1024
_MAX_PROOF = 63
_STATE_VERSION = 1


@dataclass(frozen=True)
class WitnessResponse:
    status: int
    content_type: str
    body: str


def _text(status: HTTPStatus, message: str) -> WitnessResponse:
    return WitnessResponse(int(status), "text/plain; charset=utf-8", message.rstrip("\n") + "\n")


def _b64hash(line: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except binascii.Error as e:
        raise ProofInvalid(f"proof line {line!r:.60} is not base64") from e
    if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != line:
        raise ProofInvalid(f"proof line {line!r:.60} is not one 32-byte hash in base64")
    return raw


def _size(text: str) -> int:
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ProofInvalid(f"a size is a decimal without leading zeroes, got {text!r:.40}")
    value = int(text)
    if value > 2**63 - 1:
        raise ProofInvalid(f"size {value} out of range")
    return value


@dataclass(frozen=True)
class _Head:
    """The first three lines of a checkpoint note (extension lines stay opaque)."""

    origin: str
    size: int
    root: bytes


def _head(note: SignedNote) -> _Head:
    lines = note.text[:-1].split("\n")
    if len(lines) < 3:
        raise ProofInvalid("a checkpoint has at least origin, size and root hash lines")
    return _Head(lines[0], _size(lines[1]), _b64hash(lines[2]))


def _parse_request(body: bytes) -> tuple[int, list[bytes], str, SignedNote, _Head]:
    """(old size, proof, note text, note, its head) of an add-checkpoint body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProofInvalid(f"the body is not UTF-8: {e}") from e
    split = text.find("\n\n")
    if split < 0:
        raise ProofInvalid("no empty line between the proof and the checkpoint")
    head_lines = text[:split].split("\n")
    note_text = text[split + 2 :]
    old_f = head_lines[0].split(" ")
    if len(old_f) != 2 or old_f[0] != "old":
        raise ProofInvalid(f"the first line is 'old <size>', got {head_lines[0]!r:.60}")
    old = _size(old_f[1])
    if len(head_lines) - 1 > _MAX_PROOF:
        raise ProofInvalid(f"at most {_MAX_PROOF} consistency proof lines")
    proof = [_b64hash(line) for line in head_lines[1:]]
    note = parse_note(note_text)
    return old, proof, note_text, note, _head(note)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or refuse one that group or others can reach."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"witness state directory {path} is mode {mode:04o}; it must be 0700 "
            f"(run: chmod 700 {path})"
        )
    return path


def load_or_create_witness_key(state_dir: Path) -> Ed25519PrivateKey:
    """The witness's Ed25519 key, ``<state_dir>/witness.pem`` (0600), created if missing."""
    path = _private_dir(state_dir) / "witness.pem"
    if not path.exists():
        save_private_key(path, Ed25519PrivateKey.generate())
    return load_private_key(path)


class Witness:
    """Cosigns consistent checkpoints of trusted logs; see the module docstring."""

    def __init__(
        self,
        name: str,
        private_key: Ed25519PrivateKey,
        logs: Sequence[VerifierKey],
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = check_key_name(name)
        self._key = private_key
        self.vkey = VerifierKey.for_private(name, ALG_COSIGNATURE_V1, private_key)
        self._logs: dict[str, VerifierKey] = {}
        for k in logs:
            if k.alg != ALG_ED25519:
                raise ValueError(f"log key {k.key_id} is not an Ed25519 note key")
            self._logs[k.name] = k
        self._dir = _private_dir(Path(state_dir))
        self._state_path = self._dir / "state.json"
        self._evidence = self._dir / "refused.jsonl"
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, dict[str, Any]] = self._load()

    # -- state -------------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        if not self._state_path.exists():
            return {}
        mode = stat.S_IMODE(self._state_path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(
                f"witness state {self._state_path} is mode {mode:04o}; it must be 0600"
            )
        doc = parse_json_strict(self._state_path.read_bytes())
        if not isinstance(doc, dict) or doc.get("version") != _STATE_VERSION:
            raise ProofInvalid(f"{self._state_path} is not a version {_STATE_VERSION} state file")
        logs = doc.get("logs")
        if not isinstance(logs, dict):
            raise ProofInvalid(f"{self._state_path}: 'logs' must be an object")
        for origin, entry in logs.items():
            note = parse_note(entry["note"])  # raises on a malformed note
            head = _head(note)
            if head.origin != origin or head.size != entry["size"]:
                raise ProofInvalid(f"{self._state_path}: the entry for {origin!r} is inconsistent")
        return logs

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        data = json.dumps({"version": _STATE_VERSION, "logs": self._state}, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)
        _fsync_dir(self._dir)

    def _refuse(self, status: HTTPStatus, origin: str, why: str, note: str) -> WitnessResponse:
        """Log a refusal of a log-signed checkpoint and keep it as evidence."""
        log.error("witness %s REFUSED a checkpoint of %s: %s", self.name, origin, why)
        record = {"at": int(self._clock()), "origin": origin, "status": int(status), "why": why}
        record["note"] = note
        try:
            fd = os.open(self._evidence, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            log.exception("witness: could not record the refusal as evidence")
        return _text(status, why)

    def latest(self, origin: str) -> str | None:
        """The latest cosigned checkpoint of ``origin`` with this witness's cosignature."""
        with self._lock:
            entry = self._state.get(origin)
            return None if entry is None else str(entry["note"])

    def size(self, origin: str) -> int:
        with self._lock:
            entry = self._state.get(origin)
            return 0 if entry is None else int(entry["size"])

    # -- add-checkpoint ----------------------------------------------------------------------

    def add_checkpoint(self, body: bytes) -> WitnessResponse:
        """One C2SP add-checkpoint request; the response to send."""
        # 1. Parse: "old N", proof lines, an empty line, a signed note.
        try:
            old, proof, note_text, note, cp = _parse_request(body)
        except ProofInvalid as e:
            return _text(HTTPStatus.BAD_REQUEST, f"malformed add-checkpoint request: {e}")
        # 2. A trusted log, and its signature (unknown signatures are ignored).
        key = self._logs.get(cp.origin)
        if key is None:
            return _text(HTTPStatus.NOT_FOUND, f"unknown log origin {cp.origin!r}")
        signed = False
        for sig in note.signatures:
            if (sig.name, sig.key_hash) == (key.name, key.key_hash):
                try:
                    verify_note_signature(note.text, sig, key)
                    signed = True
                except ProofInvalid:
                    pass
        if not signed:
            return _text(
                HTTPStatus.FORBIDDEN,
                f"no valid signature by the trusted key {key.key_id} of {cp.origin!r}",
            )
        with self._lock:
            entry = self._state.get(cp.origin)
            known = 0 if entry is None else int(entry["size"])
            known_root = None if entry is None else _head(parse_note(entry["note"])).root
            # 3. The old size is at most the checkpoint size.
            if old > cp.size:
                return self._refuse(
                    HTTPStatus.BAD_REQUEST,
                    cp.origin,
                    f"old size {old} is larger than the checkpoint's size {cp.size}: the log "
                    f"presents a smaller tree than before (size decrease / rewind); this "
                    f"witness last cosigned size {known}",
                    note_text,
                )
            # 4. The old size is the size last cosigned.
            if old != known:
                if cp.size < known:
                    self._refuse(
                        HTTPStatus.CONFLICT,
                        cp.origin,
                        f"checkpoint of size {cp.size} is smaller than size {known} this "
                        f"witness already cosigned: the log was rewound",
                        note_text,
                    )
                return WitnessResponse(int(HTTPStatus.CONFLICT), SIZE_CONTENT_TYPE, f"{known}\n")
            # 5. Same size: an empty proof and the same root, else a fork.
            if old == cp.size:
                if proof:
                    return _text(HTTPStatus.BAD_REQUEST, "a proof between equal sizes is empty")
                if known_root is not None and cp.root != known_root:
                    self._refuse(
                        HTTPStatus.CONFLICT,
                        cp.origin,
                        f"fork at size {cp.size}: root {cp.root.hex()} differs from the root "
                        f"{known_root.hex()} this witness cosigned",
                        note_text,
                    )
                    return WitnessResponse(
                        int(HTTPStatus.CONFLICT), SIZE_CONTENT_TYPE, f"{known}\n"
                    )
            # 6. The consistency proof from the cosigned checkpoint.
            elif old == 0:
                if proof:
                    return _text(HTTPStatus.BAD_REQUEST, "the proof from size 0 must be empty")
            else:
                assert known_root is not None
                try:
                    verify_consistency(old, cp.size, known_root, cp.root, proof)
                except ProofInvalid as e:
                    return self._refuse(
                        HTTPStatus.UNPROCESSABLE_ENTITY,
                        cp.origin,
                        f"the consistency proof from size {old} (root {known_root.hex()}, "
                        f"cosigned) to size {cp.size} (root {cp.root.hex()}) does not verify: "
                        f"the log forked or rewrote its history ({e})",
                        note_text,
                    )
            # 7. Cosign, persist, answer.
            cosig = cosign(note.text, self.name, self._key, int(self._clock()))
            own = SignedNote(note.text, (*note.signatures, cosig.note_signature())).encode()
            previous = self._state.get(cp.origin)
            self._state[cp.origin] = {"size": cp.size, "note": own}
            try:
                self._save()
            except OSError as e:
                if previous is None:
                    del self._state[cp.origin]
                else:
                    self._state[cp.origin] = previous
                log.exception("witness: could not persist the state")
                return _text(HTTPStatus.SERVICE_UNAVAILABLE, f"state not persisted: {e}")
        log.info("witness %s cosigned %s size %d", self.name, cp.origin, cp.size)
        return WitnessResponse(int(HTTPStatus.OK), "text/plain; charset=utf-8", cosig.line())


# -- HTTP ---------------------------------------------------------------------------------------


def _handler(witness: Witness, tls: WitnessTLS | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "layer7-witness"
        timeout = 30  # a peer that stalls the handshake or the request holds one thread
        peer: str | None = None

        def setup(self) -> None:
            if tls is not None:  # handshake here, in this connection's thread
                self.request.settimeout(self.timeout)
                self.request.do_handshake()
                try:
                    self.peer = tls.check_peer(self.request)
                except PeerIdentityError as e:
                    log.warning("witness: refused %s: %s", self.client_address[0], e)
                    self.peer = None
            super().setup()

        def _allowed(self) -> bool:
            if tls is None or self.peer is not None:
                return True
            refusal = "peer_not_allowed: this peer may not call a witness"
            self._send(_text(HTTPStatus.FORBIDDEN, refusal))
            self.close_connection = True
            return False

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("witness http: " + format, *args)

        def _send(self, r: WitnessResponse) -> None:
            data = r.body.encode("utf-8")
            self.send_response(r.status)
            self.send_header("Content-Type", r.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if not self._allowed():
                return
            if urlsplit(self.path).path != "/add-checkpoint":
                self._send(_text(HTTPStatus.NOT_FOUND, f"no such endpoint {self.path!r:.80}"))
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._send(_text(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required"))
                return
            if not 0 < length <= _MAX_BODY:
                self._send(_text(HTTPStatus.BAD_REQUEST, f"body must be 1..{_MAX_BODY} bytes"))
                self.close_connection = True
                return
            self._send(witness.add_checkpoint(self.rfile.read(length)))

        def do_GET(self) -> None:
            if not self._allowed():
                return
            parts = urlsplit(self.path)
            if parts.path == "/healthz":
                self._send(_text(HTTPStatus.OK, "ok"))
                return
            if parts.path != "/latest":
                self._send(_text(HTTPStatus.NOT_FOUND, f"no such endpoint {parts.path!r:.80}"))
                return
            origins = parse_qs(parts.query).get("origin", [])
            if len(origins) != 1:
                self._send(_text(HTTPStatus.BAD_REQUEST, "give exactly one ?origin="))
                return
            note = witness.latest(origins[0])
            if note is None:
                self._send(_text(HTTPStatus.NOT_FOUND, f"nothing cosigned for {origins[0]!r}"))
                return
            self._send(WitnessResponse(200, "text/plain; charset=utf-8", note))

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed handshake (no or a foreign certificate, plaintext) lands here
        log.warning("witness: connection from %s failed: %s", client_address[0], sys.exc_info()[1])


def create_witness_server(
    addr: str, witness: Witness, *, tls: WitnessTLS | None = None
) -> tuple[ThreadingHTTPServer, int]:
    """A not-yet-serving HTTP server for ``witness`` on ``addr`` (port 0: a free port);
    with ``tls`` (:func:`ledger.mtls.witness_server_tls`) HTTPS that requires a client
    certificate from our CA and serves only ``tls.accepts``."""
    host, _, port = addr.rpartition(":")
    server = _Server((host or "127.0.0.1", int(port)), _handler(witness, tls))
    if tls is not None:
        server.socket = tls.context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return server, int(server.server_address[1])


def serve(
    witness: Witness,
    addr: str,
    *,
    stop: threading.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    tls: WitnessTLS | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop``); prints the address and verifier key."""
    import signal

    server, port = create_witness_server(addr, witness, tls=tls)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="witness-http", daemon=True)
    thread.start()
    host = addr.rpartition(":")[0] or "127.0.0.1"
    scheme = "https" if tls is not None else "http"
    print(f"Layer-7 witness {witness.name} on {scheme}://{host}:{port}", flush=True)
    print(f"witness key: {witness.vkey.encode()}", flush=True)
    if on_ready is not None:
        on_ready(port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


class WitnessProcess:
    """A witness running as its own OS process (``python -m ledger.witness``), started
    and stopped by its owner (``l7 serve`` starts one for the local environment)."""

    def __init__(
        self,
        state_dir: Path,
        logs: Sequence[VerifierKey],
        *,
        name: str = "layer7.local/witness",
        addr: str = "127.0.0.1:0",
        log_path: Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.logs = list(logs)
        self.name = name
        self.addr = addr
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.vkey: VerifierKey | None = None

    def start(self, *, timeout_s: float = 30.0) -> WitnessProcess:
        """Start the process and wait for it to print its address and key."""
        self.url, self.vkey = "", None
        argv = [sys.executable, "-m", "ledger.witness", "--state-dir", str(self.state_dir)]
        argv += ["--name", self.name, "--addr", self.addr]
        for k in self.logs:
            argv += ["--log", k.encode()]
        log_file = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log_file or subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        finally:
            if log_file is not None:
                log_file.close()
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline and (not self.url or self.vkey is None):
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("Layer-7 witness ") and " on " in line:
                self.url = line.rsplit(" on ", 1)[1].strip()
            elif line.startswith("witness key: "):
                self.vkey = VerifierKey.decode(line.removeprefix("witness key: ").strip())
        if not self.url or self.vkey is None:
            self.stop()
            raise OSError(
                f"the witness process did not start (state {self.state_dir}"
                + (f"; see {self.log_path})" if self.log_path else ")")
            )
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _log_keys(values: Sequence[str]) -> list[VerifierKey]:
    out = []
    for v in values:
        text = Path(v).read_text(encoding="utf-8").strip() if Path(v).is_file() else v
        out.append(VerifierKey.decode(text))
    return out


def build_witness(
    state_dir: Path, name: str, logs: Sequence[str], *, key_file: Path | None = None
) -> Witness:
    """The witness a command line describes (``logs``: vkey strings or files holding one)."""
    key = load_private_key(key_file) if key_file else load_or_create_witness_key(state_dir)
    return Witness(name, key, _log_keys(logs), state_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", required=True, help="witness state (0700), key and evidence")
    p.add_argument("--name", default="layer7.local/witness", help="witness key name")
    p.add_argument(
        "--log",
        action="append",
        required=True,
        help="a trusted log's verifier key (vkey string, or a file holding one); repeatable",
    )
    p.add_argument("--key", help="witness Ed25519 key (PEM, 0600); default <state-dir>/witness.pem")
    p.add_argument("--addr", default="127.0.0.1:50081", help="listen address (loopback)")


def run(a: argparse.Namespace, *, tls: WitnessTLS | None = None) -> int:
    w = build_witness(Path(a.state_dir), a.name, a.log, key_file=Path(a.key) if a.key else None)
    (Path(a.state_dir) / "witness.vkey").write_text(w.vkey.encode() + "\n", encoding="utf-8")
    return serve(w, a.addr, tls=tls)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ledger.witness", description="A C2SP tlog-witness for Layer-7 ledgers."
    )
    add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(a)
    except (ProofInvalid, ValueError, OSError) as e:
        print(f"witness: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
