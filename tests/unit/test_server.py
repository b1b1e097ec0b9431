"""The provisioning server, started on 127.0.0.1 port 0 and spoken to with requests/http.client."""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from pyinit_server import cli as serve_cli
from pyinit_server.server import (
    MAX_EVENT_BYTES,
    ByteRange,
    Unsatisfiable,
    if_range_matches,
    normalize_mac,
    parse_range,
    upload_name,
)
from tests.serverkit import ObservedServer

MAC = "52-54-00-12-34-56"
ACTION = (b'{"action": "writeImage", "sourceImage": "images/disk.img", '
          b'"destinationDevice": "/dev/vda"}\n')
IMAGE = bytes(range(256)) * 400  # 102400 bytes, every offset distinguishable


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "machines" / f"{MAC}.json").write_bytes(ACTION)
    (tmp_path / "machines" / "52-54-00-00-00-0b.json").write_bytes(b"{not json")
    (tmp_path / "images" / "disk.img").write_bytes(IMAGE)
    (tmp_path / "images" / "sub" / "empty.img").write_bytes(b"")
    return tmp_path


@pytest.fixture
def server(root: Path) -> Iterator[ObservedServer]:
    """Writes open (asked for by name): these tests are about HTTP, test_server_auth.py about
    tokens."""
    with ObservedServer(root, open_writes=True) as srv:
        yield srv


