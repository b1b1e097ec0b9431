"""pyinit.parttable against MBR and GPT tables built byte by byte here.

The builders (:func:`mbr_sector`, :func:`gpt_disk`) are reused by the capture tests. A table
written by the real sfdisk is parsed in tests/integration/test_capture.py.
"""

from __future__ import annotations

import io
import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit import parttable
from pyinit.parttable import Partition, PartitionTableError, end_of_last_partition, parse

LINUX = "0fc63daf-8483-4772-8e79-3d69e4c47d4c"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
DISK_GUID = "5b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f"
PART_GUIDS = ["11111111-2222-4333-8444-555555555555", "66666666-7777-4888-9999-aaaaaaaaaaaa",
              "bbbbbbbb-cccc-4ddd-aeee-ffffffffffff"]


def mbr_sector(entries: list[tuple[int, int, int, int]], *, signature: int = 0x1234ABCD,
               boot_code: bytes = b"") -> bytearray:
    """A 512-byte MBR/EBR: entries are (boot flag, type, start LBA, sectors)."""
    sector = bytearray(512)
    sector[:len(boot_code)] = boot_code
    struct.pack_into("<I", sector, 440, signature)
    for i, (boot, ptype, start, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * i, boot, b"\xfe\xff\xff", ptype,
                         b"\xfe\xff\xff", start, count)
    sector[510:512] = b"\x55\xaa"
    return sector


@dataclass(frozen=True)
class GptPart:
    first: int
    last: int
    name: str = ""
    type: str = LINUX
    uuid: str = PART_GUIDS[0]
    attrs: int = 0


def gpt_header(*, my_lba: int, alternate: int, first_usable: int, last_usable: int,
               entries_lba: int, count: int, entries_crc: int, ss: int,
               disk_guid: str = DISK_GUID) -> bytes:
    header = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my_lba,
                                   alternate, first_usable, last_usable,
                                   uuid.UUID(disk_guid).bytes_le, entries_lba, count, 128,
                                   entries_crc))
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    return bytes(header) + bytes(ss - len(header))


def gpt_disk(sectors: int, parts: list[GptPart], *, ss: int = 512, count: int = 128,
             slots: list[int] | None = None) -> bytearray:
    """A whole disk image with a protective MBR, primary and backup GPT. ``slots`` puts the
    partitions at these entry indexes (default 0, 1, 2...)."""
    disk = bytearray(sectors * ss)
    disk[:512] = mbr_sector([(0, 0xEE, 1, min(sectors - 1, 0xFFFFFFFF))], signature=0)
    array = bytearray(count * 128)
    for slot, p in zip(slots or range(len(parts)), parts, strict=True):
        name = p.name.encode("utf-16-le").ljust(72, b"\0")
        struct.pack_into("<16s16sQQQ72s", array, slot * 128, uuid.UUID(p.type).bytes_le,
                         uuid.UUID(p.uuid).bytes_le, p.first, p.last, p.attrs, name)
    array_sectors = len(array) // ss
    last = sectors - 1
    first_usable, last_usable = 2 + array_sectors, last - array_sectors - 1
    crc = zlib.crc32(array)
    common: dict[str, Any] = dict(first_usable=first_usable, last_usable=last_usable, count=count,
                  entries_crc=crc, ss=ss)
    disk[ss:2 * ss] = gpt_header(my_lba=1, alternate=last, entries_lba=2, **common)
    disk[2 * ss:2 * ss + len(array)] = array
    backup_entries = last - array_sectors
    disk[backup_entries * ss:backup_entries * ss + len(array)] = array
    disk[last * ss:] = gpt_header(my_lba=last, alternate=1, entries_lba=backup_entries, **common)
    return disk


