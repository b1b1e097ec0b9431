"""pyinit.superblock: the parsers on hand-made superblocks (mkfs's own, in
tests/integration/test_superblock.py), and the read from a device."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyinit import superblock
from pyinit.errors import DiskError

MIB = 1 << 20


def ext_sb(blocks: int, log_block: int, *, bit64: bool, hi_garbage: int = 0) -> bytes:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x04, blocks & 0xFFFF_FFFF)
    struct.pack_into("<I", sb, 0x18, log_block)
    struct.pack_into("<H", sb, 0x38, 0xEF53)
    struct.pack_into("<I", sb, 0x60, 0x242 | (0x80 if bit64 else 0))  # filetype, extents, flex_bg
    struct.pack_into("<I", sb, 0x150, blocks >> 32 if bit64 else hi_garbage)
    return bytes(sb)


def test_ext_size_block_count_times_block_size() -> None:
    assert superblock.ext_size(ext_sb(1_031_424, 2, bit64=True)) == 1_031_424 * 4096  # 4029 MiB
    assert superblock.ext_size(ext_sb(65536, 0, bit64=False)) == 64 * MIB  # 1 KiB blocks
    # 16 TiB and more: the high 32 bits count only with the 64bit feature
    assert superblock.ext_size(ext_sb(5 << 32, 2, bit64=True)) == (5 << 32) * 4096
    assert superblock.ext_size(ext_sb(1000, 2, bit64=False, hi_garbage=7)) == 1000 * 4096


def test_xfs_and_btrfs_sizes() -> None:
    xfs = b"XFSB" + struct.pack(">IQ", 4096, 262_144) + bytes(496)
    assert superblock.xfs_size(xfs) == 1 << 30
    btrfs = bytearray(4096)
    btrfs[0x40:0x48] = b"_BHRfS_M"
    struct.pack_into("<QQ", btrfs, 0x70, 5 << 30, 123)  # total_bytes, bytes_used
    assert superblock.btrfs_size(bytes(btrfs)) == 5 << 30


@pytest.mark.parametrize(("parse", "message"), [
    (superblock.ext_size, "no ext2/3/4 superblock"),
    (superblock.xfs_size, "no XFS superblock"),
    (superblock.btrfs_size, "no btrfs superblock"),
])
def test_not_a_superblock(parse: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(bytes(4096))  # type: ignore[operator]


def test_read_size_at_each_types_offset(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    data = bytearray(128 * 1024)
    data[1024:2048] = ext_sb(16384, 2, bit64=True)
    dev.write_bytes(data)
    assert superblock.read_size(str(dev), "ext4") == 64 * MIB
    assert superblock.read_size(str(dev), "swap") is None
    with pytest.raises(DiskError, match=r"^disk .*/dev: no XFS superblock"):
        superblock.read_size(str(dev), "xfs")
    data[0x10040:0x10048] = b"_BHRfS_M"
    struct.pack_into("<Q", data, 0x10070, 3 << 30)
    dev.write_bytes(data)
    assert superblock.read_size(str(dev), "btrfs") == 3 << 30
