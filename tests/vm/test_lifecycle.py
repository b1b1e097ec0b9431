"""Deploy once and the first boot (issue #16, docs/lifecycle.md), through QEMU's own iPXE ROM
and a real ``pyinit serve``: the first PXE boot provisions the busybox golden image and reboots;
the next PXE boot gets a script that boots the local disk (no kernel or initramfs fetched from
the server), where the image's own init runs its busybox-style rcS: the network pyinit wrote
comes up with busybox's ifup and pyinit's one-shot (``/etc/init.d/S99pyinit-firstboot``) posts
the first-boot confirmation with busybox's wget, so the server says ``booted``, then removes
itself (the host reads the disk to see it gone); the disk's second boot posts nothing and,
being ``booted``, is still a local boot; after ``pyinit redeploy`` the next PXE boot provisions
again."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit_build.cli import build_parser
from pyinit_qemu.vm import VM, Disk, create_disk, guest_url
from tests.serverkit import ObservedServer
from tests.vm.test_after_write import golden, marker

from .conftest import NEVER, Artifacts
from .pxe import pxe_vm, server_root, tftp_dir

pytestmark = pytest.mark.vm

MAC = "52:54:00:9e:16:01"
DASHES = MAC.replace(":", "-")
# The image's kernel command line: pyinit's ginit mode mounts the root and makes the image's
# /sbin/init PID 1 (switch_root), so its rcS runs as on a busybox system.
CMDLINE = "entrypoint=/sbin/init pyinit.exec=1 pyinit.on_failure=poweroff"
ONE_SHOT = "usr/local/sbin/pyinit-firstboot"
# The test's own start-up script, after pyinit's S99pyinit-firstboot: wait (bounded) for the
# one-shot, which runs in the background and removes itself once it told the server, then say
# so; the init then prints the marker and powers off.
WAIT = f"""#!/bin/sh
[ "$1" = stop ] && exit 0
i=0
while [ -e /{ONE_SHOT} ] && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
echo "PYINIT-FIRSTBOOT gone=$([ -e /{ONE_SHOT} ] && echo no || echo yes) waited=$i"
"""


def grub_ls(disk: Path, part: int, path: str) -> list[str]:
    """The names in ``path`` of the filesystem of partition ``part`` (MBR), read by GRUB's own
    driver on the host (no mount)."""
    done = subprocess.run(["grub-fstest", str(disk), "ls", f"(loop0,msdos{part}){path}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_deploy_once_first_boot_then_local_disk_then_redeploy(artifacts: Artifacts,
                                                               tmp_path: Path) -> None:
    image, manifest = golden(artifacts, tmp_path, table="mbr", firmware="bios", cmdline=CMDLINE,
                             extra={"etc/init.d/S99zz-test-wait": (0o755, WAIT)})
    part = manifest.root["partition"]
    compressed = image.with_name(manifest.action["image"])
    root = server_root(tmp_path, compressed, f"{DASHES}.json", json.dumps(
        {"action": "writeImage", "sourceImage": f"images/{compressed.name}",
         "checksum": manifest.action["checksum"], "destinationDevice": "/dev/vda",
         "finish": "reboot", "hostname": "rack1-node01", "address": "10.0.2.15/24",
         "gateway": "10.0.2.2"}))
    disk = create_disk(tmp_path / "disk.raw", manifest.virtual_size)
    args = "console=ttyS0,115200 panic=-1 pyinit.on_failure=poweroff"
    with ObservedServer(root, boot_dir=artifacts.kernel.parent, kernel_args=args,
                        symlinks="any") as srv:
        tftp = tftp_dir(tmp_path, srv.url)

        def pxe(n: int) -> VM:
            return pxe_vm(tftp, MAC, [Disk(disk)], tmp_path / f"vm{n}")

        def lifecycle() -> dict[str, Any]:
            state: dict[str, Any] = requests.get(f"{srv.url}/api/machines/{MAC}",
                                                 timeout=10).json()["lifecycle"]
            return state

        def kernels() -> int:
            return sum(r["path"] == "/boot/vmlinuz" for r in srv.access_log)

        with pxe(1) as vm:  # provisions, then reboots (QEMU exits)
            vm.expect(r"configure: first-boot confirmation: rcS; the target will post to "
                      rf"http://10\.0\.2\.2:\d+/events/{DASHES} once it is up", timeout=300)
            result = vm.expect_event(step="result", timeout=300)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        assert result["status"] == "ok" and result["handoff"] == "reboot", result
        srv.wait_event(MAC, step="result", timeout=10)
        state = lifecycle()
        assert state["state"] == "deployed" and state["action_sha256"], state
        fetched = kernels()
        assert "pyinit-firstboot" in grub_ls(disk, part, "/usr/local/sbin/")
        assert "S99pyinit-firstboot" in grub_ls(disk, part, "/etc/init.d/")

        with pxe(2) as vm:  # deployed: iPXE boots the local disk, nothing is written
            vm.expect(r"PYINIT-TARGET-INIT pid=1$", timeout=180)  # the image's init, PID 1
            told = vm.expect(r"pyinit-firstboot: told (\S+) that this machine booted",
                             timeout=120)
            gone = vm.expect(r"PYINIT-FIRSTBOOT gone=(\w+) waited=\d+", timeout=150)
            line = marker(vm)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER, r"provision: wrote", r"BOOTYURL=", r"ifup: ",
                            r"pyinit-firstboot: (?:\d+ tries|no curl)")
        assert "hostname=rack1-node01" in line.split() and "net=pyinit" in line.split(), line
        assert told.group(1) == f"{guest_url(srv.url)}/events/{DASHES}" and gone.group(1) == "yes"
        assert kernels() == fetched  # no kernel or initramfs fetched for this boot
        assert any(r["path"] == f"/{DASHES}.ipxe" for r in srv.access_log)
        [first] = [e for e in srv.events(MAC) if e.get("step") == "firstboot"]
        assert (first["status"], first["hostname"]) == ("booted", "rack1-node01"), first
        assert first["kernel"] == manifest.kernel["release"] and first["uptime"] > 0, first
        state = lifecycle()
        assert (state["state"], state["previous"]) == ("booted", "deployed"), state
        assert state["evidence"] == ("first boot confirmed by the target (kernel "
                                     f"{manifest.kernel['release']})")
        # the one-shot removed itself, its rcS script too: nothing left to post again
        assert "pyinit-firstboot" not in grub_ls(disk, part, "/usr/local/sbin/")
        assert "S99pyinit-firstboot" not in grub_ls(disk, part, "/etc/init.d/")

        with pxe(3) as vm:  # booted: still the local disk; its second boot posts nothing
            vm.expect(r"PYINIT-FIRSTBOOT gone=yes waited=0$", timeout=180)
            marker(vm)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER, r"pyinit-firstboot", r"BOOTYURL=", r"ifup: ")
        assert kernels() == fetched
        assert [e for e in srv.events(MAC) if e.get("step") == "firstboot"] == [first]
        assert lifecycle() == state

        out = io.StringIO()
        cli = build_parser().parse_args(["redeploy", "--server", srv.url, MAC])
        cli.token_file = root / ".pyinit" / "operator-token"
        assert cli.func(cli, out=out) == 0, out.getvalue()
        assert lifecycle()["pending"] == "redeploy"

        with pxe(4) as vm:  # provisions again
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
