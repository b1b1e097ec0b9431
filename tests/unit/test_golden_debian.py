"""debian:SUITE rootfs: the host's apt sources → mmdebstrap's command line (pure parts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit_build.errors import BuildError
from pyinit_build.golden import debian

DEB822 = """Types: deb
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main
"""

ONE_LINE = """# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian trixie main
deb-src http://mirror.example/debian trixie main
"""


def test_parse_deb822_skips_disabled_and_source_only_stanzas() -> None:
    assert debian.parse_sources(DEB822, deb822=True) == [
        debian.Source("http://mirror.example/debian", ("bookworm", "bookworm-updates"),
                      ("main", "contrib")),
        debian.Source("http://mirror.example/debian-security", ("bookworm-security",),
                      ("main",)),
    ]


def test_parse_one_line_format_drops_options_and_comments() -> None:
    assert debian.parse_sources(ONE_LINE, deb822=False) == [
        debian.Source("http://mirror.example/debian", ("trixie",), ("main",))]


def test_host_sources_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "off.list.disabled").write_text("deb http://x/ y main\n")
    assert [s.uri for s in debian.host_sources(tmp_path)] == [
        "http://mirror.example/debian", "http://mirror.example/debian",
        "http://mirror.example/debian-security"]


def test_mirror_lines_pick_the_suite_and_its_pockets() -> None:
    sources = debian.parse_sources(DEB822, deb822=True)
    assert debian.mirror_lines("bookworm", sources) == [
        "deb http://mirror.example/debian bookworm main contrib",
        "deb http://mirror.example/debian bookworm-updates main contrib",
        "deb http://mirror.example/debian-security bookworm-security main"]
    with pytest.raises(BuildError, match=r"debian:trixie: the host's apt sources have no "
                                         r"trixie entry \(they list: bookworm, "):
        debian.mirror_lines("trixie", sources)


def test_mmdebstrap_argv() -> None:
    assert debian.mmdebstrap_argv("bookworm", Path("/w/d.tar"), ["deb http://m/ bookworm main"]) \
        == ["mmdebstrap", "--variant=minbase", "--quiet",
            "--include=linux-image-cloud-amd64,initramfs-tools", "bookworm", "/w/d.tar",
            "deb http://m/ bookworm main"]
    with pytest.raises(BuildError, match="not a Debian suite name"):
        debian.mmdebstrap_argv("../etc", Path("/w/d.tar"), [])
