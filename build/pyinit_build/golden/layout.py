"""The disk layout of a golden image (a pure plan) and its assembly into a sparse raw file.

Partitions are MiB-aligned. GPT: an optional 1 MiB BIOS boot partition (GRUB's core.img), an
optional EFI system partition, then the root partition last, so growing it to a larger disk
later (``growPartition: "last"``) needs nothing moved. MBR: the ESP (type ef) first when UEFI is
wanted, then root, flagged bootable; core.img lives in the gap before the first partition.
The root partition uses the Discoverable Partitions type for x86-64 root (or Linux LVM).

Identifiers (disk GUID/signature, partition UUIDs, filesystem UUIDs) come from :func:`derive`
with a seed that covers the inputs, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyinit import proc
from pyinit.units import MIB
from pyinit_build.errors import BuildError

SECTOR = 512
GPT_TAIL = 33 * SECTOR  # backup GPT: 32 sectors of entries + the header

Table = Literal["gpt", "mbr"]
Role = Literal["bios", "esp", "root"]

GPT_TYPES = {
    "bios": "21686148-6E49-4261-6E6F-744E65656646",
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "root": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # x86-64 root (Discoverable Partitions)
    "lvm": "E6D6D379-F507-44C2-A23C-238F2A3DF928",
}
MBR_TYPES = {"esp": "ef", "root": "83", "lvm": "8e"}
GPT_NAMES = {"bios": "BIOS boot", "esp": "EFI system", "root": "root"}


def derive(seed: str, role: str) -> uuid.UUID:
    """A stable UUID for ``role`` (``"disk"``, ``"part-root"``, ``"fs-root"``...). Pure."""
    digest = hashlib.sha256(f"pyinit-image\0{seed}\0{role}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


@dataclass(frozen=True)
class Partition:
    number: int
    role: Role
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID or MBR type byte (hex)
    uuid: str  # GPT partition GUID; MBR: "<disk id>-<nn>" as blkid reports PARTUUID
    name: str = ""  # GPT partition name

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Plan:
    table: Table
    size: int  # bytes, the whole disk
    disk_id: str  # GPT disk GUID or MBR signature as 8 hex digits
    partitions: tuple[Partition, ...]

    def part(self, role: Role) -> Partition | None:
        return next((p for p in self.partitions if p.role == role), None)

    @property
    def root(self) -> Partition:
        part = self.part("root")
        assert part is not None  # every plan has a root partition
        return part

    @property
    def core_area(self) -> tuple[int, int]:
        """(first LBA, sectors) reserved for GRUB's core.img: the BIOS boot partition (GPT) or
        the gap between the MBR and the first partition."""
        bios = self.part("bios")
        if bios is not None:
            return bios.start // SECTOR, bios.size // SECTOR
        first = min(p.start for p in self.partitions)
        return 1, first // SECTOR - 1


def _align_up(n: int, to: int = MIB) -> int:
    return -(-n // to) * to


def plan_disk(*, table: Table, bios: bool, uefi: bool, root_size: int, seed: str,
              lvm: bool = False, esp_size: int = 64 * MIB, disk_size: int | None = None) -> Plan:
    """Lay out the partitions. ``root_size``: the smallest root partition (bytes); with
    ``disk_size`` the root partition takes whatever the disk leaves. Pure."""
    if not (bios or uefi):
        raise BuildError("layout", "need at least one of BIOS and UEFI firmware")
    roles: list[tuple[Role, int]] = []
    if table == "gpt" and bios:
        roles.append(("bios", MIB))
    if uefi:
        roles.append(("esp", _align_up(esp_size)))
    start = MIB
    head = start + sum(size for _, size in roles)
    tail = MIB if table == "gpt" else 0  # keeps the backup GPT out of the way, aligned
    need = head + _align_up(root_size) + tail
    size = _align_up(need) if disk_size is None else disk_size
    if size < need:
        raise BuildError("layout", f"disk size {size // MIB} MiB is too small: the partitions "
                                   f"need {-(-need // MIB)} MiB")
    if size % SECTOR:
        raise BuildError("layout", f"disk size {size} is not a multiple of {SECTOR} bytes")
    root_end = (size - tail) // MIB * MIB if table == "gpt" else size
    roles.append(("root", root_end - head))
    disk_uuid = derive(seed, "disk")
    disk_id = str(disk_uuid).upper() if table == "gpt" else disk_uuid.hex[:8]
    parts = []
    offset = start
    for number, (role, psize) in enumerate(roles, 1):
        kind = "lvm" if role == "root" and lvm else role
        if table == "gpt":
            ptype, puuid = GPT_TYPES[kind], str(derive(seed, f"part-{role}")).upper()
        else:
            ptype, puuid = MBR_TYPES[kind], f"{disk_id}-{number:02x}"
        parts.append(Partition(number, role, offset, psize, ptype, puuid,
                               GPT_NAMES[role] if table == "gpt" else ""))
        offset += psize
    return Plan(table, size, disk_id, tuple(parts))


def sfdisk_script(plan: Plan) -> str:
    """The sfdisk input that writes ``plan``'s partition table. Pure."""
    if plan.table == "gpt":
        lines = ["label: gpt", f"label-id: {plan.disk_id}", "unit: sectors"]
    else:
        lines = ["label: dos", f"label-id: 0x{plan.disk_id}", "unit: sectors"]
    for p in plan.partitions:
        fields = [f"start={p.start // SECTOR}", f"size={p.size // SECTOR}", f"type={p.type}"]
        if plan.table == "gpt":
            fields += [f"uuid={p.uuid}", f'name="{p.name}"']
        elif p.role == "root":
            fields.append("bootable")
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def create_disk(path: Path, plan: Plan) -> None:
    """A sparse file of the plan's size with its partition table (sfdisk works on files)."""
    with path.open("wb") as f:
        f.truncate(plan.size)
    proc.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(path)],
             input=sfdisk_script(plan))


def copy_sparse(src: Path, dst: Path, offset: int, *, limit: int | None = None) -> int:
    """Copy ``src``'s data regions into ``dst`` at ``offset``, skipping holes (``dst`` is a
    fresh sparse file, so holes read as zeros there too). Returns the bytes copied."""
    size = src.stat().st_size
    if limit is not None and size > limit:
        raise BuildError("layout", f"{src.name} is {size} bytes, its partition only {limit}")
    copied = 0
    with src.open("rb") as fin, dst.open("r+b") as fout:
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            hole = os.lseek(fin.fileno(), data, os.SEEK_HOLE)
            left = hole - data
            while left > 0:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), min(left, 64 * MIB),
                                       data, offset + data)
                if n <= 0:
                    raise BuildError("layout", f"short copy of {src.name} at {data}")
                data += n
                left -= n
                copied += n
            pos = hole
    return copied
