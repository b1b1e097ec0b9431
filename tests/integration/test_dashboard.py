"""The live dashboard of ``pyinit serve`` in a real headless Chromium.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3
in, fd 4 out, NUL-separated JSON), so the test needs no extra package and no TCP port: it
loads the page from an in-process server, posts events while the page is open, clicks a row
with real mouse events, reads the rendered DOM and takes a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit_server import dashboard
from tests.serverkit import ObservedServer

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
WIDTH, HEIGHT = 1280, 800
WRITING = "52-54-00-00-01-01"
FAILED = "52-54-00-00-01-02"
DONE = "52-54-00-00-01-03"
BROKEN = "52-54-00-00-01-04"  # a machine file that does not parse, never booted
LATE = "52-54-00-00-01-05"  # appears only after the page loaded
XSS = '<img src=x onerror="window.__pwned=1">disk /dev/sdz not found'
WRITE = ("action: writeImage\nsourceImage: images/ubuntu-24.04.img.zst\n"
         "destinationDevice: /dev/nvme0n1\n")
DEPLOYED_AGO = 17 * 60 + 20  # seconds: DONE's deployment, over the 15 minutes of the warning


@pytest.fixture
def root(tmp_path: Path) -> Path:
    machines = tmp_path / "machines"
    machines.mkdir()
    (tmp_path / "images").mkdir()
    (machines / f"{WRITING}.yaml").write_text(WRITE)
    (machines / f"{FAILED}.yaml").write_text(WRITE.replace("nvme0n1", "sdz"))
    (machines / f"{BROKEN}.yaml").write_text("action: [writeImage\n")
    (machines / "default.yaml").write_text(WRITE)
    return tmp_path


def post(srv: ObservedServer, mac: str, event: dict[str, Any]) -> None:
    r = requests.post(f"{srv.url}/events/{mac}", json=event, timeout=10)
    assert r.status_code == 204, r.text


def provision_fleet(srv: ObservedServer) -> None:
    """Three machines in three states, with the events pyinit really sends; the one that is
    done was deployed 17 minutes ago (the server's receive time) and its first boot never
    came."""
    def boot(mac: str, send: Callable[[dict[str, Any]], None]) -> None:
        for step in ("rootfs", "modules", "network", "action"):
            send({"step": step, "status": "start"})
            send({"step": step, "status": "ok", "elapsed": 0.4})
            if step == "action":
                send({"step": "action", "status": "fetched", "action": "writeImage",
                      "dry_run": False})
        send({"step": "provision", "status": "start"})

    for mac in (WRITING, FAILED):
        boot(mac, functools.partial(post, srv, mac))
    post(srv, WRITING, {"step": "provision", "status": "progress", "percent": 42.0,
                        "written": 1_803_886_592, "rate": 48_300_000.0, "eta": 83.0})
    post(srv, FAILED, {"step": "provision", "status": "failed", "error": XSS, "elapsed": 3.1})
    post(srv, FAILED, {"step": "result", "status": "failed", "error": XSS})
    store, t = srv.store, time.time() - DEPLOYED_AGO - 80
    assert store is not None

    def old(ev: dict[str, Any]) -> None:
        nonlocal t
        t += 5
        store.add(DONE, ev, t)

    boot(DONE, old)
    old({"step": "provision", "status": "progress", "percent": 97.5, "rate": 61_000_000.0,
         "eta": 2.0})
    old({"step": "provision", "status": "ok", "elapsed": 71.2})
    old({"step": "finish", "status": "ok", "elapsed": 0.2})
    t = time.time() - DEPLOYED_AGO
    store.add(DONE, {"step": "result", "status": "ok", "handoff": "reboot"}, t)


# -- a DevTools-protocol client over Chromium's debugging pipe ---------------------------------


class CdpError(Exception):
    pass


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe``; one page, one session."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        argv = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu",
                f"--user-data-dir={profile}", "--remote-debugging-pipe",
                f"--window-size={WIDTH},{HEIGHT}", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--font-render-hinting=none",
                "about:blank"]
        # posix_spawn rather than Popen(preexec_fn=dup2): the server thread is running, and
        # preexec_fn is not safe in a threaded parent.
        self.pid = os.posix_spawn(argv[0], argv, dict(os.environ), setpgroup=0, file_actions=[
            (os.POSIX_SPAWN_DUP2, to_chrome_r, 3), (os.POSIX_SPAWN_DUP2, from_chrome_w, 4),
            (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2),
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)])
        for fd in (to_chrome_r, from_chrome_w, log_fd):
            os.close(fd)
        self._buf = b""
        self._next = 0
        self.session: str | None = None
        self.log = log

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             browser: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if not browser and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise CdpError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} within {timeout:g} s "
                                   f"(its log: {self.log})")
            data = os.read(self._from_chrome, 1 << 20)
            if not data:
                raise CdpError(f"chromium exited (its log: {self.log}): "
                               f"{self.log.read_text()[-2000:]}")
            self._buf += data

    def open(self, url: str) -> None:
        targets = self.call("Target.getTargets", browser=True)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                           "flatten": True},
                                 browser=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                        "deviceScaleFactor": 1,
                                                        "mobile": False})
        self.call("Page.navigate", {"url": url})

    def eval(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CdpError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 30.0) -> None:
        """Return once ``expression`` is truthy; fail naming ``what`` and the last value."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(f"!!({expression})")  # a DOM node is not serializable
            except CdpError as exc:  # the page is still loading
                value = str(exc)
            else:
                if value:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the page never showed {what} within {timeout:g} s "
                             f"(last value: {value!r})")

    def click(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        with contextlib.suppress(CdpError, TimeoutError, OSError):
            self.call("Browser.close", browser=True, timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            if self._kill():
                os.waitpid(self.pid, 0)
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        self._kill()  # helpers (zygote, renderer) that outlived the browser

    def _kill(self) -> bool:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not found: apt install chromium"
        if "PYINIT_OUT" in os.environ:
            pytest.fail(message)
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="pyinit-chromium-") as profile:
        b = Browser(Path(profile), tmp_path / "chromium.log")
        try:
            yield b
        finally:
            b.close()


# -- reading the page --------------------------------------------------------------------------

ROWS_JS = """JSON.stringify([...document.querySelectorAll('#rows tr')].map(tr => ({
  mac: tr.dataset.mac, cls: tr.className, hidden: tr.hidden,
  cells: [...tr.cells].map(td => td.innerText.trim()),
  lifeTitle: tr.querySelector('td.life').title,
  bar: tr.querySelector('.fill').style.width})))"""


def rows(b: Browser) -> dict[str, dict[str, Any]]:
    names = ("mac", "file", "life", "phase", "progress", "rate", "eta", "result", "error",
             "seen")
    out = {}
    for r in json.loads(b.eval(ROWS_JS)):
        out[r["mac"]] = {**dict(zip(names, r["cells"], strict=True)), "cls": r["cls"],
                         "bar": r["bar"], "hidden": r["hidden"], "life_title": r["lifeTitle"]}
    return out


def polls(srv: ObservedServer) -> int:
    # the page asks for one page of machines: /api/machines?offset=0&limit=500
    return sum(1 for r in srv.access_log if r["path"].split("?")[0] == "/api/machines")


def after_poll(srv: ObservedServer, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` from a thread once the page has polled /api/machines at least once."""
    def run() -> None:
        deadline = time.monotonic() + 30
        while polls(srv) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        action()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def check_png(data: bytes, width: int, height: int) -> int:
    """Validate a PNG (8-bit RGB/RGBA, non-interlaced) and return its number of colours."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + chunk) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            ihdr = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert (w, h) == (width, height)
    assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(h):  # undo the per-scanline filters (PNG spec, section 9)
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:
            colours.update(bytes(line[x:x + 3]) for x in range(0, stride, bpp * 2))
        prev = line
    return len(colours)


# -- without a browser -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/dashboard", "/?x=1"])
def test_page_is_served_uncached_with_a_strict_policy(root: Path, path: str) -> None:
    with ObservedServer(root, open_writes=True) as srv:
        r = requests.get(srv.url + path, timeout=10)
        head = requests.head(srv.url + path, timeout=10)
    assert r.status_code == 200 and head.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.content == dashboard.PAGE and r.text.startswith("<!DOCTYPE html>")
    assert head.content == b"" and head.headers["Content-Length"] == str(len(dashboard.PAGE))
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


def test_page_is_self_contained_and_never_parses_html() -> None:
    page = dashboard.PAGE.decode()
    for needle in ("http://", "https://", "//cdn", "@import", "innerHTML", "outerHTML",
                   "insertAdjacentHTML", "document.write", "eval("):
        assert needle not in page, needle
    assert page.count("<script>") == 1 and "src=" not in page


# -- in the browser ----------------------------------------------------------------------------


def test_dashboard_live_in_chromium(root: Path, browser: Browser, tmp_path: Path) -> None:
    with ObservedServer(root, open_writes=True) as srv:
        provision_fleet(srv)

        def later() -> None:
            post(srv, WRITING, {"step": "provision", "status": "progress", "percent": 77.0,
                                "rate": 52_400_000.0, "eta": 35.0})
            post(srv, LATE, {"step": "rootfs", "status": "start"})

        late = after_poll(srv, later)
        browser.open(srv.url + "/")
        browser.wait(f"document.querySelector('#rows tr[data-mac=\"{WRITING}\"]')",
                     "the first machine")
        browser.eval("window.__loaded_once = 1")  # gone if the page were reloaded
        first = polls(srv)
        assert first >= 1

        # -- live: events posted after the first poll appear without a reload --------------
        browser.wait(f"document.querySelector('#rows tr[data-mac=\"{LATE}\"]') && "
                     f"document.querySelector('#rows tr[data-mac=\"{WRITING}\"] .pct')"
                     ".textContent === '77.0 %'", "the event posted after the first poll")
        late.join(5)
        assert browser.eval("window.__loaded_once") == 1
        assert sum(1 for r in srv.access_log if r["path"] in ("/", "/dashboard")) == 1

        got = rows(browser)
        assert list(got) == [*sorted([WRITING, FAILED, DONE, BROKEN, LATE]), "default"]
        assert got["default"]["result"] == "default"  # the fallback file, not a machine
        w = got[WRITING]
        assert (w["phase"], w["progress"], w["rate"], w["eta"], w["result"]) == (
            "provision · progress", "77.0 %", "52.4 MB/s", "0:35", "running")
        assert w["bar"] == "77%" and w["file"] == f"machines/{WRITING}.yaml"
        f = got[FAILED]
        assert f["result"] == "failed" and "failed" in f["cls"] and f["rate"] == ""
        assert f["error"] == XSS  # the markup shows as text...
        assert browser.eval("document.querySelectorAll('img').length") == 0  # ...and is inert
        assert browser.eval("window.__pwned === undefined") is True
        d = got[DONE]
        assert (d["result"], d["progress"], d["bar"], d["eta"]) == ("ok", "100.0 %", "100%", "")
        assert got[DONE]["file"] == "machines/default.yaml"
        br = got[BROKEN]
        assert br["result"] == "waiting" and br["seen"] == "never"
        assert br["file"] == (f"—\nmachines/{BROKEN}.yaml:2: expected ',' or ']', but got "
                              "'<stream end>'")
        assert got[LATE]["phase"] == "rootfs · start"
        assert all(r["seen"].endswith(" s ago") for m, r in got.items()
                   if m not in (BROKEN, DONE, "default"))
        assert d["seen"] == "17 min ago"
        counts = browser.eval("JSON.stringify(['all','running','ok','failed','waiting']"
                              ".map(k => document.getElementById('n-' + k).textContent))")
        assert json.loads(counts) == ["5", "2", "1", "1", "1"]

        # -- the lifecycle: state, for how long, the evidence on hover, the warning ---------
        assert w["life"].startswith("deploying for ") and w["life"].endswith(" s")
        assert f["life"].startswith("failed for ")
        assert f["life_title"].startswith("failed for ") and XSS in f["life_title"]
        assert d["life"] == ("deployed for 17 min\n\u26a0 deployed 17 min ago and no first "
                             "boot confirmed")
        assert "unconfirmed" in d["cls"]
        assert d["life_title"].startswith("deployed for 17 min: result ok, handoff reboot\n"
                                          "before: deploying\nsince ")
        assert d["life_title"].endswith("\nwarning: deployed 17 min ago and no first boot "
                                        "confirmed")
        assert (br["life"], got[LATE]["life"]) == ("new", "new")
        assert browser.eval("document.title") == "pyinit: 1 failed, 2 running, 1 unconfirmed"
        life_counts = json.loads(browser.eval(
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll("
            "'.counts.life button')].filter(b => !b.hidden).map(b => [b.dataset.life, "
            "b.querySelector('b').textContent])))"))
        assert life_counts == {"new": "2", "deploying": "1", "deployed": "1", "failed": "1",
                               "unconfirmed": "1"}  # the states the fleet has, no others
        browser.eval("document.querySelector('.counts.life button[data-life=unconfirmed]')"
                     ".click()")
        browser.wait("[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.mac)"
                     f".join() === '{DONE}'", "the unconfirmed machine alone")
        assert any("lifecycle=unconfirmed" in r["path"] for r in srv.access_log)
        assert browser.eval("document.querySelector('.counts.life button[data-life="
                            "unconfirmed]').getAttribute('aria-pressed')") == "true"
        browser.eval("document.querySelector('.counts.life button[data-life=unconfirmed]')"
                     ".click()")
        browser.wait("document.querySelectorAll('#rows tr').length === 6", "every machine again")

        # -- click a machine: its log opens, and keeps following ----------------------------
        box = json.loads(browser.eval(
            f"JSON.stringify(document.querySelector('#rows tr[data-mac=\"{FAILED}\"] td')"
            ".getBoundingClientRect())"))
        browser.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        browser.wait("document.querySelectorAll('#loglines .ev').length === 12",
                     "the 12 events of the failed machine")
        assert browser.eval("location.hash") == f"#{FAILED}"
        assert browser.eval("document.getElementById('logtitle').textContent") == \
            f"Log of {FAILED}"
        lines = json.loads(browser.eval(
            "JSON.stringify([...document.querySelectorAll('#loglines .ev')]"
            ".map(e => [e.className, e.innerText]))"))
        assert lines[0][1].split()[1:3] == ["rootfs", "start"], lines
        assert lines[-1][0] == "ev bad" and lines[-1][1].split()[1:3] == ["result", "failed"]
        assert XSS in lines[-1][1]
        detail = json.loads(browser.eval(
            "JSON.stringify([...document.querySelectorAll('#life .lifeline')]"
            ".map(e => [...e.children].map(c => c.textContent)))"))
        assert len(detail) == 1 and detail[0][0] == "state", detail
        assert detail[0][1].startswith("failed for ") and detail[0][1].endswith(
            f" · ?: {XSS} · before: deploying")
        assert browser.eval("document.querySelectorAll('img').length") == 0
        # the fills are drawn, not just styled (once their 0.4 s transition has run)
        browser.wait("(w => Math.abs(w[0] - 140 * 0.77) < 1 && Math.abs(w[2] - 140) < 1)"
                     "([...document.querySelectorAll('#rows .fill')]"
                     ".map(f => f.getBoundingClientRect().width))", "bars of 77 % and 100 %",
                     timeout=5)

        shot = browser.screenshot()
        out = Path(os.environ.get("PYINIT_OUT") or tmp_path) / "dashboard.png"
        out.write_bytes(shot)
        assert check_png(shot, WIDTH, HEIGHT) >= 8, f"{out} looks blank"

        # an event after the result starts a new run (pyinit_server.status) and the open log
        # follows it
        post(srv, FAILED, {"step": "shell", "status": "start", "reason": "pyinit.on_failure"})
        browser.wait("(e => e && e.innerText.includes('pyinit.on_failure'))"
                     "(document.querySelector('#loglines .ev:last-child'))",
                     "the event posted while its log was open")
        assert browser.eval("document.querySelectorAll('#loglines .ev').length") == 13

        # the deployed machine's first boot is confirmed: the state moves, the warning goes,
        # and the run's result stays
        post(srv, DONE, {"step": "firstboot", "status": "booted", "kernel": "6.1.0-57-amd64"})
        browser.wait(f"(r => r.querySelector('.lstate').textContent === 'booted' && "
                     f"!r.classList.contains('unconfirmed'))(document.querySelector("
                     f"'#rows tr[data-mac=\"{DONE}\"]'))", "the confirmed first boot")
        d = rows(browser)[DONE]
        assert d["life"].startswith("booted for ") and d["result"] == "ok"
        assert d["life_title"].startswith("booted for ") and "first boot confirmed by the " \
            "target (kernel 6.1.0-57-amd64)\nbefore: deployed\n" in d["life_title"]
        assert browser.eval("document.getElementById('l-unconfirmed').parentNode.hidden")
        assert browser.eval("document.title") == "pyinit: 3 running"  # FAILED: a new run



def test_dashboard_pages_a_large_fleet_in_chromium(root: Path, browser: Browser) -> None:
    """1200 machines: the page shows 500 at a time with the fleet's counts, pages on the
    server, and a state button asks the server for that state only."""
    for i in range(1200):
        (root / "machines" / f"52-54-00-01-{i >> 8:02x}-{i & 0xff:02x}.yaml").write_text(
            "action: writeImage\nsourceImage: images/a.img\ndestinationDevice: /dev/vda\n")
    with ObservedServer(root, open_writes=True) as srv:
        post(srv, "52-54-00-01-04-00", {"step": "result", "status": "failed", "error": "boom"})
        browser.open(srv.url + "/")
        browser.wait("document.getElementById('pageinfo').textContent.includes('of ')",
                     "the pager")
        total = len(list((root / "machines").glob("*.yaml")))
        assert browser.eval("document.getElementById('pageinfo').textContent") == \
            f"1-500 of {total}"
        assert browser.eval("document.querySelectorAll('#rows tr').length") == 500
        assert browser.eval("document.getElementById('n-failed').textContent") == "1"
        browser.eval("document.getElementById('next').click()")
        browser.wait("document.getElementById('pageinfo').textContent.startsWith('501-')",
                     "the second page")
        first = browser.eval("document.querySelector('#rows tr').dataset.mac")
        assert first == sorted(p.name.split(".")[0] for p in
                               (root / "machines").glob("*.yaml"))[500]
        browser.eval("document.querySelector('.counts button[data-show=failed]').click()")
        browser.wait("document.querySelectorAll('#rows tr').length === 1",
                     "the failed machine only")
        assert browser.eval("document.querySelector('#rows tr').dataset.mac") == \
            "52-54-00-01-04-00"
        assert any("state=failed" in r["path"] for r in srv.access_log)


def test_a_late_answer_to_an_older_poll_never_draws_over_a_click(root: Path,
                                                                  browser: Browser) -> None:
    """The poll loop's request, sent before a filter button is clicked, answered after the
    button's own: the older answer is not drawn (it would show every machine again under a
    pressed "failed"; a fresh-clone run under load caught it on the paged fleet test)."""
    with ObservedServer(root, open_writes=True) as srv:
        post(srv, FAILED, {"step": "result", "status": "failed", "error": "boom"})
        browser.open(srv.url + "/")
        browser.wait("document.querySelectorAll('#rows tr').length > 1", "the fleet")
        real = srv.status
        slow_started = threading.Event()

        def slow(mac: str | None = None, **kw: Any) -> Any:
            if mac is None and kw.get("state") is None and not slow_started.is_set():
                slow_started.set()
                time.sleep(2.0)  # the next unfiltered poll answers late
            return real(mac, **kw)

        srv.status = slow  # type: ignore[method-assign]
        assert slow_started.wait(10), "no poll while waiting"
        browser.eval("document.querySelector('.counts button[data-show=failed]').click()")
        browser.wait("document.querySelectorAll('#rows tr').length === 1", "the failed machine")
        time.sleep(2.5)  # the late answer has come in by now
        assert browser.eval("document.querySelectorAll('#rows tr').length") == 1
        assert browser.eval("document.querySelector('#rows tr').dataset.mac") == FAILED


def test_machine_hardware_and_lldp_in_chromium(root: Path, browser: Browser) -> None:
    """The open log shows the machine's product and each NIC's switch, port and VLAN; a
    hostile product name stays text."""
    with ObservedServer(root, open_writes=True) as srv:
        post(srv, WRITING, {"step": "action", "status": "ok"})
        post(srv, WRITING, {"step": "hardware", "status": "inventory",
                            "system": {"vendor": "Dell Inc.", "product": XSS,
                                       "serial": "7XYZ123"},
                            "cpu": {"count": 64}, "memory": {"total": 206_158_430_208},
                            "pci": {"count": 48, "devices": []}})
        post(srv, WRITING, {"step": "lldp", "status": "neighbour", "interface": "eno1",
                            "system_name": "switch01", "port_id": "Ethernet1/3",
                            "port_description": "rack1 node01", "port_vlan": 100,
                            "chassis_id": "0c:42:a1:5e:77:07"})
        post(srv, WRITING, {"step": "lldp", "status": "done", "silent": ["eno2"]})
        browser.open(f"{srv.url}/#{WRITING}")
        browser.wait("document.querySelectorAll('#hw .hwline').length === 3",
                     "the hardware and LLDP lines")
        lines = json.loads(browser.eval(
            "JSON.stringify([...document.querySelectorAll('#hw .hwline')]"
            ".map(e => [...e.children].map(c => c.textContent)))"))
        assert lines == [
            ["hardware", f"Dell Inc. {XSS} · serial 7XYZ123 · 64 CPUs · 192.0 GiB · "
                         "48 PCI devices"],
            ["eno1", "switch01 · port Ethernet1/3 (rack1 node01) · VLAN 100"],
            ["eno2", "no LLDP neighbour heard"]]
        assert browser.eval("document.querySelectorAll('img').length") == 0
        assert browser.eval("window.__pwned === undefined") is True
        # the phase is the boot's, not the background events'
        assert rows(browser)[WRITING]["phase"] == "action · ok"


def _serve(root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyinit_build.cli", "serve", "--root",
                                 str(root), "--port", str(port)], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/api/machines", timeout=2)
            return proc
        except requests.ConnectionError:
            if proc.poll() is not None:
                raise AssertionError(f"pyinit serve exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"pyinit serve did not answer on port {port} within 30 s")


def test_dashboard_survives_a_server_crash(root: Path, browser: Browser, tmp_path: Path) -> None:
    """A real ``pyinit serve`` killed (SIGKILL) under the page: a stale banner, the last data
    kept, and the page picks up the restarted server by itself (no reload), which still has
    every event it acknowledged before the kill."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = _serve(root, port, log)
    # secure by default: the operator token the server made on its first start
    token = (root / ".pyinit" / "operator-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    try:
        resp = requests.post(f"{url}/events/{WRITING}", json={
            "step": "provision", "status": "progress", "percent": 10.0}, headers=auth, timeout=10)
        assert resp.status_code == 204
        browser.open(url + "/")
        browser.wait(f"document.querySelector('#rows tr[data-mac=\"{WRITING}\"] .pct')"
                     ".textContent === '10.0 %'", "the machine before the crash")
        browser.eval("window.__loaded_once = 1")
        assert browser.eval("document.getElementById('banner').offsetHeight") == 0
        proc.kill()
        proc.wait(10)
        browser.wait("document.body.classList.contains('stale') && "
                     "document.getElementById('banner').offsetHeight > 0", "the stale banner")
        banner = browser.eval("document.getElementById('banner').textContent")
        assert banner.startswith("Server unreachable (") and "retrying every 1 s" in banner
        assert browser.eval(f"document.querySelector('#rows tr[data-mac=\"{WRITING}\"] "
                            ".pct').textContent") == "10.0 %"  # the last data stays
        proc = _serve(root, port, log)
        requests.post(f"{url}/events/{DONE}", json={"step": "rootfs", "status": "start"},
                      headers=auth, timeout=10)
        browser.wait("!document.body.classList.contains('stale')", "recovery after the restart")
        browser.wait(f"document.querySelector('#rows tr[data-mac=\"{DONE}\"] td.phase')"
                     ".textContent === 'rootfs · start'", "the restarted server's data")
        # the event acknowledged before the kill survived it (SQLite under root/.pyinit)
        assert browser.eval(f"document.querySelector('#rows tr[data-mac=\"{WRITING}\"] "
                            ".pct').textContent") == "10.0 %"
        assert browser.eval("window.__loaded_once") == 1
    finally:
        proc.kill()
        proc.wait(10)


FORMATS = [
    ("fmtRate", 0, "0 B/s"), ("fmtRate", 999, "999 B/s"), ("fmtRate", 48_300_000, "48.3 MB/s"),
    ("fmtRate", 1_250_000_000, "1.3 GB/s"), ("fmtRate", None, ""), ("fmtRate", -1, ""),
    ("fmtEta", 0, "0:00"), ("fmtEta", 83, "1:23"), ("fmtEta", 599.6, "10:00"),
    ("fmtEta", 3725, "1:02:05"), ("fmtEta", None, ""),
    ("fmtAge", 3.9, "3 s ago"), ("fmtAge", -2, "0 s ago"), ("fmtAge", 125, "2 min ago"),
    ("fmtAge", 7300, "2 h ago"), ("fmtAge", 200000, "2 d ago"), ("fmtAge", None, "never"),
    ("fmtPct", 42, "42.0 %"), ("fmtPct", None, ""),
    ("fmtDur", 59.9, "59 s"), ("fmtDur", 3600, "1 h"), ("fmtDur", None, ""),
    ("lifeCell", {"lifecycle": {"state": "booted", "evidence": "first boot confirmed",
                                "previous": "deployed", "pending": "redeploy"}},
     {"state": "booted", "since": "", "pending": "redeploy pending", "warning": "",
      "title": "booted: first boot confirmed\nbefore: deployed\nredeploy requested: its next "
               "boot provisions it again"}),
    # a state the page does not know is no class name of the page's: shown as new
    ("lifeCell", {"lifecycle": {"state": "x onmouseover", "evidence": "e"}},
     {"state": "new", "since": "", "pending": "", "warning": "", "title": "new: e"}),
    ("lifeCell", {"lifecycle": None},
     {"state": "new", "since": "", "pending": "", "warning": "",
      "title": "new: nothing has moved this machine's lifecycle yet"}),
    ("lifeLines", {"lifecycle": {"state": "deployed", "evidence": "result ok"},
                   "lifecycle_warning": "deployed 17 min ago and no first boot confirmed"},
     [["state", "deployed · result ok", False],
      ["warning", "deployed 17 min ago and no first boot confirmed", True]]),
    ("classify", {"result": "ok", "events": 3}, "ok"),
    ("classify", {"result": "failed", "events": 3}, "failed"),
    ("classify", {"result": None, "state": "failed", "events": 3}, "failed"),
    ("classify", {"result": None, "state": "progress", "events": 3}, "running"),
    ("classify", {"result": None, "state": None, "events": 0}, "waiting"),
    ("classify", {"mac": "default", "events": 0}, "default"),
]


def test_formatting_in_chromium(root: Path, browser: Browser) -> None:
    """The page's own formatting functions, table-style, in the browser that runs them (one
    browser for the whole table: starting Chromium costs seconds)."""
    with ObservedServer(root, open_writes=True) as srv:
        browser.open(srv.url + "/dashboard")
        browser.wait("window.pyinitDashboard", "the dashboard script")
        got = [browser.eval(f"window.pyinitDashboard.{fn}({json.dumps(arg)})")
               for fn, arg, _ in FORMATS]
    wrong = [(fn, arg, want, value)
             for (fn, arg, want), value in zip(FORMATS, got, strict=True) if value != want]
    assert wrong == [], "(function, argument, wanted, got)"