def raw_get(srv: ObservedServer, path: str, method: str = "GET") -> http.client.HTTPResponse:
    """A request with the path exactly as given (requests would normalise ``..`` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request(method, path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


# --------------------------------------------------------------------------------------------
# machines


def test_url_and_port(server: ObservedServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


@pytest.mark.parametrize("path", [
    f"/{MAC}", f"/{MAC}.bty", "/52:54:00:12:34:56", "/52-54-00-12-34-56.bty",
    "/52:54:00:12:34:56.bty", "/52-54-00-12-34-56".upper(), "/52%3A54%3A00%3A12%3A34%3A56",
])
def test_machine_by_mac(server: ObservedServer, path: str) -> None:
    resp = requests.get(server.url + path, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.content == ACTION


def test_malformed_machine_file_is_500_with_file_and_line(server: ObservedServer) -> None:
    resp = requests.get(f"{server.url}/52:54:00:00:00:0B", timeout=10)
    assert resp.status_code == 500
    assert resp.json()["error"] == ("machines/52-54-00-00-00-0b.json:1: Expecting property name "
                                    "enclosed in double quotes")


def test_unknown_mac_is_404_with_json(server: ObservedServer) -> None:
    resp = requests.get(f"{server.url}/52-54-00-99-99-99.bty", timeout=10)
    assert resp.status_code == 404
    assert "52-54-00-99-99-99" in resp.json()["error"]


def test_default_json_for_unknown_macs(root: Path, server: ObservedServer) -> None:
    (root / "machines" / "default.json").write_bytes(b'{"action": "default"}')
    assert requests.get(f"{server.url}/52-54-00-99-99-99", timeout=10).json() == {
        "action": "default"}
    assert requests.get(f"{server.url}/{MAC}", timeout=10).content == ACTION  # own file wins


@pytest.mark.parametrize("path", [
    "/favicon.ico", "/52-54-00-12-34", "/52-54:00-12-34-56", "/52-54-00-12-34-5g",
    "/machines/52-54-00-12-34-56.json", "/52-54-00-12-34-56.json", "/x/52-54-00-12-34-56",
])
def test_not_a_mac_is_400(server: ObservedServer, path: str) -> None:
    resp = requests.get(server.url + path, timeout=10)
    assert resp.status_code == 400
    assert "not a MAC" in resp.json()["error"]


def test_head_machine(server: ObservedServer) -> None:
    resp = requests.head(f"{server.url}/{MAC}", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(ACTION))
    assert resp.content == b""


@pytest.mark.parametrize(("text", "mac"), [
    ("52:54:00:AB:cd:EF", "52-54-00-ab-cd-ef"), ("52-54-00-ab-cd-ef", "52-54-00-ab-cd-ef"),
    (" 52:54:00:ab:cd:ef\n", "52-54-00-ab-cd-ef"), ("52:54-00:ab:cd:ef", None),
    ("525400abcdef", None), ("", None), ("52:54:00:ab:cd", None),
])
def test_normalize_mac(text: str, mac: str | None) -> None:
    assert normalize_mac(text) == mac


# --------------------------------------------------------------------------------------------
# images


def test_full_image(server: ObservedServer) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", timeout=10)
    assert resp.status_code == 200
    assert resp.content == IMAGE
    assert resp.headers["Content-Length"] == str(len(IMAGE))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["ETag"].startswith('"')
    assert resp.headers["Last-Modified"].endswith(" GMT")
    assert "Content-Encoding" not in resp.headers


def test_head_image(server: ObservedServer) -> None:
    resp = requests.head(f"{server.url}/images/disk.img", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(IMAGE))
    assert resp.content == b""


def test_empty_image(server: ObservedServer) -> None:
    resp = requests.get(f"{server.url}/images/sub/empty.img", timeout=10)
    assert (resp.status_code, resp.content, resp.headers["Content-Length"]) == (200, b"", "0")


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-9", 0, 9),            # first bytes
    ("bytes=1000-1999", 1000, 1999),  # middle
    ("bytes=-10", len(IMAGE) - 10, len(IMAGE) - 1),  # suffix
    ("bytes=102000-", 102000, len(IMAGE) - 1),  # open-ended
    ("bytes=102390-999999", 102390, len(IMAGE) - 1),  # clamped to the end
    ("bytes=-999999", 0, len(IMAGE) - 1),  # suffix longer than the file
])
def test_range(server: ObservedServer, header: str, start: int, end: int) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(IMAGE)}"
    assert resp.headers["Content-Length"] == str(end - start + 1)
    assert resp.content == IMAGE[start:end + 1]


@pytest.mark.parametrize("header", ["bytes=102400-", "bytes=200000-200010", "bytes=-0"])
def test_unsatisfiable_range(server: ObservedServer, header: str) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(IMAGE)}"


@pytest.mark.parametrize("header", ["bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=x-"])
def test_bad_or_multi_range_is_ignored(server: ObservedServer, header: str) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert (resp.status_code, resp.content) == (200, IMAGE)


def test_if_range(server: ObservedServer) -> None:
    url = f"{server.url}/images/disk.img"
    head = requests.head(url, timeout=10).headers
    etag, modified = head["ETag"], head["Last-Modified"]
    for matching in (etag, modified):
        resp = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": matching},
                            timeout=10)
        assert (resp.status_code, resp.content) == (206, IMAGE[10:20])
    for stale in ('"other"', f"W/{etag}", "Thu, 01 Jan 1970 00:00:00 GMT", "garbage"):
        resp = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": stale},
                            timeout=10)
        assert (resp.status_code, resp.content) == (200, IMAGE), stale


def test_etag_changes_with_the_file(root: Path, server: ObservedServer) -> None:
    url = f"{server.url}/images/disk.img"
    etag = requests.head(url, timeout=10).headers["ETag"]
    (root / "images" / "disk.img").write_bytes(IMAGE[:100])
    os.utime(root / "images" / "disk.img", (1, 1))
    resp = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}, timeout=10)
    assert (resp.status_code, resp.content) == (200, IMAGE[:100])


def test_if_none_match(server: ObservedServer) -> None:
    url = f"{server.url}/images/disk.img"
    etag = requests.head(url, timeout=10).headers["ETag"]
    resp = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert (resp.status_code, resp.content) == (304, b"")


def test_missing_image_and_directory(server: ObservedServer) -> None:
    assert requests.get(f"{server.url}/images/nope.img", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/images/disk.img/x", timeout=10).status_code == 404
    assert requests.get(f"{server.url}/images/sub", timeout=10).status_code == 403


@pytest.mark.parametrize("path", [
    f"/images/../machines/{MAC}.json",
    f"/images/%2e%2e/machines/{MAC}.json",
    f"/images/%2E%2E%2Fmachines%2F{MAC}.json",
    f"/images/sub/../../machines/{MAC}.json",
    "/images/..%5c..%5cetc%5cpasswd",
    "/images/../../../../etc/passwd",
    "/images/",
])
def test_traversal_refused(server: ObservedServer, path: str) -> None:
    for method in ("GET", "HEAD"):
        resp = raw_get(server, path, method)
        assert resp.status == 403, (method, path)


def test_symlinks_inside_images_are_followed_outside_refused(
        root: Path, tmp_path_factory: pytest.TempPathFactory, server: ObservedServer) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "built.img"
    outside.write_bytes(b"built elsewhere")
    (root / "images" / "link.img").symlink_to(outside)
    (root / "images" / "alias.img").symlink_to("disk.img")
    (root / "images" / "loop.img").symlink_to("loop.img")
    assert requests.get(f"{server.url}/images/alias.img", timeout=10).content == IMAGE
    resp = requests.get(f"{server.url}/images/link.img", timeout=10)
    assert resp.status_code == 403
    assert resp.json()["error"] == "images/link.img: a symlink that leads outside images/"
    resp = requests.get(f"{server.url}/images/loop.img", timeout=10)
    assert (resp.status_code, resp.json()["error"]) == (404, "images/loop.img: a symlink loop")


def test_symlinks_any_follows_every_link_as_nginx_does(
        root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "built.img"
    outside.write_bytes(b"built elsewhere")
    (root / "images" / "link.img").symlink_to(outside)
    with ObservedServer(root, symlinks="any") as srv:
        assert requests.get(f"{srv.url}/images/link.img", timeout=10).content == \
            b"built elsewhere"


def test_keep_alive_serves_several_requests(server: ObservedServer) -> None:
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(f"{server.url}/images/disk.img", headers={"Range": "bytes=0-3"},
                         timeout=10).content == IMAGE[:4]
            assert s.get(f"{server.url}/{MAC}", timeout=10).content == ACTION


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 10, None), ("", 10, None), ("bytes=0-0", 10, ByteRange(0, 0)),
    ("bytes=9-", 10, ByteRange(9, 9)), ("bytes=-3", 10, ByteRange(7, 9)),
    ("bytes = 2 - 4", 10, ByteRange(2, 4)), ("bytes=-", 10, None), ("bytes=3-2", 10, None),
])
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-1", 0),
                                              ("bytes=0-", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_if_range_matches() -> None:
    mtime = 1_700_000_000.7
    assert if_range_matches(None, '"a"', mtime)
    assert if_range_matches('"a"', '"a"', mtime)
    assert not if_range_matches('"b"', '"a"', mtime)
    assert if_range_matches(formatdate(1_700_000_000, usegmt=True), '"a"', mtime)
    assert not if_range_matches(formatdate(1_600_000_000, usegmt=True), '"a"', mtime)


# --------------------------------------------------------------------------------------------
# events


def test_events(server: ObservedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_server")
    first = {"step": "network", "status": "ok", "elapsed": 2.1}
    second = {"step": "result", "status": "ok"}
    for path, ev in ((f"/events/{MAC}", first), ("/events/" + "52:54:00:12:34:56".upper(), second)):
        resp = requests.post(server.url + path, json=ev, timeout=10)
        assert resp.status_code == 204
    assert server.events("52:54:00:12:34:56") == [first, second]
    assert server.events(MAC.upper()) == [first, second]
    assert server.events("52-54-00-00-00-01") == []
    assert server.wait_event(MAC, step="result", timeout=1) == second
    with pytest.raises(TimeoutError):
        server.wait_event(MAC, step="finish", timeout=0.1)
    with pytest.raises(ValueError):
        server.events("nope")
    assert any('"step": "network"' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_bad_event(server: ObservedServer, body: bytes) -> None:
    resp = requests.post(f"{server.url}/events/{MAC}", data=body,
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 400
    assert server.events(MAC) == []


def test_event_too_large_and_bad_paths(server: ObservedServer) -> None:
    big = json.dumps({"x": "y" * MAX_EVENT_BYTES}).encode()
    assert requests.post(f"{server.url}/events/{MAC}", data=big, timeout=10).status_code == 413
    assert requests.post(f"{server.url}/events/nope", json={}, timeout=10).status_code == 400
    assert requests.post(f"{server.url}/{MAC}", json={}, timeout=10).status_code == 404
    assert server.events(MAC) == []


def test_access_log(server: ObservedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_server")
    requests.get(f"{server.url}/images/disk.img", headers={"Range": "bytes=0-9"}, timeout=10)
    requests.get(f"{server.url}/nope", timeout=10)
    assert server.access_log == [
        {"method": "GET", "path": "/images/disk.img", "status": 206, "range": "bytes=0-9"},
        {"method": "GET", "path": "/nope", "status": 400, "range": None},
    ]
    # the access line is logged once the body is sent, which may be after the client has it
    deadline = time.monotonic() + 5
    while True:
        lines = [r.getMessage() for r in caplog.records if "HTTP/1.1" in r.getMessage()]
        if len(lines) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(lines) == 2
    assert '"GET /images/disk.img HTTP/1.1" 206 10 ' in lines[0]


# --------------------------------------------------------------------------------------------
# lifecycle and CLI


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"\r\n", b"BREW / HTTP/1.1\r\n\r\n"])
def test_malformed_requests(server: ObservedServer, request_bytes: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    assert answer == b"" or b" 400" in answer or b" 501" in answer
    assert requests.get(f"{server.url}/{MAC}", timeout=10).status_code == 200  # still serving


def test_stop_frees_the_port(root: Path) -> None:
    srv = ObservedServer(root).start()
    url = srv.url
    assert requests.get(f"{url}/{MAC}", timeout=10).status_code == 200
    srv.stop()
    srv.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/{MAC}", timeout=2)


def test_cli_register() -> None:
    parser = argparse.ArgumentParser(prog="pyinit")
    serve_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--root", "/srv/x", "--port", "0", "--host", "::1"])
    assert (args.root, args.port, args.host) == (Path("/srv/x"), 0, "::1")
    assert args.max_upload == 64 << 30
    assert args.func is serve_cli.run
    args = parser.parse_args(["serve", "--max-upload", "500G"])
    assert args.max_upload == 500 << 30
    assert (args.max_events, args.max_machines) == (1000, 100_000)
    args = parser.parse_args(["serve", "--max-machines", "20", "--max-events", "5"])
    assert (args.max_events, args.max_machines) == (5, 20)
    for bad in (["--max-machines", "0"], ["--max-events", "-1"], ["--max-machines", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", *bad])


@pytest.mark.parametrize(("text", "size"), [
    ("1024", 1024), ("1k", 1024), ("64M", 64 << 20), ("64MiB", 64 << 20), ("1.5G", 3 << 29),
    ("1T", 1 << 40), ("2 TB", 2 << 40),
])
def test_parse_size(text: str, size: int) -> None:
    assert serve_cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1X", "G", "1 G B"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        serve_cli.parse_size(text)


# --------------------------------------------------------------------------------------------
# uploads: pure parts


@pytest.mark.parametrize(("raw", "basename", "name"), [
    ("52-54-00-12-34-56.img.zst", False, "52-54-00-12-34-56.img.zst"),
    ("disk_1.IMG", True, "disk_1.IMG"),
    ("../../etc/passwd", True, "passwd"),
    ("../../etc/passwd", False, None),
    ("C:\\Users\\x\\disk.img", True, "disk.img"),
    ("a/b", True, "b"), ("a/b", False, None),
    ("..", True, None), ("..", False, None), (".", False, None), ("", True, None),
    (".hidden", True, None), ("dir/", True, None), ("a b", False, None), ("a\0b", False, None),
    ("x.sha256", False, None), ("é.img", False, None), ("x" * 201, False, None),
])
def test_upload_name(raw: str, basename: bool, name: str | None) -> None:
    assert upload_name(raw, basename=basename) == name


def multipart(*parts: tuple[str, bytes], boundary: str = "XyZ", preamble: bytes = b"",
              close: bool = True) -> bytes:
    out = preamble
    for disposition, data in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


# --------------------------------------------------------------------------------------------
# uploads: over HTTP


def stored(root: Path) -> list[str]:
    """Everything in images/ besides the fixture's files."""
    return sorted(p.name for p in (root / "images").iterdir() if p.name not in ("disk.img",
                                                                                  "sub"))


