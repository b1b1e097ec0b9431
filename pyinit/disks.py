"""Which disk to write: an inventory read from sysfs, root device hints, stable names without udev.

Real servers have several disks whose kernel names (``sda``, ``nvme0n1``) change between boots,
so a machine's configuration names the disk by what it *is* (serial, WWN, model, size, the slot
it sits in) rather than by the name it got this time. This module does that in three layers:

Inventory (:func:`inventory`)
    One :class:`Disk` per whole disk under ``/sys/block``, read from sysfs attributes (no udev,
    no lsblk in the initramfs): size, model, vendor, serial, WWN, rotational, removable, the
    transport and the udev ``by-path`` name computed from the sysfs device path (the way udev's
    ``path_id`` does it for PCI, virtio, NVMe, ATA, USB and SCSI), the SCSI address, partitions,
    and what uses it (mounts of it or its partitions, swap, device-mapper/MD holders).

What uses a disk (:func:`disk_usage`, :func:`device_usage`)
    One :class:`Usage` record, shared by the disk selection (any use skips a disk unless
    ``allow_mounted``), the writer (any use refuses) and a capture (only read-write mounts and
    swap refuse): see :meth:`Usage.conflicts`.

    Left out: ``loop``, ``ram``, ``zram``, ``nbd``, optical drives (``sr``, SCSI type 5),
    floppies, hidden devices (NVMe multipath paths) and zero-size devices (an empty card
    reader). Device-mapper (``dm-*``) and MD RAID (``md*``) devices are left out too: they only
    exist when something assembled them, a whole-disk image (partition table included) belongs
    on a physical disk, and writing a disk under an assembled array would corrupt it. Their
    member disks stay in the inventory, marked as held (refused like a mounted disk).

    The boot medium: which device the bootloader loaded the initramfs from is unknowable in
    general (PXE, virtual media, a USB stick all look alike once the kernel runs). pyinit treats
    as the boot medium a disk carrying an ISO 9660 file system (a live/virtual-media image: the
    ``CD001`` signature at byte 32769 of the disk or a partition, or an ``iso9660`` mount); a disk
    with any mounted file system is refused anyway as *mounted*.

Hints (:func:`parse_hints`, :func:`select_disk`)
    The ``rootDeviceHints`` of ironic(-python-agent), same names, same operators (``s==``,
    ``<in>``, ``<or>``, ``>=``…) and the same case-insensitive comparison, with two pyinit
    differences: ``size`` takes units (``">= 100GiB"``; a bare number is GiB as in ironic), and
    when several disks match, an identity hint (serial, wwn, name, by_path, hctl) is an error
    (it was meant to name one disk) while the other hints pick the *smallest* match (ironic takes
    the first in device order, which changes between boots).

Stable names (:func:`stable_links`, :func:`resolve_device`, :func:`make_links`)
    The ``/dev/disk/by-id`` and ``/dev/disk/by-path`` names udev's persistent-storage rules
    would create, computed from the inventory, so a configuration naming
    ``/dev/disk/by-id/nvme-…`` works in an initramfs without udev.

Waiting and choosing (:func:`settle`, :func:`choose`)
    Drivers probe asynchronously (USB mass storage waits a second before its SCSI scan), so the
    boot first waits, bounded, until ``/sys/block`` stops changing; then :func:`choose` turns
    what the action says (a path, a ``/dev/disk/by-…`` name, hints, or nothing) into one disk.

Everything except :func:`inventory`, :func:`read_family`, :func:`kernel_name`,
:func:`device_usage`, :func:`settle` and :func:`make_links` is pure.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pyinit.errors import ConfigError, DiskError
from pyinit.mounts import parse as parse_mounts
from pyinit.mounts import unescape as _unescape
from pyinit.units import parse_size

GIB = 1 << 30
SECTOR = 512                     # sysfs ``size`` is in 512-byte sectors whatever the disk's blocks
ISO9660_MAGIC_OFFSET = 32769     # "CD001" in the first volume descriptor (sector 16 + 1)
_SKIP_PREFIXES = ("loop", "ram", "zram", "nbd", "sr", "fd", "dm-", "md")
_PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_HCTL_RE = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")
_USB_IFACE_RE = re.compile(r"^\d+-[\d.]+:\d+\.\d+$")
_USB_DEV_RE = re.compile(r"^\d+-[\d.]+$")
Transport = Literal["virtio", "nvme", "sata", "usb", "scsi", "mmc"]


@dataclass(frozen=True)
class Partition:
    name: str
    number: int
    size: int
    devnum: str = ""                        # major:minor


@dataclass(frozen=True)
class Disk:
    """A whole disk as sysfs shows it. ``path`` is ``/dev/<name>``."""

    name: str
    size: int                               # bytes
    model: str | None = None
    vendor: str | None = None
    serial: str | None = None
    wwn: str | None = None                  # udev ID_WWN: 0x… (NAA/EUI-64), NVMe: eui./nvme./uuid.
    wwn_with_extension: str | None = None
    wwn_vendor_extension: str | None = None
    rotational: bool = False
    removable: bool = False                 # sysfs removable=1, or on USB
    transport: Transport | None = None
    by_path: str | None = None              # udev ID_PATH: pci-0000:00:04.0, …-nvme-1, …-ata-1.0
    hctl: str | None = None                 # SCSI host:channel:target:lun
    read_only: bool = False
    devnum: str = ""                        # major:minor
    partitions: tuple[Partition, ...] = ()
    mounted: tuple[str, ...] = ()           # "/dev/sda1 on /mnt", "/dev/sda2 is swap"
    holders: tuple[str, ...] = ()           # "dm-0 (vg0-root)", "md127"
    boot_medium: str | None = None          # why pyinit takes it for the boot medium
    by_id: tuple[str, ...] = ()             # udev by-id names (without the directory)
    by_path_compat: tuple[str, ...] = ()    # older udev by-path names (virtio-pci-…, …-ata-1)

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def in_use(self) -> bool:
        return bool(self.mounted or self.holders)

    def summary(self) -> str:
        """``vda (20 GiB, QEMU HARDDISK, serial abc)``: how errors name a disk."""
        parts = [human_size(self.size)]
        if self.model:
            parts.append(self.model)
        if self.serial:
            parts.append(f"serial {self.serial}")
        return f"{self.name} ({', '.join(parts)})"


def human_size(n: int) -> str:
    """Binary units, at most one decimal: ``20 GiB``, ``1.8 TiB``, ``512 B``. Pure."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            text = f"{value:.1f}".removesuffix(".0") if unit != "B" else str(n)
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- udev's naming --------------------------------------------------------------------------

