"""The disks a machine has, read from sysfs, and the stable names udev would give them.

:func:`inventory` returns one :class:`Disk` per whole disk under ``/sys/block``, read from sysfs
attributes (no udev, no lsblk in the initramfs): size, model, vendor, serial, WWN, rotational,
removable, the transport and the udev ``by-path`` name computed from the sysfs device path (the
way udev's ``path_id`` does it for PCI, virtio, NVMe, ATA, USB and SCSI), the SCSI address,
partitions, and what uses it (:mod:`pyinit.disks.usage`).

Left out: ``loop``, ``ram``, ``zram``, ``nbd``, optical drives (``sr``, SCSI type 5), floppies,
hidden devices (NVMe multipath paths) and zero-size devices (an empty card reader).
Device-mapper (``dm-*``) and MD RAID (``md*``) devices are left out too: they only exist when
something assembled them, a whole-disk image (partition table included) belongs on a physical
disk, and writing a disk under an assembled array would corrupt it. Their member disks stay in
the inventory, marked as held (refused like a mounted disk).

The boot medium: which device the bootloader loaded the initramfs from is unknowable in general
(PXE, virtual media, a USB stick all look alike once the kernel runs). pyinit treats as the boot
medium a disk carrying an ISO 9660 file system (a live/virtual-media image: the ``CD001``
signature at byte 32769 of the disk or a partition, or an ``iso9660`` mount); a disk with any
mounted file system is refused anyway as *mounted*.

Stable names (:func:`stable_links`, :func:`make_links`): the ``/dev/disk/by-id`` and
``/dev/disk/by-path`` names udev's persistent-storage rules would create, computed from the
inventory, so a configuration naming ``/dev/disk/by-id/nvme-…`` works in an initramfs without
udev.

Everything except :func:`inventory` and :func:`make_links` is pure.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pyinit.disks.usage import SECTOR, Partition, disk_usage, proc_text, read_family
from pyinit.errors import DiskError
from pyinit.sysfs import read_attr

ISO9660_MAGIC_OFFSET = 32769     # "CD001" in the first volume descriptor (sector 16 + 1)
_SKIP_PREFIXES = ("loop", "ram", "zram", "nbd", "sr", "fd", "dm-", "md")
_PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_HCTL_RE = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")
_USB_IFACE_RE = re.compile(r"^\d+-[\d.]+:\d+\.\d+$")
_USB_DEV_RE = re.compile(r"^\d+-[\d.]+$")
Transport = Literal["virtio", "nvme", "sata", "usb", "scsi", "mmc"]


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
    if read_attr(base / "hidden") == "1":
        return True
    return read_attr(base / "device" / "type") == "5"           # SCSI optical drive


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
    size = int(read_attr(base / "size") or "0") * SECTOR
    if size == 0:
        return None
    real = Path(os.path.realpath(base))
    devices = Path(os.path.realpath(sysfs / "devices"))
    try:
        components = real.relative_to(devices).parts
    except ValueError:
        components = real.parts
    device = base / "device"
    nsid = read_attr(base / "nsid")
    ata_port = None
    ata_dir = next((p for p in real.parents if re.fullmatch(r"ata\d+", p.name)), None)
    if ata_dir is not None:
        ata_port = read_attr(ata_dir / "ata_port" / ata_dir.name / "port_no")
    hctl = next((c for c in components if _HCTL_RE.match(c)), None)
    info = path_id(components, name=name, nsid=nsid, ata_port=ata_port,
                   scsi_host_base=_scsi_host_base(real, hctl))

    vendor = read_attr(device / "vendor")
    model = read_attr(device / "model")
    serial = read_attr(base / "serial") or read_attr(device / "serial")
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
                serial = read_attr(usb / "serial") or serial
        if info.hctl:
            usb_instance = ":".join(info.hctl.split(":")[2:])
    wwid = read_attr(base / "wwid") or read_attr(device / "wwid")
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
    removable = read_attr(base / "removable") == "1" or info.transport == "usb"
    disk = Disk(
        name=name, size=size, model=model, vendor=vendor, serial=serial, wwn=wwn,
        wwn_with_extension=wwn_ext, wwn_vendor_extension=wwn_vendor,
        rotational=read_attr(base / "queue" / "rotational") == "1", removable=removable,
        transport=info.transport, by_path=info.by_path, hctl=info.hctl,
        read_only=read_attr(base / "ro") == "1", devnum=family.devnum, partitions=family.partitions,
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
    mounts = proc_text(proc / "self" / "mounts") if mounts_text is None else mounts_text
    mountinfo = (proc_text(proc / "self" / "mountinfo") if mountinfo_text is None
                 else mountinfo_text)
    swaps = proc_text(proc / "swaps") if swaps_text is None else swaps_text
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
    return sorted(disks, key=lambda d: natural_key(d.name))


def natural_key(name: str) -> list[Any]:
    """Sort key: ``nvme2n1`` before ``nvme10n1``, ``sda`` before ``sdb``. Pure."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


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
