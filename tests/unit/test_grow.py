"""Growing after the write: partition names, the wait for nodes, the table on bytes, LVM and
filesystem commands (exact argv lists), and the whole step with fakes.

Tables are built in memory (tests/unit/test_parttable.py's builders) and written to files in
tmp_path; /dev and /sys are trees in tmp_path; mount/umount are faked; commands are recorded.
"""

from __future__ import annotations

import errno
import io
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from pyinit import grow, log, parttable, proc, syscalls
from pyinit.action import parse_action
from pyinit.errors import CommandError, ConfigError, DiskError
from pyinit.grow import GrowPlan, plan_grow
from pyinit.parttable import Partition, PartitionTable
from tests.unit.fakes import FakeClock

from ..conftest import Recorder
from .test_parttable import GptPart, extended_disk, gpt_disk, mbr_sector

MIB = 1 << 20
LVM = "/usr/sbin/lvm"
LVM_CONFIG = grow.lvm.LVM_CONFIG


def action(**fields: Any) -> Any:
    return parse_action({"action": "writeImage", "sourceImage": "http://s/i.img",
                         "destinationDevice": "/dev/vda", **fields})


# --- partition names and the wait -----------------------------------------------------------------

@pytest.mark.parametrize(("disk", "expected"), [
    ("/dev/sda", "/dev/sda1"), ("/dev/vda", "/dev/vda1"), ("/dev/xvdb", "/dev/xvdb1"),
    ("/dev/nvme0n1", "/dev/nvme0n1p1"), ("/dev/mmcblk0", "/dev/mmcblk0p1"),
    ("/dev/loop0", "/dev/loop0p1"), ("/dev/md0", "/dev/md0p1"),
])
def test_partition_path(disk: str, expected: str) -> None:
    assert grow.partition_path(disk, 1) == expected
    assert grow.partition_path(disk, 12) == expected[:-1] + "12"


def _kernel_shows(dev: Path, sysfs: Path, disk: str, part: str) -> None:
    (sysfs / "class" / "block" / disk / part).mkdir(parents=True, exist_ok=True)
    (dev / part).write_text("")


