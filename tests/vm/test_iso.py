"""`pyinit iso` boots for real, with no ``-kernel``: the hybrid ISO built from the current
kernel and initramfs, with ``MYURL=`` pointing at the test server baked in.

* in a CD-ROM drive through SeaBIOS (El Torito, BIOS image) and through OVMF (El Torito EFI
  image), as from a BMC's virtual media;
* written to a USB stick (``dd``: the ISO at the start of a larger stick) through SeaBIOS: the
  MBR boot code of the hybrid layout.

Each machine provisions its virtio disk from the test server; the host then checks the disk's
sha256. The boot medium is never a target: the CD (``sr0``) is not in the disk inventory at all,
and the USB stick is refused as the boot medium even with ``allowRemovable`` and although the
default rule (smallest disk that fits) would otherwise pick it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from pyinit_build import iso
from pyinit_build.demoimage import DemoImage, build_demo_image, sha256_file
from pyinit_qemu.vm import VM, Disk, Firmware, VMConfig

from .conftest import NEVER, Artifacts, Server, blank_disk

pytestmark = pytest.mark.vm

log = logging.getLogger("test_iso")
MIB = 1 << 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoImage:
    """The write-pipeline demo image, built in a temporary directory (not in $PYINIT_OUT)."""
    return build_demo_image(tmp_path_factory.mktemp("demo"))


def _serve(server: Server, demo: DemoImage, mac: str, **action: object) -> None:
    server.image("demo.img.gz", demo.gz)
    server.machine(mac, {"action": "writeImage", "compressed": True,
                         "sourceImage": f"{server.guest_url}/images/demo.img.gz",
                         "finish": "poweroff", **action})


def _iso(artifacts: Artifacts, server: Server, out: Path) -> iso.IsoResult:
    spec = iso.IsoSpec(output=out, kernel=artifacts.kernel, initrd=artifacts.archive,
                       cmdline=iso.compose(url=server.guest_url,
                                           append=["pyinit.on_failure=poweroff panic=-1"]))
    return iso.build_iso(spec)


def _provision(cfg: VMConfig, what: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Boot ``cfg`` to the provisioning result; (disk inventory event, result event, serial
    lines). Logs the time from QEMU's start to the result, and how much of it was before
    Linux (firmware, GRUB loading kernel and initramfs from the medium)."""
    with VM(cfg) as vm:
        vm.expect(r"GNU GRUB", timeout=90)
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=120)
        inventory = vm.expect_event(step="disks", status="inventory", timeout=120)
        vm.expect_event(step="provision", status="ok", timeout=120)
        result = vm.expect_event(step="result", timeout=30)
        seconds = vm.elapsed
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
        lines = vm.lines
    log.info("iso: %s: QEMU start to provisioned %.1f s (firmware + GRUB %.1f s, Linux %.1f s)",
             what, seconds, seconds - result["uptime"], result["uptime"])
    return inventory, result, lines


@pytest.mark.parametrize(("firmware", "mac"), [("bios", "52:54:00:00:07:01"),
                                               ("uefi", "52:54:00:00:07:02")])
def test_iso_in_a_cdrom_drive_provisions_the_disk(artifacts: Artifacts, server: Server,
                                                  demo: DemoImage, tmp_path: Path,
                                                  firmware: Firmware, mac: str) -> None:
    _serve(server, demo, mac, destinationDevice="/dev/vda")
    built = _iso(artifacts, server, tmp_path / "pyinit.iso")
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo.size)
    cfg = VMConfig(kernel=None, firmware=firmware, cdrom=built.path, mac=mac,
                   disks=[Disk(disk)], timeout=300, workdir=tmp_path / "vm")
    inventory, result, lines = _provision(cfg, f"CD-ROM, {firmware}")
    assert result["status"] == "ok", result
    assert result["device"] == "/dev/vda"
    # The CD-ROM (sr0) is never a candidate: not even in the inventory.
    assert [d["name"] for d in inventory["disks"]] == ["vda"], inventory
    # GRUB booted the baked line (after its own BOOT_IMAGE=), consoles first.
    kernel_line = next(line for line in lines if "Kernel command line:" in line)
    assert kernel_line.split("Kernel command line: ", 1)[1].split()[:4] == [
        "BOOT_IMAGE=/boot/vmlinuz", "console=tty0", "console=ttyS0,115200",
        f"MYURL={server.guest_url}"]
    assert sha256_file(disk, demo.size) == demo.sha256
    seen = [(e.get("step"), e.get("status")) for e in server.events(mac)]
    assert ("result", "ok") in seen


def test_iso_written_to_a_usb_stick_boots_and_is_refused_as_target(
        artifacts: Artifacts, server: Server, demo: DemoImage, tmp_path: Path) -> None:
    mac = "52:54:00:00:07:03"
    # allowRemovable: the stick (96 MiB) is the smallest disk that fits the 64 MiB image, so
    # only the boot-medium rule keeps the default selection off it.
    _serve(server, demo, mac, allowRemovable=True)
    built = _iso(artifacts, server, tmp_path / "pyinit.iso")
    stick = blank_disk(tmp_path / "stick.raw", 96 * MIB)
    with built.path.open("rb") as src, stick.open("r+b") as dst:  # dd if=pyinit.iso of=stick
        shutil.copyfileobj(src, dst)
    before = sha256_file(stick)
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo.size)
    cfg = VMConfig(kernel=None, firmware="bios", mac=mac, timeout=300, workdir=tmp_path / "vm",
                   disks=[Disk(stick, "usb", removable=True), Disk(disk)])
    inventory, result, _ = _provision(cfg, "USB stick, bios")
    assert result["status"] == "ok", result
    assert result["device"] == "/dev/vda"
    disks = {d["name"]: d for d in inventory["disks"]}
    assert sorted(disks) == ["sda", "vda"]
    assert any(r.startswith("boot medium: sda carries an iso9660 file system")
               for r in disks["sda"]["refused"]), disks["sda"]
    assert sha256_file(disk, demo.size) == demo.sha256
    assert sha256_file(stick) == before
