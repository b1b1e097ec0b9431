"""Read MBR (with extended/logical partitions) and GPT partition tables. Pure: no I/O of its own.

The caller hands in the first bytes of a disk (``bytes``), a binary file object, or a
``read_at(offset, size) -> bytes`` function (:func:`reader_from_fd` makes one from a file
descriptor); the parser reads only the few sectors it needs.

Which table wins follows the Linux kernel (``block/partitions/efi.c``, ``msdos.c``): a GPT is used
only when LBA 0 holds a protective MBR (a type 0xEE entry); a valid GPT header beside an ordinary
MBR is a stale leftover and ignored, exactly as the kernel does without the ``gpt`` parameter.
When the primary GPT header or its entry array fails its CRC, the backup header at the last LBA is
used if the disk size is known.

Values are what ``blkid`` reports: GPT type and partition GUIDs in lower case, MBR types as
``0x83``, MBR PARTUUIDs as ``<disk signature>-<NN>``.

Written by hand: no maintained pure-Python library parses both formats without shelling out to
sfdisk/libfdisk, and the whole format is a few struct layouts.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, NamedTuple

from pyinit.errors import PyinitError

ReadAt = Callable[[int, int], bytes]
Source = bytes | bytearray | memoryview | BinaryIO | ReadAt

MBR_SIGNATURE = b"\x55\xaa"
GPT_SIGNATURE = b"EFI PART"
PROTECTIVE_TYPE = 0xEE
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
MAX_LOGICAL = 128               # the kernel stops at DISK_MAX_PARTS as well
MAX_GPT_ENTRY_BYTES = 4 << 20   # 32768 entries of 128 bytes: far beyond any real table

_MBR_ENTRY = struct.Struct("<B3sB3sII")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # UEFI 2.10, 5.3.2
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")


class PartitionTableError(PyinitError):
    """A partition table is present but unusable (bad CRC, entries outside the disk, a loop)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"partition table: {reason}")


@dataclass(frozen=True)
class Partition:
    number: int          # as the kernel numbers it: GPT entry index + 1; MBR 1-4, logical 5...
    start: int           # bytes from the start of the disk
    size: int            # bytes
    type: str            # GPT: type GUID, lower case; MBR: "0x83"
    uuid: str            # PARTUUID: GPT unique GUID; MBR "<disk signature>-<NN>"
    name: str = ""       # GPT partition name (UTF-16 in the table); MBR: ""
    attributes: int = 0  # GPT attribute bits; MBR: the boot indicator (0x80 = active)
    kind: Literal["primary", "extended", "logical"] = "primary"

    @property
    def end(self) -> int:
        """The first byte after the partition."""
        return self.start + self.size


@dataclass(frozen=True)
class PartitionTable:
    kind: Literal["mbr", "gpt"]
    sector_size: int
    disk_id: str                         # GPT disk GUID; MBR disk signature (8 hex digits)
    partitions: tuple[Partition, ...]
    # GPT only (None for MBR):
    header_lba: int | None = None        # the header that was read: 1, or the backup's LBA
    alternate_lba: int | None = None     # the other header, as the read header records it
    first_usable_lba: int | None = None
    last_usable_lba: int | None = None
    entries_lba: int | None = None
    entry_count: int | None = None
    entry_size: int | None = None
    problems: tuple[str, ...] = field(default=())  # e.g. "primary GPT header: bad CRC"

    @property
    def end_of_last_partition(self) -> int:
        """The first byte after the partition that ends last (0 when there is none).

        An MBR extended partition counts: it is the container of the logical partitions.
        """
        return max((p.end for p in self.partitions), default=0)

    @property
    def primary_header_offset(self) -> int | None:
        if self.kind != "gpt":
            return None
        return self.sector_size  # LBA 1

    @property
    def backup_header_offset(self) -> int | None:
        """Where the backup GPT header is (or, after a capture, should be), in bytes."""
        if self.kind != "gpt" or self.header_lba is None or self.alternate_lba is None:
            return None
        backup = self.alternate_lba if self.header_lba == 1 else self.header_lba
        return backup * self.sector_size

    def by_number(self, number: int) -> Partition:
        for p in self.partitions:
            if p.number == number:
                return p
        raise KeyError(number)


# -- sources ------------------------------------------------------------------------------------


def reader_from_fd(fd: int) -> ReadAt:
    def read_at(offset: int, size: int) -> bytes:
        return os.pread(fd, size, offset)
    return read_at


def _read_at(source: Source) -> ReadAt:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return lambda offset, size: data[offset:offset + size]
    if callable(source):
        return source
    f = source

    def read_file(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)
    return read_file