def wait_stored(root: Path, expected: list[str], timeout: float = 10) -> list[str]:
    """The server notices a cut-off upload asynchronously: wait until images/ settles."""
    deadline = time.monotonic() + timeout
    while stored(root) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return stored(root)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_upload(root: Path, name: str, data: bytes) -> None:
    assert (root / "images" / name).read_bytes() == data
    assert (root / "images" / f"{name}.sha256").read_text() == f"{sha(data)}  {name}\n"


def test_multipart_upload(root: Path, server: ObservedServer) -> None:
    data = os.urandom(300_000)
    resp = requests.post(f"{server.url}/image", data={"note": "x"},
                         files={"BootyImage": ("52-54-00-12-34-56.img", data)}, timeout=10)
    assert resp.status_code == 201
    assert resp.json() == {"name": "52-54-00-12-34-56.img", "size": len(data),
                           "sha256": sha(data)}
    assert resp.headers["Location"] == "/images/52-54-00-12-34-56.img"
    check_upload(root, "52-54-00-12-34-56.img", data)
    assert stored(root) == ["52-54-00-12-34-56.img", "52-54-00-12-34-56.img.sha256"]
    assert server.uploads == {"52-54-00-12-34-56.img": resp.json()}
    # and it is served like any image
    assert requests.get(f"{server.url}/images/52-54-00-12-34-56.img", timeout=10).content == data


