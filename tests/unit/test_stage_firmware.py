"""The firmware stage of the initramfs build with the Debian fetch as its seam: what is staged,
from which package, and what happens when the fetch fails (docs/bad-inputs.md, FW1 and FW2)."""

from __future__ import annotations

import logging
import lzma
import re
from pathlib import Path

import pytest

from pyinit_build import firmware, initramfs, kernel

from .test_drivers import make_ko

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"


def fake_kernel(root: Path) -> kernel.Kernel:
    """A kernel package tree with one module declaring three firmware files."""
    mods = root / "lib/modules/6.1.0-test"
    (mods / "kernel/drivers/net").mkdir(parents=True)
    (mods / "kernel/drivers/net/nic.ko").write_bytes(make_ko(
        b"firmware=acme/a.bin\0firmware=acme/b.bin\0firmware=acme/c.bin\0"))
    (mods / "modules.dep").write_text("kernel/drivers/net/nic.ko:\n")
    (root / "boot").mkdir()
    config = root / "boot/config-6.1.0-test"
    config.write_text("CONFIG_FW_LOADER_COMPRESS=y\nCONFIG_FW_LOADER_COMPRESS_XZ=y\n")
    return kernel.Kernel("6.1.0-test", "linux-image-test", "1", root / "k.deb", root,
                         root / "boot/vmlinuz", mods, config)


@pytest.fixture
def rig(tmp_path: Path) -> tuple[kernel.Kernel, Path, Path]:
    kern = fake_kernel(tmp_path / "kernel")
    host = tmp_path / "host-firmware"
    (host / "acme").mkdir(parents=True)
    (host / "acme/a.bin").write_bytes(b"A from the host")
    staging = tmp_path / "staging"
    staging.mkdir()
    return kern, host, staging


def doc_line(row: str) -> str:
    for line in DOC.read_text().splitlines():
        if line.startswith(f"| {row} |"):
            return line.split("|")[3].strip().strip("`")
    raise AssertionError(f"{row} not in {DOC}")


def test_host_first_then_debian_with_package_and_version(
        rig: tuple[kernel.Kernel, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kern, host, staging = rig
    pkg = tmp_path / "unpacked/firmware-acme_1.0-1_all"
    (pkg / "lib/firmware/acme").mkdir(parents=True)
    (pkg / "lib/firmware/acme/b.bin").write_bytes(b"B from Debian")
    asked: list[list[str]] = []

    def fetch(names: list[str], cache: Path) -> firmware.Fetched:
        asked.append(list(names))
        return firmware.Fetched(packages=[firmware.Unpacked("firmware-acme", "1.0-1", pkg)],
                                unknown=["acme/c.bin"])

    monkeypatch.setattr(firmware, "fetch", fetch)
    got = initramfs.stage_firmware(staging, kern, ["nic"], [host], cache=tmp_path / "cache")
    assert asked == [["acme/b.bin", "acme/c.bin"]]  # only what the host lacks
    assert [(f["file"], f["package"], f["version"]) for f in got.staged] == [
        ("acme/a.bin.xz", "host", str(host)), ("acme/b.bin.xz", "firmware-acme", "1.0-1")]
    assert got.missing == ("acme/c.bin",)
    assert got.fetch == {"source": "debian", "packages": {"firmware-acme": "1.0-1"},
                         "failed": {}, "in_no_package": 1}
    staged = staging / "lib/firmware/acme"
    assert lzma.decompress((staged / "b.bin.xz").read_bytes()) == b"B from Debian"
    # cached by content: a second stage reads the compressed bytes back, same result
    again = initramfs.stage_firmware(staging, kern, ["nic"], [host], cache=tmp_path / "cache")
    assert again == got
    assert len(list((tmp_path / "cache/compressed").glob("*.xz"))) == 2


def test_fw1_fetch_fails_one_warning_build_goes_on(
        rig: tuple[kernel.Kernel, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    kern, host, staging = rig

    def fetch(names: list[str], cache: Path) -> firmware.Fetched:
        raise firmware.FirmwareFetchError(
            "apt-get update (non-free-firmware): Err:1 http://mirror.invalid/debian bookworm "
            "InRelease")

    monkeypatch.setattr(firmware, "fetch", fetch)
    with caplog.at_level(logging.WARNING):
        got = initramfs.stage_firmware(staging, kern, ["nic"], [host], cache=tmp_path / "c")
    assert [f["file"] for f in got.staged] == ["acme/a.bin.xz"]
    assert got.missing == ("acme/b.bin", "acme/c.bin")
    assert got.fetch["error"].startswith("apt-get update (non-free-firmware): Err:1")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert lines[0] == doc_line("FW1")


def test_fw2_one_package_fails_the_others_are_staged(
        rig: tuple[kernel.Kernel, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    kern, host, staging = rig

    def fetch(names: list[str], cache: Path) -> firmware.Fetched:
        return firmware.Fetched(failed={
            "firmware-acme": "apt-get download firmware-acme left no .deb"})

    monkeypatch.setattr(firmware, "fetch", fetch)
    with caplog.at_level(logging.WARNING):
        got = initramfs.stage_firmware(staging, kern, ["nic"], [host], cache=tmp_path / "c")
    assert got.missing == ("acme/b.bin", "acme/c.bin")
    assert got.fetch["failed"] == {"firmware-acme": "apt-get download firmware-acme left no .deb"}
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [doc_line("FW2")]


def test_host_only_never_fetches(rig: tuple[kernel.Kernel, Path, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    kern, host, staging = rig
    monkeypatch.setattr(firmware, "fetch", lambda *a: pytest.fail("fetched"))
    got = initramfs.stage_firmware(staging, kern, ["nic"], [host], source="host")
    assert got.missing == ("acme/b.bin", "acme/c.bin") and got.fetch == {"source": "host"}
    assert re.fullmatch(r"acme/a\.bin\.xz", got.staged[0]["file"])
