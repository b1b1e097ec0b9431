"""RAID1 roots (issue #17) on the host: the layout copied onto another member as sfdisk reads it,
the members' wipe over an old LVM label and table (real wipefs and lvm, loop devices), and the
array built around the written filesystem with the real mdadm.

This host's loop devices show no partitions, so the table work runs on disk files (sfdisk
checks the result) and the array on loop devices over the partitions (``--offset``/
``--sizelimit``). A host kernel without md (no /proc/mdstat, no md_mod to load) skips the array
test: tests/vm/test_raid.py builds, boots and re-provisions the same array in a VM.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyinit import parttable, raid
from pyinit.disks.inventory import Disk
from tests.hostreq import host_limit, need, need_root

pytestmark = pytest.mark.integration

MIB = 1 << 20
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69E4C47D4C"


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stderr}"
    return done.stdout


def golden(path: Path, size: int = 48 * MIB) -> Path:
    """A written image as pyinit leaves it on the first member: BIOS boot 1, ESP 2 (bytes in
    it), ext4 root 3 ending at 32 MiB, boot code in the MBR, the rest of the disk free."""
    need("sfdisk", "mke2fs")
    with path.open("wb") as f:
        f.truncate(size)
    sh("sfdisk", "--no-reread", "--no-tell-kernel", str(path), input=(
        f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT}\n"
        f"start=4096, size=8192, type={ESP}\nstart=12288, size=53248, type={LINUX}\n"))
    root = path.with_suffix(".root")
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", str(root), "24M")
    rng = random.Random(17)
    with path.open("r+b") as f:
        f.write(rng.randbytes(440))  # "boot code"
        f.seek(1 * MIB)
        f.write(rng.randbytes(5 * MIB))  # BIOS boot partition and ESP
        f.seek(12288 * 512)
        f.write(root.read_bytes())
    root.unlink()
    return path


def sfdisk_json(path: Path) -> dict[str, object]:
    return dict(json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"])


def test_the_copied_layout_is_what_sfdisk_reads(tmp_path: Path) -> None:
    a = golden(tmp_path / "a.img")
    b = tmp_path / "b.img"
    b.write_bytes(b"\xa5" * (52 * MIB))  # a little larger, full of an old tenant's bytes
    planned, _, _ = raid.grow_to_smallest(str(a), "last", 48 * MIB)
    raid.clone(str(a), str(b), planned)
    assert "No errors detected." in sh("sfdisk", "--verify", str(a))
    assert "No errors detected." in sh("sfdisk", "--verify", str(b))
    ta, tb = sfdisk_json(a), sfdisk_json(b)
    pa, pb = ta["partitions"], tb["partitions"]
    assert isinstance(pa, list) and isinstance(pb, list)
    assert [(p["start"], p["size"], p["type"]) for p in pa] == \
        [(p["start"], p["size"], p["type"]) for p in pb]
    assert pa[-1]["start"] + pa[-1]["size"] == 48 * MIB // 512 - 33  # the smaller disk's end
    assert ta["id"] != tb["id"] and not {p["uuid"] for p in pa} & {p["uuid"] for p in pb}
    assert tb["lastlba"] == 52 * MIB // 512 - 34  # b's own backup GPT at its end
    da, db = a.read_bytes(), b.read_bytes()
    assert da[:440] == db[:440] and da[MIB:6 * MIB] == db[MIB:6 * MIB]
    assert db[12288 * 512:12288 * 512 + 4096] == b"\xa5" * 4096  # the root is md's to copy


@pytest.fixture
def loops() -> Iterator[list[str]]:
    need("losetup")
    need_root("loop devices")
    made: list[str] = []
    yield made
    for dev in reversed(made):
        subprocess.run(["losetup", "--detach", dev], check=False)


def test_the_wipe_removes_an_old_lvm_label_and_table(tmp_path: Path, loops: list[str]) -> None:
    need("wipefs", "lvm", "sfdisk")
    image = golden(tmp_path / "old.img")
    dev = sh("losetup", "--find", "--show", str(image)).strip()
    loops.append(dev)
    sh("lvm", "pvcreate", "-ff", "-y", "--config", "devices { filter = [ \"a|.*|\" ] }", dev)
    assert "LVM2_member" in sh("wipefs", "--no-act", dev)
    raid.wipe(raid.Members((Disk(os.path.basename(dev), image.stat().st_size),), "test"))
    assert sh("wipefs", "--no-act", "--noheadings", dev).strip() == ""
    assert parttable.parse(image.read_bytes()[:MIB]) is None


@contextmanager
def partition_loop(image: Path, number: int, made: list[str]) -> Iterator[str]:
    table = parttable.parse(image.read_bytes()[:MIB], disk_size=image.stat().st_size)
    assert table is not None
    part = table.by_number(number)
    dev = sh("losetup", "--find", "--show", "--offset", str(part.start), "--sizelimit",
             str(part.size), str(image)).strip()
    made.append(dev)
    yield dev


def _md_available() -> bool:
    if not Path("/proc/mdstat").exists():
        subprocess.run(["modprobe", "raid1"], capture_output=True, check=False)
    return Path("/proc/mdstat").exists()


def test_the_array_is_built_around_the_written_filesystem(tmp_path: Path,
                                                          loops: list[str]) -> None:
    need("mdadm", "e2fsck", "sfdisk", "mke2fs")
    if not _md_available():
        host_limit("this host's kernel has no md (no /proc/mdstat, no raid1 module)",
                   covered_by="tests/vm/test_raid.py")
    a = golden(tmp_path / "a.img")
    b = tmp_path / "b.img"
    b.write_bytes(bytes(48 * MIB))
    planned, _, _ = raid.grow_to_smallest(str(a), "last", 48 * MIB)
    raid.clone(str(a), str(b), planned)
    name = f"pyinit-test-{os.getpid()}"
    with partition_loop(a, 3, loops) as first, partition_loop(b, 3, loops) as second:
        fs = 24 * MIB
        try:
            array = raid.create(name, 1, [first, second], fs, load=lambda names: [])
            detail = sh("mdadm", "--detail", array.device)
            assert "Version : 1.0" in detail and "Raid Devices : 2" in detail, detail
            assert "Intent Bitmap : Internal" in detail, detail
            assert array.size >= fs and "metadata=1.0" in array.array_line
            sh("e2fsck", "-fn", array.device)  # the image's filesystem, intact inside the array
        finally:
            subprocess.run(["mdadm", "--stop", f"/dev/md/{name}"], check=False)
