"""The PV written by pyinit_build.golden.lvm, read by the real consumers: GRUB and LVM.

GRUB (``grub-fstest``, no root) must find the LV inside a GPT partition of a disk image and read
an ext4 file from it. LVM's own tools (``pvck``, ``pvs``, ``vgs``, ``lvs``) must parse the label,
the checksums and the metadata text from a read-only loop device; this host has loop devices but
no device-mapper, so nothing is activated. A corrupted copy proves that LVM does check what we
wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyinit.units import MIB
from pyinit_build.golden.lvm import LvmLayout, plan, pv_header_bytes
from tests.hostreq import host_limit, need, need_root

pytestmark = pytest.mark.integration

T = 1_700_000_000
HELLO = b"hello from an LV written as bytes\n"
LVM_PARTITION_TYPE = "E6D6D379-F507-44C2-A23C-238F2A3DF928"
LVM_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}


def sh(*argv: str, input: bytes | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, check=False, env=LVM_ENV)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stderr.decode()}"
    return done.stdout.decode()


@dataclass(frozen=True)
class Pv:
    path: Path
    layout: LvmLayout


SEED = b"integration"
LAYOUTS = {
    # 48 MiB partition, 4 MiB extents, the LV over all 11 of them.
    "default": lambda: plan(48 * MIB, vg="vg-golden", lv="root", seed=SEED),
    # 1 MiB extents, pe_start 2 MiB, a 40 MiB LV leaving 6 extents free.
    "small-extents": lambda: plan(48 * MIB, 40 * MIB, vg="golden", lv="data_1", seed=SEED,
                                  extent_size=MIB, pe_start=2 * MIB),
}


@pytest.fixture(params=sorted(LAYOUTS))
def pv(request: pytest.FixtureRequest, tmp_path: Path) -> Pv:
    """A PV file: pv_header_bytes, then an ext4 holding /hello at lv_offset."""
    need("mke2fs")
    lay = LAYOUTS[request.param]()
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello").write_bytes(HELLO)
    fs = tmp_path / "fs.img"
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-O", "^metadata_csum_seed,^orphan_file",
       "-d", str(root), str(fs), "40M")
    assert fs.stat().st_size <= lay.lv_size
    path = tmp_path / "pv.img"
    with open(path, "wb") as out:
        out.write(pv_header_bytes(lay, creation_time=T))
        out.seek(lay.lv_offset)
        with open(fs, "rb") as src:
            shutil.copyfileobj(src, out)
        out.truncate(lay.pv_size)
    return Pv(path, lay)


def grub_name(lay: LvmLayout) -> str:
    """GRUB's device name for the LV: ``lvm/VG-LV`` with dashes inside names doubled."""
    return f"lvm/{lay.vg.replace('-', '--')}-{lay.lv.replace('-', '--')}"


def test_grub_reads_the_lv_inside_a_gpt_partition(pv: Pv, tmp_path: Path) -> None:
    need("grub-fstest", "sfdisk")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(MIB + pv.layout.pv_size + MIB)  # room for the backup GPT after it
    table = (f"label: gpt\nstart=2048, size={pv.layout.pv_size // 512}, "
             f"type={LVM_PARTITION_TYPE}\n")
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk), input=table.encode())
    with open(disk, "r+b") as out, open(pv.path, "rb") as src:
        out.seek(MIB)
        shutil.copyfileobj(src, out)
    device = grub_name(pv.layout)
    assert f"({device})" in sh("grub-fstest", str(disk), "ls").split()
    assert "hello" in sh("grub-fstest", str(disk), "ls", f"({device})/").split()
    assert sh("grub-fstest", str(disk), "cat", f"({device})/hello").encode() == HELLO


