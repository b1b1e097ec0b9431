"""A fault-injecting HTTP file server for tests (image write path, VM tests).

Serves the files under a directory on ``127.0.0.1`` (port 0: the kernel picks one) with what a real
image server does — ``Content-Length``, a strong ``ETag``, ``Last-Modified``, single ``Range:
bytes=N-``/``N-M`` requests honoured when ``If-Range`` matches, ``416`` past the end, keep-alive —
and per-file fault knobs (:class:`Faults`) that make it misbehave the way networks and servers do:

* ``drop_at``: offsets into the file; the first response whose body crosses each offset stops
  there and the connection is closed (``reset=True``: with a TCP RST). Each offset fires once.
* ``drop_after`` + ``drop_times``: the next ``drop_times`` responses stop after ``drop_after``
  body bytes (relative to where each response starts) and close.
* ``ignore_range``: answer every request ``200`` with the whole file (a server without ranges).
* ``stall_at`` + ``stall_seconds`` (+ ``stall_times``): the body pauses at that file offset.
* ``truncate_at``: every response promises the full length but ends at that file offset and
  closes (a persistently broken server or proxy).
* ``change_etag``: every response carries a new ETag (the file "changed"), so ``If-Range`` never
  matches and a resumed request gets the whole file again.
* ``no_validators``: no ``ETag`` and no ``Last-Modified``.
* ``status`` + ``status_times``: answer the next ``status_times`` requests with that status
  (``status_times=-1``: always).
* ``swap_to`` + ``swap_after``: after ``swap_after`` responses, serve the file ``swap_to`` under
  this name (with its own ETag): the image was replaced on the server mid-transfer.

Every request is recorded (:attr:`FaultServer.log`): path, method, ``Range``, ``If-Range`` and the
status answered. Use it as a context manager::

    with FaultServer(tmp_path) as srv:
        srv.set_faults("a.img.zst", Faults(drop_at=[1 << 20]))
        requests.get(srv.url("a.img.zst"))
        assert srv.ranges("a.img.zst") == [None, "bytes=1048576-"]
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urlsplit


@dataclass
class Faults:
    drop_at: list[int] = field(default_factory=list)
    drop_after: int | None = None
    drop_times: int = 0
    reset: bool = False
    ignore_range: bool = False
    stall_at: int | None = None
    stall_seconds: float = 0.0
    stall_times: int = 1
    truncate_at: int | None = None
    change_etag: bool = False
    no_validators: bool = False
    status: int | None = None
    status_times: int = 0
    swap_to: str | None = None
    swap_after: int = 1


@dataclass(frozen=True)
class Request:
    path: str
    method: str
    range: str | None
    if_range: str | None
    status: int


@dataclass
class _Plan:
    """What one response does, decided (and the one-shot faults consumed) under the lock."""

    cut: int | None = None  # file offset where the body stops and the connection closes
    reset: bool = False
    stall_at: int | None = None
    stall_seconds: float = 0.0


_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        owner = self.server.owner
        name = unquote(urlsplit(self.path).path).lstrip("/")
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        with owner.lock:  # decide this response's faults; consume the counted ones
            faults = owner.faults.get(name, Faults())
            served = owner.served[name] = owner.served.get(name, 0) + 1
            path = (owner.root / name).resolve()
            if faults.swap_to is not None:
                if faults.swap_after <= 0:
                    path = (owner.root / faults.swap_to).resolve()
                faults.swap_after -= 1
            status_fault = None
            if faults.status is not None and faults.status_times != 0:
                status_fault = faults.status
                if faults.status_times > 0:
                    faults.status_times -= 1
        if owner.root not in path.parents or not path.is_file():
            owner.record(Request(name, self.command, rng, if_range, 404))
            self._empty(404)
            return
        st = path.stat()
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}' + (f'-{served}"' if faults.change_etag else '"')
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        if status_fault is not None:
            owner.record(Request(name, self.command, rng, if_range, status_fault))
            self._empty(status_fault)
            return

        start, end, status = 0, size, 200
        m = _RANGE_RE.match(rng or "")
        validators = () if faults.no_validators else (etag, last_modified)
        if m and not faults.ignore_range and (if_range is None or if_range in validators):
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, size) if m.group(2) else size
            if start >= size or start >= end:
                owner.record(Request(name, self.command, rng, if_range, 416))
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        owner.record(Request(name, self.command, rng, if_range, status))

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "none" if faults.ignore_range else "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if not faults.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        self.end_headers()
        if not body:
            return
        plan = owner.plan(name, start, end)
        try:
            with path.open("rb") as f:
                self._body(f, start, end, plan)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _body(self, f: Any, start: int, end: int, plan: _Plan) -> None:
        stop = end if plan.cut is None else min(plan.cut, end)
        pos = start
        if plan.stall_at is not None and start <= plan.stall_at < stop:
            if plan.stall_at > pos:
                self.connection.sendfile(f, pos, plan.stall_at - pos)
            pos = plan.stall_at
            time.sleep(plan.stall_seconds)
        if stop > pos:
            self.connection.sendfile(f, pos, stop - pos)
        if stop < end:  # a fault cut the body short: hang up mid-response
            self.close_connection = True
            if plan.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
            else:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: FaultServer


class FaultServer:
    """Serve ``root`` on 127.0.0.1 with per-file :class:`Faults`. Thread-safe."""

    def __init__(self, root: Path | str, *, port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.lock = threading.Lock()
        self.faults: dict[str, Faults] = {}
        self.served: dict[str, int] = {}
        self.log: list[Request] = []
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faultserver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base_url}/{quote(name)}"

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_faults(self, name: str, faults: Faults | None = None, **knobs: Any) -> Faults:
        """Set (replace) the faults for ``name``: a :class:`Faults` or its fields as keywords."""
        value = faults if faults is not None else Faults(**knobs)
        with self.lock:
            self.faults[name] = value
        return value

    def clear_faults(self) -> None:
        """Serve every file correctly again, with an empty request log (each test counts its
        own requests on a shared server)."""
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def record(self, request: Request) -> None:
        with self.lock:
            self.log.append(request)

    def requests(self, name: str) -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.path == name]

    def count(self, name: str) -> int:
        return len(self.requests(name))

    def ranges(self, name: str) -> list[str | None]:
        return [r.range for r in self.requests(name)]

    def plan(self, name: str, start: int, end: int) -> _Plan:
        """Decide this response's faults, consuming one-shot ones."""
        plan = _Plan()
        with self.lock:
            f = self.faults.get(name)
            if f is None:
                return plan
            cuts: list[int] = []
            for at in sorted(f.drop_at):
                if start <= at < end:
                    f.drop_at.remove(at)
                    cuts.append(at)
                    break
            if f.drop_after is not None and f.drop_times > 0:
                f.drop_times -= 1
                cuts.append(start + f.drop_after)
            if f.truncate_at is not None and start <= f.truncate_at < end:
                cuts.append(f.truncate_at)
            if cuts:
                plan.cut = min(cuts)
                plan.reset = f.reset
            if f.stall_at is not None and f.stall_times > 0 and start <= f.stall_at < end:
                f.stall_times -= 1
                plan.stall_at, plan.stall_seconds = f.stall_at, f.stall_seconds
        return plan


if __name__ == "__main__":  # pragma: no cover - manual debugging and benchmarks
    import sys

    server = FaultServer(sys.argv[1] if len(sys.argv) > 1 else os.getcwd(),
                         port=int(sys.argv[2]) if len(sys.argv) > 2 else 0).start()
    print(f"serving {server.root} on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
