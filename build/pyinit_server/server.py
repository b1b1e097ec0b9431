"""A minimal provisioning server (stdlib only): per-MAC actions, images with Range, events.

Layout of ``root``::

    machines/52-54-00-12-34-56.json   the action for one machine (MAC lower-case, dashes)
    machines/default.json             optional: the action for any other MAC
    images/...                        image files

Routes:

``GET|HEAD /{mac}`` and ``/{mac}.bty``
    the machine's file as-is (``application/json``; not validated, the client must reject a
    malformed action). The MAC may use dashes or colons, any case. 404 (short JSON body) for an
    unknown MAC without ``default.json``; 400 for a path that is not a MAC.
``GET|HEAD /images/<path>``
    the file, with ``Range: bytes=a-b`` (206/416), ``ETag``, ``Last-Modified``, ``If-Range``,
    ``If-None-Match``, ``Accept-Ranges``; streamed with ``sendfile``. A URL path with ``..`` (also
    percent-encoded) is refused; symlinks placed inside ``images/`` by the operator are followed,
    as nginx does by default.
``POST /events/{mac}``
    one JSON object (at most 64 KiB), kept in memory per MAC (:meth:`ProvisioningServer.events`)
    and logged; 400 on bad JSON.

Written by hand on :mod:`http.server` rather than a framework: the whole protocol is four routes,
and the server must start in-process in tests with nothing to install.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger("pyinit_server")

MAX_EVENT_BYTES = 64 * 1024
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}$", re.IGNORECASE)
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def normalize_mac(text: str) -> str | None:
    """``52:54:00:AB:cd:EF`` or ``52-54-...`` -> ``52-54-00-ab-cd-ef``; None if not a MAC."""
    text = text.strip()
    if not _MAC_RE.match(text):
        return None
    return text.lower().replace(":", "-")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None to send the whole file. Pure.

    Malformed and multi-range headers are ignored (RFC 9110 lets a server do so); a
    well-formed range that does not overlap the file raises :class:`Unsatisfiable`.
    """
    if not header:
        return None
    m = _RANGE_RE.match(header.strip().replace(" ", ""))
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignore
    if start >= size:
        raise Unsatisfiable
    return ByteRange(start, min(end, size - 1))


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_http_date(text: str) -> int | None:
    try:
        dt = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return int(dt.timestamp())