def test_wait_for_partitions_until_sysfs_and_node_exist(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    (dev / "nvme0n1").write_text("")
    clock = FakeClock()
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock.sleep(s)
        if len(sleeps) == 3:
            _kernel_shows(dev, sysfs, "nvme0n1", "nvme0n1p1")
        if len(sleeps) == 5:
            _kernel_shows(dev, sysfs, "nvme0n1", "nvme0n1p3")

    got = grow.wait_for_partitions("/dev/nvme0n1", [1, 3], dev=dev, sysfs=sysfs, clock=clock,
                                   sleep=sleep)
    assert got == ["/dev/nvme0n1p1", "/dev/nvme0n1p3"]
    assert len(sleeps) == 5


def test_wait_for_partitions_times_out_naming_what_exists(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    _kernel_shows(dev, sysfs, "sda", "sda1")
    (sysfs / "class" / "block" / "sda" / "sda2").mkdir()  # in sysfs, but no node yet
    (sysfs / "class" / "block" / "sda" / "queue").mkdir()
    clock = FakeClock()
    with pytest.raises(DiskError) as info:
        grow.wait_for_partitions("/dev/sda", [2], dev=dev, sysfs=sysfs, timeout=2, clock=clock,
                                 sleep=clock.sleep)
    assert str(info.value) == ("disk /dev/sda: partition(s) sda2 did not appear within 2 s "
                               "(the kernel shows: sda1, sda2)")
    assert 2 <= clock.now < 2.2


# --- planning -----------------------------------------------------------------------------------

def gpt_file(tmp_path: Path, grown_to: int, size: int = 8 * MIB) -> Path:
    """A GPT image of ``size`` (partitions 1, 2, 5 as in test_parttable's three_part_gpt, but 5
    ending at the last usable LBA) extended to ``grown_to`` bytes."""
    sectors = size // 512
    disk = gpt_disk(sectors, [GptPart(2048, 4095), GptPart(4096, 8191),
                              GptPart(10240, sectors - 34)], slots=[0, 1, 4])
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(disk))
    os.truncate(path, grown_to)
    return path


def table_of(path: Path) -> PartitionTable:
    with open(path, "rb") as f:
        table = parttable.parse(f, disk_size=path.stat().st_size)
    assert table is not None
    return table


def test_plan_gpt_last(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 16 * MIB)
    plan = plan_grow(table_of(path), 16 * MIB, "last")
    sectors = 16 * MIB // 512
    assert plan == GrowPlan("gpt", 5, 512, 16 * MIB, 10240 * 512, (8 * MIB // 512 - 33) * 512,
                            (sectors - 33) * 512, old_backup_lba=8 * MIB // 512 - 1,
                            new_backup_lba=sectors - 1, old_last_usable_lba=8 * MIB // 512 - 34,
                            new_last_usable_lba=sectors - 34)
    assert plan.changed
    assert plan.new_size - plan.old_size == 8 * MIB


@pytest.mark.parametrize(("which", "message"), [
    (4, "growPartition: 4: no such partition (the image has 1, 2, 5)"),
    (1, "growPartition: 1: partition 2 lies after it (bytes 2097152-4194304); only the last "
        "partition can grow"),
])
def test_plan_refuses(tmp_path: Path, which: int, message: str) -> None:
    path = gpt_file(tmp_path, 16 * MIB)
    with pytest.raises(ConfigError) as info:
        plan_grow(table_of(path), 16 * MIB, which)
    assert str(info.value) == message


def test_plan_refuses_a_damaged_primary_gpt(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 8 * MIB)
    with open(path, "r+b") as f:
        f.seek(512 + 16)
        f.write(b"\0\0\0\0")  # the primary header's CRC
    table = table_of(path)
    assert table.header_lba != 1
    with pytest.raises(DiskError, match="primary GPT header is damaged"):
        plan_grow(table, 16 * MIB, "last")


def test_plan_refuses_a_disk_smaller_than_the_table(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 8 * MIB)
    with pytest.raises(DiskError, match="smaller than the partition table says"):
        plan_grow(table_of(path), 4 * MIB, "last")


def test_plan_mbr_extended_and_logical_are_refused() -> None:
    table = parttable.parse(bytes(extended_disk()))
    assert table is not None
    with pytest.raises(ConfigError) as info:
        plan_grow(table, 64 * MIB, "last")
    assert str(info.value) == ("growPartition: last (partition 2): an MBR extended partition "
                               "(logical partitions 5, 6, 7); only primary MBR partitions and GPT "
                               "partitions can be grown")
    with pytest.raises(ConfigError, match="7: an MBR logical partition"):
        plan_grow(table, 64 * MIB, 7)


def test_plan_mbr_caps_at_two_tib() -> None:
    table = PartitionTable("mbr", 512, "12345678", (
        Partition(1, 2048 * 512, 4096 * 512, "0x83", "12345678-01"),))
    plan = plan_grow(table, 3 << 40, 1)
    assert plan.new_end == (2048 + 0xFFFFFFFF) * 512
    assert plan.note == "capped at the MBR limit of 4294967295 sectors"


def test_plan_is_a_no_op_at_the_end(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 8 * MIB)
    plan = plan_grow(table_of(path), 8 * MIB, 5)
    assert not plan.changed
    assert plan.new_size == plan.old_size


# --- applying -----------------------------------------------------------------------------------

def test_apply_gpt_moves_the_backup_and_grows_the_partition(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 16 * MIB)
    before = table_of(path)
    plan = plan_grow(before, 16 * MIB, "last")
    grow.apply_grow(path, plan)
    raw = path.read_bytes()
    after = table_of(path)
    sectors = 16 * MIB // 512
    assert (after.header_lba, after.alternate_lba, after.last_usable_lba) == \
        (1, sectors - 1, sectors - 34)
    assert after.problems == ()
    assert after.by_number(5).end == plan.new_end
    assert [p for p in after.partitions if p.number != 5] == \
        [p for p in before.partitions if p.number != 5]
    # The backup alone (primary destroyed) describes the same table.
    damaged = bytearray(raw)
    damaged[512:1024] = bytes(512)
    from_backup = parttable.parse(bytes(damaged), disk_size=16 * MIB)
    assert from_backup is not None
    assert from_backup.header_lba == sectors - 1
    assert from_backup.partitions == after.partitions
    assert from_backup.entries_lba == sectors - 33
    # Protective MBR covers the disk; the old backup header is blanked.
    assert struct.unpack_from("<I", raw, 446 + 12)[0] == sectors - 1
    old = (8 * MIB // 512 - 1) * 512
    assert raw[old:old + 512] == bytes(512)
    # Idempotent.
    assert not plan_grow(after, 16 * MIB, "last").changed


def test_apply_refuses_a_table_that_changed_since_the_plan(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 16 * MIB)
    plan = plan_grow(table_of(path), 16 * MIB, "last")
    grow.apply_grow(path, plan)
    before = path.read_bytes()
    with pytest.raises(DiskError, match="does not match the plan"):
        grow.apply_grow(path, plan)
    assert path.read_bytes() == before


def test_apply_mbr(tmp_path: Path) -> None:
    path = tmp_path / "mbr.img"
    path.write_bytes(bytes(mbr_sector([(0x80, 0x83, 2048, 2048), (0, 0x8E, 4096, 4096)])))
    os.truncate(path, 32 * MIB)
    table = table_of(path)
    plan = plan_grow(table, 32 * MIB, "last")
    assert (plan.number, plan.new_end) == (2, 32 * MIB)
    grow.apply_grow(path, plan)
    raw = path.read_bytes()
    assert struct.unpack_from("<II", raw, 446 + 16 + 8) == (4096, 32 * MIB // 512 - 4096)
    last = 32 * MIB // 512 - 1  # CHS of the last sector, 255 heads x 63 sectors
    c, rem = divmod(last, 255 * 63)
    assert raw[446 + 16 + 5:446 + 16 + 8] == bytes([rem // 63, rem % 63 + 1 | (c >> 2) & 0xC0,
                                                    c & 0xFF])
    after = table_of(path)
    assert after.by_number(1) == table.by_number(1)
    assert after.by_number(2).end == 32 * MIB
    assert not plan_grow(after, 32 * MIB, 2).changed


def test_grow_table_on_a_file(tmp_path: Path) -> None:
    path = gpt_file(tmp_path, 16 * MIB)
    first = grow.grow_table(str(path), 5)
    assert (first.plan.changed, first.reread) == (True, "not a block device")
    second = grow.grow_table(str(path), 5)
    assert (second.plan.changed, second.reread) == (False, "unchanged")


def test_grow_table_without_a_table(tmp_path: Path) -> None:
    path = tmp_path / "blank.img"
    path.write_bytes(bytes(MIB))
    with pytest.raises(DiskError, match="no partition table: nothing to grow"):
        grow.grow_table(str(path), "last")


def test_reread_retries_ebusy_then_resizes_with_blkpg(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def busy(fd: int) -> None:
        calls.append("BLKRRPART")
        raise OSError(errno.EBUSY, "busy")

    monkeypatch.setattr(syscalls, "blk_reread_partitions", busy)
    monkeypatch.setattr(syscalls, "blkpg_resize_partition",
                        lambda fd, n, start, length: calls.append(("BLKPG", n, start, length)))
    plan = GrowPlan("mbr", 2, 512, 32 * MIB, MIB, 2 * MIB, 32 * MIB)
    slept: list[float] = []
    assert grow.reread(3, "/dev/vda", plan=plan, attempts=3, sleep=slept.append,
                       block=True) == "BLKPG"
    assert calls == ["BLKRRPART"] * 3 + [("BLKPG", 2, MIB, 31 * MIB)]
    assert slept == pytest.approx([0.2, 0.4])


def test_reread_succeeds_after_a_busy_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [OSError(errno.EBUSY, "busy"), None]

    def rrpart(fd: int) -> None:
        err = answers.pop(0)
        if err:
            raise err

    monkeypatch.setattr(syscalls, "blk_reread_partitions", rrpart)
    assert grow.reread(3, "/dev/vda", sleep=lambda s: None, block=True) == "BLKRRPART"


def test_reread_other_errors_are_disk_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(syscalls, "blk_reread_partitions", fail)
    with pytest.raises(DiskError, match="disk /dev/vda: BLKRRPART: Input/output error"):
        grow.reread(3, "/dev/vda", sleep=lambda s: None, block=True)


# --- LVM ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("vg0/root", ("vg0", "root")), ("/dev/vg0/root", ("vg0", "root")),
    ("/dev/mapper/vg0-root", ("vg0", "root")),
    ("/dev/mapper/my--vg-root--fs", ("my-vg", "root-fs")),
])
def test_parse_lv_name(spec: str, expected: tuple[str, str]) -> None:
    assert grow.parse_lv_name(spec) == expected
    assert grow.parse_lv_name(grow.lv_device(*expected)) == expected


@pytest.mark.parametrize("spec", ["root", "/dev/vg0", "a/b/c", "/dev/mapper/noseparator", "/x/"])
def test_parse_lv_name_refuses(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^lvmRootName: "):
        grow.parse_lv_name(spec)


LVS = "  vg0  root\n  vg0  swap\n  data lv1\n"


def lvm_answers(lvextend_rc: int = 0, lvextend_err: str = "",
                lvs: str = LVS) -> Any:
    def answer(argv: list[str]) -> proc.Completed:
        command = argv[argv.index(LVM if LVM in argv else "lvm") + 1]
        if command == "lvs":
            return proc.Completed(tuple(argv), 0, lvs, "")
        if command == "lvextend":
            return proc.Completed(tuple(argv), lvextend_rc, "", lvextend_err)
        return proc.Completed(tuple(argv), 0, "", "")
    return answer


def test_grow_lvm_argv(recorder: Recorder) -> None:
    recorder.responses[LVM] = lvm_answers()
    got = grow.grow_lvm("/dev/vda3", "/dev/mapper/vg0-root", lvm_binary=LVM)
    assert got == grow.LvmGrowth("/dev/vda3", "vg0", "root", "/dev/mapper/vg0-root", True)
    assert recorder.calls == [
        [LVM, "lvs", "--config", LVM_CONFIG, "--noheadings", "-o", "vg_name,lv_name"],
        [LVM, "pvresize", "--config", LVM_CONFIG, "/dev/vda3"],
        [LVM, "lvextend", "--config", LVM_CONFIG, "-l", "+100%FREE", "vg0/root"],
    ]


def test_grow_lvm_in_the_target(recorder: Recorder, tmp_path: Path) -> None:
    recorder.responses["chroot"] = lvm_answers()
    grow.grow_lvm("/dev/vda3", "vg0/root", chroot=tmp_path)
    assert [c[:4] for c in recorder.calls] == [
        ["chroot", str(tmp_path), "lvm", "lvs"], ["chroot", str(tmp_path), "lvm", "pvresize"],
        ["chroot", str(tmp_path), "lvm", "lvextend"]]


def test_grow_lvm_nothing_to_extend_is_a_no_op(recorder: Recorder) -> None:
    recorder.responses[LVM] = lvm_answers(
        5, "  New size (255 extents) matches existing size (255 extents).\n")
    assert not grow.grow_lvm("/dev/vda3", "vg0/root", lvm_binary=LVM).extended


def test_grow_lvm_other_lvextend_failures_raise(recorder: Recorder) -> None:
    recorder.responses[LVM] = lvm_answers(5, "  Volume group \"vg0\" has insufficient extents\n")
    with pytest.raises(CommandError, match="exited 5"):
        grow.grow_lvm("/dev/vda3", "vg0/root", lvm_binary=LVM)


def test_grow_lvm_missing_lv(recorder: Recorder) -> None:
    recorder.responses[LVM] = lvm_answers()
    with pytest.raises(ConfigError) as info:
        grow.grow_lvm("/dev/vda3", "/dev/vg0/rootfs", lvm_binary=LVM)
    assert str(info.value) == ("lvmRootName: vg0/rootfs: no such logical volume (found: "
                               "vg0/root, vg0/swap, data/lv1)")
    assert len(recorder.calls) == 1  # nothing resized


# --- filesystems --------------------------------------------------------------------------------

def tool_in(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("")
    (root / rel).chmod(0o755)


@pytest.mark.parametrize(("fstype", "rel", "inner"), [
    ("ext4", "usr/sbin/resize2fs", ["resize2fs", "/dev/vda3"]),
    ("ext3", "sbin/resize2fs", ["resize2fs", "/dev/vda3"]),
    ("xfs", "usr/sbin/xfs_growfs", ["xfs_growfs", "/"]),
    ("btrfs", "bin/btrfs", ["btrfs", "filesystem", "resize", "max", "/"]),
])
def test_grow_fs_prefers_the_targets_tool(recorder: Recorder, tmp_path: Path, fstype: str,
                                          rel: str, inner: list[str]) -> None:
    root = tmp_path / "newroot"
    tool_in(root, rel)
    got = grow.grow_fs("/dev/vda3", fstype, root, chroot=root, path=str(tmp_path / "nowhere"))
    assert recorder.calls == [["chroot", str(root), *inner]]
    assert (got.tool, got.source) == (rel.rsplit("/", 1)[1], "target")
    st = os.statvfs(root)  # free space is df's "Avail", never the size (the superblock's)
    assert got.free_after is not None and abs(got.free_after - st.f_bavail * st.f_frsize) < MIB


@pytest.mark.parametrize(("fstype", "tool", "args"), [
    ("ext4", "resize2fs", ["/dev/vda3"]), ("xfs", "xfs_growfs", ["MP"])])
def test_grow_fs_falls_back_to_the_initramfs(recorder: Recorder, tmp_path: Path, fstype: str,
                                             tool: str, args: list[str]) -> None:
    root, bindir = tmp_path / "newroot", tmp_path / "bin"
    root.mkdir()
    tool_in(bindir, tool)
    got = grow.grow_fs("/dev/vda3", fstype, root, chroot=root, path=str(bindir))
    argv = [str(bindir / tool), *(str(root) if a == "MP" else a for a in args)]
    assert recorder.calls == [argv]
    assert got.source == "initramfs"


def test_grow_fs_target_tool_that_cannot_run(recorder: Recorder, tmp_path: Path) -> None:
    root, bindir = tmp_path / "newroot", tmp_path / "bin"
    tool_in(root, "usr/sbin/resize2fs")
    tool_in(bindir, "resize2fs")

    def chroot(argv: list[str]) -> proc.Completed:
        raise CommandError(argv, 127, "chroot: failed to run command 'resize2fs'")

    recorder.responses["chroot"] = chroot
    assert grow.grow_fs("/dev/vda3", "ext4", root, chroot=root, path=str(bindir)).source == \
        "initramfs"
    assert recorder.calls[-1] == [str(bindir / "resize2fs"), "/dev/vda3"]


def test_grow_fs_unknown_type_and_missing_tool(recorder: Recorder, tmp_path: Path) -> None:
    got = grow.grow_fs("/dev/vda3", "vfat", tmp_path, chroot=tmp_path, path=str(tmp_path))
    assert (got.tool, got.source) == (None, "")
    with pytest.raises(DiskError, match="no xfs_growfs in the target or the initramfs"):
        grow.grow_fs("/dev/vda3", "xfs", tmp_path, chroot=tmp_path, path=str(tmp_path))
    assert recorder.calls == []


# --- the whole step -----------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "expected"), [
    ({}, None), ({"growDisk": True}, "last"), ({"growPartition": 3}, 3),
    ({"growPartition": 0}, None), ({"growPartition": "last", "growDisk": True}, "last"),
])
def test_which_partition(fields: dict[str, Any], expected: Any) -> None:
    assert grow.which_partition(action(**fields)) == expected


class FakeMounts:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def mount(self, source: str, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        self.calls.append(("mount", source, target, fstype, flags))

    def umount(self, target: str, flags: int = 0) -> None:
        self.calls.append(("umount", target, flags))


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> FakeMounts:
    fake = FakeMounts()
    monkeypatch.setattr(syscalls, "mount", fake.mount)
    monkeypatch.setattr(syscalls, "umount", fake.umount)
    return fake


def blkid_answers(table: dict[str, str]) -> Any:
    def answer(argv: list[str]) -> proc.Completed:
        dev = argv[-1]
        out = f'{dev}: UUID="x" TYPE="{table[dev]}"\n' if dev in table else ""
        return proc.Completed(tuple(argv), 0 if out else 2, out, "")
    return answer


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(dev, sysfs, newroot): /dev/vda is a GPT image file grown to 16 MiB; the kernel shows
    vda5; the target has resize2fs and no /run."""
    dev, sysfs, newroot = tmp_path / "dev", tmp_path / "sys", tmp_path / "newroot"
    dev.mkdir()
    gpt_file(tmp_path, 16 * MIB).rename(dev / "vda")
    _kernel_shows(dev, sysfs, "vda", "vda5")
    for d in ("dev", "proc", "sys", "etc"):
        (newroot / d).mkdir(parents=True)
    tool_in(newroot, "usr/sbin/resize2fs")
    return dev, sysfs, newroot


def test_grow_partition_and_ext4(recorder: Recorder, mounts: FakeMounts,
                                 machine: tuple[Path, Path, Path]) -> None:
    dev, sysfs, newroot = machine
    recorder.responses["blkid"] = blkid_answers({"/dev/vda5": "ext4"})
    loaded: list[list[str]] = []
    measured: list[tuple[str, str, int]] = []
    sizes = iter([3 * MIB, 11 * MIB])

    def size_of(device: str, fstype: str) -> int:
        measured.append((device, fstype, len(mounts.calls)))
        return next(sizes)

    result = grow.grow(str(dev / "vda"), action(growPartition="last"), mountpoint=newroot,
                       dev=dev, sysfs=sysfs, load=lambda names: loaded.append(list(names)),
                       sleep=lambda s: None, size_of=size_of)
    # the superblock is read before the mount and after the last umount, never mounted
    assert measured == [("/dev/vda5", "ext4", 0), ("/dev/vda5", "ext4", len(mounts.calls))]
    assert recorder.calls == [["blkid", "-c", "/dev/null", "/dev/vda5"],
                              ["chroot", str(newroot), "resize2fs", "/dev/vda5"]]
    assert loaded == [["ext4"]]
    assert [c[:3] for c in mounts.calls] == [
        ("mount", "/dev/vda5", str(newroot)),
        ("mount", "/dev", str(newroot / "dev")), ("mount", "none", str(newroot / "dev")),
        ("mount", "/proc", str(newroot / "proc")), ("mount", "none", str(newroot / "proc")),
        ("mount", "/sys", str(newroot / "sys")), ("mount", "none", str(newroot / "sys")),
        ("umount", str(newroot / "sys"), syscalls.MNT_DETACH),
        ("umount", str(newroot / "proc"), syscalls.MNT_DETACH),
        ("umount", str(newroot / "dev"), syscalls.MNT_DETACH), ("umount", str(newroot), 0)]
    assert (result.partition, result.partition_device, result.table, result.table_changed) == \
        (5, "/dev/vda5", "gpt", True)
    assert result.partition_size_before is not None and result.partition_size_after is not None
    assert result.partition_size_after - result.partition_size_before == 8 * MIB
    assert (result.root_device, result.fstype, result.fs_tool) == \
        ("/dev/vda5", "ext4", "resize2fs from the target")
    assert (result.fs_size_before, result.fs_size_after) == (3 * MIB, 11 * MIB)
    free = result.fs_free_after
    assert free is not None
    assert result.summary() == ("partition 5 3 MiB -> 11 MiB, ext4 3 MiB -> 11 MiB (resize2fs "
                                f"from the target), {free / MIB:.0f} MiB free")
    event = result.event()
    assert (event["fs_tool"], event["fs_size_after"], event["partition_size_after"]) == \
        ("resize2fs from the target", 11 * MIB, result.partition_size_after)

    again = grow.grow(str(dev / "vda"), action(growPartition=5), mountpoint=newroot, dev=dev,
                      sysfs=sysfs, load=lambda names: None, sleep=lambda s: None,
                      size_of=lambda device, fstype: 11 * MIB)
    assert not again.table_changed
    assert again.summary().startswith("partition 5 already fills the disk")


def test_grow_lvm_root(recorder: Recorder, mounts: FakeMounts,
                       machine: tuple[Path, Path, Path]) -> None:
    dev, sysfs, newroot = machine
    recorder.responses["blkid"] = blkid_answers({"/dev/vda5": "LVM2_member",
                                                 "/dev/mapper/vg0-root": "xfs"})
    recorder.responses[LVM] = lvm_answers()
    tool_in(newroot, "usr/sbin/xfs_growfs")
    loaded: list[list[str]] = []
    measured: list[tuple[str, str]] = []
    result = grow.grow(str(dev / "vda"), action(growDisk=True, lvmRootName="vg0/root"),
                       mountpoint=newroot, dev=dev, sysfs=sysfs, lvm_binary=LVM,
                       load=lambda names: loaded.append(list(names)), sleep=lambda s: None,
                       size_of=lambda device, fstype: measured.append((device, fstype)) or None)
    assert measured == [("/dev/mapper/vg0-root", "xfs")] * 2  # the LV's filesystem, not the PV
    assert recorder.calls == [
        ["blkid", "-c", "/dev/null", "/dev/vda5"],
        grow.lvm.activate_argv(LVM),
        [LVM, "lvs", "--config", LVM_CONFIG, "--noheadings", "-o", "vg_name,lv_name"],
        [LVM, "pvresize", "--config", LVM_CONFIG, "/dev/vda5"],
        [LVM, "lvextend", "--config", LVM_CONFIG, "-l", "+100%FREE", "vg0/root"],
        ["blkid", "-c", "/dev/null", "/dev/mapper/vg0-root"],
        ["chroot", str(newroot), "xfs_growfs", "/"],
    ]
    assert loaded == [["dm_mod"], ["xfs"]]
    assert mounts.calls[0][:4] == ("mount", "/dev/mapper/vg0-root", str(newroot), "xfs")
    assert (result.lv, result.lv_extended, result.fs_tool) == \
        ("vg0/root", True, "xfs_growfs from the target")


def test_grow_lvm_root_name_on_a_plain_partition(recorder: Recorder, mounts: FakeMounts,
                                                 machine: tuple[Path, Path, Path]) -> None:
    dev, sysfs, newroot = machine
    recorder.responses["blkid"] = blkid_answers({"/dev/vda5": "ext4"})
    with pytest.raises(ConfigError, match=r"partition 5 .* is not an LVM physical volume"):
        grow.grow(str(dev / "vda"), action(growDisk=True, lvmRootName="vg0/root"),
                  mountpoint=newroot, dev=dev, sysfs=sysfs, load=lambda n: None,
                  sleep=lambda s: None)
    assert mounts.calls == []


def test_grow_nothing_requested() -> None:
    result = grow.grow("/dev/vda", action())
    assert result == grow.GrowResult("/dev/vda")
    assert result.summary() == "nothing to grow"


def test_grow_line_gives_the_superblock_size_and_the_free_space_apart() -> None:
    """The console line of #15: the filesystem's size as dumpe2fs gives it (4029 MiB), not
    statvfs's 3956 MiB after metadata; the free space labelled as free."""
    result = grow.GrowResult("/dev/sda", partition=3, table="gpt",
                             partition_size_before=640 * MIB, partition_size_after=4030 * MIB,
                             table_changed=True, root_device="/dev/sda3", fstype="ext4",
                             fs_size_before=632 * MIB, fs_size_after=4029 * MIB,
                             fs_free_after=3701 * MIB + 1234, fs_tool="resize2fs from the target")
    assert result.summary() == ("partition 3 640 MiB -> 4030 MiB, ext4 632 MiB -> 4029 MiB "
                                "(resize2fs from the target), 3701 MiB free")
    unknown = grow.GrowResult("/dev/sda", partition=3, table_changed=False, fstype="xfs",
                              fs_tool="xfs_growfs from the initramfs")
    assert unknown.summary() == ("partition 3 already fills the disk, xfs ? -> ? "
                                 "(xfs_growfs from the initramfs)")
    assert set(unknown.event()) == {"disk", "partition", "table_changed", "lv_extended",
                                    "fstype", "fs_tool"}


def test_fs_size_that_cannot_be_read_is_a_warning_not_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console = io.StringIO()
    monkeypatch.setattr(log, "_console", console)
    log.configure()
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(8192))
    assert grow.fs_size(str(blank), "ext4") is None
    assert grow.fs_size(str(tmp_path / "missing"), "xfs") is None
    assert grow.fs_size(str(blank), "vfat") is None  # no superblock parser: no size
    lines = [line.removeprefix("pyinit: WARNING: ") for line in console.getvalue().splitlines()]
    assert lines == [
        f"grow: no size for {blank}: no ext2/3/4 superblock (magic 0xEF53 at byte 1080)",
        f"grow: no size for {tmp_path}/missing: cannot read its xfs superblock: No such file or "
        "directory"]


# --- which partition is the root ---------------------------------------------------------------

def test_find_root_explicit_lvm_and_grown(tmp_path: Path) -> None:
    assert grow.find_root("/dev/nvme0n1", action(rootPartition=2), dev=tmp_path) == \
        grow.RootChoice("/dev/nvme0n1p2", "rootPartition 2")
    assert grow.find_root("/dev/vda", action(lvmRootName="/dev/vg0/root"), dev=tmp_path,
                          sysfs=tmp_path) == \
        grow.RootChoice("/dev/mapper/vg0-root", "lvmRootName vg0/root")
    assert grow.find_root("/dev/vda", action(), grown=3, dev=tmp_path) == \
        grow.RootChoice("/dev/vda3", "grown partition 3")


def test_find_root_auto_probes_read_only(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    mp = tmp_path / "probe"
    recorder.responses["blkid"] = blkid_answers({"/dev/vda1": "vfat", "/dev/vda2": "ext4",
                                                 "/dev/vda3": "ext4"})
    calls: list[tuple[Any, ...]] = []

    def mount(source: str, target: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        calls.append((source, flags))
        if source == "/dev/vda3":
            (mp / "etc").mkdir()
            (mp / "etc" / "os-release").write_text("ID=debian\n")

    monkeypatch.setattr(syscalls, "mount", mount)
    monkeypatch.setattr(syscalls, "umount", lambda target, flags=0: None)
    got = grow.find_root("/dev/vda", action(), numbers=[1, 2, 3, 4], mountpoint=mp,
                         dev=tmp_path, load=lambda n: None)
    assert got == grow.RootChoice("/dev/vda3", "has /etc/os-release")
    assert calls == [("/dev/vda2", syscalls.MS_RDONLY), ("/dev/vda3", syscalls.MS_RDONLY)]


def test_find_root_auto_finds_nothing(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    recorder.responses["blkid"] = blkid_answers({"/dev/vda1": "swap", "/dev/vda2": "ext4"})
    monkeypatch.setattr(syscalls, "mount", lambda *a, **k: None)
    monkeypatch.setattr(syscalls, "umount", lambda *a, **k: None)
    with pytest.raises(ConfigError) as info:
        grow.find_root("/dev/vda", action(), numbers=[1, 2], mountpoint=tmp_path / "mp",
                       dev=tmp_path, load=lambda n: None)
    assert str(info.value) == ("rootPartition: auto: no partition looks like a root filesystem "
                               "(/dev/vda1 (swap); /dev/vda2 (ext4, no /etc/os-release)); give "
                               "rootPartition")


def test_kernel_partition_size(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    _kernel_shows(dev, sysfs, "nvme0n1", "nvme0n1p2")
    (sysfs / "class" / "block" / "nvme0n1" / "nvme0n1p2" / "size").write_text("2048\n")
    assert grow.kernel_partition_size("/dev/nvme0n1", 2, dev=dev, sysfs=sysfs) == MIB
    assert grow.kernel_partition_size("/dev/nvme0n1", 3, dev=dev, sysfs=sysfs) is None