def _read_exact(read_at: ReadAt, offset: int, size: int) -> bytes | None:
    """``size`` bytes at ``offset``, or None when the source ends before that."""
    data = read_at(offset, size)
    return data if len(data) == size else None


# -- entry points ---------------------------------------------------------------------------------


def parse(source: Source, *, sector_size: int | None = None,
          disk_size: int | None = None) -> PartitionTable | None:
    """The disk's partition table, or None when there is none.

    ``sector_size`` is the logical sector size (``BLKSSZGET``); when None, a GPT is looked for
    with 512- and then 4096-byte sectors, and an MBR is read with 512-byte sectors.
    ``disk_size`` (bytes) lets a damaged primary GPT fall back to the backup header at the last
    LBA. Raises :class:`PartitionTableError` for a table that is present but unusable.
    """
    read_at = _read_at(source)
    lba0 = _read_exact(read_at, 0, 512)
    if lba0 is None or lba0[510:512] != MBR_SIGNATURE:
        return None
    entries = _mbr_entries(lba0)
    if entries is None:
        return None  # a boot sector that is not an MBR (e.g. a whole-disk FAT file system)
    if not any(e.type == PROTECTIVE_TYPE for e in entries):
        return _parse_mbr(read_at, lba0, entries, sector_size or 512)
    problems: list[str] = []
    for ss in (sector_size,) if sector_size else (512, 4096):
        table = _parse_gpt(read_at, ss, disk_size, problems)
        if table is not None:
            return table
    real = [p for p in problems if not p.endswith("no signature")]
    raise PartitionTableError("; ".join(real) if real else
                              "protective MBR but no GPT header at LBA 1")


def end_of_last_partition(source: Source, *, sector_size: int | None = None,
                          disk_size: int | None = None) -> int | None:
    """The first byte after the last partition; None when there is no partition table,
    0 for a table without partitions."""
    table = parse(source, sector_size=sector_size, disk_size=disk_size)
    return None if table is None else table.end_of_last_partition


# -- MBR --------------------------------------------------------------------------------------


class _MbrEntry(NamedTuple):
    boot: int
    slot: int   # 0-3
    type: int
    start: int  # LBA
    sectors: int


def _mbr_entries(sector: bytes) -> list[_MbrEntry] | None:
    """The used entries of an MBR or EBR; None if the sector is not a partition table."""
    out = []
    for i in range(4):
        boot, _chs1, ptype, _chs2, start, count = _MBR_ENTRY.unpack_from(sector, 446 + 16 * i)
        if boot not in (0x00, 0x80):
            return None  # boot code or a file system's boot sector, not a partition table
        if ptype != 0 and count != 0:
            out.append(_MbrEntry(boot, i, ptype, start, count))
    if not out and _looks_like_vbr(sector):
        return None
    return out


def _looks_like_vbr(sector: bytes) -> bool:
    """A FAT/NTFS/exFAT volume boot record: it ends in 55 AA too but holds no partition table."""
    return (sector[3:11] in (b"NTFS    ", b"EXFAT   ")
            or sector[54:59] in (b"FAT12", b"FAT16") or sector[82:87] == b"FAT32")


_PartFactory = Callable[[int, _MbrEntry, int, Literal["primary", "extended", "logical"]],
                        Partition]


def _parse_mbr(read_at: ReadAt, lba0: bytes, entries: list[_MbrEntry],
               ss: int) -> PartitionTable:
    disk_id = f"{struct.unpack_from('<I', lba0, 440)[0]:08x}"

    def make(number: int, e: _MbrEntry, start_lba: int,
             kind: Literal["primary", "extended", "logical"]) -> Partition:
        return Partition(number=number, start=start_lba * ss, size=e.sectors * ss,
                         type=f"0x{e.type:02x}", uuid=f"{disk_id}-{number:02x}",
                         attributes=e.boot, kind=kind)

    parts: list[Partition] = []
    extended: _MbrEntry | None = None
    for e in entries:
        is_ext = e.type in EXTENDED_TYPES
        parts.append(make(e.slot + 1, e, e.start, "extended" if is_ext else "primary"))
        if is_ext and extended is None:  # the kernel follows the first extended partition only
            extended = e
    if extended is not None:
        parts.extend(_logical(read_at, extended, ss, make))
    return PartitionTable(kind="mbr", sector_size=ss, disk_id=disk_id, partitions=tuple(parts))


