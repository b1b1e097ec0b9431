"""``--drivers host|broad`` and firmware staging, through real builds of the Debian kernel.

Three builds at zstd level 3 (the layout, not the compression, is under test): two identical
host-only builds against a fake sysfs (virtio-net, NVMe, a Broadcom tg3 NIC, an Intel GPU, the
CPU) and a fake firmware directory holding three of the four files tg3 declares, and one broad
build. Each shares the repo's kernel and freeze cache, so a build costs about 20-50 s here.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

import pytest
import zstandard

from pyinit import proc
from pyinit_build import initramfs
from pyinit_build.errors import BuildError

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
MODALIASES = {
    # virtio-net: the PCI function (virtio_pci) and the virtio device on it (virtio_net)
    "pci0000:00/0000:00:03.0": "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
    "pci0000:00/0000:00:03.0/virtio0": "virtio:d00000001v00001AF4",
    # an NVMe controller (matched by class 01/08/02, nvme)
    "pci0000:00/0000:00:04.0": "pci:v00008086d0000F1A5sv00008086sd0000390Abc01sc08i02",
    # a Broadcom BCM5704 (tg3, which declares four tigon/ firmware files)
    "pci0000:00/0000:00:05.0": "pci:v000014E4d00001644sv000014E4sd00001644bc02sc00i00",
    # an Intel integrated GPU: i915 matches, but it is no storage or NIC driver
    "pci0000:00/0000:00:02.0": "pci:v00008086d00009A49sv00001028sd00000A38bc03sc00i00",
    # the CPU, with SSE4.2 (feature 0094): crc32c_intel, a listed driver with a cpu: alias
    "system/cpu": "cpu:type:x86,ven0000fam0006mod008C:feature:,0000,0001,0094,00E5",
}
TG3 = "kernel/drivers/net/ethernet/broadcom/tg3.ko"


def fake_sysfs(root: Path) -> Path:
    for rel, alias in MODALIASES.items():
        (root / "devices" / rel).mkdir(parents=True, exist_ok=True)
        (root / "devices" / rel / "modalias").write_text(alias + "\n")
    return root


def fake_firmware(root: Path) -> Path:
    """tg3 asks for tg3_tso5.bin, tg3_tso.bin, tg357766.bin, tg3.bin; the last is missing."""
    (root / "tigon").mkdir(parents=True)
    (root / "tigon/tg3.bin").write_bytes(b"tg3 firmware")
    (root / "tigon/tg3_tso.bin.xz").write_bytes(lzma.compress(b"tso firmware"))
    (root / "tigon/tg3_tso5.bin.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b"tso5 firmware"))
    (root / "tigon/unrelated.bin").write_bytes(b"no module asks for this")
    return root


def unpack(out: Path, dest: Path) -> tuple[list[str], dict[str, Any]]:
    """``cpio -t`` listing of the build's archive, extracted into ``dest``; and the manifest."""
    raw = dest.with_suffix(".cpio")
    with (out / "initramfs.cpio.zst").open("rb") as fh:
        raw.write_bytes(zstandard.ZstdDecompressor().stream_reader(fh).read())
    listing = proc.run(["cpio", "-t", "--quiet", "-F", str(raw)]).stdout.splitlines()
    dest.mkdir()
    proc.run(["cpio", "-i", "--quiet", "--make-directories", "--no-absolute-filenames",
              "-F", str(raw)], cwd=dest)
    return listing, json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def host_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    inputs = tmp_path_factory.mktemp("inputs")
    sysfs, firmware = fake_sysfs(inputs / "sys"), fake_firmware(inputs / "firmware")
    outs = []
    for name in ("host1", "host2"):
        out = tmp_path_factory.mktemp(name)
        initramfs.build(initramfs.BuildConfig(
            out_dir=out, source_date_epoch=EPOCH, zstd_level=3, drivers="host",
            host_sysfs=sysfs, firmware_dirs=(firmware,), firmware_source="host"))
        outs.append(out)
    return outs[0], outs[1]


@pytest.fixture(scope="module")
def host(host_builds: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Path, list[str], dict[str, Any]]:
    root = tmp_path_factory.mktemp("host-root") / "root"
    listing, manifest = unpack(host_builds[0], root)
    return root, listing, manifest


@pytest.fixture(scope="module")
def broad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("broad")
    initramfs.build(initramfs.BuildConfig(
        out_dir=out, source_date_epoch=EPOCH, zstd_level=3, drivers="broad",
        firmware_dirs=(tmp_path_factory.mktemp("no-firmware"),), firmware_source="host"))
    root = tmp_path_factory.mktemp("broad-root") / "root"
    listing, manifest = unpack(out, root)
    return root, listing, manifest


def test_host_builds_are_reproducible(host_builds: tuple[Path, Path]) -> None:
    first, second = (hashlib.sha256((o / "initramfs.cpio.zst").read_bytes()).hexdigest()
                     for o in host_builds)
    assert first == second
    assert (host_builds[0] / "manifest.json").read_text() == \
        (host_builds[1] / "manifest.json").read_text()


