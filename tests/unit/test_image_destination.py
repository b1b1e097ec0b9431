"""pyinit.image.destination: the checks before the first byte and the opened target (on a
regular file: zeroing with fallocate, wiping the partition-table areas)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyinit.disks.usage import Family, Holder, Partition, disk_usage
from pyinit.errors import DiskError
from pyinit.image.destination import (
    Target,
    check_destination,
    destination_conflict,
    zeroes_offloaded,
)
from pyinit.units import MIB


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
