"""The reference list of server controllers against the real kernel, pci.ids and usb.ids, and the
default build's coverage of it: `make test` fails below 100 %.

The list is checked first (every row's driver is one the full kernel's modules.alias loads for
that exact modalias, every ID is one the PCI/USB ID databases know), so a wrong row cannot make
the coverage figure look better or worse than it is. Then the built initramfs is opened (not
just its manifest) and its own modules.alias is matched again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zstandard

from pyinit import kmod
from pyinit_build import coverage, cpio, kernel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("PYINIT_OUT", REPO / "out"))
PCI_IDS = Path("/usr/share/misc/pci.ids")
USB_IDS = Path("/var/lib/usbutils/usb.ids")
# Devices QEMU and the clouds present with subsystem IDs the ID databases do not list
# (QEMU's own virtio and xHCI subsystems, Google's gVNIC): their rows say so by vendor.
OWN_SUBSYSTEMS = {"1af4", "1b36", "1ae0"}


def parse_ids(path: Path) -> dict[str, dict[str, set[tuple[str, str]]]]:
    """{vendor: {device: {(subvendor, subdevice)}}} of a pci.ids/usb.ids file."""
    out: dict[str, dict[str, set[tuple[str, str]]]] = {}
    vendor = device = ""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("C ") or line.startswith("AT "):
            break  # the class lists follow the vendors
        if not line.startswith("\t"):
            vendor = line[:4].lower()
            out[vendor] = {}
        elif not line.startswith("\t\t"):
            device = line[1:5].lower()
            out[vendor][device] = set()
        else:
            out[vendor][device].add((line[2:6].lower(), line[7:11].lower()))
    return out


@pytest.fixture(scope="module")
def full_kernel() -> kmod.AliasTable:
    kern = kernel.fetch(REPO / ".cache" / "kernel")
    return kmod.parse_modules_alias((kern.modules_dir / "modules.alias").read_text())


def test_every_row_is_what_the_kernel_binds(full_kernel: kmod.AliasTable) -> None:
    ref = coverage.reference()
    checked = coverage.check(ref, full_kernel)
    assert not checked.missing, [f"{c.ids} {c.name}: named {c.driver}, the kernel loads "
                                 f"{list(m) or 'nothing'}" for c, m in checked.missing]
    assert checked.total == len(ref) >= 60


def test_every_id_is_a_real_device() -> None:
    if not PCI_IDS.exists() or not USB_IDS.exists():
        pytest.fail(f"{PCI_IDS} / {USB_IDS} missing: apt install pci.ids usb.ids "
                    "(make setup does)")
    pci, usb = parse_ids(PCI_IDS), parse_ids(USB_IDS)
    wrong = []
    for c in coverage.reference():
        db = pci if c.bus == "pci" else usb
        if c.device not in db.get(c.vendor, {}):
            wrong.append(f"{c.ids} ({c.name}): not in {c.bus}.ids")
        elif (c.bus == "pci" and c.subdevice != "0000" and c.subvendor not in OWN_SUBSYSTEMS
              and (c.subvendor, c.subdevice) not in db[c.vendor][c.device]
              and (c.subvendor, c.subdevice) != (c.vendor, c.device)):
            wrong.append(f"{c.ids} ({c.name}): subsystem {c.subvendor}:{c.subdevice} not in "
                         "pci.ids")
    assert not wrong, wrong


def built_aliases(initramfs: Path, release: str) -> kmod.AliasTable:
    raw = zstandard.ZstdDecompressor().stream_reader(initramfs.open("rb")).read()
    wanted = f"usr/lib/modules/{release}/modules.alias"
    entry = next(e for e in cpio.parse(raw) if e.path == wanted)
    return kmod.parse_modules_alias(entry.data.decode())


def test_the_default_build_covers_every_reference_controller() -> None:
    manifest_path = OUT / "manifest.json"
    if not manifest_path.exists():
        if "PYINIT_OUT" in os.environ:
            pytest.fail(f"{manifest_path} not built: run `make initramfs`")
        pytest.skip(f"{manifest_path} not built")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["drivers"]["mode"] == "broad"  # the default `make initramfs` builds
    cov = manifest["coverage"]
    assert cov["percent"] == 100.0, cov["missing"]
    assert cov["covered"] == cov["controllers"] == len(coverage.reference())
    # the archive itself, not only what the manifest says about it
    table = built_aliases(OUT / "initramfs.cpio.zst", manifest["kernel"]["release"])
    again = coverage.check(coverage.reference(), table)
    assert again.percent == 100.0, [f"{c.ids} {c.driver}" for c, _ in again.missing]
    staged = set(manifest["modules"])
    for name in ("igb", "igc", "ixgbe", "i40e", "ice", "e1000e", "bnxt_en", "tg3", "bnx2x",
                 "qede", "mlx4_core", "mlx4_en", "mlx5_core", "sfc", "be2net", "ena", "vmxnet3",
                 "virtio_net", "nvme", "vmd", "ahci", "megaraid_sas", "mpt3sas", "mpi3mr",
                 "smartpqi", "hpsa", "aacraid", "virtio_blk", "virtio_scsi", "vmw_pvscsi",
                 "usb_storage", "uas"):
        assert name in staged, name
