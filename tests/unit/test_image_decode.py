"""pyinit.image.decode: the decoders (every format, concatenated streams, truncation, garbage,
corruption), the stream input and the zstd frame walk."""

from __future__ import annotations

import bz2
import gzip
import lzma
import mmap
from collections.abc import Callable, Iterable

import pytest

from pyinit.channel import END
from pyinit.errors import ImageError
from pyinit.image.decode import RESET, Restarted, StreamInput, ZstdFrames, decoder_for
from pyinit.image.formats import sniff
from pyinit.units import MIB

from .test_image_formats import COMPRESSORS, flip, payload, zstd


def test_refused_formats_are_not_written_raw() -> None:
    with pytest.raises(ImageError, match="qcow2 is not a raw disk image"):
        decoder_for("qcow2", StreamInput(iter([]).__next__), "u")


def _source(chunks: Iterable[object]) -> StreamInput:
    items = iter([*chunks, END])
    return StreamInput(lambda: next(items))


def chunked(data: bytes, size: int = 100_000) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def decode(stream: bytes, *, chunk: int = 100_000, block: int = 1 << 20) -> bytes:
    src = _source(chunked(stream, chunk))
    kind = sniff(src.peek(18))
    dec = decoder_for(kind, src, "u")
    buf = mmap.mmap(-1, block)
    out = bytearray()
    while True:
        n = dec.readinto(memoryview(buf))
        out += buf[:n]
        if n < block:
            break
    dec.finish()
    return bytes(out)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("chunk", [1, 4099, 1 << 20])
def test_decoders_round_trip(kind: str, chunk: int) -> None:
    data = payload(3 * MIB + 7 if chunk > 1 else 70_000)
    assert decode(COMPRESSORS[kind](data), chunk=chunk) == data


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "bzip2"])
def test_concatenated_members_are_one_stream(kind: str) -> None:
    data = payload(2 * MIB)
    c = COMPRESSORS[kind]
    assert decode(c(data[:777]) + c(data[777:MIB]) + c(data[MIB:]), chunk=65536) == data


def test_xz_stream_padding_is_allowed() -> None:
    data = payload(100_000)
    x = lzma.compress(data)
    assert decode(x + bytes(8) + x) == data + data
    with pytest.raises(ImageError, match="trailing garbage after xz stream"):
        decode(x + bytes(3))


def test_zstd_skippable_frames_are_skipped() -> None:
    data = payload(100_000)
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    assert decode(skippable + zstd(data) + skippable + zstd(data)) == data + data


def test_zstd_output_is_bounded_for_huge_zero_runs() -> None:
    """1 GiB of zeros is ~32 KB of zstd: the decoder must hand it out block by block."""
    stream = zstd(bytes(256 * MIB))
    src = _source(chunked(stream, 1 << 20))
    dec = decoder_for("zstd", src, "u")
    buf = mmap.mmap(-1, 4 * MIB)
    total = 0
    while n := dec.readinto(memoryview(buf)):
        assert n <= 4 * MIB
        total += n
    dec.finish()
    assert total == 256 * MIB


@pytest.mark.parametrize(("make", "needle"), [
    (lambda d: gzip.compress(d)[:-100], "truncated gzip"),
    (lambda d: gzip.compress(d) + b"GARBAGE!", "trailing garbage after gzip"),
    (lambda d: gzip.compress(d) + bytes(10), "trailing garbage after gzip"),
    (lambda d: zstd(d)[:-50], "truncated zstd"),
    (lambda d: zstd(d, write_checksum=True)[:-3], "truncated zstd"),  # checksum cut
    (lambda d: zstd(d) + b"xx", "trailing garbage after zstd"),
    (lambda d: zstd(d) + bytes(100), "trailing garbage after zstd"),
    (lambda d: lzma.compress(d, preset=0)[:-30], "truncated xz"),
    (lambda d: lzma.compress(d, preset=0) + b"junkjunk", "trailing garbage after xz"),
    (lambda d: bz2.compress(d, 1)[:-30], "truncated bzip2"),
    (lambda d: bz2.compress(d, 1) + b"junk", "trailing garbage after bzip2"),
    (lambda d: flip(gzip.compress(d), 2000), "corrupt gzip"),
    (lambda d: flip(zstd(d, write_checksum=True), 3000), "corrupt zstd"),
    (lambda d: flip(lzma.compress(d, preset=0), 3000), "corrupt xz"),
    (lambda d: flip(bz2.compress(d, 1), 3000), "corrupt bzip2"),
])
def test_bad_streams_are_errors(make: Callable[[bytes], bytes], needle: str) -> None:
    with pytest.raises(ImageError, match=needle):
        decode(make(payload(MIB + 12345)))


def test_empty_member_stream() -> None:
    assert decode(gzip.compress(b"")) == b""


def test_reset_reaches_the_decoder() -> None:
    src = _source([b"abc", RESET, b"xyz"])
    assert src.peek(2) == b"ab"
    with pytest.raises(Restarted):
        src.peek(18)
    assert src.read(10) == b"xyz"
    assert src.read(10) == b""


def test_zstd_frames_complete_and_truncated() -> None:
    stream = zstd(payload(300_000), write_checksum=True) + zstd(b"x" * 1000)
    for cut in (0, 1, 4, 5, 9, len(stream) // 2, len(stream) - 4, len(stream) - 1):
        walker = ZstdFrames()
        for i in range(0, cut, 7):
            walker.feed(stream[i:min(i + 7, cut)])
        assert walker.problem_at_end() in ("truncated zstd stream", "empty zstd stream"), cut
    walker = ZstdFrames()
    walker.feed(stream)
    assert walker.problem_at_end() is None
    assert walker.frames == 2


def test_zstd_frames_garbage() -> None:
    walker = ZstdFrames()
    with pytest.raises(ValueError, match="trailing garbage"):
        walker.feed(zstd(b"abc") + b"\x00\x00\x00\x00")
