"""The LVM2 PV writer without LVM: CRC, ids, names, sizes, and every on-disk field parsed back."""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Callable

import pytest

from pyinit_build.errors import BuildError
from pyinit_build.golden.lvm import (
    ID_ALPHABET,
    INITIAL_CRC,
    MIB,
    LvmLayout,
    check_name,
    label_sector,
    lvm_crc,
    lvm_id,
    metadata_text,
    plan,
    pv_header_bytes,
)

T = 1_700_000_000  # Tue Nov 14 22:13:20 2023 UTC


def crc_bitwise(data: bytes, crc: int = INITIAL_CRC) -> int:
    """lvm2's calc_crc spelled out bit by bit: reflected poly 0xEDB88320, no final XOR."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def layout(pv_size: int = 48 * MIB, lv_size: int | None = None, *, vg: str = "vg0",
           lv: str = "root", seed: bytes = b"test", extent_size: int = 4 * MIB,
           pe_start: int = MIB) -> LvmLayout:
    return plan(pv_size, lv_size, vg=vg, lv=lv, seed=seed, extent_size=extent_size,
                pe_start=pe_start)


# --------------------------------------------------------------------------------------------
# CRC and ids


@pytest.mark.parametrize("data", [b"", b"\0", b"LVM2", bytes(range(256)) * 3, b"x" * 4097])
def test_crc_is_the_bitwise_reference(data: bytes) -> None:
    assert lvm_crc(data) == crc_bitwise(data)
    assert lvm_crc(data, 0) == crc_bitwise(data, 0)
    assert lvm_crc(data, 0xFFFFFFFF) ^ 0xFFFFFFFF == zlib.crc32(data)  # plain CRC-32 framing


def test_crc_of_nothing_is_the_initial_value() -> None:
    assert lvm_crc(b"") == INITIAL_CRC


def test_lvm_id_format_and_determinism() -> None:
    a = lvm_id(b"seed")
    assert re.fullmatch(r"[0-9a-zA-Z]{6}(-[0-9a-zA-Z]{4}){5}-[0-9a-zA-Z]{6}", a)
    assert len(a.replace("-", "")) == 32
    assert lvm_id(b"seed") == a
    assert lvm_id(b"seed2") != a
    assert set(a.replace("-", "")) <= set(ID_ALPHABET[:62])  # no '!' or '#', like LVM's own


def test_plan_ids_differ_and_follow_the_seed() -> None:
    one, two = layout(), layout()
    assert one == two
    assert len({one.pv_id, one.vg_id, one.lv_id}) == 3
    assert layout(seed=b"other").pv_id != one.pv_id


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize("name", ["vg0", "a", "Golden_VG.1+x-y", "x" * 127, "lv-", "_"])
def test_valid_names(name: str) -> None:
    check_name("vg", name)
    check_name("lv", name)


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), ("-vg", "start with '-'"), (".", "reserved"), ("..", "reserved"),
    ("a b", "allowed"), ("a/b", "allowed"), ("é", "allowed"), ("x" * 128, "longer than 127"),
])
def test_invalid_names(name: str, why: str) -> None:
    for kind in ("vg", "lv"):
        with pytest.raises(BuildError, match=re.escape(why)):
            check_name(kind, name)


@pytest.mark.parametrize("name", ["snapshot", "snapshot1", "pvmove0", "a_mimage", "x_tmeta_y",
                                  "d_pmspare", "v_vorigin", "c_cdata", "c_cpool"])
def test_reserved_lv_names_are_fine_for_vgs(name: str) -> None:
    check_name("vg", name)
    with pytest.raises(BuildError, match="reserved"):
        check_name("lv", name)
    with pytest.raises(BuildError, match="reserved"):
        layout(lv=name)


def test_plan_rejects_bad_vg_name_with_step_lvm() -> None:
    with pytest.raises(BuildError) as err:
        layout(vg="bad name")
    assert err.value.step == "lvm"


# --------------------------------------------------------------------------------------------
# Sizes


def test_default_layout_takes_every_extent() -> None:
    lay = layout()
    assert (lay.extent_size, lay.pe_start, lay.pe_count, lay.lv_extents) == (4 * MIB, MIB, 11, 11)
    assert lay.lv_offset == MIB
    assert lay.lv_size == 44 * MIB
    assert lay.mda_size == MIB - 4096


def test_partial_last_extent_is_unused() -> None:
    lay = layout(pv_size=48 * MIB + 3 * MIB)
    assert lay.pe_count == 12
    assert lay.lv_size == 48 * MIB


def test_lv_size_rounds_up_to_extents() -> None:
    assert layout(lv_size=1).lv_extents == 1
    assert layout(lv_size=8 * MIB).lv_extents == 2
    assert layout(lv_size=8 * MIB + 1).lv_extents == 3
    assert layout(lv_size=44 * MIB).lv_size == 44 * MIB


def test_other_extent_size_and_pe_start() -> None:
    lay = layout(pv_size=64 * MIB, extent_size=MIB, pe_start=2 * MIB)
    assert (lay.pe_count, lay.lv_extents, lay.lv_offset, lay.mda_size) == (62, 62, 2 * MIB,
                                                                           2 * MIB - 4096)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: layout(lv_size=44 * MIB + 1), "does not fit"),
    (lambda: layout(lv_size=0), "positive"),
    (lambda: layout(pv_size=4 * MIB), "no 4194304-byte extent"),
    (lambda: layout(pv_size=48 * MIB + 1), "multiple of 512"),
    (lambda: layout(extent_size=3 * MIB), "power of two"),
    (lambda: layout(extent_size=512), "power of two"),
    (lambda: layout(extent_size=0), "positive"),
    (lambda: layout(pe_start=16384), "pe_start"),
    (lambda: layout(pe_start=MIB + 1), "pe_start"),
])
def test_size_errors(make: Callable[[], LvmLayout], match: str) -> None:
    with pytest.raises(BuildError, match=match):
        make()


def test_layout_validates_direct_construction() -> None:
    lay = layout()
    with pytest.raises(BuildError, match="not an LVM id"):
        dataclasses.replace(lay, pv_id="nodashes" * 4)
    with pytest.raises(BuildError, match="not an LVM id"):
        dataclasses.replace(lay, vg_id=lay.vg_id.replace(lay.vg_id[0], "%"))
    with pytest.raises(BuildError, match="does not fit"):
        dataclasses.replace(lay, lv_extents=12)


# --------------------------------------------------------------------------------------------
# On-disk bytes


def test_label_matches_what_lvm_wrote() -> None:
    """Sector 1 as lvm2 2.03.16's pvcreate + vgcreate wrote it on a 48 MiB loop device."""
    lay = LvmLayout(vg="vg0", lv="root", pv_id="0fa20z-lWkM-Tomh-Uw0t-BGZq-lsYM-ffiVni",
                    vg_id="aIcgjq-CWSU-np5l-MYSl-zovR-47Kp-YWtN4n",
                    lv_id="rWfVZY-j5jA-K37M-STrk-mFcE-n3ke-rULtgz", pv_size=48 * MIB,
                    lv_extents=11)
    lvm_wrote = bytes.fromhex(
        "4c4142454c4f4e450100000000000000336f0ba1200000004c564d3220303031"
        "30666132307a6c576b4d546f6d685577307442475a716c73594d666669566e69"
        "0000000300000000000010000000000000000000000000000000000000000000"
        "0000000000000000001000000000000000f00f00000000000000000000000000"
        "00000000000000000200000001").ljust(512, b"\0")
    assert label_sector(lay) == lvm_wrote


