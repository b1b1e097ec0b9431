"""Uploads: names, bodies read under a deadline and a minimum rate, the commit with its sidecar.

An upload (``PUT /images/<name>``, or the ``BootyImage`` file of a multipart ``POST /image``)
goes to a temporary file ``images/.upload-<name>.<random>`` (never served: dotfiles are not)
while its SHA-256 is computed; only once the whole body arrived is it fsynced and renamed over
``<name>``, together with the sidecar ``<name>.sha256`` (``sha256sum`` format). A body cut off
midway (the client gone, a chunked body without its last chunk, a multipart body without its
closing boundary), larger than ``max_upload``, silent for ``idle_timeout`` or slower than
``min_rate`` over a ``rate_window`` leaves nothing behind. Temporary files left by a server that
was killed are removed at the next start (:func:`remove_stale`).

HTTP framing (Content-Length, chunked, their conflicts) is aiohttp's parser's job (llhttp, in C):
it refuses TE with CL, duplicate or non-digit lengths and bad chunk sizes with 400 before a
handler runs. Multipart bodies are read with aiohttp's streaming ``MultipartReader``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import (
    BadContentDispositionHeader,
    BadContentDispositionParam,
    BodyPartReader,
    MultipartReader,
    http_exceptions,
    web,
)

log = logging.getLogger("pyinit_server")

UPLOAD_FIELD = "BootyImage"
TEMP_PREFIX = ".upload-"
WRITE_BUFFER = 1 << 20  # bytes gathered before one write (in a worker thread)
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")

# aiohttp reports a multipart Content-Disposition it cannot parse with a warning that goes to
# stderr as it is, the client's bytes (escape sequences too) in it. Such a part has no name, so
# the upload is refused ("no BootyImage file", in the log); the warning adds only the bytes.
warnings.filterwarnings("ignore", category=BadContentDispositionHeader)
warnings.filterwarnings("ignore", category=BadContentDispositionParam)


@dataclass(frozen=True)
class Limits:
    max_upload: int
    idle_timeout: float  # seconds without a byte: cut off
    min_rate: int  # bytes/s, measured over each rate_window; 0: no minimum
    rate_window: float


class UploadError(Exception):
    """An upload that must be answered with ``status`` (and nothing stored)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class CutOff(UploadError):
    def __init__(self, message: str) -> None:
        super().__init__(400, f"upload cut off: {message}")


def _reason(exc: BaseException) -> str:
    """An aiohttp exception as one line: its message (``str()`` puts the status and a line
    break before it), every run of white space (line breaks among them) as one space."""
    text = str(getattr(exc, "message", "") or exc)
    return " ".join(text.split()) or type(exc).__name__


def upload_name(raw: str, *, basename: bool) -> str | None:
    """The file name to store an upload under, or None to refuse it. Pure.

    ``basename``: keep only the last path component (a multipart file name, which browsers and
    old clients send with a path); otherwise any ``/`` or ``\\`` refuses the name (a URL).
    The whole name must match (a trailing newline does not slip through).
    """
    if basename:
        raw = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if not _NAME_RE.fullmatch(raw) or raw.endswith(".sha256"):
        return None
    return raw


def check_framing(request: web.BaseRequest, limit: int) -> None:
    """Refuse what the parser lets through but we do not take: a transfer coding other than
    plain ``chunked``, a body without a length, a declared length beyond ``limit``."""
    encoding = request.headers.get("Transfer-Encoding")
    if encoding is not None and encoding.strip().lower() != "chunked":
        raise UploadError(501, f"Transfer-Encoding {encoding[:40]!r} is not supported "
                               "(only chunked)")
    if encoding is None and request.content_length is None:
        raise UploadError(411, "Content-Length or Transfer-Encoding: chunked required")
    if request.content_length is not None and request.content_length > limit:
        raise UploadError(413, f"body of {request.content_length} bytes is larger than {limit}")


async def pieces(stream: Any, limits: Limits) -> AsyncIterator[bytes]:
    """The body (``request.content`` or a multipart part) piece by piece, within the limits.

    Raises :class:`CutOff` when the client stops sending, is too slow or goes away, and
    ``UploadError(413)`` beyond ``max_upload`` (chunked bodies are counted as they arrive)."""
    total = 0
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            if isinstance(stream, BodyPartReader):
                data = await asyncio.wait_for(stream.read_chunk(1 << 16), limits.idle_timeout)
            else:
                data = await asyncio.wait_for(stream.readany(), limits.idle_timeout)
        except TimeoutError:
            raise CutOff(f"no data for {limits.idle_timeout:g} s") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise CutOff(f"connection lost: {exc}") from exc
        except Exception as exc:  # aiohttp's payload errors: a body shorter than announced
            if type(exc).__module__.startswith("aiohttp"):
                raise CutOff(_reason(exc)) from exc
            raise
        if not data:
            return
        total += len(data)
        if total > limits.max_upload:
            raise UploadError(413, f"body larger than {limits.max_upload} bytes")
        window_bytes += len(data)
        now = time.monotonic()
        if limits.min_rate and now - window_start >= limits.rate_window:
            rate = window_bytes / (now - window_start)
            if rate < limits.min_rate:
                raise CutOff(f"{rate:.0f} bytes/s over {now - window_start:.0f} s, below the "
                             f"minimum of {limits.min_rate} bytes/s")
            window_start, window_bytes = now, 0
        yield data


