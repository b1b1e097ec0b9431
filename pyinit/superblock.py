"""A filesystem's size as its own tools report it, read from its superblock (issue #15).

``statvfs`` counts what is left once the filesystem's own metadata is set aside (ext4's inode
tables and journal, XFS's log): it called a filesystem ``3956 MiB`` that dumpe2fs calls
``4029 MiB``. The operator holds the grow line against the partition and the filesystem's tools,
so the size given is the one the superblock declares::

    ext2/3/4  s_blocks_count (lo, + hi with the 64bit feature) x (1024 << s_log_block_size)
              = dumpe2fs "Block count" x "Block size"
    xfs       sb_dblocks x sb_blocksize = xfs_info's data "blocks=" x "bsize="
    btrfs     total_bytes = btrfs inspect-internal dump-super's total_bytes

Read here, by hand, rather than by running dumpe2fs or xfs_db: the initramfs carries neither
(only resize2fs and xfs_growfs), each parser is three fields of a documented layout, and pure
functions are tested against superblocks that mkfs made (tests/integration/test_superblock.py).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

from pyinit.errors import DiskError

EXT_MAGIC = 0xEF53
EXT_INCOMPAT_64BIT = 0x80
XFS_MAGIC = b"XFSB"
BTRFS_MAGIC = b"_BHRfS_M"


def ext_size(sb: bytes) -> int:
    """Bytes of an ext2/3/4 filesystem from its superblock (the 1024 bytes at byte 1024 of the
    device). Pure; ValueError when it is not one."""
    if len(sb) < 0x154 or struct.unpack_from("<H", sb, 0x38)[0] != EXT_MAGIC:
        raise ValueError("no ext2/3/4 superblock (magic 0xEF53 at byte 1080)")
    blocks = struct.unpack_from("<I", sb, 0x04)[0]
    if struct.unpack_from("<I", sb, 0x60)[0] & EXT_INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
    log_block = struct.unpack_from("<I", sb, 0x18)[0]
    if log_block > 6:  # 64 KiB is the largest ext4 block
        raise ValueError(f"ext superblock: block size 1024 << {log_block}")
    return int(blocks * (1024 << log_block))


def xfs_size(sb: bytes) -> int:
    """Bytes of an XFS data section from its superblock (sector 0). Pure."""
    if len(sb) < 16 or sb[:4] != XFS_MAGIC:
        raise ValueError("no XFS superblock (XFSB at byte 0)")
    block = struct.unpack_from(">I", sb, 4)[0]
    dblocks = struct.unpack_from(">Q", sb, 8)[0]
    return int(block * dblocks)


def btrfs_size(sb: bytes) -> int:
    """Bytes of a btrfs filesystem (all its devices) from its superblock (at 64 KiB). Pure."""
    if len(sb) < 0x78 or sb[0x40:0x48] != BTRFS_MAGIC:
        raise ValueError("no btrfs superblock (_BHRfS_M at byte 65600)")
    return int(struct.unpack_from("<Q", sb, 0x70)[0])


# fstype -> (where its superblock is, how many bytes to read, the parser)
LAYOUT: dict[str, tuple[int, int, Callable[[bytes], int]]] = {
    "ext2": (1024, 1024, ext_size), "ext3": (1024, 1024, ext_size),
    "ext4": (1024, 1024, ext_size), "xfs": (0, 512, xfs_size),
    "btrfs": (64 * 1024, 4096, btrfs_size),
}


def read_size(device: str, fstype: str) -> int | None:
    """The size of the ``fstype`` filesystem on ``device`` as its superblock declares it; None
    for a type not in :data:`LAYOUT`. Read with the page cache's copy dropped first
    (``POSIX_FADV_DONTNEED``): blkid read the old superblock through it, and XFS writes its own
    past it. Call it with the filesystem unmounted: a mounted XFS keeps its newest superblock in
    its own buffers. :class:`DiskError` when the device cannot be read or holds no such
    superblock."""
    layout = LAYOUT.get(fstype)
    if layout is None:
        return None
    offset, length, parse = layout
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(device, f"cannot read its {fstype} superblock: {exc.strerror}") from exc
    try:
        with contextlib.suppress(OSError):  # advice only: a read of what is cached still helps
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        data = os.pread(fd, length, offset)
    except OSError as exc:
        raise DiskError(device, f"cannot read its {fstype} superblock: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        return parse(data)
    except ValueError as exc:
        raise DiskError(device, str(exc)) from exc
