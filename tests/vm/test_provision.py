"""The walking skeleton in a real kernel: /init is the frozen pyinit as PID 1, gets a DHCP lease
from QEMU's slirp, fetches its action by MAC and writes the image onto its virtio disk; the host
then checks the disk. Failures (unknown MAC, malformed action) end in the policy with no write."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit.image.progress import megabytes
from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import Interface

from .conftest import NEVER, Artifacts, Server, assert_progress, blank_disk, boot, is_all_zero

pytestmark = pytest.mark.vm


# MYURL on virtio (net and disk); BOOTYURL on e1000 and an AHCI disk, so both driver sets load.
@pytest.mark.parametrize(("form", "mac", "nic", "interface", "device"), [
    ("MYURL", "52:54:00:00:02:01", "virtio-net-pci", "virtio", "/dev/vda"),
    ("BOOTYURL", "52:54:00:00:02:02", "e1000", "ahci", "/dev/sda"),
])
def test_provision_writes_the_image(artifacts: Artifacts, server: Server, demo_image: DemoImage,
                                    tmp_path: Path, form: str, mac: str, nic: str,
                                    interface: Interface, device: str) -> None:
    server.image("demo.img.gz", demo_image.gz)
    server.machine(mac, {"action": "writeImage", "compressed": True,
                         "sourceImage": f"{server.srv.url}/images/demo.img.gz".replace(
                             "127.0.0.1", "10.0.2.2"),
                         "destinationDevice": device, "finish": "poweroff"})
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    with boot(artifacts, tmp_path, f"{form}={server.guest_url}", mac=mac, disks=[disk],
              nic_model=nic, interface=interface) as vm:
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=90)
        lease = vm.expect_event(step="network", status="ok", timeout=90)
        fetched = vm.expect_event(step="action", status="ok", timeout=60)
        vm.expect_event(step="provision", status="ok", timeout=120)
        result = vm.expect_event(step="result", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert result["status"] == "ok", result
    assert result["mac"] == mac
    assert result["device"] == device
    assert result["address"].startswith("10.0.2.")
    # the counts labelled, and the sha256 said to be of the file as served, not of the disk
    served = demo_image.gz.stat().st_size
    assert (result["bytes_written"], result["bytes_downloaded"]) == (demo_image.size, served)
    assert result["sha256"] == demo_image.gz_sha256
    assert result["sha256_of"] == f"the downloaded file (compressed gzip, {megabytes(served)})"
    # gzip declares no raw size (and the action gives none): no percentage, no ETA, ever
    assert_progress(vm.lines, vm.events, demo_image.size, known=False)
    assert sum("poweroff now" in s for s in vm.lines) == 1
    assert lease["uptime"] < fetched["uptime"]
    # The host's own check: the disk holds the image, byte for byte.
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    # The server saw this machine's events, ending in the result.
    seen = [(e.get("step"), e.get("status")) for e in server.events(mac)]
    assert ("result", "ok") in seen


def test_unknown_mac_fails_without_touching_the_disk(artifacts: Artifacts, server: Server,
                                                     tmp_path: Path) -> None:
    mac = "52:54:00:00:02:03"  # no machine file, no default
    disk = blank_disk(tmp_path / "disk.raw", 64 << 20)
    with boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=mac, disks=[disk]) as vm:
        failed = vm.expect_event(step="action", status="failed", timeout=120)
        result = vm.expect_event(step="result", status="failed", timeout=30)
        vm.expect(r"poweroff now", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert "404" in failed["error"]
    assert result["policy"] == "poweroff"
    assert result["failed_step"] == "action"
    assert is_all_zero(disk)
    kinds = [(e.get("step"), e.get("status")) for e in server.events(mac)]
    assert ("result", "failed") in kinds
    # an unknown machine still tells the server what it is, before its result
    assert kinds.index(("hardware", "inventory")) < kinds.index(("result", "failed")), kinds


def test_malformed_action_fails_without_touching_the_disk(artifacts: Artifacts, server: Server,
                                                          tmp_path: Path) -> None:
    """The server names the broken file and line (500: the machine retries until the operator
    fixes it, here for 6 s); the console shows the server's reason; the disk stays untouched."""
    mac = "52:54:00:00:02:04"
    server.machine(mac, '{"action": "writeImage", "sourceImage": 7, ')
    disk = blank_disk(tmp_path / "disk.raw", 64 << 20)
    with boot(artifacts, tmp_path, f"BOOTYURL={server.guest_url} pyinit.fetch_timeout=6",
              mac=mac, disks=[disk]) as vm:
        failed = vm.expect_event(step="action", status="failed", timeout=120)
        vm.expect_event(step="result", status="failed", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert failed["kind"] == "FetchError"
    assert "HTTP 500: machines/52-54-00-00-02-04.json:1:" in failed["error"], failed["error"]
    assert is_all_zero(disk)
