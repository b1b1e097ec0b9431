"""pyinit.oci.registry.RegistryAuth against loopback servers: one answer to a 401, never a
loop; the Authorization header never follows a redirect to another host (the blob store)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from pyinit.errors import FetchError
from pyinit.oci.parse import Credentials, parse_reference
from pyinit.oci.registry import RegistryAuth


class Recorder:
    """A loopback server answering from ``answer(path, headers) -> (status, headers, body)``
    and recording (path, Authorization) of every request."""

    def __init__(self, answer: Any) -> None:
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self.path, self.headers)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])


@pytest.fixture
def servers() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for s in made:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_a_registry_that_answers_401_forever_gets_one_retry(servers: list[Recorder]) -> None:
    reg = Recorder(lambda path, h: (401, {"WWW-Authenticate": 'Basic realm="r"'}, b""))
    servers.append(reg)
    ref = parse_reference(f"oci://127.0.0.1:{reg.port}/disks/x:1")
    with requests.Session() as session:
        auth = RegistryAuth(session, ref, credentials=Credentials("ci", "pw"))
        resp = session.get(f"http://127.0.0.1:{reg.port}/v2/disks/x/manifests/1", auth=auth)
    assert resp.status_code == 401 and auth.refused == 1
    assert [a for _, a in reg.seen] == [None, Credentials("ci", "pw").basic()]


def test_bearer_token_then_blob_redirect_drops_authorization(servers: list[Recorder]) -> None:
    store = Recorder(lambda path, h: (200, {}, b"blob bytes"))
    servers.append(store)

    def registry(path: str, h: Any) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/token"):
            assert "scope=repository%3Adisks%2Fx%3Apull" in path and "service=svc" in path
            return 200, {"Content-Type": "application/json"}, b'{"access_token": "T0K"}'
        if h.get("Authorization") != "Bearer T0K":
            return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{reg.port}/token"'
                                             f',service="svc",scope="repository:disks/x:pull"'}, b""
        # the blob store: another host name for the same loopback
        return 307, {"Location": f"http://localhost:{store.port}/data?sig=abc"}, b""

    reg = Recorder(registry)
    servers.append(reg)
    ref = parse_reference(f"oci://127.0.0.1:{reg.port}/disks/x:1")
    with requests.Session() as session:
        auth = RegistryAuth(session, ref, credentials=Credentials("ci", "pw"))
        resp = session.get(f"http://127.0.0.1:{reg.port}/v2/disks/x/blobs/sha256:00",
                           auth=auth)
    assert resp.content == b"blob bytes"
    assert [(p.split("?")[0], a is not None) for p, a in reg.seen] == [
        ("/v2/disks/x/blobs/sha256:00", False), ("/token", True),
        ("/v2/disks/x/blobs/sha256:00", True)]
    assert reg.seen[1][1] == Credentials("ci", "pw").basic()  # Basic only to the realm
    assert store.seen == [("/data?sig=abc", None)]  # no token to the blob store


def test_a_token_server_that_refuses_is_one_line(servers: list[Recorder]) -> None:
    def registry(path: str, h: Any) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/token"):
            return 403, {}, b""
        return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{reg.port}/token"'}, b""

    reg = Recorder(registry)
    servers.append(reg)
    ref = parse_reference(f"oci://127.0.0.1:{reg.port}/disks/x:1")
    with requests.Session() as session, pytest.raises(FetchError) as info:
        session.get(f"http://127.0.0.1:{reg.port}/v2/disks/x/manifests/1",
                    auth=RegistryAuth(session, ref))
    assert str(info.value).endswith("/token: the token server refused anonymous access "
                                    "(HTTP 403)")


def test_credentials_never_go_to_a_plain_http_realm_of_an_https_registry() -> None:
    with requests.Session() as session:
        auth = RegistryAuth(session, parse_reference("oci://reg.example/disks/x:1"),
                            credentials=Credentials("ci", "pw"))
        with pytest.raises(FetchError, match=r"its token realm http://auth\.example/token is "
                                             r"plain http; pyinit will not send registryAuth"):
            auth.authenticate('Bearer realm="http://auth.example/token"',
                              url="https://reg.example/v2/disks/x/manifests/1")
