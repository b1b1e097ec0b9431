"""What uses a block device: mounts of it or its partitions, swap, and devices stacked on it.

One answer to "what mounts, swaps on or holds this disk or its partitions", one :class:`Usage`
record, used three ways: the image writer refuses every use (``Usage.conflicts("write")``), a
capture refuses read-write mounts and swap (``conflicts("read")``), and the disk selection skips
any use unless ``allow_mounted`` (:attr:`pyinit.disks.inventory.Disk.mounted` and ``holders``,
rendered from the same record).

:func:`disk_usage` is pure; :func:`read_family`, :func:`kernel_name` and :func:`device_usage`
read sysfs (:func:`pyinit.sysfs.read_attr`), /dev and /proc (:func:`proc_text`, which the other
disk modules share).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyinit.errors import DiskError
from pyinit.mounts import parse as parse_mounts
from pyinit.mounts import unescape as _unescape
from pyinit.sysfs import read_attr

SECTOR = 512                     # sysfs ``size`` is in 512-byte sectors whatever the disk's blocks


def proc_text(path: Path) -> str:
    """A /proc file's text; empty when it cannot be read."""
    try:
        return path.read_text()
    except OSError:
        return ""


@dataclass(frozen=True)
class Partition:
    name: str
    number: int
    size: int
    devnum: str = ""                        # major:minor


UseKind = Literal["mount", "swap", "holder"]
Purpose = Literal["write", "read"]


@dataclass(frozen=True)
class Holder:
    """A device stacked on a disk or partition (device-mapper/LVM, MD RAID, bcache): sysfs
    ``holders/``."""

    name: str                       # dm-0, md127
    holds: str                      # what it sits on: a partition, the disk or another holder
    devnum: str = ""                # major:minor
    dm_name: str | None = None      # vg0-root

    @property
    def label(self) -> str:
        return f"{self.name} ({self.dm_name})" if self.dm_name else self.name


@dataclass(frozen=True)
class Family:
    """A block device, its partitions and, transitively, what is stacked on them: a use of any
    of them is a use of the device."""

    name: str
    devnum: str = ""                # major:minor
    partitions: tuple[Partition, ...] = ()
    holders: tuple[Holder, ...] = ()

    def numbers(self) -> dict[str, str]:
        """``{kernel name: major:minor}`` of every member (numbers may be empty)."""
        out = {self.name: self.devnum}
        out.update((p.name, p.devnum) for p in self.partitions)
        out.update((h.name, h.devnum) for h in self.holders)
        return out


@dataclass(frozen=True)
class Use:
    """One thing using a disk's family."""

    kind: UseKind
    device: str        # mount, swap: the source as /proc names it, escapes undone; holder: dm-0
    where: str = ""    # mount: the mount point; holder: what it holds (vda2); swap: ""
    read_only: bool = False         # a mount nothing can write through (mount or superblock ro)
    fstype: str = ""                # mount only
    label: str = ""                 # holder only: "dm-0 (vg0-root)"

    @property
    def sentence(self) -> str:
        """``/dev/vda1 is mounted on /mnt``, ``/dev/vda2 is in use as swap``, ``vda2 is held by
        dm-0 (vg0-root)``: how a refusal names it."""
        if self.kind == "mount":
            return f"{self.device} is mounted on {self.where}"
        if self.kind == "swap":
            return f"{self.device} is in use as swap"
        return f"{self.where} is held by {self.label}"

    @property
    def brief(self) -> str:
        """``/dev/vda1 on /mnt``, ``/dev/vda2 is swap``, ``dm-0 (vg0-root)``: how the inventory
        table lists it."""
        if self.kind == "mount":
            return f"{self.device} on {self.where}"
        if self.kind == "swap":
            return f"{self.device} is swap"
        return self.label


@dataclass(frozen=True)
class Usage:
    """Everything using a disk's family, in order: mounts, swaps, holders."""

    uses: tuple[Use, ...] = ()

    def conflicts(self, purpose: Purpose) -> tuple[Use, ...]:
        """The uses that forbid ``purpose``. Writing: all of them (a file system, swap or stacked
        device would be corrupted, and would corrupt the image). Reading (a capture): read-write
        mounts and swap, which would tear the image; a read-only mount or a holder with nothing
        mounted read-write on it reads the same data the capture does."""
        if purpose == "write":
            return self.uses
        return tuple(u for u in self.uses
                     if u.kind == "swap" or (u.kind == "mount" and not u.read_only))

    @property
    def mounted(self) -> tuple[str, ...]:
        """Mounts and swaps in the inventory's words (:attr:`Disk.mounted`)."""
        return tuple(u.brief for u in self.uses if u.kind != "holder")

    @property
    def held(self) -> tuple[str, ...]:
        """Holder labels (:attr:`Disk.holders`)."""
        return tuple(u.label for u in self.uses if u.kind == "holder")

    @property
    def iso9660(self) -> bool:
        return any(u.fstype == "iso9660" for u in self.uses)


def _is_partition_name(name: str, disk: str) -> bool:
    """The kernel's partition names (``sda1``, ``nvme0n1p2``, ``loop1p1``; ``loop10`` is not
    ``loop1``'s): a safety net for partitions sysfs does not list."""
    rest = name.removeprefix(disk) if name.startswith(disk) else ""
    if disk[-1:].isdigit():
        return rest.startswith("p") and rest[1:].isdigit()
    return rest.isdigit()


def _read_only(options: str) -> bool:
    return "ro" in options.split(",")


