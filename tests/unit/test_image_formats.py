"""pyinit.image.formats: the format of an image from its magic bytes."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
from collections.abc import Callable
from typing import Any

import pytest
import zstandard

from pyinit.image.formats import sniff
from pyinit.units import MIB


def payload(size: int = 5 * MIB + 12345) -> bytes:
    # Realistic-ish: a non-zero "partition table" head, data, and a zero run.
    block = hashlib.sha256(b"seed").digest() * 4096
    data = (block * (size // len(block) + 1))[:size]
    return data[: size // 2] + bytes(size // 4) + data[size // 2 + size // 4:]


def zstd(data: bytes, **kw: Any) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(data)


def flip(data: bytes, at: int) -> bytes:
    at = min(at, len(data) // 2)
    return data[:at] + bytes(b ^ 0x5A for b in data[at:at + 16]) + data[at + 16:]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda d: d,
    "gzip": gzip.compress,
    "zstd": lambda d: zstd(d, write_checksum=True),
    "xz": lambda d: lzma.compress(d, preset=1),
    "bzip2": lambda d: bz2.compress(d, 1),
}


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