_UDEV_SAFE = re.compile(r"[^0-9A-Za-z#+\-.:=@_]")


def udev_safe(text: str) -> str:
    """What udev makes of a string for a link name (``udev_replace_whitespace`` then
    ``udev_replace_chars``): trimmed, each run of whitespace one ``_``, any other character
    outside ``0-9A-Za-z#+-.:=@_`` a ``_``. Pure."""
    return _UDEV_SAFE.sub("_", "_".join(text.split()))


def wwn_fields(wwid: str | None) -> tuple[str | None, str | None, str | None]:
    """(wwn, wwn_with_extension, wwn_vendor_extension) from a sysfs ``wwid`` as udev reports
    them. SCSI/ATA ``naa.<hex>`` -> ``0x<first 16>`` (NAA type 6 carries 16 more hex digits, the
    vendor extension); ``eui.<hex>`` on SCSI -> ``0x<hex>``; NVMe ids (``eui.``, ``nvme.``,
    ``uuid.``) are kept verbatim as udev and lsblk show them; T10 vendor ids have no WWN. Pure."""
    if not wwid:
        return None, None, None
    wwid = wwid.strip()
    kind, _, value = wwid.partition(".")
    if kind == "naa" and re.fullmatch(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}", value):
        value = value.lower()
        ext = f"0x{value[16:]}" if len(value) == 32 else None
        return f"0x{value[:16]}", f"0x{value}", ext
    return None, None, None


def by_id_names(disk: Disk, *, ata: bool = False, usb_instance: str | None = None,
                nvme_wwid: str | None = None) -> tuple[str, ...]:
    """The ``/dev/disk/by-id`` names udev's 60-persistent-storage rules give ``disk``. Pure.

    virtio ``virtio-<serial>``; NVMe ``nvme-<model>_<serial>`` and ``nvme-<wwid>``; ATA
    ``ata-<model>_<serial>``; USB ``usb-<vendor>_<model>_<serial>-<target>:<lun>``; other SCSI
    ``scsi-3<naa>``; every disk with an NAA WWN ``wwn-0x…``. Other SCSI identities (T10, vendor
    specific page 83 designators) are not derived: name such disks by serial or by-path.
    """
    names: list[str] = []
    serial = udev_safe(disk.serial or "")
    model = udev_safe(disk.model or "")
    if disk.transport == "virtio" and serial:
        names.append(f"virtio-{serial}")
    elif disk.transport == "nvme":
        if serial and model:
            names.append(f"nvme-{model}_{serial}")
        if nvme_wwid:
            names.append(f"nvme-{udev_safe(nvme_wwid)}")
    elif disk.transport == "usb" and serial:
        vendor = udev_safe(disk.vendor or "")
        ident = "_".join(p for p in (vendor, model, serial) if p)
        names.append(f"usb-{ident}-{usb_instance or '0:0'}")
    elif ata and serial:
        names.append(f"ata-{model}_{serial}" if model else f"ata-{serial}")
    elif disk.transport in ("scsi", "sata") and disk.wwn_with_extension:
        names.append(f"scsi-3{disk.wwn_with_extension.removeprefix('0x')}")
    if disk.wwn_with_extension:
        names.append(f"wwn-{disk.wwn_with_extension}")
    return tuple(names)


@dataclass(frozen=True)
class _PathInfo:
    by_path: str | None
    compat: tuple[str, ...]
    transport: Transport | None
    hctl: str | None
    usb_dir: str | None         # the USB device directory (serial lives there)


