"""pyinit.image.zeros: zero runs in a block, and which of them are zeroed rather than written."""

from __future__ import annotations

import mmap

from pyinit.image.zeros import GRANULE, coalesce, zero_extents
from pyinit.units import MIB


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
