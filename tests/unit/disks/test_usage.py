"""pyinit.disks.usage: what mounts, swaps on or holds a disk, from /proc text and a fake sysfs;
a device's kernel name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyinit.disks.usage import (
    Family,
    Holder,
    Partition,
    Usage,
    Use,
    check_device,
    device_usage,
    disk_usage,
    kernel_name,
    read_family,
)
from pyinit.errors import DiskError

from .fakes import GIB, FakeSys, write_attr

# --- what uses a disk ------------------------------------------------------------------------

PARTS = (Partition("vda1", 1, 0, "254:1"), Partition("vda2", 2, 0, "254:2"))
PLAIN = Family("vda", "254:0", PARTS)
# LVM on MD on vda2: dm-0 is two levels above the disk
STACKED = Family("vda", "254:0", PARTS, (Holder("md127", "vda2", "9:127"),
                                          Holder("dm-0", "md127", "253:0", "vg0-root")))
SWAPS = "Filename Type Size Used Priority\n"
LINKS = {"/dev/disk/by-uuid/x": "/dev/vda1", "/dev/mapper/vg0-root": "/dev/dm-0"}
HELD = (Use("holder", "md127", "vda2", label="md127"),
        Use("holder", "dm-0", "md127", label="dm-0 (vg0-root)"))


def mount(device: str, where: str, *, ro: bool = False, fstype: str = "ext4") -> Use:
    return Use("mount", device, where, read_only=ro, fstype=fstype)


@pytest.mark.parametrize(("family", "mounts", "mountinfo", "swaps", "uses"), [
    (PLAIN, "proc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n", "", "", ()),
    (PLAIN, "/dev/vda1 /mnt ext4 rw,relatime 0 0\n", "", "", (mount("/dev/vda1", "/mnt"),)),
    (PLAIN, "/dev/vda1 /mnt ext4 ro,relatime 0 0\n", "", "",
     (mount("/dev/vda1", "/mnt", ro=True),)),
    (PLAIN, "/dev/vda /mnt/my\\040disk\\011x xfs rw 0 0\n", "", "",       # \040 space, \011 tab
     (mount("/dev/vda", "/mnt/my disk\tx", fstype="xfs"),)),
    (PLAIN, "/dev/vdb1 /mnt ext4 rw 0 0\n/dev/vdaa1 /x ext4 rw 0 0\n", "", "", ()),  # others
    (PLAIN, "/dev/disk/by-uuid/x /a\\040b xfs rw 0 0\n", "", "",          # through a link
     (mount("/dev/disk/by-uuid/x", "/a b", fstype="xfs"),)),
    # /dev/root names no disk: mountinfo's major:minor does; the same mount point only once
    (PLAIN, "/dev/root / ext4 rw 0 0\n/dev/vda2 /boot ext4 rw 0 0\n",
     "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
     "23 22 254:2 / /boot rw,relatime shared:2 - ext4 /dev/vda2 rw\n", "",
     (mount("/dev/vda2", "/boot"), mount("/dev/vda1", "/"))),
    # a bind mount listed in mounts under an alias: found by major:minor, escapes undone
    (PLAIN, "/dev/root /srv/a\\040b ext4 rw 0 0\n",
     "31 22 254:2 /data /srv/a\\040b rw,relatime master:3 - ext4 /dev/root rw\n", "",
     (mount("/dev/vda2", "/srv/a b"),)),
    # read-only per mount (bind -o ro) or per superblock
    (PLAIN, "", "40 1 254:1 / /ro ro,relatime - ext4 /dev/vda1 rw\n"
                "41 1 254:2 / /sb rw,relatime shared:7 - ext4 /dev/vda2 ro,errors=remount-ro\n",
     "", (mount("/dev/vda1", "/ro", ro=True), mount("/dev/vda2", "/sb", ro=True))),
    (PLAIN, "", "42 1 254:16 / /other rw - ext4 /dev/vdb rw\n", "", ()),  # another disk
    (PLAIN, "", "", SWAPS + "/dev/vda2 partition 1048572 0 -2\n/dev/vdb1 partition 1 0 -3\n",
     (Use("swap", "/dev/vda2"),)),
    (PLAIN, "", "", SWAPS + "/swapfile file 1024 0 -2\n", ()),            # a file: not a disk
    # stacked devices: their mounts and swaps are the disk's, and they are listed as holders
    (STACKED, "", "", "", HELD),
    (STACKED, "/dev/mapper/vg0-root / xfs rw 0 0\n", "", SWAPS + "/dev/md127 partition 1 0 -2\n",
     (mount("/dev/mapper/vg0-root", "/", fstype="xfs"), Use("swap", "/dev/md127"), *HELD)),
    (STACKED, "", "50 1 253:0 / /srv rw - xfs /dev/mapper/vg0-root rw\n", "",
     (mount("/dev/dm-0", "/srv", fstype="xfs"), *HELD)),
    # sysfs lists no partitions: the kernel's partition names still count
    (Family("nvme0n1"), "/dev/nvme0n1p2 / ext4 rw 0 0\n", "", "",
     (mount("/dev/nvme0n1p2", "/"),)),
    (Family("nvme0n"), "/dev/nvme0n1p2 / ext4 rw 0 0\n", "", "", ()),
    (Family("loop1"), "/dev/loop10 /a ext4 rw 0 0\n/dev/loop1p1 /b ext4 rw 0 0\n", "", "",
     (mount("/dev/loop1p1", "/b"),)),                                    # loop10 is not loop1's
    (Family("sda"), "/dev/sda12 /a ext4 rw 0 0\n", "", "", (mount("/dev/sda12", "/a"),)),
])
def test_disk_usage(family: Family, mounts: str, mountinfo: str, swaps: str,
                    uses: tuple[Use, ...]) -> None:
    usage = disk_usage(family, mounts=mounts, mountinfo=mountinfo, swaps=swaps,
                       resolve=lambda p: LINKS.get(p, p))
    assert usage.uses == uses


@pytest.mark.parametrize(("uses", "write", "read"), [
    ((), (), ()),
    ((mount("/dev/vda1", "/mnt"),), (mount("/dev/vda1", "/mnt"),), (mount("/dev/vda1", "/mnt"),)),
    ((mount("/dev/vda1", "/mnt", ro=True),), (mount("/dev/vda1", "/mnt", ro=True),), ()),
    ((Use("swap", "/dev/vda2"),), (Use("swap", "/dev/vda2"),), (Use("swap", "/dev/vda2"),)),
    (HELD, HELD, ()),                                      # an idle LV reads the same data
    ((mount("/dev/dm-0", "/", ro=True), *HELD), (mount("/dev/dm-0", "/", ro=True), *HELD), ()),
])
def test_usage_conflicts(uses: tuple[Use, ...], write: tuple[Use, ...],
                         read: tuple[Use, ...]) -> None:
    usage = Usage(uses)
    assert (usage.conflicts("write"), usage.conflicts("read")) == (write, read)


@pytest.mark.parametrize(("use", "sentence", "brief"), [
    (mount("/dev/vda1", "/a b"), "/dev/vda1 is mounted on /a b", "/dev/vda1 on /a b"),
    (Use("swap", "/dev/vda2"), "/dev/vda2 is in use as swap", "/dev/vda2 is swap"),
    (HELD[1], "md127 is held by dm-0 (vg0-root)", "dm-0 (vg0-root)"),
])
def test_use_words(use: Use, sentence: str, brief: str) -> None:
    assert (use.sentence, use.brief) == (sentence, brief)


def test_usage_as_the_inventory_shows_it() -> None:
    usage = Usage((mount("/dev/vda1", "/run/live", ro=True, fstype="iso9660"),
                   Use("swap", "/dev/vda2"), *HELD))
    assert usage.mounted == ("/dev/vda1 on /run/live", "/dev/vda2 is swap")
    assert usage.held == ("md127", "dm-0 (vg0-root)")
    assert usage.iso9660 and not Usage(HELD).iso9660


def test_read_family_walks_holders_two_levels_deep(stacked: FakeSys) -> None:
    family = read_family(stacked.sysfs / "block", "vda")
    assert family == Family(
        "vda", "254:0", (Partition("vda1", 1, GIB, "254:1"),
                         Partition("vda2", 2, 2 * GIB, "254:2")),
        (Holder("md127", "vda2", "9:127"), Holder("dm-0", "md127", "253:0", "vg0-root")))
    # a partition has its own family: what is stacked on it
    part = read_family(stacked.sysfs / "class" / "block", "vda2")
    assert [h.label for h in part.holders] == ["md127", "dm-0 (vg0-root)"]
    assert read_family(stacked.sysfs / "block", "nope") == Family("nope")


def test_device_usage_reads_proc_and_sysfs(stacked: FakeSys, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write_attr(proc / "self" / "mounts", "/dev/root / ext4 rw 0 0")
    write_attr(proc / "self" / "mountinfo", "22 1 254:1 / / rw - ext4 /dev/root rw")
    write_attr(proc / "swaps", SWAPS + "/dev/vda2 partition 1 0 -2")
    usage = device_usage("vda", sysfs=stacked.sysfs, proc=proc)
    assert usage.uses == (mount("/dev/vda1", "/"), Use("swap", "/dev/vda2"), *HELD)
    # a partition: only what is on it
    assert device_usage("vda2", sysfs=stacked.sysfs, proc=proc).uses == \
        (Use("swap", "/dev/vda2"), *HELD)
    # no /proc at all: only the holders
    assert device_usage("vda", sysfs=stacked.sysfs, proc=tmp_path / "none").uses == HELD


def test_kernel_name(stacked: FakeSys, tmp_path: Path) -> None:
    link = tmp_path / "by-id-link"
    link.symlink_to("/dev/whatever")
    assert kernel_name(str(link), rdev=os.makedev(253, 0), sysfs=stacked.sysfs) == "dm-0"
    assert kernel_name(str(link), rdev=os.makedev(8, 0), sysfs=stacked.sysfs) == "whatever"


def test_kernel_name_follows_links_under_dev(tmp_path: Path) -> None:
    (tmp_path / "nvme0n1").write_text("")
    (tmp_path / "disk" / "by-id").mkdir(parents=True)
    (tmp_path / "disk" / "by-id" / "nvme-X").symlink_to("../../nvme0n1")
    assert kernel_name("/dev/disk/by-id/nvme-X", dev=tmp_path) == "nvme0n1"
    assert kernel_name("/dev/sda", dev=tmp_path) == "sda"


def test_check_device_refuses_in_one_line_and_lets_allowed_files_through(tmp_path: Path) -> None:
    never = lambda usage: pytest.fail("no usage check for a non-block device")  # noqa: E731
    with pytest.raises(DiskError, match=r"nope: does not exist$"):
        check_device(str(tmp_path / "nope"), never)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DiskError, match=r"loop: cannot stat: Too many levels of symbolic links$"):
        check_device(str(tmp_path / "loop"), never)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DiskError, match=r"file: is not a block device$"):
        check_device(str(tmp_path / "file"), never)
    assert check_device(str(tmp_path / "file"), never, allow_regular_file=True) is False