def path_id(components: Sequence[str], *, name: str, nsid: str | None = None,
            ata_port: str | None = None, scsi_host_base: int = 0) -> _PathInfo:
    """udev's ``ID_PATH`` for a disk from its sysfs device path, split at ``/`` below
    ``/sys/devices`` (``pci0000:00/0000:00:04.0/virtio1/block/vda``). Pure.

    Like ``path_id``: only the innermost PCI function counts (``pci-0000:00:1f.2``); virtio adds
    nothing (udev's compat rule adds ``virtio-pci-…``); NVMe ``-nvme-<nsid>``; ATA
    ``-ata-<port>.0`` (and the pre-v253 ``-ata-<port>``); USB ``-usb-0:<ports>:<config>.<if>``
    then ``-scsi-0:C:T:L``; other SCSI ``-scsi-<host - first host on the adapter>:C:T:L``.
    Platform, virtual and other parents give no by-path name (None).
    """
    pci_index = max((i for i, c in enumerate(components) if _PCI_RE.match(c)), default=None)
    hctl = next((c for c in components if _HCTL_RE.match(c)), None)
    below = list(components[pci_index + 1:]) if pci_index is not None else list(components)
    transport: Transport | None = None
    tail = ""
    usb_dir = None
    if "nvme" in below or name.startswith("nvme"):
        transport = "nvme"
        tail = f"-nvme-{nsid}" if nsid else ""
    elif any(_USB_IFACE_RE.match(c) for c in below):
        transport = "usb"
        iface = next(c for c in below if _USB_IFACE_RE.match(c))
        usb_dir = next((c for c in reversed(below[:below.index(iface)])
                        if _USB_DEV_RE.match(c)), None)
        ports = iface.split("-", 1)[1]                      # 2:1.0 from 1-2:1.0
        tail = f"-usb-0:{ports}"
        if hctl:
            _h, c, t, lun = hctl.split(":")
            tail += f"-scsi-0:{c}:{t}:{lun}"
    elif any(re.fullmatch(r"ata\d+", c) for c in below):
        transport = "sata"
        port = ata_port or next(c for c in below if re.fullmatch(r"ata\d+", c))[3:]
        tail = f"-ata-{port}.0"
    elif any(re.fullmatch(r"virtio\d+", c) for c in below) and hctl is None:
        transport = "virtio"
    elif hctl is not None:
        transport = "scsi"
        h, c, t, lun = hctl.split(":")
        tail = f"-scsi-{int(h) - scsi_host_base}:{c}:{t}:{lun}"
    elif name.startswith("mmcblk"):
        transport = "mmc"
    if pci_index is None:
        return _PathInfo(None, (), transport, hctl, usb_dir)
    base = f"pci-{components[pci_index]}"
    by_path = base + tail
    compat: tuple[str, ...] = ()
    if transport == "virtio":
        compat = (f"virtio-{by_path}",)
    elif transport == "sata":
        compat = (by_path.removesuffix(".0"),)
    return _PathInfo(by_path, compat, transport, hctl, usb_dir)


# --- reading sysfs --------------------------------------------------------------------------

def _read(path: Path) -> str | None:
    """A sysfs attribute, stripped; None when absent, unreadable or empty."""
    try:
        text = path.read_bytes().decode("utf-8", "replace").strip().strip("\0").strip()
    except OSError:
        return None
    return text or None


def vpd_serial(page80: bytes) -> str | None:
    """The unit serial number from a SCSI VPD page 0x80 (``vpd_pg80``). Pure."""
    if len(page80) < 4 or page80[1] != 0x80:
        return None
    text = page80[4:4 + page80[3]].decode("ascii", "replace").strip().strip("\0").strip()
    return text or None


def _ata_string(identify: bytes, first_word: int, last_word: int) -> str:
    # ATA IDENTIFY strings are big-endian within each 16-bit word.
    raw = identify[first_word * 2:(last_word + 1) * 2]
    swapped = bytes(b for i in range(0, len(raw) - 1, 2) for b in (raw[i + 1], raw[i]))
    return swapped.decode("ascii", "replace").strip().strip("\0").strip()


def ata_identity(page89: bytes) -> tuple[str | None, str | None]:
    """(model, serial) from the IDENTIFY DEVICE data in VPD page 0x89 (``vpd_pg89``, ATA
    Information): libata's sysfs ``model`` is the 16-character SCSI INQUIRY field, udev's
    ``ata_id`` and by-id names use the full 40-character ATA model. Pure."""
    if len(page89) < 60 + 512 or page89[1] != 0x89:
        return None, None
    identify = page89[60:60 + 512]
    return (_ata_string(identify, 27, 46) or None, _ata_string(identify, 10, 19) or None)


def _proc_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --- what uses a disk -----------------------------------------------------------------------
#
# One answer to "what mounts, swaps on or holds this disk or its partitions", used three ways:
# the writer refuses every use (Usage.conflicts("write")), a capture refuses read-write mounts
# and swap (conflicts("read")), and the disk selection skips any use unless ``allow_mounted``
# (Disk.mounted/Disk.holders, rendered from the same record).

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
            number = _read(child / "partition")
            if number is not None and number.isdigit():
                size = int(_read(child / "size") or "0") * SECTOR
                parts.append(Partition(child.name, int(number), size, _read(child / "dev") or ""))
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
                holders.append(Holder(holder.name, held, _read(holder / "dev") or "",
                                      _read(holder / "dm" / "name")))
                todo.append((holder.name, holder))
    return Family(name, _read(base / "dev") or "", tuple(parts), tuple(holders))


def kernel_name(device: str, rdev: int, sysfs: Path = Path("/sys")) -> str:
    """The kernel name of block device ``device`` (any path or ``/dev/disk/…`` link) with
    device number ``rdev``: by major:minor through sysfs, else the link's target."""
    node = sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
    return os.path.basename(os.path.realpath(node if node.exists() else device))


def device_usage(name: str, *, sysfs: Path = Path("/sys"), proc: Path = Path("/proc")) -> Usage:
    """:func:`disk_usage` of block device ``name`` on this system (``sysfs/class/block``,
    ``proc/self/mounts``, ``proc/self/mountinfo``, ``proc/swaps``)."""
    return disk_usage(read_family(sysfs / "class" / "block", name),
                      mounts=_proc_text(proc / "self" / "mounts"),
                      mountinfo=_proc_text(proc / "self" / "mountinfo"),
                      swaps=_proc_text(proc / "swaps"))


