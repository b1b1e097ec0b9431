"""`pyinit iso` with the real tools on the host (no VM): two builds are byte-identical, and the
ISO has what BIOS, UEFI and a USB stick need — both El Torito entries, GRUB's hybrid MBR code,
a GPT whose EFI system partition is the El Torito EFI image holding BOOTX64.EFI — and the files
and grub.cfg inside. The boots are in tests/vm/test_iso.py. Kernel and initramfs are stand-ins:
the builder copies them, nothing reads them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pyinit_build import iso
from pyinit_build.golden import grub

pytestmark = pytest.mark.integration

EPOCH = 1704067200
URL = "http://10.0.0.1:8080"
TOKEN = "s3cret-T0ken"
SECTOR = 512


def _inputs(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True)
    kernel, initrd = directory / "vmlinuz", directory / "initramfs.cpio.zst"
    kernel.write_bytes(b"K" * 3_000_000)
    initrd.write_bytes(bytes(range(256)) * 20_000)
    return kernel, initrd


def _build(tmp_path: Path, name: str) -> iso.IsoResult:
    kernel, initrd = _inputs(tmp_path / f"in-{name}")
    spec = iso.IsoSpec(output=tmp_path / name / "pyinit.iso", kernel=kernel, initrd=initrd,
                       cmdline=iso.compose(url=URL, ip="dhcp", token=TOKEN),
                       source_date_epoch=EPOCH)
    return iso.build_iso(spec)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> iso.IsoResult:
    return _build(tmp_path_factory.mktemp("iso"), "a")


def test_two_builds_are_byte_identical(built: iso.IsoResult, tmp_path: Path) -> None:
    """Inputs at other paths, another output directory, another temporary staging tree."""
    again = _build(tmp_path, "b")
    assert again.sha256 == built.sha256
    assert again.path.read_bytes() == built.path.read_bytes()


def test_el_torito_bios_and_uefi_entries(built: iso.IsoResult) -> None:
    report = _run("xorriso", "-indev", str(built.path), "-report_el_torito", "plain")
    assert "El Torito img path :   1  /boot/grub/i386-pc/eltorito.img" in report
    assert "El Torito img path :   2  /boot/grub/efi.img" in report
    boots = [line.split()[6] for line in report.splitlines()
             if line.startswith("El Torito boot img :")]
    assert boots == ["BIOS", "UEFI"]
    assert "boot-info-table grub2-boot-info" in report


def test_usb_stick_layout_protective_mbr_gpt_esp_and_grub_mbr_code(built: iso.IsoResult) -> None:
    data = built.path.read_bytes()
    mbr = data[:SECTOR]
    assert mbr[510:] == b"\x55\xaa"
    assert mbr[0x1BE + 4] == 0xEE  # protective entry; sfdisk then reads the GPT
    hybrid = (grub.GRUB_LIB / "i386-pc" / "boot_hybrid.img").read_bytes()
    assert mbr[0x5C:0x1B0] == hybrid[0x5C:0x1B0]  # GRUB's code; xorriso patches the core's LBA
    table = json.loads(_run("sfdisk", "--json", str(built.path)))["partitiontable"]
    assert table["label"] == "gpt"
    esp = [p for p in table["partitions"]
           if p["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"]
    assert len(esp) == 1
    start, size = esp[0]["start"] * SECTOR, esp[0]["size"] * SECTOR
    fat = built.path.parent / "esp.img"
    fat.write_bytes(data[start:start + size])
    listing = _run("mdir", "-i", str(fat), "-b", "::/EFI/BOOT")
    assert listing.split() == ["::/EFI/BOOT/BOOTX64.EFI"]
    assert data[start + 54:start + 59] == b"FAT12"


def test_files_and_grub_cfg_inside(built: iso.IsoResult, tmp_path: Path) -> None:
    blkid = _run("blkid", "-o", "export", str(built.path)).splitlines()
    assert {"UUID=2024-01-01-00-00-00-00", "LABEL=PYINIT", "TYPE=iso9660"} <= set(blkid)
    listing = _run("xorriso", "-indev", str(built.path), "-find", "/", "-type", "f")
    files = sorted(line.strip().strip("'") for line in listing.splitlines() if line.strip())
    assert files == ["/boot/grub/efi.img", "/boot/grub/grub.cfg",
                     "/boot/grub/i386-pc/eltorito.img", "/boot/initramfs.cpio.zst",
                     "/boot/vmlinuz"]
    cfg = tmp_path / "grub.cfg"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(built.path),
                    "-extract", "/boot/grub/grub.cfg", str(cfg)], check=True, capture_output=True)
    text = cfg.read_text()
    assert "search --no-floppy --fs-uuid --set=root 2024-01-01-00-00-00-00" in text
    assert (f"linux /boot/vmlinuz console=tty0 console=ttyS0,115200 MYURL={URL} ip=dhcp "
            f"pyinit.token={TOKEN}") in text
    assert built.path.stat().st_mode & 0o077 == 0  # it carries the token
