"""The simulated machines of ``bench_fleet``: a pool of forked client processes, each running many
connections in one asyncio loop, all released at the same moment by a barrier.

Two jobs: :func:`burst` (every connection connects, sends one ``GET /<mac>``, reads the whole
answer and compares it byte for byte with what it must be; an ``epoll`` loop) and
:func:`post_events` (asyncio: keep-alive connections posting small progress events as fast as
they are acknowledged, until a deadline).
Times are ``time.monotonic()`` (``CLOCK_MONOTONIC``, the same clock in every process).

The HTTP/1.1 client is written here by hand (a request in one ``send``, a response head up to
``\\r\\n\\r\\n``, a ``Content-Length`` body; nothing else is accepted): the clients share the two
cores with the server they measure, so every microsecond they spend is one the server does not
get. ``asyncio.open_connection`` streams or aiohttp's client cost several times more per request
in Python; a few socket calls per request keep the client side as small as it can be, and the
same for both servers. Every answer is still checked: the status, and for ``GET`` the body's
bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import resource
import select
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.bench.harness import cpu_all

CONNECT_TIMEOUT = 30.0  # seconds for one burst connection, connect to last byte
REQUEST_TIMEOUT = 30.0  # seconds for one event request
RESULT_TIMEOUT = 300.0


class HTTPError(Exception):
    """An answer this client cannot read (or none at all)."""


# ---- the client ---------------------------------------------------------------------------------

def parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers (lower-case names) and whether the connection may be reused, of a
    response head without its final ``\r\n\r\n``."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise HTTPError(f"bad status line {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HTTPError(f"Transfer-Encoding {headers['transfer-encoding']!r}: not expected")
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return status, headers, keep


def body_length(status: int, headers: dict[str, str]) -> int | None:
    """The body's length; None: up to the end of the connection."""
    if status in (204, 304) or status < 200:
        return 0
    if "content-length" in headers:
        return int(headers["content-length"])
    return None


