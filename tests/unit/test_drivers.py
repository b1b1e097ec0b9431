"""Driver-set selection and firmware lookup for the initramfs (pure, plus tmp_path files)."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest
import zstandard

from pyinit import kmod
from pyinit_build import drivers
from tests.hostreq import fail_or_skip

REPO = Path(__file__).resolve().parents[2]
KERNEL_MODULES = sorted((REPO / ".cache/kernel").glob("*/lib/modules/*"))


@pytest.fixture
def kernel_modules() -> None:
    """The cached kernel package: make test has it (a failure otherwise), a bare pytest skips."""
    if not KERNEL_MODULES:
        fail_or_skip("no cached kernel package (.cache/kernel): run `make initramfs`")


# --- tree prefixes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "selected"), [
    ("kernel/drivers/net/ethernet/broadcom/tg3.ko", True),
    ("kernel/drivers/net/ethernet/intel/ixgbe/ixgbe.ko.xz", True),   # compressed kernels too
    ("kernel/drivers/net/virtio_net.ko", True),
    ("kernel/drivers/net/virtio_net.ko.zst", True),
    ("kernel/drivers/net/xen-netfront.ko", True),
    ("kernel/drivers/net/phy/realtek.ko", True),
    ("kernel/drivers/nvme/host/nvme.ko", True),
    ("kernel/drivers/scsi/sd_mod.ko", True),
    ("kernel/drivers/scsi/mpt3sas/mpt3sas.ko", True),
    ("kernel/drivers/ata/ahci.ko", True),
    ("kernel/drivers/block/virtio_blk.ko", True),
    ("kernel/drivers/usb/storage/uas.ko", True),
    ("kernel/drivers/usb/host/xhci-pci.ko", True),
    ("kernel/drivers/pci/controller/vmd.ko", True),
    ("kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko", False),
    ("kernel/drivers/net/tun.ko", False),
    ("kernel/drivers/nvme/target/nvmet.ko", False),
    ("kernel/drivers/block/loop.ko", False),
    ("kernel/drivers/block/nbd.ko", False),
    ("kernel/drivers/md/raid456.ko", False),
    ("kernel/drivers/pci/controller/pci-hyperv.ko", False),
    ("kernel/drivers/net/sub/virtio_net.ko", False),  # a file prefix names one directory
    ("kernel/fs/ext4/ext4.ko", False),
])
def test_tree_modules(path: str, selected: bool) -> None:
    assert drivers.tree_modules([path]) == ([path] if selected else [])


def test_tree_modules_keeps_input_order() -> None:
    paths = ["kernel/drivers/scsi/sd_mod.ko", "kernel/fs/xfs/xfs.ko", "kernel/drivers/ata/ahci.ko"]
    assert drivers.tree_modules(paths, ("kernel/drivers/ata/", "kernel/drivers/scsi/sd_mod.ko")) \
        == ["kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/ata/ahci.ko"]


@pytest.mark.usefixtures("kernel_modules")
def test_broad_set_of_the_cached_kernel() -> None:
    deps = kmod.parse_modules_dep((KERNEL_MODULES[0] / "modules.dep").read_text())
    names = {kmod.module_name(p) for p in drivers.tree_modules(deps)}
    assert {"tg3", "bnx2", "igb", "ixgbe", "i40e", "mlx5_core", "virtio_net", "nvme", "sd_mod",
            "ahci", "megaraid_sas", "mpt3sas", "virtio_blk", "virtio_scsi", "uas", "xhci_pci",
            "vmd", "r8152"} <= names
    assert not names & {"iwlwifi", "ath10k_pci", "raid456", "nvmet", "loop", "ext4"}


# --- host matching --------------------------------------------------------------------------------

ALIASES = kmod.parse_modules_alias("""\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v00008086d00009A49sv*sd*bc*sc*i* i915
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias fs-ext4 ext4
alias crypto-crc32c crc32c_generic
alias devname:loop-control loop
""")
VIRTIO_NET_PCI = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
VIRTIO_NET = "virtio:d00000001v00001AF4"
NVME = "pci:v00008086d0000F1A5sv00008086sd0000390Abc01sc08i02"
IGPU = "pci:v00008086d00009A49sv00001028sd00000A38bc03sc00i00"


@pytest.mark.parametrize(("modaliases", "candidates", "expected"), [
    ([VIRTIO_NET_PCI, VIRTIO_NET, NVME], None, ["virtio_pci", "virtio_net", "nvme"]),
    ([NVME, VIRTIO_NET_PCI], None, ["nvme", "virtio_pci"]),            # first-match order
    ([VIRTIO_NET_PCI, VIRTIO_NET, NVME, IGPU], None, ["virtio_pci", "virtio_net", "nvme", "i915"]),
    ([VIRTIO_NET_PCI, VIRTIO_NET, NVME, IGPU], ["virtio_pci", "virtio-net", "nvme"],
     ["virtio_pci", "virtio_net", "nvme"]),                            # GPU not a candidate
    (["acpi:PNP0A03:", "fs-ext4", "platform:serial8250"], None, []),  # nothing matches
    ([], None, []),
])
def test_host_modules(modaliases: list[str], candidates: list[str] | None,
                      expected: list[str]) -> None:
    assert drivers.host_modules(modaliases, ALIASES, candidates) == expected


def test_host_list_drops_listed_drivers_and_adds_matches() -> None:
    listed = kmod.parse_module_list(
        "virtio_pci\nvirtio_net\ne1000\n?nvme\n@ext4\n?crc32c_intel\ncrc32c_generic\n?loop\n")
    got = drivers.host_list(listed, ALIASES.device_drivers(), ["virtio_pci", "nvme"])
    assert got.names == ("ext4", "crc32c_generic", "loop", "virtio_pci", "nvme")
    assert got.optional == frozenset({"loop", "virtio_pci", "nvme"})
    assert got.on_demand == frozenset({"ext4"})


# --- firmware names from .modinfo -----------------------------------------------------------------

def make_ko(modinfo: bytes, *, with_section: bool = True) -> bytes:
    """A minimal ELF64 LE relocatable: null section, .text, [.modinfo], .shstrtab."""
    shstrtab = b"\0.text\0.modinfo\0.shstrtab\0"
    body = b"\x90" * 8 + modinfo + shstrtab
    text_off = 64
    modinfo_off = text_off + 8
    strtab_off = modinfo_off + len(modinfo)
    shoff = strtab_off + len(shstrtab)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 1, 6, 0, text_off, 8, 0, 0, 16, 0)]
    if with_section:
        sections.append(struct.pack("<IIQQQQIIQQ", 7, 1, 2, 0, modinfo_off, len(modinfo),
                                    0, 0, 1, 0))
    sections.append(struct.pack("<IIQQQQIIQQ", 16, 3, 0, 0, strtab_off, len(shstrtab),
                                0, 0, 1, 0))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(sections), len(sections) - 1)
    return header + body + b"".join(sections)


@pytest.mark.parametrize(("modinfo", "expected"), [
    (b"license=GPL\0firmware=tigon/tg3.bin\0firmware=tigon/tg3_tso.bin\0\0\0",
     ["tigon/tg3.bin", "tigon/tg3_tso.bin"]),
    (b"firmware=a.bin\0firmware=a.bin\0description=x=y\0", ["a.bin"]),   # duplicates once
    (b"license=GPL\0alias=pci:v*\0depends=\0", []),
    (b"firmware=\0", []),
    (b"", []),
])
def test_firmware_names(modinfo: bytes, expected: list[str]) -> None:
    assert drivers.firmware_names(make_ko(modinfo)) == expected


def test_firmware_names_without_modinfo_section() -> None:
    assert drivers.firmware_names(make_ko(b"", with_section=False)) == []


@pytest.mark.parametrize(("data", "message"), [
    (b"#!/bin/sh\n" + bytes(80), "not an ELF file"),
    (b"\x7fELF" + bytes([1, 1]) + bytes(70), "unsupported ELF class"),
    (make_ko(b"firmware=x\0")[:-10], "section header table truncated"),
])
def test_modinfo_errors(data: bytes, message: str) -> None:
    with pytest.raises(drivers.ModinfoError, match=message):
        drivers.modinfo_section(data)


@pytest.mark.usefixtures("kernel_modules")
def test_firmware_names_of_a_real_module_match_modinfo() -> None:
    """``modinfo -F firmware tg3.ko`` on the Debian 6.1 kernel prints these four names."""
    ko = KERNEL_MODULES[0] / "kernel/drivers/net/ethernet/broadcom/tg3.ko"
    assert drivers.firmware_names(drivers.read_module(ko)) == [
        "tigon/tg3_tso5.bin", "tigon/tg3_tso.bin", "tigon/tg357766.bin", "tigon/tg3.bin"]


@pytest.mark.parametrize("suffix", [".xz", ".zst"])
def test_read_module_decompresses(tmp_path: Path, suffix: str) -> None:
    ko = make_ko(b"firmware=x.bin\0")
    path = tmp_path / f"m.ko{suffix}"
    path.write_bytes(lzma.compress(ko, format=lzma.FORMAT_XZ) if suffix == ".xz"
                     else zstandard.ZstdCompressor().compress(ko))
    assert drivers.firmware_names(drivers.read_module(path)) == ["x.bin"]


# --- kernel config and the firmware lookup --------------------------------------------------------

DEBIAN_61 = """\
CONFIG_FW_LOADER=y
CONFIG_FW_LOADER_USER_HELPER=y
# CONFIG_FW_LOADER_USER_HELPER_FALLBACK is not set
CONFIG_FW_LOADER_COMPRESS=y
CONFIG_FW_LOADER_COMPRESS_XZ=y
# CONFIG_FW_LOADER_COMPRESS_ZSTD is not set
"""


@pytest.mark.parametrize(("config", "expected"), [
    (DEBIAN_61, ("", ".xz")),
    ("CONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\n"
     "CONFIG_FW_LOADER_COMPRESS_ZSTD=y\n", ("", ".zst", ".xz")),
    ("CONFIG_FW_LOADER_COMPRESS_XZ=y\n", ("",)),   # no COMPRESS: the sub-options are dead
    ("", ("",)),
])
def test_firmware_suffixes(config: str, expected: tuple[str, ...]) -> None:
    assert drivers.firmware_suffixes(drivers.parse_kconfig(config)) == expected


def test_parse_kconfig_skips_unset() -> None:
    assert drivers.parse_kconfig(DEBIAN_61) == {
        "CONFIG_FW_LOADER": "y", "CONFIG_FW_LOADER_USER_HELPER": "y",
        "CONFIG_FW_LOADER_COMPRESS": "y", "CONFIG_FW_LOADER_COMPRESS_XZ": "y"}


@pytest.fixture
def fwdirs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "tigon").mkdir(parents=True)
    (second / "tigon").mkdir(parents=True)
    (first / "tigon/plain.bin").write_bytes(b"plain")
    (second / "tigon/plain.bin").write_bytes(b"shadowed")
    (first / "tigon/both.bin.xz").write_bytes(lzma.compress(b"xz"))
    (second / "tigon/both.bin").write_bytes(b"plain")
    (first / "tigon/z.bin.zst").write_bytes(zstandard.ZstdCompressor().compress(b"zst"))
    (first / "tigon/link.bin").symlink_to("plain.bin")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    return first, second


@pytest.mark.parametrize(("name", "dest", "content"), [
    ("tigon/plain.bin", "tigon/plain.bin", b"plain"),      # first directory wins
    ("tigon/both.bin", "tigon/both.bin", b"plain"),        # plain in any dir before .xz
    ("tigon/link.bin", "tigon/link.bin", b"plain"),        # symlink followed, staged as a file
    ("tigon/z.bin", "tigon/z.bin", b"zst"),                 # kernel cannot read .zst: plain
    ("tigon/missing.bin", None, None),
    ("../outside.bin", None, None),
    ("/etc/passwd", None, None),
])
def test_find_firmware(fwdirs: tuple[Path, Path], name: str, dest: str | None,
                       content: bytes | None) -> None:
    found = drivers.find_firmware(name, fwdirs, ("", ".xz"))
    if dest is None:
        assert found is None
        return
    assert found is not None and found.dest == dest
    assert drivers.firmware_bytes(found) == content


def test_find_firmware_keeps_xz_when_the_kernel_reads_it(fwdirs: tuple[Path, Path]) -> None:
    """An .xz the kernel reads is staged as it is (the kernel decompresses it at load time);
    for a kernel without CONFIG_FW_LOADER_COMPRESS_XZ it is staged decompressed."""
    found = drivers.find_firmware("tigon/both.bin", fwdirs[:1], ("", ".xz"))
    assert found is not None and found.dest == "tigon/both.bin.xz" and found.decompress is None
    assert drivers.firmware_bytes(found) == lzma.compress(b"xz")
    plain = drivers.find_firmware("tigon/both.bin", fwdirs[:1], ("",))
    assert plain is not None and plain.dest == "tigon/both.bin"
    assert drivers.firmware_bytes(plain) == b"xz"
