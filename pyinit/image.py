"""writeImage: stream an image over HTTP, decompress, write it to a block device. Correct first.

Safety, in order: the destination must be an existing block device (BOOTy's O_CREATE bug writes
into RAM when it is not), not mounted, opened exclusively. The first MiB (partition table, boot
code) is held back and written last, after the whole stream decoded cleanly; on any failure
after writing began, the primary and backup partition-table areas are wiped so the machine never
boots a half-written image. Formats are recognised by magic bytes (raw, gzip, zstd); a truncated
stream or trailing garbage is an error.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
import zstandard

from pyinit import syscalls
from pyinit.errors import DiskError, FetchError, ImageError
from pyinit.log import event, get_logger

log = get_logger("pyinit.image")

CHUNK = 4 << 20
HEAD = 1 << 20  # held back and written last
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sniff(head: bytes) -> str:
    """Compression by magic bytes: ``gzip``, ``zstd`` or ``raw``. Pure."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "raw"


class Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class RawDecoder:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class FramedDecoder:
    """A stream of one or more concatenated gzip members or zstd frames. Corruption, a truncated
    last member and trailing bytes that start no new member are errors, never success."""

    def __init__(self, url: str, name: str, magic: bytes,
                 new: Callable[[], Any]) -> None:
        self.url = url
        self.name = name
        self.magic = magic
        self._new = new
        self._d = new()

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            try:
                out.append(self._d.decompress(data))
            except (zlib.error, zstandard.ZstdError) as exc:
                raise ImageError(self.url, f"corrupt {self.name} stream: {exc}") from exc
            if not self._d.eof:
                break
            rest = self._d.unused_data
            if not rest:
                break
            if not rest.startswith(self.magic):
                raise ImageError(self.url, f"trailing garbage after {self.name} stream "
                                 f"({len(rest)} bytes or more)")
            self._d = self._new()
            data = rest
        return b"".join(out)

    def finish(self) -> bytes:
        tail: bytes = self._d.flush()
        if not self._d.eof:
            raise ImageError(self.url, f"truncated {self.name} stream")
        return tail


def decoder_for(kind: str, url: str) -> Decoder:
    if kind == "gzip":
        return FramedDecoder(url, "gzip", GZIP_MAGIC, lambda: zlib.decompressobj(wbits=31))
    if kind == "zstd":
        dctx = zstandard.ZstdDecompressor()
        return FramedDecoder(url, "zstd", ZSTD_MAGIC, dctx.decompressobj)
    return RawDecoder()


def mounted_devices(mounts_file: Path = Path("/proc/self/mounts")) -> set[str]:
    try:
        lines = mounts_file.read_text().splitlines()
    except OSError:
        return set()
    return {line.split()[0] for line in lines if line.startswith("/dev/")}


def check_destination(device: str, *, mounts_file: Path = Path("/proc/self/mounts"),
                      allow_regular_file: bool = False) -> None:
    """Refuse anything but an existing, unmounted block device."""
    try:
        st = os.stat(device)
    except FileNotFoundError as exc:
        raise DiskError(device, "does not exist") from exc
    if not stat.S_ISBLK(st.st_mode) and not (allow_regular_file and stat.S_ISREG(st.st_mode)):
        raise DiskError(device, "is not a block device")
    name = os.path.basename(device)
    for mounted in mounted_devices(mounts_file):
        base = os.path.basename(mounted)
        if base == name or (base.startswith(name) and base[len(name):].lstrip("p").isdigit()):
            raise DiskError(device, f"{mounted} is mounted")


