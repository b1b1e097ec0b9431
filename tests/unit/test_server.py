"""The provisioning server, started on 127.0.0.1 port 0 and spoken to with requests/http.client."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import requests

from pyinit_server import cli as serve_cli
from pyinit_server.server import (
    MAX_EVENT_BYTES,
    ByteRange,
    ProvisioningServer,
    Unsatisfiable,
    if_range_matches,
    normalize_mac,
    parse_range,
)

MAC = "52-54-00-12-34-56"
ACTION = b'{"action": "writeImage", "sourceImage": "images/disk.img"}\n'
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
def server(root: Path) -> Iterator[ProvisioningServer]:
    with ProvisioningServer(root) as srv:
        yield srv


def raw_get(srv: ProvisioningServer, path: str, method: str = "GET") -> http.client.HTTPResponse:
    """A request with the path exactly as given (requests would normalise ``..`` away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request(method, path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


# --------------------------------------------------------------------------------------------
# machines


def test_url_and_port(server: ProvisioningServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


@pytest.mark.parametrize("path", [
    f"/{MAC}", f"/{MAC}.bty", "/52:54:00:12:34:56", "/52-54-00-12-34-56.bty",
    "/52:54:00:12:34:56.bty", "/52-54-00-12-34-56".upper(), "/52%3A54%3A00%3A12%3A34%3A56",
])
def test_machine_by_mac(server: ProvisioningServer, path: str) -> None:
    resp = requests.get(server.url + path, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.content == ACTION


def test_malformed_machine_file_is_served_raw(server: ProvisioningServer) -> None:
    resp = requests.get(f"{server.url}/52:54:00:00:00:0B", timeout=10)
    assert (resp.status_code, resp.content) == (200, b"{not json")


def test_unknown_mac_is_404_with_json(server: ProvisioningServer) -> None:
    resp = requests.get(f"{server.url}/52-54-00-99-99-99.bty", timeout=10)
    assert resp.status_code == 404
    assert "52-54-00-99-99-99" in resp.json()["error"]


def test_default_json_for_unknown_macs(root: Path, server: ProvisioningServer) -> None:
    (root / "machines" / "default.json").write_bytes(b'{"action": "default"}')
    assert requests.get(f"{server.url}/52-54-00-99-99-99", timeout=10).json() == {
        "action": "default"}
    assert requests.get(f"{server.url}/{MAC}", timeout=10).content == ACTION  # own file wins


@pytest.mark.parametrize("path", [
    "/", "/favicon.ico", "/52-54-00-12-34", "/52-54:00-12-34-56", "/52-54-00-12-34-5g",
    "/machines/52-54-00-12-34-56.json", "/52-54-00-12-34-56.json", "/x/52-54-00-12-34-56",
])
def test_not_a_mac_is_400(server: ProvisioningServer, path: str) -> None:
    resp = requests.get(server.url + path, timeout=10)
    assert resp.status_code == 400
    assert "not a MAC" in resp.json()["error"]


def test_head_machine(server: ProvisioningServer) -> None:
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


def test_full_image(server: ProvisioningServer) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", timeout=10)
    assert resp.status_code == 200
    assert resp.content == IMAGE
    assert resp.headers["Content-Length"] == str(len(IMAGE))
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["ETag"].startswith('"')
    assert resp.headers["Last-Modified"].endswith(" GMT")
    assert "Content-Encoding" not in resp.headers


def test_head_image(server: ProvisioningServer) -> None:
    resp = requests.head(f"{server.url}/images/disk.img", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(IMAGE))
    assert resp.content == b""


def test_empty_image(server: ProvisioningServer) -> None:
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
def test_range(server: ProvisioningServer, header: str, start: int, end: int) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/{len(IMAGE)}"
    assert resp.headers["Content-Length"] == str(end - start + 1)
    assert resp.content == IMAGE[start:end + 1]


@pytest.mark.parametrize("header", ["bytes=102400-", "bytes=200000-200010", "bytes=-0"])
def test_unsatisfiable_range(server: ProvisioningServer, header: str) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(IMAGE)}"


@pytest.mark.parametrize("header", ["bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=x-"])
def test_bad_or_multi_range_is_ignored(server: ProvisioningServer, header: str) -> None:
    resp = requests.get(f"{server.url}/images/disk.img", headers={"Range": header}, timeout=10)
    assert (resp.status_code, resp.content) == (200, IMAGE)


def test_if_range(server: ProvisioningServer) -> None:
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


def test_etag_changes_with_the_file(root: Path, server: ProvisioningServer) -> None:
    url = f"{server.url}/images/disk.img"
    etag = requests.head(url, timeout=10).headers["ETag"]
    (root / "images" / "disk.img").write_bytes(IMAGE[:100])
    os.utime(root / "images" / "disk.img", (1, 1))
    resp = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": etag}, timeout=10)
    assert (resp.status_code, resp.content) == (200, IMAGE[:100])


def test_if_none_match(server: ProvisioningServer) -> None:
    url = f"{server.url}/images/disk.img"
    etag = requests.head(url, timeout=10).headers["ETag"]
    resp = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert (resp.status_code, resp.content) == (304, b"")


def test_missing_image_and_directory(server: ProvisioningServer) -> None:
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
def test_traversal_refused(server: ProvisioningServer, path: str) -> None:
    for method in ("GET", "HEAD"):
        resp = raw_get(server, path, method)
        assert resp.status == 403, (method, path)


def test_symlink_inside_images_is_followed(root: Path, tmp_path_factory: pytest.TempPathFactory,
                                           server: ProvisioningServer) -> None:
    outside = tmp_path_factory.mktemp("elsewhere") / "built.img"
    outside.write_bytes(b"built elsewhere")
    (root / "images" / "link.img").symlink_to(outside)
    assert requests.get(f"{server.url}/images/link.img", timeout=10).content == b"built elsewhere"


def test_keep_alive_serves_several_requests(server: ProvisioningServer) -> None:
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


def test_events(server: ProvisioningServer, caplog: pytest.LogCaptureFixture) -> None:
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
def test_bad_event(server: ProvisioningServer, body: bytes) -> None:
    resp = requests.post(f"{server.url}/events/{MAC}", data=body,
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 400
    assert server.events(MAC) == []


def test_event_too_large_and_bad_paths(server: ProvisioningServer) -> None:
    big = json.dumps({"x": "y" * MAX_EVENT_BYTES}).encode()
    assert requests.post(f"{server.url}/events/{MAC}", data=big, timeout=10).status_code == 413
    assert requests.post(f"{server.url}/events/nope", json={}, timeout=10).status_code == 400
    assert requests.post(f"{server.url}/{MAC}", json={}, timeout=10).status_code == 404
    assert server.events(MAC) == []


def test_access_log(server: ProvisioningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_server")
    requests.get(f"{server.url}/images/disk.img", headers={"Range": "bytes=0-9"}, timeout=10)
    requests.get(f"{server.url}/nope", timeout=10)
    assert server.access_log == [
        {"method": "GET", "path": "/images/disk.img", "status": 206, "range": "bytes=0-9"},
        {"method": "GET", "path": "/nope", "status": 400, "range": None},
    ]
    lines = [r.getMessage() for r in caplog.records if "HTTP/1.1" in r.getMessage()]
    assert len(lines) == 2
    assert '"GET /images/disk.img HTTP/1.1" 206 10 ' in lines[0]


# --------------------------------------------------------------------------------------------
# lifecycle and CLI


def test_stop_frees_the_port(root: Path) -> None:
    srv = ProvisioningServer(root).start()
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
    assert args.func is serve_cli.run