def three_part_gpt(ss: int = 512) -> bytearray:
    per_mib = (1 << 20) // ss
    return gpt_disk(8 * per_mib, [
        GptPart(per_mib, 2 * per_mib - 1, "EFI system", ESP, PART_GUIDS[0], attrs=1),
        GptPart(2 * per_mib, 4 * per_mib - 1, "root", LINUX, PART_GUIDS[1]),
        GptPart(5 * per_mib, 6 * per_mib - 1, "data ünïcode", LINUX, PART_GUIDS[2],
                attrs=1 << 60),
    ], ss=ss, slots=[0, 1, 4])


# -- no table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("disk", [
    b"", b"\0" * 100, bytes(4096), bytes(510) + b"\x55\xab",
])
def test_no_table(disk: bytes) -> None:
    assert parse(disk) is None
    assert end_of_last_partition(disk) is None


def test_boot_code_in_the_entries_is_not_a_table() -> None:
    sector = mbr_sector([(0, 0x83, 2048, 100)])
    sector[446] = 0x33  # a boot flag that is neither 0x00 nor 0x80
    assert parse(bytes(sector)) is None


@pytest.mark.parametrize(("offset", "magic"), [(3, b"NTFS    "), (82, b"FAT32"), (54, b"FAT16"),
                                               (3, b"EXFAT   ")])
def test_volume_boot_record_is_not_a_table(offset: int, magic: bytes) -> None:
    sector = mbr_sector([], signature=0)
    sector[offset:offset + len(magic)] = magic
    assert parse(bytes(sector)) is None


def test_empty_mbr_is_a_table_without_partitions() -> None:
    table = parse(bytes(mbr_sector([], signature=0xDEADBEEF)))
    assert table is not None
    assert (table.kind, table.disk_id, table.partitions) == ("mbr", "deadbeef", ())
    assert table.end_of_last_partition == 0


# -- MBR --------------------------------------------------------------------------------------


def test_mbr_primary_partitions() -> None:
    disk = mbr_sector([(0x80, 0x83, 2048, 4096), (0, 0, 0, 0), (0, 0x0C, 8192, 2048)])
    table = parse(bytes(disk))
    assert table is not None
    assert (table.kind, table.sector_size, table.disk_id) == ("mbr", 512, "1234abcd")
    assert table.partitions == (
        Partition(1, 2048 * 512, 4096 * 512, "0x83", "1234abcd-01", attributes=0x80),
        Partition(3, 8192 * 512, 2048 * 512, "0x0c", "1234abcd-03"),
    )
    assert table.end_of_last_partition == (8192 + 2048) * 512
    assert table.primary_header_offset is None and table.backup_header_offset is None
    assert table.by_number(3).start == 8192 * 512
    with pytest.raises(KeyError):
        table.by_number(2)


def test_mbr_entry_with_zero_sectors_is_unused() -> None:
    table = parse(bytes(mbr_sector([(0, 0x83, 2048, 0), (0, 0x83, 4096, 10)])))
    assert table is not None
    assert [p.number for p in table.partitions] == [2]


def extended_disk() -> bytearray:
    """Primary 1 at 2048+2048, extended 2 at 8192+16384 holding logicals 5, 6, 7."""
    disk = bytearray(32768 * 512)
    disk[:512] = mbr_sector([(0, 0x83, 2048, 2048), (0, 0x05, 8192, 16384)])
    # EBR chain: each EBR's logical starts 2048 sectors after it; links are relative to 8192.
    ebrs = [8192, 12288, 16384]
    for i, ebr in enumerate(ebrs):
        entries = [(0, 0x83 if i != 1 else 0x82, 2048, 1024)]
        if i + 1 < len(ebrs):
            entries.append((0, 0x05, ebrs[i + 1] - 8192, 4096))
        disk[ebr * 512:(ebr + 1) * 512] = mbr_sector(entries, signature=0)
    return disk


