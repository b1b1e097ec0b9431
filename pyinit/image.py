"""writeImage: stream an image over HTTP onto a block device — fast, verified, resumable, fail-safe.

The pipeline (threads joined by bounded queues; zlib, lzma, bz2, zstandard, hashlib, socket reads
and pwrite all release the GIL, so the stages overlap on separate cores)::

    fetch ──chunks──► decode ──4 MiB aligned blocks (pool of 8)──► write ──4 I/O threads──► disk
      │                                 │
      └──chunks──► hash                 └──blocks──► raw hash (verify="full" only)
                   (the file as served)

Memory is bounded by the queues and the block pool, not the image: ~75 MB peak RSS for the CLI
whether the image is 16 MiB or 8 GiB.

* **Formats** by magic bytes: raw, gzip, zstd, xz, bzip2; concatenated members/frames are one
  stream. A truncated stream, a corrupt one and trailing garbage are errors, never success.
  qcow2/vmdk/vhdx/lz4/lzip/7z are refused rather than written raw.
* **Checksums** (``checksum`` or a ``SHA256SUMS``-style ``checksum_url``) of the file as served,
  computed while streaming; sha256 is always computed and reported.
* **Zero runs** never go through write(): they are zeroed with ``BLKZEROOUT`` (regular files:
  ``fallocate`` ZERO_RANGE, else PUNCH_HOLE), coalesced across blocks and issued in batches.
  Runs shorter than 1 MiB in the middle of data are written with it (one pwrite instead of
  three syscalls). Nothing is ever skipped without being zeroed: the old contents would show.
* **Resume**: a dropped or stalled connection continues with ``Range: bytes=N-`` validated by
  ``If-Range``; the decoder and the hashes never see the break. A server that ignores ranges, or a
  file that changed, restarts the whole stream from byte 0 (decoder, hashes, offsets reset).
* **Fail-safe**: before the first byte lands, the first and last MiB (MBR, GPT and its backup) are
  zeroed, so a half-written disk never looks bootable, even after a power cut. The image's first
  MiB, and whatever it holds for the disk's last MiB (an image the size of the disk: its GPT
  backup), are written last, after the checksum verified and everything else was fsynced. Any
  failure after writing began zeroes both areas again, unless ``preserve_on_error``.
* **Safety** before the first byte: an existing block device, neither it nor a partition mounted,
  used as swap or held (LVM/MD/dm), opened ``O_EXCL``; an image known to be larger than the disk is
  refused up front (``size``, a raw image's Content-Length, a zstd frame's content size), and in
  any case at the first byte past the end.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import dataclasses
import enum
import errno
import functools
import hashlib
import json
import lzma
import mmap
import os
import queue
import re
import stat
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol, cast
from urllib.parse import unquote, urlsplit

import requests
import urllib3.exceptions
import zstandard

from pyinit import disks, grow, syscalls
from pyinit.channel import END, Aborted, Channel, End
from pyinit.errors import (
    ChecksumMismatch,
    DiskError,
    FetchError,
    ImageError,
    PyinitError,
    unreachable_reason,
)
from pyinit.fetch import RETRYABLE_STATUS, USER_AGENT, backoff, retry, tls_failure
from pyinit.log import event, get_logger
from pyinit.units import MIB

log = get_logger("pyinit.image")

HEAD = MIB  # held back and written last
BLOCK = 4 * MIB  # unit of decode → write hand-off; aligned (mmap) for O_DIRECT
POOL_BLOCKS = 8  # 32 MiB of blocks in flight at most
GRANULE = 64 << 10  # zero detection granularity
MIN_ZERO_RUN = MIB  # shorter zero runs between data are written with the data
MAX_ZERO_CALL = 1 << 30  # one BLKZEROOUT/fallocate call zeroes at most this much
NET_CHUNK = 256 << 10  # one network read
NET_QUEUE = 16  # network chunks queued per consumer (4 MiB)
MAX_ZSTD_WINDOW = 1 << 31  # accept `zstd --long=31` images (their window decides the memory)
SNIFF_BYTES = 18  # enough for every magic and a whole zstd frame header
DIRECT_DEFAULT = True  # O_DIRECT for block devices: measured faster (see write_image)
IO_THREADS = 4  # disk writes in flight
ZERO_BATCH_RUNS = 64  # zero runs issued together (see Writer)
ZERO_BATCH_BYTES = 256 * MIB

ZERO_GRANULE = bytes(GRANULE)

FORMATS = ("raw", "gzip", "zstd", "xz", "bzip2")
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
_BZIP2_FIRST = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")  # block / end of stream
# Formats that are not raw disk images and that we cannot decode: refused, never written raw.
_REFUSED = ((b"QFI\xfb", "qcow2"), (b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"),
            (b"\x04\x22\x4d\x18", "lz4"), (b"LZIP", "lzip"), (b"\x1f\x9d", "compress"),
            (b"7z\xbc\xaf\x27\x1c", "7z"))


# --- formats (pure) --------------------------------------------------------------------------

def sniff(head: bytes) -> str:
    """The stream's format from its first bytes (give :data:`SNIFF_BYTES`): one of
    :data:`FORMATS`, or the name of a refused format (``qcow2``, ``lz4``...). Pure."""
    if head.startswith(ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50
                                       and head[1:4] == b"\x2a\x4d\x18"):  # skippable (pzstd)
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if (head.startswith(BZIP2_MAGIC) and head[3:4] in b"123456789" and len(head) >= 10
            and head[4:10] in _BZIP2_FIRST):
        return "bzip2"
    for magic, name in _REFUSED:
        if head.startswith(magic):
            return name
    return "raw"


class ZstdFrames:
    """Follows zstd frame and block headers (RFC 8878 §3.1) over the compressed bytes without
    decompressing, to tell a complete stream from a truncated one: python-zstandard's stream
    reader ends quietly when its input ends mid-frame, and no library exposes the frame walk, so
    it is written here. Cheap: one step per block (≤ 128 KiB of output). Pure."""

    _MAGIC, _FHD, _BLOCK, _SKIPPABLE = range(4)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0
        self._checksum = False
        self.frames = 0  # complete frames, skippable ones included

    def feed(self, data: bytes) -> None:
        """Raises ValueError naming the problem (garbage, reserved bits)."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._hdr), end - pos)
            self._hdr += data[pos:pos + step]
            pos += step
            if len(self._hdr) == self._need:
                hdr = bytes(self._hdr)
                self._hdr.clear()
                self._header(hdr)

    def _header(self, hdr: bytes) -> None:
        if self._state == self._MAGIC:
            magic = int.from_bytes(hdr, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = self._FHD, 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = self._SKIPPABLE, 4
            else:
                raise ValueError("trailing garbage after zstd stream" if self.frames
                                 else "not a zstd stream")
        elif self._state == self._FHD:
            fhd = hdr[0]
            if fhd & 0x08:
                raise ValueError("corrupt zstd stream: reserved bit set in a frame header")
            single_segment = fhd >> 5 & 1
            fcs_size = (single_segment, 2, 4, 8)[fhd >> 6]
            self._checksum = bool(fhd & 0x04)
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + fcs_size
            self._state, self._need = self._BLOCK, 3
        elif self._state == self._BLOCK:
            value = int.from_bytes(hdr, "little")
            last, kind, size = value & 1, value >> 1 & 3, value >> 3
            if kind == 3 or size > 128 << 10:
                raise ValueError("corrupt zstd stream: invalid block header")
            self._skip = 1 if kind == 1 else size  # RLE blocks carry one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self.frames += 1
                self._state, self._need = self._MAGIC, 4
        else:  # skippable frame: 4-byte size, then that many bytes
            self._skip = int.from_bytes(hdr, "little")
            self.frames += 1
            self._state, self._need = self._MAGIC, 4

    def problem_at_end(self) -> str | None:
        """None when the bytes fed so far end exactly after a frame."""
        if self._state == self._MAGIC and not self._skip:
            if self._hdr:
                return (f"trailing garbage after zstd stream ({len(self._hdr)} bytes)"
                        if self.frames else "truncated zstd stream")
            return None if self.frames else "empty zstd stream"
        return "truncated zstd stream"


# --- decoders: compressed bytes in, bounded raw output written straight into blocks -----------

class _Reset(Exception):
    """The download restarted from byte 0: decoding starts over."""


class Rewind(enum.Enum):
    """The type of :data:`RESET` (an enum, so that ``item is RESET`` narrows an item's type)."""

    RESET = "reset"


RESET: Final = Rewind.RESET  # the fetcher starts over from byte 0: so does everything after it


class StreamInput:
    """The served bytes as the decoder reads them: the fetcher's chunks in order, with look-ahead
    for sniffing. :data:`RESET` raises :class:`_Reset`; :data:`~pyinit.channel.END` (the end of
    the stream) reads as ``b""``."""

    def __init__(self, get: Callable[[], object]) -> None:
        self._get = get
        self._buf = b""
        self._eof = False

    def _next(self) -> bytes:
        if self._eof:
            return b""
        item = self._get()
        if item is RESET:
            self._buf = b""
            raise _Reset
        if item is END:
            self._eof = True
            return b""
        assert isinstance(item, bytes)
        return item

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` only at the end."""
        if not self._buf:
            self._buf = self._next()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n:
            more = self._next()
            if not more:
                break
            self._buf += more
        return self._buf[:n]

    def unread(self, data: bytes) -> None:
        self._buf = data + self._buf


class Decoder(Protocol):
    def readinto(self, out: memoryview) -> int:
        """Fill ``out``; fewer bytes only at the end of the stream."""

    def finish(self) -> None:
        """Raise ImageError unless the stream ended cleanly."""


class RawDecoder:
    def __init__(self, src: StreamInput) -> None:
        self._src = src

    def readinto(self, out: memoryview) -> int:
        filled = 0
        while filled < len(out):
            data = self._src.read(len(out) - filled)
            if not data:
                break
            out[filled:filled + len(data)] = data
            filled += len(data)
        return filled

    def finish(self) -> None:
        pass


class _Member(Protocol):
    """One gzip member / xz stream / bzip2 stream (lzma's and bz2's decompressor interface)."""

    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    @property
    def needs_input(self) -> bool: ...
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


class _GzipMember:
    """zlib's decompressobj behind lzma's interface (``needs_input``; ``b""`` continues)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=31)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._d.unconsumed_tail

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        return self._d.decompress(data or self._d.unconsumed_tail, max(max_length, 0))


def _new_member(kind: str) -> _Member:
    if kind == "gzip":
        return _GzipMember()
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return bz2.BZ2Decompressor()


_MEMBER_MAGIC = {"gzip": GZIP_MAGIC[:2], "xz": XZ_MAGIC, "bzip2": BZIP2_MAGIC}


class MemberDecoder:
    """gzip, xz or bzip2: one or more concatenated members (pigz, pbzip2 and pixz write several;
    xz stream padding is allowed). Output is bounded by the space left in the block."""

    def __init__(self, kind: str, src: StreamInput, url: str) -> None:
        self.kind = kind
        self._src = src
        self._url = url
        self._d = _new_member(kind)
        self._src_eof = False
        self._done = False

    def _error(self, reason: str) -> ImageError:
        return ImageError(self._url, reason)

    def readinto(self, out: memoryview) -> int:
        filled = 0
        while filled < len(out) and not self._done:
            if self._d.eof:
                self._next_member()
                continue
            data = b""
            if self._d.needs_input and not self._src_eof:
                data = self._src.read(NET_CHUNK)
                self._src_eof = not data
            try:
                chunk = self._d.decompress(data, len(out) - filled)
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
                raise self._error(f"corrupt {self.kind} stream: {exc}") from exc
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            if not chunk and self._src_eof and not self._d.eof:
                break  # nothing more will come: finish() reports the truncation
        return filled

    def _next_member(self) -> None:
        self._src.unread(self._d.unused_data)
        padding = 0
        if self.kind == "xz":  # stream padding: NUL bytes, a multiple of four
            while True:
                ahead = self._src.peek(4096)
                nuls = len(ahead) - len(ahead.lstrip(b"\0"))
                self._src.read(nuls)
                padding += nuls
                if nuls < len(ahead) or not ahead:
                    break
        magic = _MEMBER_MAGIC[self.kind]
        ahead = self._src.peek(len(magic))
        if padding % 4:
            raise self._error(f"trailing garbage after {self.kind} stream "
                              f"({padding} NUL bytes)")
        if not ahead:
            self._done = True
            return
        if not ahead.startswith(magic) or len(ahead) < len(magic):
            raise self._error(f"trailing garbage after {self.kind} stream")
        self._d = _new_member(self.kind)

    def finish(self) -> None:
        if not self._d.eof:
            raise self._error(f"truncated {self.kind} stream")


class ZstdDecoder:
    """One or more zstd frames (skippable frames allowed), decompressed by libzstd straight into
    the block; completeness is checked by :class:`ZstdFrames` on the way in."""

    def __init__(self, src: StreamInput, url: str) -> None:
        self._src = src
        self._url = url
        self.frames = ZstdFrames()
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        self._reader = dctx.stream_reader(cast(IO[bytes], self), read_size=NET_CHUNK,
                                          read_across_frames=True, closefd=False)

    def read(self, n: int) -> bytes:
        """libzstd's input."""
        data = self._src.read(n)
        try:
            self.frames.feed(data)
        except ValueError as exc:
            raise ImageError(self._url, str(exc)) from exc
        return data

    def readinto(self, out: memoryview) -> int:
        filled = 0
        while filled < len(out):
            try:
                n = self._reader.readinto(out[filled:])
            except zstandard.ZstdError as exc:
                # libzstd may trip over a few garbage bytes before the frame walk can tell.
                problem = self.frames.problem_at_end() or ""
                if not problem.startswith("trailing garbage"):
                    problem = f"corrupt zstd stream: {exc}"
                raise ImageError(self._url, problem) from exc
            if not n:
                break
            filled += n
        return filled

    def finish(self) -> None:
        problem = self.frames.problem_at_end()
        if problem:
            raise ImageError(self._url, problem)


def decoder_for(kind: str, src: StreamInput, url: str) -> Decoder:
    if kind == "raw":
        return RawDecoder(src)
    if kind == "zstd":
        return ZstdDecoder(src, url)
    if kind in _MEMBER_MAGIC:
        return MemberDecoder(kind, src, url)
    raise ImageError(url, f"{kind} is not a raw disk image or a supported compression "
                     f"({', '.join(FORMATS)})")


# --- zero runs (pure) ------------------------------------------------------------------------

Extent = tuple[int, int, bool]  # [start, end), all zeros?
Buffer = bytes | bytearray | mmap.mmap


def zero_extents(buf: Buffer, start: int, end: int, *, granule: int = GRANULE,
                 zero: bytes = ZERO_GRANULE) -> list[Extent]:
    """``buf[start:end]`` as maximal runs of all-zero granules and of data. Granules are
    ``granule`` bytes from ``start`` (the last may be shorter). Compares slices against a
    preallocated zero buffer (memcmp speed), with a one-byte test first for data. Pure."""
    out: list[Extent] = []
    pos = start
    while pos < end:
        stop = min(pos + granule, end)
        is_zero = buf[stop - 1] == 0 and buf[pos] == 0 and buf[pos:stop] == zero[:stop - pos]
        if out and out[-1][2] == is_zero:
            out[-1] = (out[-1][0], stop, is_zero)
        else:
            out.append((pos, stop, is_zero))
        pos = stop
    return out


def coalesce(extents: list[Extent], *, min_zero: int = MIN_ZERO_RUN) -> list[Extent]:
    """Zero runs shorter than ``min_zero`` with data on both sides become data; neighbours of the
    same kind merge. Runs touching either end stay zero: they may continue in the neighbouring
    block (the writer joins them). Pure."""
    if not extents:
        return []
    lo, hi = extents[0][0], extents[-1][1]
    out: list[Extent] = []
    for s, e, is_zero in extents:
        zero = is_zero and (e - s >= min_zero or s == lo or e == hi)
        if out and out[-1][2] == zero:
            out[-1] = (out[-1][0], e, zero)
        else:
            out.append((s, e, zero))
    return out


# --- ranges and resume (pure) ----------------------------------------------------------------

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 100-199/1000`` → (100, 200, 1000): [start, end) and the full length. Pure."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None
    start, last = int(m.group(1)), int(m.group(2))
    if last < start:
        return None
    return start, last + 1, None if m.group(3) == "*" else int(m.group(3))


def validator_of(headers: Mapping[str, str]) -> str | None:
    """What to put in If-Range: a strong ETag, else Last-Modified (RFC 9110 §13.1.5). Pure."""
    h = {k.lower(): v for k, v in headers.items()}
    etag = h.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return h.get("last-modified") or None


Action = Literal["start", "continue", "restart", "refetch", "retry", "fatal"]


@dataclass(frozen=True)
class Decision:
    """What to do with a response: ``start`` (first body), ``continue`` (a 206 resuming where we
    were), ``restart`` (this 200 is the whole file again: reset everything and read it),
    ``refetch`` (reset everything and ask again from byte 0), ``retry`` (transient: back off and
    ask again) or ``fatal``."""

    action: Action
    reason: str = ""


@dataclass
class Transfer:
    """Range bookkeeping for one download across reconnects. Pure: no I/O.

    ``offset`` counts the bytes of the current pass handed downstream; ``fetched`` all body bytes
    received, re-fetches included."""

    url: str
    allow_unvalidated_resume: bool = False  # resume without If-Range (a checksum guards)
    max_restarts: int = 3
    offset: int = 0
    total: int | None = None
    validator: str | None = None
    fetched: int = 0
    resumes: int = 0
    restarts: int = 0

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        return headers

    def can_resume(self) -> bool:
        return self.validator is not None or self.allow_unvalidated_resume

    def complete(self) -> bool:
        """At a clean end of body: did we get everything the server promised?"""
        return self.total is None or self.offset >= self.total

    def on_data(self, n: int) -> None:
        self.offset += n
        self.fetched += n

    def restart(self, reason: str) -> None:
        """Start over from byte 0. Raises a fatal FetchError after ``max_restarts``."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise FetchError(self.url, f"{reason}; gave up after {self.max_restarts} restarts")
        self.offset, self.total, self.validator = 0, None, None

    def _adopt(self, headers: Mapping[str, str], total: int | None) -> None:
        self.total = total
        self.validator = validator_of(headers)

    def on_response(self, status: int, headers: Mapping[str, str]) -> Decision:
        h = {k.lower(): v for k, v in headers.items()}
        length = h.get("content-length", "")
        content_length = int(length) if length.isdigit() else None
        if status in RETRYABLE_STATUS:
            return Decision("retry", f"HTTP {status}")
        if status >= 400 and status != 416:
            return Decision("fatal", f"HTTP {status}")
        if self.offset == 0:
            if status == 200:
                self._adopt(h, content_length)
                return Decision("start")
            rng = parse_content_range(h.get("content-range"))
            if status == 206 and rng and rng[0] == 0:
                self._adopt(h, rng[2])
                return Decision("start")
            return Decision("fatal", f"unexpected HTTP {status}")
        # We asked for bytes=offset-.
        if status == 206:
            rng = parse_content_range(h.get("content-range"))
            if rng is None or rng[0] != self.offset:
                got = h.get("content-range", "no Content-Range")
                return Decision("refetch", f"asked for bytes {self.offset}-, got {got}")
            if self.total is not None and rng[2] is not None and rng[2] != self.total:
                return Decision("refetch", f"the image changed size on the server "
                                f"({self.total} → {rng[2]} bytes)")
            etag = h.get("etag")
            if (etag and self.validator and self.validator.startswith('"')
                    and etag != self.validator):
                return Decision("refetch", f"the image changed on the server (ETag "
                                f"{self.validator} → {etag})")
            self.resumes += 1
            return Decision("continue")
        if status == 200:
            new = validator_of(h)
            if self.validator and new and new != self.validator:
                why = f"the image changed on the server ({self.validator} → {new})"
            else:
                why = "the server ignored the Range request"
            self.restart(why)
            self._adopt(h, content_length)
            return Decision("restart", why)
        if status == 416:
            return Decision("refetch", "the server refused the range (HTTP 416): "
                            "the image changed")
        return Decision("fatal", f"unexpected HTTP {status}")


# --- checksums (pure) ------------------------------------------------------------------------

DIGEST_SIZES = {"sha256": 64, "sha512": 128}
_GNU_SUM_RE = re.compile(r"^(\\?)([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](.+)$")
_BSD_SUM_RE = re.compile(r"^(SHA256|SHA512) ?\((.+)\) ?= ?([0-9a-fA-F]+)$", re.IGNORECASE)


def parse_sums(text: str) -> list[tuple[str, str, str]]:
    """``(algorithm, hex, name)`` for each line of a ``SHA256SUMS``/``SHA512SUMS`` file, in GNU
    (``hex  name``, ``hex *name``, ``\\``-escaped names) or BSD (``SHA256 (name) = hex``)
    style. Other lines (comments, PGP armour) are skipped. Pure."""
    out = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if m := _GNU_SUM_RE.match(line):
            digest, name = m.group(2).lower(), m.group(3)
            if m.group(1):
                name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
            out.append(("sha256" if len(digest) == 64 else "sha512", digest, name))
        elif m := _BSD_SUM_RE.match(line.strip()):
            algo, digest = m.group(1).lower(), m.group(3).lower()
            if len(digest) == DIGEST_SIZES[algo]:
                out.append((algo, digest, m.group(2)))
    return out


def find_checksum(text: str, name: str, *, algo: str | None = None) -> tuple[str, str]:
    """The (algorithm, hex) for file ``name`` in a SUMS file: an exact name first, else a line
    whose path ends in ``/name``. Raises ValueError when there is none or it is ambiguous. Pure."""
    entries = [e for e in parse_sums(text) if algo is None or e[0] == algo]

    def norm(n: str) -> str:
        return n[2:] if n.startswith("./") else n

    for pick in (lambda n: norm(n) == name, lambda n: n.rsplit("/", 1)[-1] == name):
        found = {(a, d) for a, d, n in entries if pick(n)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise ValueError(f"{len(found)} different checksums for {name}")
    what = f"{algo} " if algo else ""
    raise ValueError(f"no {what}checksum line for {name}")


def image_name(url: str) -> str:
    """The file name a SUMS file lists for ``url``. Pure."""
    path: str = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def sums_algorithm(url: str) -> str | None:
    """``SHA512SUMS`` → sha512, ``SHA256SUMS``/``*.sha256`` → sha256, else None. Pure."""
    name = image_name(url).upper()
    for algo in ("SHA512", "SHA256"):
        if algo in name:
            return algo.lower()
    return None


# --- progress --------------------------------------------------------------------------------

def progress_fields(written: int, fetched: int, total: int | None, fetched_total: int | None,
                    elapsed: float) -> dict[str, Any]:
    """Numbers for one progress line/event. The fraction done is by raw bytes when the image
    size is known, else by compressed bytes fetched. Pure."""
    elapsed = max(elapsed, 1e-9)
    frac = None
    if total:
        frac = min(written / total, 1.0)
    elif fetched_total:
        frac = min(fetched / fetched_total, 1.0)
    eta = elapsed * (1 - frac) / frac if frac else None
    return {"bytes": written, "fetched": fetched, "total": total,
            "percent": None if frac is None else round(100 * frac, 1),
            "rate": round(written / elapsed), "eta": None if eta is None else round(eta, 1)}


def progress_line(f: Mapping[str, Any]) -> str:
    """``provision: 512 MB written (48%), 230 MB/s, ETA 2 s``. Pure."""
    pct = f" ({f['percent']:.0f}%)" if f.get("percent") is not None else ""
    eta = f", ETA {f['eta']:.0f} s" if f.get("eta") is not None else ""
    return (f"provision: {f['bytes'] / 1e6:.0f} MB written{pct}, {f['rate'] / 1e6:.0f} MB/s"
            f"{eta}")


def _emit_progress(fields: dict[str, Any]) -> None:
    log.info(progress_line(fields))
    event("provision", "progress", **fields)


class Progress:
    """One console line and one event per ``interval`` seconds at most (and one at the end)."""

    def __init__(self, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[dict[str, Any]], None] = _emit_progress) -> None:
        self.interval = interval
        self.clock = clock
        self.emit = emit
        self.start = clock()
        self.last = self.start

    def tick(self, written: int, fetched: int, total: int | None = None,
             fetched_total: int | None = None, *, force: bool = False) -> bool:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return False
        self.last = now
        self.emit(progress_fields(written, fetched, total, fetched_total, now - self.start))
        return True


# --- the destination -------------------------------------------------------------------------

def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def destination_conflict(usage: disks.Usage) -> str | None:
    """Why a disk with ``usage`` may not be written (every use refuses), or None. Pure."""
    for use in usage.conflicts("write")[:1]:
        if use.kind == "holder":
            return f"{use.sentence} (LVM/MD/device-mapper): release it first"
        return use.sentence
    return None


def check_destination(device: str, *, proc: Path = Path("/proc"), sysfs: Path = Path("/sys"),
                      allow_regular_file: bool = False) -> None:
    """Refuse anything but an existing block device that nothing mounts, swaps on or holds
    (:func:`pyinit.disks.device_usage`). (Regular files are for tests, with
    ``allow_regular_file``.)"""
    try:
        st = os.stat(device)
    except FileNotFoundError as exc:
        raise DiskError(device, "does not exist") from exc
    except OSError as exc:
        raise DiskError(device, f"cannot stat: {exc.strerror}") from exc
    if allow_regular_file and stat.S_ISREG(st.st_mode):
        return
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(device, "is not a block device")
    name = disks.kernel_name(device, st.st_rdev, sysfs)
    problem = destination_conflict(disks.device_usage(name, sysfs=sysfs, proc=proc))
    if problem:
        raise DiskError(device, problem)


def wait_for_device(device: str, timeout: float, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Drivers probe asynchronously after module load: wait (bounded) for the node."""
    deadline = clock() + timeout
    while not os.path.exists(device):
        if clock() >= deadline:
            raise DiskError(device, f"did not appear within {timeout:.0f} s")
        sleep(0.1)


def zeroes_offloaded(sysfs: Path, rdev: int) -> bool | None:
    """Whether the device does Write Zeroes itself (``queue/write_zeroes_max_bytes`` > 0; a
    partition's queue is its disk's). None when sysfs does not say."""
    node = sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
    for queue_dir in (node / "queue", node / ".." / "queue"):
        value = _read(queue_dir / "write_zeroes_max_bytes").strip()
        if value.isdigit():
            return int(value) > 0
    return None


def _aligned(size: int) -> mmap.mmap:
    """A page-aligned anonymous buffer (O_DIRECT needs aligned memory)."""
    return mmap.mmap(-1, size)


_ZEROS = _aligned(MIB)  # never written to


class Target:
    """The opened destination: aligned writes, zeroing, sync. Every mutating call sets
    ``touched`` first (the caller wipes partition tables after a failure only if it is set)."""

    def __init__(self, fd: int, path: str, *, block_device: bool, capacity: int | None,
                 direct: bool, sector: int, buffered_fd: int | None = None) -> None:
        self.fd = fd
        self.buffered_fd = fd if buffered_fd is None else buffered_fd  # for unaligned writes
        self.path = path
        self.block_device = block_device
        self.capacity = capacity  # None: a regular file that grows
        self.direct = direct
        self.sector = sector
        self.touched = False
        self.zero_method = "BLKZEROOUT" if block_device else "fallocate ZERO_RANGE"
        self.zero_offload: bool | None = None  # queue/write_zeroes_max_bytes > 0

    @classmethod
    def open(cls, path: str, *, allow_regular_file: bool = False,
             direct: bool | None = None, sysfs: Path = Path("/sys")) -> Target:
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise DiskError(path, "does not exist") from exc
        block_device = stat.S_ISBLK(st.st_mode)
        if not block_device and not (allow_regular_file and stat.S_ISREG(st.st_mode)):
            raise DiskError(path, "is not a block device")
        flags = os.O_WRONLY | os.O_CLOEXEC
        if block_device:
            flags |= os.O_EXCL  # fails if anything holds it: a mount, swap, LVM, MD, a writer
        use_direct = block_device and (DIRECT_DEFAULT if direct is None else direct)
        try:
            fd = os.open(path, flags | (os.O_DIRECT if use_direct else 0))
        except OSError as exc:
            if exc.errno == errno.EINVAL and use_direct:
                use_direct = False
                fd = os.open(path, flags)
            elif exc.errno == errno.EBUSY:
                raise DiskError(path, "is in use (cannot open it exclusively: mounted, swap, "
                                "LVM/MD/device-mapper or another writer)") from exc
            else:
                raise DiskError(path, f"cannot open: {exc.strerror}") from exc
        buffered_fd = None
        try:
            if block_device:
                capacity: int | None = syscalls.blk_size_bytes(fd)
                sector = syscalls.blk_sector_size(fd)
            else:
                capacity, sector = st.st_size or None, 512
            if use_direct:  # same device, page cache: for an unaligned tail (we hold O_EXCL)
                buffered_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(fd)
            raise DiskError(path, f"cannot open: {exc.strerror}") from exc
        target = cls(fd, path, block_device=block_device, capacity=capacity,
                     direct=use_direct, sector=sector, buffered_fd=buffered_fd)
        if block_device:
            target.zero_offload = zeroes_offloaded(sysfs, st.st_rdev)
        return target

    def close(self) -> None:
        if self.buffered_fd != self.fd:
            os.close(self.buffered_fd)
        os.close(self.fd)

    def describe(self) -> str:
        size = f"{self.capacity / 1e9:.1f} GB" if self.capacity else "growing file"
        io = "O_DIRECT" if self.direct else "buffered"
        how = {True: ", offloaded to the device", False: ", the kernel writes the zeros",
               None: ""}[self.zero_offload]
        return f"{self.path} ({size}, {io}, zero runs via {self.zero_method}{how})"

    def _pwrite(self, fd: int, offset: int, data: memoryview | bytes | mmap.mmap) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            if exc.errno == errno.ENOSPC or (exc.errno == errno.EINVAL and self.capacity
                                            and offset >= self.capacity):
                raise DiskError(self.path, f"image is larger than the disk "
                                f"({self.capacity} bytes)") from exc
            raise DiskError(self.path, f"write at byte {offset} failed: "
                            f"{exc.strerror}") from exc

    def write(self, offset: int, data: memoryview | bytes | mmap.mmap) -> None:
        """Thread-safe (pwrite). O_DIRECT needs sector-aligned offsets and lengths: an unaligned
        piece (an image's odd tail) goes through the page cache; fsync follows."""
        self.touched = True
        aligned = offset % self.sector == 0 and len(data) % self.sector == 0
        self._pwrite(self.fd if aligned else self.buffered_fd, offset, data)

    def write_zeros(self, offset: int, length: int) -> None:
        """Zeros through write(): for short runs and as the fallback."""
        self.touched = True
        view = memoryview(_ZEROS)
        while length > 0:
            n = min(length, len(view))
            self.write(offset, view[:n])
            offset += n
            length -= n

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros without sending zeros through write()."""
        self.touched = True
        if self.block_device:
            self._blkzeroout(offset, length)
        else:
            self._fallocate_zero(offset, length)

    def _blkzeroout(self, offset: int, length: int) -> None:
        end = offset + length
        body_end = end - end % self.sector
        pos = offset
        if offset % self.sector == 0 and self.zero_method == "BLKZEROOUT":
            while pos < body_end:
                n = min(body_end - pos, MAX_ZERO_CALL)
                try:
                    syscalls.blk_zeroout(self.fd, pos, n)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                        raise DiskError(self.path, f"BLKZEROOUT at byte {pos} failed: "
                                        f"{exc.strerror}") from exc
                    log.warning(f"provision: BLKZEROOUT unsupported on {self.path} "
                                f"({exc.strerror}); writing zeros instead")
                    self.zero_method = "write"
                    break
                pos += n
        self.write_zeros(pos, end - pos)

    def _fallocate_zero(self, offset: int, length: int) -> None:
        modes = {"fallocate ZERO_RANGE": syscalls.FALLOC_FL_ZERO_RANGE,
                 "fallocate PUNCH_HOLE": syscalls.FALLOC_FL_PUNCH_HOLE
                 | syscalls.FALLOC_FL_KEEP_SIZE}
        while self.zero_method in modes:
            try:
                syscalls.fallocate(self.fd, modes[self.zero_method], offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise DiskError(self.path, f"fallocate at byte {offset} failed: "
                                    f"{exc.strerror}") from exc
                self.zero_method = ("fallocate PUNCH_HOLE"
                                    if self.zero_method == "fallocate ZERO_RANGE" else "write")
                continue
            if self.zero_method == "fallocate PUNCH_HOLE" and \
                    os.fstat(self.fd).st_size < offset + length:
                os.ftruncate(self.fd, offset + length)  # KEEP_SIZE: a hole past the end
            return
        self.write_zeros(offset, length)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)  # a block device's page cache is shared: covers buffered_fd
            if self.buffered_fd != self.fd:
                os.fsync(self.buffered_fd)
        except OSError as exc:
            raise DiskError(self.path, f"fsync failed: {exc.strerror}") from exc

    def wipe_tables(self) -> None:
        """Zero the first and last MiB (MBR/GPT and the GPT backup), then fsync."""
        self.touched = True
        size = self.capacity if self.capacity is not None else os.fstat(self.fd).st_size
        self.write_zeros(0, min(HEAD, size))
        if size > HEAD:
            start = max(HEAD, size - HEAD)
            self.write_zeros(start, size - start)
        self.sync()

    def reread_partitions(self, *, attempts: int = 10,
                          sleep: Callable[[float], None] = time.sleep) -> None:
        """BLKRRPART, retried while EBUSY (one policy for the writer and the grow step)."""
        grow.reread(self.fd, self.path, attempts=attempts, sleep=sleep, block=self.block_device)


# --- the writer stage ------------------------------------------------------------------------

class Ref(Protocol):
    """A buffer's reference count: it goes back to its pool when the last user releases it."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...


class _NoRef:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class SyncIO:
    """Runs each disk operation at once, in the caller's thread (tests, small writes)."""

    def submit(self, fn: Callable[[], None], ref: Ref | None = None) -> None:
        try:
            fn()
        finally:
            if ref is not None:
                ref.release()

    def drain(self) -> None:
        pass


class ThreadedIO:
    """Runs disk operations on ``threads`` threads: several writes in flight keep a device's
    queue busy (a loop device with direct I/O went from ~550 to ~1500 MiB/s with two). Ranges
    never overlap within a pass, and :meth:`drain` (before fsync, and before a restarted pass)
    waits for all of them. The first failure goes to ``fail``; later operations are skipped."""

    def __init__(self, threads: int, *, abort: threading.Event,
                 fail: Callable[[BaseException], None]) -> None:
        self._q: queue.Queue[tuple[Callable[[], None], Ref | None] | None] = \
            queue.Queue(maxsize=2 * threads)
        self._abort = abort
        self._fail = fail
        self._cv = threading.Condition()
        self._pending = 0
        self._threads = [threading.Thread(target=self._run, name=f"pyinit-io{i}", daemon=True)
                         for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            fn, ref = item
            try:
                if not self._abort.is_set():
                    fn()
            except BaseException as exc:  # handed to the coordinator
                self._fail(exc)
            finally:
                if ref is not None:
                    ref.release()
                with self._cv:
                    self._pending -= 1
                    self._cv.notify_all()

    def submit(self, fn: Callable[[], None], ref: Ref | None = None) -> None:
        with self._cv:
            self._pending += 1
        while True:
            if self._abort.is_set():
                with self._cv:
                    self._pending -= 1
                if ref is not None:
                    ref.release()
                raise Aborted
            try:
                self._q.put((fn, ref), timeout=0.1)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        with self._cv:
            while self._pending:
                if self._abort.is_set():
                    raise Aborted
                self._cv.wait(0.1)

    def close(self) -> None:
        """Stop the threads once queued operations ran (or were skipped after a failure)."""
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join()


DiskIO = SyncIO | ThreadedIO


class Writer:
    """Lays decoded blocks onto a :class:`Target`, in order: data with pwrite; zero runs with
    ``target.zero``, joined across blocks into one call; the first MiB kept in :attr:`head` and
    the bytes bound for the disk's last MiB in :attr:`tail`, both written only at the end
    (:meth:`write_head`, after the checksum matched): a power cut at any moment before leaves
    neither a partition table at the start nor a GPT backup at the end that a recovery tool
    would rebuild the disk from. Before its first write it zeroes both partition-table areas
    (``pre_wipe``). Data writes go through ``io`` (several in flight with :class:`ThreadedIO`).

    Zero runs are issued in batches (:data:`ZERO_BATCH_RUNS` runs or :data:`ZERO_BATCH_BYTES`),
    back to back once the writes in flight have landed: a loop device turns each one into an
    fallocate on its backing file, which first waits for all direct I/O in flight, so zero calls
    interleaved with writes cost a queue drain each (134 of them: 0.6 s of 1 GiB)."""

    def __init__(self, target: Target, *, url: str, size: int | None = None,
                 min_zero: int = MIN_ZERO_RUN, pre_wipe: bool = True,
                 io: DiskIO | None = None) -> None:
        self.target = target
        self.io: DiskIO = io if io is not None else SyncIO()
        self.url = url
        self.size = size  # declared raw size: the stream must not exceed it
        self.min_zero = min_zero
        self.pre_wipe = pre_wipe
        self.head = _aligned(HEAD)
        self.head_len = 0
        cap = target.capacity
        # the disk's last MiB (never inside the first): None for a file that grows
        self.tail_start = max(HEAD, cap - HEAD) if cap is not None and cap > HEAD else None
        self.tail = _aligned(HEAD) if self.tail_start is not None else None
        self.tail_len = 0  # bytes of the tail area the stream reached
        self.offset = 0
        self.zero_bytes = 0
        self.started = False
        self._pending: tuple[int, int] | None = None
        self._zeros: list[tuple[int, int]] = []  # the batch not issued yet
        self._zeros_bytes = 0

    def reset(self) -> None:
        """The stream restarts from byte 0: whatever lands now overwrites the earlier pass
        (whose writes all land first; its unissued zero runs are dropped: the new pass
        zeroes what is zero in it)."""
        self.io.drain()
        self.offset = self.head_len = self.zero_bytes = self._zeros_bytes = self.tail_len = 0
        self._pending = None
        self._zeros.clear()
        if self.tail is not None:
            self.tail[:] = bytes(len(self.tail))

    def _start(self) -> None:
        if not self.started:
            self.started = True
            if self.pre_wipe:
                self.target.wipe_tables()

    def block(self, buf: mmap.mmap, offset: int, length: int, ref: Ref | None = None) -> None:
        """Lay ``buf[:length]`` at ``offset``. ``ref`` is acquired for each write that still
        reads ``buf`` after this returns (and released when it is done)."""
        ref = ref if ref is not None else _NoRef()
        end = offset + length
        cap = self.target.capacity
        if cap is not None and end > cap:
            raise DiskError(self.target.path, f"image is larger than the disk ({cap} bytes): "
                            f"it goes on past byte {cap}")
        if self.size is not None and end > self.size:
            raise ImageError(self.url, f"image is larger than its declared size "
                             f"({self.size} bytes)")
        pos = 0
        if offset < HEAD:
            pos = min(HEAD - offset, length)
            self.head[offset:offset + pos] = buf[:pos]
            self.head_len = offset + pos
        stop = length  # where the bytes bound for the tail area begin
        if self.tail is not None and self.tail_start is not None and end > self.tail_start:
            stop = max(pos, self.tail_start - offset)
            rel = offset + stop - self.tail_start
            self.tail[rel:rel + length - stop] = buf[stop:length]
            self.tail_len = max(self.tail_len, end - self.tail_start)
        if pos < stop:
            view = memoryview(buf)
            for s, e, is_zero in coalesce(zero_extents(buf, pos, stop),
                                          min_zero=self.min_zero):
                if is_zero:
                    self._zero(offset + s, offset + e)
                else:
                    self._flush_zero()
                    self._start()
                    ref.acquire()
                    self.io.submit(functools.partial(self.target.write, offset + s, view[s:e]),
                                   ref)
        self.offset = end

    def _zero(self, start: int, end: int) -> None:
        if self._pending and self._pending[1] == start:
            self._pending = (self._pending[0], end)
        else:
            self._flush_zero()
            self._pending = (start, end)

    def _flush_zero(self) -> None:
        if self._pending is None:
            return
        start, end = self._pending
        self._pending = None
        self._start()
        if end - start >= self.min_zero:
            self._zeros.append((start, end - start))
            self._zeros_bytes += end - start
            if len(self._zeros) >= ZERO_BATCH_RUNS or self._zeros_bytes >= ZERO_BATCH_BYTES:
                self._issue_zeros()
        else:
            self.io.submit(functools.partial(self.target.write_zeros, start, end - start))

    def _issue_zeros(self) -> None:
        if not self._zeros:
            return
        self.io.drain()
        for start, length in self._zeros:
            self.target.zero(start, length)
            self.zero_bytes += length
        self._zeros.clear()
        self._zeros_bytes = 0

    def finish(self) -> None:
        """End of stream: the last zero runs, then fsync (everything but the first MiB and the
        last MiB's bytes is durable)."""
        self._flush_zero()
        self._issue_zeros()
        self.io.drain()
        if self.started:
            self.target.sync()

    def write_head(self) -> None:
        """The bytes of the disk's last MiB, then the first MiB; then fsync."""
        self._start()
        if self.tail is not None and self.tail_start is not None and self.tail_len:
            self.target.write(self.tail_start, memoryview(self.tail)[:self.tail_len])
        self.target.write(0, memoryview(self.head)[:self.head_len])
        self.target.sync()


# --- the pipeline ----------------------------------------------------------------------------

class Block:
    """A 4 MiB page-aligned buffer from the pool, shared by the writer and the raw hasher."""

    def __init__(self, pool: Channel[Block]) -> None:
        self.buf = _aligned(BLOCK)
        self.view = memoryview(self.buf)
        self.offset = 0
        self.length = 0
        self._pool = pool
        self._refs = 0
        self._lock = threading.Lock()

    def share(self, refs: int) -> None:
        self._refs = refs

    def acquire(self) -> None:
        with self._lock:
            self._refs += 1

    def give_back(self) -> None:
        """Unused: straight back to the pool."""
        self._refs = 0
        self._pool.put_nowait(self)

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            last = self._refs == 0
        if last:
            self._pool.put_nowait(self)


class _Pipeline:
    def __init__(self, req: WriteRequest, *, session: requests.Session, target: Target,
                 expected: tuple[str, str] | None, connect_timeout: float, read_timeout: float,
                 max_attempts: int, delays: Callable[[], Iterator[float]],
                 io_threads: int = IO_THREADS) -> None:
        self.req = req
        self.url = req.url
        self.session = session
        self.target = target
        self.expected = expected
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.delays = delays
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.transfer = Transfer(req.url, allow_unvalidated_resume=expected is not None)
        self.io_threads = io_threads
        self.io: ThreadedIO | None = None
        self.writer = Writer(target, url=req.url, size=req.size)
        self.dec_ch: Channel[bytes | Rewind | End] = Channel(NET_QUEUE, self.abort)
        self.hash_ch: Channel[bytes | Rewind | End] = Channel(NET_QUEUE, self.abort)
        self.write_ch: Channel[Block | Rewind | End] = Channel(POOL_BLOCKS, self.abort)
        self.raw_ch: Channel[Block | Rewind | End] | None = \
            Channel(POOL_BLOCKS, self.abort) if req.verify else None
        self.pool: Channel[Block] = Channel(POOL_BLOCKS, self.abort)
        self._blocks = [Block(self.pool) for _ in range(POOL_BLOCKS)]
        for blk in self._blocks:
            self.pool.put_nowait(blk)
        self.format = "raw"
        self.raw_total: int | None = req.size
        self.digests: dict[str, str] = {}
        self.raw_sha256: str | None = None
        self._hash_names = sorted({"sha256", *([expected[0]] if expected else [])})

    # -- running ------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.abort.set()

    def _stage(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Aborted:
            pass
        except BaseException as exc:  # handed to the coordinator
            self.fail(exc)

    def stream(self, progress: Progress) -> None:
        """Run every stage to the end of the stream. Afterwards everything but the head is on
        the disk and fsynced; raises the first stage's error."""
        stages = [("fetch", self._fetch), ("hash", self._hash), ("decode", self._decode),
                  ("write", self._write)]
        if self.raw_ch is not None:
            stages.append(("rawhash", self._raw_hash))
        threads = [threading.Thread(target=self._stage, args=(fn,), name=f"pyinit-{name}",
                                    daemon=True) for name, fn in stages]
        self.io = ThreadedIO(self.io_threads, abort=self.abort, fail=self.fail)
        self.writer.io = self.io
        for t in threads:
            t.start()
        try:
            alive = threads
            while alive and not self.abort.is_set():
                alive[0].join(0.2)
                alive = [t for t in alive if t.is_alive()]
                progress.tick(self.writer.offset, self.transfer.fetched, self.raw_total,
                              self.transfer.total)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: stop the stages
            self.fail(exc)
        if self.error is not None:
            # Nothing may touch the disk once the caller starts wiping: wait for every stage
            # but the fetcher (it never writes; a stalled read ends at its timeout), and for
            # the writes in flight.
            for t in threads:
                t.join(None if t.name != "pyinit-fetch" else 1.0)
        self.io.close()
        self.writer.io = SyncIO()  # the head and anything after run in this thread
        if self.error is not None:
            raise self.error

    # -- fetch --------------------------------------------------------------------------------

    def _emit(self, item: bytes | Rewind | End) -> None:
        self.dec_ch.put(item)
        self.hash_ch.put(item)

    def _restart(self, reason: str) -> None:
        self.transfer.restart(reason)
        log.warning(f"provision: {reason}; restarting {self.url} from byte 0")
        self._emit(RESET)

    def _fetch(self) -> None:
        t = self.transfer
        delays = self.delays()
        failures = 0

        def failed(reason: str) -> None:
            nonlocal failures
            failures += 1
            if failures >= self.max_attempts:
                raise FetchError(self.url, f"{reason} (gave up after {failures} attempts)",
                                 retryable=True)
            delay = next(delays)
            log.warning(f"provision: {reason}; attempt {failures + 1}/{self.max_attempts} "
                        f"from byte {t.offset} in {delay:.1f} s")
            if self.abort.wait(delay):
                raise Aborted

        while True:
            if self.abort.is_set():
                raise Aborted
            if t.offset and not t.can_resume():
                self._restart("the server sent no ETag or Last-Modified to resume against")
            try:
                resp = self.session.get(self.url, headers=t.request_headers(), stream=True,
                                        timeout=self.timeout)
            except requests.exceptions.SSLError as exc:
                raise tls_failure(self.url, exc, self.session.verify) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise FetchError(self.url, f"{type(exc).__name__}: {exc}") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                host = urlsplit(self.url).hostname
                failed(f"unreachable: {unreachable_reason(exc, host)}")
                continue
            with contextlib.closing(resp):
                decision = t.on_response(resp.status_code, resp.headers)
                if decision.action == "fatal":
                    raise FetchError(self.url, decision.reason, status=resp.status_code)
                if decision.action == "retry":
                    failed(decision.reason)
                    continue
                if decision.action == "refetch":
                    self._restart(decision.reason)
                    continue
                if decision.action == "restart":
                    log.warning(f"provision: {decision.reason}; restarting {self.url} "
                                f"from byte 0")
                    self._emit(RESET)
                elif decision.action == "continue":
                    log.info(f"provision: resuming {self.url} at byte {t.offset}")
                got = 0
                try:
                    while True:
                        data = resp.raw.read(NET_CHUNK, decode_content=False)
                        if not data:
                            break
                        got += len(data)
                        t.on_data(len(data))
                        self._emit(data)
                except (urllib3.exceptions.HTTPError, requests.RequestException,
                        OSError) as exc:
                    if got:  # progress since the last failure: a fresh budget
                        failures, delays = 0, self.delays()
                    stalled = isinstance(exc, urllib3.exceptions.ReadTimeoutError)
                    failed(f"stalled for {self.timeout[1]:g} s" if stalled
                           else f"connection lost ({type(exc).__name__})")
                    continue
            if not t.complete():
                if got:
                    failures, delays = 0, self.delays()
                failed(f"the server ended the body at byte {t.offset} of {t.total}")
                continue
            self._emit(END)
            return

    # -- hash ---------------------------------------------------------------------------------

    def _hash(self) -> None:
        hashes = [hashlib.new(name) for name in self._hash_names]
        while True:
            item = self.hash_ch.get()
            if item is RESET:
                hashes = [hashlib.new(name) for name in self._hash_names]
            elif item is END:
                self.digests = {h.name: h.hexdigest() for h in hashes}
                return
            else:
                for h in hashes:
                    h.update(item)

    # -- decode -------------------------------------------------------------------------------

    def _send(self, item: Block | Rewind | End) -> None:
        if isinstance(item, Block):
            item.share(2 if self.raw_ch is not None else 1)
        self.write_ch.put(item)
        if self.raw_ch is not None:
            self.raw_ch.put(item)

    def _check_declared_size(self, kind: str, head: bytes) -> None:
        """Refuse an image known to be larger than the disk before its first byte is written."""
        cap = self.target.capacity
        if kind == "raw" and self.req.size is None:
            self.raw_total = self.transfer.total
        if cap is None:
            return
        if kind == "raw" and self.transfer.total is not None and self.transfer.total > cap:
            raise DiskError(self.target.path, f"image is larger than the disk: "
                            f"{self.transfer.total} bytes > {cap} bytes")
        if kind == "zstd":
            try:
                frame = zstandard.frame_content_size(head)
            except zstandard.ZstdError:
                return
            if frame > cap:
                raise DiskError(self.target.path, f"image is larger than the disk: its first "
                                f"zstd frame alone is {frame} bytes > {cap} bytes")

    def _decode(self) -> None:
        src = StreamInput(self.dec_ch.get)
        while True:
            try:
                head = src.peek(SNIFF_BYTES)
                if not head:
                    raise ImageError(self.url, "empty image")
                kind = sniff(head)
                decoder = decoder_for(kind, src, self.url)
                log.info(f"provision: {self.url} is {kind}")
                self.format = kind
                self._check_declared_size(kind, head)
                offset = 0
                while True:
                    blk: Block = self.pool.get()
                    try:
                        n = decoder.readinto(blk.view)
                    except BaseException:
                        blk.give_back()
                        raise
                    if n:
                        blk.offset, blk.length = offset, n
                        offset += n
                        self._send(blk)
                    else:
                        blk.give_back()
                    if n < BLOCK:
                        break
                decoder.finish()
                self._send(END)
                return
            except _Reset:
                self._send(RESET)

    # -- write --------------------------------------------------------------------------------

    def _write(self) -> None:
        w = self.writer
        while True:
            item = self.write_ch.get()
            if item is RESET:
                w.reset()
            elif item is END:
                w.finish()
                return
            else:
                try:
                    w.block(item.buf, item.offset, item.length, item)
                finally:
                    item.release()

    def _raw_hash(self) -> None:
        assert self.raw_ch is not None
        h = hashlib.sha256()
        while True:
            item = self.raw_ch.get()
            if item is RESET:
                h = hashlib.sha256()
            elif item is END:
                self.raw_sha256 = h.hexdigest()
                return
            else:
                try:
                    h.update(item.view[:item.length])
                finally:
                    item.release()

    # -- after the stream ---------------------------------------------------------------------

    def spare_buffers(self) -> list[mmap.mmap]:
        """The block buffers, free once the stream is done (read-back reuses them)."""
        return [blk.buf for blk in self._blocks[:4]]

    def check(self) -> str | None:
        """The declared size and the checksum; returns the algorithm verified, if any."""
        written = self.writer.offset
        if self.req.size is not None and written != self.req.size:
            raise ImageError(self.url, f"image is {written} bytes, its declared size is "
                             f"{self.req.size}")
        if self.expected is None:
            return None
        algo, want = self.expected
        got = self.digests[algo]
        if got != want:
            raise ChecksumMismatch(self.url, f"{algo}:{want}", f"{algo}:{got}")
        log.info(f"provision: {algo} of {self.url} verified")
        return algo


def readback_sha256(path: str, length: int, *, direct: bool, sector: int = 4096,
                    buffers: list[mmap.mmap] | None = None) -> str:
    """sha256 of the first ``length`` bytes as read back from ``path`` (O_DIRECT for block
    devices: from the disk, not the page cache). Reading and hashing overlap (two threads);
    ``buffers`` (aligned, :data:`BLOCK` bytes each; the pipeline's, reused) carry the data."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DiskError(path, f"cannot open for read-back: {exc.strerror}") from exc
    bufs = buffers or [_aligned(BLOCK) for _ in range(3)]
    stop = threading.Event()
    free: Channel[mmap.mmap] = Channel(len(bufs), stop)
    for buf in bufs:
        free.put_nowait(buf)
    full: Channel[tuple[mmap.mmap, int] | End] = Channel(len(bufs), stop)

    def reader() -> None:
        try:
            for off in range(0, length, BLOCK):
                n = min(BLOCK, length - off)
                want = -(-n // sector) * sector if direct else n
                buf = free.get()
                got = os.preadv(fd, [memoryview(buf)[:want]], off)
                if got < n:
                    raise DiskError(path, f"read-back ended at byte {off + got} of {length}")
                full.put((buf, n))
            full.put(END)
        except Aborted:
            return
        except OSError as exc:
            full.fail(DiskError(path, f"read-back failed: {exc.strerror}"))
        except BaseException as exc:  # handed to the hashing thread
            full.fail(exc)

    thread = threading.Thread(target=reader, name="pyinit-readback", daemon=True)
    thread.start()
    h = hashlib.sha256()
    try:
        while (item := full.get()) is not END:
            buf, n = item
            h.update(memoryview(buf)[:n])
            free.put(buf)
    finally:
        stop.set()  # the reader gives up if it still waits for a buffer
        thread.join()
        os.close(fd)
    return h.hexdigest()


# --- the API ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WriteRequest:
    url: str
    device: str
    checksum: tuple[str, str] | None = None  # (sha256|sha512, hex) of the file as served
    checksum_url: str | None = None  # a SHA256SUMS/SHA512SUMS-style file listing the image
    size: int | None = None  # the raw image's size in bytes, when known
    verify: bool = False  # read the written range back (O_DIRECT) and compare
    preserve_on_error: bool = False  # leave the disk as it is after a failure (debugging)


@dataclass(frozen=True)
class WriteResult:
    device: str
    url: str
    format: str
    bytes_written: int  # raw bytes on the disk (the image's size)
    bytes_fetched: int  # compressed bytes received, re-fetches included
    sha256: str  # of the file as served
    checksum_verified: str | None  # "sha256"/"sha512" when a given checksum matched
    zero_bytes: int  # zeroed with BLKZEROOUT/fallocate instead of written
    resumes: int  # Range requests that continued a dropped or stalled transfer
    restarts: int  # times the stream started over from byte 0
    seconds: float
    verified_readback: bool


def fetch_text(session: requests.Session, url: str, *, total: float = 60.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep, limit: int = 4 * MIB) -> str:
    """GET a small text file (a SUMS file) with the same retry policy as the action fetch."""

    def once() -> str:
        try:
            resp = session.get(url, timeout=(10, 30), headers={"User-Agent": USER_AGENT})
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = unreachable_reason(exc, urlsplit(url).hostname)
            raise FetchError(url, f"unreachable: {why}", retryable=True) from exc
        if resp.status_code in RETRYABLE_STATUS:
            raise FetchError(url, f"HTTP {resp.status_code}", retryable=True,
                             status=resp.status_code)
        if resp.status_code >= 400:
            raise FetchError(url, f"HTTP {resp.status_code}", status=resp.status_code)
        if len(resp.content) > limit:
            raise FetchError(url, f"more than {limit} bytes: not a checksum file")
        return resp.text

    text: str = retry(once, what=f"GET {url}", total=total, clock=clock, sleep=sleep)
    return text


def expected_checksum(req: WriteRequest, *, session: requests.Session) -> tuple[str, str] | None:
    """(algorithm, hex) the served file must match: ``checksum``, else the image's line in
    ``checksum_url``."""
    if req.checksum is not None:
        algo, digest = req.checksum[0].lower(), req.checksum[1].lower()
        if len(digest) != DIGEST_SIZES.get(algo, -1) or not re.fullmatch(r"[0-9a-f]+", digest):
            raise ImageError(req.url, f"bad checksum {algo}:{digest} (sha256 or sha512 hex)")
        return algo, digest
    if req.checksum_url is None:
        return None
    text = fetch_text(session, req.checksum_url)
    name = image_name(req.url)
    try:
        return find_checksum(text, name, algo=sums_algorithm(req.checksum_url))
    except ValueError as exc:
        raise ImageError(req.url, f"{req.checksum_url}: {exc}") from exc


def write_image(req: WriteRequest, *, session: requests.Session,
                allow_regular_file: bool = False, proc: Path = Path("/proc"),
                sysfs: Path = Path("/sys"), direct: bool | None = None,
                connect_timeout: float = 10.0, read_timeout: float = 30.0,
                max_attempts: int = 8, delays: Callable[[], Iterator[float]] = backoff,
                io_threads: int = IO_THREADS, progress_interval: float = 1.0,
                clock: Callable[[], float] = time.monotonic) -> WriteResult:
    """Stream ``req.url`` onto ``req.device`` (see the module docstring for the guarantees).

    ``direct``: O_DIRECT for block devices (default :data:`DIRECT_DEFAULT`: 1 GiB, 30 % data,
    zstd, onto a loop device with direct I/O: 0.89 s with O_DIRECT, 1.32 s through the page
    cache, median of 5, and 1.06 vs 1.58 CPU seconds; progress is honest too).
    ``read_timeout``: seconds without a byte before a connection counts as stalled and is
    resumed. ``max_attempts``: consecutive failed attempts (without progress) before giving up.
    """
    start = clock()
    check_destination(req.device, proc=proc, sysfs=sysfs, allow_regular_file=allow_regular_file)
    expected = expected_checksum(req, session=session)
    target = Target.open(req.device, allow_regular_file=allow_regular_file, direct=direct,
                         sysfs=sysfs)
    try:
        if req.size is not None and target.capacity is not None and req.size > target.capacity:
            raise DiskError(req.device, f"image is larger than the disk: {req.size} bytes > "
                            f"{target.capacity} bytes")
        log.info(f"provision: writing {req.url} to {target.describe()}")
        pipe = _Pipeline(req, session=session, target=target, expected=expected,
                         connect_timeout=connect_timeout, read_timeout=read_timeout,
                         max_attempts=max_attempts, delays=delays, io_threads=io_threads)
        progress = Progress(interval=progress_interval, clock=clock)
        try:
            pipe.stream(progress)
            verified = pipe.check()
            pipe.writer.write_head()
            progress.tick(pipe.writer.offset, pipe.transfer.fetched, pipe.raw_total,
                          pipe.transfer.total, force=True)
            readback = False
            if req.verify:
                assert pipe.raw_sha256 is not None
                disk = readback_sha256(req.device, pipe.writer.offset, direct=target.direct,
                                       buffers=pipe.spare_buffers(),
                                       sector=target.sector)
                if disk != pipe.raw_sha256:
                    raise DiskError(req.device, f"read-back verification failed: sha256 "
                                    f"{disk} on the disk, {pipe.raw_sha256} decoded")
                readback = True
                log.info(f"provision: read-back of {pipe.writer.offset} bytes verified")
        except BaseException as exc:
            _fail_safe(target, req, exc)
            raise
        target.reread_partitions()
    finally:
        target.close()
    t = pipe.transfer
    return WriteResult(device=req.device, url=req.url, format=pipe.format,
                       bytes_written=pipe.writer.offset, bytes_fetched=t.fetched,
                       sha256=pipe.digests["sha256"], checksum_verified=verified,
                       zero_bytes=pipe.writer.zero_bytes, resumes=t.resumes,
                       restarts=t.restarts, seconds=clock() - start,
                       verified_readback=readback)


def _fail_safe(target: Target, req: WriteRequest, exc: BaseException) -> None:
    if not target.touched:
        return
    if req.preserve_on_error:
        log.error(f"provision: write failed ({exc}); preserveOnError: leaving {req.device} "
                  f"as it is")
        return
    log.error(f"provision: write failed; wiping the partition tables on {req.device}")
    try:
        target.wipe_tables()
        target.reread_partitions()  # forget partitions the kernel may have seen
    except (OSError, PyinitError) as wipe_exc:
        log.error(f"provision: wiping {req.device} failed too: {wipe_exc}")


# --- CLI: python -m pyinit.image URL DEVICE ----------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from pyinit import log as pyinit_log
    from pyinit.action import parse_checksum

    parser = argparse.ArgumentParser(
        prog="python -m pyinit.image",
        description="Write the image at URL onto DEVICE with pyinit's writer (benchmarks, "
                    "debugging). Logs go to stderr; stdout gets one JSON line: the WriteResult, "
                    "or {\"error\": ..., \"type\": ...} with exit status 1.")
    parser.add_argument("url", metavar="URL", help="http(s) URL of the image (raw, gzip, zstd, "
                        "xz or bzip2: recognised by its magic bytes)")
    parser.add_argument("device", metavar="DEVICE", help="the block device to overwrite")
    parser.add_argument("--checksum", metavar="ALGO:HEX", help="sha256:<hex> or sha512:<hex>")
    parser.add_argument("--checksum-url", metavar="URL", help="a SHA256SUMS-style file")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="the raw image's size (refused up front if the disk is smaller)")
    parser.add_argument("--verify", action="store_true",
                        help="read the written range back (O_DIRECT) and compare")
    parser.add_argument("--preserve-on-error", action="store_true",
                        help="after a failure, leave the disk as it is (no wipe)")
    parser.add_argument("--allow-file", action="store_true",
                        help="allow a regular file as DEVICE (tests)")
    parser.add_argument("--direct", action=argparse.BooleanOptionalAction, default=None,
                        help="O_DIRECT writes to block devices (default: on)")
    parser.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="no byte for this long: the connection stalled, resume (default 30)")
    parser.add_argument("--io-threads", type=int, default=IO_THREADS, metavar="N",
                        help=f"disk operations in flight (default {IO_THREADS})")
    args = parser.parse_args(argv)
    pyinit_log.configure(console=sys.stderr)
    try:
        req = WriteRequest(url=args.url, device=args.device,
                           checksum=parse_checksum(args.checksum) if args.checksum else None,
                           checksum_url=args.checksum_url, size=args.size, verify=args.verify,
                           preserve_on_error=args.preserve_on_error)
        with requests.Session() as session:
            result = write_image(req, session=session, allow_regular_file=args.allow_file,
                                 direct=args.direct, read_timeout=args.read_timeout,
                                 io_threads=max(1, args.io_threads))
    except PyinitError as exc:
        print(f"pyinit.image: {exc}", file=sys.stderr)
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}), flush=True)
        return 1
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
