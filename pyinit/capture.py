"""readImage: read a block device, compress it and upload it as a stream.

What is read
    With a partition table (MBR incl. extended/logical, or GPT), the device up to the end of its
    last partition; without one (or with one that cannot be read), the whole device. For a GPT
    this deliberately leaves out the backup header and entry array in the last 33 sectors: the
    image then ends where the data ends, and the writer (issue #5) rebuilds the backup header at
    the end of whatever disk it writes to, as it must anyway when the target disk is larger.
    A device mounted read-write (itself, a partition, or a device-mapper/md device on top) or
    used as swap is refused; read-only mounts are fine. The device is opened read-only.

How
    A reader thread keeps ``READ_AHEAD`` reads of 8 MiB in flight (a small pool ``pread``\\ s
    them; a block device with ``O_DIRECT``, page-aligned, so the disk sees a queue of large
    reads and the page cache is left alone; buffered where the device refuses ``O_DIRECT``)
    and hashes the raw data in disk order, a compressor thread
    runs zstd (level 3, multi-threaded, frame checksum) or gzip (zlib level 6), and the calling
    thread hands the compressed pieces to requests as a generator body (chunked transfer) while
    hashing them. Bounded queues keep memory bounded (a few times 8 MiB plus zstd's buffers).
    A regular file (``python -m pyinit.capture --allow-file`` on a host) has its holes found
    with ``SEEK_DATA``/``SEEK_HOLE`` and produced as zeros without reading them; a block
    device is read whole (a disk has no holes to ask for). Without compression
    the size is known in advance and the body is sent with a ``Content-Length``.

Where to
    ``multipart`` (BOOTy-compatible): ``POST`` ``multipart/form-data`` with the field
    ``BootyImage`` and the file name ``<mac>.img`` (none), ``<mac>.zmg`` (gzip, BOOTy's name) or
    ``<mac>.img.zst`` (zstd). ``put``: a plain ``PUT`` of the compressed bytes to the URL as given
    (object stores, presigned URLs). BOOTy ignores the answer; pyinit requires a 2xx and, when the
    server answers JSON with ``sha256``/``size`` (pyinit's server does), checks them. With a
    ``token`` (``pyinit.token=``; the init passes it only when the upload goes to the server the
    action came from) the request carries ``Authorization: Bearer <token>``; a 401/403 fails at
    once.

Retries
    A capture can be read again from the disk, so a retryable failure (connection refused or
    lost, timeout, HTTP 408/429/502/503/504) restarts the whole capture, at most
    ``UPLOAD_ATTEMPTS`` times with backoff. Any other status (a 500 from a server whose disk is
    full, a 4xx) and disk errors fail at once: sending the disk again would not help.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

import requests
import zstandard

from pyinit import macaddr, parttable, syscalls
from pyinit.channel import END, Aborted, Channel, End
from pyinit.disks.usage import Usage, check_device
from pyinit.errors import ConfigError, DiskError, FetchError, ImageError, PyinitError
from pyinit.fetch import USER_AGENT, auth_headers, backoff, tls_failure
from pyinit.log import event, get_logger
from pyinit.sysfs import read_attr

log = get_logger("pyinit.capture")

Method = Literal["multipart", "put"]
Compression = Literal["zstd", "gzip", "none"]

CHUNK = 8 << 20               # one read, one queue item
OUT_CHUNK = 1 << 20           # compressed output is coalesced to this before it is sent
QUEUE_DEPTH = 4               # items per queue: memory stays at a few CHUNKs
# what the reader hands on: bytes, or a view of a page-aligned O_DIRECT buffer
Chunk = bytes | memoryview
READ_AHEAD = 4                # CHUNK reads in flight: a queue for the disk (measured: 1 -> 4
                              # in flight took a 2 GiB O_DIRECT read from 2.8 s to 2.0 s)
DIRECT_BUFFERS = READ_AHEAD + QUEUE_DEPTH + 2  # in flight, queued, hashed, compressed
MIN_HOLE = 1 << 20            # smaller holes are read rather than skipped
ZSTD_LEVEL = 3
ZSTD_MAX_THREADS = 8          # more workers only cost memory: the network is the limit by then
GZIP_LEVEL = 6
UPLOAD_ATTEMPTS = 3
RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
TIMEOUT = (60.0, 3600.0)      # (connect and each send, waiting for the answer: the server fsyncs)
FIELD = "BootyImage"
SUFFIX = {"none": ".img", "gzip": ".zmg", "zstd": ".img.zst"}
CONTENT_TYPE = {"none": "application/octet-stream", "gzip": "application/gzip",
                "zstd": "application/zstd"}


@dataclass(frozen=True)
class CaptureResult:
    device: str
    url: str
    method: str
    compression: str
    bytes_read: int
    bytes_sent: int       # the uploaded file's size (without multipart framing)
    sha256_raw: str       # of the bytes read from the device
    sha256_sent: str      # of the uploaded file (compressed bytes)
    seconds: float
    filename: str | None  # the multipart file name; None for PUT
    direct_io: bool = False  # every read went O_DIRECT (a block device that allows it)


# -- pure helpers -----------------------------------------------------------------------------


def upload_filename(mac: str, compression: Compression) -> str:
    return macaddr.dashes(mac) + SUFFIX[compression]


def multipart_head(boundary: str, filename: str, field: str = FIELD,
                   content_type: str = "application/octet-stream") -> bytes:
    """Everything before the file's bytes: one part, as Go's ``CreateFormFile`` writes it."""
    def quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{quote(field)}"; '
            f'filename="{quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()


def multipart_tail(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode()


def multipart_body(chunks: Iterable[Chunk], *, boundary: str, filename: str,
                   field: str = FIELD) -> Iterator[Chunk]:
    """A ``multipart/form-data`` body with one file part, streamed from ``chunks``."""
    yield multipart_head(boundary, filename, field)
    yield from chunks
    yield multipart_tail(boundary)


@dataclass(frozen=True)
class ReadRange:
    length: int
    reason: str


def decide_range(device_size: int, table: parttable.PartitionTable | None,
                 problem: str | None = None) -> ReadRange:
    """How much of a device to capture. Pure.

    Up to the end of the last partition when there is a usable table that fits the device;
    the whole device when there is no table, an empty one, an unreadable one (``problem``),
    or one whose partitions reach past the end of the device.
    """
    if problem is not None:
        return ReadRange(device_size, f"whole device: {problem}")
    if table is None:
        return ReadRange(device_size, "whole device: no partition table")
    end = table.end_of_last_partition
    count = len(table.partitions)
    if count == 0:
        return ReadRange(device_size, f"whole device: the {table.kind} table has no partitions")
    if end > device_size:
        return ReadRange(device_size, f"whole device: the {table.kind} table's partitions end "
                                      f"at {end}, past the device's end at {device_size}")
    return ReadRange(end, f"end of the last partition ({table.kind}, {count} partitions)")


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    data: bool  # False: a hole, produced as zeros without reading


def plan_reads(length: int, extents: Iterable[tuple[int, int]], *, chunk: int = CHUNK,
               min_hole: int = MIN_HOLE) -> Iterator[Segment]:
    """Cut ``[0, length)`` into reads of at most ``chunk`` bytes. Pure.

    ``extents`` are the (start, end) byte ranges that hold data, ascending (the rest reads as
    zeros). Holes shorter than ``min_hole`` are read like data: that costs less than the extra
    round trips.
    """
    def pieces(start: int, end: int, data: bool) -> Iterator[Segment]:
        while start < end:
            n = min(chunk, end - start)
            yield Segment(start, n, data)
            start += n

    pos = 0
    for start, end in _coalesce(length, extents, min_hole):
        yield from pieces(pos, start, False)
        yield from pieces(start, end, True)
        pos = end
    yield from pieces(pos, length, False)


def _coalesce(length: int, extents: Iterable[tuple[int, int]],
              min_hole: int) -> Iterator[tuple[int, int]]:
    """Clip the extents to [0, length) and merge those separated by less than ``min_hole``."""
    cur: tuple[int, int] | None = None
    for start, end in extents:
        start, end = max(start, 0, cur[1] if cur else 0), min(end, length)
        if end <= start:
            continue
        if cur is None:
            cur = (0 if start < min_hole else start, end)
        elif start - cur[1] < min_hole:
            cur = (cur[0], end)
        else:
            yield cur
            cur = (start, end)
    if cur is not None:
        yield (cur[0], length if length - cur[1] < min_hole else cur[1])


# -- the source -------------------------------------------------------------------------------


def source_conflict(usage: Usage) -> str | None:
    """Why a disk with ``usage`` may not be captured (a read-write mount or swap on it, a
    partition of it or a device stacked on those; read-only mounts are fine), or None. Pure."""
    for use in usage.conflicts("read")[:1]:
        what = (f"{use.device} is mounted read-write on {use.where}" if use.kind == "mount"
                else use.sentence)
        return f"{what}; unmount it (or mount it read-only) before capturing"
    return None


def check_source(device: str, *, allow_regular_file: bool = False, proc: Path = Path("/proc"),
                 sysfs: Path = Path("/sys")) -> bool:
    """Refuse a missing device, a non-block device and one that is written to while we read
    (:func:`pyinit.disks.usage.check_device`). Returns True for a block device, False for an
    (allowed) regular file."""
    return check_device(device, source_conflict, allow_regular_file=allow_regular_file,
                        proc=proc, sysfs=sysfs)


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of ``fd`` within [start, end) that hold data, by
    ``SEEK_DATA``/``SEEK_HOLE``; the whole range when the file system cannot tell."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            yield pos, end  # EINVAL: not supported here
            return
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        yield data, min(hole, end)
        pos = hole


# -- the pipeline -----------------------------------------------------------------------------


class DirectReads:
    """``O_DIRECT`` reads of a block device into page-aligned buffers (anonymous mmaps): no copy
    through the page cache, and a disk that serves several large reads at once. Only offsets
    and lengths that are multiples of the logical block size go this way."""

    def __init__(self, fd: int, block: int) -> None:
        self.fd = fd
        self.block = block

    @classmethod
    def open(cls, device: str, block: int) -> DirectReads | None:
        """None where the device refuses ``O_DIRECT`` (the buffered reads then do)."""
        try:
            return cls(os.open(device, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT), block)
        except OSError as exc:
            log.debug(f"capture: {device}: no O_DIRECT ({exc.strerror}); reading buffered")
            return None

    def close(self) -> None:
        os.close(self.fd)

    def fits(self, length: int, offset: int) -> bool:
        return length % self.block == 0 and offset % self.block == 0

    def read(self, device: str, length: int, offset: int,
             into: mmap.mmap | None = None) -> memoryview:
        """The bytes as a view of ``into`` (a buffer of at least ``length``), or of a fresh
        buffer (unmapped once the last user drops it)."""
        view = memoryview(into if into is not None else mmap.mmap(-1, length))[:length]
        read_fully(self.fd, view, offset, device)
        return view


def read_fully(fd: int, view: memoryview, offset: int, device: str) -> None:
    """Fill ``view`` from ``offset``: short reads are legal, the end of the device is not;
    both failures one :class:`DiskError` line naming the offset."""
    got = 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise DiskError(device, f"unexpected end of device at offset {offset + got}")
            got += n
    except OSError as exc:
        raise DiskError(device, f"read error at offset {offset + got}: "
                                f"{exc.strerror}") from exc


class _Compressor(Protocol):
    def compress(self, data: Chunk, /) -> bytes: ...
    def flush(self) -> bytes: ...


def zstd_threads() -> int:
    return max(1, min(os.cpu_count() or 1, ZSTD_MAX_THREADS))


def make_compressor(compression: Compression) -> _Compressor:
    if compression == "zstd":
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=zstd_threads(),
                                        write_checksum=True)
        return cctx.compressobj()
    if compression == "gzip":
        return zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    raise ValueError(compression)


class _Progress:
    def __init__(self, total: int, clock: Callable[[], float], interval: float = 1.0) -> None:
        self.total = total
        self.clock = clock
        self.interval = interval
        self.start = self.last = clock()

    def update(self, read: int, sent: int, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        rate = read / max(now - self.start, 1e-6)
        pct = 100 * read / self.total if self.total else 100.0
        log.info(f"capture: {read / 1e6:.1f} MB read ({pct:.0f}%), {sent / 1e6:.1f} MB sent, "
                 f"{rate / 1e6:.1f} MB/s")
        event("capture", "progress", bytes_read=read, bytes_sent=sent, total=self.total,
              rate=round(rate))


class _Pipeline:
    """reader thread -> raw queue -> compressor thread -> out queue -> :meth:`chunks`."""

    def __init__(self, fd: int, device: str, segments: Iterable[Segment],
                 compression: Compression, progress: _Progress, *,
                 direct: DirectReads | None = None) -> None:
        self.fd = fd
        self.direct = direct
        self.device = device
        self.segments = segments
        self.compression = compression
        self.progress = progress
        self.stop = threading.Event()
        self.raw_q: Channel[Chunk | End] = Channel(QUEUE_DEPTH, self.stop)
        self.out_q: Channel[Chunk | End] = (self.raw_q if compression == "none"
                                            else Channel(QUEUE_DEPTH, self.stop))
        self.sha_raw = hashlib.sha256()
        self.sha_sent = hashlib.sha256()
        self.bytes_read = 0
        self.bytes_sent = 0
        self.buffered_reads = 0  # data reads that could not go O_DIRECT
        # The O_DIRECT buffers, reused: the compressor hands each back once it has taken the
        # bytes in (faulting in a fresh buffer per read cost ~1 s of CPU per 2 GiB). Enough for
        # every place one can be: in flight, queued, being hashed, being compressed. Without
        # compression the chunks go to the upload as they are: fresh buffers then.
        self.buffers: Channel[mmap.mmap] | None = None
        if direct is not None and compression != "none":
            # the reader waits for a buffer holding at most READ_AHEAD - 1 unfinished reads:
            # at least READ_AHEAD buffers, or it would wait for itself
            assert DIRECT_BUFFERS >= READ_AHEAD
            self.buffers = Channel(0, self.stop)
            for _ in range(DIRECT_BUFFERS):
                self.buffers.put_nowait(mmap.mmap(-1, CHUNK))
        self.finished = False
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._read, name="capture-read", daemon=True)]
        if compression != "none":
            self.threads.append(threading.Thread(target=self._compress, name="capture-compress",
                                                 daemon=True))

    def __enter__(self) -> _Pipeline:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()  # a thread blocked in put or get gives up (Aborted)
        for t in self.threads:
            t.join()

    def _pread(self, length: int, offset: int) -> Chunk:
        """A read through the page cache (a regular file, or a device without O_DIRECT)."""
        view = memoryview(bytearray(length))
        read_fully(self.fd, view, offset, self.device)
        return view

    def _reads(self) -> Iterator[Chunk]:
        """Every segment's bytes in disk order: data read ``READ_AHEAD`` at a time by a pool,
        holes as zeros."""
        zeros = b""
        window: deque[Future[Chunk] | int] = deque()
        pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="capture-pread")

        def take() -> Chunk:
            nonlocal zeros
            item = window.popleft()
            if not isinstance(item, int):
                return item.result()
            if len(zeros) < item:
                zeros = bytes(CHUNK)
            return zeros if item == len(zeros) else zeros[:item]

        try:
            for seg in self.segments:
                if not seg.data:
                    window.append(seg.length)
                elif self.direct is not None and self.direct.fits(seg.length, seg.offset):
                    # the buffer is taken here, in disk order: the oldest read always has one
                    into = self.buffers.get() if self.buffers is not None else None
                    window.append(pool.submit(self.direct.read, self.device, seg.length,
                                              seg.offset, into))
                else:
                    self.buffered_reads += 1
                    window.append(pool.submit(self._pread, seg.length, seg.offset))
                if len(window) >= READ_AHEAD:
                    yield take()
            while window:
                yield take()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read(self) -> None:
        try:
            for data in self._reads():
                if self.stop.is_set():
                    return
                self.sha_raw.update(data)  # releases the GIL: overlaps with the compressor
                self.bytes_read += len(data)
                self.raw_q.put(data)
            self.raw_q.put(END)
        except Aborted:
            return
        except BaseException as exc:  # handed to the consumer
            self.raw_q.fail(exc)

    def _compress(self) -> None:
        try:
            comp = make_compressor(self.compression)
            pending = bytearray()
            while (item := self.raw_q.get()) is not END:
                pending += comp.compress(item)  # zstd and zlib copy in what they keep
                if self.buffers is not None and isinstance(item, memoryview):
                    self.buffers.put_nowait(item.obj)  # type: ignore[arg-type]
                if len(pending) >= OUT_CHUNK:
                    self.out_q.put(bytes(pending))
                    pending.clear()
            pending += comp.flush()
            if pending:
                self.out_q.put(bytes(pending))
            self.out_q.put(END)
        except Aborted:
            return
        except BaseException as exc:  # the reader's failure, or the compressor's
            self.out_q.fail(exc)

    def chunks(self) -> Iterator[Chunk]:
        """The bytes to upload; raises what failed in the reader or compressor."""
        hashing = self.compression != "none"
        while True:
            try:
                item = self.out_q.get()
            except Aborted:  # stopped: never end the body normally, or it would look complete
                raise RuntimeError("capture pipeline stopped before the end of the data") from None
            except BaseException as exc:
                self.error = exc
                raise
            if item is END:
                self.finished = True
                self.progress.update(self.bytes_read, self.bytes_sent, force=True)
                return
            if hashing:
                self.sha_sent.update(item)
            self.bytes_sent += len(item)
            self.progress.update(self.bytes_read, self.bytes_sent)
            yield item

    @property
    def sha256_sent(self) -> str:
        return (self.sha_sent if self.compression != "none" else self.sha_raw).hexdigest()


class _SizedBody:
    """An iterable with a length: requests then sends ``Content-Length`` instead of chunks."""

    def __init__(self, chunks: Iterable[Chunk], length: int) -> None:
        self._chunks = chunks
        self._length = length

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self._chunks)

    def __len__(self) -> int:
        return self._length


# -- upload -----------------------------------------------------------------------------------


def _check_answer(url: str, resp: requests.Response, sha256: str, size: int) -> None:
    if not 200 <= resp.status_code < 300:
        detail = ""
        try:
            body = resp.json()
            if isinstance(body, dict) and body.get("error"):
                detail = f": {str(body['error'])[:200]}"
        except ValueError:
            text = resp.text.strip()
            detail = f": {text.splitlines()[0][:200]}" if text else ""
        raise FetchError(url, f"upload rejected: HTTP {resp.status_code} {resp.reason}{detail}",
                         retryable=resp.status_code in RETRYABLE_STATUS,
                         status=resp.status_code)
    try:
        body = resp.json()
    except ValueError:
        return  # BOOTy's server (plunder) answers plain text
    if not isinstance(body, dict):
        return
    if isinstance(body.get("sha256"), str) and body["sha256"] != sha256:
        raise ImageError(url, f"the server stored sha256 {body['sha256']}, pyinit sent {sha256}")
    if isinstance(body.get("size"), int) and body["size"] != size:
        raise ImageError(url, f"the server stored {body['size']} bytes, pyinit sent {size}")


def _capture_once(device: str, url: str, *, fd: int, segments: Iterable[Segment], length: int,
                  mac: str, method: Method, compression: Compression,
                  session: requests.Session, timeout: tuple[float, float],
                  clock: Callable[[], float], token: str | None = None,
                  direct: DirectReads | None = None) -> CaptureResult:
    start = clock()
    progress = _Progress(length, clock)
    with _Pipeline(fd, device, segments, compression, progress, direct=direct) as pipe:
        headers = {"User-Agent": USER_AGENT, **auth_headers(token)}
        filename: str | None = None
        body: Iterable[Chunk]
        if method == "multipart":
            filename = upload_filename(mac, compression)
            boundary = uuid.uuid4().hex
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            body = multipart_body(pipe.chunks(), boundary=boundary, filename=filename)
            overhead = len(multipart_head(boundary, filename)) + len(multipart_tail(boundary))
        else:
            headers["Content-Type"] = CONTENT_TYPE[compression]
            body = pipe.chunks()
            overhead = 0
        if compression == "none":
            body = _SizedBody(body, length + overhead)
        try:
            # urllib3 sends any bytes-like chunk (the O_DIRECT buffers are memoryviews)
            resp = session.request("POST" if method == "multipart" else "PUT", url,
                                   data=cast("Iterable[bytes]", body),
                                   headers=headers, timeout=timeout)
        except requests.exceptions.SSLError as exc:  # before ConnectionError: a subclass
            # A certificate that does not verify will not on the next try: fatal, one line
            # naming the reason and what was trusted (a server closing the handshake is
            # transient: fetch.tls_failure keeps it retryable).
            if pipe.error is not None:
                raise pipe.error from exc
            raise tls_failure(url, exc, session.verify) from exc
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            if pipe.error is not None:
                raise pipe.error from exc
            raise FetchError(url, f"upload failed: {type(exc).__name__}: {_root(exc)}",
                             retryable=True) from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise FetchError(url, f"invalid URL: {exc}") from exc
        except requests.RequestException as exc:  # e.g. too many redirects
            if pipe.error is not None:
                raise pipe.error from exc
            raise FetchError(url, f"upload failed: {type(exc).__name__}: {exc}") from exc
        if pipe.error is not None:
            raise pipe.error
        with resp:
            _check_answer(url, resp, pipe.sha256_sent, pipe.bytes_sent)
        if not pipe.finished:
            raise FetchError(url, f"the server answered HTTP {resp.status_code} before the "
                                  f"upload was complete ({pipe.bytes_sent} bytes sent)")
        return CaptureResult(device=device, url=url, method=method, compression=compression,
                             bytes_read=pipe.bytes_read, bytes_sent=pipe.bytes_sent,
                             sha256_raw=pipe.sha_raw.hexdigest(), sha256_sent=pipe.sha256_sent,
                             seconds=round(clock() - start, 3), filename=filename,
                             direct_io=direct is not None and pipe.buffered_reads == 0)


def _root(exc: BaseException) -> str:
    """The innermost cause's message: requests wraps urllib3's error, which wraps the socket's."""
    seen: set[int] = set()
    cur = exc
    while id(cur) not in seen:
        seen.add(id(cur))
        nxt = getattr(cur, "reason", None)
        if not isinstance(nxt, BaseException):
            nxt = next((a for a in cur.args if isinstance(a, BaseException)), None)
        nxt = nxt or cur.__cause__ or cur.__context__
        if nxt is None:
            break
        cur = nxt
    if isinstance(cur, OSError) and cur.strerror:
        return cur.strerror
    return str(cur)[:200] or type(cur).__name__


