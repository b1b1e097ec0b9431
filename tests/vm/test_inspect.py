"""The inspect action in a real kernel (issue #16, docs/lifecycle.md "Inspect"): the machine
posts its hardware and disk inventory, listens for LLDP, powers off, and touches no disk; the
server shows it ``inspected``, and ``pyinit status MAC --disks`` prints the rootDeviceHints that
name each disk alone, from what the machine posted."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import requests

from pyinit_qemu.vm import VM, Disk, VMConfig

from .conftest import NEVER, REPO, Artifacts, Server

pytestmark = pytest.mark.vm

MIB = 1 << 20


def test_inspect_posts_the_inventory_touches_no_disk_and_powers_off(
        artifacts: Artifacts, server: Server, tmp_path: Path) -> None:
    mac = "52:54:00:00:16:03"
    disks = []
    for i in range(2):
        path = tmp_path / f"d{i}.raw"
        path.write_bytes(bytes([0x40 + i]) * (16 * MIB))
        disks.append(path)
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in disks]
    server.machine(mac, {"action": "inspect"})
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd, mac=mac, timeout=240,
                   append=f"BOOTYURL={server.guest_url} pyinit.on_failure=shell "
                          "pyinit.lldp_seconds=2",
                   disks=[Disk(disks[0], serial="INSPECT-A"), Disk(disks[1], "nvme",
                                                                   serial="INSPECT-B")],
                   workdir=tmp_path / "vm")
    with VM(cfg) as vm:
        vm.expect(r"action: inspect \(hardware inventory, then poweroff\)", timeout=120)
        vm.expect(r"inspect: listening for LLDP up to 2 s", timeout=60)
        vm.expect_event(step="result", status="ok", timeout=60)
        vm.expect(r"pyinit: poweroff now", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in disks] == before
    steps = [(e.get("step"), e.get("status"))
             for e in server.events_through(mac, "result", "ok")]
    assert ("hardware", "inventory") in steps and ("disks", "inventory") in steps
    assert ("lldp", "done") in steps
    assert steps.index(("hardware", "inventory")) < steps.index(("result", "ok")), steps
    state = requests.get(f"{server.srv.url}/api/machines/{mac}", timeout=10).json()
    assert state["lifecycle"]["state"] == "inspected", state["lifecycle"]
    done = subprocess.run([str(REPO / ".venv" / "bin" / "pyinit"), "status", "--server",
                           server.srv.url, mac, "--disks"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith(f"disks of {mac.replace(':', '-')}, inventory of ")
    assert '      rootDeviceHints {"serial": "INSPECT-B"}' in out.splitlines()
    assert '      rootDeviceHints {"serial": "INSPECT-A"}' in out.splitlines()
    assert "  nvme0n1  16 MiB  nvme, " in out and "  vda  16 MiB  virtio, " in out
