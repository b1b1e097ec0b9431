"""RAID1 roots (issue #17, docs/grow.md "RAID1 roots"): the image's root partition mirrored over
two or more disks as an md RAID1 with metadata 1.0.

Metadata 1.0 keeps the md superblock (and the write-intent bitmap) at the *end* of each member
partition, so the root filesystem starts at byte 0 of the partition, exactly where the image put
it: the array is built around the written filesystem without copying it, and every other
partition (ESP, BIOS boot partition, /boot) stays a plain partition, copied byte for byte to each
disk, that firmware and GRUB read as usual.

The order, each refusal before any disk is touched (:func:`plan`, in the disks step):

1. every member wiped of old signatures by the erase action's metadata mode (old md superblocks,
   LVM labels, partition tables); pyinit never runs ``mdadm --assemble`` and the kernel does not
   auto-detect 1.x metadata, so an old array never comes into use;
2. the image written to the first member (the ordinary write pipeline);
3. the root partition grown to the end of the *smallest* member (table only), so the layout fits
   every disk;
4. everything before the root partition (MBR boot code, GPT, BIOS boot partition, ESP) copied to
   the other members, with a GPT (or MBR) of their own: a fresh disk GUID and partition GUIDs,
   the backup header at their own end;
5. ``mdadm --create --metadata=1.0 --bitmap=internal`` over the first member's root partition
   and ``missing``, then ``mdadm --add`` of the others (the kernel copies the data in the
   background: recovery resumes after a reboot, from the checkpoint md keeps in the superblock);
6. the filesystem grown on the md device; ``mdadm.conf`` written into the target and the
   target's initramfs regenerated with its own tool, so it assembles its root.

Pure here: :func:`plan`, :func:`mirrored_partition`, the mdadm argv, :func:`parse_array_line`,
:func:`mdadm_conf`, :func:`fresh_ids`. The rest reads and writes devices.
"""

from __future__ import annotations

import os
import random
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pyinit import ginit, grow, parttable, proc, syscalls
from pyinit.action import Action, Raid
from pyinit.disks.inventory import Disk, human_size, natural_key
from pyinit.disks.selection import refusals, resolve_device
from pyinit.errors import DiskError, PyinitError
from pyinit.log import get_logger
from pyinit.target import mounted_target
from pyinit.units import MIB

log = get_logger("pyinit.raid")

SIZE_SPREAD = 0.10        # members more than 10 % apart: the larger disk's rest would be wasted
MD_ROOM = MIB             # what metadata 1.0 + an internal bitmap take at a member's end (<140 KiB)
COPY_CHUNK = 4 * MIB
MDADM_TIMEOUT = 120
MDADM_CONF = ("etc/mdadm/mdadm.conf", "etc/mdadm.conf")  # Debian's, else Red Hat's and SUSE's