def test_multipart_upload_chunked_stream(root: Path, server: ObservedServer) -> None:
    """What pyinit's capture sends: a generator body, so chunked transfer."""
    from pyinit.capture import multipart_body

    pieces = [os.urandom(100_000) for _ in range(20)]
    body = multipart_body(iter(pieces), boundary="0123abcd", filename="m.img.zst")
    resp = requests.post(f"{server.url}/image", data=body, timeout=10,
                         headers={"Content-Type": "multipart/form-data; boundary=0123abcd"})
    assert resp.status_code == 201, resp.text
    check_upload(root, "m.img.zst", b"".join(pieces))


@pytest.mark.parametrize(("filename", "status", "name"), [
    ("../../etc/passwd", 201, "passwd"), ("a/b", 201, "b"), ("..", 400, None),
    (".hidden", 400, None), ("", 400, None), ("x.sha256", 400, None), ("a b.img", 400, None),
])
def test_multipart_file_names(root: Path, server: ObservedServer, filename: str,
                              status: int, name: str | None) -> None:
    resp = requests.post(f"{server.url}/image", files={"BootyImage": (filename, b"data")},
                         timeout=10)
    assert resp.status_code == status, resp.text
    assert stored(root) == ([name, f"{name}.sha256"] if name else [])
    assert sorted(p.name for p in root.iterdir()) == [".pyinit", "images", "machines"]