def wait_for_device(device: str, timeout: float, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Drivers probe asynchronously after module load: wait (bounded) for the node."""
    deadline = clock() + timeout
    while not os.path.exists(device):
        if clock() >= deadline:
            raise DiskError(device, f"did not appear within {timeout:.0f} s")
        sleep(0.1)


@dataclass(frozen=True)
class WriteResult:
    device: str
    url: str
    format: str
    bytes_written: int
    sha256: str
    seconds: float


class Progress:
    """One console line (and one event) per ``interval`` seconds at most."""

    def __init__(self, total: int | None, *, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self.last = self.start

    def update(self, done_in: int, written: int, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        secs = max(now - self.start, 1e-6)
        rate = written / secs
        pct = f" {100 * done_in / self.total:.0f}%" if self.total else ""
        log.info(f"provision: {written / 1e6:.1f} MB written{pct} {rate / 1e6:.1f} MB/s")
        event("provision", "progress", bytes=written, compressed_bytes=done_in,
              total=self.total, rate=round(rate))


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def wipe_partition_tables(fd: int, size: int) -> None:
    """Zero the first and last MiB: MBR/GPT primary header and the GPT backup."""
    zeros = bytes(HEAD)
    _write_all(fd, zeros, 0)
    if size > 2 * HEAD:
        _write_all(fd, zeros, size - HEAD)
    os.fsync(fd)


def reread_partitions(fd: int, *, attempts: int = 10,
                      sleep: Callable[[float], None] = time.sleep) -> None:
    for i in range(attempts):
        try:
            syscalls.blk_reread_partitions(fd)
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY and i + 1 < attempts:
                sleep(0.2 * (i + 1))
                continue
            if exc.errno in (errno.EINVAL, errno.ENOTTY):  # not partitionable (tests, loop w/o -P)
                return
            raise DiskError("?", f"BLKRRPART: {exc.strerror}") from exc


def stream_chunks(session: requests.Session, url: str) -> tuple[Iterator[bytes], int | None]:
    try:
        resp = session.get(url, stream=True, timeout=(10, 60))
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise FetchError(url, f"unreachable: {type(exc).__name__}", retryable=True) from exc
    if resp.status_code != 200:
        raise FetchError(url, f"HTTP {resp.status_code}", status=resp.status_code,
                         retryable=resp.status_code >= 500)
    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None

    def chunks() -> Iterator[bytes]:
        try:
            yield from resp.iter_content(chunk_size=1 << 20)
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise FetchError(url, f"connection lost mid-stream: {type(exc).__name__}",
                             retryable=True) from exc
        finally:
            resp.close()

    return chunks(), total


def write_stream(chunks: Iterable[bytes], fd: int, *, url: str, device: str, size: int,
                 total: int | None = None) -> tuple[str, int, str]:
    """Decode ``chunks`` onto ``fd``; returns (format, bytes written, sha256 of written data).

    The first MiB is written only after the stream ended cleanly; if anything fails after the
    first write, both partition-table areas are wiped before the error propagates.
    """
    sha = hashlib.sha256()
    head = bytearray()
    offset = 0
    consumed = 0
    decoder: Decoder | None = None
    kind = "raw"
    pending = bytearray()
    progress = Progress(total)
    started_writing = False

    def emit(data: bytes) -> None:
        nonlocal offset, started_writing
        if not data:
            return
        sha.update(data)
        view = memoryview(data)
        if len(head) < HEAD:
            take = min(HEAD - len(head), len(view))
            head.extend(view[:take])
            view = view[take:]
            offset += take
        if not view:
            return
        pending.extend(view)
        if len(pending) >= CHUNK:
            flush()

    def flush() -> None:
        nonlocal offset, started_writing
        if not pending:
            return
        start = offset
        if start + len(pending) > size:
            raise DiskError(device, f"image is larger than the disk ({size} bytes)")
        started_writing = True
        _write_all(fd, pending, start)
        offset += len(pending)
        pending.clear()

    try:
        for chunk in chunks:
            if not chunk:
                continue
            consumed += len(chunk)
            if decoder is None:
                kind = sniff(chunk[:8])
                decoder = decoder_for(kind, url)
                log.info(f"provision: {url} is {kind}")
            emit(decoder.feed(chunk))
            progress.update(consumed, offset + len(pending))
        if decoder is None:
            raise ImageError(url, "empty image")
        emit(decoder.finish())
        flush()
        if len(head) > size:
            raise DiskError(device, f"image is larger than the disk ({size} bytes)")
        os.fsync(fd)
        started_writing = True
        _write_all(fd, head, 0)
        os.fsync(fd)
    except BaseException:
        if started_writing:
            log.error(f"provision: write failed; wiping partition tables on {device}")
            try:
                wipe_partition_tables(fd, size)
            except OSError as exc:
                log.error(f"provision: wipe failed too: {exc}")
        raise
    progress.update(consumed, offset, force=True)
    written = offset
    return kind, written, sha.hexdigest()


def device_size(fd: int) -> int:
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return syscalls.blk_size_bytes(fd)
    return 1 << 62  # regular file (tests): grows as written


def write_image(url: str, device: str, *, session: requests.Session,
                mounts_file: Path = Path("/proc/self/mounts"),
                allow_regular_file: bool = False,
                clock: Callable[[], float] = time.monotonic) -> WriteResult:
    check_destination(device, mounts_file=mounts_file, allow_regular_file=allow_regular_file)
    start = clock()
    chunks, total = stream_chunks(session, url)
    flags = os.O_WRONLY | os.O_CLOEXEC
    if not allow_regular_file:
        flags |= os.O_EXCL  # exclusive open of a block device: fails if anything holds it
    try:
        fd = os.open(device, flags)
    except OSError as exc:
        raise DiskError(device, f"cannot open exclusively: {exc.strerror}") from exc
    try:
        size = device_size(fd)
        kind, written, digest = write_stream(chunks, fd, url=url, device=device, size=size,
                                             total=total)
        reread_partitions(fd)
    finally:
        os.close(fd)
    return WriteResult(device, url, kind, written, digest, clock() - start)
