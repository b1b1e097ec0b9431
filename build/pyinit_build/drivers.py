"""Which kernel modules and firmware files the initramfs carries: ``listed``, ``broad``, ``host``.

- ``listed`` (default): ``data/modules.txt`` and its modules.dep closure, nothing else.
- ``broad``: the listed modules plus every module under the storage and NIC trees of
  :data:`BROAD_TREES`, staged *coldplug only*: they are not written to ``/etc/pyinit/modules``, so
  the boot loads one only when a device's modalias matches it (``pyinit.coldplug``); the image is
  bigger, the boot is not slower on hardware that does not match.
- ``host`` (like ``dracut --hostonly``): the listed modules that are not device drivers
  (filesystems, crc32c, nls), plus the drivers, among the listed and the broad trees, whose
  aliases match a modalias under the build host's sysfs. Limiting the candidates to those trees
  keeps a workstation's GPU, sound and Wi-Fi drivers (and their firmware) out of a provisioning
  image, as dracut only adds the drivers its modules ask for.

Firmware: every staged module's ``.modinfo`` section names the files ``request_firmware`` may ask
for; :func:`find_firmware` looks them up in the firmware directories the way the kernel's direct
loader does (plain name first, then the compressed suffixes the kernel was built to read).

The selection functions are pure (paths, aliases and bytes in, names out) and unit-tested; the
ELF section reader is written by hand because ``elf.py`` reads program headers only and a
``.ko`` is a relocatable object whose ``.modinfo`` is found through the section headers.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from pyinit import elf, kmod

MODES = ("broad", "listed", "host")
DEFAULT_MODE = "broad"

# Module paths (relative to lib/modules/<release>) of the broad driver set. A prefix ending in
# "/" is a directory tree; otherwise it names one module file (any compression suffix).
# Left out on purpose: drivers/net/wireless (32 MB, firmware-heavy, no use for provisioning),
# drivers/md (md RAID needs mdadm assembly pyinit does not do; dm_mod is listed @on-demand),
# drivers/nvme/target and drivers/block/{nbd,rbd,drbd,zram,...} (software, not hardware).
BROAD_TREES: tuple[str, ...] = (
    # NICs: PCI Ethernet, their PHY and MDIO drivers (loaded by modalias, mdio:...), USB NICs
    # (provisioning small machines through a dongle), and the paravirtual ones.
    "kernel/drivers/net/ethernet/",
    "kernel/drivers/net/phy/",
    "kernel/drivers/net/mdio/",
    "kernel/drivers/net/usb/",
    "kernel/drivers/net/vmxnet3/",
    "kernel/drivers/net/hyperv/",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/xen-netfront.ko",
    # Storage: NVMe (host side), SCSI (sd_mod, sr_mod, SAS/RAID HBAs, virtio-scsi), SATA/PATA,
    # older LSI Fusion HBAs, paravirtual block devices, Micron PCIe SSDs, USB sticks (and the
    # host controllers they sit behind), eMMC/SD, and Intel VMD (NVMe behind VMD on servers).
    "kernel/drivers/nvme/host/",
    "kernel/drivers/scsi/",
    "kernel/drivers/ata/",
    "kernel/drivers/message/fusion/",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/block/xen-blkfront.ko",
    "kernel/drivers/block/mtip32xx/",
    "kernel/drivers/usb/storage/",
    "kernel/drivers/usb/host/",
    "kernel/drivers/mmc/",
    "kernel/drivers/pci/controller/vmd.ko",
    "kernel/drivers/virtio/",
)

FIRMWARE_ROOT = "lib/firmware"  # inside the initramfs: the kernel's default firmware path


class ModinfoError(ValueError):
    """A module file whose ``.modinfo`` section cannot be read (not ELF64 LE, truncated)."""


# --- selection (pure) -----------------------------------------------------------------------------

def tree_modules(module_paths: Iterable[str], prefixes: Sequence[str] = BROAD_TREES) -> list[str]:
    """The module paths (as in ``modules.dep``) under ``prefixes``, in input order."""
    dirs = tuple(p for p in prefixes if p.endswith("/"))
    files = {kmod.module_name(p): p.rsplit("/", 1)[0] + "/" for p in prefixes
             if not p.endswith("/")}
    out: list[str] = []
    for path in module_paths:
        if path.startswith(dirs):
            out.append(path)
        else:
            parent = files.get(kmod.module_name(path))
            if parent is not None and path.startswith(parent) and "/" not in path[len(parent):]:
                out.append(path)
    return out


def host_modules(modaliases: Iterable[str], table: kmod.AliasTable,
                 candidates: Collection[str] | None = None) -> list[str]:
    """The modules whose aliases match ``modaliases`` (``pyinit.kmod.match_aliases``, the same
    matcher the boot uses), restricted to ``candidates`` (module names) when given."""
    allowed = None if candidates is None else {kmod.module_name(c) for c in candidates}
    return [m for m in kmod.match_aliases(modaliases, table) if allowed is None or m in allowed]


def host_list(listed: kmod.ModuleList, drivers: Collection[str],
              matched: Sequence[str]) -> kmod.ModuleList:
    """The host-only module list: ``listed`` without its device drivers (``drivers``, the
    modules with a bus alias), then the ``matched`` drivers, optional (a device may be gone)."""
    keep = [n for n in listed.names if n not in drivers]
    names = [*keep, *(m for m in matched if m not in keep)]
    optional = {n for n in keep if n in listed.optional} | set(matched)
    return kmod.ModuleList(tuple(names), frozenset(optional),
                           frozenset(n for n in keep if n in listed.on_demand))


def left_out_aliases(table: kmod.AliasTable, staged: Collection[str]) -> str:
    """``modules.alias`` lines of the kernel's PCI drivers that are not ``staged``: what the
    boot reads (``/etc/pyinit/kernel-aliases``) to tell "the kernel has a driver for this
    device, this initramfs does not" (~5,000 lines, 15 kB compressed, read only then)."""
    names = {kmod.module_name(n) for n in staged}
    return "".join(f"alias {pattern} {module}\n" for pattern, module in table.entries
                   if pattern.startswith("pci:") and module not in names)


