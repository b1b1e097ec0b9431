"""pyinit.image.readback: the written range read again and hashed, on a regular file (the whole
writes with verify=True are in test_image_pipeline.py)."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

import pytest

from pyinit.errors import DiskError
from pyinit.image.pipeline import BLOCK
from pyinit.image.readback import readback_sha256


def test_the_hash_of_what_is_on_the_disk(tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK + 12345)  # more blocks than buffers, and a short last one
    disk = tmp_path / "disk.img"
    disk.write_bytes(data + b"past the image")
    buffers = [mmap.mmap(-1, BLOCK) for _ in range(2)]
    assert readback_sha256(str(disk), len(data), direct=False, buffers=buffers) == \
        hashlib.sha256(data).hexdigest()


def test_a_disk_shorter_than_the_image_fails_in_the_reader_and_is_raised(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(BLOCK + 100))
    with pytest.raises(DiskError, match=rf"read-back ended at byte {BLOCK + 100} of "
                                        rf"{2 * BLOCK}"):
        readback_sha256(str(disk), 2 * BLOCK, direct=False)


def test_a_missing_disk(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="cannot open for read-back"):
        readback_sha256(str(tmp_path / "gone"), 10, direct=False)
