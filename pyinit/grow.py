"""Grow what the image wrote to the size of the disk: partition table, LVM, filesystem (issue #5).

After an image smaller than the disk is written, its last partition ends where the image ended and
a GPT's backup header sits in the middle of the disk. :func:`grow` moves the GPT backup to the end,
extends the chosen partition over the free space, tells the kernel, then extends the LVM physical
volume and logical volume inside it (``pvresize``, ``lvextend -l +100%FREE``) and the filesystem
(``resize2fs`` online, ``xfs_growfs`` on the mount point).

The partition table is rewritten here, in Python, on bytes: the initramfs carries no sfdisk,
sgdisk or growpart (growpart is a shell script around sfdisk and awk), and the change is a few
fields and two CRCs. It reuses :mod:`pyinit.parttable` to read the table. A GPT is written backup
first, then primary, then the protective MBR, each followed by fsync: a crash at any point leaves a
primary header the kernel accepts (describing the old or the new layout).

Every step is idempotent: a second run finds the partition already at the end of the disk, a PV
with nothing to add, an LV with no free extents to take and a filesystem that fills its device.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pyinit import ginit, lvm, parttable, proc, superblock, syscalls
from pyinit.action import Action
from pyinit.disks.usage import kernel_name
from pyinit.errors import CommandError, ConfigError, DiskError, MountError, PyinitError
from pyinit.log import get_logger
from pyinit.parttable import Partition, PartitionTable
from pyinit.target import mounted_target

log = get_logger("pyinit.grow")

Which = int | Literal["last"]

MBR_MAX_SECTORS = 0xFFFF_FFFF  # a 32-bit sector count: 2 TiB with 512-byte sectors
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_ENTRY_LAST_LBA = 40  # offset of the ending LBA inside a GPT partition entry
_MBR_TABLE = 446


# --- partition device names ----------------------------------------------------------------------

def partition_path(disk: str, number: int) -> str:
    """``/dev/sda`` + 1 -> ``/dev/sda1``; ``/dev/nvme0n1`` + 1 -> ``/dev/nvme0n1p1``: the kernel
    puts a ``p`` between the two when the disk's name ends in a digit (``disk_name()``). Pure."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def wait_for_partitions(disk: str, numbers: Iterable[int], *, timeout: float = 10.0,
                        dev: Path = Path("/dev"), sysfs: Path = Path("/sys"),
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Wait (bounded) until the kernel shows partitions ``numbers`` of ``disk`` in sysfs
    (``/sys/class/block/<disk>/<part>/``) and devtmpfs made their nodes (no udev here).

    Returns their ``/dev`` paths. On timeout, a :class:`DiskError` names what was expected and what
    exists.
    """
    name = kernel_name(disk, dev=dev)
    wanted = [partition_path(name, n) for n in numbers]
    deadline = clock() + timeout
    while True:
        missing = [p for p in wanted
                   if not (sysfs / "class" / "block" / name / p).is_dir() or not (dev / p).exists()]
        if not missing:
            return [f"/dev/{p}" for p in wanted]
        if clock() >= deadline:
            try:
                seen = sorted(e.name for e in (sysfs / "class" / "block" / name).iterdir()
                              if e.name.startswith(name) and e.name != name)
            except OSError:
                seen = []
            raise DiskError(f"/dev/{name}", f"partition(s) {', '.join(missing)} did not appear "
                            f"within {timeout:g} s (the kernel shows: {', '.join(seen) or 'none'})")
        sleep(0.1)


# --- planning (pure) -----------------------------------------------------------------------------

@dataclass(frozen=True)
class GrowPlan:
    """What growing one partition changes. Offsets and sizes in bytes; LBAs in sectors."""

    kind: Literal["gpt", "mbr"]
    number: int
    sector_size: int
    disk_size: int
    start: int
    old_end: int
    new_end: int
    # GPT: where the backup header is and goes, and the last usable LBA afterwards.
    old_backup_lba: int | None = None
    new_backup_lba: int | None = None
    old_last_usable_lba: int | None = None
    new_last_usable_lba: int | None = None
    note: str = ""  # e.g. "capped at the MBR limit of 2 TiB"

    @property
    def changed(self) -> bool:
        """False when a second run would write nothing (idempotence)."""
        return self.new_end != self.old_end or self.old_backup_lba != self.new_backup_lba or \
            self.old_last_usable_lba != self.new_last_usable_lba

    @property
    def old_size(self) -> int:
        return self.old_end - self.start

    @property
    def new_size(self) -> int:
        return self.new_end - self.start


def _numbers(table: PartitionTable) -> str:
    return ", ".join(str(p.number) for p in sorted(table.partitions, key=lambda p: p.number))


def _pick(table: PartitionTable, which: Which) -> Partition:
    if which == "last":
        if not table.partitions:
            raise ConfigError("growPartition", "last: the image has no partitions")
        return max(table.partitions, key=lambda p: (p.end, p.number))
    try:
        return table.by_number(which)
    except KeyError:
        have = _numbers(table)
        raise ConfigError("growPartition", f"{which}: no such partition (the image has "
                          f"{have or 'none'})") from None


def plan_grow(table: PartitionTable, disk_size: int, which: Which) -> GrowPlan:
    """Plan growing partition ``which`` (a number or ``"last"``: the one that ends last) to the end
    of a disk of ``disk_size`` bytes. Pure.

    Refused (:class:`ConfigError` on ``growPartition``): a partition that does not exist, one with
    another partition after it, an MBR extended or logical partition (growing a logical partition
    means rewriting its EBR and the extended container: not supported), a GPT read from its backup
    header (the primary is damaged: repair the image instead). A disk smaller than the table is a
    :class:`DiskError`. Already at the end: a plan whose :attr:`~GrowPlan.changed` is False.
    """
    ss = table.sector_size
    part = _pick(table, which)
    label = f"{which}" if which != "last" else f"last (partition {part.number})"
    if part.kind != "primary":
        inside = [p.number for p in table.partitions if p.kind == "logical"]
        raise ConfigError("growPartition", f"{label}: an MBR {part.kind} partition"
                          + (f" (logical partitions {', '.join(map(str, inside))})"
                             if part.kind == "extended" and inside else "")
                          + "; only primary MBR partitions and GPT partitions can be grown")
    after = sorted((p for p in table.partitions if p is not part and p.end > part.end),
                   key=lambda p: p.start)
    if after:
        p = after[0]
        raise ConfigError("growPartition", f"{label}: partition {p.number} lies after it "
                          f"(bytes {p.start}-{p.end}); only the last partition can grow")
    sectors = disk_size // ss
    if table.kind == "gpt":
        if table.header_lba != 1 or table.entry_count is None or table.entry_size is None \
                or table.alternate_lba is None or table.last_usable_lba is None:
            raise DiskError("table", "the primary GPT header is damaged ("
                            + "; ".join(table.problems) + "); not growing it")
        entry_sectors = -(-table.entry_count * table.entry_size // ss)
        new_backup = sectors - 1
        new_last_usable = new_backup - entry_sectors - 1
        if new_last_usable * ss + ss < part.end:
            raise DiskError("table", f"the disk ({disk_size} bytes) is smaller than the "
                            f"partition table says (partition {part.number} ends at {part.end})")
        return GrowPlan("gpt", part.number, ss, disk_size, part.start, part.end,
                        (new_last_usable + 1) * ss, old_backup_lba=table.alternate_lba,
                        new_backup_lba=new_backup, old_last_usable_lba=table.last_usable_lba,
                        new_last_usable_lba=new_last_usable)
    if sectors * ss < part.end:
        raise DiskError("table", f"the disk ({disk_size} bytes) is smaller than the partition "
                        f"table says (partition {part.number} ends at {part.end})")
    start_lba = part.start // ss
    count = sectors - start_lba
    note = ""
    if count > MBR_MAX_SECTORS:
        count = MBR_MAX_SECTORS
        note = f"capped at the MBR limit of {MBR_MAX_SECTORS} sectors"
    new_end = max((start_lba + count) * ss, part.end)
    return GrowPlan("mbr", part.number, ss, disk_size, part.start, part.end, new_end, note=note)


# --- writing -------------------------------------------------------------------------------------

def _pread(fd: int, offset: int, size: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise DiskError("table", f"short read at byte {offset}")
    return data


def _pwrite(fd: int, offset: int, data: bytes) -> None:
    done = os.pwrite(fd, data, offset)
    if done != len(data):
        raise DiskError("table", f"short write at byte {offset}")


def _header_crc(header: bytearray, size: int) -> None:
    header[16:20] = bytes(4)
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:size])))


def _chs(lba: int) -> bytes:
    """The CHS triple sfdisk writes for ``lba`` (255 heads, 63 sectors; 1023/254/63 beyond)."""
    c, rem = divmod(lba, 255 * 63)
    h, s = divmod(rem, 63)
    if c > 1023:
        c, h, s = 1023, 254, 62
    return bytes([h, (s + 1) | ((c >> 2) & 0xC0), c & 0xFF])


def _apply_gpt(fd: int, plan: GrowPlan) -> None:
    assert plan.new_backup_lba is not None and plan.new_last_usable_lba is not None
    ss = plan.sector_size
    primary = bytearray(_pread(fd, ss, ss))
    h = _GPT_HEADER.unpack_from(primary)
    (sig, _rev, hsize, hcrc, _res, my_lba, alt_lba, _first, last_usable, _guid,
     entries_lba, count, esize, ecrc) = h
    check = bytearray(primary[:hsize])
    check[16:20] = bytes(4)
    if sig != parttable.GPT_SIGNATURE or my_lba != 1 or zlib.crc32(bytes(check)) != hcrc:
        raise DiskError("table", "the primary GPT header changed or is damaged; not growing")
    if alt_lba != plan.old_backup_lba or last_usable != plan.old_last_usable_lba:
        raise DiskError("table", "the primary GPT header does not match the plan; not growing")
    entries = bytearray(_pread(fd, entries_lba * ss, count * esize))
    if zlib.crc32(bytes(entries)) != ecrc:
        raise DiskError("table", "the primary GPT entries fail their CRC; not growing")
    at = (plan.number - 1) * esize
    first_lba, last_lba = struct.unpack_from("<QQ", entries, at + 32)
    if first_lba * ss != plan.start or (last_lba + 1) * ss != plan.old_end:
        raise DiskError("table", f"GPT partition {plan.number} does not match the plan")
    struct.pack_into("<Q", entries, at + _GPT_ENTRY_LAST_LBA, plan.new_end // ss - 1)
    entries_crc = zlib.crc32(bytes(entries))
    entry_sectors = -(-count * esize // ss)
    padded = bytes(entries) + bytes(entry_sectors * ss - len(entries))

    backup = bytearray(primary)
    struct.pack_into("<QQ", backup, 24, plan.new_backup_lba, 1)  # my LBA, alternate LBA
    struct.pack_into("<Q", backup, 48, plan.new_last_usable_lba)
    struct.pack_into("<Q", backup, 72, plan.new_backup_lba - entry_sectors)
    struct.pack_into("<I", backup, 88, entries_crc)
    _header_crc(backup, hsize)
    _pwrite(fd, (plan.new_backup_lba - entry_sectors) * ss, padded)
    _pwrite(fd, plan.new_backup_lba * ss, bytes(backup))
    os.fsync(fd)

    struct.pack_into("<Q", primary, 32, plan.new_backup_lba)  # alternate LBA
    struct.pack_into("<Q", primary, 48, plan.new_last_usable_lba)
    struct.pack_into("<I", primary, 88, entries_crc)
    _header_crc(primary, hsize)
    _pwrite(fd, entries_lba * ss, padded)
    _pwrite(fd, ss, bytes(primary))
    os.fsync(fd)

    mbr = bytearray(_pread(fd, 0, 512))
    for slot in range(4):
        off = _MBR_TABLE + 16 * slot
        if mbr[off + 4] == parttable.PROTECTIVE_TYPE:
            sectors = min(plan.disk_size // ss - 1, MBR_MAX_SECTORS)
            mbr[off + 5:off + 8] = _chs(min(sectors, plan.disk_size // ss - 1))
            struct.pack_into("<I", mbr, off + 12, sectors)
    _pwrite(fd, 0, bytes(mbr))
    # The old backup header now lies inside the grown partition: blank it, so nothing that scans
    # for GPT headers (sgdisk's recovery, a disk-image tool) mistakes it for the real one.
    old = plan.old_backup_lba
    if old is not None and old != plan.new_backup_lba and old * ss + ss <= plan.disk_size:
        stale = _pread(fd, old * ss, ss)
        if stale[:8] == parttable.GPT_SIGNATURE and struct.unpack_from("<Q", stale, 24)[0] == old:
            _pwrite(fd, old * ss, bytes(ss))
    os.fsync(fd)


def _apply_mbr(fd: int, plan: GrowPlan) -> None:
    ss = plan.sector_size
    mbr = bytearray(_pread(fd, 0, 512))
    off = _MBR_TABLE + 16 * (plan.number - 1)
    start, count = struct.unpack_from("<II", mbr, off + 8)
    if start * ss != plan.start or (start + count) * ss != plan.old_end:
        raise DiskError("table", f"MBR partition {plan.number} does not match the plan")
    new_count = plan.new_end // ss - start
    struct.pack_into("<I", mbr, off + 12, new_count)
    mbr[off + 5:off + 8] = _chs(start + new_count - 1)
    _pwrite(fd, 0, bytes(mbr))
    os.fsync(fd)


def apply_grow(target: int | str | os.PathLike[str], plan: GrowPlan, *,
               force: bool = False) -> None:
    """Write ``plan`` to the disk (or image file) ``target`` (an fd open for reading and writing,
    or a path), checking first that the table is still the one planned for. Does not tell the
    kernel: see :func:`reread`. A plan that changes nothing writes nothing, unless ``force``
    (a RAID member's copied GPT still needs its backup header: :mod:`pyinit.raid`)."""
    if not plan.changed and not force:
        return
    fd = target if isinstance(target, int) else os.open(target, os.O_RDWR | os.O_CLOEXEC)
    try:
        if plan.kind == "gpt":
            _apply_gpt(fd, plan)
        else:
            _apply_mbr(fd, plan)
    finally:
        if not isinstance(target, int):
            os.close(fd)


def reread(fd: int, path: str, *, plan: GrowPlan | None = None, attempts: int = 10,
           sleep: Callable[[float], None] = time.sleep, block: bool | None = None) -> str:
    """Make the kernel see the new table: BLKRRPART, retried while EBUSY (a just-closed opener,
    a probe). When the disk stays busy (a partition mounted or held by LVM), BLKPG resizes just
    the grown partition, as ``partx --update`` does. Returns how (``"BLKRRPART"``,
    ``"BLKPG"``, or ``"not a block device"``).

    ``image.Target.reread_partitions`` (after a write) calls this too.
    """
    if not (block if block is not None else stat.S_ISBLK(os.fstat(fd).st_mode)):
        return "not a block device"
    for i in range(attempts):
        try:
            syscalls.blk_reread_partitions(fd)
            return "BLKRRPART"
        except OSError as exc:
            if exc.errno == errno.EBUSY and i + 1 < attempts:
                sleep(0.2 * (i + 1))
                continue
            if exc.errno == errno.EBUSY and plan is not None:
                break
            if exc.errno in (errno.EINVAL, errno.ENOTTY):  # not partitionable (loop without -P)
                return "not partitionable"
            raise DiskError(path, f"BLKRRPART: {exc.strerror}") from exc
    assert plan is not None
    try:
        syscalls.blkpg_resize_partition(fd, plan.number, plan.start, plan.new_size)
    except OSError as exc:
        raise DiskError(path, f"the disk is busy (BLKRRPART) and BLKPG_RESIZE_PARTITION of "
                        f"partition {plan.number} failed: {exc.strerror}") from exc
    return "BLKPG"


@dataclass(frozen=True)
class TableGrowth:
    plan: GrowPlan
    reread: str


def kernel_partition_size(disk: str, number: int, *, dev: Path = Path("/dev"),
                          sysfs: Path = Path("/sys")) -> int | None:
    """The size in bytes the kernel has for partition ``number`` of ``disk`` (sysfs counts
    512-byte units whatever the sector size), or None when it shows no such partition."""
    name = kernel_name(disk, dev=dev)
    try:
        text = (sysfs / "class" / "block" / name / partition_path(name, number).removeprefix(
            "/dev/") / "size").read_text()
        return int(text) * 512
    except (OSError, ValueError):
        return None


def geometry(fd: int, st: os.stat_result | None = None) -> tuple[int, int]:
    """The size and logical sector size of the disk open on ``fd`` as the kernel sees it: a
    block device's, an image file's size and 512."""
    st = st or os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return syscalls.blk_size_bytes(fd), syscalls.blk_sector_size(fd)
    return st.st_size, 512


def table_on(fd: int, st: os.stat_result | None = None
             ) -> tuple[PartitionTable | None, int]:
    """The partition table on the disk open on ``fd`` as the kernel reads it, and the disk's
    size (:func:`geometry`; the grow step, the UEFI boot entry and the RAID copies read tables
    this way)."""
    size, ss = geometry(fd, st)
    return parttable.parse(parttable.reader_from_fd(fd), sector_size=ss, disk_size=size), size


def grow_table(disk: str, which: Which, *, dev: Path = Path("/dev"), sysfs: Path = Path("/sys"),
               sleep: Callable[[float], None] = time.sleep) -> TableGrowth:
    """Read the table on ``disk`` (a block device or an image file), plan, apply, re-read.

    When the table needs no change but the kernel still has the old size of the partition (an
    earlier run wrote the table and could not make the kernel re-read it), it re-reads anyway."""
    try:
        fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(disk, f"cannot open: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        table, size = table_on(fd, st)
        if table is None:
            raise DiskError(disk, "no partition table: nothing to grow")
        plan = plan_grow(table, size, which)
        if not plan.changed:
            log.info(f"grow: partition {plan.number} of {disk} already ends at the end of the "
                     "disk")
            known = kernel_partition_size(disk, plan.number, dev=dev, sysfs=sysfs)
            if stat.S_ISBLK(st.st_mode) and known is not None and known != plan.new_size:
                log.info(f"grow: the kernel still has {known} bytes for it; re-reading")
                return TableGrowth(plan, reread(fd, disk, plan=plan, sleep=sleep))
            return TableGrowth(plan, "unchanged")
        apply_grow(fd, plan)
        log.info(f"grow: partition {plan.number} of {disk}: {plan.old_size} -> "
                 f"{plan.new_size} bytes ({plan.kind}{'; ' + plan.note if plan.note else ''})")
        how = reread(fd, disk, plan=plan, sleep=sleep)
        return TableGrowth(plan, how)
    finally:
        os.close(fd)


# --- LVM -----------------------------------------------------------------------------------------

def parse_lv_name(spec: str) -> tuple[str, str]:
    """lvmRootName -> (vg, lv). Accepts ``vg/lv``, ``/dev/vg/lv`` and ``/dev/mapper/vg-lv``
    (device-mapper doubles a ``-`` inside either name). Pure."""
    if spec.startswith("/dev/mapper/"):
        name = spec.removeprefix("/dev/mapper/")
        m = re.fullmatch(r"((?:[^-]|--)+)-((?:[^-]|--)+)", name)
        if m:
            return m[1].replace("--", "-"), m[2].replace("--", "-")
    else:
        parts = spec.removeprefix("/dev/").split("/")
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
    raise ConfigError("lvmRootName", f"{spec!r} is not vg/lv, /dev/vg/lv or /dev/mapper/vg-lv")


def lv_device(vg: str, lv: str) -> str:
    """The node libdevmapper makes for an active LV. Pure."""
    return f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def parse_lvs(text: str) -> list[tuple[str, str]]:
    """``lvs --noheadings -o vg_name,lv_name`` -> [(vg, lv)]. Pure."""
    return [(f[0], f[1]) for f in (line.split() for line in text.splitlines()) if len(f) == 2]


@dataclass(frozen=True)
class LvmGrowth:
    pv: str
    vg: str
    lv: str
    device: str
    extended: bool  # False: the LV already had every free extent


# lvextend's answer when there is nothing to add (lib/metadata/lv_manip.c), across 2.02/2.03.
_NOTHING_TO_EXTEND = ("matches existing size", "not larger than existing size",
                      "No free extents")


def _lvm_argv(lvm_binary: str, command: str, *args: str) -> list[str]:
    return [lvm_binary, command, "--config", lvm.LVM_CONFIG, *args]


def grow_lvm(pv_device: str, lv: str, *, chroot: Path | None = None,
             lvm_binary: str | None = None) -> LvmGrowth:
    """``pvresize`` the PV on the grown partition, then give the LV every free extent of its VG.

    ``lv`` is lvmRootName in any of the forms :func:`parse_lv_name` takes. Runs the initramfs's
    ``lvm`` (or ``lvm`` inside ``chroot``) with :data:`pyinit.lvm.LVM_CONFIG`, the no-udev
    settings used for activation. The volume group must be active (:func:`pyinit.lvm.activate`).
    """
    vg, name = parse_lv_name(lv)
    binary = "lvm" if chroot is not None else (lvm_binary or lvm.find_lvm())
    if binary is None:
        raise DiskError(pv_device, "an LVM physical volume, but no lvm in the initramfs")

    def run(*args: str, check: bool = True) -> proc.Completed:
        return proc.run(_lvm_argv(binary, *args), chroot=chroot, env=lvm.LVM_ENV,
                        timeout=lvm.LVM_TIMEOUT, check=check)

    found = parse_lvs(run("lvs", "--noheadings", "-o", "vg_name,lv_name").stdout)
    if (vg, name) not in found:
        listed = ", ".join(f"{v}/{n}" for v, n in found) or "none"
        raise ConfigError("lvmRootName", f"{vg}/{name}: no such logical volume (found: {listed})")
    run("pvresize", pv_device)
    done = run("lvextend", "-l", "+100%FREE", f"{vg}/{name}", check=False)
    text = done.stdout + done.stderr
    if done.rc != 0 and not any(s in text for s in _NOTHING_TO_EXTEND):
        raise CommandError(list(done.argv), done.rc, done.stderr[-2000:])
    extended = done.rc == 0
    log.info(f"grow: LV {vg}/{name} " + ("extended over the PV's free space" if extended
                                         else "already had every free extent"))
    return LvmGrowth(pv_device, vg, name, lv_device(vg, name), extended)


# --- filesystems ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FsGrowth:
    device: str
    fstype: str
    tool: str | None       # "resize2fs", "xfs_growfs", None: not a type that grows here
    source: str            # "target", "initramfs" or "" (nothing run)
    free_after: int | None = None  # statvfs f_bavail * f_frsize once grown: what df shows free


_FS_TOOLS = {"ext2": "resize2fs", "ext3": "resize2fs", "ext4": "resize2fs",
             "xfs": "xfs_growfs", "btrfs": "btrfs"}
_SBIN = ("usr/sbin", "sbin", "usr/bin", "bin")


def in_target(root: Path, tool: str) -> bool:
    """Whether the target mounted at ``root`` has ``tool`` in one of its sbin/bin dirs."""
    return any(os.path.lexists(root / d / tool) for d in _SBIN)


def find_tool(tool: str, chroot: Path | None, *, path: str = proc.SAFE_PATH
              ) -> tuple[str, Literal["target", "initramfs"]] | None:
    """Where to run ``tool`` from: the target's own copy (run through chroot: it matches the
    target's filesystem features, as BOOTy does), else the initramfs's. None: neither has it."""
    if chroot is not None and in_target(chroot, tool):
        return tool, "target"
    found = shutil.which(tool, path=path)
    return (found, "initramfs") if found else None


def grow_fs_argv(tool: str, fstype: str, device: str, mountpoint: str) -> list[str]:
    """The command that grows a mounted filesystem to its device. Pure."""
    if fstype == "xfs":
        return [tool, mountpoint]  # xfs_growfs takes the mount point
    if fstype == "btrfs":
        return [tool, "filesystem", "resize", "max", mountpoint]
    return [tool, device]  # resize2fs grows a mounted ext3/ext4 online


def _free_space(mountpoint: Path) -> int | None:
    """Bytes free for unprivileged users on the filesystem mounted at ``mountpoint`` (df's
    "Avail"); not its size, which statvfs gives net of the filesystem's own metadata."""
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def fs_size(device: str, fstype: str) -> int | None:
    """The size of the (unmounted) filesystem on ``device`` as its own tools report it, from its
    superblock (:mod:`pyinit.superblock`); None, with a warning, when it cannot be read: a
    figure in a log line never fails the boot."""
    try:
        return superblock.read_size(device, fstype)
    except DiskError as exc:
        log.warning(f"grow: no size for {device}: {exc.reason}")
        return None


def grow_fs(device: str, fstype: str, mountpoint: Path, *, chroot: Path | None = None,
            path: str = proc.SAFE_PATH) -> FsGrowth:
    """Grow the filesystem on ``device``, mounted at ``mountpoint``, to the size of the device.

    With ``chroot`` (the mounted target), the target's own tool is preferred and runs inside it
    (``/dev`` must be bound there: :func:`pyinit.target.mounted_target` does); else the copy in the
    initramfs on ``path``. Logged as ``grow: resize2fs from the target`` / ``from the initramfs``.
    Idempotent: resize2fs on a filesystem that fills its device says "Nothing to do!" and exits 0.
    """
    tool = _FS_TOOLS.get(fstype)
    if tool is None:
        log.info(f"grow: {device} holds {fstype or 'no filesystem'}: nothing to grow")
        return FsGrowth(device, fstype, None, "")
    where = find_tool(tool, chroot, path=path)
    if where is None:
        raise DiskError(device, f"cannot grow {fstype}: no {tool} in the target or the initramfs")
    binary, source = where
    log.info(f"grow: {tool} from the {source}")
    if source == "target":
        assert chroot is not None
        inner = "/" + mountpoint.relative_to(chroot).as_posix() if mountpoint != chroot else "/"
        argv = grow_fs_argv(binary, fstype, device, inner)
        try:
            proc.run(argv, chroot=chroot, timeout=600)
        except CommandError as exc:
            fallback = find_tool(tool, None, path=path)
            if exc.rc not in (126, 127) or fallback is None:  # 126/127: cannot execute it there
                raise
            log.warning(f"grow: the target's {tool} cannot run ({exc}); using the initramfs's")
            binary, source = fallback
            proc.run(grow_fs_argv(binary, fstype, device, str(mountpoint)), timeout=600)
    else:
        proc.run(grow_fs_argv(binary, fstype, device, str(mountpoint)), timeout=600)
    return FsGrowth(device, fstype, tool, source, _free_space(mountpoint))


# --- the whole step ------------------------------------------------------------------------------

def which_partition(action: Action) -> Which | None:
    """growPartition, or ``"last"`` for growDisk alone; None: nothing to grow. Pure."""
    if action.grow_partition is not None:
        return action.grow_partition
    return "last" if action.grow_disk else None


@dataclass(frozen=True)
class GrowResult:
    """What the grow step did; :meth:`event` is the ``grow sizes`` event (bytes throughout)."""

    disk: str
    partition: int | None = None
    partition_device: str | None = None
    table: str = ""                   # "gpt" / "mbr"
    partition_size_before: int | None = None
    partition_size_after: int | None = None
    table_changed: bool = False
    reread: str = ""                  # BLKRRPART, BLKPG, unchanged, ...
    lv: str | None = None             # "vg/lv"
    lv_extended: bool = False
    root_device: str | None = None    # what holds the grown filesystem
    fstype: str | None = None
    # the filesystem's size as its superblock declares it (what dumpe2fs, xfs_info, btrfs say)
    fs_size_before: int | None = None
    fs_size_after: int | None = None
    fs_free_after: int | None = None  # statvfs f_bavail: what df shows as available
    fs_tool: str | None = None        # "resize2fs from the target"

    def summary(self) -> str:
        """``partition 3 66 MiB -> 200 MiB, ext4 61 MiB -> 194 MiB (resize2fs from the
        initramfs), 180 MiB free``. Pure."""
        if self.partition is None:
            return "nothing to grow"
        parts = [f"partition {self.partition} "
                 + (f"{_mib(self.partition_size_before)} -> {_mib(self.partition_size_after)}"
                    if self.table_changed else "already fills the disk")]
        if self.lv:
            parts.append(f"LV {self.lv} " + ("extended" if self.lv_extended else "unchanged"))
        if self.fs_tool:
            parts.append(f"{self.fstype} {_mib(self.fs_size_before)} -> "
                         f"{_mib(self.fs_size_after)} ({self.fs_tool})")
            if self.fs_free_after is not None:
                parts.append(f"{_mib(self.fs_free_after)} free")
        elif self.fstype:
            parts.append(f"{self.fstype} not grown")
        return ", ".join(parts)

    def event(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.0f} MiB"


def grow(disk: str, action: Action, *, mountpoint: Path = Path("/newroot"),
         dev: Path = Path("/dev"), sysfs: Path = Path("/sys"),
         lvm_binary: str | None = None, load: ginit.Loader = ginit.load_modules,
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic,
         size_of: Callable[[str, str], int | None] = fs_size) -> GrowResult:
    """The ``grow`` step after the write: table, then LVM (when the partition is a PV), then the
    filesystem (mounted at ``mountpoint`` with /dev, /proc, /sys, /run bound in, and unmounted
    again; its size read by ``size_of`` before and after). Returns what was done."""

    which = which_partition(action)
    if which is None:
        return GrowResult(disk)
    grown = grow_table(disk, which, dev=dev, sysfs=sysfs, sleep=sleep)
    plan = grown.plan
    [part_dev] = wait_for_partitions(disk, [plan.number], dev=dev, sysfs=sysfs, clock=clock,
                                     sleep=sleep)
    result: dict[str, Any] = dict(
        disk=disk, partition=plan.number, partition_device=part_dev, table=plan.kind,
        partition_size_before=plan.old_size, partition_size_after=plan.new_size,
        table_changed=plan.changed,
        reread=grown.reread)
    tags = ginit.blkid_tags(part_dev)
    root, fstype = part_dev, tags.get("TYPE")
    if fstype == ginit.LVM_MEMBER:
        binary = lvm_binary or lvm.find_lvm()
        if binary is None:
            raise DiskError(part_dev, "an LVM physical volume, but no lvm in the initramfs")
        load(["dm_mod"])
        activation = lvm.activate(binary)
        log.info(f"grow: LVM: {activation.summary()}")
        if not action.lvm_root_name:
            proc.run(_lvm_argv(binary, "pvresize", part_dev), env=lvm.LVM_ENV,
                     timeout=lvm.LVM_TIMEOUT)
            log.info(f"grow: {part_dev} is an LVM PV; no lvmRootName: no LV extended")
            return GrowResult(**result)
        growth = grow_lvm(part_dev, action.lvm_root_name, lvm_binary=binary)
        result.update(lv=f"{growth.vg}/{growth.lv}", lv_extended=growth.extended)
        root = lvm.canonical_device(growth.device, sysfs=sysfs, dev=dev)
        fstype = ginit.blkid_tags(root).get("TYPE")
    elif action.lvm_root_name:
        raise ConfigError("lvmRootName", f"{action.lvm_root_name}: partition {plan.number} "
                          f"({part_dev}) is not an LVM physical volume ({fstype or 'no type'})")
    result.update(root_device=root, fstype=fstype)
    if fstype not in _FS_TOOLS:
        log.info(f"grow: {root} holds {fstype or 'no filesystem'}: nothing to grow")
        return GrowResult(**result)
    # Sizes from the superblock, read unmounted: a mounted XFS keeps its newest one in its own
    # buffers (pyinit.superblock.read_size).
    before = size_of(root, fstype)
    with mounted_target(root, mountpoint, fstype=fstype, load=load) as target:
        fs = grow_fs(root, fstype, target.root, chroot=target.root)
    result.update(fs_size_before=before, fs_size_after=size_of(root, fstype),
                  fs_free_after=fs.free_after,
                  fs_tool=f"{fs.tool} from the {fs.source}" if fs.tool else None)
    return GrowResult(**result)


# --- which partition is the target's root --------------------------------------------------------

@dataclass(frozen=True)
class RootChoice:
    device: str
    how: str  # "rootPartition 2", "lvmRootName vg0/root", "has /etc/os-release", ...


_NOT_ROOT = frozenset({"swap", ginit.LVM_MEMBER, "vfat", "linux_raid_member", "crypto_LUKS"})
_ROOT_MARKERS = ("etc/os-release", "usr/lib/os-release", "sbin/init")


def find_root(disk: str, action: Action, *, grown: int | None = None,
              mountpoint: Path | None = None, dev: Path = Path("/dev"),
              sysfs: Path = Path("/sys"), load: ginit.Loader = ginit.load_modules,
              numbers: Sequence[int] | None = None) -> RootChoice:
    """Resolve rootPartition: a number is that partition; ``"auto"`` is the LV of lvmRootName
    (its VG must be active: :func:`grow` leaves it so), else the partition :func:`grow` grew
    (``grown``), else the first partition (by number) whose filesystem has /etc/os-release,
    /usr/lib/os-release or /sbin/init, mounted read-only (no binds) on ``mountpoint`` to look.

    ``numbers``: the partitions to probe (default: read the table on ``disk``).
    """

    name = f"/dev/{kernel_name(disk, dev=dev)}"
    rp = action.root_partition
    if isinstance(rp, int):
        return RootChoice(partition_path(name, rp), f"rootPartition {rp}")
    if action.lvm_root_name:
        vg, lv = parse_lv_name(action.lvm_root_name)
        return RootChoice(lvm.canonical_device(lv_device(vg, lv), sysfs=sysfs, dev=dev),
                          f"lvmRootName {vg}/{lv}")
    if grown is not None:
        return RootChoice(partition_path(name, grown), f"grown partition {grown}")
    if numbers is None:
        with open(disk, "rb") as f:
            table = parttable.parse(f)
        numbers = [p.number for p in table.partitions if p.kind != "extended"] if table else []
    looked: list[str] = []
    for n in sorted(numbers):
        device = partition_path(name, n)
        fstype = ginit.blkid_tags(device).get("TYPE")
        if not fstype or fstype in _NOT_ROOT:
            looked.append(f"{device} ({fstype or 'no filesystem'})")
            continue
        mp = mountpoint or Path(tempfile.mkdtemp(prefix="pyinit-probe-"))
        try:
            with mounted_target(device, mp, fstype=fstype, binds=(), resolv_conf=None,
                                read_only=True, load=load) as t:
                marker = next((m for m in _ROOT_MARKERS if os.path.lexists(t.root / m)), None)
        except (MountError, PyinitError) as exc:
            looked.append(f"{device} ({fstype}: {exc})")
            continue
        finally:
            if mountpoint is None:
                with contextlib.suppress(OSError):
                    mp.rmdir()
        if marker is not None:
            return RootChoice(device, f"has /{marker}")
        looked.append(f"{device} ({fstype}, no /etc/os-release)")
    raise ConfigError("rootPartition", "auto: no partition looks like a root filesystem "
                      f"({'; '.join(looked) or 'no partitions'}); give rootPartition")

