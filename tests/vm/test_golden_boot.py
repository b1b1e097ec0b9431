"""Golden images built by `pyinit image` boot in QEMU through real firmware and GRUB.

Each image gets the Debian kernel and pyinit's own initramfs (ginit mode: ``root=`` plus
``entrypoint=/sbin/marker``); SeaBIOS or OVMF → GRUB (from the image) → kernel → initramfs →
the target's root filesystem → the marker the target's own /sbin/marker prints. No ``-kernel``.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from pyinit_build.golden import build
from pyinit_qemu.vm import VM, Disk, VMConfig
from tests import debian_root, golden_rootfs
from tests.vm.conftest import NEVER, Artifacts

pytestmark = pytest.mark.vm

CMDLINE = "entrypoint=/sbin/marker pyinit.on_failure=poweroff"


def _image(artifacts: Artifacts, tmp_path: Path, rootfs: Path, name: str,
           **options: object) -> tuple[Path, build.Manifest]:
    spec = build.ImageSpec(rootfs=rootfs, output=tmp_path / name, kernel=artifacts.kernel,
                           initrds=(artifacts.archive,), cmdline=CMDLINE, hostname="golden",
                           compress="none", headroom=32 * build.MIB,
                           **options)  # type: ignore[arg-type]
    manifest = build.build_image(spec)
    return spec.output, manifest


def _boot(image: Path, tmp_path: Path, firmware: str, want: str) -> str:
    cfg = VMConfig(kernel=None, firmware=firmware,  # type: ignore[arg-type]
                   disks=[Disk(image)], nic_model=None, timeout=300,
                   workdir=tmp_path / f"vm-{firmware}")
    with VM(cfg) as vm:
        vm.expect(r"GNU GRUB|Loading /boot/vmlinuz", timeout=120)
        line = vm.expect(golden_rootfs.MARKER + r".*", timeout=180).group(0)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    missing = [token for token in want.split() if token not in line.split()]
    assert not missing, f"{missing} not in {line!r}"
    return line


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return golden_rootfs.busybox_dir(tmp_path_factory.mktemp("rootfs") / "busybox")


def test_gpt_image_boots_through_seabios_and_ovmf(artifacts: Artifacts, tmp_path: Path,
                                                  busybox: Path) -> None:
    image, manifest = _image(artifacts, tmp_path, busybox, "gpt.img", table="gpt",
                             firmware="both")
    assert [p["role"] for p in manifest.partitions] == ["bios", "esp", "root"]
    want = "hostname=golden rootfs=ext4 layer=base gone=absent fstab=2"
    _boot(image, tmp_path, "bios", want)
    _boot(image, tmp_path, "uefi", want)


def test_mbr_image_boots_through_seabios(artifacts: Artifacts, tmp_path: Path,
                                         busybox: Path) -> None:
    image, manifest = _image(artifacts, tmp_path, busybox, "mbr.img", table="mbr",
                             firmware="bios")
    assert manifest.table == "mbr" and [p["role"] for p in manifest.partitions] == ["root"]
    _boot(image, tmp_path, "bios", "hostname=golden rootfs=ext4 layer=base fstab=1")


def test_container_tarball_on_xfs_and_mbr_boots_through_seabios_and_ovmf(
        artifacts: Artifacts, tmp_path: Path) -> None:
    tarball = golden_rootfs.container_tarball(tmp_path / "export.tar")
    image, manifest = _image(artifacts, tmp_path, tarball, "xfs.img", filesystem="xfs",
                             table="mbr", firmware="both")
    assert manifest.root["fs"] == "xfs"
    assert [(p["role"], p["type"]) for p in manifest.partitions] == [("esp", "ef"),
                                                                      ("root", "83")]
    _boot(image, tmp_path, "bios", "hostname=golden rootfs=xfs layer=base")
    _boot(image, tmp_path, "uefi", "hostname=golden rootfs=xfs layer=base")


def test_oci_image_on_lvm_boots_through_ovmf(artifacts: Artifacts, tmp_path: Path) -> None:
    layout_dir = golden_rootfs.oci_layout(tmp_path / "oci")
    image, manifest = _image(artifacts, tmp_path, layout_dir, "lvm.img", lvm="vg0/root",
                             firmware="both", table="gpt")
    assert manifest.root["device"] == "/dev/mapper/vg0-root"
    # The upper layer's whiteout removed /etc/gone and replaced /etc/layer.
    _boot(image, tmp_path, "uefi", "hostname=golden rootfs=ext4 layer=upper gone=absent")


DEBIAN_MARKER = f"""#!/bin/sh
root_fs=$(awk '$2 == "/" {{print $3}}' /proc/self/mounts | tail -n 1)
echo "{golden_rootfs.MARKER} hostname=$(cat /etc/hostname) rootfs=$root_fs kernel=$(uname -r)"
echo o > /proc/sysrq-trigger
sleep 60
"""


def test_debian_bootstrap_boots_with_its_own_kernel_and_initramfs(
        tmp_path: Path, debian_bookworm: debian_root.DebianRoot) -> None:
    """The slow path: ``debian:bookworm`` (mmdebstrap from the host's apt sources, with a cloud
    kernel and initramfs-tools) — Debian's own kernel and initramfs-tools find the root
    filesystem by UUID; the marker runs as init."""
    tarball = tmp_path / "bookworm.tar"
    shutil.copyfile(debian_bookworm.tarball, tarball)
    with tarfile.open(tarball, "a") as tar:  # /sbin is merged-/usr's link to usr/sbin
        info = tarfile.TarInfo("./sbin/pyinit-marker")
        info.mode, info.size, info.mtime = 0o755, len(DEBIAN_MARKER), golden_rootfs.EPOCH
        tar.addfile(info, io.BytesIO(DEBIAN_MARKER.encode()))
    spec = build.ImageSpec(rootfs=tarball, output=tmp_path / "debian.img", table="gpt",
                           firmware="both", hostname="debian-golden", compress="none",
                           headroom=64 * build.MIB, cmdline="init=/sbin/pyinit-marker")
    manifest = build.build_image(spec)
    assert manifest.kernel["release"].endswith("-cloud-amd64")
    assert manifest.kernel["initrd"] == f"/boot/initrd.img-{manifest.kernel['release']}"
    for firmware in ("bios", "uefi"):
        _boot(spec.output, tmp_path, firmware,
              f"hostname=debian-golden rootfs=ext4 kernel={manifest.kernel['release']}")
