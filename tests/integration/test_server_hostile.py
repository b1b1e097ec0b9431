"""The server's hostile-client catalogue (issue #13, point 6): one test per row of
docs/server-hostile.md.

Every row runs against a real :class:`ObservedServer` started in-process on 127.0.0.1 (the
signal rows: the real ``pyinit serve`` CLI in a subprocess), spoken to with raw sockets, since
the clients of this catalogue misbehave below what HTTP libraries let one send. Each test asserts

- the answer: its status and the exact JSON error or log line, equal to the doc's row (ports,
  the temporary root and durations normalised; ``PYINIT_HOSTILE_DUMP=rows.jsonl`` writes what
  the server said instead of comparing, to regenerate the doc);
- what stays on disk (``images/``: no ``.upload-*`` temporary file, no file outside the rules)
  and in the event store (no event for any MAC unless the row says so);
- that the server still answers a normal request afterwards;
- that no traceback and no error reached the server's log (caplog on ``pyinit_server``, or the
  subprocess's stderr).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import pyinit_server.server as server_module
from tests.serverkit import ObservedServer
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture
from tests.unit.test_store import assert_counters_match_rows

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "server-hostile.md"
TEST_FILE = "tests/integration/test_server_hostile.py"
DUMP = os.environ.get("PYINIT_HOSTILE_DUMP")

MAC = "52-54-00-12-34-56"
OTHER = "52-54-00-00-00-02"
ACTION = b'{"action": "writeImage", "sourceImage": "images/disk.img", ' \
         b'"destinationDevice": "/dev/vda"}\n'
IMAGE = bytes(range(256)) * 40  # 10240 bytes
SECRET = b"operator's secret, outside the served tree\n"
LOGGER = "pyinit_server"

ROWS: dict[str, str] = {}  # row id -> the test that proves it (pytest node name)


def rows(test: str, ids: list[str]) -> list[str]:
    for row in ids:
        ROWS[row] = f"{test}[{row}]"
    return ids


# ---- the doc -------------------------------------------------------------------------------


def doc_rows() -> dict[str, list[str]]:
    """Row id → the cells of its line in docs/server-hostile.md (``\\|`` unescaped)."""
    found: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(H\d\d)\s*\|", line)
        if m:
            found[m.group(1)] = [c.strip().replace("\\|", "|")
                                 for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
    return found


def doc_answer(row: str) -> list[str]:
    """The code spans of the row's answer column: the status and the exact text."""
    return re.findall(r"`([^`]*)`", doc_rows()[row][2])


def normalise(text: str, root: Path | None) -> str:
    if root is not None:
        text = text.replace(str(root), "ROOT")
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return re.sub(r" \d+\.\d{3}s\b", " 0.000s", text)  # the access line's duration


def answer(row: str, *observed: object, root: Path | None = None) -> None:
    """The row's answer as the server gave it, compared with the doc (or dumped)."""
    got = [normalise(str(o), root) for o in observed]
    if DUMP:
        with open(DUMP, "a") as f:
            f.write(json.dumps({"id": row, "answer": got}) + "\n")
        return
    documented = doc_answer(row)
    assert got == documented, f"{row}: the server said {got!r}, the doc says {documented!r}"


def test_doc_and_tests_agree() -> None:
    documented = doc_rows()
    assert sorted(documented) == sorted(ROWS), (
        f"only in the doc: {sorted(set(documented) - set(ROWS))}; "
        f"only in the tests: {sorted(set(ROWS) - set(documented))}")
    ids = list(documented)
    assert ids == [f"H{i:02d}" for i in range(1, len(ids) + 1)], "ids in order, none skipped"
    for row, cells in documented.items():
        assert len(cells) == 6, row
        assert cells[-1] == f"`{TEST_FILE}::{ROWS[row]}`", row
        assert doc_answer(row), f"{row}: no answer in the doc"
    m = re.search(r"(\d+) rows", DOC.read_text())
    assert m and int(m.group(1)) == len(ids), "the intro's row count follows the table"


# ---- raw HTTP ------------------------------------------------------------------------------


@dataclass
class Reply:
    raw: bytes
    status: int | None = None
    head: bytes = b""
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.body.decode(errors="replace").strip()

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes) -> Reply:
    reply = Reply(raw)
    head, sep, body = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    if not sep or not m:
        return reply
    reply.status, reply.head, reply.body = int(m.group(1)), head, body
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        reply.headers[name.strip().lower()] = value.strip()
    return reply