def disk_usage(family: Family, *, mounts: str, mountinfo: str = "", swaps: str = "",
               resolve: Callable[[str], str] = os.path.realpath) -> Usage:
    """What uses ``family``, from the text of ``/proc/self/mounts``, ``/proc/self/mountinfo``
    and ``/proc/swaps`` and the family's holders. Pure given ``resolve`` (``/dev/…`` link ->
    a path whose basename is the kernel name).

    Mount sources are matched by kernel name after ``resolve``; mountinfo adds what only its
    major:minor names (``/dev/root``, bind mounts listed under another source), once per mount
    point. A mount is read-only when its options say ``ro`` (the kernel shows ``ro`` when the
    mount or its superblock is read-only). Devices stacked on the family count as the family.
    """
    numbers = family.numbers()
    by_number = {v: k for k, v in numbers.items() if v}

    def ours(source: str) -> bool:
        if not source.startswith("/dev/"):
            return False
        name = os.path.basename(resolve(source))
        return name in numbers or _is_partition_name(name, family.name)

    uses: list[Use] = []
    for m in parse_mounts(mounts):
        if ours(m.source):
            uses.append(Use("mount", m.source, m.target, fstype=m.fstype,
                            read_only=m.read_only))
    seen = {u.where for u in uses}
    for line in mountinfo.splitlines():
        # id parent maj:min root mount-point options [optional…] - fstype source super-options
        fields = line.split()
        if len(fields) < 6 or fields[2] not in by_number:
            continue
        where = _unescape(fields[4])
        if where in seen:
            continue
        seen.add(where)
        sep = fields.index("-", 6) if "-" in fields[6:] else len(fields)
        tail = fields[sep + 1:]
        uses.append(Use("mount", f"/dev/{by_number[fields[2]]}", where,
                        fstype=tail[0] if tail else "",
                        read_only=_read_only(fields[5]) or (len(tail) > 2
                                                             and _read_only(tail[2]))))
    for line in swaps.splitlines()[1:]:
        fields = line.split()
        if fields and ours(source := _unescape(fields[0])):
            uses.append(Use("swap", source))
    uses.extend(Use("holder", h.name, h.holds, label=h.label) for h in family.holders)
    return Usage(tuple(uses))


def read_family(block: Path, name: str) -> Family:
    """``name``'s :class:`Family` from ``block`` (``/sys/block`` for disks, ``/sys/class/block``
    for any block device, partitions included); empty when sysfs does not know it."""
    base = block / name
    parts: list[Partition] = []
    with contextlib.suppress(OSError):
        for child in sorted(base.iterdir()):
            number = read_attr(child / "partition")
            if number is not None and number.isdigit():
                size = int(read_attr(child / "size") or "0") * SECTOR
                parts.append(Partition(child.name, int(number), size,
                                       read_attr(child / "dev") or ""))
    parts.sort(key=lambda p: p.number)
    holders: list[Holder] = []
    todo = [(name, base), *((p.name, base / p.name) for p in parts)]
    seen = {name}
    for held, node in todo:                 # breadth first: grows while it runs
        with contextlib.suppress(OSError):
            for holder in sorted((node / "holders").iterdir()):
                if holder.name in seen:
                    continue
                seen.add(holder.name)
                holders.append(Holder(holder.name, held, read_attr(holder / "dev") or "",
                                      read_attr(holder / "dm" / "name")))
                todo.append((holder.name, holder))
    return Family(name, read_attr(base / "dev") or "", tuple(parts), tuple(holders))


def kernel_name(device: str, *, rdev: int | None = None, dev: Path = Path("/dev"),
                sysfs: Path = Path("/sys")) -> str:
    """The kernel's name of block device ``device`` (``/dev/sda``, a ``/dev/disk/by-id/…``
    link): by its device number ``rdev`` through ``sysfs`` when one is given and sysfs knows
    it, else the path the link leads to under ``dev`` (``nvme0n1``), else the basename of
    that path."""
    if rdev is not None:
        node = sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
        if node.exists():
            return os.path.basename(os.path.realpath(node))
    real = Path(os.path.realpath(dev / device.removeprefix("/dev/")))
    try:
        return real.relative_to(dev.resolve()).as_posix()
    except ValueError:
        return real.name


def device_usage(name: str, *, sysfs: Path = Path("/sys"), proc: Path = Path("/proc")) -> Usage:
    """:func:`disk_usage` of block device ``name`` on this system (``sysfs/class/block``,
    ``proc/self/mounts``, ``proc/self/mountinfo``, ``proc/swaps``)."""
    return disk_usage(read_family(sysfs / "class" / "block", name),
                      mounts=proc_text(proc / "self" / "mounts"),
                      mountinfo=proc_text(proc / "self" / "mountinfo"),
                      swaps=proc_text(proc / "swaps"))


def check_device(device: str, conflict: Callable[[Usage], str | None], *,
                 allow_regular_file: bool = False, proc: Path = Path("/proc"),
                 sysfs: Path = Path("/sys")) -> bool:
    """Refuse (:class:`~pyinit.errors.DiskError`, one line) a missing device, anything but a
    block device, and a block device whose :func:`device_usage` ``conflict`` names a reason
    against (the writer's and the capture's rules differ). Returns True for a block device,
    False for a regular file that ``allow_regular_file`` lets through (host runs, tests)."""
    try:
        st = os.stat(device)
    except FileNotFoundError as exc:
        raise DiskError(device, "does not exist") from exc
    except OSError as exc:
        raise DiskError(device, f"cannot stat: {exc.strerror}") from exc
    if allow_regular_file and stat.S_ISREG(st.st_mode):
        return False
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(device, "is not a block device")
    name = kernel_name(device, rdev=st.st_rdev, sysfs=sysfs)
    problem = conflict(device_usage(name, sysfs=sysfs, proc=proc))
    if problem:
        raise DiskError(device, problem)
    return True