def capture_image(device: str, url: str, *, mac: str, method: Method = "multipart",
                  compression: Compression = "zstd", session: requests.Session,
                  allow_regular_file: bool = False, attempts: int = UPLOAD_ATTEMPTS,
                  timeout: tuple[float, float] = TIMEOUT,
                  proc: Path = Path("/proc"), sysfs: Path = Path("/sys"),
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep,
                  token: str | None = None) -> CaptureResult:
    """Capture ``device`` to ``url``; see the module docstring for what, how and retries."""
    if method not in ("multipart", "put"):
        raise ConfigError("uploadMethod", f"{method!r} is not one of multipart, put")
    if compression not in SUFFIX:
        raise ConfigError("compression", f"{compression!r} is not one of zstd, gzip, none")
    mac = macaddr.dashes(mac)
    is_block = check_source(device, allow_regular_file=allow_regular_file,
                            proc=proc, sysfs=sysfs)
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(device, f"cannot open read-only: {exc.strerror}") from exc
    try:
        return _capture_fd(device, url, fd, is_block, mac=mac, method=method,
                           compression=compression, session=session, attempts=attempts,
                           timeout=timeout, clock=clock, sleep=sleep, token=token)
    finally:
        os.close(fd)


def _capture_fd(device: str, url: str, fd: int, is_block: bool, *, mac: str, method: Method,
                compression: Compression, session: requests.Session, attempts: int,
                timeout: tuple[float, float], clock: Callable[[], float],
                sleep: Callable[[float], None], token: str | None = None) -> CaptureResult:
    if is_block:
        size, sector = syscalls.blk_size_bytes(fd), syscalls.blk_sector_size(fd)
    else:
        size, sector = os.fstat(fd).st_size, 512
    table: parttable.PartitionTable | None = None
    problem = None
    try:
        table = parttable.parse(parttable.reader_from_fd(fd), sector_size=sector, disk_size=size)
    except parttable.PartitionTableError as exc:
        problem = str(exc)
    except OSError as exc:
        raise DiskError(device, f"cannot read the partition table: {exc.strerror}") from exc
    rng = decide_range(size, table, problem)
    for note in (table.problems if table else (problem,) if problem else ()):
        log.warning(f"capture: {device}: {note}")
    log.info(f"capture: {device}: reading {rng.length} of {size} bytes ({rng.reason}), "
             f"{compression}, {method} to {url}")
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # for reads O_DIRECT cannot do
    direct = DirectReads.open(device, sector) if is_block else None
    try:
        return _capture_attempts(device, url, fd, is_block, rng.length, mac=mac, method=method,
                                 compression=compression, session=session, attempts=attempts,
                                 timeout=timeout, clock=clock, sleep=sleep, token=token,
                                 direct=direct)
    finally:
        if direct is not None:
            direct.close()


