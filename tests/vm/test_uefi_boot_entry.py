"""UEFI boot entries (issue #16, docs/lifecycle.md "UEFI boot entries"), through OVMF with one
persistent variable store (``OVMF_VARS.fd``) shared by every VM of the test, as a machine's
NVRAM is:

1. pyinit, booted by OVMF (QEMU's ``-kernel``: OVMF starts the kernel through its EFI stub, so
   the kernel has /sys/firmware/efi), writes a GPT golden image (ESP with
   ``\\EFI\\BOOT\\BOOTX64.EFI``) and makes its boot entry, then powers off;
2. the next VM, with the same store and disk and no kernel, boots through that entry: OVMF's
   BdsDxe names it on the console before GRUB, the kernel and the target's marker;
3. a second provisioning makes a new entry and removes the first (create, then delete);
4. the host reads the store: one pyinit entry, first in BootOrder; the firmware's own entries
   are all still there; and the firmware starts the new entry (up to GRUB: the target's boot
   was shown in 2).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk
from tests.uefivars import boot_variables
from tests.vm.test_after_write import golden, marker

from .conftest import NEVER, Artifacts, Server

pytestmark = pytest.mark.vm

MAC = "52:54:00:5e:16:06"
LABEL = "pyinit golden.img.zst"


def _provision(artifacts: Artifacts, tmp_path: Path, server: Server, disk: Path,
               nvram: Path, n: int) -> dict[str, Any]:
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd, firmware="uefi",
                   uefi_vars=nvram, mac=MAC, disks=[Disk(disk)], timeout=300,
                   append=f"MYURL={server.guest_url} pyinit.on_failure=poweroff",
                   workdir=tmp_path / f"vm-provision{n}")
    with VM(cfg) as vm:
        made = vm.expect_event(step="bootentry", status="created", timeout=240,
                               fail_on=r"bootentry: FAILED|WARNING: bootentry")
        result = vm.expect_event(step="result", timeout=60)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER, r"WARNING: bootentry")
    assert result["status"] == "ok" and result["boot_entry"] == f"Boot{made['number']}", result
    return dict(made)


def _boot_disk(tmp_path: Path, disk: Path, nvram: Path, n: int, *, target: bool) -> str:
    """The firmware boots the disk by itself: the entry it started, as BdsDxe names it, then
    GRUB (``target``: on to the target's marker; else QEMU is stopped at GRUB)."""
    cfg = VMConfig(kernel=None, firmware="uefi", uefi_vars=nvram, disks=[Disk(disk)],
                   nic_model=None, timeout=300, workdir=tmp_path / f"vm-disk{n}")
    with VM(cfg) as vm:
        loading = vm.expect(r'BdsDxe: loading (Boot[0-9A-F]{4}) "([^"]*)" from (\S+)', timeout=120)
        vm.expect(rf'BdsDxe: starting {loading.group(1)} "', timeout=60)
        vm.expect(r"GNU GRUB|Loading /boot/vmlinuz", timeout=60)
        if target:
            line = marker(vm)
            vm.wait_exit(timeout=60)
            assert "hostname=golden" in line.split(), line
        vm.assert_never(*NEVER)
    assert loading.group(2) == LABEL, loading.group(0)
    return str(loading.group(1))


def test_uefi_boot_entry_is_made_booted_and_replaced(artifacts: Artifacts, server: Server,
                                                     tmp_path: Path) -> None:
    image, manifest = golden(artifacts, tmp_path, table="gpt", firmware="uefi")
    [esp] = [p for p in manifest.partitions if p["role"] == "esp"]
    compressed = image.with_name(manifest.action["image"])
    server.image(compressed.name, compressed)
    server.machine(MAC, {"action": "writeImage", "sourceImage": f"images/{compressed.name}",
                         "destinationDevice": "/dev/vda", "checksum": manifest.action["checksum"],
                         "finish": "poweroff"})
    disk = create_disk(tmp_path / "disk.raw", manifest.virtual_size)
    nvram = tmp_path / "OVMF_VARS.fd"  # the machine's NVRAM, made from OVMF's template

    first = _provision(artifacts, tmp_path, server, disk, nvram, 1)
    assert (first["label"], first["partition"], first["loader"], first["removed"]) == (
        LABEL, esp["number"], "\\EFI\\BOOT\\BOOTX64.EFI", []), first
    assert first["boot_order"][0] == first["number"] and first["after"] is None, first
    assert re.fullmatch(rf"HD\({esp['number']},GPT,{esp['partuuid']},0x[0-9a-f]+,0x[0-9a-f]+\)"
                        r"/File\(\\EFI\\BOOT\\BOOTX64\.EFI\)", first["path"], re.I), first
    stored = boot_variables(nvram)
    assert stored.ours() == {first["number"]: LABEL} and stored.order[0] == first["number"]

    assert _boot_disk(tmp_path, disk, nvram, 1, target=True) == f"Boot{first['number']}"
    firmware_own = {n: label for n, label in boot_variables(nvram).labels.items()
                    if not label.startswith("pyinit ")}
    assert firmware_own, "OVMF added no entries of its own at the disk boot"

    saved = nvram.with_name("OVMF_VARS.after-first.fd")  # kept in tmp_path for a failed run
    shutil.copyfile(nvram, saved)
    second = _provision(artifacts, tmp_path, server, disk, nvram, 2)
    assert second["number"] != first["number"], second
    assert second["removed"] == [f"Boot{first['number']} '{LABEL}'"], second
    assert second["boot_order"][0] == second["number"], second
    stored = boot_variables(nvram)
    assert stored.ours() == {second["number"]: LABEL}, stored  # the stale one is gone
    assert stored.order[0] == second["number"] and first["number"] not in stored.order, stored
    assert {n: stored.labels.get(n) for n in firmware_own} == firmware_own, stored

    assert _boot_disk(tmp_path, disk, nvram, 2, target=False) == f"Boot{second['number']}"