def _has_iso9660(node: Path) -> bool:
    try:
        with node.open("rb") as f:
            f.seek(ISO9660_MAGIC_OFFSET)
            return f.read(5) == b"CD001"
    except OSError:
        return False


def _skipped(name: str, base: Path) -> bool:
    if name.startswith(_SKIP_PREFIXES):
        return True
    if _read(base / "hidden") == "1":
        return True
    return _read(base / "device" / "type") == "5"           # SCSI optical drive


def _scsi_host_base(devdir: Path, hctl: str | None) -> int:
    """path_id numbers SCSI hosts from the first host on the same adapter (``host6`` is
    ``scsi-0:…`` when it is the adapter's first host)."""
    if hctl is None:
        return 0
    host = int(hctl.split(":")[0])
    for parent in devdir.parents:
        if parent.name == f"host{host}":
            hosts = []
            with contextlib.suppress(OSError):
                hosts = [int(p.name[4:]) for p in parent.parent.iterdir()
                         if re.fullmatch(r"host\d+", p.name)]
            return min(hosts, default=host)
    return host


def _read_disk(sysfs: Path, block: Path, name: str, *, mounts: str, mountinfo: str, swaps: str,
               dev: Path, probe: bool) -> Disk | None:
    base = block / name
    if _skipped(name, base):
        return None
    size = int(_read(base / "size") or "0") * SECTOR
    if size == 0:
        return None
    real = Path(os.path.realpath(base))
    devices = Path(os.path.realpath(sysfs / "devices"))
    try:
        components = real.relative_to(devices).parts
    except ValueError:
        components = real.parts
    device = base / "device"
    nsid = _read(base / "nsid")
    ata_port = None
    ata_dir = next((p for p in real.parents if re.fullmatch(r"ata\d+", p.name)), None)
    if ata_dir is not None:
        ata_port = _read(ata_dir / "ata_port" / ata_dir.name / "port_no")
    hctl = next((c for c in components if _HCTL_RE.match(c)), None)
    info = path_id(components, name=name, nsid=nsid, ata_port=ata_port,
                   scsi_host_base=_scsi_host_base(real, hctl))

    vendor = _read(device / "vendor")
    model = _read(device / "model")
    serial = _read(base / "serial") or _read(device / "serial")
    is_ata = vendor == "ATA"
    with contextlib.suppress(OSError):
        serial = serial or vpd_serial((device / "vpd_pg80").read_bytes())
    if is_ata:
        with contextlib.suppress(OSError):
            full_model, ata_serial = ata_identity((device / "vpd_pg89").read_bytes())
            model = full_model or model
            serial = ata_serial or serial
    usb_instance = None
    if info.transport == "usb":
        if info.usb_dir:
            usb = next((p for p in real.parents if p.name == info.usb_dir), None)
            if usb is not None:
                serial = _read(usb / "serial") or serial
        if info.hctl:
            usb_instance = ":".join(info.hctl.split(":")[2:])
    wwid = _read(base / "wwid") or _read(device / "wwid")
    if info.transport == "nvme":
        wwn, wwn_ext, wwn_vendor = wwid, None, None
    else:
        wwn, wwn_ext, wwn_vendor = wwn_fields(wwid)

    family = read_family(block, name)
    usage = disk_usage(family, mounts=mounts, mountinfo=mountinfo, swaps=swaps,
                       resolve=_resolver(dev))
    boot = "an iso9660 file system is mounted from it" if usage.iso9660 else None
    if boot is None and probe:
        for node in [name, *(p.name for p in family.partitions)]:
            if _has_iso9660(dev / node):
                boot = f"{node} carries an iso9660 file system (live or virtual media)"
                break
    removable = _read(base / "removable") == "1" or info.transport == "usb"
    disk = Disk(
        name=name, size=size, model=model, vendor=vendor, serial=serial, wwn=wwn,
        wwn_with_extension=wwn_ext, wwn_vendor_extension=wwn_vendor,
        rotational=_read(base / "queue" / "rotational") == "1", removable=removable,
        transport=info.transport, by_path=info.by_path, hctl=info.hctl,
        read_only=_read(base / "ro") == "1", devnum=family.devnum, partitions=family.partitions,
        mounted=usage.mounted, holders=usage.held, boot_medium=boot,
        by_path_compat=info.compat)
    ids = by_id_names(disk, ata=is_ata, usb_instance=usb_instance,
                      nvme_wwid=wwid if info.transport == "nvme" else None)
    return replace(disk, by_id=ids)


def _resolver(dev: Path) -> Callable[[str], str]:
    """``/dev/…`` as seen in /proc/mounts -> a path whose basename is the kernel name, looked
    up under ``dev`` (so tests can use a temporary directory)."""
    def resolve(source: str) -> str:
        if not source.startswith("/dev/"):
            return source
        host = dev / source.removeprefix("/dev/")
        return os.path.realpath(host) if os.path.islink(host) else source
    return resolve