class RaidError(PyinitError):
    """A refusal or a failure of the RAID steps. One line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"raid: {reason}")


# --- which disks (pure) -------------------------------------------------------------------------

@dataclass(frozen=True)
class Members:
    """The member disks, the first the one the image is written to."""

    disks: tuple[Disk, ...]
    how: str

    @property
    def smallest(self) -> int:
        return min(d.size for d in self.disks)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(d.path for d in self.disks)


def plan(raid: Raid, disks: Sequence[Disk], *, min_size: int | None = None,
         allow_removable: bool = False) -> Members:
    """The member disks of ``raid`` from the inventory. Pure.

    ``raid.devices`` in their order (``/dev/disk/by-…`` names resolved); ``raid.hints``: every
    disk they match, in name order. Refused, naming every disk: fewer disks than the level
    needs, a disk that may not be written (in use, removable, read-only, the boot medium, too
    small: the write's own refusals), disks more than :data:`SIZE_SPREAD` apart in size.
    """
    by_path = {d.path: d for d in disks}
    chosen: list[Disk] = []
    if raid.devices:
        for name in raid.devices:
            path = resolve_device(name, disks)
            if path not in by_path:
                raise DiskError(name, "no such disk (have: "
                                + (", ".join(d.summary() for d in disks) or "no disks") + ")")
            chosen.append(by_path[path])
        how = "raid.devices " + ", ".join(raid.devices)
        if len({d.path for d in chosen}) != len(chosen):
            raise RaidError(f"{how} name one disk twice")
    else:
        assert raid.hints is not None
        chosen = sorted((d for d in disks if raid.hints.mismatch(d) is None),
                        key=lambda d: natural_key(d.name))
        how = f"raid.rootDeviceHints {raid.hints.describe()}"
    if len(chosen) < raid.min_disks:
        have = ", ".join(d.summary() for d in chosen) or "none"
        raise RaidError(f"RAID{raid.level} needs at least {raid.min_disks} disks; {how} "
                        f"gave {len(chosen)} ({have}); no disk touched")
    refused = [f"{d.name} {', '.join(why)}" for d in chosen
               if (why := refusals(d, min_size=min_size, allow_removable=allow_removable))]
    if refused:
        raise RaidError("refused, no disk touched: " + "; ".join(refused))
    small = min(chosen, key=lambda d: d.size)
    large = max(chosen, key=lambda d: d.size)
    if large.size > small.size * (1 + SIZE_SPREAD):
        raise RaidError(f"disks of very different sizes: {small.name} {human_size(small.size)} "
                        f"and {large.name} {human_size(large.size)} (more than "
                        f"{SIZE_SPREAD:.0%} apart: the mirror is as large as the smallest, "
                        "the rest of the larger disk would be wasted); no disk touched")
    return Members(tuple(chosen), how)


def mirrored_partition(action: Action) -> grow.Which:
    """The partition mirrored: growPartition, else rootPartition when a number, else the last
    one. It must be the last partition (it is grown to the end of the smallest disk). Pure."""
    if action.grow_partition is not None:
        return action.grow_partition
    if isinstance(action.root_partition, int):
        return action.root_partition
    return "last"


# --- mdadm (pure) ------------------------------------------------------------------------------

def md_path(name: str) -> str:
    return f"/dev/md/{name}"


def create_argv(md: str, level: int, first: str, count: int, name: str) -> list[str]:
    """The array over ``first`` and ``count - 1`` missing members (added by :func:`add_argv`
    afterwards, so the kernel copies ``first``, never the other way). ``--homehost=any``: the
    target assembles it as its own whatever its host name. ``--run``: no question about the
    filesystem already on ``first`` (that filesystem is the point). Pure."""
    return ["mdadm", "--create", md, "--run", f"--level={level}", "--metadata=1.0",
            f"--raid-devices={count}", "--bitmap=internal", f"--name={name}",
            "--homehost=any", first, *(["missing"] * (count - 1))]


def add_argv(md: str, parts: Sequence[str]) -> list[str]:
    return ["mdadm", "--add", md, *parts]


def parse_array_line(text: str) -> str:
    """``mdadm --detail --brief`` → its ARRAY line, without ``spares=N``: during the recovery
    the members being rebuilt count as spares, and an mdadm.conf that expects spares makes
    ``mdadm --monitor`` report them missing once the recovery is done. Pure."""
    for line in text.splitlines():
        if line.startswith("ARRAY "):
            return " ".join(w for w in line.split() if not w.startswith("spares="))
    raise RaidError(f"mdadm --detail --brief printed no ARRAY line: {text.strip()[:200]!r}")


def mdadm_conf(existing: str, array: str) -> str:
    """The target's mdadm.conf: its own settings kept, its ARRAY lines (and their indented
    continuation lines) replaced by ``array``: an image built on a machine with arrays would
    carry that machine's. Pure."""
    keep: list[str] = []
    in_array = False
    for line in existing.splitlines():
        if line.startswith("ARRAY"):
            in_array = True
            continue
        if in_array and line[:1] in (" ", "\t"):
            continue
        in_array = False
        if line.strip() != MARK:
            keep.append(line)
    while keep and not keep[-1].strip():
        keep.pop()
    return "\n".join([*keep, "", MARK, array]).lstrip("\n") + "\n"


MARK = "# the RAID1 root, written by pyinit"


def initramfs_argv(root: Path) -> list[str] | None:
    """The target's own initramfs generator, run in it for every installed kernel: Debian's
    ``update-initramfs``, else dracut. None: the target has neither. Reads ``root``."""
    if grow.in_target(root, "update-initramfs"):
        return ["update-initramfs", "-u", "-k", "all"]
    if grow.in_target(root, "dracut"):
        return ["dracut", "-f", "--regenerate-all"]
    return None


