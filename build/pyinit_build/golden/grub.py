"""GRUB for golden images, installed without root, loop devices or ``grub-install``.

* **BIOS**: ``grub-mkimage -O i386-pc`` builds core.img with every module the boot needs
  (nothing is loaded from disk later), then :func:`install_bios` does what ``grub-bios-setup``
  does on a device, on bytes: boot.img goes into the MBR's code area (the partition table and
  disk signature stay), patched with the LBA of core.img; core.img's first sector (diskboot)
  gets the blocklist of its remaining sectors. ``grub-bios-setup`` itself ships only in Debian's
  ``grub-pc`` package, which takes over the build host's own bootloader, and it wants a device.
  core.img lives in the gap before the first partition (MBR) or in a BIOS boot partition (GPT).
* **UEFI**: ``grub-mkimage -O x86_64-efi`` builds ``BOOTX64.EFI`` for the removable-media
  fallback path ``/EFI/BOOT/`` of the ESP, so no NVRAM boot entry is needed.

Both images carry the same early config: find the root filesystem by UUID, set the prefix there
and run ``normal``, which reads ``/boot/grub/grub.cfg`` from the root filesystem (also on LVM).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit_build.errors import BuildError

SECTOR = 512
GRUB_LIB = Path("/usr/lib/grub")
# Compiled into both images: partition tables, the root filesystems pyinit builds, LVM, and the
# commands grub.cfg uses. Dependencies (crypto, extcmd, ...) follow from moddep.lst.
MODULES = ("part_gpt", "part_msdos", "ext2", "xfs", "lvm", "fat", "search", "search_fs_uuid",
           "normal", "linux", "echo", "configfile", "serial", "terminal", "test", "gzio", "sleep")
BIOS_MODULES = ("biosdisk",)
EFI_MODULES = ("efi_gop",)
#: The Debian package holding each platform's modules under :data:`GRUB_LIB`.
GRUB_PACKAGES = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin"}

# boot.img (grub-core/boot/i386/pc/boot.S) and diskboot.img offsets that grub-bios-setup patches.
_KERNEL_SECTOR = 0x5C  # u64: LBA of core.img's first sector
_BOOT_DRIVE = 0x64  # u8: 0xff = the drive the BIOS booted from
_DRIVE_CHECK = 0x66  # 2-byte jmp replaced by two NOPs on hard disks (buggy-BIOS workaround)
_MBR_CODE_END = 0x1B8  # boot code ends where the NT disk signature starts
_BLOCKLIST = SECTOR - 12  # in core.img's first sector: u64 start, u16 length, u16 segment


@dataclass(frozen=True)
class BootEntry:
    """What grub.cfg boots: paths inside the root filesystem and the kernel command line."""

    root_uuid: str
    kernel: str  # "/boot/vmlinuz-6.1.0-9-amd64", "/vmlinuz"
    initrd: str | None
    cmdline: str
    title: str = "pyinit golden image"
    serial: str | None = "ttyS0,115200"  # mirrors GRUB's menu on this serial port too
    timeout: int = 1
    comment: str = "Written by pyinit image."


def early_config(root_uuid: str) -> str:
    """The config embedded in core.img and BOOTX64.EFI. Pure."""
    return (f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
            "set prefix=($root)/boot/grub\n")


def grub_cfg(entry: BootEntry, *more: BootEntry) -> str:
    """``/boot/grub/grub.cfg``: ``entry`` as the default menu entry, then ``more`` (e.g. the
    previous kernel), shown on the serial console as well. Pure."""
    lines = [f"# {entry.comment}", f"set timeout={entry.timeout}", "set default=0"]
    if entry.serial:
        port, _, speed = entry.serial.partition(",")
        unit = port.removeprefix("ttyS")
        if not unit.isdigit():
            raise BuildError("grub", f"serial console {entry.serial!r}: expected ttyS<N>[,speed]")
        lines += [f"serial --unit={unit} --speed={speed or 115200}",
                  "terminal_input serial console", "terminal_output serial console"]
    for e in (entry, *more):
        lines += [f"menuentry '{e.title}' {{",
                  f"    search --no-floppy --fs-uuid --set=root {e.root_uuid}",
                  f"    echo 'Loading {e.kernel}'",
                  f"    linux {e.kernel} {e.cmdline}".rstrip()]
        if e.initrd:
            lines.append(f"    initrd {e.initrd}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def mkimage(target: str, out: Path, early: Path, *, modules: Sequence[str] = ()) -> None:
    """``grub-mkimage`` for ``i386-pc`` (core.img), ``i386-pc-eltorito`` (a CD's El Torito
    boot image: cdboot.img + core.img) or ``x86_64-efi`` (BOOTX64.EFI), with :data:`MODULES`,
    the platform's own and ``modules``."""
    platform = "x86_64-efi" if target == "x86_64-efi" else "i386-pc"
    extra = BIOS_MODULES if platform == "i386-pc" else EFI_MODULES
    if not (GRUB_LIB / platform).is_dir():
        raise BuildError("grub", f"{GRUB_LIB / platform} missing "
                                 f"(apt install {GRUB_PACKAGES[platform]})")
    proc.run(["grub-mkimage", "-O", target, "-d", str(GRUB_LIB / platform), "-o", str(out),
              "-c", str(early), "-p", "/boot/grub", *MODULES, *extra, *modules])