def inventory(sysfs: Path = Path("/sys"), dev: Path = Path("/dev"), *,
              mounts_text: str | None = None, mountinfo_text: str | None = None,
              swaps_text: str | None = None, probe: bool = True) -> list[Disk]:
    """Every whole disk a machine has, sorted by name (see the module docstring for what is
    left out). ``*_text`` default to this process's /proc files; ``probe`` reads the first
    33 KiB of each disk and partition under ``dev`` looking for an iso9660 boot medium."""
    proc = Path("/proc")
    mounts = _proc_text(proc / "self" / "mounts") if mounts_text is None else mounts_text
    mountinfo = (_proc_text(proc / "self" / "mountinfo") if mountinfo_text is None
                 else mountinfo_text)
    swaps = _proc_text(proc / "swaps") if swaps_text is None else swaps_text
    block = sysfs / "block"
    try:
        names = sorted(p.name for p in block.iterdir())
    except OSError as exc:
        raise DiskError(str(block), f"cannot list block devices: {exc.strerror}") from exc
    disks = []
    for name in names:
        disk = _read_disk(sysfs, block, name, mounts=mounts, mountinfo=mountinfo, swaps=swaps,
                          dev=dev, probe=probe)
        if disk is not None:
            disks.append(disk)
    return sorted(disks, key=lambda d: _natural(d.name))


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --- hints ----------------------------------------------------------------------------------

HintName = Literal["size", "model", "vendor", "serial", "wwn", "wwn_with_extension",
                   "wwn_vendor_extension", "name", "rotational", "hctl", "by_path", "tran"]
STRING_HINTS = ("model", "vendor", "serial", "wwn", "wwn_with_extension",
                "wwn_vendor_extension", "name", "hctl", "by_path", "tran")
IDENTITY_HINTS = frozenset({"serial", "wwn", "wwn_with_extension", "name", "by_path", "hctl"})
STRING_OPS = ("s==", "s!=", "s<=", "s>=", "s<", "s>", "<in>", "<or>")
SIZE_OPS = ("==", "!=", "<=", ">=", "<", ">", "<or>")
_OP_RE = re.compile(r"^\s*(s==|s!=|s<=|s>=|s<|s>|<in>|<or>|<all-in>|==|!=|<=|>=|<|>|=)\s*")
_ALIASES = {"by-path": "by_path", "byPath": "by_path", "wwnWithExtension": "wwn_with_extension",
            "wwnVendorExtension": "wwn_vendor_extension"}


@dataclass(frozen=True)
class Expr:
    """One hint: an operator and its value(s). Strings are compared normalised (lower case,
    whitespace runs made one space); sizes in bytes."""

    op: str
    values: tuple[str | int, ...]
    text: str                          # as written, for messages

    def matches(self, value: str | int | None) -> bool:
        if value is None:
            return False
        if isinstance(value, str):
            value = _norm(value)
        if self.op == "<or>":
            return value in self.values
        want = self.values[0]
        if self.op == "<in>":
            return isinstance(value, str) and isinstance(want, str) and want in value
        op = self.op.removeprefix("s")
        a: Any = value
        b: Any = want
        return bool({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                     ">=": a >= b}[op])


@dataclass(frozen=True)
class Hints:
    """Validated ``rootDeviceHints``: every field None means "no hints"."""

    size: Expr | None = None
    model: Expr | None = None
    vendor: Expr | None = None
    serial: Expr | None = None
    wwn: Expr | None = None
    wwn_with_extension: Expr | None = None
    wwn_vendor_extension: Expr | None = None
    name: Expr | None = None
    hctl: Expr | None = None
    by_path: Expr | None = None
    tran: Expr | None = None
    rotational: bool | None = None

    def given(self) -> dict[str, Expr | bool]:
        return {k: v for k, v in _fields_of(self).items() if v is not None}

    @property
    def empty(self) -> bool:
        return not self.given()

    @property
    def identity(self) -> bool:
        return any(k in IDENTITY_HINTS for k in self.given())

    def describe(self) -> str:
        """``{serial: S3Z, size: >= 100GiB}``: how messages show the hints."""
        items = [f"{k}: {str(v).lower() if isinstance(v, bool) else v.text}"
                 for k, v in self.given().items()]
        return "{" + ", ".join(items) + "}"

    def mismatch(self, disk: Disk) -> str | None:
        """The first hint ``disk`` fails, as ``serial abc does not match S3Z``; None if all
        match."""
        for key, expr in self.given().items():
            if isinstance(expr, bool):
                if disk.rotational != expr:
                    return f"rotational is {str(disk.rotational).lower()}"
                continue
            values = _disk_values(disk, key)
            if not any(expr.matches(v) for v in values):
                shown = values[0] if values and values[0] is not None else "unknown"
                if key == "size" and isinstance(shown, int):
                    shown = human_size(shown)
                return f"{key} {shown} does not match {expr.text}"
        return None


def _fields_of(hints: Hints) -> dict[str, Expr | bool | None]:
    return {f: getattr(hints, f) for f in Hints.__dataclass_fields__}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _dev_name(value: str) -> str:
    """``/dev/sdb`` and ``sdb`` are the same name; by-id/by-path paths keep their directory
    (``disk/by-id/…``) so they are matched against the disk's stable names."""
    return value.strip().removeprefix("/dev/")


def _disk_values(disk: Disk, key: str) -> list[str | int | None]:
    if key == "size":
        return [disk.size]
    if key == "name":
        return [disk.name, *(f"disk/by-id/{n}" for n in disk.by_id),
                *(f"disk/by-path/{n}" for n in (disk.by_path, *disk.by_path_compat) if n)]
    if key == "by_path":
        return [disk.by_path, *disk.by_path_compat]
    if key == "tran":
        return [disk.transport]
    value = getattr(disk, key)
    return [value]


def _parse_size_value(field_name: str, text: str) -> int:
    text = text.strip()
    try:
        bare = re.fullmatch(r"\d+(\.\d+)?", text)       # ironic: a bare number is GiB
        value = int(float(text) * GIB) if bare else parse_size(text)
    except ValueError as exc:
        raise ConfigError(field_name, f"{exc}; a bare number is GiB") from exc
    if value <= 0:
        raise ConfigError(field_name, f"must be a positive size, got {text!r}")
    return value