def _capture_attempts(device: str, url: str, fd: int, is_block: bool, length: int, *, mac: str,
                      method: Method, compression: Compression, session: requests.Session,
                      attempts: int, timeout: tuple[float, float], clock: Callable[[], float],
                      sleep: Callable[[float], None], token: str | None,
                      direct: DirectReads | None) -> CaptureResult:
    """The capture, again from the start after a retryable upload failure."""
    delays = backoff(initial=1.0, cap=30.0)
    for attempt in range(1, attempts + 1):
        # a regular file's holes are produced as zeros unread; a disk has none to ask for
        extents = [(0, length)] if is_block else data_extents(fd, 0, length)
        segments = plan_reads(length, extents)
        try:
            return _capture_once(device, url, fd=fd, segments=segments, length=length,
                                 mac=mac, method=method, compression=compression,
                                 session=session, timeout=timeout, clock=clock,
                                 token=token, direct=direct)
        except FetchError as exc:
            if not exc.retryable or attempt == attempts:
                if exc.retryable:
                    raise FetchError(url, f"{exc.reason} (gave up after {attempt} "
                                          "attempts)", status=exc.status) from exc
                raise
            delay = next(delays)
            log.warning(f"capture: {exc.reason}; capturing again in {delay:.1f} s "
                        f"(attempt {attempt + 1} of {attempts})")
            sleep(delay)
    raise AssertionError("unreachable")


