"""A provisioning server (stdlib HTTP): per-MAC actions, iPXE, images with Range, events, uploads.

Layout of ``root``::

    machines/52-54-00-12-34-56.yaml   one machine (YAML or JSON, see pyinit_server.machines)
    machines/default.yaml             optional: the action for any other MAC
    images/...                        image files
    boot/vmlinuz, boot/initramfs.cpio.zst   for iPXE (or ``boot_dir``: ``pyinit serve --boot-dir``)

Routes:

``GET|HEAD /{mac}`` and ``/{mac}.bty``
    the machine's action as JSON (``.yaml``/``.yml`` converted; a ``.json`` file without
    server keys byte for byte; the ``pxe:`` key stripped). The MAC may use dashes or colons, any
    case. 404 (short JSON body) for an unknown MAC without ``default.*``; 400 for a path that is
    not a MAC; 500 with ``{"error": "machines/<file>:<line>: <reason>"}`` when that machine's
    file (or, for a MAC without its own, the default) cannot be parsed or two files claim it:
    only that machine is affected, and pyinit retries 5xx until the operator fixes the file.
    An action that :func:`pyinit.action.parse_action` rejects is served anyway, with an
    ``X-Pyinit-Warning`` header and a warning in the log and in ``/api/machines`` (the machine
    refuses it itself, with one line naming the field).
``GET|HEAD /{mac}.ipxe``
    an iPXE script booting ``/boot/vmlinuz`` and ``/boot/initramfs.cpio.zst`` with
    ``kernel_args``, ``BOOTYURL=<base>``, ``BOOTIF=01-<mac>`` and the file's ``pxe.cmdline``
    (see :mod:`pyinit_server.ipxe`). ``<base>`` is ``public_url``, else ``http://`` and the
    request's Host header (so a QEMU slirp guest gets ``10.0.2.2``).
``GET|HEAD /boot.ipxe``
    a script that chains to ``<base>/${netX/mac:hexhyp}.ipxe``.
``GET|HEAD /boot/<path>``
    files of ``boot_dir``, served exactly as images are.
``GET|HEAD /`` and ``/dashboard``
    the live web dashboard (:mod:`pyinit_server.dashboard`, docs/dashboard.md).
``GET /api/machines`` and ``/api/machines/{mac}``
    the status of every machine (with a file or with events) and of one with its event log
    (see :mod:`pyinit_server.status`; ``pyinit status`` prints them).
``GET|HEAD /images/<path>``
    the file, with ``Range: bytes=a-b`` (206/416), ``ETag``, ``Last-Modified``, ``If-Range``,
    ``If-None-Match``, ``Accept-Ranges``; streamed with ``sendfile``. A URL path with ``..`` (also
    percent-encoded) is refused; symlinks placed inside ``images/`` by the operator are followed,
    as nginx does by default.
``POST /events/{mac}``
    one JSON object (at most 64 KiB), kept in memory per MAC, the last 1000
    (:meth:`ProvisioningServer.events`), folded into the machine's status, and logged; 400 on
    bad JSON.
``POST /image``
    a captured disk, BOOTy/plunder style: ``multipart/form-data`` whose file field
    ``BootyImage`` is stored as ``images/<file name>``. Only the file name's last component is
    used and it must match ``[A-Za-z0-9_-][A-Za-z0-9._-]*`` (no leading dot, not ``*.sha256``);
    anything else is refused with 400 (plunder writes the client's name into its working
    directory; this server never does). Other fields are read and ignored.
``PUT /images/<name>``
    the request body is stored as ``images/<name>`` (same name rules; no subdirectories).

Uploads accept ``Content-Length`` or ``Transfer-Encoding: chunked`` bodies and are streamed:
the body goes to a temporary file in ``images/`` while its SHA-256 is computed, is fsynced and
renamed over the final name only once the whole request arrived, together with a sidecar
``<name>.sha256`` (``sha256sum`` format). A body larger than ``max_upload`` is refused with 413,
an upload cut off midway (client gone, chunked body without its last chunk, multipart without
its closing boundary, no data for ``upload_timeout`` seconds) leaves nothing behind. Concurrent
uploads of one name each complete; the last to finish wins. The answer is 201 with JSON
``{"name", "size", "sha256"}``.

Tokens: with ``token`` set, the write endpoints (``POST /events``, ``POST /image``,
``PUT /images``) require ``Authorization: Bearer <token>``: 401 with a JSON message and
``WWW-Authenticate`` when it is missing or not a bearer token, 403 when it is wrong (compared in
constant time). The refusal comes before the body is read (before ``100 Continue`` when the
client asks), so nothing is stored. Reads stay open: iPXE's ``kernel``/``chain`` cannot send a
header, and actions and images are not secrets (an image that is should not be on a provisioning
network); what the token protects is the server's disk and the status an operator trusts.

Written by hand on :mod:`http.server` rather than a framework: the protocol is a dozen routes,
and the server must start in-process in tests with nothing to install. The streaming multipart
parser is hand-written too: the stdlib's (``cgi``, removed in 3.13, and ``email``) read the whole
body into memory.
"""