def _parse_expr(field_name: str, key: str, raw: str | int) -> Expr:
    text = str(raw).strip()
    if not text:
        raise ConfigError(field_name, "is empty")
    allowed = SIZE_OPS if key == "size" else STRING_OPS
    m = _OP_RE.match(text)
    op = m.group(1) if m else ("==" if key == "size" else "s==")
    rest = text[m.end():] if m else text
    if op == "=":
        raise ConfigError(field_name, f"operator '=' is ambiguous (in oslo specs it means >=); "
                                      f"use == or >=: {text!r}")
    if op not in allowed:
        kind = "a size" if key == "size" else "a string"
        raise ConfigError(field_name, f"operator {op} does not apply to {kind} "
                                      f"(use one of {' '.join(allowed)}): {text!r}")
    if op == "<or>" or "<or>" in rest:
        if m and op != "<or>":
            raise ConfigError(field_name, f"cannot combine {op} with <or>: {text!r}")
        op = "<or>"
        pieces = [p.strip() for p in rest.split("<or>")]
        if not all(pieces) or len(pieces) < 2:
            raise ConfigError(field_name, f"<or> needs two or more values "
                                          f"(<or> a <or> b): {text!r}")
    else:
        pieces = [rest.strip()]
        if not pieces[0]:
            raise ConfigError(field_name, f"operator {op} needs a value: {text!r}")
    values: tuple[str | int, ...]
    if key == "size":
        values = tuple(_parse_size_value(field_name, p) for p in pieces)
    else:
        if key == "name":
            pieces = [_dev_name(p) for p in pieces]
        elif key == "by_path":
            pieces = [p.removeprefix("/dev/disk/by-path/") for p in pieces]
        elif key in ("wwn", "wwn_with_extension", "wwn_vendor_extension"):
            pieces = [f"0x{p[4:]}" if p.lower().startswith("naa.") else p for p in pieces]
        values = tuple(_norm(p) for p in pieces)
    return Expr(op, values, text)


_TRUE = ("true", "yes", "on", "1", "y", "t")
_FALSE = ("false", "no", "off", "0", "n", "f")


def parse_hints(data: Mapping[str, Any] | None, *, field_name: str = "rootDeviceHints"
                ) -> Hints:
    """The action's ``rootDeviceHints`` object -> :class:`Hints`. Pure. A ConfigError names
    the hint (``rootDeviceHints.size``) for an unknown hint, a wrong type, an operator that
    does not apply or a bad size."""
    if data is None:
        return Hints()
    if not isinstance(data, Mapping):
        raise ConfigError(field_name, f"must be an object, got {type(data).__name__}")
    valid = set(Hints.__dataclass_fields__)
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _ALIASES.get(raw_key, raw_key)
        name = f"{field_name}.{raw_key}"
        if key not in valid:
            raise ConfigError(name, f"unknown hint (valid: {', '.join(sorted(valid))})")
        if value is None:
            continue
        if key == "rotational":
            if isinstance(value, bool):
                values[key] = value
            elif isinstance(value, int) and value in (0, 1):
                values[key] = bool(value)
            elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                values[key] = value.strip().lower() in _TRUE
            else:
                raise ConfigError(name, f"must be a boolean, got {type(value).__name__} "
                                        f"{value!r}")
        elif key == "size":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ConfigError(name, f"must be a size (integer GiB or a string like "
                                        f"\">= 100GiB\"), got {type(value).__name__} {value!r}")
            values[key] = _parse_expr(name, key, value)
        else:
            if not isinstance(value, str):
                raise ConfigError(name, f"must be a string, got {type(value).__name__} "
                                        f"{value!r}")
            values[key] = _parse_expr(name, key, value)
    return Hints(**values)


# --- selection ------------------------------------------------------------------------------

class NoDiskError(DiskError):
    """No disk matches the hints, or none of the matching ones may be written."""

    def __init__(self, reason: str) -> None:
        super().__init__("selection", reason)


class AmbiguousDiskError(DiskError):
    """An identity hint (serial, wwn, name, by_path, hctl) matches more than one disk."""

    def __init__(self, reason: str, candidates: Sequence[Disk]) -> None:
        self.candidates = tuple(candidates)
        super().__init__("selection", reason)


def refusals(disk: Disk, *, min_size: int | None = None, allow_removable: bool = False,
             allow_mounted: bool = False, allow_boot_medium: bool = False,
             allow_read_only: bool = False) -> list[str]:
    """Why ``disk`` may not be chosen (empty: it may). Pure."""
    why = []
    if disk.read_only and not allow_read_only:
        why.append("read-only")
    if disk.removable and not allow_removable:
        why.append(f"removable ({disk.transport})" if disk.transport == "usb" else "removable")
    if disk.boot_medium and not allow_boot_medium:
        why.append(f"boot medium: {disk.boot_medium}")
    if disk.mounted and not allow_mounted:
        why.append("mounted: " + ", ".join(disk.mounted))
    if disk.holders and not allow_mounted:
        why.append("held by " + ", ".join(disk.holders))
    if min_size is not None and disk.size < min_size:
        why.append(f"too small for the image ({human_size(disk.size)} < {human_size(min_size)})")
    return why


def _list(disks: Iterable[Disk]) -> str:
    return ", ".join(d.summary() for d in disks) or "no disks"


