"""A fake sysfs for the disk tests: trees that mirror real layouts (attribute names as the
kernel has them: virtio-blk ``serial`` on the disk, NVMe ``model``/``serial`` on the controller
and ``wwid``/``nsid`` on the namespace, SCSI ``vendor``/``model``/``wwid``/``vpd_pg80``/
``vpd_pg89`` on the SCSI device, the USB ``serial`` on the USB device, ATA
``ata_port/ataN/port_no``). The ``machine`` and ``stacked`` fixtures (conftest.py) are built
from it; the disks step's and the hardware inventory's tests use it too."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyinit.disks.inventory import Disk, inventory

GIB = 1 << 30
TIB = 1 << 40

# --- a fake machine --------------------------------------------------------------------------

def write_attr(path: Path, value: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(value + "\n")


@dataclass
class FakeSys:
    root: Path

    @property
    def sysfs(self) -> Path:
        return self.root / "sys"

    def disk(self, devpath: str, name: str, *, size: int, devnum: str,
             device: str | None = None, attrs: dict[str, str] | None = None,
             device_attrs: dict[str, str | bytes] | None = None, rotational: bool = False,
             removable: bool = False) -> Path:
        """``/sys/devices/<devpath>/block/<name>`` with ``/sys/block/<name>`` linking to it and
        ``device`` linking to ``device`` (a devpath; default: the parent of ``block``)."""
        base = self.sysfs / "devices" / devpath / "block" / name
        write_attr(base / "size", str(size // 512))
        write_attr(base / "dev", devnum)
        write_attr(base / "removable", "1" if removable else "0")
        write_attr(base / "ro", "0")
        write_attr(base / "hidden", "0")
        write_attr(base / "queue" / "rotational", "1" if rotational else "0")
        (base / "holders").mkdir()
        for key, value in (attrs or {}).items():
            write_attr(base / key, value)
        target = self.sysfs / "devices" / (device or devpath)
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, base), base / "device")
        for key, data in (device_attrs or {}).items():
            write_attr(target / key, data)
        (self.sysfs / "block").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(base, self.sysfs / "block"), self.sysfs / "block" / name)
        return base

    def partition(self, disk: Path, name: str, number: int, *, size: int, devnum: str) -> Path:
        part = disk / name
        write_attr(part / "partition", str(number))
        write_attr(part / "size", str(size // 512))
        write_attr(part / "dev", devnum)
        (part / "holders").mkdir()
        return part

    def virtual(self, name: str, devnum: str, *, size: int = 0) -> Path:
        base = self.sysfs / "devices" / "virtual" / "block" / name
        write_attr(base / "size", str(size // 512))
        write_attr(base / "dev", devnum)
        (base / "holders").mkdir(parents=True)
        (self.sysfs / "block").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(base, self.sysfs / "block"), self.sysfs / "block" / name)
        return base


def vpd80(serial: str) -> bytes:
    data = serial.encode()
    return bytes([0, 0x80, 0, len(data)]) + data


def _ata_words(text: str, length: int) -> bytes:
    raw = text.ljust(length).encode()
    return bytes(b for i in range(0, length, 2) for b in (raw[i + 1], raw[i]))


def vpd89(model: str, serial: str) -> bytes:
    identify = bytearray(512)
    identify[20:40] = _ata_words(serial.rjust(20), 20)      # words 10-19
    identify[54:94] = _ata_words(model, 40)                  # words 27-46
    body = bytes(56) + identify                              # IDENTIFY data at byte 60
    return bytes([0, 0x89, len(body) >> 8, len(body) & 0xFF]) + body


NVME_MODEL = "Samsung SSD 970 EVO Plus 1TB"
NVME_SIZE = 1000204886016
SATA_SIZE = 2000398934016
MOUNTS = ("proc /proc proc rw 0 0\n"
          "/dev/vdb1 /mnt ext4 rw,relatime 0 0\n"
          "tmpfs /run tmpfs rw 0 0\n")


def inv(m: FakeSys, mounts: str = MOUNTS, mountinfo: str = "", swaps: str = "") -> list[Disk]:
    return inventory(m.sysfs, m.root / "dev", mounts_text=mounts, mountinfo_text=mountinfo,
                     swaps_text=swaps)


def by_name(found: list[Disk]) -> dict[str, Disk]:
    return {d.name: d for d in found}