from __future__ import annotations

import collections
import contextlib
import email.message
import email.parser
import email.utils
import errno
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from pyinit_server import dashboard
from pyinit_server.ipxe import chain_script, machine_script
from pyinit_server.machines import Machine, MachineError, MachineStore
from pyinit_server.machines import normalize_mac as normalize_mac  # re-exported
from pyinit_server.status import MAX_EVENTS, History, Summary

log = logging.getLogger("pyinit_server")

MAX_EVENT_BYTES = 64 * 1024
ACCESS_RECORDS = 10_000  # requests remembered for access_log
# A client that neither sends nor reads for this long is dropped: an idle keep-alive connection,
# a request cut off in its headers, or a reader that stopped reading mid-image (sendfile would
# otherwise pin the handler thread forever). Progress of any size resets it.
CLIENT_TIMEOUT = 60.0
DEFAULT_MAX_UPLOAD = 1 << 40  # 1 TiB
DEFAULT_UPLOAD_TIMEOUT = 300.0  # seconds without data before an upload counts as cut off
UPLOAD_FIELD = "BootyImage"
UPLOAD_CHUNK = 1 << 20
MAX_PART_HEADER = 16 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TOKEN_RE = re.compile(r"^[\x21\x23-\x7e]{1,256}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
DEFAULT_KERNEL_ARGS = "console=ttyS0,115200 console=tty0"


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


# -- uploads: names, bodies, multipart --------------------------------------------------------


def upload_name(raw: str, *, basename: bool) -> str | None:
    """The file name to store an upload under, or None to refuse it. Pure.

    ``basename``: keep only the last path component (a multipart file name, which browsers and
    old clients send with a path); otherwise any ``/`` or ``\\`` refuses the name (a URL).
    """
    if basename:
        raw = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if not _NAME_RE.match(raw) or raw.endswith(".sha256"):
        return None
    return raw


class UploadError(Exception):
    """An upload that must be answered with ``status`` (and nothing stored)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class CutOff(UploadError):
    def __init__(self, message: str) -> None:
        super().__init__(400, f"upload cut off: {message}")


def read_body(rfile: Any, *, length: int | None, chunked: bool,
              limit: int) -> Iterator[bytes]:
    """The request body from ``rfile``, de-chunked, in pieces of at most ``UPLOAD_CHUNK``.

    Raises :class:`CutOff` when the body ends early and ``UploadError(413)`` beyond ``limit``.
    """
    def read(n: int) -> bytes:
        try:
            data: bytes = rfile.read(n)
        except TimeoutError as exc:
            raise CutOff("no data within the upload timeout") from exc
        except OSError as exc:
            raise CutOff(f"connection lost: {exc}") from exc
        if not data:
            raise CutOff("the connection closed before the end of the body")
        return data

    def line() -> bytes:
        try:
            text: bytes = rfile.readline(1024)
        except TimeoutError as exc:
            raise CutOff("no data within the upload timeout") from exc
        except OSError as exc:
            raise CutOff(f"connection lost: {exc}") from exc
        if not text.endswith(b"\n"):
            if len(text) >= 1024:
                raise UploadError(400, "malformed chunked body: line too long")
            raise CutOff("the connection closed inside the chunked body")
        return text

    total = 0
    if not chunked:
        assert length is not None
        if length > limit:
            raise UploadError(413, f"body of {length} bytes is larger than {limit}")
        while total < length:
            data = read(min(UPLOAD_CHUNK, length - total))
            total += len(data)
            yield data
        return
    while True:
        size_text = line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise UploadError(400, f"malformed chunk size {size_text[:20]!r}") from None
        if size == 0:
            while line().strip():  # trailer fields, then the empty line
                pass
            return
        total += size
        if total > limit:
            raise UploadError(413, f"body larger than {limit} bytes")
        while size:
            data = read(min(UPLOAD_CHUNK, size))
            size -= len(data)
            yield data
        if read(2) != b"\r\n":  # the CRLF after the chunk data  (a short read raised)
            raise UploadError(400, "malformed chunked body: no CRLF after a chunk")


class Multipart:
    """A streaming ``multipart/form-data`` parser over an iterator of body pieces.

    :meth:`parts` yields ``(headers, data)`` per part; ``data`` is an iterator over the part's
    bytes that must be consumed (or is drained) before the next part. Raises :class:`CutOff`
    when the body ends before the closing boundary and ``UploadError(400)`` when it is not
    multipart at all. Memory: one body piece plus the boundary length.
    """

    def __init__(self, body: Iterator[bytes], boundary: str) -> None:
        self._body = body
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._buf = b"\r\n"  # so that the first delimiter looks like all the others

    def _fill(self) -> None:
        for data in self._body:
            if data:
                self._buf += data
                return
        raise CutOff("multipart body ended before its closing boundary")

    def _skip_to_delimiter(self) -> None:
        while (i := self._buf.find(self._delim)) < 0:
            self._buf = self._buf[-(len(self._delim) - 1):]
            self._fill()
        self._buf = self._buf[i + len(self._delim):]

    def _data(self) -> Iterator[bytes]:
        keep = len(self._delim) - 1
        while True:
            i = self._buf.find(self._delim)
            if i >= 0:
                if i:
                    yield self._buf[:i]
                self._buf = self._buf[i + len(self._delim):]
                return
            if len(self._buf) > keep:
                out, self._buf = self._buf[:-keep], self._buf[-keep:]
                yield out
            self._fill()

    def _headers(self) -> email.message.Message:
        while (i := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_PART_HEADER:
                raise UploadError(400, "multipart part headers too long")
            self._fill()
        block, self._buf = self._buf[:i + 4], self._buf[i + 4:]
        padding, _, headers = block.partition(b"\r\n")
        if padding.strip(b" \t"):
            raise UploadError(400, "malformed multipart body: garbage after a boundary")
        return email.parser.BytesHeaderParser().parsebytes(headers)

    def parts(self) -> Iterator[tuple[email.message.Message, Iterator[bytes]]]:
        self._skip_to_delimiter()
        while True:
            while len(self._buf) < 2:
                self._fill()
            if self._buf.startswith(b"--"):
                for _ in self._body:  # the epilogue
                    pass
                return
            headers = self._headers()
            data = self._data()
            yield headers, data
            for _ in data:  # whatever the consumer left
                pass


def multipart_boundary(content_type: str | None) -> str | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None. Pure."""
    if not content_type:
        return None
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or \
            not 1 <= len(boundary) <= 200:
        return None
    return boundary


@dataclass
class _Incoming:
    """An upload being written to a temporary file next to its final name."""

    tmp: Path
    size: int = 0
    sha256: str = ""

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _receive(images: Path, name: str, data: Iterator[bytes]) -> _Incoming:
    images.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".upload-{name}.", dir=images)
    incoming = _Incoming(Path(tmp))
    try:
        os.fchmod(fd, 0o644)
        sha = hashlib.sha256()
        for piece in data:
            sha.update(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
            incoming.size += len(piece)
        os.fsync(fd)
        incoming.sha256 = sha.hexdigest()
    except BaseException:
        incoming.discard()
        raise
    finally:
        os.close(fd)
    return incoming


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: ProvisioningServer

    def server_activate(self) -> None:
        super().server_activate()
        # connections being served (keep-alive ones included), closed by close_connections()
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Shut down every connection still open: a stopped server answers nobody, also not a
        browser that kept its keep-alive connection (the handler threads then end)."""
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _TLSMixin:
    """HTTPS: the TLS handshake runs in the connection's own thread (``finish_request`` is
    called there by ThreadingMixIn), under ``handshake_timeout``, so a client that connects and
    never speaks TLS holds one thread for a while, never the accept loop."""

    tls = True
    app: ProvisioningServer
    RequestHandlerClass: Callable[..., Any]

    def finish_request(self, request: Any, client_address: Any) -> None:
        ctx = self.app.tls_context
        assert ctx is not None
        conn = ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            conn.settimeout(self.app.handshake_timeout)
            try:
                conn.do_handshake()
            except (OSError, ValueError) as exc:  # ssl.SSLError, TimeoutError, reset
                log.info("%s: TLS handshake failed: %s", client_address[0],
                         "timed out" if isinstance(exc, TimeoutError) else exc)
                return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            conn.close()


class _TLSServer(_TLSMixin, _Server):
    pass


class _TLSServer6(_TLSMixin, _Server6):
    pass


def tls_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A server-side context (TLS 1.2 or later) for ``cert`` and ``key``. Raises ValueError
    with one line naming the file and the reason: missing, not PEM, encrypted, or a key that
    does not belong to the certificate."""
    for what, path, marker in (("--tls-cert", cert, "CERTIFICATE-----"),
                               ("--tls-key", key, "PRIVATE KEY-----")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            raise ValueError(f"{what} {path}: {exc.strerror or exc}") from exc
        if f"-----BEGIN {marker}" not in text and not re.search(
                rf"-----BEGIN [A-Z ]*{marker}", text):
            raise ValueError(f"{what} {path}: no PEM '-----BEGIN ...{marker}' block in it")

    def no_password() -> str:
        raise ValueError(f"--tls-key {key}: the key is encrypted; give an unencrypted one")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_password)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--tls-key {key} does not belong to --tls-cert {cert}") from exc
        if reason == str(exc):  # no reason code: "[SSL] PEM lib (_ssl.c:3874)"
            reason = re.sub(r"^\[\w+\] | \(_ssl\.c:\d+\)$", "", reason)
        if reason == "PEM lib":
            reason += " (a PEM block that does not decode)"
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: cannot load: {reason}") from exc
    return ctx


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

    def setup(self) -> None:
        super().setup()
        # StreamRequestHandler applies its class-level ``timeout``; ours is per server
        self.connection.settimeout(self.server.app.client_timeout)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Called by send_response: recorded before the client can see the answer, so a test
        that got its response finds the record (the log line follows once the body is sent)."""
        try:
            self._status = int(code)
        except ValueError:
            self._status = 0
        headers = getattr(self, "headers", None)  # unset for a malformed request line
        if self.command and headers is not None:
            self.server.app._record(self.command, self.path, self._status, headers.get("Range"))

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("%s %s", self.client_address[0], format % args)

    def _access(self, started: float) -> None:
        rng = self.headers.get("Range")
        log.info('%s "%s" %d %d %.3fs%s', self.client_address[0], self.requestline, self._status,
                 self._sent, time.monotonic() - started, f" range={rng}" if rng else "")

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

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="pyinit"')

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

    def _auth_failure(self) -> tuple[int, str] | None:
        """Why this write request is not allowed (status, message), or None when it is."""
        app = self.server.app
        if app.tls_context is not None and not getattr(self.server, "tls", False):
            # the token (and what it protects) must not cross the network in clear
            return 403, f"this server takes writes over HTTPS only: use {app.url}"
        token = app.token
        if token is None:
            return None
        header = self.headers.get("Authorization")
        if not header:
            return 401, "this server requires a token: send 'Authorization: Bearer <token>' " \
                        "(pyinit: pyinit.token= on the kernel command line)"
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return 401, "malformed Authorization header: expected 'Bearer <token>'"
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return 403, "wrong token"
        return None

    def _authorized(self) -> bool:
        """Answer 401/403 (leaving any body unread, then closing) unless the token matches."""
        failure = self._auth_failure()
        if failure is None:
            return True
        status, message = failure
        log.warning("%s %s refused: %s", self.command, self.path, message)
        self._refuse(status, message)
        return False

    def _route_post(self) -> None:
        path = urlsplit(self.path).path
        if path == "/image":
            if self._authorized():
                self._upload(self._multipart_upload)
            return
        if not path.startswith("/events/"):
            self.close_connection = True  # the body is left unread
            self._error(404, f"no such endpoint: POST {path}")
            return
        if not self._authorized():
            return
        mac = normalize_mac(unquote(path[len("/events/"):]))
        if mac is None:
            self.close_connection = True
            self._error(400, "not a MAC address")
            return
        self._post_event(mac)

    def do_PUT(self) -> None:
        started = time.monotonic()
        self._status = self._sent = 0
        try:
            path = urlsplit(self.path).path
            if path.startswith("/images/"):
                if self._authorized():
                    self._upload(lambda: self._put_upload(path[len("/images/"):]))
            else:
                self.close_connection = True
                self._error(405 if path.startswith("/") else 400,
                            f"PUT is only for /images/<name>, not {path}")
        finally:
            self._access(started)

    def handle_expect_100(self) -> bool:
        """Refuse an upload without its token, or an oversized one, before the client sends
        it (curl asks first)."""
        failure = self._auth_failure() if self.command in ("POST", "PUT") else None
        if failure is not None:
            self._status = self._sent = 0
            self.close_connection = True
            log.warning("%s %s refused: %s", self.command, self.path, failure[1])
            self._error(*failure)
            self._access(time.monotonic())
            return False
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.app.max_upload:
            self._status = self._sent = 0
            self.close_connection = True
            self._error(413, f"body of {length} bytes is larger than "
                             f"{self.server.app.max_upload}")
            self._access(time.monotonic())
            return False
        return super().handle_expect_100()

    def _route_get(self) -> None:
        path = urlsplit(self.path).path
        app = self.server.app
        if path.startswith("/images/"):
            self._serve_file(app.root / "images", path[len("/images/"):], "images/")
            return
        if path.startswith("/boot/"):
            self._serve_file(app.boot_dir, path[len("/boot/"):], "boot/")
            return
        if path == "/boot.ipxe":
            self._send_text(200, chain_script(self._base_url()))
            return
        if path in ("/", "/dashboard"):
            self._sent = dashboard.send(self)
            return
        if path in ("/api/machines", "/api/machines/"):
            self._send_json(200, app.status())
            return
        if path.startswith("/api/machines/"):
            raw = unquote(path[len("/api/machines/"):])
            mac = normalize_mac(raw)
            if mac is None:
                self._error(400, f"not a MAC address: {raw!r}")
                return
            status = app.status(mac)
            if status is None:
                self._error(404, f"no events and no machine file for {mac}")
                return
            self._send_json(200, status)
            return
        name = unquote(path.lstrip("/"))
        kind = "action"
        for suffix, what in ((".bty", "action"), (".ipxe", "ipxe")):
            if name.endswith(suffix):
                name, kind = name[:-len(suffix)], what
        mac = normalize_mac(name)
        if mac is None:
            self._error(400, f"not a MAC address: {path!r} (expected /<mac>, /<mac>.bty "
                             "or /<mac>.ipxe)")
            return
        machine = self._machine(mac)
        if machine is None:
            return
        if kind == "ipxe":
            self._send_text(200, machine_script(self._base_url(), mac, machine,
                                                 app.kernel_args, bootyurl=self._booty_url()))
            return
        data = machine.action_json()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if machine.warning:
            self.send_header("X-Pyinit-Warning", machine.warning.encode("ascii", "replace")
                             .decode()[:500])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self._sent = len(data)

    def _base_url(self) -> str:
        """The listener this request came in on, as the client sees it: --public-url (plain
        HTTP) or --public-tls-url (HTTPS), else the scheme and the Host header. iPXE fetches the
        kernel and initrd from here: most iPXE builds cannot do HTTPS."""
        app = self.server.app
        tls = getattr(self.server, "tls", False)
        public = app.public_tls_url if tls else app.public_url
        if public:
            return public
        host = (self.headers.get("Host") or "").strip()
        if not _HOST_RE.match(host):
            return app.url if tls else app.http_url or app.url
        return f"{'https' if tls else 'http'}://{host}"

    def _booty_url(self) -> str:
        """``BOOTYURL=`` for an iPXE script: with TLS on, the HTTPS listener even when the script
        went over plain HTTP: --public-tls-url, else the host the machine reached (Host header or
        --public-url) with the HTTPS port."""
        app = self.server.app
        if app.tls_context is None or getattr(self.server, "tls", False):
            return self._base_url()
        if app.public_tls_url:
            return app.public_tls_url
        try:
            hostname = urlsplit(self._base_url()).hostname
        except ValueError:
            hostname = None
        if not hostname:
            return app.url
        return f"https://{f'[{hostname}]' if ':' in hostname else hostname}:{app.port}"

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self._sent = len(data)

    # -- machines ---------------------------------------------------------------------------

    def _machine(self, mac: str) -> Machine | None:
        """The machine serving ``mac``, or None once a 404/500 has been answered."""
        try:
            machine = self.server.app.machines.lookup(mac)
        except MachineError as exc:
            log.error("machine %s: %s", mac, exc.message)
            self._error(500, exc.message)
            return None
        if machine is None:
            self._error(404, f"no machine file for {mac} and no default "
                             "(machines/<mac>.yaml|.yml|.json, machines/default.*)")
            return None
        log.info("machine %s: %s", mac, machine.path.name)
        return machine

    # -- files: images/ and boot/ ---------------------------------------------------------

    @staticmethod
    def _file_path(base: Path, rel: str) -> Path | None:
        """The file for a URL path under ``base``, or None if it tries to leave ``base``."""
        parts = [p for p in unquote(rel).split("/") if p not in ("", ".")]
        if not parts or any(p == ".." or "\0" in p or "\\" in p for p in parts):
            return None
        return base.joinpath(*parts)

    def _serve_file(self, base: Path, rel: str, what: str) -> None:
        """``base/rel`` with Range, ETag, If-Range, If-None-Match, streamed with sendfile."""
        path = self._file_path(base, rel)
        if path is None:
            self._error(403, f"path escapes {what}")
            return
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below, after streaming
        except (FileNotFoundError, NotADirectoryError):
            self._error(404, f"no such file: {what}{rel}")
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
            except TimeoutError:
                log.warning("%s: client stalled: nothing read for %g s, connection dropped",
                            rel, self.server.app.client_timeout)
                self.close_connection = True
                return
            if sent != count:  # the file shrank under us: the response is broken
                log.warning("%s: sent %d of %d bytes", rel, sent, count)
                self.close_connection = True

    # -- uploads ----------------------------------------------------------------------------

    def _body(self) -> Iterator[bytes]:
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        length_text = self.headers.get("Content-Length")
        if encoding and encoding != "chunked":
            raise UploadError(501, f"Transfer-Encoding {encoding!r} is not supported")
        if not encoding and (length_text is None or not length_text.strip().isdigit()):
            raise UploadError(411, "Content-Length or Transfer-Encoding: chunked required")
        return read_body(self.rfile, length=None if encoding else int(length_text or 0),
                         chunked=bool(encoding), limit=self.server.app.max_upload)

    def _upload(self, receive: Callable[[], tuple[str, _Incoming]]) -> None:
        """Run ``receive() -> _Incoming`` (named), commit it, answer 201; clean up on error."""
        app = self.server.app
        self.connection.settimeout(app.upload_timeout)
        try:
            name, incoming = receive()
        except UploadError as exc:
            log.warning("upload %s refused: %s", self.path, exc.message)
            self._refuse(exc.status, exc.message)
            return
        except OSError as exc:
            log.error("upload %s failed: %s", self.path, exc)
            status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            self._refuse(status, f"cannot store the upload: {exc.strerror or exc}")
            return
        finally:
            self.connection.settimeout(app.client_timeout)
        try:
            record = app._commit(name, incoming)
        except OSError as exc:
            incoming.discard()
            log.error("upload %s: cannot commit: %s", name, exc)
            self._refuse(500, f"cannot store the upload: {exc.strerror or exc}")
            return
        self.send_response(201)
        self.send_header("Location", f"/images/{name}")
        data = (json.dumps(record) + "\n").encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self._sent = len(data)

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error for a body that may be partly unread, then close the connection
        gently: drain what the client is still sending for a moment, so that our close does
        not reset the connection before the client has read the answer."""
        self.close_connection = True
        try:
            self._error(status, message)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.connection.recv(1 << 16):
                pass
        except OSError:
            pass

    def _put_upload(self, rel: str) -> tuple[str, _Incoming]:
        name = upload_name(unquote(rel), basename=False)
        if name is None:
            raise UploadError(400, f"not a valid image name: {unquote(rel)!r} (a plain file "
                                   "name of A-Z a-z 0-9 . _ -, no leading dot)")
        return name, _receive(self.server.app.root / "images", name, self._body())

    def _multipart_upload(self) -> tuple[str, _Incoming]:
        boundary = multipart_boundary(self.headers.get("Content-Type"))
        if boundary is None:
            raise UploadError(400, "expected Content-Type: multipart/form-data; boundary=...")
        found: tuple[str, _Incoming] | None = None
        try:
            for headers, data in Multipart(self._body(), boundary).parts():
                field = headers.get_param("name", header="content-disposition")
                if field != UPLOAD_FIELD or found is not None:
                    continue  # other fields, a second file: read and ignored
                raw = headers.get_filename()
                name = upload_name(raw or "", basename=True)
                if name is None:
                    raise UploadError(400, f"not a valid image file name: {raw!r} (A-Z a-z 0-9 "
                                           ". _ -, no leading dot)")
                found = name, _receive(self.server.app.root / "images", name, data)
        except BaseException:
            if found is not None:
                found[1].discard()
            raise
        if found is None:
            raise UploadError(400, f"no {UPLOAD_FIELD} file in the multipart body")
        return found

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
    """Serve ``root`` on ``host:port`` (port 0: any free port) from a background thread.

    ``boot_dir``: where ``/boot/`` is served from (default ``root/boot``). ``public_url``: the
    base URL written into iPXE scripts (default: from each request's Host header).
    ``kernel_args``: the kernel command line of every iPXE script, before ``BOOTYURL=`` and the
    machine's ``pxe.cmdline``. ``token``: required as ``Authorization: Bearer`` by the write
    endpoints (None: no authentication).

    ``tls_cert``/``tls_key`` (PEM files): HTTPS on ``tls_port`` as well, the URL machines use
    (``url``, ``BOOTYURL=``); the plain listener on ``port`` stays for iPXE (which mostly cannot
    do HTTPS) and refuses every write with 403, so the token never crosses the wire in clear;
    ``port=None`` drops it. ``public_tls_url``: the HTTPS base written into iPXE scripts
    (default: the host the machine reached, with ``tls_port``). A bad certificate or key raises
    ValueError at construction, with one line naming the file.
    """

    # seconds a TLS client has to complete its handshake (in its own thread); tests lower it
    handshake_timeout: float = 10.0

    # seconds a connection may make no progress before it is dropped (CLIENT_TIMEOUT); tests
    # lower it on the instance
    client_timeout: float = CLIENT_TIMEOUT

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int | None = 0, *,
                 max_upload: int = DEFAULT_MAX_UPLOAD,
                 upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
                 boot_dir: Path | str | None = None, public_url: str | None = None,
                 kernel_args: str = DEFAULT_KERNEL_ARGS, token: str | None = None,
                 max_events: int = MAX_EVENTS, tls_cert: Path | str | None = None,
                 tls_key: Path | str | None = None, tls_port: int = 0,
                 public_tls_url: str | None = None) -> None:
        self.root = Path(root)
        self.host = host
        self.max_upload = max_upload
        self.upload_timeout = upload_timeout
        self.boot_dir = Path(boot_dir) if boot_dir is not None else self.root / "boot"
        self.public_url = public_url.rstrip("/") if public_url else None
        self.kernel_args = kernel_args
        if token is not None and not _TOKEN_RE.match(token):
            raise ValueError("a token is 1-256 printable ASCII characters without spaces")
        self.token = token
        self.machines = MachineStore(self.root / "machines")
        self.history = History(max_events)
        self._uploads: dict[str, dict[str, Any]] = {}
        self._commit_lock = threading.Lock()
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        self.tls_context = tls_context(tls_cert, tls_key) \
            if tls_cert is not None and tls_key is not None else None
        if port is None and self.tls_context is None:
            raise ValueError("without TLS the plain HTTP listener cannot be turned off")
        self.public_tls_url = public_tls_url.rstrip("/") if public_tls_url else None
        self._requested_port = port
        self._requested_tls_port = tls_port
        self._httpd: _Server | None = None  # plain HTTP (None: off)
        self._httpsd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        # The last ACCESS_RECORDS requests (tests read them): bounded for a long-running server.
        self._access: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=ACCESS_RECORDS)
        self._cond = threading.Condition()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> ProvisioningServer:
        if self._started:
            raise RuntimeError("server already started")
        v6 = ":" in self.host
        servers: list[_Server] = []
        try:
            if self._requested_port is not None:
                servers.append((_Server6 if v6 else _Server)((self.host, self._requested_port),
                                                             _Handler))
            if self.tls_context is not None:
                servers.append((_TLSServer6 if v6 else _TLSServer)(
                    (self.host, self._requested_tls_port), _Handler))
        except BaseException:
            for httpd in servers:
                httpd.server_close()
            raise
        self._started = True
        for httpd in servers:
            httpd.app = self
            if getattr(httpd, "tls", False):
                self._httpsd = httpd
            else:
                self._httpd = httpd
            thread = threading.Thread(target=httpd.serve_forever,
                                      kwargs={"poll_interval": 0.05}, daemon=True,
                                      name=f"pyinit-server-{httpd.server_address[1]}")
            thread.start()
            self._threads.append(thread)
        self._thread = self._threads[0]
        if self.tls_context is not None and self.http_url is not None:
            log.info("serving %s on %s (plain HTTP for iPXE, read-only: %s)", self.root,
                     self.url, self.http_url)
        else:
            log.info("serving %s on %s", self.root, self.url)
        return self

    def stop(self) -> None:
        servers = [h for h in (self._httpd, self._httpsd) if h is not None]
        self._httpd = self._httpsd = None
        if not self._started:
            return
        self._started = False
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()
            httpd.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        log.info("server on %s stopped",
                 ", ".join(str(h.server_address[1]) for h in servers))

    def serve_forever(self) -> None:
        """Run in the foreground until KeyboardInterrupt (the CLI)."""
        if not self._started:
            self.start()
        try:
            while True:
                time.sleep(3600)
        finally:
            self.stop()

    def __enter__(self) -> ProvisioningServer:
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port of ``url``: the HTTPS one when TLS is on."""
        httpd = self._httpsd or self._httpd
        if httpd is None:
            raise RuntimeError("server not started")
        return int(httpd.server_address[1])

    @property
    def url(self) -> str:
        """The URL machines use (``BOOTYURL=``): ``https://`` when TLS is on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._httpsd else 'http'}://{host}:{self.port}"

    @property
    def http_port(self) -> int | None:
        """The plain HTTP listener's port (None: turned off)."""
        if not self._started:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1]) if self._httpd is not None else None

    @property
    def http_url(self) -> str | None:
        """The plain HTTP listener (iPXE scripts, /boot/, reads), None when turned off; the
        same as ``url`` without TLS."""
        port = self.http_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return None if port is None else f"http://{host}:{port}"

    # -- events and access records ----------------------------------------------------------

    def _add_event(self, mac: str, event: dict[str, Any]) -> None:
        log.info("event %s: %s", mac, json.dumps(event, sort_keys=False, default=str))
        with self._cond:
            self.history.add(mac, event)
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
            return self.history.events(key)

    def status(self, mac: str | None = None) -> Any:
        """The summary of ``mac`` with its event log (None if unknown), or of every machine:
        the JSON of ``/api/machines/{mac}`` and ``/api/machines``."""
        with self._cond:
            if mac is not None:
                summary = self.history.summary(mac)
                log_ = self.history.log(mac)
            else:
                seen = {m: self.history.summary(m) for m in self.history.macs()}
        if mac is not None:
            if summary is None and mac not in self.machines.known():
                return None
            return {**(summary or Summary(mac)).to_json(), **self._file_info(mac),
                    "now": round(time.time(), 3), "log": log_}
        out = []
        for key in sorted({*seen, *self.machines.known()}):
            summary = seen.get(key) or Summary(key)
            out.append({**summary.to_json(), **self._file_info(key)})
        return {"now": round(time.time(), 3), "machines": out}

    def _file_info(self, key: str) -> dict[str, Any]:
        """Which file serves ``key`` (a MAC or ``default``), and what is wrong with it."""
        try:
            machine = self.machines.lookup(key)
        except MachineError as exc:
            return {"file": None, "file_error": exc.message, "file_warning": None}
        if machine is None:
            return {"file": None, "file_error": None, "file_warning": None}
        return {"file": f"{machine.path.parent.name}/{machine.path.name}", "file_error": None,
                "file_warning": machine.warning}

    def wait_event(self, mac: str, step: str | None = None, status: str | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        """The first event for ``mac`` matching ``step``/``status``, waiting up to ``timeout``."""
        key = normalize_mac(mac)
        if key is None:
            raise ValueError(f"not a MAC address: {mac!r}")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.history.events(key):
                    if (step is None or ev.get("step") == step) and (
                            status is None or ev.get("status") == status):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event step={step} status={status} for {key} "
                                       f"within {timeout:g} s")
                self._cond.wait(left)

    def _commit(self, name: str, incoming: _Incoming) -> dict[str, Any]:
        """Rename a complete upload (and its sidecar) over ``name``; the last commit wins."""
        images = self.root / "images"
        record = {"name": name, "size": incoming.size, "sha256": incoming.sha256}
        side_fd, side_tmp = tempfile.mkstemp(prefix=f".upload-{name}.sha256.", dir=images)
        try:
            os.fchmod(side_fd, 0o644)
            os.write(side_fd, f"{incoming.sha256}  {name}\n".encode())
            os.fsync(side_fd)
        except BaseException:
            os.unlink(side_tmp)
            raise
        finally:
            os.close(side_fd)
        with self._commit_lock:  # the image and its sidecar change together
            try:
                os.replace(incoming.tmp, images / name)
            except BaseException:
                os.unlink(side_tmp)
                raise
            os.replace(side_tmp, images / f"{name}.sha256")
            self._uploads[name] = record
        dir_fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("upload %s: %d bytes, sha256 %s", name, incoming.size, incoming.sha256)
        return record

    @property
    def uploads(self) -> dict[str, dict[str, Any]]:
        """Uploads stored since the start, by name: ``{name, size, sha256}``."""
        with self._commit_lock:
            return {k: dict(v) for k, v in self._uploads.items()}

    @property
    def access_log(self) -> list[dict[str, Any]]:
        """One record per recent request (the last ACCESS_RECORDS): method, path, status,
        range."""
        with self._cond:
            return list(self._access)