# -- command line -----------------------------------------------------------------------------


def default_mac(sysfs: Path = Path("/sys")) -> str:
    """The first network interface's MAC (sorted by name, loopback and zeros skipped)."""
    try:
        names = sorted(p.name for p in (sysfs / "class" / "net").iterdir())
    except OSError:
        names = []
    for name in names:
        addr = read_attr(sysfs / "class" / "net" / name / "address") or ""
        if name != "lo" and re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", addr) and \
                addr != "00:00:00:00:00:00":
            return addr.replace(":", "-")
    return "00-00-00-00-00-00"


def main(argv: list[str] | None = None) -> int:
    from pyinit import log as pyinit_log

    p = argparse.ArgumentParser(
        prog="python -m pyinit.capture",
        description="Capture DEVICE (up to the end of its last partition) to URL and print the "
                    "result as one JSON line. Progress goes to stderr.")
    p.add_argument("device")
    p.add_argument("url")
    p.add_argument("--mac", default=None,
                   help="MAC for the multipart file name (default: the first NIC's)")
    p.add_argument("--method", choices=("multipart", "put"), default="multipart")
    p.add_argument("--compression", choices=("zstd", "gzip", "none"), default="zstd")
    p.add_argument("--token", default=os.environ.get("PYINIT_TOKEN"),
                   help="send 'Authorization: Bearer TOKEN' (default: $PYINIT_TOKEN)")
    p.add_argument("--allow-file", action="store_true",
                   help="accept a regular file as DEVICE (tests, benchmarks)")
    args = p.parse_args(argv)
    pyinit_log.configure(console=sys.stderr)
    try:
        with requests.Session() as session:
            result = capture_image(args.device, args.url, mac=args.mac or default_mac(),
                                   method=args.method, compression=args.compression,
                                   session=session, allow_regular_file=args.allow_file,
                                   token=args.token)
    except PyinitError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