@pytest.mark.parametrize(("body", "ctype", "message"), [
    (multipart(('name="other"; filename="x.img"', b"1")), "multipart/form-data; boundary=XyZ",
     "no BootyImage file"),
    (b"data", "application/octet-stream", "multipart/form-data"),
])
def test_multipart_refused(root: Path, server: ObservedServer, body: bytes, ctype: str,
                           message: str) -> None:
    resp = requests.post(f"{server.url}/image", data=body, headers={"Content-Type": ctype},
                         timeout=10)
    assert resp.status_code == 400
    assert message in resp.json()["error"]
    assert stored(root) == []


def test_put_upload_content_length_and_chunked(root: Path, server: ObservedServer) -> None:
    data = os.urandom(1 << 20) + b"end"
    with requests.Session() as s:
        resp = s.put(f"{server.url}/images/a.img", data=data, timeout=10)
        assert resp.status_code == 201
        assert resp.json() == {"name": "a.img", "size": len(data), "sha256": sha(data)}
        resp = s.put(f"{server.url}/images/b.img", timeout=10,
                     data=(data[i:i + 65536] for i in range(0, len(data), 65536)))
        assert resp.status_code == 201
        assert resp.request.headers["Transfer-Encoding"] == "chunked"
        # the connection stays usable after an upload
        assert s.get(f"{server.url}/images/b.img", timeout=10).content == data
    check_upload(root, "a.img", data)
    check_upload(root, "b.img", data)
    # an empty body is an empty file; uploading again replaces
    assert requests.put(f"{server.url}/images/a.img", data=b"", timeout=10).status_code == 201
    check_upload(root, "a.img", b"")


