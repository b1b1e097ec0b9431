"""A kernel to boot, as a boot configuration names it. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootEntry:
    """A kernel to boot: paths as the boot configuration names them (inside the target root,
    e.g. ``/boot/vmlinuz-6.1.0-9-amd64``; :func:`find_boot_entry` rewrites them to the path
    that exists in the mounted root), and the kernel command line."""

    kernel: str
    initrds: tuple[str, ...] = ()
    cmdline: str = ""
    title: str = ""
    source: str = ""  # "/boot/grub/grub.cfg", "/boot/loader/entries/x.conf", "/boot/vmlinuz"
    menu_path: str = ""  # GRUB: "0", "1>0"; BLS: the entry's file stem
    default: bool = False  # GRUB: the entry ``set default=`` selects
    notes: tuple[str, ...] = ()  # what the parser had to guess or drop

    def describe(self) -> str:
        initrds = " + ".join(self.initrds) or "no initrd"
        return f"{self.kernel} ({initrds}) from {self.source}: {self.cmdline}"
