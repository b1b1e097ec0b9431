"""The erase modes on real loop devices (no VM): the real wipefs, BLKZEROOUT, BLKDISCARD and
lvm, then the file behind the loop device read on the host.

This host's loop devices show no partitions, so ``metadata`` is shown here on whole-disk
signatures (a GPT, an LVM PV); a disk with partitions, an md array and LVM inside is erased in a
VM (tests/vm/test_erase.py). The discard here is a loop device's (a hole punched in the file):
reads of it return zeros; a device that keeps the old data after a discard is the VM's.
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyinit import erase, log
from pyinit.disks.inventory import Disk
from pyinit.disks.usage import device_usage
from pyinit.erase import EraseError
from pyinit.errors import DiskError
from tests.hostreq import need, need_root

pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 48 * MIB


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[[Path], Disk]]:
    need("losetup", "wipefs", "sfdisk")
    need_root("loop devices")
    made: list[str] = []

    def attach(image: Path) -> Disk:
        dev = sh("losetup", "--find", "--show", str(image)).strip()
        made.append(dev)
        name = os.path.basename(dev)
        return Disk(name, image.stat().st_size)

    yield attach
    for dev in made:
        subprocess.run(["losetup", "-d", dev], check=False)


def noisy(path: Path, size: int = SIZE) -> Path:
    """A disk file full of non-zero bytes (every sampled block has old data to lose)."""
    rng = random.Random(7)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))
    return path


def test_zero_erases_every_byte_and_says_how_it_checked(loop: Callable[[Path], Disk],
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    image = noisy(tmp_path / "zero.img")
    disk = loop(image)
    console = io.StringIO()
    monkeypatch.setattr(log, "_console", console)
    monkeypatch.setattr(erase, "CHUNK", 8 * MIB)  # six calls, a progress line between each
    monkeypatch.setattr(erase, "PROGRESS_SECONDS", 0.0)
    log.configure()
    report = erase.erase_disk(disk, "zero", erase.Caps())
    assert not any(image.read_bytes())
    progress = [s for s in console.getvalue().splitlines() if " BLKZEROOUT " in s and " of " in s]
    assert [s.split(" BLKZEROOUT ")[1].split(" (")[0] for s in progress] == [
        f"{n} of 48 MiB" for n in (8, 16, 24, 32, 40)], progress
    assert re.search(r"erase: loop\d+ BLKZEROOUT 8 of 48 MiB \(16%\), ETA \d+ s$", progress[0])
    assert report.method == "zero" and report.how.startswith("BLKZEROOUT (")
    assert report.verified.startswith("6") and report.verified.endswith(" zero")
    sampled = int(report.verified.split()[0])
    assert 60 <= sampled <= 66
    assert report.verified == f"{sampled} sampled 4 KiB blocks read back: {sampled} zero"


def test_discard_on_a_loop_device_punches_the_file(loop: Callable[[Path], Disk],
                                                   tmp_path: Path) -> None:
    image = noisy(tmp_path / "discard.img")
    disk = loop(image)
    caps = erase.read_caps(disk, "discard")
    assert caps.discard  # loop devices advertise discard (a punched hole)
    assert erase.choose_mode("discard", disk, caps) == ("discard", None)
    report = erase.erase_disk(disk, "discard", caps)
    assert report.how in ("BLKSECDISCARD", "BLKDISCARD")
    assert not any(image.read_bytes())
    assert os.stat(image).st_blocks * 512 < MIB  # the blocks are gone, not zeroed in place


def test_metadata_removes_the_table_and_an_lvm_label_and_keeps_the_middle(
        loop: Callable[[Path], Disk], tmp_path: Path) -> None:
    need("lvm")
    gpt = noisy(tmp_path / "gpt.img")
    subprocess.run(["sfdisk", "--quiet", str(gpt)], input="label: gpt\n,16M\n,\n", text=True,
                   check=True, capture_output=True)
    pv = noisy(tmp_path / "pv.img")
    a, b = loop(gpt), loop(pv)
    vg = f"vgerase{os.getpid()}"
    sh("lvm", "pvcreate", "--driverloaded", "n", "-ff", "-y", f"/dev/{b.name}")
    sh("lvm", "vgcreate", "--driverloaded", "n", vg, f"/dev/{b.name}")
    middle = gpt.read_bytes()[20 * MIB:21 * MIB]

    first = erase.erase_disk(a, "metadata", erase.Caps())
    second = erase.erase_disk(b, "metadata", erase.Caps())

    # the primary GPT header, its backup at the disk's end, the protective MBR
    assert sorted(r.split("@")[0] for r in first.removed) == [
        f"{a.name}:PMBR", f"{a.name}:gpt", f"{a.name}:gpt"]
    assert f"{a.name}:gpt@{SIZE - 512:#x}" in first.removed
    assert [r.split("@")[0] for r in second.removed] == [f"{b.name}:LVM2_member"]
    for image in (gpt, pv):
        assert sh("wipefs", "--no-act", "--noheadings", str(image)) == ""
        data = image.read_bytes()
        assert not any(data[:MIB]) and not any(data[-MIB:])
    assert gpt.read_bytes()[20 * MIB:21 * MIB] == middle  # metadata only: the data stays
    assert first.verified == "wipefs finds no signature; 2 zeroed regions read back zero " \
                             "(3 signatures removed)"
    pvs = subprocess.run(["lvm", "pvs", "--driverloaded", "n", f"/dev/{b.name}"],
                         capture_output=True, text=True, check=False)
    assert pvs.returncode != 0  # not a PV any more


def test_a_mounted_disk_is_refused_before_anything_is_erased(loop: Callable[[Path], Disk],
                                                             tmp_path: Path) -> None:
    need("mke2fs", "mount", "umount")
    busy = tmp_path / "busy.img"
    busy.write_bytes(b"\0" * (16 * MIB))
    sh("mke2fs", "-q", "-F", str(busy))
    spare = noisy(tmp_path / "spare.img")
    a, b = loop(busy), loop(spare)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", f"/dev/{a.name}", str(mnt))
    try:
        usage = device_usage(a.name)
        mounted = Disk(a.name, a.size, mounted=usage.mounted, holders=usage.held)
        with pytest.raises(EraseError) as info:
            erase.plan([mounted, b], devices=[f"/dev/{a.name}", f"/dev/{b.name}"])
        assert str(info.value) == (f"erase: refused, nothing erased: {a.name} in use: "
                                   f"/dev/{a.name} on {mnt}: unmount it first")
        # and the device itself refuses an exclusive open, should a plan be stale
        with pytest.raises(DiskError, match="is in use"):
            erase.erase_disk(a, "zero", erase.Caps())
    finally:
        sh("umount", str(mnt))
    assert any(spare.read_bytes()[:MIB])  # the other disk was not touched
