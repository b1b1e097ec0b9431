"""A fake OCI registry for the bad-input rows (tests/unit/test_bad_inputs.py): serves manifests and
blobs from dicts, and can answer every request with 401 (a Basic challenge, or a Bearer
challenge whose token endpoint refuses). The real registry's behaviour is tested in
tests/integration/test_oci_registry.py; this one states the broken cases as data."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(layers: list[dict[str, Any]], *, media: str = OCI_MANIFEST) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media,
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                  "digest": digest(b"{}"), "size": 2},
                       "layers": layers}, sort_keys=True).encode()


def layer(data: bytes, media: str = "application/vnd.oci.image.layer.v1.tar", *,
          named: str | None = None) -> dict[str, Any]:
    return {"mediaType": media, "digest": named or digest(data), "size": len(data)}


class FakeRegistry:
    """``manifests``: "repo:reference" → body; ``blobs``: digest → bytes (served under any
    repository). ``challenge``: None, "basic" or "bearer" (the token endpoint answers 401)."""

    def __init__(self, *, challenge: str | None = None) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.challenge = challenge
        self.requests: list[tuple[str, bool]] = []  # path, had Authorization
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes = b"",
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append((h.path, "Authorization" in h.headers))
        if h.path.startswith("/token"):
            return self._send(h, 401)
        if self.challenge == "basic":
            return self._send(h, 401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        if self.challenge == "bearer":
            return self._send(h, 401, headers={"WWW-Authenticate": (
                f'Bearer realm="http://{self.address}/token",service="fake",'
                f'scope="repository:disks/x:pull"')})
        parts = h.path.split("/")
        if len(parts) >= 5 and parts[-2] == "manifests":
            body = self.manifests.get(f"{'/'.join(parts[2:-2])}:{parts[-1]}")
            if body is not None:
                media = json.loads(body).get("mediaType", OCI_MANIFEST)
                return self._send(h, 200, body, {"Content-Type": media,
                                                 "Docker-Content-Digest": digest(body)})
        if len(parts) >= 5 and parts[-2] == "blobs" and parts[-1] in self.blobs:
            return self._send(h, 200, self.blobs[parts[-1]],
                              {"Content-Type": "application/octet-stream"})
        return self._send(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}',
                          {"Content-Type": "application/json"})

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