def test_put_with_expect_100_continue(root: Path, server: ObservedServer) -> None:
    """curl -T asks before sending a large body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PUT /images/e.img HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100")
        sock.sendall(b"data")
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 201")
    check_upload(root, "e.img", b"data")


def recv_all(sock: socket.socket) -> bytes:
    out = b""
    sock.settimeout(10)
    while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
        data = sock.recv(65536)
        if not data:
            break
        out += data
    return out


@pytest.mark.parametrize("path", [
    "/images/..", "/images/.hidden", "/images/a/b", "/images/a%2Fb", "/images/..%2F..%2Fpasswd",
    "/images/../../etc/passwd", "/images/", "/images/x.sha256", "/images/%00",
])
def test_put_bad_names(root: Path, server: ObservedServer, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("PUT", path, body=b"data")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 400, path
    assert stored(root) == []
    assert sorted(p.name for p in root.iterdir()) == [".pyinit", "images", "machines"]


def test_put_elsewhere(server: ObservedServer) -> None:
    assert requests.put(f"{server.url}/{MAC}", data=b"x", timeout=10).status_code == 405


@pytest.fixture
def small_server(root: Path) -> Iterator[ObservedServer]:
    with ObservedServer(root, max_upload=1000, upload_timeout=0.5,
                            open_writes=True) as srv:
        yield srv


def test_oversized_upload(root: Path, small_server: ObservedServer) -> None:
    url = small_server.url
    resp = requests.put(f"{url}/images/big.img", data=b"x" * 5000, timeout=10)
    assert resp.status_code == 413
    resp = requests.put(f"{url}/images/big.img", data=iter([b"x" * 600] * 5), timeout=10)
    assert resp.status_code == 413
    resp = requests.post(f"{url}/image", files={"BootyImage": ("big.img", b"x" * 5000)},
                         timeout=10)
    assert resp.status_code == 413
    assert requests.put(f"{url}/images/ok.img", data=b"x" * 1000, timeout=10).status_code == 201
    assert wait_stored(root, ["ok.img", "ok.img.sha256"]) == ["ok.img", "ok.img.sha256"]


def test_oversized_upload_refused_before_the_body(small_server: ObservedServer) -> None:
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(b"PUT /images/big.img HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("request_bytes", [
    b"PUT /images/cut.img HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n" + b"x" * 500,
    b"PUT /images/cut.img HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"100\r\n" + b"x" * 256 + b"\r\n",
    b"POST /image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: multipart/form-data; boundary=XyZ\r\n\r\n"
    + b"%x\r\n" % len(multipart(('name="BootyImage"; filename="cut.img"', b"x" * 100),
                                 close=False))
    + multipart(('name="BootyImage"; filename="cut.img"', b"x" * 100), close=False) + b"\r\n",
])
@pytest.mark.parametrize("how", ["close", "stall"])
def test_cut_off_upload_leaves_nothing(root: Path, small_server: ObservedServer,
                                       request_bytes: bytes, how: str) -> None:
    sock = socket.create_connection(("127.0.0.1", small_server.port), timeout=10)
    try:
        sock.sendall(request_bytes)
        deadline = time.monotonic() + 5
        while not list((root / "images").glob(".upload-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list((root / "images").glob(".upload-cut.img.*"))  # it was being written
        if how == "stall":  # no more data: the upload timeout (0.5 s) ends it
            answer = recv_all(sock)
            assert answer.startswith(b"HTTP/1.1 400") and b"cut off" in answer
    finally:
        sock.close()
    assert wait_stored(root, []) == []


def test_bad_chunked_body_and_missing_length(root: Path, server: ObservedServer) -> None:
    for head, body, status in (
            (b"Transfer-Encoding: chunked\r\n", b"zz\r\n", 400),
            (b"Transfer-Encoding: gzip\r\n", b"", 400),  # refused by the parser itself
            (b"", b"", 411)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            # no half-close: aiohttp drops a connection whose client shut its sending side
            sock.sendall(b"PUT /images/bad.img HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
            answer = recv_all(sock)
        # aiohttp's parser answers what it refuses as HTTP/1.0 (it read no version it trusts)
        assert re.match(rb"HTTP/1\.[01] %d " % status, answer), answer
    assert wait_stored(root, []) == []


def test_concurrent_uploads_of_one_name(root: Path, server: ObservedServer) -> None:
    payloads = [bytes([i]) * (300_000 + i * 1000) for i in range(6)]
    errors: list[BaseException] = []

    def upload(data: bytes) -> None:
        try:
            pieces = (data[i:i + 10_000] for i in range(0, len(data), 10_000))
            resp = requests.put(f"{server.url}/images/same.img", data=pieces, timeout=30)
            assert resp.status_code == 201
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = (root / "images" / "same.img").read_bytes()
    assert final in payloads
    check_upload(root, "same.img", final)  # the sidecar belongs to the same upload
    # Each 201 named one of the payloads; which answer the harness recorded last need not be
    # the last rename (the handlers resume in any order), so it is not compared with the file.
    assert server.uploads["same.img"]["sha256"] in {sha(p) for p in payloads}
    assert stored(root) == ["same.img", "same.img.sha256"]


def test_upload_answers_507_when_the_disk_is_full(root: Path, server: ObservedServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("pyinit_server.uploads.os.write", full)
    resp = requests.put(f"{server.url}/images/full.img", data=b"x" * 5000, timeout=10)
    assert resp.status_code == 507
    assert "No space left" in resp.json()["error"]
    assert stored(root) == []


def test_stalled_reader_is_dropped_and_others_are_served(root: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A client that asks for a large image and stops reading must not pin a handler thread
    forever: after client_timeout without progress the connection is dropped (and logged),
    while another client is served meanwhile."""
    big = root / "images" / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # far more than the socket buffers on both sides hold
    srv = ObservedServer(root)
    srv.client_timeout = 0.5
    with srv, caplog.at_level(logging.INFO, logger="pyinit_server"):
        stalled = socket.create_connection(("127.0.0.1", srv.port))
        stalled.sendall(b"GET /images/big.img HTTP/1.1\r\nHost: x\r\n\r\n")
        assert requests.get(f"{srv.url}/images/disk.img", timeout=5).content == IMAGE
        deadline = time.monotonic() + 10
        while "client stalled" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "big.img: client stalled: nothing read for 0.5 s" in caplog.text
        # the server closed its side: after the buffered bytes the stream ends short of 64 MiB
        stalled.settimeout(5)
        got = 0
        while chunk := stalled.recv(1 << 20):
            got += len(chunk)
        stalled.close()
        assert 0 < got < (64 << 20)


