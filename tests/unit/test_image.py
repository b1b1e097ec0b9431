from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pyinit.errors import DiskError, ImageError
from pyinit.image import HEAD, check_destination, sniff, write_stream


def payload(size: int = 5 * HEAD + 12345) -> bytes:
    # Realistic-ish: a non-zero "partition table" head, data, and a zero run.
    block = hashlib.sha256(b"seed").digest() * 4096
    data = (block * (size // len(block) + 1))[:size]
    return data[: size // 2] + bytes(size // 4) + data[size // 2 + size // 4:]


def chunked(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _flip(data: bytes, at: int) -> bytes:
    at = min(at, len(data) // 2)
    return data[:at] + bytes(b ^ 0x5A for b in data[at:at + 16]) + data[at + 16:]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\xaa" * (8 * HEAD))  # old contents that must never survive a failure
    fd = os.open(path, os.O_RDWR)
    try:
        yield path, fd
    finally:
        os.close(fd)


@pytest.mark.parametrize("compress", [lambda d: d, gzip.compress,
                                      lambda d: zstandard.ZstdCompressor().compress(d),
                                      lambda d: gzip.compress(d[:777]) + gzip.compress(d[777:])])
def test_write_stream_formats(disk: tuple[Path, int], compress) -> None:  # type: ignore[no-untyped-def]
    path, fd = disk
    data = payload()
    kind, written, digest = write_stream(chunked(compress(data)), fd, url="u", device="d",
                                         size=1 << 40)
    assert written == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert path.read_bytes()[: len(data)] == data
    assert kind in ("raw", "gzip", "zstd")


def test_sniff() -> None:
    assert sniff(b"\x1f\x8b\x08") == "gzip"
    assert sniff(b"\x28\xb5\x2f\xfd") == "zstd"
    assert sniff(b"\xeb\x63\x90") == "raw"


@pytest.mark.parametrize(("stream", "needle"), [
    (lambda d: gzip.compress(d)[:-100], "truncated gzip"),
    (lambda d: gzip.compress(d) + b"GARBAGE!", "trailing garbage"),
    (lambda d: zstandard.ZstdCompressor().compress(d)[:-50], "truncated zstd"),
    (lambda d: zstandard.ZstdCompressor().compress(d) + b"xx", "trailing garbage"),
    (lambda d: _flip(gzip.compress(d), 2000), "corrupt gzip"),
    # Without the optional frame checksum zstd cannot notice flipped literals; images made by
    # `pyinit image` and `zstd` (default) carry it. The image checksum (#3) covers the rest.
    (lambda d: _flip(zstandard.ZstdCompressor(write_checksum=True).compress(d), 3000),
     "corrupt zstd"),
])
def test_bad_streams_fail_and_leave_no_valid_looking_disk(disk: tuple[Path, int], stream,  # type: ignore[no-untyped-def]
                                                         needle: str) -> None:
    path, fd = disk
    with pytest.raises(ImageError, match=needle):
        write_stream(chunked(stream(payload())), fd, url="u", device="d", size=8 * HEAD)
    content = path.read_bytes()
    # The first MiB (partition table, boot code) is never the new image's, and after a write
    # began both partition-table areas are zeroed.
    assert content[:HEAD] in (b"\xaa" * HEAD, bytes(HEAD))
    if content[:HEAD] == bytes(HEAD):
        assert content[-HEAD:] == bytes(HEAD)


def test_first_mib_is_written_last(disk: tuple[Path, int]) -> None:
    path, fd = disk
    data = payload()
    seen_head_during_stream: list[bytes] = []

    def spy() -> Iterator[bytes]:
        for i, chunk in enumerate(chunked(data)):
            if i == len(data) // 100_000 - 1:
                seen_head_during_stream.append(path.read_bytes()[:16])
            yield chunk

    write_stream(spy(), fd, url="u", device="d", size=1 << 40)
    assert seen_head_during_stream == [b"\xaa" * 16]
    assert path.read_bytes()[:HEAD] == data[:HEAD]


def test_image_larger_than_disk(disk: tuple[Path, int]) -> None:
    path, fd = disk
    with pytest.raises(DiskError, match="larger than the disk"):
        write_stream(chunked(payload(12 * HEAD)), fd, url="u", device="d", size=8 * HEAD)
    assert path.read_bytes()[:HEAD] == bytes(HEAD)


def test_empty_image(disk: tuple[Path, int]) -> None:
    _, fd = disk
    with pytest.raises(ImageError, match="empty"):
        write_stream(iter([]), fd, url="u", device="d", size=8 * HEAD)


def test_check_destination(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not exist"):
        check_destination(str(tmp_path / "sdz"))
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    with pytest.raises(DiskError, match="not a block device"):
        check_destination(str(regular))
    check_destination(str(regular), allow_regular_file=True)


def test_check_destination_refuses_mounted_disk(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    dev = tmp_path / "vda"
    dev.write_bytes(b"")
    mounts.write_text("/dev/vda1 /mnt ext4 rw 0 0\n")
    with pytest.raises(DiskError, match="/dev/vda1 is mounted"):
        check_destination(str(dev), mounts_file=mounts, allow_regular_file=True)
    mounts.write_text("/dev/vdb1 /mnt ext4 rw 0 0\n")
    check_destination(str(dev), mounts_file=mounts, allow_regular_file=True)