def test_header_fields_parse_back() -> None:
    lay = layout()
    data = pv_header_bytes(lay, creation_time=T)
    assert len(data) == lay.pe_start == MIB
    assert data[:512] == bytes(512)

    # label_header at sector 1
    ident, sector, crc, offset, kind = struct.unpack_from("<8sQII8s", data, 512)
    assert (ident, sector, offset, kind) == (b"LABELONE", 1, 32, b"LVM2 001")
    assert crc == crc_bitwise(data[512 + 20:1024])

    # pv_header right after it
    uuid, dev_size = struct.unpack_from("<32sQ", data, 544)
    assert uuid.decode() == lay.pv_id.replace("-", "")
    assert dev_size == 48 * MIB
    locns = struct.unpack_from("<8Q", data, 584)
    assert locns == (MIB, 0, 0, 0, 4096, MIB - 4096, 0, 0)
    assert struct.unpack_from("<IIQQ", data, 648) == (2, 1, 0, 0)  # extension, no bootloader area
    assert data[664:1024] == bytes(360)
    assert data[1024:4096] == bytes(3072)

    # mda_header at 4096
    checksum, magic, version, start, size = struct.unpack_from("<I16sIQQ", data, 4096)
    assert magic == b" LVM2 x[5A%r0N*>"
    assert (version, start, size) == (1, 4096, MIB - 4096)
    assert checksum == crc_bitwise(data[4100:4096 + 512])
    r_off, r_size, r_crc, r_flags = struct.unpack_from("<QQII", data, 4136)
    assert (r_off, r_flags) == (512, 0)
    assert struct.unpack_from("<QQII", data, 4160) == (0, 0, 0, 0)
    assert data[4184:4608] == bytes(424)

    # the metadata text, its stored size including the NUL
    text = data[4608:4608 + r_size]
    assert text == metadata_text(lay, creation_time=T)
    assert text.endswith(b"\n\0") and text.count(b"\0") == 1
    assert r_crc == crc_bitwise(text)
    assert data[4608 + r_size:] == bytes(MIB - 4608 - r_size)


