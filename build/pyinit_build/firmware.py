"""Firmware files from Debian's ``non-free-firmware`` component, through a private apt.

The drivers of a real rack ask for firmware (bnx2x, qed, tg3's tigon files, qla2xxx, ice's DDP
package ...) that no build host has by chance. The builder asks Debian for exactly the files the
staged modules declare and are not found on the host:

1. a private apt tree under the cache (``sources.list``, lists, archives, an empty dpkg status):
   the host's own sources (the mirror it is configured with, read at run time, see
   :mod:`pyinit_build.golden.debian`) for the host's release, with the one component
   ``non-free-firmware``; the host's ``/etc/apt/sources.list*`` are never written;
2. ``apt-get update`` with the ``Contents-amd64`` index target on (as apt-file does), signed
   through the Release file like every other index;
3. each wanted name looked up in Contents (``lib/firmware/<name>``), the packages holding them
   fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``, once (cached by file
   name, which carries the version).

A package that cannot be fetched (no network, a 404 after the mirror moved on) is one warning
line: its files stay in ``firmware_missing`` and the build goes on. Parsing is pure and
unit-tested; the commands go through :func:`pyinit.proc.run`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyinit import proc
from pyinit.errors import PyinitError
from pyinit_build.golden import debian

log = logging.getLogger("pyinit_build.firmware")

COMPONENT = "non-free-firmware"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
OS_RELEASE = Path("/etc/os-release")
# The Contents index target, as apt-file configures it (apt.conf syntax).
CONTENTS_TARGET = """Acquire::IndexTargets::deb::Contents-deb {
    MetaKey "$(COMPONENT)/Contents-$(ARCHITECTURE)";
    ShortDescription "Contents-$(ARCHITECTURE)";
    Description "$(RELEASE)/$(COMPONENT) $(ARCHITECTURE) Contents (deb)";
};
"""
_FIRMWARE_PREFIXES = ("lib/firmware/", "usr/lib/firmware/")


class FirmwareFetchError(PyinitError):
    """The private apt could not be set up or updated (one line, the build goes on)."""


def codename(os_release: str) -> str | None:
    """``VERSION_CODENAME`` of an os-release file's text. Pure."""
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            return value.strip().strip('"') or None
    return None


def sources_list(suite: str, sources: Sequence[debian.Source], *,
                 keyring: Path | None = None) -> str:
    """The private ``sources.list``: the host's entries for ``suite`` (and its pockets such as
    ``bookworm-updates``) with the single component ``non-free-firmware``. Pure."""
    options = f"[signed-by={keyring}] " if keyring is not None else ""
    lines = []
    for line in debian.mirror_lines(suite, list(sources)):
        _deb, uri, pocket = line.split()[:3]
        lines.append(f"deb {options}{uri} {pocket} {COMPONENT}")
    return "".join(f"{line}\n" for line in dict.fromkeys(lines))


def parse_contents(text: str) -> dict[str, str]:
    """{firmware name (below lib/firmware): package} from a Contents index. Lines are
    ``<path><whitespace><section/package>[,<section/package>...]``; the first package wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        path, _, owners = line.rstrip().rpartition(" ")
        path = path.strip()
        for prefix in _FIRMWARE_PREFIXES:
            if path.startswith(prefix) and owners:
                name = path[len(prefix):]
                package = owners.split(",", 1)[0].rsplit("/", 1)[-1]
                out.setdefault(name, package)
    return out


def packages_for(names: Iterable[str], contents: Mapping[str, str]
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """({package: [names]}, names no package holds). Pure."""
    by_package: dict[str, list[str]] = {}
    unknown: list[str] = []
    for name in names:
        package = contents.get(name)
        if package is None:
            unknown.append(name)
        else:
            by_package.setdefault(package, []).append(name)
    return by_package, unknown


_DEB_NAME = re.compile(r"^(?P<package>[^_]+)_(?P<version>[^_]+)_[^_]+\.deb$")


def deb_version(deb: Path) -> str:
    """The version a ``apt-get download`` file name carries (``%3a`` is the epoch's colon)."""
    match = _DEB_NAME.match(deb.name)
    return match["version"].replace("%3a", ":") if match else "unknown"


@dataclass(frozen=True)
class Unpacked:
    package: str
    version: str
    root: Path                  # the unpacked package; its firmware lives under lib/firmware

    @property
    def firmware_dirs(self) -> list[Path]:
        return [self.root / p for p in _FIRMWARE_PREFIXES if (self.root / p).is_dir()]


@dataclass
class Fetched:
    packages: list[Unpacked] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)        # in no package of the component
    failed: dict[str, str] = field(default_factory=dict)    # package -> one-line reason