def _logical(read_at: ReadAt, extended: _MbrEntry, ss: int,
             make: _PartFactory) -> list[Partition]:
    """Follow the chain of extended boot records. An EBR holds a logical partition (relative to
    the EBR) and a link to the next EBR (relative to the start of the extended partition)."""
    out: list[Partition] = []
    seen: set[int] = set()
    ebr = extended.start
    while len(out) < MAX_LOGICAL:
        if ebr in seen:
            raise PartitionTableError(f"extended boot records form a loop at LBA {ebr}")
        seen.add(ebr)
        if not extended.start <= ebr < extended.start + extended.sectors:
            raise PartitionTableError(f"extended boot record at LBA {ebr} lies outside the "
                                      "extended partition")
        sector = _read_exact(read_at, ebr * ss, 512)
        if sector is None or sector[510:512] != MBR_SIGNATURE:
            break  # the kernel quietly stops at a missing EBR too
        entries = _mbr_entries(sector) or []
        link: int | None = None
        for e in entries:
            if e.type in EXTENDED_TYPES:
                if link is None:
                    link = extended.start + e.start
            else:
                out.append(make(5 + len(out), e, ebr + e.start, "logical"))
        if link is None:
            break
        ebr = link
    return out


# -- GPT --------------------------------------------------------------------------------------


class _GptHeader(NamedTuple):
    signature: bytes
    revision: int
    header_size: int
    header_crc: int
    reserved: int
    my_lba: int
    alternate_lba: int
    first_usable_lba: int
    last_usable_lba: int
    disk_guid: bytes
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _gpt_header(read_at: ReadAt, lba: int, ss: int) -> _GptHeader | str:
    """The header at ``lba``, or why there is no valid one."""
    where = f"GPT header at LBA {lba} ({ss}-byte sectors)"
    sector = _read_exact(read_at, lba * ss, ss)
    if sector is None:
        return f"{where}: beyond the end of the disk"
    if sector[:8] != GPT_SIGNATURE:
        return f"{where}: no signature"
    h = _GptHeader(*_GPT_HEADER.unpack_from(sector))
    if not 92 <= h.header_size <= ss:
        return f"{where}: bad header size {h.header_size}"
    raw = bytearray(sector[:h.header_size])
    raw[16:20] = bytes(4)
    if zlib.crc32(raw) != h.header_crc:
        return f"{where}: bad CRC"
    if h.my_lba != lba:
        return f"{where}: records its own LBA as {h.my_lba}"
    return h


def _parse_gpt(read_at: ReadAt, ss: int, disk_size: int | None,
               problems: list[str]) -> PartitionTable | None:
    """The GPT from the primary header, else from the backup header at the last LBA (when the
    disk size is known). Appends what was wrong to ``problems``."""
    candidates = [1]
    if disk_size is not None and disk_size // ss - 1 > 1:
        candidates.append(disk_size // ss - 1)
    for lba in candidates:
        header = _gpt_header(read_at, lba, ss)
        if isinstance(header, str):
            problems.append(header)
            continue
        parts = _gpt_entries(read_at, ss, lba, header, problems)
        if parts is None:
            continue
        notes = tuple(p for p in problems if not p.endswith("no signature"))
        if lba != 1:
            notes = (*notes, f"using the backup GPT header at LBA {lba}")
        return PartitionTable(
            kind="gpt", sector_size=ss, disk_id=_guid(header.disk_guid), partitions=parts,
            header_lba=lba, alternate_lba=header.alternate_lba,
            first_usable_lba=header.first_usable_lba, last_usable_lba=header.last_usable_lba,
            entries_lba=header.entries_lba, entry_count=header.entry_count,
            entry_size=header.entry_size, problems=notes)
    return None


def _gpt_entries(read_at: ReadAt, ss: int, lba: int, h: _GptHeader,
                 problems: list[str]) -> tuple[Partition, ...] | None:
    where = f"GPT entries of the header at LBA {lba}"
    if h.entry_size < 128 or h.entry_size % 8 or \
            h.entry_count * h.entry_size > MAX_GPT_ENTRY_BYTES:
        problems.append(f"{where}: implausible array of {h.entry_count} x {h.entry_size} bytes")
        return None
    array = _read_exact(read_at, h.entries_lba * ss, h.entry_count * h.entry_size)
    if array is None:
        problems.append(f"{where}: beyond the end of the disk")
        return None
    if zlib.crc32(array) != h.entries_crc:
        problems.append(f"{where}: bad CRC")
        return None
    parts = []
    for i in range(h.entry_count):
        type_raw, uniq, first, last, attrs, name_raw = _GPT_ENTRY.unpack_from(
            array, i * h.entry_size)
        if type_raw == bytes(16):
            continue
        if last < first:
            raise PartitionTableError(f"GPT partition {i + 1} ends (LBA {last}) before it "
                                      f"starts (LBA {first})")
        name = name_raw.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(number=i + 1, start=first * ss, size=(last - first + 1) * ss,
                               type=_guid(type_raw), uuid=_guid(uniq), name=name,
                               attributes=attrs))
    return tuple(parts)
