"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8), started here on
a free port with its storage in a temporary directory, over HTTPS with
:class:`tests.tlsfixtures.TLSFiles` or plain HTTP, optionally behind htpasswd (Basic) auth or
token (Bearer) auth with :class:`TokenServer`::

    with Registry(tmp_path, users={"ci": "secret"}) as reg:
        push(image, parse_reference(f"oci://{reg.address}/disks/x:1"), ...)

A missing binary is a skip, or under ``make test`` a failure (tests/hostreq.py); once it is
present, a failure to start is a failure, with the registry's log in the message.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from tests import hostreq
from tests.pgcluster import free_port
from tests.tlsfixtures import TLSFiles

BINARY = "docker-registry"
SERVICE = "pyinit-test-registry"
ISSUER = "pyinit-test-token-server"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A tiny Bearer token server (the distribution token spec): Basic credentials in, an RS256
    JWT out (signed with the ``openssl`` CLI), its certificate in the ``x5c`` header; the
    registry trusts that certificate (``rootcertbundle``). Grants every action asked for to
    known users and ``pull`` to anonymous requests when ``anonymous_pull``."""

    def __init__(self, workdir: Path, users: dict[str, str], *,
                 anonymous_pull: bool = False) -> None:
        hostreq.need("openssl")
        self.users, self.anonymous_pull = users, anonymous_pull
        self.key = workdir / "token-key.pem"
        self.bundle = workdir / "token-ca.pem"  # the registry's rootcertbundle
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={ISSUER}", "-keyout", str(self.key),
                        "-out", str(self.bundle)], check=True, capture_output=True)
        self.der = subprocess.run(["openssl", "x509", "-in", str(self.bundle), "-outform", "DER"],
                                  check=True, capture_output=True).stdout
        self.issued: list[dict[str, Any]] = []  # the claims of every token handed out
        self.asked = 0  # token requests so far
        self.unavailable: set[int] = set()  # which of them (1-based) to answer 503
        self.ttl = 300
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer._answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        self.asked += 1
        if self.asked in self.unavailable:
            h.send_response(503)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        query = parse_qs(urlsplit(h.path).query)
        user: str | None = None
        header = h.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                h.send_response(401)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            granted = actions.split(",") if user else \
                ["pull"] if self.anonymous_pull and "pull" in actions.split(",") else []
            access.append({"type": kind, "name": name, "actions": granted})
        body = json.dumps({"token": self.token(user or "", access)}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + self.ttl,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        self.issued.append(claims)
        head = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.der).decode()]}
        signing = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing.encode(), check=True, capture_output=True).stdout
        return f"{signing}.{_b64(sig)}"

    def start(self) -> TokenServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registry:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None,
                 token: TokenServer | None = None, host: str = "127.0.0.1",
                 tls: TLSFiles | None = None) -> None:
        hostreq.need(BINARY, *(["htpasswd"] if users is not None else []))
        self.dir = workdir / "registry"
        self.storage = self.dir / "storage"
        self.storage.mkdir(parents=True)
        self.port = free_port()
        self.host = host
        self.log = self.dir / "registry.log"
        auth = ""
        if users is not None:
            htpasswd = self.dir / "htpasswd"
            for i, (name, password) in enumerate(users.items()):
                subprocess.run(["htpasswd", "-B", "-b", *(["-c"] if i == 0 else []),
                                str(htpasswd), name, password], check=True,
                               capture_output=True)
            auth = f"auth:\n  htpasswd:\n    realm: pyinit-test\n    path: {htpasswd}\n"
        elif token is not None:
            auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: {SERVICE}\n"
                    f"    issuer: {ISSUER}\n    rootcertbundle: {token.bundle}\n")
        self.tls = tls
        listen = f"http:\n  addr: {host}:{self.port}\n  secret: pyinit-test-secret\n"
        if tls is not None:
            listen += f"  tls:\n    certificate: {tls.cert}\n    key: {tls.key}\n"
        self.config = self.dir / "config.yml"
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            + listen + auth)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port, as an oci:// reference names it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def blob_path(self, digest: str) -> Path:
        algo, hexpart = digest.split(":")
        return (self.storage / "docker" / "registry" / "v2" / "blobs" / algo / hexpart[:2]
                / hexpart / "data")

    def start(self) -> Registry:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([BINARY, "serve", str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{BINARY} exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text()}")
            try:
                status = requests.get(f"{self.url}/v2/", timeout=2, verify=str(self.tls.ca)
                                      if self.tls else True).status_code
                if status in (200, 401):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{BINARY} did not answer within 30 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
