"""``debian:SUITE`` root filesystems: a Debian bootstrap with mmdebstrap, from the host's own apt
sources (the mirror the machine is configured to use, read at run time — never a built-in
host name).

The result is a tarball that :func:`pyinit_build.golden.tree.load_rootfs` reads like any other,
so the rest of the build does not care where the tree came from. mmdebstrap runs rootless in
``unshare`` mode when the caller is not root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit_build.errors import BuildError

APT_ETC = Path("/etc/apt")
# What makes a minbase system bootable by its own kernel and initramfs.
BOOT_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools")
_SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]*$")


@dataclass(frozen=True)
class Source:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]

    def line(self, suite: str) -> str:
        return f"deb {self.uri} {suite} {' '.join(self.components)}"


def parse_sources(text: str, *, deb822: bool) -> list[Source]:
    """``deb`` entries of a sources.list (one-line) or .sources (deb822) file. Pure."""
    out: list[Source] = []
    if not deb822:
        for raw in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", raw.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                out.append(Source(line[1], (line[2],), tuple(line[3:])))
        return out
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, _, value = raw.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(Source(uri, tuple(fields.get("suites", "").split()),
                              tuple(fields.get("components", "").split())))
    return out


def host_sources(etc: Path = APT_ETC) -> list[Source]:
    """Every ``deb`` source the host's apt is configured with."""
    sources: list[Source] = []
    main = etc / "sources.list"
    if main.is_file():
        sources += parse_sources(main.read_text(), deb822=False)
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_sources(path.read_text(), deb822=False)
            elif path.suffix == ".sources":
                sources += parse_sources(path.read_text(), deb822=True)
    return sources


def mirror_lines(suite: str, sources: list[Source]) -> list[str]:
    """The host's sources for ``suite``: the sources that list it (or a ``suite-*`` pocket such
    as ``bookworm-security``), rewritten for ``suite``. Pure."""
    lines = []
    for src in sources:
        for s in src.suites:
            if s == suite or s.startswith(f"{suite}-"):
                lines.append(src.line(s))
    if not lines:
        listed = sorted({s for src in sources for s in src.suites}) or ["none"]
        raise BuildError("rootfs", f"debian:{suite}: the host's apt sources have no {suite} "
                                   f"entry (they list: {', '.join(listed)})")
    return list(dict.fromkeys(lines))


def mmdebstrap_argv(suite: str, out: Path, lines: list[str], *,
                    include: tuple[str, ...] = BOOT_PACKAGES,
                    variant: str = "minbase") -> list[str]:
    """The mmdebstrap command that writes ``out`` (a tarball). Pure."""
    if not _SUITE_RE.match(suite):
        raise BuildError("rootfs", f"debian:{suite}: not a Debian suite name")
    argv = ["mmdebstrap", f"--variant={variant}", "--quiet"]
    if include:
        argv.append(f"--include={','.join(include)}")
    return [*argv, suite, str(out), *lines]


def bootstrap(suite: str, out: Path, *, include: tuple[str, ...] = BOOT_PACKAGES,
              etc: Path = APT_ETC) -> Path:
    """``debian:SUITE`` as a tarball at ``out`` (slow: downloads and unpacks packages)."""
    lines = mirror_lines(suite, host_sources(etc))
    proc.run(mmdebstrap_argv(suite, out, lines, include=include), timeout=1800)
    return out
