"""A loopback bundle service for our OPA child: the signed bundle file, served over HTTP.

OPA loads a ``--bundle`` file once, and then reports nothing about it in ``/v1/status``.
Served through its bundle plugin instead, OPA re-downloads the file on every poll (a
``304 Not Modified`` when its ETag is unchanged), verifies the signature and every file
digest each time it changes, and reports in ``/v1/status`` the active revision, the last
successful activation and the last error. So a byte changed in the bundle file on disk is
refused by OPA on its next poll and shows up as a status error, which makes the engine
deny with ``policy_store_degraded`` (see ``l7.policy.readiness``), with nothing restarted.

The file is read on every request (no cache: what OPA gets is what is on disk now). OPA's
status reports (``POST /status``) are accepted and discarded: we read ``/v1/status``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["BUNDLE_RESOURCE", "BundleServer"]

log = logging.getLogger(__name__)

BUNDLE_RESOURCE = "bundles/l7.tar.gz"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/" + BUNDLE_RESOURCE:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            body = self.server.bundle_path.read_bytes()
        except OSError as e:
            log.warning("bundle server: cannot read %s: %s", self.server.bundle_path, e.strerror)
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE)
            return
        etag = '"' + hashlib.sha256(body).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        self.send_response(HTTPStatus.NO_CONTENT)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("bundle server: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, bundle_path: Path) -> None:
        self.bundle_path = bundle_path
        super().__init__(("127.0.0.1", 0), _Handler)


class BundleServer:
    """Serve ``bundle_path`` at ``<url>/bundles/l7.tar.gz`` on a free loopback port."""

    def __init__(self, bundle_path: Path) -> None:
        self.bundle_path = bundle_path
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("bundle server not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> BundleServer:
        self._server = _Server(self.bundle_path)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="l7-bundle-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
