"""Choosing the disk on a machine with several (issue #7), in a real kernel: a 1 GiB virtio disk
"small-os", a 2 GiB NVMe disk "big-data" and a smaller removable USB stick on xHCI. The action
names the disk by hints, by a /dev/disk/by-id name, or not at all (the default rule), or with hints
that match nothing; the host then checks which disk holds the image and that every other disk is
byte-identical to before. The console must show the inventory before anything is written."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit.capture import data_extents
from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk

from .conftest import NEVER, Artifacts, Server

pytestmark = pytest.mark.vm

MIB = 1 << 20
GIB = 1 << 30
BIG_DATA_BY_ID = "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_big-data"  # udev's name for QEMU's NVMe


@dataclass(frozen=True)
class Machine:
    disks: dict[str, Path]          # role -> host file
    before: dict[str, str]          # role -> fingerprint (see below) before the boot


def fingerprint(path: Path) -> str:
    """The sparse file's allocated extents and the sha256 of their bytes: any write by the
    guest allocates (QEMU writes even zeros: detect-zeroes is off) or changes those bytes, so
    this sees every write a whole-file hash would, and zeros written into a hole too, without
    reading 3 GiB of holes per test (9 s)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h.update(f"size {size}\n".encode())
        for start, end in data_extents(fd, 0, size):
            h.update(f"extent {start} {end}\n".encode())
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(end - pos, 8 * MIB), pos)
                if not chunk:
                    break
                h.update(chunk)
                pos += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _marked_disk(path: Path, size: int, label: str) -> Path:
    """A sparse disk with a distinct 1 MiB marker at the start and at the end, so any write
    that lands on it changes its hash."""
    create_disk(path, size)
    marker = hashlib.sha512(label.encode()).digest() * (MIB // 64)
    with path.open("r+b") as f:
        f.write(marker)
        f.seek(size - MIB)
        f.write(marker)
    return path


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    disks = {
        "small-os": _marked_disk(tmp_path / "small-os.raw", GIB, "small-os"),
        "big-data": _marked_disk(tmp_path / "big-data.raw", 2 * GIB, "big-data"),
        "stick": _marked_disk(tmp_path / "stick.raw", 256 * MIB, "stick"),
    }
    return Machine(disks, {k: fingerprint(p) for k, p in disks.items()})


def _boot(artifacts: Artifacts, tmp_path: Path, server: Server, mac: str,
          m: Machine) -> VM:
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd,
                   append=f"MYURL={server.guest_url} pyinit.on_failure=poweroff", mac=mac,
                   nic_model="virtio-net-pci", timeout=420, workdir=tmp_path / "vm", disks=[
                       Disk(m.disks["small-os"], "virtio", serial="small-os"),
                       Disk(m.disks["big-data"], "nvme", serial="big-data"),
                       Disk(m.disks["stick"], "usb", serial="stick-1", removable=True)])
    return VM(cfg)


def _action(server: Server, demo: DemoImage, **fields: Any) -> dict[str, Any]:
    server.image("demo.img.gz", demo.gz)
    return {"action": "writeImage", "compressed": True, "finish": "poweroff",
            "sourceImage": f"{server.guest_url}/images/demo.img.gz", **fields}


def _inventory(vm: VM) -> dict[str, dict[str, Any]]:
    """The inventory event and the table on the console (names the three disks)."""
    vm.expect(r"pyinit: disks: NAME +SIZE +TRAN", timeout=240)
    ev = vm.expect_event(step="disks", status="inventory", timeout=30)
    by_serial = {d["serial"]: d for d in ev["disks"]}
    assert set(by_serial) == {"small-os", "big-data", "stick-1"}, ev
    assert by_serial["stick-1"]["transport"] == "usb"
    assert by_serial["stick-1"]["refused"] == ["removable (usb)"]
    assert by_serial["big-data"]["transport"] == "nvme"
    assert BIG_DATA_BY_ID.rsplit("/", 1)[1] in by_serial["big-data"]["by_id"]
    return by_serial


# (a) hints, (b) no hints and no device: the default rule, (d) a by-id name.
@pytest.mark.parametrize(("fields", "target", "how"), [
    ({"rootDeviceHints": {"serial": "big-data"}}, "big-data",
     "rootDeviceHints {serial: big-data}"),
    ({}, "small-os", "default rule: smallest usable disk"),
    ({"destinationDevice": BIG_DATA_BY_ID}, "big-data", f"by-id link {BIG_DATA_BY_ID}"),
], ids=["hints", "default", "by-id"])
def test_the_chosen_disk_gets_the_image(artifacts: Artifacts, server: Server,
                                        demo_image: DemoImage, machine: Machine,
                                        tmp_path: Path, fields: dict[str, Any], target: str,
                                        how: str) -> None:
    mac = "52:54:00:00:07:01"
    server.machine(mac, _action(server, demo_image, **fields))
    with _boot(artifacts, tmp_path, server, mac, machine) as vm:
        disks = _inventory(vm)
        vm.expect(r"pyinit: disks: destination /dev/\S+ .* by " + re.escape(how), timeout=30)
        vm.expect_event(step="provision", status="ok", timeout=240)
        result = vm.expect_event(step="result", timeout=60)
        assert vm.wait_exit(timeout=90) == 0
        vm.assert_never(*NEVER)
    assert result["status"] == "ok", result
    assert result["device"] == disks[target]["path"], result
    assert result["disk_choice"] == how
    assert sha256_file(machine.disks[target], demo_image.size) == demo_image.sha256
    for role, path in machine.disks.items():
        if role != target:
            assert fingerprint(path) == machine.before[role], f"{role} was written"
    seen = [(e.get("step"), e.get("status")) for e in server.events(mac)]
    assert ("disks", "inventory") in seen  # the server got the inventory too


# (c) hints matching nothing: one line naming the hints and every disk, nothing written.
def test_hints_matching_nothing_touch_no_disk(artifacts: Artifacts, server: Server,
                                              demo_image: DemoImage, machine: Machine,
                                              tmp_path: Path) -> None:
    mac = "52:54:00:00:07:02"
    server.machine(mac, _action(server, demo_image,
                                rootDeviceHints={"serial": "no-such-disk"}))
    with _boot(artifacts, tmp_path, server, mac, machine) as vm:
        _inventory(vm)
        line = vm.expect(r"\[\d+/\d+\] disks: FAILED: .*", timeout=60).group(0)
        failed = vm.expect_event(step="disks", status="failed", timeout=10)
        result = vm.expect_event(step="result", status="failed", timeout=30)
        assert vm.wait_exit(timeout=90) == 0
        vm.assert_never(*NEVER, r"provision: start")
    assert failed["kind"] == "NoDiskError"
    error = failed["error"]
    assert error.startswith("disk selection: no disk matches rootDeviceHints "
                            "{serial: no-such-disk}: have "), error
    for serial in ("small-os", "big-data", "stick-1"):
        assert f"serial {serial} does not match no-such-disk" in error
    assert error in line  # the same one line on the console
    assert result["failed_step"] == "disks"
    for role, path in machine.disks.items():
        assert fingerprint(path) == machine.before[role], f"{role} was written"
    assert ("result", "failed") in [(e.get("step"), e.get("status"))
                                    for e in server.events(mac)]