def test_idle_keep_alive_connection_is_closed(root: Path) -> None:
    srv = ObservedServer(root)
    srv.client_timeout = 0.3
    with srv:
        conn = socket.create_connection(("127.0.0.1", srv.port))
        conn.settimeout(5)
        started = time.monotonic()
        assert conn.recv(1024) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - started < 4
        conn.close()


def test_stop_closes_keep_alive_connections(root: Path) -> None:
    """After stop() nobody is answered, also not a client holding a keep-alive connection."""
    srv = ObservedServer(root).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", f"/{MAC}")
    assert conn.getresponse().read() == ACTION
    srv.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", f"/{MAC}")
        conn.getresponse().read()
    conn.close()


# --------------------------------------------------------------------------------------------
# strict input: pure helpers


@pytest.mark.parametrize(("text", "cleaned"), [
    ("plain /images/a.img", "plain /images/a.img"),
    ("/images/\x1b[31mred", "/images/\\x1b[31mred"),
    ("a\r\nforged line", "a\\r\\nforged line"),
    ("back\\slash", "back\\\\slash"),
    ("é\u202e", "\\xe9\\u202e"),
    ("x" * 400, "x" * 300 + "..."),
])
def test_clean_escapes_client_strings_for_the_log(text: str, cleaned: str) -> None:
    from pyinit_server.server import clean
    assert clean(text) == cleaned


