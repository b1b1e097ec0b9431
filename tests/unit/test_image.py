"""The image writer's pure logic, decoders and disk layout, without a network or a real disk."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import mmap
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pyinit.channel import END
from pyinit.disks import Family, Holder, Partition, disk_usage
from pyinit.errors import DiskError, FetchError, ImageError
from pyinit.image import (
    GRANULE,
    HEAD,
    MIB,
    RESET,
    Decision,
    Progress,
    StreamInput,
    Target,
    Transfer,
    Writer,
    ZstdFrames,
    _Reset,
    check_destination,
    coalesce,
    decoder_for,
    destination_conflict,
    find_checksum,
    image_name,
    parse_content_range,
    parse_sums,
    progress_fields,
    progress_line,
    sniff,
    sums_algorithm,
    validator_of,
    zero_extents,
    zeroes_offloaded,
)


def payload(size: int = 5 * HEAD + 12345) -> bytes:
    # Realistic-ish: a non-zero "partition table" head, data, and a zero run.
    block = hashlib.sha256(b"seed").digest() * 4096
    data = (block * (size // len(block) + 1))[:size]
    return data[: size // 2] + bytes(size // 4) + data[size // 2 + size // 4:]


def zstd(data: bytes, **kw: Any) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(data)


def _flip(data: bytes, at: int) -> bytes:
    at = min(at, len(data) // 2)
    return data[:at] + bytes(b ^ 0x5A for b in data[at:at + 16]) + data[at + 16:]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda d: d,
    "gzip": gzip.compress,
    "zstd": lambda d: zstd(d, write_checksum=True),
    "xz": lambda d: lzma.compress(d, preset=1),
    "bzip2": lambda d: bz2.compress(d, 1),
}


# --- sniffing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_sniff_by_magic(kind: str) -> None:
    assert sniff(COMPRESSORS[kind](payload(5000))[:18]) == kind


@pytest.mark.parametrize(("head", "kind"), [
    (b"\xeb\x63\x90" + bytes(15), "raw"),  # MBR boot code
    (bytes(18), "raw"),  # a filesystem image starting with zeros
    (b"", "raw"),
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x50\x2a\x4d\x18" + bytes(14), "zstd"),  # pzstd: a skippable frame first
    (b"BZh9" + b"\x31\x41\x59\x26\x53\x59" + bytes(8), "bzip2"),
    (b"BZh9 is just text here", "raw"),
    (b"QFI\xfb\x00\x00\x00\x03", "qcow2"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"vhdxfile", "vhdx"),
])
def test_sniff_edge_cases(head: bytes, kind: str) -> None:
    assert sniff(head) == kind


def test_refused_formats_are_not_written_raw() -> None:
    with pytest.raises(ImageError, match="qcow2 is not a raw disk image"):
        decoder_for("qcow2", StreamInput(iter([]).__next__), "u")


# --- decoders ----------------------------------------------------------------------------------

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
    (lambda d: _flip(gzip.compress(d), 2000), "corrupt gzip"),
    (lambda d: _flip(zstd(d, write_checksum=True), 3000), "corrupt zstd"),
    (lambda d: _flip(lzma.compress(d, preset=0), 3000), "corrupt xz"),
    (lambda d: _flip(bz2.compress(d, 1), 3000), "corrupt bzip2"),
])
def test_bad_streams_are_errors(make: Callable[[bytes], bytes], needle: str) -> None:
    with pytest.raises(ImageError, match=needle):
        decode(make(payload(MIB + 12345)))


def test_empty_member_stream() -> None:
    assert decode(gzip.compress(b"")) == b""


def test_reset_reaches_the_decoder() -> None:
    src = _source([b"abc", RESET, b"xyz"])
    assert src.peek(2) == b"ab"
    with pytest.raises(_Reset):
        src.peek(18)
    assert src.read(10) == b"xyz"
    assert src.read(10) == b""


# --- zstd frame walk ---------------------------------------------------------------------------

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


# --- zero runs ---------------------------------------------------------------------------------

def test_zero_extents() -> None:
    g = GRANULE
    buf = bytearray(8 * g)
    buf[2 * g + 5] = 1  # granule 2 is data
    buf[5 * g] = 1  # granule 5
    buf[5 * g + g - 1] = 1
    assert zero_extents(buf, 0, len(buf)) == [
        (0, 2 * g, True), (2 * g, 3 * g, False), (3 * g, 5 * g, True), (5 * g, 6 * g, False),
        (6 * g, 8 * g, True)]
    assert zero_extents(buf, g, 2 * g + 100) == [(g, 2 * g, True), (2 * g, 2 * g + 100, False)]
    assert zero_extents(bytes(100), 0, 100) == [(0, 100, True)]  # short last granule
    assert zero_extents(b"\0" * 99 + b"\1", 0, 100) == [(0, 100, False)]
    assert zero_extents(b"", 0, 0) == []


def test_zero_extents_uses_an_mmap_block() -> None:
    buf = mmap.mmap(-1, 4 * MIB)
    buf[MIB:MIB + 3] = b"abc"
    assert zero_extents(buf, 0, 4 * MIB) == [
        (0, MIB, True), (MIB, MIB + GRANULE, False), (MIB + GRANULE, 4 * MIB, True)]


def test_coalesce() -> None:
    k = 1024
    ext = [(0, 64 * k, True), (64 * k, 128 * k, False), (128 * k, 192 * k, True),
           (192 * k, 256 * k, False), (256 * k, 2048 * k, True), (2048 * k, 2112 * k, False),
           (2112 * k, 2176 * k, True)]
    assert coalesce(ext, min_zero=MIB) == [
        (0, 64 * k, True),  # touches the start: may continue the previous block's run
        (64 * k, 256 * k, False),  # a short inner run is written with its data
        (256 * k, 2048 * k, True),
        (2048 * k, 2112 * k, False),
        (2112 * k, 2176 * k, True),  # touches the end
    ]
    assert coalesce([], min_zero=MIB) == []


class FakeTarget:
    """Records writes and zeroing; ``data`` is the resulting image."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.path = "/dev/fake"
        self.calls: list[tuple[str, int, int]] = []
        self.data = bytearray()
        self.syncs = 0

    def _put(self, offset: int, data: bytes) -> None:
        if len(self.data) < offset + len(data):
            self.data.extend(bytes(offset + len(data) - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def write(self, offset: int, data: Any) -> None:
        self.calls.append(("write", offset, len(data)))
        self._put(offset, bytes(data))

    def write_zeros(self, offset: int, length: int) -> None:
        self.calls.append(("write_zeros", offset, length))
        self._put(offset, bytes(length))

    def zero(self, offset: int, length: int) -> None:
        self.calls.append(("zero", offset, length))
        self._put(offset, bytes(length))

    def wipe_tables(self) -> None:
        self.calls.append(("wipe", 0, 0))

    def sync(self) -> None:
        self.syncs += 1


def feed_writer(w: Writer, image: bytes, block: int = 4 * MIB) -> None:
    buf = mmap.mmap(-1, block)
    for off in range(0, len(image), block):
        piece = image[off:off + block]
        buf[:len(piece)] = piece
        w.block(buf, off, len(piece))
    w.finish()


def test_writer_coalesces_zero_runs_across_blocks_and_holds_the_head_back() -> None:
    image = b"\x01" * HEAD + bytes(10 * MIB) + b"\x02" * MIB + bytes(100)
    t = FakeTarget()
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, image)
    assert t.calls == [
        ("wipe", 0, 0),  # both partition-table areas, before anything else
        ("write", 11 * MIB, MIB),
        ("write_zeros", 12 * MIB, 100),  # a short run at the end is written
        ("zero", HEAD, 10 * MIB),  # one call across three blocks, issued in a batch
    ]
    assert w.zero_bytes == 10 * MIB
    assert t.syncs == 1
    assert bytes(t.data[:HEAD]) == bytes(HEAD)  # the head is not written yet
    w.write_head()
    assert t.calls[-1] == ("write", 0, HEAD)
    assert bytes(t.data) == image
    assert w.offset == len(image)


def test_writer_holds_the_disks_last_mib_back_too() -> None:
    """An image the size of the disk (its GPT backup in the last sectors): until write_head,
    which runs after the checksum matched, neither end of the disk carries the image's bytes,
    whatever order the stream and the zero runs arrive in."""
    cap = 24 * MIB
    image = (b"\x01" * HEAD + os.urandom(3 * MIB) + bytes(cap - 6 * MIB) + os.urandom(MIB)
             + b"\x03" * (MIB - 512) + b"GPT BACKUP".ljust(512, b"\x04"))
    assert len(image) == cap
    for block in (4 * MIB, 3 * MIB + 4096, MIB // 2):  # tail area split across blocks or not
        t = FakeTarget(capacity=cap)
        t.data = bytearray(b"\xaa" * cap)
        w = Writer(t, url="u")  # type: ignore[arg-type]
        feed_writer(w, image, block)
        assert not any(c for c in t.calls if c[0] != "wipe" and c[1] + c[2] > cap - MIB), \
            "a write into the last MiB before the checksum"
        assert bytes(t.data[cap - MIB:]) == b"\xaa" * MIB  # (the fake does not wipe)
        w.write_head()
        assert t.calls[-2:] == [("write", cap - MIB, MIB), ("write", 0, HEAD)]  # tail, head
        assert bytes(t.data) == image


def test_writer_tail_area_of_a_short_image_and_a_restart() -> None:
    cap = 8 * MIB
    t = FakeTarget(capacity=cap)
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, b"\x05" * (7 * MIB + 100))  # reaches 100 bytes into the last MiB
    w.reset()
    feed_writer(w, b"\x06" * (7 * MIB + 50))  # the restart reaches 50: nothing of the first
    w.write_head()
    assert t.calls[-2:] == [("write", 7 * MIB, 50), ("write", 0, HEAD)]
    assert bytes(t.data) == b"\x06" * (7 * MIB + 50)


def test_writer_never_skips_zeros_it_did_not_zero() -> None:
    """Whatever the layout, the result equals the image (the fake starts with 0xAA junk)."""
    rng = __import__("random").Random(3)
    parts = []
    for _ in range(40):
        n = rng.choice([1, 100, GRANULE, GRANULE + 1, MIB - 1, MIB, 3 * MIB])
        parts.append(bytes(n) if rng.random() < 0.6 else os.urandom(n))
    image = b"".join(parts)
    t = FakeTarget()
    t.data = bytearray(b"\xaa" * (len(image) + MIB))
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, image)
    w.write_head()
    assert bytes(t.data[:len(image)]) == image


