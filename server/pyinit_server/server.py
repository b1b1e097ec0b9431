"""The provisioning server: per-MAC actions, iPXE, images with Range, durable events, uploads.

Built on aiohttp (docs/server.md says why): one asyncio event loop in a background thread
(:class:`ProvisioningServer` starts and stops it, so tests and the CLI run it the same way),
llhttp's C parser for the HTTP framing, ``sendfile`` for files, a listen backlog of 1024 by
default. Events are kept in a durable store (:mod:`pyinit_server.store`: SQLite under the root,
or PostgreSQL shared by several replicas) and acknowledged only after they are committed.

Layout of ``root``::

    machines/52-54-00-12-34-56.yaml   one machine (YAML or JSON, see pyinit_server.machines)
    machines/default.yaml             optional: the action for any other MAC
    images/...                        image files (uploads land here too)
    boot/vmlinuz, boot/initramfs.cpio.zst   for iPXE (or ``boot_dir``: ``pyinit serve --boot-dir``)
    .pyinit/                          the server's own: secret, operator-token, state.sqlite3

Routes:

``GET|HEAD /{mac}`` and ``/{mac}.bty``
    the machine's action as JSON (``.yaml``/``.yml`` converted; a ``.json`` file without
    server keys byte for byte; the ``pxe:`` key stripped). The MAC may use dashes or colons, any
    case. 404 (short JSON body) for an unknown MAC without ``default.*``; 400 for a path that is
    not a MAC; 500 with ``{"error": "machines/<file>:<line>: <reason>"}`` when that machine's
    file (or, for a MAC without its own, the default) cannot be parsed or two files claim it.
    An action that :func:`pyinit.action.parse_action` rejects is served anyway, with an
    ``X-Pyinit-Warning`` header and a warning in the log and in ``/api/machines``.
``GET|HEAD /{mac}.ipxe``
    an iPXE script booting ``/boot/vmlinuz`` and ``/boot/initramfs.cpio.zst`` with
    ``kernel_args``, ``BOOTYURL=<base>``, ``BOOTIF=01-<mac>``, ``pyinit.token=<the machine's
    token>`` (unless writes are open) and the file's ``pxe.cmdline``.
``GET|HEAD /boot.ipxe``
    a script that chains to ``<base>/${netX/mac:hexhyp}.ipxe``.
``GET|HEAD /boot/<path>`` and ``/images/<path>``
    files (:mod:`pyinit_server.files`: Range, ETag, If-Range, If-None-Match, the symlink
    policy, hidden files never served).
``GET|HEAD /`` and ``/dashboard``
    the live web dashboard (:mod:`pyinit_server.dashboard`, docs/dashboard.md).
``GET /api/machines`` and ``/api/machines/{mac}``
    status of every machine, paged and filtered on the server (``offset``, ``limit``, ``q``: part
    of the MAC, ``state``: new|running|ok|failed, ``lifecycle``: a lifecycle state or
    ``unconfirmed``), and of one machine with its event log.
``POST /events/{mac}``
    one JSON object (at most 64 KiB, nested at most :data:`MAX_JSON_DEPTH` deep), answered 204
    once it is committed to the store (503 when the store cannot take it: the machine retries).
``POST /image``
    a captured disk, BOOTy/plunder style: ``multipart/form-data`` whose file field
    ``BootyImage`` is stored as ``images/<file name>`` (only the name's last component; it must
    match ``[A-Za-z0-9_-][A-Za-z0-9._-]*`` whole, not end in ``.sha256``).
``PUT /images/<name>``
    the request body is stored as ``images/<name>`` (same name rules; no subdirectories).

Uploads: see :mod:`pyinit_server.uploads` (temporary file, sidecar, limits, cleanup). The answer
is 201 with ``{"name", "size", "sha256"}``.

Writes need a token (:mod:`pyinit_server.auth`): a machine's own token for its events and
captures, the operator token for everything; refused with 401/403 before the body is read
(before ``100 Continue`` when the client asks). With TLS the plain listener refuses every write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from pyinit_server import auth, dashboard, files, lifecycle
from pyinit_server import uploads as receiving
from pyinit_server.files import (  # re-exported: tests and bench import them from here
    ByteRange as ByteRange,
)
from pyinit_server.files import (
    Unsatisfiable as Unsatisfiable,
)
from pyinit_server.files import (
    if_range_matches as if_range_matches,
)
from pyinit_server.files import (
    parse_range as parse_range,
)
from pyinit_server.ipxe import chain_script, local_disk_script, machine_script
from pyinit_server.lifecycle import Lifecycle
from pyinit_server.machines import Machine, MachineError, MachineStore
from pyinit_server.machines import normalize_mac as normalize_mac  # re-exported
from pyinit_server.status import MAX_EVENTS, Summary
from pyinit_server.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MACHINES,
    Store,
    StoreError,
    open_store,
)
from pyinit_server.uploads import UploadError as UploadError
from pyinit_server.uploads import upload_name as upload_name

log = logging.getLogger("pyinit_server")

MAX_EVENT_BYTES = 64 * 1024
MAX_JSON_DEPTH = 64
# A connection that makes no progress for this long is dropped: an idle keep-alive connection,
# a request cut off in its headers (slowloris), a reader that stopped reading mid-image.
CLIENT_TIMEOUT = 60.0
BODY_DEADLINE = 10.0  # seconds for a whole event body (small JSON), however it trickles
DEFAULT_MAX_UPLOAD = 64 << 30  # 64 GiB
DEFAULT_UPLOAD_TIMEOUT = 60.0  # seconds without data before an upload counts as cut off
DEFAULT_MIN_UPLOAD_RATE = 1024  # bytes/s over each UPLOAD_RATE_WINDOW
UPLOAD_RATE_WINDOW = 60.0
DEFAULT_BACKLOG = 1024
DEFAULT_GRACE = 30.0  # seconds in-flight requests get at stop (SIGTERM)
DEFAULT_PAGE = 500
MAX_PAGE = 5000
STATES = ("new", "running", "ok", "failed")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")
DEFAULT_KERNEL_ARGS = "console=ttyS0,115200 console=tty0"
_UNSAFE_RE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # not printable ASCII, or a backslash


def clean(text: object, limit: int = 300) -> str:
    """A client-supplied string as it may enter the log: non-printable characters as ``\\xNN``
    escapes (no escape sequences, no forged lines), cut at ``limit``. Pure."""
    value = str(text)
    cut = len(value) > limit
    value = _UNSAFE_RE.sub(lambda m: m.group().encode("unicode_escape").decode()
                           if m.group() != "\\" else "\\\\", value[:limit])
    return value + ("..." if cut else "")


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (outside strings), without recursion.
    Pure."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def page_params(query: Any) -> tuple[int, int, str | None, str | None, str | None]:
    """``offset``, ``limit``, ``q``, ``state``, ``lifecycle`` of ``/api/machines``; ValueError
    with a line. Pure."""
    def number(name: str, default: int, top: int) -> int:
        text = query.get(name)
        if text is None or text == "":
            return default
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise ValueError(f"{name}: not a number: '{clean(text, 40)}'")
        return min(int(text), top)
    offset = number("offset", 0, 10**9)
    limit = number("limit", DEFAULT_PAGE, MAX_PAGE)
    q = query.get("q") or None
    if q is not None:
        q = q.strip().lower().replace(":", "-")[:64]
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise ValueError(f"state: one of {', '.join(STATES)}, not '{clean(state, 40)}'")
    life = query.get("lifecycle") or None
    if life is not None and life not in lifecycle.FILTERS:
        raise ValueError(f"lifecycle: one of {', '.join(lifecycle.FILTERS)}, not "
                         f"'{clean(life, 40)}'")
    return offset, limit, q, state, life


def machine_state(result: str | None, events: int) -> str:
    """new (no events yet), running, ok or failed. Pure."""
    if not events:
        return "new"
    return result if result in ("ok", "failed") else "running"


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


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=(json.dumps(body) + "\n").encode(),
                        content_type="application/json", headers=headers)


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pyinit"'} if status == 401 else None
    return _json(status, {"error": message, "status": status}, headers)


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level log: a request its parser refuses (smuggling attempts, bad
    chunk sizes, oversized headers) is the client's fault, logged as one escaped line, not as
    an error with a traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc is None or (isinstance(exc, Exception) and type(exc).__module__.startswith(
                "aiohttp.http_exceptions")):
            text = str(getattr(exc, "message", exc) or type(exc).__name__)
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            remote = args[0] if args else "?"
            self.logger.warning("%s: malformed request refused: %s", remote,
                                clean(first.rstrip(":"), 200))
            return
        self.logger.error("%s", str(msg) % args if args else msg, exc_info=exc_info)


class _Protocol(RequestHandler):
    """aiohttp's connection handler, plus one log line for a connection dropped while its
    request was still arriving (a slowloris: headers trickling in for the whole client
    timeout); aiohttp's own keep-alive timer closes it silently."""

    _partial = 0  # bytes received since the last complete request head
    _peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        self._partial = 0 if self._request_count != count else self._partial + len(data)

    def _process_keepalive(self) -> None:
        closing = self._force_close
        super()._process_keepalive()
        if self._force_close and not closing and self._partial:
            log.warning("%s: dropped after %g s: %d bytes of a request that never finished "
                        "arriving (a client too slow, or a slowloris)",
                        self._peer, self.keepalive_timeout, self._partial)