def read_reply(sock: socket.socket, timeout: float = 10.0) -> Reply:
    """One response: until its Content-Length is complete, the server closes, or ``timeout``."""
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = parse(buf)
        if reply.status is not None:
            length = reply.headers.get("content-length")
            if reply.status in (204, 304) or (length is not None and
                                              len(reply.body) >= int(length)):
                return reply
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        buf += data
    return parse(buf)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send ``data`` (the server may answer and close before all of it is sent), read the
    answer."""
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_reply(sock, timeout)


def http(method: str, target: bytes | str, *headers: bytes | str, body: bytes = b"") -> bytes:
    """A request exactly as written: ``Host`` added, nothing else (no length unless given)."""
    if isinstance(target, str):
        target = target.encode()
    lines = [h.encode() if isinstance(h, str) else h for h in ("Host: x", *headers)]
    return method.encode() + b" " + target + b" HTTP/1.1\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n" + body


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


def multipart(disposition: bytes, data: bytes, *, close: bool = True) -> bytes:
    return (b"--XyZ\r\nContent-Disposition: form-data; name=\"BootyImage\"; " + disposition
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
            + (b"--XyZ--\r\n" if close else b""))


MULTIPART = "Content-Type: multipart/form-data; boundary=XyZ"


def event(mac: str, token: str, body: bytes = b'{"step": "network", "status": "ok"}') -> bytes:
    return http("POST", f"/events/{mac}", bearer(token), f"Content-Length: {len(body)}",
                body=body)


# ---- the server and what it left ----------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "machines" / f"{MAC}.json").write_bytes(ACTION)
    (root / "images" / "disk.img").write_bytes(IMAGE)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    return root


@pytest.fixture
def serve(root: Path, caplog: pytest.LogCaptureFixture,
          ) -> Iterator[Callable[..., ObservedServer]]:
    """Start a server on ``root`` (keyword arguments: the constructor's; ``client_timeout``:
    set before start). Writes need tokens, as in production."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    started: list[ObservedServer] = []

    def start(client_timeout: float | None = None, **kwargs: Any) -> ObservedServer:
        srv = ObservedServer(root, grace=1.0, **kwargs)
        if client_timeout is not None:
            srv.client_timeout = client_timeout
        started.append(srv.start())
        return srv

    yield start
    for srv in started:
        srv.stop(grace=0.5)


@pytest.fixture
def srv(serve: Callable[..., ObservedServer]) -> ObservedServer:
    return serve()


def leftovers(root: Path) -> list[str]:
    """Everything in images/ besides the fixture's image (and the rows' own symlinks)."""
    return sorted(p.name for p in (root / "images").iterdir()
                  if p.name != "disk.img" and not p.is_symlink())


def settled(root: Path, expected: list[str], timeout: float = 5.0) -> list[str]:
    """images/ once the server has noticed a cut-off (it does so asynchronously)."""
    deadline = time.monotonic() + timeout
    while leftovers(root) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return leftovers(root)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout:g} s: {predicate}")


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").glob(".upload-*"))


def stored_events(srv: ObservedServer) -> int:
    return int(srv.status()["store"]["events"])


def lines(caplog: pytest.LogCaptureFixture, needle: str = "") -> list[str]:
    """The server's log lines (as ``pyinit serve`` prints them) that contain ``needle``."""
    return [f"{r.levelname[0]} {r.name}: {r.getMessage()}" for r in caplog.records
            if r.name.startswith(LOGGER) and needle in r.getMessage()]


def healthy(srv: ObservedServer, caplog: pytest.LogCaptureFixture) -> None:
    """The server still answers, and nothing in its log is a traceback or an error."""
    base = srv.http_url or srv.url
    assert requests.get(f"{base}/images/disk.img", timeout=5).content == IMAGE
    assert requests.get(f"{base}/{MAC}", timeout=5).content == ACTION
    bad = [r for r in caplog.records if r.name.startswith(LOGGER)
           and (r.exc_info or r.levelno >= logging.ERROR)]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text


def one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    """No log record of the server carries a control character: no forged lines, no escape
    sequences (C0, DEL, C1), no bidi overrides."""
    for r in caplog.records:
        if r.name.startswith(LOGGER):
            msg = r.getMessage()
            assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", msg), msg


# ---- traversal -----------------------------------------------------------------------------


TRAVERSAL = [
    ("H01", b"/images/../machines/" + MAC.encode() + b".json"),
    ("H02", b"/images/%2e%2e/machines/" + MAC.encode() + b".json"),
    ("H03", b"/images/%252e%252e/machines/" + MAC.encode() + b".json"),
    ("H04", b"/images/..\\..\\secret.txt"),
    ("H05", b"/images/disk.img%00.txt"),
    ("H06", b"/images/%c0%ae%c0%ae/machines/" + MAC.encode() + b".json"),
    ("H07", b"/images/" + b"a" * 300),
    ("H08", b"/images/" + b"a" * 5000),
]


@pytest.mark.parametrize(("row", "target"), TRAVERSAL,
                         ids=rows("test_traversal", [r for r, _ in TRAVERSAL]))