# --- firmware: names from .modinfo (pure) ---------------------------------------------------------

def modinfo_section(data: bytes) -> bytes:
    """The raw ``.modinfo`` section of an ELF64 little-endian relocatable (``b""`` if none)."""
    try:
        return elf.section(data, ".modinfo")
    except elf.ElfError as exc:
        raise ModinfoError(str(exc)) from exc


def parse_modinfo(section: bytes) -> list[tuple[str, str]]:
    """``key=value`` strings of a ``.modinfo`` section, NUL separated (padding skipped)."""
    out: list[tuple[str, str]] = []
    for raw in section.split(b"\0"):
        key, sep, value = raw.decode("utf-8", "replace").partition("=")
        if sep and key:
            out.append((key, value))
    return out


def firmware_names(ko: bytes) -> list[str]:
    """What ``modinfo -F firmware`` prints for the module image ``ko`` (uncompressed), in order."""
    seen: list[str] = []
    for key, value in parse_modinfo(modinfo_section(ko)):
        if key == "firmware" and value and value not in seen:
            seen.append(value)
    return seen


def read_module(path: Path) -> bytes:
    """A module file's ELF image, decompressed when it is a ``.ko.xz``/``.zst``/``.gz``."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a kernel config (``# ... is not set`` lines are absent)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            out[key] = value
    return out


def firmware_suffixes(config: Mapping[str, str]) -> tuple[str, ...]:
    """File suffixes the kernel's direct firmware loader tries, plain name first
    (``fw_get_filesystem_firmware``: "" then ``.zst`` then ``.xz`` when compiled in)."""
    suffixes = [""]
    if config.get("CONFIG_FW_LOADER_COMPRESS") == "y":
        if config.get("CONFIG_FW_LOADER_COMPRESS_ZSTD") == "y":
            suffixes.append(".zst")
        if config.get("CONFIG_FW_LOADER_COMPRESS_XZ") == "y":
            suffixes.append(".xz")
    return tuple(suffixes)


# --- firmware: lookup on the build host -----------------------------------------------------------

@dataclass(frozen=True)
class Firmware:
    """One firmware file to stage: ``name`` as the module asks for it, the host file found,
    and the name it gets under ``lib/firmware`` (``name`` + a suffix the kernel reads)."""

    name: str
    source: Path
    dest: str
    decompress: str | None = None   # ".zst"/".xz": the kernel cannot read it, stage it plain


def find_firmware(name: str, dirs: Sequence[Path], suffixes: Sequence[str]) -> Firmware | None:
    """``name`` + the first suffix the kernel reads, found in any of ``dirs``; else a compressed
    variant it cannot read (staged decompressed); else None. Symlinks are followed (Debian's
    firmware packages link one name to another); a name leaving its directory is refused."""
    if name.startswith("/") or ".." in name.split("/"):
        return None
    for suffix in suffixes:  # the kernel tries every directory per suffix, plain first
        for directory in dirs:
            path = directory / (name + suffix)
            if path.is_file():
                return Firmware(name, path, name + suffix)
    for suffix in (".zst", ".xz"):
        for directory in dirs:
            path = directory / (name + suffix)
            if suffix not in suffixes and path.is_file():
                return Firmware(name, path, name, decompress=suffix)
    return None


def xz_crc32(data: bytes) -> bytes:
    """xz with a CRC32 check: the kernel's decoder knows none of the stronger ones."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def staged_form(fw: Firmware, suffixes: Sequence[str],
                xz: Callable[[bytes], bytes] = xz_crc32) -> tuple[str, bytes]:
    """(name under lib/firmware, content) for ``fw``: a plain file becomes ``name.xz`` when the
    kernel reads ``.xz``, so the archive carries it compressed and the kernel inflates it only
    when a driver asks for it."""
    data = firmware_bytes(fw)
    if fw.dest == fw.name and ".xz" in suffixes:
        return fw.name + ".xz", xz(data)
    return fw.dest, data


def firmware_bytes(fw: Firmware) -> bytes:
    """The content to stage for ``fw`` (decompressed when the kernel cannot read the variant)."""
    data = fw.source.read_bytes()
    if fw.decompress == ".xz":
        return lzma.decompress(data)
    if fw.decompress == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data
