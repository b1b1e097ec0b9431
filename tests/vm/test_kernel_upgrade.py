"""Kernel upgrades inside a golden image keep booting (issue #15).

A golden image of Debian bookworm (the second-newest cloud kernel) boots its kernel through the
links linux-update-symlinks keeps (grub.cfg: ``linux /vmlinuz``). The newest cloud kernel's
.deb is in the image; the target's own init script, one step per boot (``/etc/pyinit-steps``),
prints one marker line and powers off (a full systemd boot would cost minutes under TCG; the
Debian initramfs has already moved /proc, /sys, /dev and /run into the root):

1. SeaBIOS → GRUB → old kernel: ``dpkg -i`` the new kernel, so Debian's own hooks run
   (linux-update-symlinks, update-initramfs);
2. pyinit provisions a fresh disk from that disk (both kernels on it) with ``finish: kexec``:
   the kernel it loads, and the one the target reports, is the new one;
3. SeaBIOS again: the new kernel runs, and purges the old kernel's package (``dpkg --purge``);
4. OVMF: the new kernel still boots.

The host reads the disk with GRUB's own filesystem code in between (grub.cfg, the links).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pyinit import bzimage
from pyinit_build.golden import build
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk
from tests import debian_root, golden_rootfs
from tests.vm.conftest import NEVER, Artifacts, Server, boot

pytestmark = pytest.mark.vm

MAC = "52:54:00:5e:00:15"
MARKER = "PYINIT-STEP"
# init= of every boot: pops the next step of /etc/pyinit-steps, prints one marker line with the
# running kernel and where the links point, and powers off.
STEP = f"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive
mount -o remount,rw /
read -r step rest < /etc/pyinit-steps
echo "$rest" > /etc/pyinit-steps
links() {{
    echo "vmlinuz=$(readlink /vmlinuz) old=$(readlink /vmlinuz.old) initrd=$(readlink /initrd.img)"
}}
echo "{MARKER} start step=$step kernel=$(uname -r) $(links)"
case "$step" in
upgrade)
    dpkg -i /root/linux-image-*.deb > /root/dpkg.log 2>&1; rc=$?
    tail -n 8 /root/dpkg.log
    echo "{MARKER} upgraded rc=$rc $(links) uptime=$(cut -d' ' -f1 /proc/uptime)" ;;
purge:*)
    dpkg --purge "${{step#purge:}}" > /root/dpkg.log 2>&1; rc=$?
    tail -n 8 /root/dpkg.log
    echo "{MARKER} purged rc=$rc $(links) uptime=$(cut -d' ' -f1 /proc/uptime)" ;;
esac
sync
mount -o remount,ro /
echo o > /proc/sysrq-trigger
while :; do :; done  # builtins only: the disk goes away while the kernel powers off
"""
# Test speed-ups, settings an operator could make too: mkinitramfs takes only the modules this
# (virtual) machine needs and compresses fast, instead of MODULES=most and zstd -9 (minutes, and
# more room than the image has, under TCG).
INITRAMFS_CONF = b"MODULES=dep\nCOMPRESSLEVEL=1\n"


def _member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.size, info.mtime = mode, len(data), golden_rootfs.EPOCH
    tar.addfile(info, io.BytesIO(data))


def _firmware_boot(disk: Path, tmp_path: Path, firmware: str, name: str,
                   want: str, timeout: float = 240) -> list[str]:
    """Boot ``disk`` through ``firmware`` and GRUB; the marker lines of the step it runs."""
    cfg = VMConfig(kernel=None, firmware=firmware,  # type: ignore[arg-type]
                   disks=[Disk(disk)], nic_model=None, timeout=timeout + 60,
                   workdir=tmp_path / f"vm-{name}")
    with VM(cfg) as vm:
        vm.expect(r"Loading /vmlinuz\b", timeout=120)  # grub.cfg names the link
        vm.expect(want, timeout=timeout)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
        return [line for line in vm.lines if MARKER in line]