def select_disk(disks: Sequence[Disk], hints: Hints | None = None, *,
                min_size: int | None = None, allow_removable: bool = False,
                allow_mounted: bool = False, allow_boot_medium: bool = False,
                allow_read_only: bool = False) -> Disk:
    """The disk to write. Pure.

    With hints: the disks matching every hint; an identity hint must match exactly one disk
    (among all disks, usable or not: two disks with one serial is multipath or a cloning
    accident, and guessing would be wrong); otherwise the smallest usable match. Without hints:
    the smallest usable disk. Usable: see :func:`refusals`. Ties on size go to the lower name
    (natural order: sda before sdb, nvme2n1 before nvme10n1). Raises :class:`NoDiskError` or
    :class:`AmbiguousDiskError` with one line naming every candidate and why it was refused.
    """
    hints = hints or Hints()
    def why(disk: Disk) -> list[str]:
        return refusals(disk, min_size=min_size, allow_removable=allow_removable,
                        allow_mounted=allow_mounted, allow_boot_medium=allow_boot_medium,
                        allow_read_only=allow_read_only)

    order = sorted(disks, key=lambda d: (d.size, _natural(d.name)))
    if hints.empty:
        candidates = order
        label = "no usable disk"
    else:
        candidates = [d for d in order if hints.mismatch(d) is None]
        label = f"no usable disk matches rootDeviceHints {hints.describe()}"
        if not candidates:
            have = "; ".join(f"{d.summary()}: {hints.mismatch(d)}"
                             for d in sorted(disks, key=lambda d: _natural(d.name)))
            raise NoDiskError(f"no disk matches rootDeviceHints {hints.describe()}: have "
                              f"{have or 'no disks'}")
        if hints.identity and len(candidates) > 1:
            raise AmbiguousDiskError(
                f"rootDeviceHints {hints.describe()} name one disk but match "
                f"{len(candidates)}: {_list(candidates)}; add serial or wwn to tell them apart",
                candidates)
    usable = [d for d in candidates if not why(d)]
    if usable:
        return usable[0]
    reasons = "; ".join(f"{d.name} ({human_size(d.size)}) {', '.join(why(d))}"
                        for d in sorted(candidates, key=lambda d: _natural(d.name)))
    raise NoDiskError(f"{label}: {reasons or 'no disks found'}")


# --- reporting ------------------------------------------------------------------------------