def test_host_only_stages_the_matching_drivers(host: tuple[Path, list[str], dict[str, Any]]
                                               ) -> None:
    root, listing, manifest = host
    mods = f"usr/lib/modules/{manifest['kernel']['release']}"
    assert manifest["drivers"]["mode"] == "host"
    assert manifest["drivers"]["host_matched"] == [
        "crc32c_intel", "tg3", "virtio_pci", "nvme", "virtio_net"]  # sorted modalias order
    assert manifest["drivers"]["modules"] == len(manifest["modules"])
    for present in (TG3, "kernel/drivers/nvme/host/nvme.ko", "kernel/drivers/net/virtio_net.ko",
                    "kernel/drivers/virtio/virtio_pci.ko", "kernel/fs/ext4/ext4.ko",
                    "kernel/fs/xfs/xfs.ko", "kernel/arch/x86/crypto/crc32c-intel.ko"):
        assert f"{mods}/{present}" in listing, present
    for absent in ("kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
                   "kernel/drivers/ata/ahci.ko", "kernel/drivers/block/virtio_blk.ko",
                   "kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/gpu/drm/i915/i915.ko"):
        assert f"{mods}/{absent}" not in listing, absent
    listed = (root / "etc/pyinit/modules").read_text().split()
    assert {"tg3", "nvme", "virtio_net", "@ext4", "@xfs", "crc32c_generic"} <= set(listed)
    assert "e1000" not in listed and "ahci" not in listed
    aliases = (root / mods / "modules.alias").read_text()  # depmod ran on the staged tree
    assert " tg3\n" in aliases and " e1000\n" not in aliases


def test_firmware_staged_and_missing_listed(host: tuple[Path, list[str], dict[str, Any]]
                                            ) -> None:
    root, listing, manifest = host
    fw = root / "usr/lib/firmware/tigon"
    assert [(f["file"], f["name"], f["package"]) for f in manifest["firmware"]] == [
        ("tigon/tg3.bin.xz", "tigon/tg3.bin", "host"),
        ("tigon/tg3_tso.bin.xz", "tigon/tg3_tso.bin", "host"),
        ("tigon/tg3_tso5.bin.xz", "tigon/tg3_tso5.bin", "host")]
    assert all(f["version"].endswith("/firmware") for f in manifest["firmware"])  # the dir
    assert manifest["firmware_missing"] == ["tigon/tg357766.bin"]
    assert manifest["firmware_fetch"] == {"source": "host"}
    for item in manifest["firmware"]:
        assert f"usr/lib/firmware/{item['file']}" in listing, item
    assert "usr/lib/firmware/tigon/unrelated.bin" not in listing
    # The Debian kernel reads .xz firmware itself (CONFIG_FW_LOADER_COMPRESS_XZ): a plain file
    # is stored .xz (CRC32, what its decoder checks), an .xz is kept as is; it has no
    # CONFIG_FW_LOADER_COMPRESS_ZSTD: the .zst is re-packed as .xz.
    assert lzma.decompress((fw / "tg3.bin.xz").read_bytes()) == b"tg3 firmware"
    assert lzma.decompress((fw / "tg3_tso.bin.xz").read_bytes()) == b"tso firmware"
    assert lzma.decompress((fw / "tg3_tso5.bin.xz").read_bytes()) == b"tso5 firmware"
    assert (fw / "tg3.bin.xz").read_bytes()[6:8] == b"\x00\x01"  # stream flags: check = CRC32
    assert (root / "lib").is_symlink()  # so /lib/firmware, the kernel's path, resolves


def test_broad_stages_storage_and_nics_coldplug_only(
        broad: tuple[Path, list[str], dict[str, Any]]) -> None:
    root, listing, manifest = broad
    mods = f"usr/lib/modules/{manifest['kernel']['release']}"
    assert manifest["drivers"]["mode"] == "broad"
    assert manifest["drivers"]["coldplug_only"] > 300
    # coldplug-only drivers are stored compressed (the kernel's unpack only copies them)
    for present in (TG3, "kernel/drivers/scsi/mpt3sas/mpt3sas.ko",
                    "kernel/drivers/scsi/megaraid/megaraid_sas.ko",
                    "kernel/drivers/net/ethernet/intel/ice/ice.ko",
                    "kernel/drivers/ata/ata_piix.ko", "kernel/drivers/scsi/smartpqi/smartpqi.ko"):
        assert f"{mods}/{present}.zst" in listing, present
        assert f"{mods}/{present}" not in listing, present
    # the listed ones (modules.txt) stay plain: finit_module reads them without a copy
    for listed_module in ("kernel/drivers/net/virtio_net.ko", "kernel/drivers/usb/storage/uas.ko"):
        assert f"{mods}/{listed_module}" in listing, listed_module
    dep = (root / mods / "modules.dep").read_text()
    assert "kernel/drivers/scsi/megaraid/megaraid_sas.ko.zst:" in dep  # depmod read them
    tg3 = zstandard.ZstdDecompressor().decompressobj().decompress(
        (root / mods / f"{TG3}.zst").read_bytes())
    assert tg3[:4] == b"\x7fELF"
    # the kernel's PCI drivers left out, for the boot's "the kernel has one" hint
    left_out = (root / "etc/pyinit/kernel-aliases").read_text()
    assert " iwlwifi\n" in left_out and " tg3\n" not in left_out
    assert manifest["coverage"]["percent"] == 100.0
    assert not any("/drivers/net/wireless/" in p for p in listing)
    # never loaded unconditionally: /init's list is the listed build's, nothing more
    listed = (root / "etc/pyinit/modules").read_text().split()
    assert "tg3" not in listed and "mpt3sas" not in listed and "virtio_net" in listed
    assert "tigon/tg3.bin" in manifest["firmware_missing"]
    assert manifest["firmware"] == []


def test_host_without_modaliases_fails_naming_the_tree(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"--host-sysfs .*: no modalias under"):
        initramfs.build(initramfs.BuildConfig(out_dir=tmp_path / "out", zstd_level=3,
                                              drivers="host", host_sysfs=tmp_path))