EXPECTED_TEXT = """\
vg0 {
id = "VGID"
seqno = 1
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0

physical_volumes {

pv0 {
id = "PVID"
device = "/dev/unknown"

status = ["ALLOCATABLE"]
flags = []
dev_size = 98304
pe_start = 2048
pe_count = 11
}
}

logical_volumes {

root {
id = "LVID"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1700000000
creation_host = "build1"
segment_count = 1

segment1 {
start_extent = 0
extent_count = 3

type = "striped"
stripe_count = 1

stripes = [
"pv0", 0
]
}
}
}

}
# Generated by pyinit (LVM2 text format): Tue Nov 14 22:13:20 2023

contents = "Text Format Volume Group"
version = 1

description = "Write from pyinit image."

creation_host = "build1"
creation_time = 1700000000\t# Tue Nov 14 22:13:20 2023

\0"""


def test_metadata_text_is_lvms_raw_format() -> None:
    lay = layout(lv_size=12 * MIB)
    text = metadata_text(lay, creation_time=T, hostname="build1").decode()
    expected = (EXPECTED_TEXT.replace("VGID", lay.vg_id).replace("PVID", lay.pv_id)
                .replace("LVID", lay.lv_id))
    assert text == expected


@pytest.mark.parametrize("host", ["", 'a"b', "a\\b", "a\nb"])
def test_bad_hostname(host: str) -> None:
    with pytest.raises(BuildError, match="hostname"):
        pv_header_bytes(layout(), creation_time=T, hostname=host)


def test_deterministic_and_time_dependent() -> None:
    lay = layout()
    one = pv_header_bytes(lay, creation_time=T)
    assert one == pv_header_bytes(layout(), creation_time=T)
    other = pv_header_bytes(lay, creation_time=T + 1)
    assert other[:4096] == one[:4096]  # the label does not carry times
    assert other != one


def test_small_metadata_area_still_fits_the_text() -> None:
    lay = layout(pe_start=4096 + 32768)
    data = pv_header_bytes(lay, creation_time=T)
    assert len(data) == 36864


def test_long_names_fill_the_text_but_fit() -> None:
    lay = layout(vg="v" * 127, lv="l" * 127, pe_start=4096 + 32768)
    assert f"{'v' * 127} {{".encode() in pv_header_bytes(lay, creation_time=T)


def test_text_too_big_for_the_metadata_area() -> None:
    lay = layout(pe_start=4096 + 32768)
    with pytest.raises(BuildError, match="does not fit a metadata area"):
        pv_header_bytes(lay, creation_time=T, hostname="h" * 8000)
