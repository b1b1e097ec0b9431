"""A throwaway busybox initramfs (not pyinit's): the harness's own VM tests and the boot
benchmark's baseline (busybox + udhcpc on the same kernel) build theirs with it.

The modules come from the kernel package the build caches (``$PYINIT_MODULES``, or
``<prefix>/lib/modules/<version>`` beside ``<prefix>/boot/vmlinuz-<version>``, or the single
version beside ``out/vmlinuz``); a module the kernel has built in is not needed.
"""

from __future__ import annotations

import lzma
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from pyinit import elf
from pyinit_build import cpio

# In dependency order: what a QEMU machine needs for its virtio NIC and disk.
NET_BLK_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
                   "virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk")

INIT_HEADER = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
"""


class Missing(LookupError):
    """Something the busybox initramfs needs is not on this host (the message says what)."""


def build(path: Path, init: str, busybox: Path, modules: Iterable[Path] = (),
          files: Iterable[tuple[str, str, int]] = ()) -> Path:
    """A newc cpio (uncompressed, pyinit_build's writer): /init, /bin/busybox, /dev/console,
    /lib/modules/*.ko, an empty /tmp and ``files`` (path, text, mode)."""
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "lib",
                                                  "lib/modules")]
    entries += [cpio.chardev("dev/console", 5, 1), cpio.file("init", init.encode(), 0o755),
                cpio.file("bin/busybox", busybox.read_bytes(), 0o755)]
    entries += [cpio.file(name, text.encode(), mode) for name, text, mode in files]
    for ko in modules:
        data = ko.read_bytes()
        if ko.name.endswith(".xz"):
            data = lzma.decompress(data)
        entries.append(cpio.file(f"lib/modules/{module_name(ko)}.ko", data))
    path.write_bytes(cpio.pack(entries, epoch=0))
    return path


def module_name(ko: Path) -> str:
    return ko.name.split(".ko")[0]


def static_busybox() -> Path:
    """``$PYINIT_BUSYBOX`` or ``busybox`` on PATH, statically linked (busybox-static)."""
    found = os.environ.get("PYINIT_BUSYBOX") or shutil.which("busybox")
    if not found:
        raise Missing("needs a static busybox ($PYINIT_BUSYBOX or busybox-static on PATH)")
    info = elf.read_info(Path(found))
    if info is None or info.interp is not None:
        raise Missing(f"{found} is not a static busybox (Debian: apt-get install busybox-static)")
    return Path(found)


def modules_dir(kernel: Path) -> Path | None:
    env = os.environ.get("PYINIT_MODULES")
    if env:
        return Path(env)
    version = kernel.name.removeprefix("vmlinuz-")
    candidates = [kernel.parent.parent / "lib" / "modules" / version]
    if version == kernel.name:  # out/vmlinuz: any single version beside it
        candidates += sorted((kernel.parent / "lib" / "modules").glob("*"))
    return next((c for c in candidates if (c / "kernel").is_dir()), None)


def find_modules(kernel: Path, names: Iterable[str]) -> list[Path]:
    """The ``.ko`` files of ``names`` in order, those built into the kernel left out."""
    moddir = modules_dir(kernel)
    if moddir is None:
        raise Missing(f"needs the modules of {kernel} ($PYINIT_MODULES or "
                      "<prefix>/lib/modules/<version>)")
    index = {module_name(p): p for p in moddir.rglob("*.ko*")}
    builtin_file = moddir / "modules.builtin"
    builtin = builtin_file.read_text() if builtin_file.exists() else ""
    found = []
    for name in names:
        if name in index:
            found.append(index[name])
        elif f"/{name}.ko" not in builtin:
            raise Missing(f"module {name} neither in {moddir} nor built in")
    return found