def if_range_matches(if_range: str | None, etag: str, mtime: float) -> bool:
    """Whether a Range request's ``If-Range`` precondition holds (True when absent). Pure."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', 'W/"')):
        return value == etag  # strong comparison: a weak tag never matches
    when = _parse_http_date(value)
    return when is not None and when == int(mtime)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: ProvisioningServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and a sendfile() body are separate writes: without TCP_NODELAY, Nagle and delayed
    # ACKs add ~40 ms to every response.
    disable_nagle_algorithm = True
    server_version = "pyinit-server"
    sys_version = ""

    # -- logging (one access line per request, once it is answered) ---------------------------

    _status = 0
    _sent = 0

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            self._status = int(code)
        except ValueError:
            self._status = 0

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.client_address[0], format % args)

    def _access(self, started: float) -> None:
        rng = self.headers.get("Range")
        log.info('%s "%s" %d %d %.3fs%s', self.client_address[0], self.requestline, self._status,
                 self._sent, time.monotonic() - started, f" range={rng}" if rng else "")
        self.server.app._record(self.command, self.path, self._status, rng)

    # -- responses --------------------------------------------------------------------------

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self._sent = len(data)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message, "status": status})

    # -- routing ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        started = time.monotonic()
        self._status = self._sent = 0  # one handler serves every request of a connection
        try:
            self._route_get()
        finally:
            self._access(started)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        started = time.monotonic()
        self._status = self._sent = 0
        try:
            self._route_post()
        finally:
            self._access(started)

    def _route_post(self) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/events/"):
            self.close_connection = True  # the body is left unread
            self._error(404, f"no such endpoint: POST {path}")
            return
        mac = normalize_mac(unquote(path[len("/events/"):]))
        if mac is None:
            self.close_connection = True
            self._error(400, "not a MAC address")
            return
        self._post_event(mac)

    def _route_get(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/images/"):
            self._serve_image(path[len("/images/"):])
            return
        name = unquote(path.lstrip("/"))
        if name.endswith(".bty"):
            name = name[:-len(".bty")]
        mac = normalize_mac(name)
        if mac is None:
            self._error(400, f"not a MAC address: {path!r} (expected /<mac> or /<mac>.bty)")
            return
        self._serve_machine(mac)

    # -- machines ---------------------------------------------------------------------------

    def _serve_machine(self, mac: str) -> None:
        machines = self.server.app.root / "machines"
        for candidate in (machines / f"{mac}.json", machines / "default.json"):
            try:
                data = candidate.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            log.info("machine %s: %s", mac, candidate.name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
                self._sent = len(data)
            return
        self._error(404, f"no action for {mac} and no default.json")

    # -- images -----------------------------------------------------------------------------

    def _image_path(self, rel: str) -> Path | None:
        """The file for a URL path under /images/, or None if it tries to leave images/."""
        parts = [p for p in unquote(rel).split("/") if p not in ("", ".")]
        if not parts or any(p == ".." or "\0" in p or "\\" in p for p in parts):
            return None
        return self.server.app.root.joinpath("images", *parts)

    def _serve_image(self, rel: str) -> None:
        path = self._image_path(rel)
        if path is None:
            self._error(403, "path escapes images/")
            return
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after streaming
        except (FileNotFoundError, NotADirectoryError):
            self._error(404, f"no such image: {rel}")
            return
        except (IsADirectoryError, PermissionError):
            self._error(403, f"not a readable file: {rel}")
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = _etag(st)
            headers = {"ETag": etag, "Last-Modified": _http_date(st.st_mtime),
                       "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if self.headers.get("If-None-Match") in (etag, "*"):
                self.send_response(304)
                for k, v in headers.items():
                    if k != "Content-Type":
                        self.send_header(k, v)
                self.end_headers()
                return
            rng: ByteRange | None = None
            if if_range_matches(self.headers.get("If-Range"), etag, st.st_mtime):
                try:
                    rng = parse_range(self.headers.get("Range"), size)
                except Unsatisfiable:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
            if rng is None:
                status, offset, count = 200, 0, size
            else:
                status, offset, count = 206, rng.start, rng.length
                headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(count))
            self.end_headers()
            if self.command == "HEAD" or count == 0:
                return
            try:
                sent = self._sent = self.connection.sendfile(f, offset, count)
            except (BrokenPipeError, ConnectionResetError) as exc:
                log.info("%s: client went away: %s", rel, exc)
                self.close_connection = True
                return
            if sent != count:  # the file shrank under us: the response is broken
                log.warning("%s: sent %d of %d bytes", rel, sent, count)
                self.close_connection = True

    # -- events -----------------------------------------------------------------------------

    def _post_event(self, mac: str) -> None:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._error(411, "Content-Length required")
            return
        length = int(length_text)
        if length > MAX_EVENT_BYTES:
            self.close_connection = True
            self._error(413, f"event larger than {MAX_EVENT_BYTES} bytes")
            return
        body = self.rfile.read(length)
        try:
            event = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._error(400, f"bad JSON: {exc}")
            return
        if not isinstance(event, dict):
            self._error(400, "an event is a JSON object")
            return
        self.server.app._add_event(mac, event)
        self.send_response(204)
        self.end_headers()


class ProvisioningServer:
    """Serve ``root`` on ``host:port`` (port 0: any free port) from a background thread."""

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.host = host
        self._requested_port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._access: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ProvisioningServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        httpd = (_Server6 if ":" in self.host else _Server)((self.host, self._requested_port),
                                                           _Handler)
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"pyinit-server-{self.port}", daemon=True)
        self._thread.start()
        log.info("serving %s on %s", self.root, self.url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("server on port %d stopped", httpd.server_address[1])

    def serve_forever(self) -> None:
        """Run in the foreground until KeyboardInterrupt (the CLI)."""
        if self._httpd is None:
            self.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()

    def __enter__(self) -> ProvisioningServer:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- events and access records ----------------------------------------------------------

    def _add_event(self, mac: str, event: dict[str, Any]) -> None:
        log.info("event %s: %s", mac, json.dumps(event, sort_keys=False, default=str))
        with self._cond:
            self._events.setdefault(mac, []).append(event)
            self._cond.notify_all()

    def _record(self, method: str, path: str, status: int, range_header: str | None) -> None:
        with self._cond:
            self._access.append({"method": method, "path": path, "status": status,
                                 "range": range_header})

    def events(self, mac: str) -> list[dict[str, Any]]:
        """Events POSTed for ``mac`` (any spelling), oldest first."""
        key = normalize_mac(mac)
        if key is None:
            raise ValueError(f"not a MAC address: {mac!r}")
        with self._cond:
            return list(self._events.get(key, []))

    def wait_event(self, mac: str, step: str | None = None, status: str | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        """The first event for ``mac`` matching ``step``/``status``, waiting up to ``timeout``."""
        key = normalize_mac(mac)
        if key is None:
            raise ValueError(f"not a MAC address: {mac!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self._events.get(key, []):
                    if (step is None or ev.get("step") == step) and (
                            status is None or ev.get("status") == status):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event step={step} status={status} for {key} "
                                       f"within {timeout:g} s")
                self._cond.wait(left)

    @property
    def access_log(self) -> list[dict[str, Any]]:
        """One record per request: method, path, status, range."""
        with self._cond:
            return list(self._access)