@pytest.mark.parametrize(("data", "depth"), [
    (b"{}", 1), (b"[]", 1), (b'{"a": [1, {"b": 2}]}', 3), (b"1", 0),
    (b'{"a": "[[[[{{{{"}', 1),  # brackets inside strings do not count
    (b'{"a": "\\"[[["}', 1),  # nor after an escaped quote
    (b"[" * 1000 + b"]" * 1000, 1000),
])
def test_json_depth(data: bytes, depth: int) -> None:
    from pyinit_server.server import json_depth
    assert json_depth(data) == depth


def test_deep_json_event_is_refused_and_the_machine_still_answers(
        server: ObservedServer) -> None:
    deep = b'{"step": "x", "a": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    resp = requests.post(f"{server.url}/events/{MAC}", data=deep, timeout=10)
    assert resp.status_code == 400
    assert resp.json()["error"] == "bad JSON: nested deeper than 64 levels"
    assert requests.post(f"{server.url}/events/{MAC}", json={"step": "ok"},
                         timeout=10).status_code == 204
    assert requests.get(f"{server.url}/api/machines/{MAC}", timeout=10).status_code == 200


def test_machines_directory_is_listed_once_until_it_changes(root: Path) -> None:
    past = time.time() - 60  # a settled directory (a recent one is re-listed: racy mtime)
    os.utime(root / "machines", (past, past))
    with ObservedServer(root) as srv:
        for _ in range(20):
            assert requests.get(f"{srv.url}/{MAC}", timeout=10).status_code == 200
            assert requests.get(f"{srv.url}/api/machines", timeout=10).status_code == 200
        assert srv.machines.listings == 1
        (root / "machines" / "52-54-00-00-00-0c.json").write_text('{"action": "x"}')
        assert requests.get(f"{srv.url}/52-54-00-00-00-0c", timeout=10).status_code == 200
        assert srv.machines.listings == 2


def test_event_sink_retries_a_503_until_the_store_takes_it(
        server: ObservedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store unavailable (PostgreSQL restarting): 503 + Retry-After, and pyinit's sink
    posts the event again."""
    import concurrent.futures

    from pyinit.events import ServerSink
    from pyinit_server.store import StoreError

    assert server.store is not None
    real = server.store.submit
    calls: list[object] = []

    def flaky(mac: str, event: dict[str, object], received: float) -> object:
        calls.append(event)
        if len(calls) == 1:
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(StoreError("database restarting"))
            return failed
        return real(mac, event, received)

    monkeypatch.setattr(server.store, "submit", flaky)
    sink = ServerSink(f"{server.url}/events/{MAC}")
    sink({"step": "result", "status": "ok"})
    sink.flush(timeout=10)
    assert server.events(MAC) == [{"step": "result", "status": "ok"}]
    assert len(calls) == 2
    assert [r["status"] for r in server.access_log if r["method"] == "POST"] == [503, 204]


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 1.0), ("1", 1.0), ("0", 0.2), ("120", 2.0), ("soon", 1.0), ("0.5", 0.5)])
def test_retry_after(value: str | None, seconds: float) -> None:
    from pyinit.events import retry_after
    assert retry_after(value) == seconds