def _grub(disk: Path, *args: str) -> bytes:
    """``grub-fstest`` on the disk: GRUB's own filesystem code, as at boot."""
    done = subprocess.run(["grub-fstest", str(disk), *args], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kernel_upgrade_inside_the_target_keeps_booting(
        artifacts: Artifacts, tmp_path: Path, server: Server,
        debian_bookworm: debian_root.DebianRoot) -> None:
    started = time.monotonic()
    phases: list[tuple[str, float]] = []

    def phase(name: str) -> None:
        phases.append((name, time.monotonic() - started - sum(t for _, t in phases)))

    old = debian_root.DebianRoot.release(debian_bookworm.old_kernel)
    new = debian_root.DebianRoot.release(debian_bookworm.new_kernel)
    tarball = tmp_path / "bookworm.tar"
    shutil.copyfile(debian_bookworm.tarball, tarball)
    with tarfile.open(tarball, "a") as tar:  # /sbin is merged-/usr's link to usr/sbin
        _member(tar, "./usr/sbin/pyinit-step", STEP.encode(), 0o755)
        _member(tar, "./etc/pyinit-steps",
                f"upgrade purge:{debian_bookworm.old_kernel} report\n".encode())
        _member(tar, "./etc/initramfs-tools/conf.d/pyinit-test.conf", INITRAMFS_CONF)
        _member(tar, f"./root/{debian_bookworm.new_deb.name}",
                debian_bookworm.new_deb.read_bytes())
    lines: list[str] = []
    spec = build.ImageSpec(rootfs=tarball, output=tmp_path / "debian.img", table="gpt",
                           firmware="both", hostname="upgrade", compress="none",
                           headroom=256 * build.MIB,
                           cmdline="init=/usr/sbin/pyinit-step panic=-1")
    manifest = build.build_image(spec, progress=lines.append)
    disk = spec.output
    assert manifest.kernel["release"] == old
    assert manifest.kernel["boot"] == "stable-links", lines
    assert f"image: kernel boot: stable-links (/vmlinuz -> /boot/vmlinuz-{old}, kept current " \
           "by linux-update-symlinks; previous kernel through /vmlinuz.old)" in lines
    root = f"(loop0,gpt{manifest.root['partition']})"  # grub-fstest names its disk loop0
    cfg = _grub(disk, "cat", f"{root}/boot/grub/grub.cfg").decode()
    assert "    linux /vmlinuz root=UUID=" in cfg and "    initrd /initrd.img\n" in cfg
    assert "    linux /vmlinuz.old root=UUID=" in cfg
    phase("build")

    # 1. the old kernel installs the new one with Debian's own tools
    marks = _firmware_boot(disk, tmp_path, "bios", "upgrade", rf"{MARKER} upgraded rc=\d+.*",
                           timeout=420)
    assert f"{MARKER} start step=upgrade kernel={old} vmlinuz=boot/vmlinuz-{old}" in marks[0]
    assert f"{MARKER} upgraded rc=0 vmlinuz=boot/vmlinuz-{new} old=boot/vmlinuz-{old} " \
           f"initrd=boot/initrd.img-{new} uptime=" in marks[-1], marks
    # what GRUB reads through the link now: the new kernel; grub.cfg is untouched
    assert bzimage.image_release(_grub(disk, "cat", f"{root}/vmlinuz")) == new
    assert bzimage.image_release(_grub(disk, "cat", f"{root}/vmlinuz.old")) == old
    assert _grub(disk, "cat", f"{root}/boot/grub/grub.cfg").decode() == cfg
    phase("upgrade boot")

    # 2. pyinit writes that disk (both kernels on it) to a fresh one and kexecs the new kernel
    served = tmp_path / "upgraded.img.zst"
    build.compress_file(disk, served, "zstd", 3)
    server.image(served.name, served)
    server.machine(MAC, {"action": "writeImage", "sourceImage": f"images/{served.name}",
                         "destinationDevice": "/dev/vda", "finish": "kexec"})
    target = create_disk(tmp_path / "target.raw", manifest.virtual_size)
    with boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=MAC, disks=[target],
              timeout=420) as vm:
        vm.expect(rf"handoff: kernel {new}: /vmlinuz -> /boot/vmlinuz-{new}, "
                  rf"/initrd.img -> /boot/initrd.img-{new}$", timeout=360)
        result = vm.expect_event(step="result", timeout=60)
        line = vm.expect(rf"{MARKER} start step=\S+ kernel=\S+", timeout=180).group(0)
        vm.assert_never(*NEVER)  # (the target goes on to purge the old kernel on its copy)
    assert result["status"] == "ok" and result["handoff"] == "kexec", result
    assert result["kexec"] == f"/boot/vmlinuz-{new}", result  # the file, not the link
    assert line == f"{MARKER} start step=purge:{debian_bookworm.old_kernel} kernel={new}", line
    phase("pyinit kexec")

    # 3. the firmware boots the new kernel, which purges the old one
    marks = _firmware_boot(disk, tmp_path, "bios", "purge", rf"{MARKER} purged rc=\d+.*")
    assert marks[0].endswith(f"{MARKER} start step=purge:{debian_bookworm.old_kernel} "
                             f"kernel={new} vmlinuz=boot/vmlinuz-{new} old=boot/vmlinuz-{old} "
                             f"initrd=boot/initrd.img-{new}"), marks
    assert f"{MARKER} purged rc=0 vmlinuz=boot/vmlinuz-{new} old=boot/vmlinuz-{new} " \
           f"initrd=boot/initrd.img-{new} uptime=" in marks[-1], marks
    boot_dir = _grub(disk, "ls", f"{root}/boot/").decode().split()
    assert f"vmlinuz-{new}" in boot_dir and f"vmlinuz-{old}" not in boot_dir, boot_dir
    phase("purge boot")

    # 4. with the old kernel gone, the machine still boots: the new kernel, through OVMF
    marks = _firmware_boot(disk, tmp_path, "uefi", "after-purge",
                           rf"{MARKER} start step=report.*")
    assert f"{MARKER} start step=report kernel={new} vmlinuz=boot/vmlinuz-{new} " in marks[0], \
        marks
    phase("OVMF boot after purge")
    print("kernel-upgrade timings: " + ", ".join(f"{n} {t:.0f} s" for n, t in phases)
          + f"; total {time.monotonic() - started:.0f} s")