def test_traversal(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                   row: str, target: bytes) -> None:
    for method in ("GET", "HEAD"):
        reply = exchange(srv.port, http(method, target, "Connection: close"))
        assert reply.status in (400, 403, 404), (method, reply.raw[:200])
        assert ACTION not in reply.body and SECRET not in reply.body
    reply = exchange(srv.port, http("GET", target, "Connection: close"))
    assert reply.json()["status"] == reply.status
    answer(row, reply.status, reply.text())
    assert leftovers(root) == []
    healthy(srv, caplog)


SYMLINKS = [("H09", "loop.img", "loop.img"), ("H10", "out.img", "../../secret.txt")]


@pytest.mark.parametrize(("row", "name", "target"), SYMLINKS,
                         ids=rows("test_operator_symlink", [r for r, _, _ in SYMLINKS]))
def test_operator_symlink(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                          row: str, name: str, target: str) -> None:
    (root / "images" / name).symlink_to(target)
    reply = exchange(srv.port, http("GET", f"/images/{name}", "Connection: close"))
    assert reply.status in (403, 404)
    assert SECRET not in reply.body
    warned = lines(caplog, f"images/{name}: ")
    assert len(warned) == 1
    answer(row, reply.status, reply.text(), warned[0], root=root.parent)
    healthy(srv, caplog)


# ---- upload names --------------------------------------------------------------------------


NAMES = [
    ("H11", "PUT", b"/images/evil%0A", b"data"),
    ("H12", "PUT", b"/images/x.sha256%0A", b"data"),
    ("H13", "PUT", b"/images/.hidden", b"data"),
    ("H14", "PUT", b"/images/a/b", b"data"),
    ("H15", "PUT", b"/images/" + b"x" * 201, b"data"),
    ("H16", "POST", b"/image", multipart(b"filename*=UTF-8''evil%0D%0AX-Evil%3A%201", b"data")),
    ("H17", "POST", b"/image", multipart(b'filename="evil\r\nforged"', b"data")),
]


@pytest.mark.parametrize(("row", "method", "target", "body"), NAMES,
                         ids=rows("test_upload_name", [r for r, _, _, _ in NAMES]))
def test_upload_name(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                     row: str, method: str, target: bytes, body: bytes) -> None:
    assert srv.token is not None
    extra = (MULTIPART,) if method == "POST" else ()
    reply = exchange(srv.port, http(method, target, bearer(srv.token), *extra,
                                    f"Content-Length: {len(body)}", body=body))
    assert reply.status == 400, reply.raw[:300]
    assert "location" not in reply.headers
    answer(row, reply.status, reply.text())
    assert leftovers(root) == []
    assert sorted(p.name for p in root.iterdir()) == [".pyinit", "images", "machines"]
    # the answer to a good name: its Location is the name, in a header block without a bare LF
    good = b"x" * 200 if row == "H15" else b"ok.img"
    reply = exchange(srv.port, http("PUT", b"/images/" + good, bearer(srv.token),
                                    "Content-Length: 4", "Connection: close", body=b"data"))
    assert reply.status == 201
    assert reply.headers["location"] == f"/images/{good.decode()}"
    assert b"\n" not in reply.head.replace(b"\r\n", b"")
    assert leftovers(root) == [good.decode(), f"{good.decode()}.sha256"]
    one_line_each(caplog)
    healthy(srv, caplog)


@pytest.mark.parametrize("row", rows("test_unparsable_disposition", ["H18"]))
def test_unparsable_disposition(cli: Callable[..., Serve], root: Path, row: str) -> None:
    """aiohttp warns about a Content-Disposition it cannot parse, on stderr, with the client's
    bytes in it: ``pyinit serve`` itself, since only its stderr shows what an operator reads."""
    server = cli()
    body = multipart(b'filename="\xc2\x9b31mred"; x', b"data")  # an 8-bit CSI, a bare "x"
    reply = exchange(server.port, http("POST", "/image", bearer(TOKEN), MULTIPART,
                                       f"Content-Length: {len(body)}", body=body))
    assert reply.status == 400, reply.raw[:300]
    assert requests.get(f"{server.url}/images/disk.img", timeout=5).content == IMAGE
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    clean_stderr(server.stderr)
    assert "Warning" not in server.stderr, server.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", server.stderr), server.stderr
    refused = [ln for ln in server.stderr.splitlines() if "refused" in ln]
    assert len(refused) == 1, server.stderr
    answer(row, reply.status, reply.text(), refused[0])
    assert leftovers(root) == []


# ---- cut-off uploads -----------------------------------------------------------------------