class PrivateApt:
    """apt with its own sources, lists, archives and status under ``root``."""

    def __init__(self, root: Path, sources: str) -> None:
        self.root = root
        self.sources = sources
        self.config = root / "apt.conf"

    def setup(self) -> None:
        for sub in ("lists/partial", "archives/partial", "cache", "sources.list.d",
                    "preferences.d", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        status = self.root / "status"
        if not status.exists():
            status.write_text("")
        sources = self.root / "sources.list"
        if not sources.exists() or sources.read_text() != self.sources:
            sources.write_text(self.sources)
            shutil.rmtree(self.root / "lists", ignore_errors=True)  # another mirror: refetch
            (self.root / "lists/partial").mkdir(parents=True)
        r = self.root
        self.config.write_text(
            f'Dir::Etc::SourceList "{r}/sources.list";\n'
            f'Dir::Etc::SourceParts "{r}/sources.list.d";\n'
            f'Dir::Etc::Preferences "{r}/preferences";\n'
            f'Dir::Etc::PreferencesParts "{r}/preferences.d";\n'
            f'Dir::State "{r}";\nDir::State::Lists "{r}/lists";\n'
            f'Dir::State::Status "{r}/status";\n'
            f'Dir::Cache "{r}/cache";\nDir::Cache::Archives "{r}/archives";\n'
            'APT::Sandbox::User "root";\n'
            + CONTENTS_TARGET)

    def run(self, argv: Sequence[str], cwd: Path | None = None) -> proc.Completed:
        env = {**os.environ, "APT_CONFIG": str(self.config), "LC_ALL": "C"}
        return proc.run(argv, env=env, cwd=cwd, timeout=600)

    def update(self) -> None:
        done = self.run(["apt-get", "update", "-q"])
        if any(line.startswith(("Err:", "W: Failed", "E:")) for line in
               (done.stdout + done.stderr).splitlines()):
            raise FirmwareFetchError(f"apt-get update ({COMPONENT}): "
                                     f"{_first_error(done.stdout + done.stderr)}")

    def contents(self) -> dict[str, str]:
        files = self.run(["apt-get", "indextargets", "--format", "$(FILENAME)",
                          "Identifier: Contents-deb"]).stdout.split()
        out: dict[str, str] = {}
        for path in files:
            if Path(path).exists():
                text = self.run(["/usr/lib/apt/apt-helper", "cat-file", path]).stdout
                for name, package in parse_contents(text).items():
                    out.setdefault(name, package)
        return out

    def download(self, package: str) -> Path:
        debs = self.root / "debs"
        cached = sorted(debs.glob(f"{package}_*.deb"))
        if cached:
            return cached[-1]
        self.run(["apt-get", "download", "-q", package], cwd=debs)
        cached = sorted(debs.glob(f"{package}_*.deb"))
        if not cached:
            raise FirmwareFetchError(f"apt-get download {package} left no .deb")
        return cached[-1]

    def unpack(self, deb: Path) -> Path:
        root = self.root / "unpacked" / deb.name.removesuffix(".deb")
        if (root / ".pyinit-unpacked").exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        proc.run(["dpkg-deb", "-x", str(deb), str(root)])
        (root / ".pyinit-unpacked").write_text(deb.name + "\n")
        return root


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("Err:", "E:", "W: Failed")):
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "failed"


def fetch(names: Sequence[str], cache: Path, *, etc: Path = debian.APT_ETC,
          os_release: Path = OS_RELEASE) -> Fetched:
    """The Debian packages holding ``names``, downloaded and unpacked under ``cache``.
    Raises :class:`FirmwareFetchError` (one line) when the private apt cannot be used at all;
    a single package that fails is recorded in ``Fetched.failed``."""
    result = Fetched()
    if not names:
        return result
    try:
        suite = codename(os_release.read_text())
    except OSError as exc:
        raise FirmwareFetchError(f"{os_release}: {exc.strerror}") from exc
    if suite is None:
        raise FirmwareFetchError(f"{os_release} names no VERSION_CODENAME")
    try:
        text = sources_list(suite, debian.host_sources(etc),
                            keyring=KEYRING if KEYRING.exists() else None)
    except PyinitError as exc:
        raise FirmwareFetchError(str(exc)) from exc
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds share the cache
        apt = PrivateApt(cache, text)
        apt.setup()
        try:
            contents = apt.contents()
            if not contents:  # first run, or the lists were dropped: fetch them
                apt.update()
                contents = apt.contents()
        except PyinitError as exc:
            raise FirmwareFetchError(str(exc).splitlines()[0]) from exc
        by_package, result.unknown = packages_for(names, contents)
        for package in sorted(by_package):
            try:
                try:
                    deb = apt.download(package)
                except PyinitError:  # the lists are older than the mirror: refresh once
                    apt.update()
                    deb = apt.download(package)
                root = apt.unpack(deb)
            except PyinitError as exc:
                result.failed[package] = str(exc).splitlines()[0]
                continue
            result.packages.append(Unpacked(package, deb_version(deb), root))
    return result
