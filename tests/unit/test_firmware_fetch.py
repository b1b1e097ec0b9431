"""Debian non-free-firmware through a private apt: the pure parts, and the argv through the
recorder (no command runs in a unit test)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from pyinit_build import firmware
from pyinit_build.golden.debian import Source
from tests.conftest import Recorder

CONTENTS = "".join(f"{path:<44}{owners}\n" for path, owners in [
    ("lib/firmware/bnx2x/bnx2x-e2-7.13.21.0.fw", "non-free-firmware/kernel/firmware-bnx2x"),
    ("lib/firmware/tigon/tg3.bin", "non-free-firmware/kernel/firmware-misc-nonfree"),
    ("usr/lib/firmware/intel/ice/ddp/ice.pkg",
     "non-free-firmware/kernel/firmware-misc-nonfree,non-free-firmware/kernel/firmware-other"),
    ("usr/share/doc/firmware-bnx2x/copyright", "non-free-firmware/doc/firmware-bnx2x"),
    ("lib/firmware/name with spaces.bin", "non-free-firmware/kernel/firmware-odd"),
])


def test_parse_contents_keeps_firmware_paths_first_owner() -> None:
    got = firmware.parse_contents(CONTENTS)
    assert got == {"bnx2x/bnx2x-e2-7.13.21.0.fw": "firmware-bnx2x",
                   "tigon/tg3.bin": "firmware-misc-nonfree",
                   "intel/ice/ddp/ice.pkg": "firmware-misc-nonfree",
                   "name with spaces.bin": "firmware-odd"}


def test_packages_for_groups_and_reports_unknown() -> None:
    by_package, unknown = firmware.packages_for(
        ["tigon/tg3.bin", "isci/isci_firmware.bin", "intel/ice/ddp/ice.pkg"],
        firmware.parse_contents(CONTENTS))
    assert by_package == {"firmware-misc-nonfree": ["tigon/tg3.bin", "intel/ice/ddp/ice.pkg"]}
    assert unknown == ["isci/isci_firmware.bin"]


def test_sources_list_uses_the_hosts_mirror_with_one_component() -> None:
    sources = [Source("http://mirror.test/debian", ("bookworm", "bookworm-updates"), ("main",)),
               Source("http://mirror.test/debian-security", ("bookworm-security",), ("main",)),
               Source("http://other.test/x", ("nodistro",), ("main",))]
    text = firmware.sources_list("bookworm", sources, keyring=Path("/k.gpg"))
    assert text == (
        "deb [signed-by=/k.gpg] http://mirror.test/debian bookworm non-free-firmware\n"
        "deb [signed-by=/k.gpg] http://mirror.test/debian bookworm-updates non-free-firmware\n"
        "deb [signed-by=/k.gpg] http://mirror.test/debian-security bookworm-security "
        "non-free-firmware\n")


def test_sources_list_without_the_suite_is_one_line() -> None:
    with pytest.raises(Exception, match="no bookworm entry"):
        firmware.sources_list("bookworm", [Source("http://m/d", ("trixie",), ("main",))])


@pytest.mark.parametrize(("text", "expected"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\n', "bookworm"),
    ('VERSION_CODENAME="trixie"\n', "trixie"),
    ("ID=debian\n", None),
    ("VERSION_CODENAME=\n", None),
])
def test_codename(text: str, expected: str | None) -> None:
    assert firmware.codename(text) == expected


@pytest.mark.parametrize(("name", "version"), [
    ("firmware-bnx2x_20230210-5_all.deb", "20230210-5"),
    ("firmware-x_1%3a2.0-1_amd64.deb", "1:2.0-1"),
    ("garbage.deb", "unknown"),
])
def test_deb_version(name: str, version: str) -> None:
    assert firmware.deb_version(Path(name)) == version


def test_private_apt_never_touches_the_hosts_sources(tmp_path: Path) -> None:
    apt = firmware.PrivateApt(tmp_path / "fw", "deb http://m/debian bookworm non-free-firmware\n")
    apt.setup()
    conf = (tmp_path / "fw/apt.conf").read_text()
    assert f'Dir::Etc::SourceList "{tmp_path}/fw/sources.list";' in conf
    assert f'Dir::State::Status "{tmp_path}/fw/status";' in conf
    assert "Contents-$(ARCHITECTURE)" in conf
    assert (tmp_path / "fw/status").read_text() == ""
    seen: list[tuple[list[str], dict[str, Any]]] = []

    def runner(argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        seen.append((list(argv), kwargs))
        return proc.Completed(tuple(argv), 0, "Hit:1 http://m/debian bookworm InRelease\n", "")

    previous = proc.set_runner(runner)
    try:
        apt.update()
    finally:
        proc.set_runner(previous)
    argv, kwargs = seen[-1]
    assert argv == ["apt-get", "update", "-q"]
    assert kwargs["env"]["APT_CONFIG"] == str(tmp_path / "fw/apt.conf")


def test_update_error_is_one_line(tmp_path: Path, recorder: Recorder) -> None:
    apt = firmware.PrivateApt(tmp_path / "fw", "deb http://m/debian bookworm non-free-firmware\n")
    apt.setup()
    recorder.responses["apt-get"] = proc.Completed(
        ("apt-get",), 0, "Err:1 http://m/debian bookworm InRelease\n  Could not resolve 'm'\n",
        "W: Failed to fetch http://m/debian/dists/bookworm/InRelease\n")
    with pytest.raises(firmware.FirmwareFetchError,
                       match=r"apt-get update \(non-free-firmware\): Err:1 http://m/debian "
                             r"bookworm InRelease$"):
        apt.update()


def test_fetch_without_codename_is_one_line(tmp_path: Path) -> None:
    osr = tmp_path / "os-release"
    osr.write_text("ID=debian\n")
    with pytest.raises(firmware.FirmwareFetchError, match="names no VERSION_CODENAME"):
        firmware.fetch(["a.bin"], tmp_path / "c", os_release=osr)
    assert firmware.fetch([], tmp_path / "c", os_release=osr).packages == []
