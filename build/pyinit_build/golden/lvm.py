"""An LVM2 physical volume with one linear logical volume, written as bytes.

``pyinit image`` builds disk images without root, device-mapper or loop devices, so ``pvcreate``,
``vgcreate`` and ``lvcreate`` cannot run. No maintained library writes the LVM2 on-disk format,
so this module writes it by hand, following lvm2's ``lib/label/label.c``,
``lib/format_text/{layout.h,text_label.c,format-text.c,export.c}`` and ``lib/misc/crc.c``.

The layout is what ``pvcreate`` + ``vgcreate`` + ``lvcreate -l 100%FREE`` write with defaults
(byte for byte except the free-form ``description``, host and ``# Generated`` comment lines, and
``seqno = 1``, the first commit)::

    0        sector 0: zeros
    512      label_header "LABELONE" + pv_header (+ pv_header_extension, version 2)
    4096     mda_header (magic " LVM2 x[5A%r0N*>"), then at 4096 + 512 the VG metadata text
    pe_start the first physical extent = the LV's first byte (extent 0 of the one linear LV)

Everything is deterministic: ids derive from a seed, times are arguments.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
import zlib
from dataclasses import dataclass

from pyinit.units import MIB
from pyinit_build.errors import BuildError

KIB = 1 << 10
SECTOR = 512

#: lvm2's ``INITIAL_CRC`` (lib/misc/crc.h).
INITIAL_CRC = 0xF597A6CF
LABEL_ID = b"LABELONE"
LABEL_TYPE = b"LVM2 001"
#: The label lives in sector 1 (``pvcreate`` default; LVM scans sectors 0-3).
LABEL_SECTOR = 1
LABEL_HEADER_SIZE = 32
#: ``FMTT_MAGIC``, the 16-byte mda_header magic.
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_VERSION = 1
MDA_HEADER_SIZE = 512
#: The first metadata area starts at 4 KiB (``pvcreate`` default).
MDA_OFFSET = 4096
#: lvm2's ``MDA_SIZE_MIN``: 8 pages.
MDA_SIZE_MIN = 8 * 4096
PV_HEADER_EXTENSION_VERSION = 2
#: ``PV_EXT_USED``: the PV belongs to a VG.
PV_EXT_USED = 0x1
NAME_MAX = 127  # lvm2's NAME_LEN (128) includes the NUL

DEFAULT_EXTENT_SIZE = 4 * MIB
DEFAULT_PE_START = 1 * MIB
DESCRIPTION = "Write from pyinit image."

#: The characters of an LVM id (lib/id/id.c). LVM's random ids use the first 62 only.
ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#"
_ID_GROUPS = (6, 4, 4, 4, 4, 4, 6)
_ID_RE = re.compile(r"^[0-9A-Za-z!#]{6}(?:-[0-9A-Za-z!#]{4}){5}-[0-9A-Za-z!#]{6}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9+_.-]+$")
#: LV name prefixes and substrings lvm2 reserves (lib/misc/lvm-string.c, lvm(8) "VALID NAMES").
_LV_RESERVED_PREFIXES = ("pvmove", "snapshot")
_LV_RESERVED_STRINGS = ("_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_wcorig", "_mimage",
                        "_mlog", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_imeta",
                        "_iorig", "_pmspare", "_vorigin")
_HOST_RE = re.compile(r'^[^"\\\x00-\x1f\x7f]+$')


def lvm_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """lvm2's ``calc_crc``: reflected CRC-32 (poly 0xEDB88320) without the final XOR.

    zlib's CRC-32 inverts the register before and after; undoing both inversions around it
    gives the plain table algorithm LVM runs from ``initial``.
    """
    return zlib.crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def lvm_id(seed: bytes) -> str:
    """A deterministic 32-character LVM id from ``seed``, dashed 6-4-4-4-4-4-6 as LVM prints it.

    Like ``id_create`` it maps bytes onto the first 62 characters of :data:`ID_ALPHABET`
    (no ``!`` or ``#``); the bytes are SHAKE-256 of the seed instead of /dev/urandom.
    """
    raw = hashlib.shake_256(b"pyinit-lvm-id\0" + seed).digest(32)
    chars = "".join(ID_ALPHABET[b % 62] for b in raw)
    groups, pos = [], 0
    for size in _ID_GROUPS:
        groups.append(chars[pos:pos + size])
        pos += size
    return "-".join(groups)


def check_name(kind: str, name: str) -> None:
    """Raise BuildError unless ``name`` is a valid new VG (``kind="vg"``) or LV name."""
    what = "VG" if kind == "vg" else "LV"
    if not name:
        raise BuildError("lvm", f"{what} name is empty")
    if len(name) > NAME_MAX:
        raise BuildError("lvm", f"{what} name {name[:20]!r}... is longer than {NAME_MAX}")
    if not _NAME_RE.match(name):
        raise BuildError("lvm", f"{what} name {name!r}: only A-Z a-z 0-9 + _ . - are allowed")
    if name.startswith("-"):
        raise BuildError("lvm", f"{what} name {name!r} must not start with '-'")
    if name in (".", ".."):
        raise BuildError("lvm", f"{what} name {name!r} is reserved")
    if kind != "vg":
        for prefix in _LV_RESERVED_PREFIXES:
            if name.startswith(prefix):
                raise BuildError("lvm", f"LV name {name!r}: names starting {prefix!r} are "
                                        "reserved")
        for part in _LV_RESERVED_STRINGS:
            if part in name:
                raise BuildError("lvm", f"LV name {name!r}: names containing {part!r} are "
                                        "reserved")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class LvmLayout:
    """One PV (a whole partition) holding one VG with one linear LV from extent 0.

    Sizes are bytes. Ids are dashed, as LVM prints them. Validated on construction.
    """

    vg: str
    lv: str
    pv_id: str
    vg_id: str
    lv_id: str
    #: The partition (= PV device) size in bytes.
    pv_size: int
    lv_extents: int
    extent_size: int = DEFAULT_EXTENT_SIZE
    #: Where the first physical extent starts, from the partition start.
    pe_start: int = DEFAULT_PE_START

    def __post_init__(self) -> None:
        check_name("vg", self.vg)
        check_name("lv", self.lv)
        for what, value in (("PV", self.pv_id), ("VG", self.vg_id), ("LV", self.lv_id)):
            if not _ID_RE.match(value):
                raise BuildError("lvm", f"{what} id {value!r} is not an LVM id "
                                        "(32 of 0-9 a-z A-Z ! #, dashed 6-4-4-4-4-4-6)")
        if not _is_power_of_two(self.extent_size) or self.extent_size < KIB:
            raise BuildError("lvm", f"extent size {self.extent_size} is not a power of two "
                                    ">= 1 KiB")
        if self.pe_start % SECTOR or self.pe_start - MDA_OFFSET < MDA_SIZE_MIN:
            raise BuildError("lvm", f"pe_start {self.pe_start} must be a multiple of {SECTOR} "
                                    f"and at least {MDA_OFFSET + MDA_SIZE_MIN}")
        if self.pv_size % SECTOR:
            raise BuildError("lvm", f"PV size {self.pv_size} is not a multiple of {SECTOR}")
        if self.pe_count < 1:
            raise BuildError("lvm", f"PV of {self.pv_size} bytes holds no {self.extent_size}-byte "
                                    f"extent after pe_start {self.pe_start}")
        if not 1 <= self.lv_extents <= self.pe_count:
            raise BuildError("lvm", f"LV of {self.lv_extents} extents does not fit the PV's "
                                    f"{self.pe_count} extents of {self.extent_size} bytes")

    @property
    def pe_count(self) -> int:
        """Physical extents in the PV (a partial extent at the end is unused)."""
        return (self.pv_size - self.pe_start) // self.extent_size

    @property
    def mda_size(self) -> int:
        """Bytes of the metadata area: from 4 KiB up to pe_start."""
        return self.pe_start - MDA_OFFSET

    @property
    def lv_offset(self) -> int:
        """Bytes from the partition start to the LV's first byte."""
        return self.pe_start

    @property
    def lv_size(self) -> int:
        """The LV's size in bytes."""
        return self.lv_extents * self.extent_size


def plan(pv_size: int, lv_size: int | None = None, *, vg: str, lv: str, seed: bytes,
         extent_size: int = DEFAULT_EXTENT_SIZE, pe_start: int = DEFAULT_PE_START) -> LvmLayout:
    """The layout of a PV of ``pv_size`` bytes with one LV of ``lv_size`` bytes.

    ``lv_size`` is rounded up to whole extents (as ``lvcreate -L`` does); None takes every
    extent (``-l 100%FREE``). Ids derive from ``seed``. Pure; raises BuildError("lvm", ...).
    """
    if extent_size <= 0:
        raise BuildError("lvm", f"extent size {extent_size} must be positive")
    if lv_size is None:
        extents = max(0, (pv_size - pe_start) // extent_size)
    elif lv_size <= 0:
        raise BuildError("lvm", f"LV size {lv_size} must be positive")
    else:
        extents = -(-lv_size // extent_size)
    return LvmLayout(vg=vg, lv=lv, pv_id=lvm_id(seed + b"/pv"), vg_id=lvm_id(seed + b"/vg"),
                     lv_id=lvm_id(seed + b"/lv"), pv_size=pv_size, lv_extents=extents,
                     extent_size=extent_size, pe_start=pe_start)


# --------------------------------------------------------------------------------------------
# On-disk structures


def _raw_id(dashed: str) -> bytes:
    return dashed.replace("-", "").encode("ascii")


def label_sector(layout: LvmLayout) -> bytes:
    """Sector 1: label_header, pv_header with its area lists, pv_header_extension."""
    pv_header = struct.pack("<32sQ", _raw_id(layout.pv_id), layout.pv_size)
    # Data areas: {pe_start, size 0 = to the end}, then metadata areas; each list ends in {0, 0}.
    pv_header += struct.pack("<QQQQ", layout.pe_start, 0, 0, 0)
    pv_header += struct.pack("<QQQQ", MDA_OFFSET, layout.mda_size, 0, 0)
    pv_header += struct.pack("<II", PV_HEADER_EXTENSION_VERSION, PV_EXT_USED)
    pv_header += struct.pack("<QQ", 0, 0)  # bootloader areas: none
    body = struct.pack("<I8s", LABEL_HEADER_SIZE, LABEL_TYPE) + pv_header
    body = body.ljust(SECTOR - 20, b"\0")  # the CRC covers offset_xl (byte 20) to the sector end
    return struct.pack("<8sQI", LABEL_ID, LABEL_SECTOR, lvm_crc(body)) + body


def mda_header(layout: LvmLayout, text: bytes) -> bytes:
    """The 512-byte mda_header pointing at ``text`` (stored right after it, NUL included)."""
    rest = struct.pack("<16sIQQ", MDA_MAGIC, MDA_VERSION, MDA_OFFSET, layout.mda_size)
    rest += struct.pack("<QQII", MDA_HEADER_SIZE, len(text), lvm_crc(text), 0)
    rest += bytes(24)  # the raw_locn list's terminator
    rest = rest.ljust(MDA_HEADER_SIZE - 4, b"\0")
    return struct.pack("<I", lvm_crc(rest)) + rest


def _ctime(t: int) -> str:
    return time.asctime(time.gmtime(t))


def metadata_text(layout: LvmLayout, *, creation_time: int, hostname: str = "pyinit") -> bytes:
    """The VG metadata as LVM's raw export writes it: no indentation, trailer last, NUL-ended.

    The stored size and checksum of the text include the NUL (``text_vg_export_raw``).
    """
    if not _HOST_RE.match(hostname):
        raise BuildError("lvm", f"hostname {hostname!r} is empty or has quotes, backslashes or "
                                "control characters")
    lines = [
        f"{layout.vg} {{",
        f'id = "{layout.vg_id}"',
        "seqno = 1",
        'format = "lvm2"',
        'status = ["RESIZEABLE", "READ", "WRITE"]',
        "flags = []",
        f"extent_size = {layout.extent_size // SECTOR}",
        "max_lv = 0",
        "max_pv = 0",
        "metadata_copies = 0",
        "",
        "physical_volumes {",
        "",
        "pv0 {",
        f'id = "{layout.pv_id}"',
        'device = "/dev/unknown"',
        "",
        'status = ["ALLOCATABLE"]',
        "flags = []",
        f"dev_size = {layout.pv_size // SECTOR}",
        f"pe_start = {layout.pe_start // SECTOR}",
        f"pe_count = {layout.pe_count}",
        "}",
        "}",
        "",
        "logical_volumes {",
        "",
        f"{layout.lv} {{",
        f'id = "{layout.lv_id}"',
        'status = ["READ", "WRITE", "VISIBLE"]',
        "flags = []",
        f"creation_time = {creation_time}",
        f'creation_host = "{hostname}"',
        "segment_count = 1",
        "",
        "segment1 {",
        "start_extent = 0",
        f"extent_count = {layout.lv_extents}",
        "",
        'type = "striped"',
        "stripe_count = 1",
        "",
        "stripes = [",
        '"pv0", 0',
        "]",
        "}",
        "}",
        "}",
        "",
        "}",
        # LVM's trailer; ctime() ends in a newline, so LVM's lines after a date are doubled.
        f"# Generated by pyinit (LVM2 text format): {_ctime(creation_time)}",
        "",
        'contents = "Text Format Volume Group"',
        "version = 1",
        "",
        f'description = "{DESCRIPTION}"',
        "",
        f'creation_host = "{hostname}"',
        f"creation_time = {creation_time}\t# {_ctime(creation_time)}",
        "",
    ]
    return ("\n".join(lines) + "\n").encode("ascii") + b"\0"


def pv_header_bytes(layout: LvmLayout, *, creation_time: int, hostname: str = "pyinit") -> bytes:
    """Bytes 0 to ``pe_start`` of the PV: label, pv_header, mda_header and VG metadata. Pure."""
    text = metadata_text(layout, creation_time=creation_time, hostname=hostname)
    # LVM keeps room for two copies of the text (old and new) in the ring buffer.
    max_text = (layout.mda_size - MDA_HEADER_SIZE) // 2 - SECTOR
    if len(text) > max_text:
        raise BuildError("lvm", f"VG metadata ({len(text)} bytes) does not fit a metadata area "
                                f"of {layout.mda_size} bytes; raise pe_start")
    out = bytearray(layout.pe_start)
    out[SECTOR * LABEL_SECTOR:SECTOR * (LABEL_SECTOR + 1)] = label_sector(layout)
    out[MDA_OFFSET:MDA_OFFSET + MDA_HEADER_SIZE] = mda_header(layout, text)
    start = MDA_OFFSET + MDA_HEADER_SIZE
    out[start:start + len(text)] = text
    return bytes(out)
