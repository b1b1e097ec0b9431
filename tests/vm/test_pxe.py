"""A real network boot, no ``-kernel`` shortcut: QEMU's own iPXE ROM gets a DHCP lease and a boot
file from slirp, fetches it over TFTP, chains to ``pyinit serve``'s ``/boot.ipxe`` over HTTP,
which chains to the machine's ``/{mac}.ipxe``: iPXE downloads the kernel and the initramfs over
HTTP and boots them, and pyinit provisions the disk from the same server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import Disk, create_disk
from tests.serverkit import ObservedServer

from .conftest import NEVER, Artifacts
from .pxe import pxe_vm, server_root, tftp_dir

pytestmark = pytest.mark.vm

MAC = "52:54:00:9e:00:01"


def test_ipxe_from_slirp_tftp_chains_to_the_server_and_provisions(
        artifacts: Artifacts, demo_image: DemoImage, tmp_path: Path) -> None:
    root = server_root(tmp_path, demo_image.gz, "52-54-00-9e-00-01.yaml",
                       "# a machine file in YAML, as operators write them\n"
                       "action: writeImage\n"
                       f"sourceImage: images/{demo_image.gz.name}\n"
                       f"checksum: sha256:{demo_image.gz_sha256}\n"
                       "destinationDevice: /dev/vda\n"
                       "finish: poweroff\n")
    disk = create_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    args = "console=ttyS0,115200 panic=-1 pyinit.on_failure=poweroff"
    # the secure defaults (the iPXE script carries the machine's own token), but for the
    # image, which is a link to the one built under out/
    with ObservedServer(root, boot_dir=artifacts.kernel.parent, kernel_args=args,
                            symlinks="any") as srv:
        with pxe_vm(tftp_dir(tmp_path, srv.url), MAC, [Disk(disk)], tmp_path / "vm") as vm:
            # iPXE itself prints only on the (absent) display; the kernel shows the command
            # line the server's per-MAC script gave it.
            vm.expect(r"Command line: .*BOOTYURL=http://10\.0\.2\.2:\d+ "
                      r"BOOTIF=01-52-54-00-9e-00-01", timeout=180)
            result = vm.expect_event(step="result", timeout=300)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        paths = [r["path"] for r in srv.access_log if r["method"] == "GET"]
        # the machine's events were taken with the token its iPXE script carried
        assert srv.wait_event(MAC, step="result", timeout=10)["status"] == "ok"
        posts = {r["status"] for r in srv.access_log if r["method"] == "POST"}
        assert posts == {204}, posts
    assert result["status"] == "ok", result
    # iPXE went through the server: the chain script, this machine's script, kernel, initramfs
    for wanted in ("/boot.ipxe", "/52-54-00-9e-00-01.ipxe", "/boot/vmlinuz",
                   "/boot/initramfs.cpio.zst", "/52-54-00-9e-00-01.bty"):
        assert wanted in paths, (wanted, paths)
    assert result["checksum_verified"] == "sha256"
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    assert result["mac"] == MAC
