"""Zero runs in a decoded block: which granules are all zeros, and which runs are long enough to
be zeroed (``BLKZEROOUT``/``fallocate``) rather than written. Pure."""

from __future__ import annotations

import mmap

from pyinit.units import MIB

GRANULE = 64 << 10  # zero detection granularity
MIN_ZERO_RUN = MIB  # shorter zero runs between data are written with the data

ZERO_GRANULE = bytes(GRANULE)

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