def install_bios(disk: Path, core_img: bytes, core_lba: int, room_sectors: int, *,
                 boot_img: bytes | None = None) -> None:
    """Write boot.img into ``disk``'s MBR and ``core_img`` at ``core_lba``, patched as
    ``grub-bios-setup`` does. ``room_sectors``: the space reserved for core.img there."""
    boot = boot_img if boot_img is not None else (GRUB_LIB / "i386-pc" / "boot.img").read_bytes()
    mbr, core = patch_bios(read_sector(disk, 0), boot, core_img, core_lba, room_sectors)
    with disk.open("r+b") as f:
        f.seek(core_lba * SECTOR)
        f.write(core)
        f.seek(0)
        f.write(mbr)


def read_sector(path: Path, lba: int) -> bytes:
    with path.open("rb") as f:
        f.seek(lba * SECTOR)
        data = f.read(SECTOR)
    if len(data) != SECTOR:
        raise BuildError("grub", f"{path}: cannot read sector {lba}")
    return data


def patch_bios(mbr: bytes, boot_img: bytes, core_img: bytes, core_lba: int,
               room_sectors: int) -> tuple[bytes, bytes]:
    """(new MBR, patched core.img) for core.img at ``core_lba``. Pure."""
    if len(mbr) != SECTOR or len(boot_img) != SECTOR:
        raise BuildError("grub", "boot.img and the MBR must be one 512-byte sector each")
    sectors = -(-len(core_img) // SECTOR)
    if sectors < 2:
        raise BuildError("grub", f"core.img of {len(core_img)} bytes is too small")
    if sectors > room_sectors:
        raise BuildError("grub", f"core.img needs {sectors} sectors but only {room_sectors} are "
                                 "reserved for it (first partition too close to the start?)")
    new = bytearray(boot_img[:_MBR_CODE_END]) + mbr[_MBR_CODE_END:]
    new[0x03:0x5A] = mbr[0x03:0x5A]  # keep a DOS BPB if the sector had one, as grub-setup does
    struct.pack_into("<Q", new, _KERNEL_SECTOR, core_lba)
    new[_BOOT_DRIVE] = 0xFF
    new[_DRIVE_CHECK:_DRIVE_CHECK + 2] = b"\x90\x90"
    core = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    _, _, segment = struct.unpack_from("<QHH", core, _BLOCKLIST)
    struct.pack_into("<QHH", core, _BLOCKLIST, core_lba + 1, sectors - 1, segment)
    return bytes(new), bytes(core)