@dataclass
class Incoming:
    """An upload being written to a temporary file next to its final name."""

    tmp: Path
    size: int = 0
    sha256: str = ""

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def receive(images: Path, name: str, data: AsyncIterator[bytes]) -> Incoming:
    """Write ``data`` to a temporary file beside ``images/name``; the file's record once all
    of it is on disk (fsynced). Disk writes run in worker threads, never in the event loop.

    A cancelled upload (client gone, server stopping) may leave a write running in its thread:
    the descriptor is closed only after that write returned, never under it (a reused
    descriptor number would take the rest of the write into another file)."""
    loop = asyncio.get_running_loop()
    images.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}.", dir=images)
    incoming = Incoming(Path(tmp))
    running: concurrent.futures.Future[None] | None = None
    executor = _executor()

    async def in_thread(fn: Callable[..., None], *args: Any) -> None:
        nonlocal running
        running = executor.submit(fn, *args)
        await asyncio.wrap_future(running, loop=loop)

    try:
        os.fchmod(fd, 0o644)
        sha = hashlib.sha256()
        buf: list[bytes] = []
        held = 0
        async for piece in data:
            sha.update(piece)
            buf.append(piece)
            held += len(piece)
            incoming.size += len(piece)
            if held >= WRITE_BUFFER:
                await in_thread(_write_all, fd, b"".join(buf))
                buf, held = [], 0
        if buf:
            await in_thread(_write_all, fd, b"".join(buf))
        await in_thread(os.fsync, fd)
        incoming.sha256 = sha.hexdigest()
    except BaseException:
        incoming.discard()
        raise
    finally:
        if running is not None and not running.done():
            running.add_done_callback(lambda _: os.close(fd))
        else:
            os.close(fd)
    return incoming


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads uploads write in (their own: a slow disk never starves the store's reads)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="upload-io")
    return _EXECUTOR


async def multipart_file(request: web.BaseRequest, limits: Limits,
                         ) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
    """The ``BootyImage`` file of a multipart body: yields once ``(raw file name, data)``; other
    fields and further files are read and ignored. Raises UploadError."""
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:  # not multipart, no boundary
        raise UploadError(400, "expected Content-Type: multipart/form-data; boundary=...") \
            from exc
    found = False
    while True:
        try:
            part = await asyncio.wait_for(reader.next(), limits.idle_timeout)
        except TimeoutError:
            raise CutOff(f"no data for {limits.idle_timeout:g} s") from None
        except ValueError as exc:
            raise UploadError(400, f"malformed multipart body: {exc}") from exc
        except Exception as exc:
            if not type(exc).__module__.startswith("aiohttp"):
                raise
            if isinstance(exc, http_exceptions.BadHttpMessage) and not isinstance(
                    exc, http_exceptions.PayloadEncodingError):  # a part's headers
                raise UploadError(400, f"malformed multipart body: {_reason(exc)}") from exc
            raise CutOff(_reason(exc)) from exc
        if part is None:
            break
        if isinstance(part, MultipartReader):  # nested multipart: skip it whole
            async for _ in pieces(part, limits):
                pass
            continue
        if part.name == UPLOAD_FIELD and not found:
            found = True
            yield part.filename or "", pieces(part, limits)
        async for _ in pieces(part, limits):  # what the consumer left, other fields
            pass
    if not found:
        raise UploadError(400, f"no {UPLOAD_FIELD} file in the multipart body")


class Committer:
    """Renames complete uploads (and their sidecars) into place; the last commit wins."""

    def __init__(self, images: Path) -> None:
        self.images = images
        self._lock = threading.Lock()

    def commit(self, name: str, incoming: Incoming) -> dict[str, Any]:
        """Blocking (fsyncs): run it in a worker thread."""
        images = self.images
        record = {"name": name, "size": incoming.size, "sha256": incoming.sha256}
        side_fd, side_tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{name}.sha256.", dir=images)
        try:
            os.fchmod(side_fd, 0o644)
            _write_all(side_fd, f"{incoming.sha256}  {name}\n".encode())
            os.fsync(side_fd)
        except BaseException:
            os.unlink(side_tmp)
            raise
        finally:
            os.close(side_fd)
        with self._lock:  # the image and its sidecar change together
            try:
                os.replace(incoming.tmp, images / name)
            except BaseException:
                os.unlink(side_tmp)
                raise
            os.replace(side_tmp, images / f"{name}.sha256")
        dir_fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        log.info("upload %s: %d bytes, sha256 %s", name, incoming.size, incoming.sha256)
        return record


def remove_stale(images: Path) -> int:
    """Remove the temporary files of uploads that a stopped or killed server left behind."""
    removed = 0
    try:
        names = os.listdir(images)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for name in names:
        if name.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(images / name)
                removed += 1
    if removed:
        log.warning("removed %d unfinished upload(s) left in %s by an earlier run", removed,
                    images)
    return removed
