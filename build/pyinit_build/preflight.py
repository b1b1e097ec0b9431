"""Check the host tools a build needs before doing any work, and name every missing one."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterable

from pyinit.proc import SAFE_PATH
from pyinit_build.errors import PreflightError

# tool -> Debian package providing it ("python:<module>": the PyPI distribution, checked with
# importlib in the running interpreter).
PACKAGES: dict[str, str] = {
    "apt-cache": "apt",
    "apt-get": "apt",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "debugfs": "e2fsprogs",
    "depmod": "kmod",
    "dnsmasq": "dnsmasq-base",
    "dpkg-deb": "dpkg",
    "efibootmgr": "efibootmgr",
    "faketime": "faketime",
    "grub-mkimage": "grub-common",
    "ip": "iproute2",
    "lvm": "lvm2",
    "mcopy": "mtools",
    "mke2fs": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.fat": "dosfstools",
    "mkfs.xfs": "xfsprogs",
    "mmd": "mtools",
    "mmdebstrap": "mmdebstrap",
    "objcopy": "binutils",
    "objdump": "binutils",
    "qemu-img": "qemu-utils",
    "resize2fs": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
    "sfdisk": "fdisk",
    "ssh-keygen": "openssh-client",
    "xfs_db": "xfsprogs",
    "xfs_growfs": "xfsprogs",
    "xorriso": "xorriso",
    "strip": "binutils",
    "zstd": "zstd",
    "python:PyInstaller": "pyinstaller",
}

# What `pyinit initramfs` runs, or copies into the initramfs (lvm, resize2fs, xfs_growfs,
# ssh-keygen, efibootmgr: data/binaries.txt).
BUILD_TOOLS: tuple[str, ...] = ("busybox", "depmod", "dpkg-deb", "strip", "objcopy", "lvm",
                                "resize2fs", "xfs_growfs", "ssh-keygen", "efibootmgr",
                                "python:PyInstaller")
# Needed only to fetch the kernel package (not with --kernel-deb).
KERNEL_FETCH_TOOLS: tuple[str, ...] = ("apt-cache", "apt-get")
# What `pyinit iso` runs: GRUB's images, the El Torito EFI image (FAT), the ISO itself. The GRUB
# platform files (grub-pc-bin, grub-efi-amd64-bin) are checked by pyinit_build.iso.
ISO_TOOLS: tuple[str, ...] = ("grub-mkimage", "mkfs.fat", "mmd", "mcopy", "xorriso")


def _present(tool: str, path: str) -> bool:
    if tool.startswith("python:"):
        return importlib.util.find_spec(tool.split(":", 1)[1]) is not None
    return shutil.which(tool, path=path) is not None


def install_hint(tool: str) -> str:
    """``apt install kmod`` for ``depmod``, ``pip install pyinstaller`` for ``python:PyInstaller``.
    """
    package = PACKAGES.get(tool)
    if tool.startswith("python:"):
        return f"pip install {package or tool.split(':', 1)[1]}"
    return f"apt install {package}" if package else "no known package"


def missing(tools: Iterable[str], *, path: str | None = None) -> list[tuple[str, str]]:
    """(tool, install hint) for every tool not found on ``path`` (PATH plus the sbin dirs)."""
    search = path if path is not None else f"{os.environ.get('PATH', '')}:{SAFE_PATH}"
    return [(tool.split(":", 1)[-1], install_hint(tool))
            for tool in dict.fromkeys(tools) if not _present(tool, search)]


def check(tools: Iterable[str], *, path: str | None = None) -> None:
    """Raise one :class:`PreflightError` naming every missing tool and its package."""
    absent = missing(tools, path=path)
    if absent:
        raise PreflightError(absent)
