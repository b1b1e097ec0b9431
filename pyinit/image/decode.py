"""Decoders: the served bytes in, the raw image out, written straight into the caller's block
and never more than it holds (a huge zero run in a few KB of zstd comes out block by block).

Concatenated gzip members, xz and bzip2 streams and zstd frames are one stream. A truncated
stream, a corrupt one and trailing garbage are errors (:class:`~pyinit.errors.ImageError`),
never a short image that looks written."""

from __future__ import annotations

import bz2
import enum
import lzma
import zlib
from collections.abc import Callable
from typing import IO, Final, Protocol, cast

import zstandard

from pyinit.channel import END
from pyinit.errors import ImageError
from pyinit.image.formats import BZIP2_MAGIC, FORMATS, GZIP_MAGIC, XZ_MAGIC

NET_CHUNK = 256 << 10  # one network read, and what a decoder asks of the stream at a time
MAX_ZSTD_WINDOW = 1 << 31  # accept `zstd --long=31` images (their window decides the memory)


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


class Restarted(Exception):
    """The download restarted from byte 0: decoding starts over."""


class Rewind(enum.Enum):
    """The type of :data:`RESET` (an enum, so that ``item is RESET`` narrows an item's type)."""

    RESET = "reset"


RESET: Final = Rewind.RESET  # the fetcher starts over from byte 0: so does everything after it


class StreamInput:
    """The served bytes as the decoder reads them: the fetcher's chunks in order, with look-ahead
    for sniffing. :data:`RESET` raises :class:`Restarted`; :data:`~pyinit.channel.END` (the end of
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
            raise Restarted
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