def test_mbr_extended_and_logical_partitions() -> None:
    table = parse(bytes(extended_disk()))
    assert table is not None
    got = [(p.number, p.kind, p.type, p.start // 512, p.size // 512, p.uuid)
           for p in table.partitions]
    assert got == [
        (1, "primary", "0x83", 2048, 2048, "1234abcd-01"),
        (2, "extended", "0x05", 8192, 16384, "1234abcd-02"),
        (5, "logical", "0x83", 10240, 1024, "1234abcd-05"),
        (6, "logical", "0x82", 14336, 1024, "1234abcd-06"),
        (7, "logical", "0x83", 18432, 1024, "1234abcd-07"),
    ]
    # the extended container counts: it ends after its last logical partition
    assert table.end_of_last_partition == (8192 + 16384) * 512


def test_mbr_logical_chain_that_stops_early() -> None:
    disk = extended_disk()
    disk[12288 * 512 + 510] = 0  # the second EBR lost its signature
    table = parse(bytes(disk))
    assert table is not None
    assert [p.number for p in table.partitions] == [1, 2, 5]


def test_mbr_ebr_loop_is_an_error() -> None:
    disk = extended_disk()
    # the last EBR links back to the first
    disk[16384 * 512:16385 * 512] = mbr_sector([(0, 0x83, 2048, 1024), (0, 0x05, 0, 4096)],
                                               signature=0)
    with pytest.raises(PartitionTableError, match="loop"):
        parse(bytes(disk))


def test_mbr_ebr_outside_the_extended_partition() -> None:
    disk = extended_disk()
    disk[8192 * 512:8193 * 512] = mbr_sector([(0, 0x83, 2048, 1024), (0, 0x05, 999999, 10)],
                                             signature=0)
    with pytest.raises(PartitionTableError, match="outside the extended partition"):
        parse(bytes(disk))


def test_mbr_with_4k_sectors() -> None:
    table = parse(bytes(mbr_sector([(0, 0x83, 256, 512)])), sector_size=4096)
    assert table is not None
    assert (table.partitions[0].start, table.partitions[0].size) == (256 * 4096, 512 * 4096)


# -- GPT --------------------------------------------------------------------------------------


def test_gpt() -> None:
    disk = three_part_gpt()
    table = parse(bytes(disk))
    assert table is not None
    mib = 1 << 20
    assert (table.kind, table.sector_size, table.disk_id) == ("gpt", 512, DISK_GUID)
    assert table.partitions == (
        Partition(1, mib, mib, ESP, PART_GUIDS[0], "EFI system", attributes=1),
        Partition(2, 2 * mib, 2 * mib, LINUX, PART_GUIDS[1], "root"),
        Partition(5, 5 * mib, mib, LINUX, PART_GUIDS[2], "data ünïcode", attributes=1 << 60),
    )
    last_lba = len(disk) // 512 - 1
    assert (table.header_lba, table.alternate_lba) == (1, last_lba)
    assert (table.first_usable_lba, table.last_usable_lba) == (34, last_lba - 33)
    assert (table.entries_lba, table.entry_count, table.entry_size) == (2, 128, 128)
    assert table.primary_header_offset == 512
    assert table.backup_header_offset == last_lba * 512 == len(disk) - 512
    assert table.end_of_last_partition == 6 * mib
    assert table.problems == ()
    assert end_of_last_partition(bytes(disk)) == 6 * mib


@pytest.mark.parametrize("given", [None, 4096])
def test_gpt_with_4k_sectors(given: int | None) -> None:
    disk = three_part_gpt(ss=4096)
    table = parse(bytes(disk), sector_size=given)
    assert table is not None
    assert table.sector_size == 4096
    assert [(p.number, p.start, p.size) for p in table.partitions] == [
        (1, 1 << 20, 1 << 20), (2, 2 << 20, 2 << 20), (5, 5 << 20, 1 << 20)]
    assert table.backup_header_offset == len(disk) - 4096
    assert (table.first_usable_lba, table.entries_lba) == (6, 2)  # 128 entries in 4 sectors


def test_gpt_without_partitions() -> None:
    table = parse(bytes(gpt_disk(2048, [])))
    assert table is not None
    assert (table.kind, table.partitions, table.end_of_last_partition) == ("gpt", (), 0)


def test_gpt_damaged_primary_falls_back_to_the_backup() -> None:
    disk = three_part_gpt()
    disk[512 + 40] ^= 0xFF  # corrupt the primary header: its CRC no longer matches
    with pytest.raises(PartitionTableError, match=r"LBA 1.*bad CRC"):
        parse(bytes(disk))  # without the disk size there is no backup to read
    table = parse(bytes(disk), disk_size=len(disk))
    assert table is not None
    last = len(disk) // 512 - 1
    assert (table.header_lba, table.alternate_lba) == (last, 1)
    assert table.backup_header_offset == last * 512
    assert table.end_of_last_partition == 6 << 20
    assert any("bad CRC" in p for p in table.problems)
    assert any("backup GPT header" in p for p in table.problems)


def test_gpt_damaged_entry_array() -> None:
    disk = three_part_gpt()
    disk[2 * 512 + 100] ^= 0xFF
    with pytest.raises(PartitionTableError, match=r"entries.*bad CRC"):
        parse(bytes(disk))
    table = parse(bytes(disk), disk_size=len(disk))
    assert table is not None and table.header_lba == len(disk) // 512 - 1


def test_gpt_both_headers_damaged() -> None:
    disk = three_part_gpt()
    disk[512 + 40] ^= 0xFF
    disk[-512 + 40] ^= 0xFF
    with pytest.raises(PartitionTableError, match=r"bad CRC.*bad CRC"):
        parse(bytes(disk), disk_size=len(disk))


def test_protective_mbr_without_gpt() -> None:
    disk = bytes(mbr_sector([(0, 0xEE, 1, 2047)])) + bytes(2047 * 512)
    with pytest.raises(PartitionTableError, match="protective MBR but no GPT header"):
        parse(disk)


def test_stale_gpt_behind_an_ordinary_mbr_is_ignored() -> None:
    """Like the kernel: without a protective MBR the GPT is not looked at."""
    disk = three_part_gpt()
    disk[:512] = mbr_sector([(0, 0x83, 2048, 1024)])
    table = parse(bytes(disk))
    assert table is not None and table.kind == "mbr"
    assert [p.number for p in table.partitions] == [1]


def test_gpt_partition_ending_before_it_starts() -> None:
    disk = gpt_disk(4096, [GptPart(3000, 2999)])
    with pytest.raises(PartitionTableError, match=r"ends .* before it starts"):
        parse(bytes(disk))


def test_gpt_implausible_entry_array() -> None:
    disk = three_part_gpt()
    disk[512:1024] = gpt_header(my_lba=1, alternate=1, first_usable=34, last_usable=100,
                                entries_lba=2, count=1 << 20, entries_crc=0, ss=512)
    with pytest.raises(PartitionTableError, match="implausible"):
        parse(bytes(disk))


def test_gpt_header_that_names_another_lba() -> None:
    disk = three_part_gpt()
    disk[512:1024] = gpt_header(my_lba=7, alternate=1, first_usable=34, last_usable=100,
                                entries_lba=2, count=128, entries_crc=0, ss=512)
    with pytest.raises(PartitionTableError, match="own LBA as 7"):
        parse(bytes(disk))


def test_gpt_entries_beyond_the_end() -> None:
    disk = three_part_gpt()[:4 * 512]  # the header survives, most of the entry array does not
    with pytest.raises(PartitionTableError, match="beyond the end"):
        parse(bytes(disk))


# -- sources ----------------------------------------------------------------------------------


def test_sources(tmp_path: Path) -> None:
    disk = bytes(three_part_gpt())
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return disk[offset:offset + size]

    fd = os.open(path, os.O_RDONLY)
    try:
        with open(path, "rb") as f:
            tables = [parse(disk), parse(bytearray(disk)), parse(memoryview(disk)),
                      parse(io.BytesIO(disk)), parse(f), parse(read_at),
                      parse(parttable.reader_from_fd(fd))]
    finally:
        os.close(fd)
    assert all(t == tables[0] for t in tables)
    # only what is needed is read: LBA 0, the header, the entry array
    assert reads == [(0, 512), (512, 512), (1024, 128 * 128)]