@contextlib.contextmanager
def attached(path: Path) -> Iterator[str]:
    """``path`` attached read-only to a loop device, always detached afterwards."""
    need("losetup", "pvs", "pvck")
    need_root("loop devices")
    done = subprocess.run(["losetup", "--find", "--show", "-r", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        host_limit(f"no loop device available: {done.stderr.strip()}",
                   covered_by="tests/vm/test_golden_boot.py::test_oci_image_on_lvm_boots_through_ovmf")
    device = done.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


@pytest.fixture
def loop(pv: Pv) -> Iterator[str]:
    with attached(pv.path) as device:
        yield device


def lvm(command: str, device: str, *args: str) -> tuple[list[dict[str, str]], str]:
    """One LVM report restricted to ``device`` (no other disk of this host is scanned)."""
    done = subprocess.run(
        [command, "--devices", device, "--config", 'devices { hints = "none" }',
         "--reportformat", "json", "--units", "b", "--nosuffix", *args],
        capture_output=True, text=True, check=False, env=LVM_ENV)
    assert done.returncode == 0, f"{command}: rc {done.returncode}\n{done.stderr}"
    report = json.loads(done.stdout)["report"][0]
    rows: list[dict[str, str]] = report[command[:2]]
    return rows, done.stderr


def test_lvm_parses_the_pv(pv: Pv, loop: str) -> None:
    lay = pv.layout
    check = subprocess.run(["pvck", "-v", loop], capture_output=True, text=True, check=False,
                           env=LVM_ENV)
    said = check.stdout + check.stderr
    assert check.returncode == 0, said
    assert f"Found label on {loop}, sector 1, type=LVM2 001" in said
    assert f"Found text metadata area: offset=4096, size={lay.mda_size}" in said
    assert "CHECK" not in said and "WARNING" not in said

    pvs, err = lvm("pvs", loop, "-o", "pv_name,vg_name,pv_uuid,dev_size,pe_start,pv_pe_count,"
                                      "pv_pe_alloc_count")
    assert pvs == [{"pv_name": loop, "vg_name": lay.vg, "pv_uuid": lay.pv_id,
                    "dev_size": str(lay.pv_size), "pe_start": str(lay.pe_start),
                    "pv_pe_count": str(lay.pe_count),
                    "pv_pe_alloc_count": str(lay.lv_extents)}]
    assert "WARNING" not in err

    vgs, err = lvm("vgs", loop, "-o", "vg_name,vg_uuid,vg_extent_size,vg_extent_count,"
                                      "vg_free_count,vg_seqno,pv_count,lv_count")
    assert vgs == [{"vg_name": lay.vg, "vg_uuid": lay.vg_id,
                    "vg_extent_size": str(lay.extent_size),
                    "vg_extent_count": str(lay.pe_count),
                    "vg_free_count": str(lay.pe_count - lay.lv_extents), "vg_seqno": "1",
                    "pv_count": "1", "lv_count": "1"}]
    assert "WARNING" not in err

    lvs, err = lvm("lvs", loop, "-o", "lv_name,vg_name,lv_uuid,lv_size,seg_pe_ranges,"
                                      "lv_time,lv_host,segtype")
    assert lvs == [{"lv_name": lay.lv, "vg_name": lay.vg, "lv_uuid": lay.lv_id,
                    "lv_size": str(lay.lv_size),
                    "seg_pe_ranges": f"{loop}:0-{lay.lv_extents - 1}",
                    "lv_time": lvs[0]["lv_time"], "lv_host": "pyinit", "segtype": "linear"}]
    assert lvs[0]["lv_time"].startswith("2023-11-1")  # printed in the host's time zone
    assert "WARNING" not in err


def test_lvm_notices_a_corrupted_text(pv: Pv) -> None:
    """The negative control: one flipped bit in the metadata text fails its checksum."""
    with open(pv.path, "r+b") as f:
        f.seek(4096 + 512 + 10)
        byte = f.read(1)[0]
        f.seek(4096 + 512 + 10)
        f.write(bytes([byte ^ 1]))
    with attached(pv.path) as device:
        check = subprocess.run(["pvck", device], capture_output=True, text=True, check=False,
                               env=LVM_ENV)
    assert check.returncode != 0
    assert "crc does not match" in check.stdout + check.stderr