CUT_OFF = [
    ("H19", "PUT", "/images/cut.img", ("Content-Length: 900",), b"x" * 500),
    ("H20", "PUT", "/images/cut.img", ("Transfer-Encoding: chunked",),
     b"100\r\n" + b"x" * 256 + b"\r\n"),
    ("H21", "POST", "/image", (MULTIPART, "Transfer-Encoding: chunked"),
     b"%x\r\n" % len(multipart(b'filename="cut.img"', b"x" * 100, close=False))
     + multipart(b'filename="cut.img"', b"x" * 100, close=False) + b"\r\n"),
]


@pytest.mark.parametrize(("row", "method", "target", "headers", "body"), CUT_OFF,
                         ids=rows("test_cut_off_upload", [r[0] for r in CUT_OFF]))
def test_cut_off_upload(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                        row: str, method: str, target: str, headers: tuple[str, ...],
                        body: bytes) -> None:
    assert srv.token is not None
    sock = connect(srv.port)
    try:
        sock.sendall(http(method, target, bearer(srv.token), *headers, body=body))
        assert wait_for(lambda: temp_files(root))[0].startswith(".upload-cut.img.")
    finally:
        sock.close()  # the client goes away mid-body
    assert settled(root, []) == []
    refused = wait_for(lambda: lines(caplog, " refused: "))
    assert len(refused) == 1
    answer(row, refused[0])
    assert srv.uploads == {}
    healthy(srv, caplog)


# ---- smuggling -----------------------------------------------------------------------------


def smuggling_cases() -> list[tuple[str, bytes, bytes]]:
    """(row, the framing headers, the body): each body carries a second request, an event of
    another machine, that would be stored if the framing were read two ways."""
    return [
        ("H22", b"Content-Length: 2\r\nTransfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n"),
        ("H23", b"Content-Length: 2\r\nContent-Length: 40", b"{}"),
        ("H24", b"Content-Length: 2\r\nContent-Length: 2", b"{}"),
        ("H25", "Content-Length: \uff13".encode(), b"{} "),  # FULLWIDTH DIGIT THREE
        ("H26", b"Content-Length: " + b"9" * 4300, b"{}"),
        ("H27", b"Transfer-Encoding: chunked", b"-2\r\n{}\r\n0\r\n\r\n"),
        ("H28", b"Transfer-Encoding: chunked", b"zz\r\n{}\r\n0\r\n\r\n"),
        ("H29", b"Transfer-Encoding: gzip, chunked", b"2\r\n{}\r\n0\r\n\r\n"),
    ]


SMUGGLING = smuggling_cases()


@pytest.mark.parametrize(("row", "framing", "body"), SMUGGLING,
                         ids=rows("test_smuggling", [r for r, _, _ in SMUGGLING]))
def test_smuggling(srv: ObservedServer, caplog: pytest.LogCaptureFixture, row: str,
                   framing: bytes, body: bytes) -> None:
    smuggled = event(OTHER, srv.machine_token(OTHER))
    request = http("POST", f"/events/{MAC}", bearer(srv.machine_token(MAC)), framing,
                   body=body + smuggled)
    with connect(srv.port) as sock:
        sock.sendall(request)
        reply = read_reply(sock)
        rest = read_reply(sock, timeout=1.0)  # a second answer would be the smuggled event's
    assert reply.status in (400, 501), reply.raw[:300]
    assert rest.raw == b"", rest.raw[:300]
    assert stored_events(srv) == 0
    assert srv.events(MAC) == [] and srv.events(OTHER) == []
    if reply.status == 400:  # aiohttp's parser: a text body echoing the line; the log line
        refused = wait_for(lambda: lines(caplog, "malformed request refused"))
        assert len(refused) == 1
        answer(row, reply.status, refused[0])
    else:
        answer(row, reply.status, reply.text())
    one_line_each(caplog)
    healthy(srv, caplog)


# ---- Range ---------------------------------------------------------------------------------


RANGES = [
    ("H30", b"bytes=abc"),
    ("H31", b"bytes=" + b",".join(b"%d-%d" % (2 * i + 1, 2 * i + 2) for i in range(1000))),
    ("H32", b"bytes=" + b",".join([b"0-0"] * 1000)),
    ("H33", b"bytes=" + b"9" * 30 + b"-"),
    ("H34", b"bytes=-0"),
]


@pytest.mark.parametrize(("row", "header"), RANGES,
                         ids=rows("test_range", [r for r, _ in RANGES]))
def test_range(srv: ObservedServer, caplog: pytest.LogCaptureFixture, row: str,
               header: bytes) -> None:
    reply = exchange(srv.port, http("GET", "/images/disk.img", b"Range: " + header,
                                    "Connection: close"))
    assert reply.status in (200, 400, 416), reply.raw[:200]
    if reply.status == 200:  # ignored: the whole file
        assert reply.body == IMAGE
        logged = wait_for(lambda: lines(caplog, '"GET /images/disk.img HTTP/1.1" 200'))
    elif reply.status == 416:
        assert reply.headers["content-range"] == f"bytes */{len(IMAGE)}"
        logged = wait_for(lambda: lines(caplog, '"GET /images/disk.img HTTP/1.1" 416'))
    else:  # longer than a header line may be
        logged = wait_for(lambda: lines(caplog, "malformed request refused"))
    assert len(logged) == 1
    answer(row, reply.status, logged[0])
    healthy(srv, caplog)