def test_writer_refuses_to_write_past_the_disk() -> None:
    t = FakeTarget(capacity=6 * MIB)
    w = Writer(t, url="u")  # type: ignore[arg-type]
    with pytest.raises(DiskError, match="larger than the disk"):
        feed_writer(w, b"\x01" * 7 * MIB)
    assert ("write", 4 * MIB, 2 * MIB) not in t.calls


def test_writer_enforces_the_declared_size() -> None:
    w = Writer(FakeTarget(), url="u", size=5 * MIB)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="declared size"):
        feed_writer(w, b"\x01" * 6 * MIB)


def test_writer_reset_starts_over() -> None:
    t = FakeTarget()
    w = Writer(t, url="u")  # type: ignore[arg-type]
    buf = mmap.mmap(-1, 4 * MIB)
    buf[:] = b"\x01" * 4 * MIB
    w.block(buf, 0, 4 * MIB)
    w.reset()
    assert (w.offset, w.head_len) == (0, 0)
    buf[:] = b"\x02" * 4 * MIB
    w.block(buf, 0, 4 * MIB)
    w.finish()
    w.write_head()
    assert bytes(t.data) == b"\x02" * 4 * MIB


# --- regular-file target -----------------------------------------------------------------------

def test_file_target_zeroes_with_fallocate_and_wipes(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xaa" * (8 * MIB))
    target = Target.open(str(path), allow_regular_file=True)
    try:
        assert (target.capacity, target.direct) == (8 * MIB, False)
        target.zero(MIB, 2 * MIB)
        target.zero(8 * MIB - 100, 100)
        assert target.touched
        content = path.read_bytes()
        assert content[:MIB] == b"\xaa" * MIB
        assert content[MIB:3 * MIB] == bytes(2 * MIB)
        assert content[-100:] == bytes(100)
        assert target.zero_method.startswith("fallocate")
        target.wipe_tables()
        content = path.read_bytes()
        assert content[:MIB] == bytes(MIB) and content[-MIB:] == bytes(MIB)
        assert content[3 * MIB:7 * MIB] == b"\xaa" * 4 * MIB
    finally:
        target.close()


def test_file_target_needs_permission(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="is not a block device"):
        Target.open(str(tmp_path))
    with pytest.raises(DiskError, match="does not exist"):
        Target.open(str(tmp_path / "nope"))


# --- ranges and resume decisions ---------------------------------------------------------------

def test_parse_content_range() -> None:
    assert parse_content_range("bytes 100-199/1000") == (100, 200, 1000)
    assert parse_content_range("bytes 0-0/*") == (0, 1, None)
    assert parse_content_range("bytes */1000") is None
    assert parse_content_range("items 1-2/3") is None
    assert parse_content_range("bytes 5-4/10") is None
    assert parse_content_range(None) is None


def test_validator_prefers_a_strong_etag() -> None:
    lm = "Mon, 23 Nov 2026 14:17:42 GMT"
    assert validator_of({"ETag": '"abc"', "Last-Modified": lm}) == '"abc"'
    assert validator_of({"etag": 'W/"abc"', "last-modified": lm}) == lm
    assert validator_of({}) is None


def started(total: int = 1000, etag: str = '"v1"') -> Transfer:
    t = Transfer("http://h/a.img")
    assert t.on_response(200, {"Content-Length": str(total), "ETag": etag}).action == "start"
    t.on_data(400)
    return t


def test_transfer_first_request() -> None:
    t = Transfer("http://h/a.img")
    assert "Range" not in t.request_headers()
    assert t.request_headers()["Accept-Encoding"] == "identity"
    assert t.on_response(200, {"Content-Length": "1000", "ETag": '"v1"'}) == Decision("start")
    assert (t.total, t.validator) == (1000, '"v1"')
    t.on_data(1000)
    assert t.complete()


def test_resume_206_with_matching_content_range_continues() -> None:
    t = started()
    assert t.request_headers()["Range"] == "bytes=400-"
    assert t.request_headers()["If-Range"] == '"v1"'
    d = t.on_response(206, {"Content-Range": "bytes 400-999/1000", "ETag": '"v1"'})
    assert d == Decision("continue")
    assert (t.offset, t.resumes, t.restarts) == (400, 1, 0)
    assert not t.complete()
    t.on_data(600)
    assert t.complete() and t.fetched == 1000


def test_resume_200_means_restart_from_zero() -> None:
    t = started()
    d = t.on_response(200, {"Content-Length": "1000", "ETag": '"v1"'})
    assert d.action == "restart" and "ignored the Range" in d.reason
    assert (t.offset, t.restarts, t.total) == (0, 1, 1000)
    assert t.fetched == 400  # bytes already fetched still count


def test_if_range_mismatch_restarts_with_the_new_file() -> None:
    t = started()
    d = t.on_response(200, {"Content-Length": "1200", "ETag": '"v2"'})
    assert d.action == "restart" and "changed on the server" in d.reason
    assert (t.total, t.validator) == (1200, '"v2"')


@pytest.mark.parametrize(("status", "headers", "action", "why"), [
    (416, {"Content-Range": "bytes */300"}, "refetch", "416"),
    (206, {"Content-Range": "bytes 0-999/1000"}, "refetch", "asked for bytes 400-"),
    (206, {"Content-Range": "bytes 400-1199/1200"}, "refetch", "changed size"),
    (206, {"Content-Range": "bytes 400-999/1000", "ETag": '"v2"'}, "refetch", "changed"),
    (206, {}, "refetch", "no Content-Range"),
    (503, {}, "retry", "HTTP 503"),
    (408, {}, "retry", "HTTP 408"),
    (429, {}, "retry", "HTTP 429"),
    (404, {}, "fatal", "HTTP 404"),
    (403, {}, "fatal", "HTTP 403"),
    (304, {}, "fatal", "unexpected HTTP 304"),
])
def test_resume_decisions(status: int, headers: dict[str, str], action: str, why: str) -> None:
    d = started().on_response(status, headers)
    assert d.action == action
    assert why in d.reason


def test_first_response_decisions() -> None:
    assert Transfer("u").on_response(404, {}).action == "fatal"
    assert Transfer("u").on_response(500, {}).action == "retry"
    t = Transfer("u")
    assert t.on_response(206, {"Content-Range": "bytes 0-9/10"}).action == "start"
    assert t.total == 10


def test_resume_without_a_validator_needs_a_checksum() -> None:
    t = Transfer("u")
    t.on_response(200, {"Content-Length": "10"})
    assert not t.can_resume()
    assert Transfer("u", allow_unvalidated_resume=True).can_resume()
    t.on_data(5)
    assert "If-Range" not in t.request_headers()


def test_restarts_are_bounded() -> None:
    t = Transfer("u", max_restarts=2)
    t.restart("one")
    t.restart("two")
    with pytest.raises(FetchError, match="three; gave up after 2 restarts") as err:
        t.restart("three")
    assert not err.value.retryable


# --- SHA256SUMS --------------------------------------------------------------------------------

SUMS = f"""\
# comment
{'a' * 64}  other.img.zst
{'B' * 64} *disk.img.zst
{'c' * 64}  ./sub/nested.img
-----BEGIN PGP SIGNATURE-----
SHA256 (bsd.img) = {'d' * 64}
SHA512 (big.img) = {'e' * 128}
{'f' * 64}  big.img
"""


def test_parse_sums() -> None:
    entries = parse_sums(SUMS)
    assert ("sha256", "b" * 64, "disk.img.zst") in entries
    assert ("sha256", "d" * 64, "bsd.img") in entries
    assert ("sha512", "e" * 128, "big.img") in entries
    assert len(entries) == 6


def test_find_checksum() -> None:
    assert find_checksum(SUMS, "disk.img.zst") == ("sha256", "b" * 64)
    assert find_checksum(SUMS, "nested.img") == ("sha256", "c" * 64)
    assert find_checksum(SUMS, "bsd.img", algo="sha256") == ("sha256", "d" * 64)
    with pytest.raises(ValueError, match=r"2 different checksums for big\.img"):
        find_checksum(SUMS, "big.img")
    assert find_checksum(SUMS, "big.img", algo="sha512") == ("sha512", "e" * 128)
    with pytest.raises(ValueError, match=r"no sha256 checksum line for missing\.img"):
        find_checksum(SUMS, "missing.img", algo="sha256")


def test_gnu_escaped_names() -> None:
    assert parse_sums(f"\\{'a' * 64}  back\\\\slash\\nnewline") == [
        ("sha256", "a" * 64, "back\\slash\nnewline")]


def test_names_and_algorithms_from_urls() -> None:
    assert image_name("http://h/images/a%20b.img.zst?x=1") == "a b.img.zst"
    assert sums_algorithm("http://h/SHA512SUMS") == "sha512"
    assert sums_algorithm("http://h/a.img.zst.sha256") == "sha256"
    assert sums_algorithm("http://h/CHECKSUMS") is None


# --- progress ----------------------------------------------------------------------------------

def test_progress_is_rate_limited() -> None:
    now = [0.0]
    seen: list[dict[str, Any]] = []
    p = Progress(interval=1.0, clock=lambda: now[0], emit=seen.append)
    for t in (0.1, 0.5, 0.99, 1.0, 1.5, 1.9, 2.0, 2.01, 3.5):
        now[0] = t
        p.tick(int(t * 1e8), 0, int(4e8))
    assert [f["bytes"] for f in seen] == [int(1e8), int(2e8), int(3.5e8)]
    assert p.tick(4, 0, force=True)
    assert len(seen) == 4


def test_progress_fields_and_line() -> None:
    f = progress_fields(250_000_000, 50_000_000, 1_000_000_000, None, 2.0)
    assert (f["percent"], f["rate"], f["eta"]) == (25.0, 125_000_000, 6.0)
    assert progress_line(f) == "provision: 250 MB written (25%), 125 MB/s, ETA 6 s"
    # No raw size: the fraction comes from the compressed bytes fetched.
    f = progress_fields(250_000_000, 50_000_000, None, 100_000_000, 2.0)
    assert f["percent"] == 50.0
    f = progress_fields(1, 1, None, None, 0.0)
    assert f["percent"] is None and "ETA" not in progress_line(f)


# --- the destination ---------------------------------------------------------------------------

FAMILY = Family("vda", "252:0", (Partition("vda1", 1, 0, "252:1"),),
                (Holder("dm-0", "vda1", "253:0", "vg0-root"),))
SWAPS = "Filename Type Size Used Priority\n"


@pytest.mark.parametrize(("mounts", "mountinfo", "swaps", "family", "problem"), [
    ("/dev/vdb1 /mnt ext4 rw 0 0\nproc /proc proc rw 0 0\n", "", "", Family("vda"), None),
    ("/dev/vda1 /mnt ext4 rw 0 0\n", "", "", FAMILY, "/dev/vda1 is mounted on /mnt"),
    ("/dev/vda1 /mnt ext4 ro 0 0\n", "", "", FAMILY, "/dev/vda1 is mounted on /mnt"),  # ro too
    ("/dev/disk/by-uuid/x /a\\040b xfs rw 0 0", "", "", FAMILY,
     "/dev/disk/by-uuid/x is mounted on /a b"),
    ("/dev/root / ext4 rw 0 0", "22 1 252:1 / / rw,relatime - ext4 /dev/root rw\n", "", FAMILY,
     "/dev/vda1 is mounted on /"),
    ("", "", SWAPS + "/dev/vda1 partition 1024 0 -2\n", Family("vda", "252:0"),
     "/dev/vda1 is in use as swap"),
    ("", "", "", FAMILY,
     "vda1 is held by dm-0 (vg0-root) (LVM/MD/device-mapper): release it first"),
    ("/dev/dm-0 / xfs ro 0 0", "", "", FAMILY, "/dev/dm-0 is mounted on /"),  # the mount first
])
def test_destination_conflict(mounts: str, mountinfo: str, swaps: str, family: Family,
                              problem: str | None) -> None:
    links = {"/dev/disk/by-uuid/x": "/dev/vda"}
    usage = disk_usage(family, mounts=mounts, mountinfo=mountinfo, swaps=swaps,
                       resolve=lambda p: links.get(p, p))
    assert destination_conflict(usage) == problem


def test_check_destination(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not exist"):
        check_destination(str(tmp_path / "sdz"))
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    with pytest.raises(DiskError, match="not a block device"):
        check_destination(str(regular))
    check_destination(str(regular), allow_regular_file=True)
    with pytest.raises(DiskError, match="not a block device"):
        check_destination("/dev/null")


def test_zeroes_offloaded(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    disk = sysfs / "devices" / "vda"
    (disk / "queue").mkdir(parents=True)
    (disk / "vda1").mkdir()
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / "252:0").symlink_to(disk)
    (sysfs / "dev" / "block" / "252:1").symlink_to(disk / "vda1")
    (disk / "queue" / "write_zeroes_max_bytes").write_text("33550336\n")
    assert zeroes_offloaded(sysfs, os.makedev(252, 0)) is True
    assert zeroes_offloaded(sysfs, os.makedev(252, 1)) is True  # a partition: its disk's queue
    (disk / "queue" / "write_zeroes_max_bytes").write_text("0\n")
    assert zeroes_offloaded(sysfs, os.makedev(252, 0)) is False
    assert zeroes_offloaded(sysfs, os.makedev(8, 0)) is None