# --- fresh identities for the copies (pure) ------------------------------------------------------

_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")


def fresh_ids(head: bytes, table: parttable.PartitionTable,
              rng: random.Random | None = None) -> bytes:
    """``head`` (the first member's bytes up to its root partition) with a new disk identity
    for a copy: a GPT's disk GUID and every partition's unique GUID new (CRCs fixed), an MBR's
    disk signature new. Two disks with one identity confuse firmware boot entries and
    ``PARTUUID=``. Pure (``rng`` for tests)."""
    rnd = rng or random.SystemRandom()
    out = bytearray(head)
    out[440:444] = rnd.getrandbits(32).to_bytes(4, "little")
    if table.kind != "gpt":
        return bytes(out)
    ss = table.sector_size
    assert table.entries_lba is not None and table.entry_count is not None \
        and table.entry_size is not None
    hdr = bytearray(out[ss:2 * ss])
    hsize = _GPT_HEADER.unpack_from(hdr)[2]
    hdr[56:72] = _guid(rnd)
    start, size = table.entries_lba * ss, table.entry_count * table.entry_size
    entries = bytearray(out[start:start + size])
    for i in range(table.entry_count):
        at = i * table.entry_size
        if any(entries[at:at + 16]):  # a used entry: a new unique GUID
            entries[at + 16:at + 32] = _guid(rnd)
    struct.pack_into("<I", hdr, 88, zlib.crc32(bytes(entries)))
    hdr[16:20] = bytes(4)
    struct.pack_into("<I", hdr, 16, zlib.crc32(bytes(hdr[:hsize])))
    out[ss:2 * ss] = hdr
    out[start:start + size] = entries
    return bytes(out)


def _guid(rnd: random.Random) -> bytes:
    raw = bytearray(rnd.getrandbits(128).to_bytes(16, "little"))
    raw[7] = (raw[7] & 0x0F) | 0x40  # version 4 (mixed-endian: byte 7 holds the version)
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


# --- the steps that touch disks -----------------------------------------------------------------

def wipe(members: Members, *, sysfs: Path = Path("/sys")) -> None:
    """Step 1: every member cleared of old signatures by the erase action's metadata mode."""
    from pyinit import erase

    reports = erase.erase(erase.Plan(members.disks, how=members.how), "metadata", sysfs=sysfs)
    removed = sum(len(r.removed) for r in reports)
    log.info(f"raid: {len(reports)} member disks wiped ({removed} old signatures removed)")


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(path, f"cannot open: {exc.strerror}") from exc


def grow_to_smallest(disk: str, which: grow.Which, smallest: int, *,
                     sleep: Callable[[float], None] = time.sleep
                     ) -> tuple[grow.GrowPlan, parttable.PartitionTable, str]:
    """Step 3: the mirrored partition grown to where it would end on the smallest member (the
    GPT backup to this disk's own end). Returns the plan, the table before and how the kernel
    re-read it."""
    fd = _open(disk)
    try:
        table, size = grow.table_on(fd)
        if table is None:
            raise RaidError(f"{disk}: the image has no partition table: nothing to mirror")
        own = grow.plan_grow(table, size, which)
        cap = grow.plan_grow(table, smallest, which).new_end
        planned = replace(own, new_end=max(own.old_end, min(own.new_end, cap)))
        grow.apply_grow(fd, planned)
        how = grow.reread(fd, disk, plan=planned, sleep=sleep)
        return planned, table, how
    finally:
        os.close(fd)