# ---- huge and many headers -----------------------------------------------------------------


HEADERS = [
    ("H35", http("GET", "/images/disk.img", b"X-Big: " + b"a" * 102400)),
    ("H36", http("GET", "/images/disk.img", *(f"X-H{i}: v" for i in range(500)))),
    ("H37", http("GET", b"/images/" + b"a" * 10000)),
]


@pytest.mark.parametrize(("row", "request_bytes"), HEADERS,
                         ids=rows("test_headers", [r for r, _ in HEADERS]))
def test_headers(srv: ObservedServer, caplog: pytest.LogCaptureFixture, row: str,
                 request_bytes: bytes) -> None:
    reply = exchange(srv.port, request_bytes)
    assert reply.status == 400
    refused = wait_for(lambda: lines(caplog, "malformed request refused"))
    assert len(refused) == 1
    assert len(refused[0]) < 300  # cut, however long the line was
    answer(row, reply.status, refused[0])
    healthy(srv, caplog)


# ---- slow clients --------------------------------------------------------------------------


@pytest.mark.parametrize("row", rows("test_slowloris", ["H38"]))
def test_slowloris(serve: Callable[..., ObservedServer], caplog: pytest.LogCaptureFixture,
                   row: str) -> None:
    srv = serve(client_timeout=1.0)
    request = http("GET", "/images/disk.img")
    sent = 0
    started = time.monotonic()
    with connect(srv.port) as sock:
        try:
            for byte in request:  # one byte a second, until the server hangs up
                sock.sendall(bytes([byte]))
                sent += 1
                # meanwhile others are served
                assert requests.get(f"{srv.url}/{MAC}", timeout=2).content == ACTION
                if select.select([sock], [], [], 1.0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock, timeout=3.0)
    elapsed = time.monotonic() - started
    assert reply.raw == b"", reply.raw[:200]  # closed without an answer
    assert sent <= 3 and elapsed < 4, (sent, elapsed)
    # one line for the drop; the byte count depends on how many bytes made it before the timer
    logged = [re.sub(r": \d+ bytes", ": N bytes", line) for line in lines(caplog, "dropped after")]
    answer(row, "EOF" if reply.raw == b"" else reply.raw, *logged or ["nothing logged"])
    healthy(srv, caplog)


TRICKLE = [("H39", 2.0, {"upload_timeout": 1.0}),
           ("H40", 0.2, {"upload_timeout": 5.0, "min_upload_rate": 100})]


@pytest.mark.parametrize(("row", "gap", "limits"), TRICKLE,
                         ids=rows("test_trickling_upload", [r for r, _, _ in TRICKLE]))
def test_trickling_upload(serve: Callable[..., ObservedServer], root: Path,
                          caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
                          row: str, gap: float, limits: dict[str, Any]) -> None:
    monkeypatch.setattr(server_module, "UPLOAD_RATE_WINDOW", 1.0)  # a minute in production
    srv = serve(**limits)
    assert srv.token is not None
    with connect(srv.port) as sock:
        sock.sendall(http("PUT", "/images/slow.img", bearer(srv.token), "Content-Length: 100"))
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                sock.sendall(b"x")
                if select.select([sock], [], [], gap)[0]:
                    break  # answered
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock, timeout=5.0)
    assert reply.status == 400, reply.raw[:300]
    assert time.monotonic() - started < 9
    text = re.sub(r"\d+ bytes/s over", "N bytes/s over", reply.text())
    answer(row, reply.status, text)
    assert settled(root, []) == []
    assert temp_files(root) == []
    healthy(srv, caplog)


# ---- deep JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("row", rows("test_deep_json", ["H41"]))
def test_deep_json(srv: ObservedServer, caplog: pytest.LogCaptureFixture, row: str) -> None:
    token = srv.machine_token(MAC)
    assert exchange(srv.port, event(MAC, token)).status == 204
    deep = b'{"step": "network", "status": "ok", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    reply = exchange(srv.port, event(MAC, token, deep))
    assert reply.status == 400
    answer(row, reply.status, reply.text())
    assert srv.events(MAC) == [{"step": "network", "status": "ok"}]
    resp = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=5)
    assert resp.status_code == 200 and resp.json()["events"] == 1
    healthy(srv, caplog)


# ---- log injection -------------------------------------------------------------------------


