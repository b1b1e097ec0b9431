"""pyinit.superblock against superblocks made by the host's mkfs (on files: no root, no loop
devices), each size checked against the filesystem's own tool: dumpe2fs's block count x block
size, xfs_db's dblocks x blocksize. No btrfs: the host has no mkfs.btrfs (btrfs-progs is not
in the set-up); its parser is checked on hand-made bytes in tests/unit/test_superblock.py.

Needs e2fsprogs and xfsprogs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyinit import superblock
from tests.hostreq import need

pytestmark = pytest.mark.integration

MIB = 1 << 20


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stderr}"
    return done.stdout


def sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def dumpe2fs_size(image: Path) -> int:
    fields = dict(line.split(":", 1) for line in sh("dumpe2fs", "-h", str(image)).splitlines()
                  if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def xfs_db_size(image: Path) -> int:
    out = sh("xfs_db", "-r", "-f", "-c", "sb 0", "-c", "p dblocks blocksize", str(image))
    fields = dict(line.split(" = ") for line in out.splitlines())
    return int(fields["dblocks"]) * int(fields["blocksize"])


@pytest.mark.parametrize(("fstype", "options"), [
    ("ext4", []),                        # 4 KiB blocks, 64bit
    ("ext4", ["-O", "^64bit"]),          # the high word of the block count unused
    ("ext3", []),
    ("ext2", ["-b", "1024"]),            # 1 KiB blocks: the superblock in block 1
])
def test_ext_sizes_match_dumpe2fs(tmp_path: Path, fstype: str, options: list[str]) -> None:
    need("mke2fs", "dumpe2fs", "resize2fs")
    length = 72 * MIB + 12345  # not a whole number of blocks
    image = sparse(tmp_path / "fs.img", length)
    sh("mke2fs", "-q", "-F", "-t", fstype, *options, str(image))
    size = superblock.read_size(str(image), fstype)
    assert size == dumpe2fs_size(image)
    assert size is not None and length - MIB < size <= length
    # grown offline, as resize2fs does it online: the new count is read, not a cached one
    os.truncate(image, 150 * MIB)
    sh("resize2fs", str(image))
    assert superblock.read_size(str(image), fstype) == dumpe2fs_size(image) == 150 * MIB


def test_xfs_size_matches_xfs_db(tmp_path: Path) -> None:
    need("mkfs.xfs", "xfs_db")
    image = sparse(tmp_path / "fs.img", 320 * MIB)  # mkfs.xfs wants 300 MB at least
    sh("mkfs.xfs", "-q", "-f", str(image))
    size = superblock.read_size(str(image), "xfs")
    assert size == xfs_db_size(image) == 320 * MIB
    # the data section only: an external-size log or a smaller -d size shows
    sh("mkfs.xfs", "-q", "-f", "-d", "size=310m", str(image))
    assert superblock.read_size(str(image), "xfs") == xfs_db_size(image) == 310 * MIB
