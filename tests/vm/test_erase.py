"""The erase action in a real kernel (issue #16, docs/lifecycle.md "Clean"): QEMU's virtio
disks with and without a working discard, QEMU's NVMe controller (Format NVM), a disk holding
an md array and an LVM volume group; then the disk files read on the host.

- ``auto`` over five disks: an NVMe namespace gets Format NVM, a virtio disk whose discard
  punches the host file gets BLKDISCARD, a virtio disk without discard gets BLKZEROOUT, an
  AHCI disk is asked for ATA security by hdparm (QEMU has none) and gets a discard, and a
  virtio disk that advertises discard but ignores it (``discard=ignore``: a device that keeps
  its data) fails its verification — the erase fails naming it, and says which disks were
  erased and verified; the others read back as the report says.
- ``metadata`` over two disks partitioned on the host, on which pyinit's own shell (before the
  disks step) built an md RAID1 (metadata 1.0, at the partitions' end) and an LVM VG, then
  stopped them: afterwards no md superblock, LVM label, GPT or PMBR is left on the files, and
  the data between them is still there (metadata mode erases metadata only, and says so).
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit_qemu.vm import VM, Disk, VMConfig

from .conftest import NEVER, Artifacts, Server, is_all_zero

pytestmark = pytest.mark.vm

MIB = 1 << 20
SIZE = 32 * MIB


def noisy(path: Path, size: int = SIZE, seed: int = 1) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))
    return path


def lifecycle(server: Server, mac: str) -> dict[str, Any]:
    state: dict[str, Any] = requests.get(f"{server.srv.url}/api/machines/{mac}",
                                         timeout=10).json()["lifecycle"]
    return state


def test_auto_erase_picks_nvme_discard_zero_and_catches_a_discard_that_keeps_the_data(
        artifacts: Artifacts, server: Server, tmp_path: Path) -> None:
    mac = "52:54:00:00:16:01"
    unmap, nvme, plain, liar, sata = (noisy(tmp_path / f"{n}.raw", seed=i) for i, n in
                                      enumerate(("unmap", "nvme", "plain", "liar", "sata")))
    old_nvme = nvme.read_bytes()
    server.machine(mac, {"action": "erase", "eraseMode": "auto"})
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd, mac=mac, timeout=240,
                   append=f"BOOTYURL={server.guest_url} pyinit.on_failure=poweroff "
                          "pyinit.lldp_seconds=1",
                   disks=[Disk(unmap, discard="unmap"), Disk(nvme, "nvme", discard="unmap"),
                          Disk(plain, discard="off"), Disk(liar, discard="ignore"),
                          Disk(sata, "ahci", discard="unmap")],
                   workdir=tmp_path / "vm")
    with VM(cfg) as vm:
        vm.expect(r"disks: to erase \(auto\): nvme0n1, sda, vda, vdb, vdc by every disk",
                  timeout=120)
        failed = vm.expect_event(step="result", status="failed", timeout=180)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
        lines = vm.lines
    done = {e["disk"]: e for e in server.events_through(mac, "result", "failed")
            if e.get("step") == "erase" and e.get("status") == "disk"}
    assert sorted(done) == ["nvme0n1", "sda", "vda", "vdb"]
    assert {k: v["mode"] for k, v in done.items()} == {
        "nvme0n1": "nvme", "sda": "discard", "vda": "discard", "vdb": "zero"}
    assert done["nvme0n1"]["how"].startswith("nvme format --ses=1")
    assert done["vda"]["how"] in ("BLKSECDISCARD", "BLKDISCARD")
    assert done["vdb"]["how"].startswith("BLKZEROOUT (")
    for name in ("vda", "vdb"):
        sampled = done[name]["verified"].split()[0]
        assert done[name]["verified"] == f"{sampled} sampled 4 KiB blocks read back: " \
                                         f"{sampled} zero"
    # on the host: what each report says is so
    assert is_all_zero(unmap) and is_all_zero(plain) and is_all_zero(sata)
    # the SATA disk was asked about ATA security first; QEMU's AHCI disk has none
    assert "pyinit: + hdparm -I /dev/sda" in lines
    after = nvme.read_bytes()
    assert all(after[o:o + 4096] != old_nvme[o:o + 4096] for o in range(0, SIZE, 1 << 16))
    assert liar.read_bytes() == noisy(tmp_path / "again.raw", seed=3).read_bytes()
    error = failed["error"]
    assert error.startswith("erase: disk /dev/vdc: erase discard by BLK"), error
    assert "verification failed:" in error and "still the old data (the device does not " \
           "erase on discard; use eraseMode zero) (erased and verified: nvme0n1, sda, vda, vdb)" \
           in error, error
    assert sum(1 for s in lines if s.startswith("pyinit: erase: ") and " verified: " in s) == 4
    state = lifecycle(server, mac)
    assert state["state"] == "failed", state


def test_metadata_erase_leaves_no_md_lvm_or_table_behind(artifacts: Artifacts, server: Server,
                                                         tmp_path: Path) -> None:
    mac = "52:54:00:00:16:02"
    disks = [noisy(tmp_path / f"md{i}.raw", 64 * MIB, seed=10 + i) for i in range(2)]
    for disk in disks:
        subprocess.run(["sfdisk", "--quiet", str(disk)], input="label: gpt\n,24M\n,\n",
                       text=True, check=True, capture_output=True)
    middle = [d.read_bytes()[40 * MIB:41 * MIB] for d in disks]
    server.machine(mac, {"action": "erase", "eraseMode": "metadata"})
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd, mac=mac, timeout=300,
                   append=f"BOOTYURL={server.guest_url} pyinit.on_failure=poweroff "
                          "pyinit.lldp_seconds=1 pyinit.break=disks",
                   disks=[Disk(d) for d in disks], workdir=tmp_path / "vm")
    with VM(cfg) as vm:
        vm.expect(r"starting a shell \(pyinit.break=disks\)", timeout=150)
        vm.expect(r"Enter 'help' for a list of built-in commands", timeout=30)
        vm.send("modprobe raid1; mdadm --create /dev/md0 --run --level=1 --raid-devices=2 "
                "--metadata=1.0 /dev/vda1 /dev/vdb1 && echo md-$((6*7))\n")
        vm.expect(r"md-42", timeout=60)
        vm.send("lvm pvcreate -y /dev/vda2 /dev/vdb2 && lvm vgcreate vgold /dev/vda2 /dev/vdb2 "
                "&& echo vg-$((6*7))\n")
        vm.expect(r"vg-42", timeout=60)
        vm.send("mdadm --stop /dev/md0 && echo stopped-$((6*7))\n")
        vm.expect(r"stopped-42", timeout=30)
        vm.send("exit\n")
        vm.expect_event(step="result", status="ok", timeout=120)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    reports = {e["disk"]: e for e in server.events_through(mac, "result", "ok")
               if e.get("step") == "erase" and e.get("status") == "disk"}
    assert sorted(reports) == ["vda", "vdb"]
    for name, part in (("vda", "vda"), ("vdb", "vdb")):
        kinds = sorted({r.split("@")[0] for r in reports[name]["removed"]})
        assert kinds == sorted({f"{part}1:linux_raid_member", f"{part}2:LVM2_member",
                                f"{name}:PMBR", f"{name}:gpt"}), kinds
        assert reports[name]["verified"].startswith("wipefs finds no signature; 6 zeroed "
                                                    "regions read back zero")
    for disk, kept in zip(disks, middle, strict=True):
        data = disk.read_bytes()
        assert subprocess.run(["wipefs", "--no-act", "--noheadings", str(disk)],
                              capture_output=True, text=True, check=True).stdout == ""
        assert b"LABELONE" not in data  # no LVM label anywhere
        md_magic = (0xA92B4EFC).to_bytes(4, "little")
        assert not any(data[o:o + 4] == md_magic for o in range(0, len(data), 512))
        assert data[40 * MIB:41 * MIB] == kept  # metadata only: the data between is kept
    assert lifecycle(server, mac)["state"] == "available"