INJECTION = [
    ("H42", http("GET", b"/images/\x1b[31mred", "Connection: close"), "malformed request"),
    ("H43", http("GET", b"/images/%1b%5b31mred", "Connection: close"), "%1b%5b31mred"),
    ("H44", http("GET", b"/images/x%0D%0AI%20pyinit_server:%20forged", "Connection: close"),
     "forged"),
    ("H45", http("GET", b"/images/loop.img/%c2%9b31mred", "Connection: close"), "31mred"),
    ("H46", http("GET", "/images/disk.img", b"Range: bytes=\x1b[31m0-1", "Connection: close"),
     "malformed request"),
    ("H47", http("GET", "/images/disk.img", b"Range: bytes=\xc2\x9b31m0-1",
                 "Connection: close"), "range="),
    ("H48", http("GET", "/images/disk.img", b"Range: bytes=%0D%0AI pyinit_server: forged",
                 "Connection: close"), "range="),
]


@pytest.mark.parametrize(("row", "request_bytes", "needle"), INJECTION,
                         ids=rows("test_log_injection", [r for r, _, _ in INJECTION]))
def test_log_injection(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                       row: str, request_bytes: bytes, needle: str) -> None:
    (root / "images" / "loop.img").symlink_to("loop.img")
    reply = exchange(srv.port, request_bytes)
    assert reply.status in (200, 400, 404), reply.raw[:200]
    wait_for(lambda: lines(caplog, f"HTTP/1.1\" {reply.status}") or lines(caplog, "refused"))
    logged = lines(caplog, needle)
    assert logged, caplog.text
    one_line_each(caplog)
    answer(row, reply.status, *logged)
    healthy(srv, caplog)


# ---- a flood of invented MACs --------------------------------------------------------------


@pytest.mark.parametrize("row", rows("test_flood_of_macs", ["H49"]))
def test_flood_of_macs(serve: Callable[..., ObservedServer], caplog: pytest.LogCaptureFixture,
                       row: str) -> None:
    limit, max_machines = 20_000, 500
    srv = serve(max_event_bytes=limit, max_machines=max_machines)
    macs = [f"02-00-00-00-{i >> 8:02x}-{i & 255:02x}" for i in range(2000)]
    local = threading.local()

    def post(mac: str) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return int(local.session.post(
            f"{srv.url}/events/{mac}", timeout=10,
            headers={"Authorization": f"Bearer {srv.machine_token(mac)}"},
            json={"step": "network", "status": "start", "pad": "x" * 50}).status_code)

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, macs))
    assert set(statuses) == {204}
    page = requests.get(f"{srv.url}/api/machines?limit=1", timeout=10).json()
    store = page["store"]
    assert store["bytes"] <= limit
    assert store["events"] + store["dropped"] == len(macs)
    assert store["dropped"] > 0
    assert store["machines"] == max_machines
    assert store["machines_dropped"] == len(macs) - max_machines
    assert page["total"] == max_machines + 1  # and the machine file of the fixture's MAC
    assert srv.store is not None
    kept = srv.store.index()
    assert len(kept) == max_machines
    # the ones heard from last (16 requests in flight at a time: that much out of order)
    assert set(kept) <= set(macs[-(max_machines + 16):])
    assert_counters_match_rows(srv.store, posted=len(macs))
    answer(row, "204", f'"store": {json.dumps(store)}')
    healthy(srv, caplog)


# ---- tokens --------------------------------------------------------------------------------


def auth_cases(srv: ObservedServer) -> dict[str, bytes]:
    other_capture = f"{OTHER}.img.zst".encode()
    body = multipart(b'filename="' + other_capture + b'"', b"data")
    return {
        "H50": event(OTHER, srv.machine_token(MAC)),
        "H51": http("PUT", "/images/disk.img", bearer(srv.machine_token(MAC)),
                    "Content-Length: 4", body=b"evil"),
        "H52": http("POST", "/image", bearer(srv.machine_token(MAC)), MULTIPART,
                    f"Content-Length: {len(body)}", body=body),
        "H53": http("POST", f"/events/{MAC}", "Content-Length: 2", body=b"{}"),
    }


AUTH = ["H50", "H51", "H52", "H53"]


@pytest.mark.parametrize("row", rows("test_token", AUTH), ids=AUTH)
def test_token(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
               row: str) -> None:
    reply = exchange(srv.port, auth_cases(srv)[row])
    assert reply.status in (401, 403), reply.raw[:300]
    if reply.status == 401:
        assert reply.headers["www-authenticate"] == 'Bearer realm="pyinit"'
    refused = lines(caplog, "refused")
    assert len(refused) == 1
    answer(row, reply.status, reply.text(), refused[0])
    assert stored_events(srv) == 0
    assert leftovers(root) == [] and temp_files(root) == []
    assert (root / "images" / "disk.img").read_bytes() == IMAGE
    healthy(srv, caplog)