class _Site(web.BaseSite):
    """A listener on a socket we bound ourselves (so that ``start()`` reports a busy port
    in the caller's thread), with our backlog and TLS handshake timeout."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, backlog: int,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._sock = sock
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        kwargs: dict[str, Any] = {}
        if self._ssl_context is not None:
            kwargs["ssl_handshake_timeout"] = self._handshake_timeout
        def protocol() -> _Protocol:  # what web.Server() makes, with the slowloris line
            return _Protocol(server, loop=loop, **server._kwargs)

        self._server = await loop.create_server(protocol, sock=self._sock, ssl=self._ssl_context,
                                                backlog=self._backlog, **kwargs)


class ProvisioningServer:
    """Serve ``root`` on ``host:port`` (port 0: any free port) from a background thread.

    ``boot_dir``: where ``/boot/`` is served from (default ``root/boot``). ``public_url``: the
    base URL written into iPXE scripts (default: from each request's Host header).
    ``kernel_args``: the kernel command line of every iPXE script. ``token``: the operator
    token (default: ``root/.pyinit/operator-token``, made on first start). ``open_writes``:
    take writes without any token (asked for by name; docs/security.md).

    ``db``: the event store (None: SQLite under ``root/.pyinit``; ``postgresql://...``: shared
    by replicas). ``max_events``/``max_event_bytes``: retention per machine and in total;
    ``max_machines``: machines kept (those heard from longest ago forgotten first).

    ``tls_cert``/``tls_key`` (PEM files): HTTPS on ``tls_port`` as well, the URL machines use
    (``url``, ``BOOTYURL=``); the plain listener on ``port`` stays for iPXE and refuses every
    write with 403; ``port=None`` drops it. A bad certificate or key raises ValueError at
    construction, with one line naming the file.

    ``symlinks``: ``inside`` (default) or ``any`` (nginx's default). ``backlog``: the listen
    queue. ``grace``: seconds in-flight requests get at :meth:`stop`.
    """

    # seconds a TLS client has to complete its handshake; tests lower it
    handshake_timeout: float = 10.0

    # seconds a connection may make no progress before it is dropped; tests lower it on the
    # instance before start()
    client_timeout: float = CLIENT_TIMEOUT

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int | None = 0, *,
                 max_upload: int = DEFAULT_MAX_UPLOAD,
                 upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
                 min_upload_rate: int = DEFAULT_MIN_UPLOAD_RATE,
                 boot_dir: Path | str | None = None, public_url: str | None = None,
                 kernel_args: str = DEFAULT_KERNEL_ARGS, token: str | None = None,
                 open_writes: bool = False, db: str | None = None,
                 max_events: int = MAX_EVENTS, max_event_bytes: int = DEFAULT_MAX_BYTES,
                 max_machines: int = DEFAULT_MAX_MACHINES,
                 tls_cert: Path | str | None = None, tls_key: Path | str | None = None,
                 tls_port: int = 0, public_tls_url: str | None = None,
                 symlinks: str = "inside", backlog: int = DEFAULT_BACKLOG,
                 reuse_port: bool = False, worker: bool = False,
                 grace: float = DEFAULT_GRACE) -> None:
        self.root = Path(root)
        self.host = host
        self.max_upload = max_upload
        self.upload_timeout = upload_timeout
        self.min_upload_rate = min_upload_rate
        self.boot_dir = Path(boot_dir) if boot_dir is not None else self.root / "boot"
        self.public_url = public_url.rstrip("/") if public_url else None
        self.kernel_args = kernel_args
        if token is not None:
            auth.check_token(token)  # AuthError is a ValueError
        self._given_token = token
        self.open_writes = open_writes
        self.db = db
        self.max_events = max_events
        self.max_event_bytes = max_event_bytes
        self.max_machines = max_machines
        if symlinks not in files.SYMLINK_POLICIES:
            raise ValueError(f"symlinks: one of {', '.join(files.SYMLINK_POLICIES)}")
        self.symlinks = symlinks
        if backlog < 1:
            raise ValueError("backlog: at least 1")
        self.reuse_port = reuse_port  # several processes on one port (pyinit serve --workers)
        self.worker = worker  # one of several: the first process cleans up and makes secrets
        self.backlog = backlog
        self.grace = grace
        self.machines = MachineStore(self.root / "machines")
        self.committer = receiving.Committer(self.root / "images")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        self.tls_context = tls_context(tls_cert, tls_key) \
            if tls_cert is not None and tls_key is not None else None
        if port is None and self.tls_context is None:
            raise ValueError("without TLS the plain HTTP listener cannot be turned off")
        self.public_tls_url = public_tls_url.rstrip("/") if public_tls_url else None
        self._requested_port = port
        self._requested_tls_port = tls_port
        self._socks: dict[str, socket.socket] = {}  # "http"/"https" -> listening socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = False
        self.secret = b""
        self.token: str | None = None  # the operator token, once started
        self.token_file: Path | None = None
        self.store: Store | None = None
        self.preloaded = threading.Event()  # set once the start's parse of machines/ is done
        self._in_flight = 0  # requests in _dispatch (touched in the event loop only)

    # -- lifecycle --------------------------------------------------------------------------

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:  # the kernel spreads connections over the workers' sockets
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, port))
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self) -> ProvisioningServer:
        """Open the store, bind the listeners, serve from a background thread. Raises OSError
        (a busy port), StoreError or auth.AuthError with one line."""
        if self._started:
            raise RuntimeError("server already started")
        self.secret = auth.load_secret(self.root)
        if self._given_token is not None:
            self.token, self.token_file = self._given_token, None
        else:
            self.token, self.token_file = auth.load_operator_token(self.root)
        if not self.worker:  # a worker must not remove its siblings' uploads in flight
            receiving.remove_stale(self.root / "images")
        socks: dict[str, socket.socket] = {}
        try:
            if self._requested_port is not None:
                socks["http"] = self._bind(self._requested_port)
            if self.tls_context is not None:
                socks["https"] = self._bind(self._requested_tls_port)
        except BaseException:
            for sock in socks.values():
                sock.close()
            raise
        try:
            self.store = open_store(self.db, self.root, max_events=self.max_events,
                                    max_bytes=self.max_event_bytes,
                                    max_machines=self.max_machines)
        except BaseException:
            for sock in socks.values():
                sock.close()
            raise
        self._socks = socks
        loop = asyncio.new_event_loop()
        ready: collections.deque[BaseException | None] = collections.deque()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
                ready.append(None)
            except BaseException as exc:
                ready.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="pyinit-server", daemon=True)
        self._thread.start()
        started.wait()
        if ready and ready[0] is not None:
            self._thread.join()
            self.store.close()
            for sock in socks.values():
                sock.close()
            raise ready[0]
        self._started = True
        threading.Thread(target=self._preload, name="pyinit-machines", daemon=True).start()
        if self.tls_context is not None and self.http_url is not None:
            log.info("serving %s on %s (plain HTTP for iPXE, read-only: %s)", self.root,
                     self.url, self.http_url)
        else:
            log.info("serving %s on %s", self.root, self.url)
        if self.open_writes:
            log.warning("writes are open: anyone who reaches this server can post events and "
                        "replace images (--allow-unauthenticated-writes)")
        return self

    def _preload(self) -> None:
        started = time.monotonic()
        try:
            files, errors = self.machines.preload()
        finally:
            self.preloaded.set()
        log.info("machines: %d file(s) parsed in %.1f s%s", files, time.monotonic() - started,
                 f", {errors} with errors (above)" if errors else "")

    async def _serve(self) -> None:
        app = web.Application(client_max_size=MAX_EVENT_BYTES)
        # [\s\S], not ".": a path with %0A in it must reach _dispatch (a 400, logged), not
        # fall through to aiohttp's bare 404
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch,
                             expect_handler=self._expect)
        runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=self.grace,
            keepalive_timeout=self.client_timeout, lingering_time=2.0,
            handler_cancellation=True, max_headers=100, max_line_size=8190,
            max_field_size=8190, logger=_ProtocolLog(log, {}))
        await runner.setup()
        self._runner = runner
        for scheme, sock in self._socks.items():
            site = _Site(runner, sock, backlog=self.backlog,
                         ssl_context=self.tls_context if scheme == "https" else None,
                         handshake_timeout=self.handshake_timeout)
            await site.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, give in-flight requests ``grace`` seconds (default: the server's),
        close every connection, close the store (everything acknowledged is committed)."""
        if not self._started:
            return
        self._started = False
        loop, runner = self._loop, self._runner
        assert loop is not None and runner is not None
        grace = self.grace if grace is None else grace
        ports = ", ".join(str(s.getsockname()[1]) for s in self._socks.values())
        future = asyncio.run_coroutine_threadsafe(self._shutdown(runner, grace), loop)
        try:
            future.result(timeout=grace + 10)
        except Exception as exc:  # a stop must finish
            log.warning("stopping the server: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                sock.close()
        if self.store is not None:
            self.store.close()
        log.info("server on %s stopped", ports)

    async def _shutdown(self, runner: web.AppRunner, grace: float) -> None:
        """Stop accepting, let the requests in flight run for up to ``grace`` seconds, then close
        every connection. Not ``runner.cleanup()`` alone: it marks every connection closing
        first, and aiohttp drops what a client sends after that, so an upload in flight could
        never finish (aio-libs/aiohttp#2298)."""
        for site in list(runner.sites):
            await site.stop()
        deadline = time.monotonic() + grace
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # what is left of the grace, for cleanup() (aiohttp reads 0 as "no limit")
        runner._shutdown_timeout = max(0.01, deadline - time.monotonic())
        await runner.cleanup()

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Run in the foreground until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT)."""
        if not self._started:
            self.start()
        try:
            (stop or threading.Event()).wait()
        finally:
            self.stop()

    def __enter__(self) -> ProvisioningServer:
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _port(self, scheme: str) -> int | None:
        sock = self._socks.get(scheme)
        return None if sock is None else int(sock.getsockname()[1])

    @property
    def port(self) -> int:
        """The port of ``url``: the HTTPS one when TLS is on."""
        if not self._started:
            raise RuntimeError("server not started")
        port = self._port("https") or self._port("http")
        assert port is not None
        return port

    @property
    def url(self) -> str:
        """The URL machines use (``BOOTYURL=``): ``https://`` when TLS is on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if 'https' in self._socks else 'http'}://{host}:{self.port}"

    @property
    def http_port(self) -> int | None:
        """The plain HTTP listener's port (None: turned off)."""
        if not self._started:
            raise RuntimeError("server not started")
        return self._port("http")

    @property
    def http_url(self) -> str | None:
        """The plain HTTP listener (iPXE scripts, /boot/, reads), None when turned off; the
        same as ``url`` without TLS."""
        port = self.http_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return None if port is None else f"http://{host}:{port}"

    def machine_token(self, mac: str) -> str:
        """The token of ``mac``: good for its events and captures (``pyinit.token=``)."""
        if not self.secret:
            self.secret = auth.load_secret(self.root)
        return auth.machine_token(self.secret, mac)

    # -- events, status and access records --------------------------------------------------

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("server not started")
        return self.store

    def events(self, mac: str) -> list[dict[str, Any]]:
        """Events POSTed for ``mac`` (any spelling), oldest first."""
        key = normalize_mac(mac)
        if key is None:
            raise ValueError(f"not a MAC address: {mac!r}")
        return self._store().events(key)

    def status(self, mac: str | None = None, *, offset: int = 0, limit: int = DEFAULT_PAGE,
               q: str | None = None, state: str | None = None,
               life: str | None = None) -> Any:
        """The summary of ``mac`` with its event log (None if unknown), or a page of every
        machine: the JSON of ``/api/machines/{mac}`` and ``/api/machines``. ``counts`` (by
        ``state``) and ``lifecycle_counts`` (by lifecycle state, and ``unconfirmed``) are the
        whole fleet's; ``state`` and ``life`` filter the page."""
        store = self._store()
        if mac is not None:
            summary = store.summary(mac)
            if summary is None and mac not in self.machines.known():
                return None
            return {**self._summary_json(summary or Summary(mac), mac),
                    "now": round(time.time(), 3), "log": store.log(mac)}
        index = store.index()
        known = self.machines.known()
        keys = sorted({*index, *known})
        now = time.time()
        counts = dict.fromkeys(STATES, 0)
        life_counts = dict.fromkeys(lifecycle.FILTERS, 0)
        selected: list[str] = []
        for key in keys:
            row = index.get(key)
            st = machine_state(row.result, row.events) if row is not None else "new"
            lc = row.lifecycle if row is not None and row.lifecycle in lifecycle.STATES \
                else "new"
            late = row is not None and lifecycle.unconfirmed(lc, row.lifecycle_since, now)
            if key != "default":
                counts[st] += 1
                life_counts[lc] += 1
                life_counts[lifecycle.UNCONFIRMED] += late
            if (q is None or q in key) and (state is None or state == st) and (
                    life is None or life == lc or (late and life == lifecycle.UNCONFIRMED)):
                selected.append(key)
        page = selected[offset:offset + limit]
        summaries = store.summaries([k for k in page if k in index])
        files = self.machines.snapshot()
        machines = [self._summary_json(summaries.get(k) or Summary(k), k, files) for k in page]
        return {"now": round(now, 3), "total": len(selected), "offset": offset,
                "limit": limit, "counts": counts, "lifecycle_counts": life_counts,
                "store": store.stats(), "machines": machines}

    def _summary_json(self, summary: Summary, key: str,
                      files: dict[str, list[str]] | None = None) -> dict[str, Any]:
        now = time.time()
        return {**summary.to_json(), "state_name": machine_state(summary.result, summary.events),
                "lifecycle_warning": lifecycle.warning(Lifecycle.from_json(summary.lifecycle),
                                                       now),
                **self._file_info(key, files)}

    def _file_info(self, key: str, files: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Which file serves ``key`` (a MAC or ``default``), and what is wrong with it."""
        try:
            machine = self.machines.lookup(key, files)
        except MachineError as exc:
            return {"file": None, "file_error": exc.message, "file_warning": None,
                    "hostname": None}
        if machine is None:
            return {"file": None, "file_error": None, "file_warning": None, "hostname": None}
        hostname = machine.action.get("hostname")
        return {"file": f"{machine.path.parent.name}/{machine.path.name}", "file_error": None,
                "file_warning": machine.warning,
                "hostname": hostname if isinstance(hostname, str) else None}

    def observe(self, request: web.BaseRequest, status: int) -> None:
        """Called once per request with the status it is answered with, before the answer is
        sent (the access line is logged after). Does nothing here: an extension point for
        subclasses (metrics; tests.serverkit records requests for the tests)."""

    # -- HTTP: dispatch ---------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._in_flight += 1
        try:
            return await self._respond(request)
        finally:
            self._in_flight -= 1

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        if request.method in ("GET", "HEAD"):
            handler = self._get
        elif request.method == "POST":
            handler = self._post
        elif request.method == "PUT":
            handler = self._put
        else:
            handler = self._not_allowed
        try:
            resp = await handler(request)
        except asyncio.CancelledError:
            log.info('%s "%s %s" cancelled: %s', request.remote, request.method,
                     clean(request.raw_path), "the client went away" if self._started
                     else "the server stopped before it was done")
            raise
        except Exception:
            log.exception('%s "%s %s": internal error', request.remote, request.method,
                          clean(request.raw_path))
            resp = _error(500, "internal error (see the server's log)")
        self.observe(request, resp.status)
        if not self._started:  # stopping: no further request on this connection
            resp.force_close()
        sent = 0
        try:
            await resp.prepare(request)
            await resp.write_eof()
            if isinstance(resp, files.FileBody):
                sent = resp.sent
            elif isinstance(resp, web.Response) and request.method != "HEAD":
                sent = resp.content_length or 0
        except (ConnectionError, asyncio.CancelledError) as exc:
            log.info('%s "%s %s": client went away: %s', request.remote, request.method,
                     clean(request.raw_path), clean(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            f = getattr(resp, "_file", None)
            if f is not None:
                f.close()
        rng = request.headers.get("Range")
        log.info('%s "%s %s HTTP/%d.%d" %d %d %.3fs%s', request.remote, request.method,
                 clean(request.raw_path), *request.version, resp.status, sent,
                 time.monotonic() - started, f" range={clean(rng, 80)}" if rng else "")
        return resp

    async def _not_allowed(self, request: web.Request) -> web.StreamResponse:
        resp = _error(405, f"method {clean(request.method, 20)} not allowed")
        resp.headers["Allow"] = "GET, HEAD, POST, PUT"
        return resp

    def _path(self, request: web.BaseRequest) -> str | None:
        return files.decode_path(request.rel_url.raw_path)

    # -- authorization ----------------------------------------------------------------------

    def _auth(self, request: web.BaseRequest, mac: str | None) -> auth.Denied | None:
        if self.tls_context is not None and not request.secure:
            # the token (and what it protects) must not cross the network in clear
            return auth.Denied(403, f"this server takes writes over HTTPS only: use {self.url}")
        return auth.decide(request.headers.get("Authorization"), secret=self.secret,
                           operator=self.token, mac=mac, open_writes=self.open_writes)

    def _write_target(self, request: web.BaseRequest) -> tuple[bool, str | None]:
        """(whether the path is a write endpoint, the MAC it concerns)."""
        path = self._path(request) or ""
        if request.method == "POST" and path.startswith("/events/"):
            return True, normalize_mac(path[len("/events/"):])
        if request.method == "PUT" and path.startswith("/images/"):
            return True, auth.capture_mac(path[len("/images/"):])
        if request.method == "POST" and path == "/image":
            return True, None
        if request.method == "POST" and path.startswith("/api/machines/"):
            return True, None  # redeploy: the operator's
        return False, None

    def _precheck(self, request: web.BaseRequest) -> auth.Denied | None:
        """Before the body: refuse writes the token cannot cover. A machine token on
        ``POST /image`` passes here and is checked against the file name later."""
        write, mac = self._write_target(request)
        if not write:
            return None
        denied = self._auth(request, mac)
        if denied is None or mac is not None or request.method != "POST":
            return denied
        if self.tls_context is not None and not request.secure:
            return denied  # plain HTTP beside HTTPS: no writes at all
        given = auth.bearer(request.headers.get("Authorization"))
        if isinstance(given, str) and given.startswith(auth.MACHINE_PREFIX):
            return None  # POST /image: decided once the multipart file name is known
        return denied

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a write without its token, or an oversized one,
        before the client sends the body (curl asks first)."""
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return _error(417, f"unknown Expect: {clean(expect, 40)}")
        denied = self._precheck(request)
        if denied is not None:
            log.warning("%s %s refused: %s", request.method, clean(request.raw_path),
                        denied.message)
            resp = _error(denied.status, denied.message)
            resp.force_close()
            return resp
        length = request.content_length
        if request.method in ("POST", "PUT") and length is not None and \
                length > self.max_upload:
            resp = _error(413, f"body of {length} bytes is larger than {self.max_upload}")
            resp.force_close()
            return resp
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    # -- GET --------------------------------------------------------------------------------

    async def _get(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        if path is None:
            return _error(400, f"malformed path: {clean(request.rel_url.raw_path, 100)}")
        if path.startswith("/images/"):
            return self._file(request, self.root / "images", path[len("/images/"):], "images/")
        if path.startswith("/boot/"):
            return self._file(request, self.boot_dir, path[len("/boot/"):], "boot/")
        if path == "/boot.ipxe":
            return self._text(chain_script(self._base_url(request)))
        if path in ("/", "/dashboard"):
            return dashboard.response()
        if path in ("/api/machines", "/api/machines/"):
            try:
                offset, limit, q, state, life = page_params(request.query)
            except ValueError as exc:
                return _error(400, str(exc))
            return _json(200, await self._in_thread(self.status, offset=offset, limit=limit,
                                                    q=q, state=state, life=life))
        if path.startswith("/api/machines/"):
            raw = path[len("/api/machines/"):]
            mac = normalize_mac(raw)
            if mac is None:
                return _error(400, f"not a MAC address: '{clean(raw, 60)}'")
            status = await self._in_thread(self.status, mac)
            if status is None:
                return _error(404, f"no events and no machine file for {mac}")
            return _json(200, status)
        name = path.lstrip("/")
        kind = "action"
        for suffix, what in ((".bty", "action"), (".ipxe", "ipxe")):
            if name.endswith(suffix):
                name, kind = name[:-len(suffix)], what
        mac = normalize_mac(name)
        if mac is None:
            return _error(400, f"not a MAC address: '{clean(path, 100)}' (expected /<mac>, "
                               "/<mac>.bty or /<mac>.ipxe)")
        machine = self._machine(mac)
        if isinstance(machine, web.Response):
            return machine
        if kind == "ipxe":
            local = await self._in_thread(self._local_boot, mac, machine)
            if local is not None:
                log.info("%s: deployed, iPXE boots its local disk (%s)", mac, local)
                return self._text(local_disk_script(mac, machine, local))
            token = None if self.open_writes else self.machine_token(mac)
            return self._text(machine_script(self._base_url(request), mac, machine,
                                             self.kernel_args,
                                             bootyurl=self._booty_url(request), token=token))
        headers = {"Cache-Control": "no-store"}
        if machine.warning:
            headers["X-Pyinit-Warning"] = clean(machine.warning, 500)
        return web.Response(body=machine.action_json(), content_type="application/json",
                            headers=headers)

    def _local_boot(self, mac: str, machine: Machine) -> str | None:
        """Deploy once: why ``mac``'s PXE boot should boot its disk, or None (provision)."""
        summary = self._store().summary(mac)
        current = Lifecycle.from_json(summary.lifecycle) if summary is not None else None
        return lifecycle.local_boot(current, hashlib.sha256(machine.action_json()).hexdigest())

    def redeploy(self, mac: str) -> tuple[int, dict[str, Any]]:
        """``pyinit redeploy``: the machine's next boot provisions again (docs/lifecycle.md)."""
        summary = self._store().summary(mac)
        if summary is None and mac not in self.machines.known():
            return 404, {"error": f"no events and no machine file for {mac}", "status": 404}
        current = Lifecycle.from_json(summary.lifecycle) if summary is not None else None
        refusal = lifecycle.redeploy_refusal(current)
        if refusal is not None:
            return 409, {"error": f"{mac}: not redeployed: {refusal}", "status": 409}
        self._store().submit(mac, {"step": "operator", "status": "redeploy"},
                             time.time()).result(timeout=30)
        after = self._store().summary(mac)
        return 200, {"mac": mac, "lifecycle": after.lifecycle if after else None}

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store read in a worker thread, not in the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: fn(*args, **kwargs))

    def _file(self, request: web.Request, base: Path, rel: str, what: str) -> web.StreamResponse:
        try:
            f = files.open_file(base, rel, what, symlinks=self.symlinks)
        except files.NotServed as exc:
            return _error(exc.status, exc.message)
        try:
            return files.file_response(request, f, timeout=self.client_timeout)
        except BaseException:
            f.close()
            raise

    @staticmethod
    def _text(text: str) -> web.Response:
        return web.Response(text=text, content_type="text/plain",
                            headers={"Cache-Control": "no-store"})

    def _machine(self, mac: str) -> Machine | web.Response:
        """The machine serving ``mac``, or the 404/500 answer."""
        try:
            machine = self.machines.lookup(mac)
        except MachineError as exc:
            log.error("machine %s: %s", mac, exc.message)
            return _error(500, exc.message)
        if machine is None:
            return _error(404, f"no machine file for {mac} and no default "
                               "(machines/<mac>.yaml|.yml|.json, machines/default.*)")
        log.debug("machine %s: %s", mac, machine.path.name)  # the access line follows
        return machine

    def _base_url(self, request: web.BaseRequest) -> str:
        """The listener this request came in on, as the client sees it: --public-url (plain
        HTTP) or --public-tls-url (HTTPS), else the scheme and the Host header."""
        tls = request.secure
        public = self.public_tls_url if tls else self.public_url
        if public:
            return public
        host = (request.headers.get("Host") or "").strip()
        if not _HOST_RE.match(host):
            return self.url if tls else self.http_url or self.url
        return f"{'https' if tls else 'http'}://{host}"

    def _booty_url(self, request: web.BaseRequest) -> str:
        """``BOOTYURL=`` for an iPXE script: with TLS on, the HTTPS listener even when the script
        went over plain HTTP."""
        if self.tls_context is None or request.secure:
            return self._base_url(request)
        if self.public_tls_url:
            return self.public_tls_url
        try:
            hostname = urlsplit(self._base_url(request)).hostname
        except ValueError:
            hostname = None
        if not hostname:
            return self.url
        return f"https://{f'[{hostname}]' if ':' in hostname else hostname}:{self.port}"

    # -- POST and PUT -----------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> web.Response:
        """An error for a request whose body may be partly unread: the connection closes after
        it (aiohttp reads and drops what the client still sends for a moment first)."""
        resp = _error(status, message)
        resp.force_close()  # a "Connection: close" header alone would not make aiohttp close
        return resp

    async def _post(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        if path == "/image":
            denied = self._precheck(request)
            if denied is not None:
                return self._denied(request, denied)
            return await self._upload(request, lambda: self._multipart_upload(request))
        if path is not None and path.startswith("/api/machines/") and \
                path.endswith("/redeploy"):
            mac = normalize_mac(path[len("/api/machines/"):-len("/redeploy")])
            if mac is None:
                return self._refuse(400, "not a MAC address")
            denied = self._auth(request, None)  # the operator's alone
            if denied is not None:
                return self._denied(request, denied)
            status, body = await self._in_thread(self.redeploy, mac)
            log.info("redeploy %s: %s", mac, body.get("error") or "the next boot provisions")
            return _json(status, body)
        if path is None or not path.startswith("/events/"):
            return self._refuse(404, f"no such endpoint: POST {clean(path or '?', 100)}")
        mac = normalize_mac(path[len("/events/"):])
        if mac is None:
            return self._refuse(400, "not a MAC address")
        denied = self._auth(request, mac)
        if denied is not None:
            return self._denied(request, denied)
        return await self._post_event(request, mac)

    def _denied(self, request: web.BaseRequest, denied: auth.Denied) -> web.Response:
        log.warning("%s %s refused: %s", request.method, clean(request.raw_path), denied.message)
        return self._refuse(denied.status, denied.message)

    async def _put(self, request: web.Request) -> web.StreamResponse:
        path = self._path(request)
        if path is None:
            return self._refuse(400, f"malformed path: {clean(request.rel_url.raw_path, 100)}")
        if not path.startswith("/images/"):
            return self._refuse(405 if path.startswith("/") else 400,
                                f"PUT is only for /images/<name>, not {clean(path, 100)}")
        denied = self._precheck(request)
        if denied is not None:
            return self._denied(request, denied)
        rel = path[len("/images/"):]
        name = upload_name(rel, basename=False)
        if name is None:
            return self._refuse(400, f"not a valid image name: '{clean(rel, 100)}' (a plain "
                                     "file name of A-Z a-z 0-9 . _ -, no leading dot)")
        return await self._upload(request, lambda: self._put_upload(request, name))

    def _limits(self) -> receiving.Limits:
        return receiving.Limits(self.max_upload, self.upload_timeout, self.min_upload_rate,
                              UPLOAD_RATE_WINDOW)

    async def _put_upload(self, request: web.Request, name: str) -> tuple[str, receiving.Incoming]:
        receiving.check_framing(request, self.max_upload)
        incoming = await receiving.receive(self.root / "images", name,
                                         receiving.pieces(request.content, self._limits()))
        return name, incoming

    async def _multipart_upload(self, request: web.Request) -> tuple[str, receiving.Incoming]:
        receiving.check_framing(request, self.max_upload)
        found: tuple[str, receiving.Incoming] | None = None
        try:
            async for raw, data in receiving.multipart_file(request, self._limits()):
                name = upload_name(raw, basename=True)
                if name is None:
                    raise receiving.UploadError(400, f"not a valid image file name: "
                                                   f"'{clean(raw, 100)}' (A-Z a-z 0-9 . _ -, "
                                                   "no leading dot)")
                denied = self._auth(request, auth.capture_mac(name))
                if denied is not None:
                    raise receiving.UploadError(denied.status, denied.message)
                found = name, await receiving.receive(self.root / "images", name, data)
        except BaseException:
            if found is not None:
                found[1].discard()
            raise
        assert found is not None  # multipart_file raised otherwise
        return found

    async def _upload(self, request: web.Request,
                      receive: Callable[[], Awaitable[tuple[str, receiving.Incoming]]],
                      ) -> web.StreamResponse:
        """Run ``receive()`` (named), commit it, answer 201; nothing stays on error."""
        try:
            name, incoming = await receive()
        except receiving.UploadError as exc:
            log.warning("upload %s refused: %s", clean(request.raw_path), exc.message)
            return self._refuse(exc.status, exc.message)
        except OSError as exc:
            log.error("upload %s failed: %s", clean(request.raw_path), exc)
            status = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500
            return self._refuse(status, f"cannot store the upload: {exc.strerror or exc}")
        try:
            record = await self._in_thread(self.committer.commit, name, incoming)
        except OSError as exc:
            incoming.discard()
            log.error("upload %s: cannot commit: %s", name, exc)
            return self._refuse(500, f"cannot store the upload: {exc.strerror or exc}")
        return _json(201, record, {"Location": f"/images/{name}"})

    async def _post_event(self, request: web.Request, mac: str) -> web.StreamResponse:
        encoding = request.headers.get("Transfer-Encoding")
        if encoding is not None and encoding.strip().lower() != "chunked":
            return self._refuse(501, "only chunked transfer coding is supported")
        if encoding is None and request.content_length is None:
            return self._refuse(411, "Content-Length required")
        if (request.content_length or 0) > MAX_EVENT_BYTES:
            return self._refuse(413, f"event larger than {MAX_EVENT_BYTES} bytes")
        try:
            body = await asyncio.wait_for(self._read_small(request), BODY_DEADLINE)
        except TimeoutError:
            return self._refuse(408, f"the event body did not arrive within {BODY_DEADLINE:g} s")
        except receiving.UploadError as exc:
            return self._refuse(exc.status, exc.message)
        if json_depth(body) > MAX_JSON_DEPTH:
            return _error(400, f"bad JSON: nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            event = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"bad JSON: {exc}")
        except RecursionError:
            return _error(400, "bad JSON: nested too deep")
        if not isinstance(event, dict):
            return _error(400, "an event is a JSON object")
        if event.get("step") == "operator":  # a machine faking the operator: say so
            faked = "step 'operator' is the server's own (pyinit redeploy), not a machine's"
            log.warning("event %s refused: %s", mac, faked)
            return _error(400, faked)
        if event.get("step") == "firstboot":
            summary = await self._in_thread(self._store().summary, mac)
            why = lifecycle.firstboot_refusal(
                Lifecycle.from_json(summary.lifecycle) if summary is not None else None)
            if why is not None:
                log.warning("event %s: %s", mac, why)
        try:
            await asyncio.wrap_future(self._store().submit(mac, event, time.time()))
        except StoreError as exc:
            log.error("event %s not stored: %s", mac, exc)
            return _json(503, {"error": f"cannot store the event: {exc}", "status": 503},
                         {"Retry-After": "1"})
        log.info("event %s: %s", mac, json.dumps(event, default=str)[:2000])
        return web.Response(status=204)

    @staticmethod
    async def _read_small(request: web.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                data = await request.content.readany()
            except Exception as exc:
                if type(exc).__module__.startswith("aiohttp"):
                    raise receiving.CutOff(str(exc) or type(exc).__name__) from exc
                raise
            if not data:
                return b"".join(chunks)
            size += len(data)
            if size > MAX_EVENT_BYTES:
                raise receiving.UploadError(413, f"event larger than {MAX_EVENT_BYTES} bytes")
            chunks.append(data)
