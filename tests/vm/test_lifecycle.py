"""Deploy once (issue #16, docs/lifecycle.md), through QEMU's own iPXE ROM and a real
``pyinit serve``: the first PXE boot provisions a golden image and reboots; the next PXE boot
gets a script that boots the local disk (the target's marker, no kernel or initramfs fetched
from the server); after ``pyinit redeploy`` the next PXE boot provisions again."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit_build.cli import build_parser
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk, guest_url
from tests.serverkit import ObservedServer
from tests.vm.test_after_write import golden, marker

from .conftest import NEVER, Artifacts

pytestmark = pytest.mark.vm

MAC = "52:54:00:9e:16:01"
DASHES = MAC.replace(":", "-")


def test_deploy_once_then_local_disk_then_redeploy(artifacts: Artifacts, tmp_path: Path) -> None:
    image, manifest = golden(artifacts, tmp_path, table="mbr", firmware="bios")
    compressed = image.with_name(manifest.action["image"])
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "images" / compressed.name).symlink_to(compressed)
    (root / "machines" / f"{DASHES}.json").write_text(json.dumps(
        {"action": "writeImage", "sourceImage": f"images/{compressed.name}",
         "checksum": manifest.action["checksum"], "destinationDevice": "/dev/vda",
         "finish": "reboot"}))
    disk = create_disk(tmp_path / "disk.raw", manifest.virtual_size)
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    args = "console=ttyS0,115200 panic=-1 pyinit.on_failure=poweroff"
    with ObservedServer(root, boot_dir=artifacts.kernel.parent, kernel_args=args,
                        symlinks="any") as srv:
        (tftp / "pyinit.ipxe").write_text(f"#!ipxe\nchain {guest_url(srv.url)}/boot.ipxe\n")

        def pxe(n: int) -> VM:
            return VM(VMConfig(kernel=None, mac=MAC, disks=[Disk(disk)], pxe_tftp=tftp,
                               pxe_bootfile="pyinit.ipxe", timeout=400,
                               workdir=tmp_path / f"vm{n}"))

        def lifecycle() -> dict[str, Any]:
            state: dict[str, Any] = requests.get(f"{srv.url}/api/machines/{MAC}",
                                                 timeout=10).json()["lifecycle"]
            return state

        def kernels() -> int:
            return sum(r["path"] == "/boot/vmlinuz" for r in srv.access_log)

        with pxe(1) as vm:  # provisions, then reboots (QEMU exits)
            result = vm.expect_event(step="result", timeout=300)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        assert result["status"] == "ok" and result["handoff"] == "reboot", result
        srv.wait_event(MAC, step="result", timeout=10)
        state = lifecycle()
        assert state["state"] == "deployed" and state["action_sha256"], state
        fetched = kernels()

        with pxe(2) as vm:  # deployed: iPXE boots the local disk, nothing is written
            line = marker(vm)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER, r"provision: wrote", r"BOOTYURL=")
        assert "hostname=golden" in line.split(), line
        assert kernels() == fetched  # no kernel or initramfs fetched for this boot
        assert any(r["path"] == f"/{DASHES}.ipxe" for r in srv.access_log)

        out = io.StringIO()
        cli = build_parser().parse_args(["redeploy", "--server", srv.url, MAC])
        cli.token_file = root / ".pyinit" / "operator-token"
        assert cli.func(cli, out=out) == 0, out.getvalue()
        assert lifecycle()["pending"] == "redeploy"

        with pxe(3) as vm:  # provisions again
            vm.expect(rf"Command line: .*BOOTIF=01-{DASHES}", timeout=180)
            again = vm.expect_event(step="result", timeout=300)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        assert again["status"] == "ok", again
        assert kernels() == fetched + 1
        deadline = time.monotonic() + 10  # the last events may still be on their way
        while (after := lifecycle())["pending"] is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert after["state"] == "deployed" and after["pending"] is None, after