_COLUMNS = ("NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "WWN", "ROT", "RM", "BY-PATH", "STATE")


def inventory_lines(disks: Sequence[Disk], *, min_size: int | None = None) -> list[str]:
    """A one-screen table, one disk per line; STATE is ``ok`` or why the default rule would
    refuse the disk. Pure."""
    rows = [_COLUMNS]
    for d in disks:
        why = refusals(d, min_size=min_size)
        rows.append((d.name, human_size(d.size), d.transport or "-", _cut(d.model, 24),
                     _cut(d.serial, 20), _cut(d.wwn, 22), "1" if d.rotational else "0",
                     "1" if d.removable else "0", _cut(d.by_path, 48),
                     "; ".join(why) if why else "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    if not disks:
        lines.append("(no disks)")
    return [line.rstrip() for line in lines]


def _cut(text: str | None, width: int) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[:width - 1] + "~"


def inventory_event(disks: Sequence[Disk], *, min_size: int | None = None) -> dict[str, Any]:
    """The fields of the ``disks`` event for the server: every disk with its attributes, its
    stable names and why the default rule refuses it. Pure."""
    out = []
    for d in disks:
        item = asdict(d)
        item["path"] = d.path
        item["partitions"] = [asdict(p) for p in d.partitions]
        item["refused"] = refusals(d, min_size=min_size)
        out.append(item)
    return {"count": len(disks), "disks": out}


# --- stable names ---------------------------------------------------------------------------

def stable_links(disks: Sequence[Disk]) -> dict[str, str]:
    """``/dev/disk/by-id/…`` and ``/dev/disk/by-path/…`` -> kernel name (``vda``, ``vda1``),
    partitions as ``<link>-part<N>`` like udev. A name two disks would claim (a serial shared
    by two disks) is left out rather than pointed at either. Pure."""
    claims: dict[str, set[str]] = {}
    for d in disks:
        names = [f"/dev/disk/by-id/{n}" for n in d.by_id]
        names += [f"/dev/disk/by-path/{n}" for n in (d.by_path, *d.by_path_compat) if n]
        for link in names:
            claims.setdefault(link, set()).add(d.name)
            for p in d.partitions:
                claims.setdefault(f"{link}-part{p.number}", set()).add(p.name)
    return {link: next(iter(owners)) for link, owners in sorted(claims.items())
            if len(owners) == 1}


def resolve_device(path: str, disks: Sequence[Disk]) -> str:
    """``/dev/disk/by-id/…`` or ``/dev/disk/by-path/…`` (or ``/dev/sda``) -> ``/dev/<kernel
    name>``, from the inventory, whether or not the links exist. Pure. DiskError when a
    ``/dev/disk/`` name is unknown (naming the ones that exist for the same disk kind)."""
    if not path.startswith("/dev/disk/"):
        return path
    links = stable_links(disks)
    if path in links:
        return f"/dev/{links[path]}"
    kind = path.split("/")[3] if path.count("/") >= 4 else ""
    known = [k for k in links if k.startswith(f"/dev/disk/{kind}/") and "-part" not in k]
    if kind not in ("by-id", "by-path"):
        raise DiskError(path, f"pyinit resolves only /dev/disk/by-id and /dev/disk/by-path "
                              f"without udev, not {kind or 'this'}")
    raise DiskError(path, f"no such disk (known: {', '.join(known) or 'none'})")


def make_links(links: Mapping[str, str], dev: Path = Path("/dev")) -> list[str]:
    """Create the symlinks of :func:`stable_links` under ``dev`` (``disk/by-id/x`` ->
    ``../../vda``, as udev does); idempotent: a correct link is left, a stale one replaced
    atomically, a non-link in the way is a DiskError. Returns the links created or changed."""
    changed = []
    for link, target in sorted(links.items()):
        rel = link.removeprefix("/dev/")
        node = dev / rel
        want = "../../" + target
        if node.is_symlink() and os.readlink(node) == want:
            continue
        if node.exists() and not node.is_symlink():
            raise DiskError(str(node), "exists and is not a symlink; not replacing it")
        node.parent.mkdir(parents=True, exist_ok=True)
        tmp = node.with_name(f".{node.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(want)
        tmp.replace(node)
        changed.append(link)
    return changed


# --- waiting and choosing -------------------------------------------------------------------

@dataclass(frozen=True)
class Settled:
    names: tuple[str, ...]          # /sys/block entries at the end
    seconds: float
    settled: bool                   # False: the timeout ended the wait
    pending: tuple[str, ...] = ()   # USB mass-storage interfaces still without a disk


def _usb_storage_pending(sysfs: Path) -> list[str]:
    """USB mass-storage interfaces (class 08) with a driver bound but no block device yet:
    usb-storage waits ``delay_use`` (1 s) before scanning, so a quiet ``/sys/block`` alone
    would end the wait before the stick shows up. Interfaces without a driver are not waited
    for (no module staged: nothing will come)."""
    pending = []
    with contextlib.suppress(OSError):
        for iface in sorted((sysfs / "bus" / "usb" / "devices").iterdir()):
            if _read(iface / "bInterfaceClass") != "08" or not (iface / "driver").exists():
                continue
            if not any(iface.glob("host*/target*/*/block/*")):
                pending.append(iface.name)
    return pending


def block_names(sysfs: Path = Path("/sys")) -> tuple[str, ...]:
    """The entries of ``/sys/block``, sorted (empty if it cannot be read)."""
    try:
        return tuple(sorted(p.name for p in (sysfs / "block").iterdir()))
    except OSError:
        return ()


def settle(sysfs: Path = Path("/sys"), *, timeout: float = 10.0, quiet: float = 1.0,
           baseline: tuple[tuple[str, ...], float] | None = None,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Settled:
    """Wait until ``/sys/block`` has not changed for ``quiet`` seconds and no USB
    mass-storage interface is still scanning, at most ``timeout`` seconds. A timeout is not an
    error (a machine may have a dead card reader): the caller takes the inventory it gets and
    says so.

    ``baseline``: ``(block_names(), clock())`` taken earlier (the boot takes it once the
    drivers are loaded). When the names are still the same, the quiet period counts from then,
    so a boot whose disks appeared before DHCP finished does not wait again."""
    names = functools.partial(block_names, sysfs)
    start = clock()
    seen = names()
    changed = start
    if baseline is not None and baseline[0] == seen:
        changed = min(start, baseline[1])
    while True:
        now = clock()
        pending = _usb_storage_pending(sysfs)
        if now - changed >= quiet and not pending:
            return Settled(seen, round(now - start, 2), True)
        if now - start >= timeout:
            return Settled(seen, round(now - start, 2), False, tuple(pending))
        sleep(0.1)
        current = names()
        if current != seen:
            seen, changed = current, clock()


@dataclass(frozen=True)
class Choice:
    device: str                     # /dev/<kernel name> (or the path as given)
    how: str                        # for the log: "named", "by-id link", "rootDeviceHints …"
    disk: Disk | None = None        # None: a plain /dev path the inventory does not list


def choose(disks: Sequence[Disk], *, device: str | None, hints: Hints | None,
           min_size: int | None = None, allow_removable: bool = False,
           capture: bool = False) -> Choice:
    """The action's disk. Pure.

    A plain path (``/dev/sda``) is taken as given: the operator named it, and the writer's own
    checks (block device, not mounted, not held) still apply. A ``/dev/disk/by-id`` or
    ``by-path`` name is resolved from the inventory. Hints, or neither (the default rule), go
    through :func:`select_disk`; a capture (``capture``) may read a mounted or read-only disk.
    """
    if device is not None:
        if device.startswith("/dev/disk/"):
            path = resolve_device(device, disks)
            disk = next((d for d in disks if d.path == path), None)
            return Choice(path, f"{device.split('/')[3]} link {device}", disk)
        name = device.removeprefix("/dev/")
        return Choice(device, "named", next((d for d in disks if d.name == name), None))
    disk = select_disk(disks, hints, min_size=min_size, allow_removable=allow_removable,
                       allow_mounted=capture, allow_read_only=capture)
    how = (f"rootDeviceHints {hints.describe()}" if hints is not None and not hints.empty
           else "default rule: smallest usable disk" + (f" of at least {human_size(min_size)}"
                                                         if min_size else ""))
    return Choice(disk.path, how, disk)


__all__ = [
    "AmbiguousDiskError", "Choice", "Disk", "Expr", "Family", "Hints", "Holder", "NoDiskError",
    "Partition", "Settled", "Usage", "Use", "by_id_names", "choose", "device_usage", "disk_usage",
    "human_size", "inventory", "inventory_event", "inventory_lines", "kernel_name", "make_links",
    "parse_hints", "path_id", "read_family", "refusals", "resolve_device", "select_disk",
    "settle", "stable_links", "udev_safe", "vpd_serial", "wwn_fields",
]