@pytest.mark.parametrize("row", rows("test_plain_listener_of_tls_server", ["H54"]))
def test_plain_listener_of_tls_server(serve: Callable[..., ObservedServer], root: Path,
                                      caplog: pytest.LogCaptureFixture,
                                      tls_files: TLSFiles, row: str) -> None:  # noqa: F811
    srv = serve(tls_cert=tls_files.cert, tls_key=tls_files.key)
    assert srv.http_port is not None and srv.token is not None
    for request_bytes in (event(MAC, srv.machine_token(MAC)), event(MAC, srv.token),
                          http("PUT", "/images/disk.img", bearer(srv.token),
                               "Content-Length: 4", body=b"evil")):
        reply = exchange(srv.http_port, request_bytes)
        assert reply.status == 403, reply.raw[:300]
    answer(row, reply.status, reply.text(), lines(caplog, "refused")[-1])
    assert stored_events(srv) == 0
    assert (root / "images" / "disk.img").read_bytes() == IMAGE
    assert leftovers(root) == []
    healthy(srv, caplog)


# ---- signals: the real ``pyinit serve`` ----------------------------------------------------


TOKEN = "hostile-test-operator-token"


class Serve:
    """``pyinit serve`` in a subprocess on a free port; its stdout lines arrive in a queue, its
    stderr is collected."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyinit_build.cli", "serve", "--root", str(root),
             "--port", "0", "--token", TOKEN, *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self._err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err.append))]
        for t in self._readers:
            t.start()
        line = self.wait_stdout(" on http://", timeout=20)
        m = re.search(r" on http://127\.0\.0\.1:(\d+)", line)
        assert m, line
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _read(stream: Any, put: Callable[[str], Any]) -> None:
        for line in stream:
            put(line)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait_stdout(self, needle: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if needle in line:
                return line
        self.kill()
        raise AssertionError(f"{needle!r} not printed; stderr: {self.stderr}")

    def finish(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@pytest.fixture
def cli(root: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        started.append(Serve(root, *args))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert not re.search(r"^[EC] ", stderr, re.M), stderr  # no ERROR/CRITICAL line


SIGTERM_ROWS = [("H55", "completes"), ("H56", "stalls")]


@pytest.mark.parametrize(("row", "client"), SIGTERM_ROWS,
                         ids=rows("test_sigterm_mid_upload", [r for r, _ in SIGTERM_ROWS]))
def test_sigterm_mid_upload(cli: Callable[..., Serve], root: Path, row: str,
                            client: str) -> None:
    server = cli("--grace", "2")
    with connect(server.port) as sock:
        sock.sendall(http("PUT", "/images/term.img", bearer(TOKEN), "Content-Length: 10",
                          body=b"01234"))
        wait_for(lambda: temp_files(root))
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_stdout("SIGTERM: stopping")
        time.sleep(0.3)  # the drain has begun: the listener is closed, the upload goes on
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        if client == "completes":
            sock.sendall(b"56789")
        reply = read_reply(sock, timeout=5)
    assert server.finish() == 0
    elapsed = time.monotonic() - started
    clean_stderr(server.stderr)
    assert temp_files(root) == []
    if client == "completes":
        assert reply.status == 201, reply.raw[:300]
        assert (root / "images" / "term.img").read_bytes() == b"0123456789"
        assert leftovers(root) == ["term.img", "term.img.sha256"]
        assert elapsed < 2, elapsed  # it did not wait out the grace period
        answer(row, reply.status, reply.text(), "exit 0")
    else:
        assert reply.raw == b""
        assert leftovers(root) == []
        assert 1.5 < elapsed < 6, elapsed  # the grace period, then the stop
        gone = [ln for ln in server.stderr.splitlines() if "cancelled" in ln]
        assert len(gone) == 1, server.stderr
        answer(row, gone[0], "exit 0")


@pytest.mark.parametrize("row", rows("test_sigkill_mid_upload", ["H57"]))
def test_sigkill_mid_upload(cli: Callable[..., Serve], root: Path, row: str) -> None:
    server = cli()
    with connect(server.port) as sock:
        sock.sendall(http("PUT", "/images/kill.img", bearer(TOKEN), "Content-Length: 10",
                          body=b"01234"))
        temp = wait_for(lambda: temp_files(root))[0]
        replies = [exchange(server.port, http(method, target, "Connection: close"))
                   for method in ("GET", "HEAD")
                   for target in (f"/images/{temp}", f"/images/%2E{temp[1:]}",
                                  f"/images/x/../{temp}")]
        assert [r.status for r in replies] == [403] * 6, [r.raw[:200] for r in replies]
        reply = replies[0]
        server.proc.kill()
        assert server.finish() == -signal.SIGKILL
    assert temp_files(root) == [temp]  # what a killed server leaves
    again = cli()
    assert temp_files(root) == []
    requests.get(f"{again.url}/api/machines", timeout=5).raise_for_status()
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    clean_stderr(again.stderr)
    removed = [ln for ln in again.stderr.splitlines() if "unfinished upload" in ln]
    assert len(removed) == 1, again.stderr
    answer(row, reply.status, reply.text(), removed[0], root=root)


@pytest.mark.parametrize("row", rows("test_acknowledged_events_survive_sigkill", ["H58"]))
def test_acknowledged_events_survive_sigkill(cli: Callable[..., Serve], root: Path,
                                             row: str) -> None:
    server = cli()
    count = 300
    local = threading.local()

    def post(i: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return int(local.session.post(f"{server.url}/events/{MAC}", timeout=10,
                                      headers={"Authorization": f"Bearer {TOKEN}"},
                                      json={"step": "network", "status": "start",
                                            "seq": i}).status_code)

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(count)))
    assert statuses == [204] * count
    server.proc.kill()  # right after the last acknowledgement
    assert server.finish() == -signal.SIGKILL
    again = cli()
    status = requests.get(f"{again.url}/api/machines/{MAC}", timeout=5).json()
    assert status["events"] == count
    assert sorted(ev["seq"] for ev in status["log"]) == list(range(count))
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    clean_stderr(again.stderr)
    answer(row, "204", f'"events": {status["events"]}')


# ---- the lifecycle (issue #16) -------------------------------------------------------------

UNKNOWN = "52-54-00-00-00-99"  # no machine file, no events
FIRSTBOOT = b'{"step": "firstboot", "status": "booted", "kernel": "6.1.0-57-amd64"}'
FETCHED = {"step": "action", "status": "fetched", "action": "writeImage", "dry_run": False}


def lifecycle_cases(srv: ObservedServer) -> dict[str, bytes]:
    assert srv.token is not None
    operator, none = bearer(srv.token), "Content-Length: 0"
    return {
        "H59": event(UNKNOWN, srv.machine_token(UNKNOWN), FIRSTBOOT),
        "H60": event(OTHER, srv.machine_token(MAC), FIRSTBOOT),
        "H61": event(MAC, srv.machine_token(MAC), FIRSTBOOT),
        "H62": http("POST", f"/api/machines/{MAC}/redeploy", operator, none),
        "H63": http("POST", f"/api/machines/{UNKNOWN}/redeploy", operator, none),
        "H64": http("POST", f"/api/machines/{OTHER}/redeploy", none),
        "H65": http("POST", f"/api/machines/{OTHER}/redeploy",
                    bearer(srv.machine_token(OTHER)), none),
        "H66": event(OTHER, srv.machine_token(OTHER),
                     b'{"step": "operator", "status": "redeploy"}'),
    }


LIFECYCLE = ["H59", "H60", "H61", "H62", "H63", "H64", "H65", "H66"]
# the rows whose event is kept (204): a confirmation with no deployment on record is the
# machine's word all the same; the server says what it did not make of it
KEPT = {"H59": UNKNOWN, "H61": MAC}


@pytest.mark.parametrize("row", rows("test_lifecycle", LIFECYCLE), ids=LIFECYCLE)
def test_lifecycle(srv: ObservedServer, root: Path, caplog: pytest.LogCaptureFixture,
                   row: str) -> None:
    """MAC is deploying (its run fetched the action), OTHER is deployed; neither a machine nor
    a client without the operator token moves either of them."""
    store = srv.store
    assert store is not None
    store.add(MAC, FETCHED)
    store.add(OTHER, FETCHED)
    store.add(OTHER, {"step": "result", "status": "ok", "handoff": "reboot"})
    before = {m: srv.status(m)["lifecycle"] for m in (MAC, OTHER)}
    assert (before[MAC]["state"], before[OTHER]["state"]) == ("deploying", "deployed")
    events = stored_events(srv)
    caplog.clear()
    reply = exchange(srv.port, lifecycle_cases(srv)[row])
    # what the server said of it: not the access line, not the echo of a stored event
    said = [line for line in lines(caplog) if "HTTP/1.1" not in line
            and not re.match(r"I pyinit_server: event \S+: \{", line)]
    assert len(said) == 1, said
    body = [] if reply.status == 204 else [reply.text()]
    answer(row, reply.status, *body, said[0])
    assert {m: srv.status(m)["lifecycle"] for m in (MAC, OTHER)} == before
    if row in KEPT:
        assert reply.status == 204 and stored_events(srv) == events + 1
        assert srv.events(KEPT[row])[-1] == json.loads(FIRSTBOOT)
    else:
        assert reply.status >= 400 and stored_events(srv) == events
    if row == "H59":
        assert srv.status(UNKNOWN)["lifecycle"] is None  # listed, in no state
    healthy(srv, caplog)