def clone(src: str, dst: str, root: grow.GrowPlan, *, sleep: Callable[[float], None] = time.sleep,
          rng: random.Random | None = None) -> str:
    """Step 4: bytes 0 to the mirrored partition's start copied from ``src`` to ``dst`` (boot
    code, table, BIOS boot partition, ESP), given an identity of its own, and its table made
    to fit ``dst``: the GPT backup at its end, the root partition ending where ``src``'s does.
    Returns how the kernel re-read ``dst``."""
    sfd, dfd = _open(src), _open(dst)
    try:
        head = os.pread(sfd, root.start, 0)
        if len(head) != root.start:
            raise DiskError(src, f"short read of its first {root.start} bytes")
        table = parttable.parse(head, sector_size=root.sector_size)
        if table is None:
            raise RaidError(f"{src}: no partition table in its first {root.start} bytes")
        head = fresh_ids(head, table, rng)
        for at in range(0, len(head), COPY_CHUNK):
            chunk = head[at:at + COPY_CHUNK]
            if os.pwrite(dfd, chunk, at) != len(chunk):
                raise DiskError(dst, f"short write at byte {at}")
        size, _ = grow.geometry(dfd)
        entry_part = table.by_number(root.number)
        if table.kind == "gpt":
            assert table.entry_count is not None and table.entry_size is not None
            entry_sectors = -(-table.entry_count * table.entry_size // root.sector_size)
            sectors = size // root.sector_size
            # the copied header still describes src's size: rewrite it (and the backup) for dst
            fit = grow.GrowPlan("gpt", root.number, root.sector_size, size, entry_part.start,
                                entry_part.end, entry_part.end,
                                old_backup_lba=table.alternate_lba, new_backup_lba=sectors - 1,
                                old_last_usable_lba=table.last_usable_lba,
                                new_last_usable_lba=sectors - 1 - entry_sectors - 1)
            if fit.new_end > (sectors - entry_sectors - 1) * root.sector_size:
                raise RaidError(f"{dst} is smaller than the mirrored layout")
            # written even when dst is as large as src: its backup GPT is not there yet
            grow.apply_grow(dfd, fit, force=True)
        os.fsync(dfd)
        return grow.reread(dfd, dst, sleep=sleep)
    finally:
        os.close(sfd)
        os.close(dfd)


@dataclass(frozen=True)
class Array:
    device: str                 # /dev/md/<name>
    kernel: str                 # /dev/md127
    members: tuple[str, ...]    # the member partitions, the first the written one
    array_line: str             # mdadm --detail --brief
    size: int                   # bytes

    def summary(self) -> str:
        return (f"RAID1 {self.device} ({self.kernel}, {human_size(self.size)}) over "
                f"{', '.join(self.members)}")


def create(name: str, level: int, parts: Sequence[str], fs_size: int | None, *,
           load: ginit.Loader = ginit.load_modules) -> Array:
    """Step 5: the array around the first member partition's filesystem, the others added
    (recovery runs in the background). Refused when the filesystem leaves no room at the
    partition's end for md's superblock and bitmap (it would be overwritten)."""
    load(["raid1"])  # md_mod comes along
    md = md_path(name)
    first = parts[0]
    part_size = _size(first)
    if fs_size is not None and fs_size > part_size - MD_ROOM:
        raise RaidError(f"the filesystem on {first} fills its partition ({human_size(fs_size)} "
                        f"of {human_size(part_size)}): no room for the md superblock at its end; "
                        "leave at least 1 MiB free after it in the image, or let the disks be "
                        "larger than the image")
    os.makedirs("/run/mdadm", exist_ok=True)
    proc.run(create_argv(md, level, first, len(parts), name), timeout=MDADM_TIMEOUT)
    if len(parts) > 1:
        proc.run(add_argv(md, parts[1:]), timeout=MDADM_TIMEOUT)
    kernel = os.path.realpath(md)
    line = parse_array_line(proc.run(["mdadm", "--detail", "--brief", md],
                                     timeout=MDADM_TIMEOUT).stdout)
    size = _size(kernel)
    if fs_size is not None and size < fs_size:
        raise RaidError(f"{md} ({size} bytes) is smaller than the filesystem on {first} "
                        f"({fs_size} bytes)")
    return Array(md, kernel, tuple(parts), line, size)


def _size(device: str) -> int:
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return syscalls.blk_size_bytes(fd)
    finally:
        os.close(fd)


def require_mdadm(root: Path) -> None:
    """A target without mdadm cannot assemble its root: refused before the array is made."""
    if not grow.in_target(root, "mdadm"):
        raise RaidError("the image has no mdadm (/sbin/mdadm): its initramfs could not "
                        "assemble a RAID1 root; install mdadm in the golden image "
                        "(docs/image.md)")


def configure_target(root: Path, array: Array, *, timeout: float = 900) -> str:
    """Step 6: mdadm.conf in the target, its initramfs regenerated by its own tool (in a
    chroot). Returns what was done, for the log."""
    rel = next((c for c in MDADM_CONF if (root / c).parent.is_dir()), MDADM_CONF[1])
    path = root / rel
    existing = path.read_text() if path.is_file() else ""
    path.write_text(mdadm_conf(existing, array.array_line))
    argv = initramfs_argv(root)
    if argv is None:
        log.warning("raid: the target has neither update-initramfs nor dracut: its initramfs "
                    "was not regenerated (it must assemble md arrays by itself)")
        return f"/{rel} written; no initramfs generator"
    proc.run(argv, chroot=root, timeout=timeout)
    return f"/{rel} written; initramfs regenerated ({' '.join(argv)})"


def zero_heads(paths: Sequence[str]) -> None:
    """After a failure: the first and last MiB of each of ``paths`` (the members that got a
    copy) zeroed, so a half-made copy never looks like a bootable system."""
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            size, _ = grow.geometry(fd)
            for start in (0, max(0, size - MIB)):
                syscalls.blk_zeroout(fd, start, min(MIB, size))
            os.fsync(fd)
        except OSError as exc:
            log.warning(f"raid: {path}: zeroing its ends failed: {exc.strerror}")
        finally:
            os.close(fd)


# --- the whole step -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RaidResult:
    array: Array
    growth: grow.GrowResult
    target: str                 # what configure_target did

    def summary(self) -> str:
        return f"{self.array.summary()}; {self.growth.summary()}; {self.target}"


def build(members: Members, action: Action, *, mountpoint: Path,
          load: ginit.Loader = ginit.load_modules, dev: Path = Path("/dev"),
          sysfs: Path = Path("/sys"), sleep: Callable[[float], None] = time.sleep) -> RaidResult:
    """Steps 3-6 after the image was written to the first member."""
    assert action.raid is not None
    first = members.paths[0]
    which = mirrored_partition(action)
    planned, _, how = grow_to_smallest(first, which, members.smallest, sleep=sleep)
    log.info(f"raid: partition {planned.number} of {first}: {human_size(planned.old_size)} -> "
             f"{human_size(planned.new_size)} (the end of the smallest member, "
             f"{human_size(members.smallest)}; {how})")
    [root_part] = grow.wait_for_partitions(first, [planned.number], dev=dev, sysfs=sysfs)
    fstype = ginit.blkid_tags(root_part).get("TYPE")
    if fstype in (None, ginit.LVM_MEMBER, "swap", "vfat", "linux_raid_member"):
        raise RaidError(f"partition {planned.number} ({root_part}) holds "
                        f"{fstype or 'no filesystem'}, not a root filesystem to mirror "
                        "(growPartition/rootPartition name the root partition)")
    assert fstype is not None
    with mounted_target(root_part, mountpoint, fstype=fstype, binds=(), resolv_conf=None,
                        read_only=True, load=load) as t:
        require_mdadm(t.root)
    parts = [root_part]
    for disk in members.paths[1:]:
        how = clone(first, disk, planned)
        [part] = grow.wait_for_partitions(disk, [planned.number], dev=dev, sysfs=sysfs)
        log.info(f"raid: {disk}: layout and boot partitions copied from {first} ({how})")
        parts.append(part)
    before = grow.fs_size(root_part, fstype)
    array = create(action.raid.name, action.raid.level, parts, before, load=load)
    log.info(f"raid: {array.summary()}: {array.array_line}")
    with mounted_target(array.device, mountpoint, fstype=fstype, load=load) as target:
        fs = grow.grow_fs(array.device, fstype, target.root, chroot=target.root)
        done = configure_target(target.root, array)
    growth = grow.GrowResult(
        disk=first, partition=planned.number, partition_device=root_part, table=planned.kind,
        partition_size_before=planned.old_size, partition_size_after=planned.new_size,
        table_changed=planned.changed, reread=how, root_device=array.device, fstype=fstype,
        fs_size_before=before, fs_size_after=grow.fs_size(array.device, fstype),
        fs_free_after=fs.free_after,
        fs_tool=f"{fs.tool} from the {fs.source}" if fs.tool else None)
    return RaidResult(array, growth, done)