async def read_response(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        buf: bytearray) -> tuple[int, bytes, bool]:
    """One response from ``sock`` (bytes already received are in ``buf``, what follows the
    response is left there): status, body, whether the connection may be reused."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            raise HTTPError(f"connection closed after {len(buf)} bytes of the response head")
        buf += data
    status, headers, keep = parse_head(bytes(buf[:end]))
    del buf[:end + 4]
    length = body_length(status, headers)
    if length is None:
        while data := await loop.sock_recv(sock, 65536):
            buf += data
        length, keep = len(buf), False
    while len(buf) < length:
        data = await loop.sock_recv(sock, max(65536, length - len(buf)))
        if not data:
            raise HTTPError(f"connection closed after {len(buf)} of {length} body bytes")
        buf += data
    body = bytes(buf[:length])
    del buf[:length]
    return status, body, keep


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ---- the burst ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fetch:
    """One burst connection: when it started (before ``connect``), when the last byte of the
    answer was in, and what was wrong (None: status 200 and the expected bytes)."""

    start: float
    end: float
    error: str | None


class _Conn:
    __slots__ = ("buf", "end", "error", "expected", "length", "request", "sock", "start",
                 "status")

    def __init__(self, request: bytes, expected: bytes) -> None:
        self.request, self.expected = request, expected
        self.sock = _socket()
        self.buf = bytearray()
        self.start = self.end = 0.0
        self.status = 0
        self.length: int | None = -1  # -1: head not read yet; None: up to EOF
        self.error: str | None = None

    def received(self, data: bytes) -> bool:
        """Take ``data`` (b"": the server closed); True once the answer is complete."""
        self.buf += data
        if self.length == -1:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if not data:
                    raise HTTPError(f"connection closed after {len(self.buf)} bytes of the "
                                    "response head")
                return False
            self.status, headers, _ = parse_head(bytes(self.buf[:end]))
            del self.buf[:end + 4]
            self.length = body_length(self.status, headers)
        if self.length is None:
            return not data
        if len(self.buf) >= self.length:
            return True
        if not data:
            raise HTTPError(f"connection closed after {len(self.buf)} of {self.length} body "
                            "bytes")
        return False

    def verdict(self) -> str | None:
        if self.status != 200:
            return f"HTTP {self.status}: {bytes(self.buf[:120])!r}"
        if self.buf != self.expected:
            return (f"body of {len(self.buf)} bytes differs from the expected "
                    f"{len(self.expected)}: {bytes(self.buf[:80])!r}")
        return None


def burst(host: str, port: int, targets: list[tuple[str, bytes]]) -> Callable[[], list[Fetch]]:
    """Sockets and requests for one connection per ``(path, expected body)`` of ``targets``;
    the returned function connects them all at once and reads every answer.

    An ``epoll`` loop, not asyncio: with asyncio tasks the clients spent about 150 us of CPU
    per connection, three times what nginx spends serving it, and since the clients share the
    two cores with the server, that time landed in every connection's latency; here it is a few
    socket calls per connection."""
    conns = [_Conn((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "User-Agent: pyinit-bench\r\nAccept: */*\r\n\r\n").encode(), expected)
             for path, expected in targets]

    def go() -> list[Fetch]:
        ep = select.epoll(len(conns) + 1)
        by_fd: dict[int, _Conn] = {}
        try:
            for c in conns:
                c.start = time.monotonic()
                rc = c.sock.connect_ex((host, port))
                if rc not in (0, errno.EINPROGRESS):
                    c.end, c.error = time.monotonic(), f"connect: {os.strerror(rc)}"
                    continue
                by_fd[c.sock.fileno()] = c
                ep.register(c.sock.fileno(), select.EPOLLOUT)
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while by_fd:
                events = ep.poll(max(0.0, deadline - time.monotonic()))
                if not events:
                    for c in by_fd.values():
                        c.end, c.error = time.monotonic(), "timed out"
                    break
                for fd, mask in events:
                    c = by_fd[fd]
                    try:
                        if c.length == -1 and not c.buf and mask & select.EPOLLOUT:
                            rc = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if rc:
                                raise OSError(rc, f"connect: {os.strerror(rc)}")
                            if c.sock.send(c.request) != len(c.request):
                                raise HTTPError("short send of the request")
                            ep.modify(fd, select.EPOLLIN)
                            continue
                        if not c.received(c.sock.recv(65536)):
                            continue
                        c.end = time.monotonic()
                        c.error = c.verdict()
                    except (OSError, HTTPError, ValueError) as exc:
                        c.end, c.error = time.monotonic(), f"{type(exc).__name__}: {exc}"
                    ep.unregister(fd)
                    del by_fd[fd]
        finally:
            ep.close()
            for c in conns:
                c.sock.close()
        return [Fetch(c.start, c.end, c.error) for c in conns]

    return go


# ---- events -------------------------------------------------------------------------------------

@dataclass
class Posted:
    """What one process's connections did: 204s per MAC, requests whose outcome is unknown (sent,
    no answer: the server may or may not have stored them), other answers, latencies."""

    start: float = 0.0
    end: float = 0.0
    acked: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    refused: Counter[int] = field(default_factory=Counter)  # status -> count
    errors: list[str] = field(default_factory=list)  # the first few, as text
    latencies: list[float] = field(default_factory=list)  # seconds, send to 204
    connects: int = 0

    def note(self, message: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(message)


def progress_event(n: int) -> bytes:
    """The ``n``-th progress event of a machine writing an 8 GB image, as pyinit.image sends it
    (``progress_fields``): about 150 bytes of JSON."""
    total = 8_000_000_000
    written = min(total, (n + 1) * 200_000_000 % total)
    elapsed = 1.0 + n
    frac = written / total
    return json.dumps({"step": "provision", "status": "progress", "bytes_written": written,
                       "bytes_downloaded": written // 3, "size": total,
                       "download_size": total // 3,
                       "percent": round(100 * frac, 1), "rate": round(written / elapsed),
                       "eta": round(elapsed * (1 - frac) / frac, 1) if frac else None},
                      separators=(", ", ": ")).encode()


async def _poster(loop: asyncio.AbstractEventLoop, addr: tuple[str, int], host: str,
                  machines: list[tuple[str, str]], deadline: float, out: Posted) -> None:
    """One keep-alive connection posting for ``machines`` (MAC, token) in turn until
    ``deadline``; reconnects when the server closes."""
    sock: socket.socket | None = None
    buf = bytearray()
    sent: Counter[str] = Counter()
    n = 0
    try:
        while time.monotonic() < deadline:
            mac, token = machines[n % len(machines)]
            n += 1
            body = progress_event(sent[mac])
            sent[mac] += 1
            request = (f"POST /events/{mac} HTTP/1.1\r\nHost: {host}\r\n"
                       f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    if sock is None:
                        sock, buf = _socket(), bytearray()
                        out.connects += 1
                        await loop.sock_connect(sock, addr)
                    t0 = time.monotonic()
                    await loop.sock_sendall(sock, request)
                    status, answer, keep = await read_response(loop, sock, buf)
                t1 = time.monotonic()
            except Exception as exc:
                out.unknown[mac] += 1
                out.note(f"{mac}: {type(exc).__name__}: {exc}")
                if sock is not None:
                    sock.close()
                sock = None
                await asyncio.sleep(0.05)
                continue
            if status == 204:
                out.acked[mac] += 1
                out.latencies.append(t1 - t0)
            else:
                out.refused[status] += 1
                out.note(f"{mac}: HTTP {status}: {answer[:120]!r}")
            if not keep:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


async def post_events(host: str, port: int, connections: list[list[tuple[str, str]]],
                      seconds: float) -> Posted:
    """One keep-alive connection per entry of ``connections`` (its machines: MAC and token),
    all posting until ``seconds`` from now."""
    loop = asyncio.get_running_loop()
    out = Posted(start=time.monotonic())
    deadline = out.start + seconds
    await asyncio.gather(*(_poster(loop, (host, port), f"{host}:{port}", machines, deadline,
                                   out) for machines in connections))
    out.end = time.monotonic()
    return out


# ---- the pool -----------------------------------------------------------------------------------

JOBS: dict[str, Callable[..., Any]] = {"burst": burst, "events": post_events}


def raise_nofile(want: int) -> None:
    """Raise this process's open-file limit to ``want`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def _worker(jobs: multiprocessing.connection.Connection,
            barrier: multiprocessing.synchronize.Barrier) -> None:
    """One client process: per job (kind, args), prepare it (a coroutine, or a function for the
    epoll burst), wait for the others, run it, send the result back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tears the pool down
    raise_nofile(4096)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while (job := jobs.recv()) is not None:
        kind, args = job
        try:
            prepared: Any = JOBS[kind](*args)
        except Exception as exc:
            barrier.wait(timeout=60)
            jobs.send(exc)
            continue
        try:
            barrier.wait(timeout=60)
        except Exception:
            if asyncio.iscoroutine(prepared):
                prepared.close()
            raise
        try:
            result: Any = (loop.run_until_complete(prepared) if asyncio.iscoroutine(prepared)
                           else prepared())
        except Exception as exc:  # reported to the parent, which fails the run
            result = exc
        jobs.send(result)
    loop.close()


class Pool:
    """``count`` client processes, forked once (while the parent is small) and reused."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.barrier = ctx.Barrier(count + 1)
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, self.barrier), daemon=True,
                               name=f"bench-client-{i}")
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(self, kind: str, args: list[tuple[Any, ...]]) -> tuple[float, list[Any]]:
        """Give process ``i`` the job ``(kind, args[i])``, release them together; the release
        time and their results. Raises what a process raised."""
        if len(args) != len(self.pipes):
            raise ValueError(f"{len(args)} jobs for {len(self.pipes)} processes")
        for pipe, a in zip(self.pipes, args, strict=True):
            pipe.send((kind, a))
        self.barrier.wait(timeout=60)
        released = time.monotonic()
        results = []
        for pipe in self.pipes:
            if not pipe.poll(RESULT_TIMEOUT):
                raise TimeoutError(f"a client process gave no result within "
                                   f"{RESULT_TIMEOUT:.0f} s")
            result = pipe.recv()
            if isinstance(result, Exception):
                raise result
            results.append(result)
        return released, results

    def cpu_seconds(self) -> float:
        """utime + stime of all client processes so far."""
        return cpu_all(self.pids)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
