"""Files under ``images/`` and ``boot/``: URL paths, the symlink policy, Range/ETag, sendfile.

A URL path is decoded once (:func:`decode_path`): percent-escapes to bytes, which must be UTF-8
(an overlong ``%c0%ae`` is refused, not read as a dot) and printable: no NUL, no C0 or C1
control characters (``ESC``, the 8-bit ``CSI``), no bidi or other format characters, no line
separators, so that a path can reach a log line as it is; then split on ``/`` and every ``..``
and backslash refused. Symlinks that the operator placed under the directory follow
:data:`SYMLINK_POLICIES`: ``inside`` (default) serves a link only when its target stays inside
the served directory; ``any`` follows every link, as nginx does by default
(``disable_symlinks off``). A loop (ELOOP) or a name too long for the file system is a 404 with
one line, never a traceback.

Range handling is RFC 9110's single range: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``; malformed
and multi-range headers are ignored (the whole file, 200), a range past the end is 416.
``If-Range`` (strong ETag or HTTP date), ``If-None-Match`` (304), ``ETag`` from inode, size and
mtime. The body goes out with ``sendfile`` in slices, each under the client timeout, so a reader
that stops reading is dropped instead of holding the connection forever.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

log = logging.getLogger("pyinit_server")

SYMLINK_POLICIES = ("inside", "any")
SENDFILE_SLICE = 8 << 20  # bytes per sendfile call: each must finish within the client timeout
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
    if not header or len(header) > 200:
        return None
    m = _RANGE_RE.match(header.strip().replace(" ", ""))
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if (not first and not last) or len(first) > 19 or len(last) > 19:
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


def etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _parse_http_date(text: str) -> int | None:
    try:
        dt = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        return int(dt.timestamp())
    except (OverflowError, ValueError, OSError):
        return None


def if_range_matches(if_range: str | None, tag: str, mtime: float) -> bool:
    """Whether a Range request's ``If-Range`` precondition holds (True when absent). Pure."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', 'W/"')):
        return value == tag  # strong comparison: a weak tag never matches
    when = _parse_http_date(value)
    return when is not None and when == int(mtime)


def decode_path(raw: str) -> str | None:
    """A raw (still percent-encoded) URL path as text, or None when it cannot name a file:
    not UTF-8 after decoding (overlong forms included), or not printable (``str.isprintable``:
    control, format and separator characters but the space). Pure."""
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.isprintable():
        return None
    return text


def relative_parts(rel: str) -> list[str] | None:
    """The components of a decoded path below the served directory, or None if it tries to
    leave it (``..``), names a hidden file (``.upload-*`` temporary files of uploads in flight
    among them) or names nothing. Pure."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") or "\\" in p for p in parts):  # "..", dotfiles
        return None
    return parts


class NotServed(Exception):
    """A path that is not served: ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def open_file(base: Path, rel: str, what: str, *, symlinks: str = "inside") -> BinaryIO:
    """Open ``base/rel`` (``rel`` decoded) for reading under the symlink policy.
    Raises :class:`NotServed`."""
    parts = relative_parts(rel)
    if parts is None:
        raise NotServed(403, f"path escapes {what}")
    path = base.joinpath(*parts)
    try:
        if symlinks == "inside":
            real = Path(os.path.realpath(path, strict=True))
            top = Path(os.path.realpath(base))
            if real != top and top not in real.parents:
                log.warning("%s%s: a symlink leads outside %s (to %s): not served "
                            "(pyinit serve --symlinks any follows it)", what, rel, what, real)
                raise NotServed(403, f"{what}{rel}: a symlink that leads outside {what}")
            path = real
        # O_NONBLOCK: opening a FIFO must not hang the server; cleared once it is a file
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except NotServed:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise NotServed(404, f"no such file: {what}{rel}") from None
    except (IsADirectoryError, PermissionError):
        raise NotServed(403, f"not a readable file: {what}{rel}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("%s%s: symlink loop", what, rel)
            raise NotServed(404, f"{what}{rel}: a symlink loop") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise NotServed(404, f"{what}: name too long") from None
        log.warning("%s%s: cannot open: %s", what, rel, exc.strerror or exc)
        raise NotServed(404, f"{what}{rel}: cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device, a directory
        os.close(fd)
        raise NotServed(403, f"not a regular file: {what}{rel}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


class FileBody(web.StreamResponse):
    """A file (or a slice of it) sent with ``loop.sendfile``, slice by slice under a timeout."""

    def __init__(self, f: BinaryIO, offset: int, count: int, *, status: int,
                 headers: dict[str, str], timeout: float) -> None:
        super().__init__(status=status, headers=headers)
        self._file = f
        self._offset = offset
        self._count = count
        self._timeout = timeout
        self.content_length = count
        self.sent = 0

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # aiohttp calls prepare() again after a handler that prepared
            return await super().prepare(request)
        writer = await super().prepare(request)
        if request.method == "HEAD" or self._count == 0:
            return writer
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection lost")
        loop = asyncio.get_running_loop()
        offset, left = self._offset, self._count
        while left:
            n = min(left, SENDFILE_SLICE)
            try:
                await asyncio.wait_for(loop.sendfile(transport, self._file, offset, n),
                                       self._timeout)
            except TimeoutError:
                log.warning("%s: client stalled: nothing read for %g s, connection dropped",
                            request.path, self._timeout)
                transport.abort()
                raise ConnectionResetError("client stalled") from None
            offset += n
            left -= n
            self.sent += n
        if writer is not None:
            await super().write_eof()
        return writer


def file_response(request: web.BaseRequest, f: BinaryIO, *, timeout: float) -> web.StreamResponse:
    """The response for an opened file: 200, 206, 304 or 416 by the request's headers."""
    st = os.fstat(f.fileno())
    size, tag = st.st_size, etag(st)
    headers = {"ETag": tag, "Last-Modified": http_date(st.st_mtime), "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
    if request.headers.get("If-None-Match") in (tag, "*"):
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    rng: ByteRange | None = None
    if if_range_matches(request.headers.get("If-Range"), tag, st.st_mtime):
        try:
            rng = parse_range(request.headers.get("Range"), size)
        except Unsatisfiable:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}",
                                                     "ETag": tag})
    if rng is None:
        return FileBody(f, 0, size, status=200, headers=headers, timeout=timeout)
    headers["Content-Range"] = f"bytes {rng.start}-{rng.end}/{size}"
    return FileBody(f, rng.start, rng.length, status=206, headers=headers, timeout=timeout)
