"""Build the initramfs: kernel + frozen /init + busybox + libraries + modules -> newc cpio + zstd.

Steps, in order (each one logged):

1. preflight: every missing host tool named at once, before any work;
2. kernel: the Debian kernel package, downloaded and extracted once (``kernel.fetch``);
3. freeze: the PyInstaller onedir bundle of ``pyinit.init:main``, cached (``freeze.freeze``);
4. stage: the declarative ``LAYOUT`` (merged-/usr like Debian, so host library paths work as-is),
   the repo's ``rootfs/`` skeleton, the bundle under ``/usr/lib/pyinit``, ``/init``, busybox with a
   symlink per applet, the ELF closure of the bundle and of ``data/binaries.txt``, the modules of
   ``data/modules.txt`` with their modules.dep closure (``--drivers broad`` adds the storage and
   NIC trees, ``--drivers host`` keeps the drivers of the build host's devices: ``drivers.py``),
   the firmware files those modules declare, then ``depmod`` and ``ldconfig`` on the staged tree;
5. pack: the reproducible cpio (``cpio.py``), zstd-compressed (the Debian kernel has
   CONFIG_RD_ZSTD), ``vmlinuz`` beside it and ``manifest.json`` describing both.

Same inputs give the same initramfs sha256: paths sorted, owners 0, inodes renumbered, mtimes
clamped to SOURCE_DATE_EPOCH, fixed zstd parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from pyinit import coldplug, elf, kmod, proc
from pyinit.errors import PyinitError
from pyinit.keyring import check_keyring
from pyinit_build import coverage, cpio, drivers, firmware, freeze, kernel, preflight
from pyinit_build.errors import BuildError

log = logging.getLogger("pyinit_build.initramfs")

DATA = Path(__file__).resolve().parent / "data"
PACKAGE = Path(__file__).resolve().parent
# the initramfs skeleton: the checkout's rootfs/ (build/pyinit_build/rootfs links to it), shipped
# as package data in a wheel
ROOTFS = PACKAGE / "rootfs"


def _checkout() -> Path | None:
    """The source checkout this runs from (pyproject.toml two levels up), None when installed."""
    top = PACKAGE.parents[1]
    pyproject = top / "pyproject.toml"
    try:
        return top if 'name = "pyinit"' in pyproject.read_text() else None
    except OSError:
        return None


REPO = _checkout()


def default_out() -> Path:
    """``out/`` of the checkout, else ``./out``."""
    return (REPO if REPO is not None else Path.cwd()) / "out"


def default_cache() -> Path:
    """``.cache/`` of the checkout, else ``$XDG_CACHE_HOME/pyinit`` (``~/.cache/pyinit``)."""
    if REPO is not None:
        return REPO / ".cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyinit"


def pyinit_source() -> Path:
    """The directory holding the ``pyinit`` package the initramfs freezes (the checkout, or
    site-packages when installed)."""
    import pyinit

    return Path(pyinit.__file__).resolve().parents[1]
BUNDLE_DIR = "usr/lib/pyinit"          # inside the initramfs
MODULES_LIST_PATH = "etc/pyinit/modules"  # read by pyinit.init's modules step
KERNEL_ALIASES_PATH = "etc/pyinit/kernel-aliases"  # pyinit.init.KERNEL_ALIASES
CA_PATH = "etc/pyinit/ca.pem"             # pyinit.tls.BAKED_CA: trusted when no pyinit.ca=
KEYRING_PATH = "etc/pyinit/keyring.gpg"   # pyinit.keyring.BAKED: images must be signed by it
ZSTD_LEVEL = 19
MODULE_ZSTD_LEVEL = 19  # coldplug-only modules, each its own .ko.zst
# Used when neither SOURCE_DATE_EPOCH nor a git commit time is available (2024-01-01).
FALLBACK_EPOCH = 1704067200


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class DevNode:
    path: str
    major: int
    minor: int
    mode: int = 0o600


# The initramfs skeleton. Merged /usr like the Debian host, so the interpreter and library paths
# recorded in host binaries (/lib64/ld-linux-x86-64.so.2) resolve unchanged.
LAYOUT: tuple[Dir | Symlink, ...] = (
    Dir("usr/bin"), Dir("usr/sbin"), Dir("usr/lib"), Dir("usr/lib64"),
    Symlink("bin", "usr/bin"), Symlink("sbin", "usr/sbin"), Symlink("lib", "usr/lib"),
    Symlink("lib64", "usr/lib64"),
    Dir("dev"), Dir("proc", 0o555), Dir("sys", 0o555), Dir("run"), Dir("tmp", 0o1777),
    Dir("mnt"), Dir("newroot"), Dir("root", 0o700), Dir("etc"), Dir("etc/pyinit"),
    Dir("var"), Dir("var/tmp", 0o1777), Symlink("var/run", "../run"),
    Symlink("etc/mtab", "../proc/self/mounts"),
)
# The kernel opens /dev/console for PID 1's stdio before anything can mount devtmpfs
# (CONFIG_DEVTMPFS_MOUNT is off in Debian), so the archive carries these two nodes itself.
DEVICES: tuple[DevNode, ...] = (DevNode("dev/console", 5, 1, 0o600),
                                DevNode("dev/null", 1, 3, 0o666))

# /init is a symlink to the bundle's bootloader: it finds its _internal/ through the link without
# /proc, and re-executes itself (execve, same PID) with LD_LIBRARY_PATH set, so the frozen Python
# is PID 1 (checked in QEMU). The shell shim is kept as a fallback (BuildConfig.init_shim).
INIT_LINK = f"/{BUNDLE_DIR}/{freeze.NAME}"
INIT_SHIM = f'#!/bin/sh\nexec {INIT_LINK} "$@"\n'


@dataclass(frozen=True)
class BuildConfig:
    repo: Path | None = REPO                    # the checkout (None: installed), for the epoch
    out_dir: Path | None = None                 # default <repo>/out, else ./out
    cache_dir: Path | None = None               # default <repo>/.cache, else ~/.cache/pyinit
    kernel_deb: Path | None = None              # skip apt: use this linux-image .deb
    modules: bool = True
    modules_list: Path = DATA / "modules.txt"
    binaries_list: Path = DATA / "binaries.txt"
    extra_binaries: tuple[str, ...] = ()        # more host files, with their ELF closure
    entry: Path = freeze.DEFAULT_ENTRY
    bundle: Path | None = None                  # a ready onedir bundle (skips the freeze)
    busybox: Path = Path("/bin/busybox")
    source_date_epoch: int | None = None
    zstd_level: int = ZSTD_LEVEL
    init_shim: bool = False                     # /init as a busybox sh shim instead of a link
    ca: Path | None = None                      # PEM CA certificate(s) baked in as CA_PATH
    keyring: Path | None = None                 # OpenPGP public keys baked in as KEYRING_PATH
    drivers: str = drivers.DEFAULT_MODE         # broad | listed | host (drivers.MODES)
    host_sysfs: Path = Path("/sys")             # --drivers host: whose devices to match
    firmware_dirs: tuple[Path, ...] = (Path("/lib/firmware"),)  # + the kernel package's own
    firmware_source: str = "debian"             # + Debian's non-free-firmware | "host": dirs only

    @property
    def out(self) -> Path:
        return self.out_dir or default_out()

    @property
    def cache(self) -> Path:
        return self.cache_dir or default_cache()


@dataclass(frozen=True)
class FirmwareSet:
    """What the firmware stage staged, where from, and what it could not find."""

    staged: tuple[dict[str, str], ...] = ()     # {"file", "name", "package", "version"}
    missing: tuple[str, ...] = ()               # declared by a staged module, found nowhere
    fetch: dict[str, Any] = field(default_factory=dict)  # the Debian fetch, for the manifest


@dataclass(frozen=True)
class DriverSet:
    """What the modules and firmware stages chose, for the manifest."""

    mode: str = drivers.DEFAULT_MODE
    modules: tuple[str, ...] = ()           # every staged module, load order
    coldplug_only: int = 0                  # staged for modalias matches only (broad)
    host_matched: tuple[str, ...] = ()      # drivers matched under --host-sysfs (host)
    firmware: FirmwareSet = field(default_factory=lambda: FirmwareSet())
    covered: coverage.Coverage | None = None  # reference controllers (data/hardware.csv)


@dataclass(frozen=True)
class BuildResult:
    initramfs: Path
    vmlinuz: Path
    manifest_path: Path
    sha256: str
    manifest: dict[str, Any] = field(default_factory=dict)


def source_date_epoch(repo: Path | None, configured: int | None = None) -> int:
    """Explicit value, else $SOURCE_DATE_EPOCH, else the last commit's time, else a constant."""
    if configured is not None:
        return configured
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    if repo is None:
        return FALLBACK_EPOCH
    try:
        done = proc.run(["git", "-C", str(repo), "log", "-1", "--format=%ct"], check=False)
    except PyinitError:
        return FALLBACK_EPOCH
    value = done.stdout.strip()
    return int(value) if done.rc == 0 and value.isdigit() else FALLBACK_EPOCH


def parse_path_list(text: str) -> tuple[list[str], set[str]]:
    """A declarative list: one entry per line, ``?`` = optional, ``#`` comments.

    Returns (every entry in order, the optional ones)."""
    entries: list[str] = []
    optional: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        value = line.lstrip("?").strip()
        entries.append(value)
        if line.startswith("?"):
            optional.add(value)
    return entries, optional


# --- staging helpers -----------------------------------------------------------------------------

def _dest(staging: Path, vpath: str) -> Path:
    """Where ``vpath`` (absolute inside the image) lives in ``staging``, resolving the symlinks
    already staged *inside* staging (``lib`` -> ``usr/lib``) so nothing escapes to the host."""
    parent, name = os.path.split("/" + vpath.lstrip("/"))
    real_parent, _ = elf.resolve_links(parent, root=str(staging))
    directory = staging / real_parent.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


def _put_symlink(staging: Path, vpath: str, target: str) -> None:
    dest = _dest(staging, vpath)
    if dest.is_symlink():
        if os.readlink(dest) != target:
            raise BuildError("stage", f"/{vpath.lstrip('/')}: symlink to {os.readlink(dest)}, "
                                      f"wanted {target}")
        return
    if dest.exists():
        return  # a real file or directory wins over a link (e.g. a binary over an applet)
    dest.symlink_to(target)


def _put_file(staging: Path, vpath: str, source: Path, mode: int | None = None) -> None:
    dest = _dest(staging, vpath)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    shutil.copy2(source, dest, follow_symlinks=False)
    if mode is not None:
        dest.chmod(mode)


def apply_layout(staging: Path, layout: Iterable[Dir | Symlink]) -> None:
    for item in layout:
        if isinstance(item, Dir):
            path = _dest(staging, item.path)
            path.mkdir(exist_ok=True)
            path.chmod(item.mode)
        else:
            _put_symlink(staging, item.path, item.target)


def copy_skeleton(staging: Path, skeleton: Path) -> int:
    """The repo's ``rootfs/`` tree, file by file (directories and symlinks kept)."""
    count = 0
    if not skeleton.is_dir():
        return 0
    for path in sorted(skeleton.rglob("*")):
        vpath = str(path.relative_to(skeleton))
        if path.is_symlink():
            _put_symlink(staging, vpath, os.readlink(path))
        elif path.is_dir():
            _dest(staging, vpath).mkdir(exist_ok=True)
        else:
            _put_file(staging, vpath, path)
            count += 1
    return count


def stage_host_paths(staging: Path, paths: Iterable[str]) -> int:
    """Copy host paths (files and symlinks, as ``elf.closure`` returns them) to the same places."""
    count = 0
    for vpath in sorted(paths, key=lambda p: (p.count("/"), p)):
        st = os.lstat(vpath)
        if stat.S_ISLNK(st.st_mode):
            _put_symlink(staging, vpath, os.readlink(vpath))
        elif stat.S_ISREG(st.st_mode):
            _put_file(staging, vpath, Path(vpath))
            count += 1
        elif stat.S_ISDIR(st.st_mode):
            _dest(staging, vpath).mkdir(exist_ok=True)
    return count


def stage_busybox(staging: Path, busybox: Path) -> int:
    """``/bin/busybox`` and a symlink for every applet ``busybox --list-full`` names."""
    info = elf.read_info(busybox)
    if info is None or info.interp is not None:
        raise BuildError("busybox", f"{busybox} is not a static ELF binary "
                                    f"({preflight.install_hint('busybox')})")
    _put_file(staging, "bin/busybox", busybox, 0o755)
    applets = [a.strip() for a in proc.run([str(busybox), "--list-full"]).stdout.splitlines()
               if a.strip()]
    for applet in applets:
        if applet.lstrip("/") != "bin/busybox":
            _put_symlink(staging, applet, "/bin/busybox")
    return len(applets)


def module_order(kern: kernel.Kernel, names: kmod.ModuleList, extra: Sequence[str] = ()
                 ) -> list[str]:
    """The modules.dep closure (relative paths, load order) of ``names`` and ``extra``."""
    deps = kmod.parse_modules_dep((kern.modules_dir / "modules.dep").read_text())
    builtin_file = kern.modules_dir / "modules.builtin"
    builtin = kmod.parse_modules_builtin(builtin_file.read_text()) \
        if builtin_file.exists() else frozenset()
    return kmod.resolve([*names.names, *extra], deps, optional=names.optional, builtin=builtin)


def compressed(data: bytes, kind: str, compress: Callable[[bytes], bytes],
               cache: Path | None) -> bytes:
    """``compress(data)``, kept in ``cache/compressed`` by content hash and ``kind`` (format
    and level): the 400 modules and 100 firmware files of the default build cost ~40 s to
    compress at level 19 and rarely change. Deterministic either way."""
    if cache is None:
        return compress(data)
    path = cache / "compressed" / f"{hashlib.sha256(data).hexdigest()}.{kind}"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    out = compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(out)
    tmp.replace(path)
    return out


def stage_modules(staging: Path, kern: kernel.Kernel, names: kmod.ModuleList,
                  extra: Sequence[str] = (), *, compress_level: int = MODULE_ZSTD_LEVEL,
                  cache: Path | None = None) -> tuple[list[str], set[str]]:
    """The modules.dep closure of ``names`` plus modules.builtin*/order, then ``depmod``.

    ``extra`` (module paths or names, with their closure) are staged but not written to the list
    /init reads: the boot loads them only when a device's modalias matches (coldplug only).
    Those beyond the list's own closure are stored as ``.ko.zst``: they already are compressed,
    so the archive's zstd passes them through as raw blocks and the kernel's unpack copies them
    instead of inflating ~75 MB of drivers the machine mostly has no hardware for; the one that
    matches is inflated when it loads (``pyinit.kmod``). Returns (staged module names in load
    order, the names of the list's own closure)."""
    order = module_order(kern, names, extra)
    listed = set(module_order(kern, names))
    base = f"lib/modules/{kern.release}"
    def compress_module(rel: str) -> bytes:  # one compressor per call: not shared by threads
        cctx = zstandard.ZstdCompressor(level=compress_level, write_content_size=True,
                                        write_checksum=True, threads=0)
        return compressed((kern.modules_dir / rel).read_bytes(), f"zst{compress_level}",
                          cctx.compress, cache)

    packed = [rel for rel in order
              if rel not in listed and not rel.endswith(kmod.COMPRESSED_SUFFIXES)]
    # each module's bytes depend on it alone: compressed on every core (zstd drops the GIL)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        blobs = dict(zip(packed, pool.map(compress_module, packed), strict=True))
    for rel in order:
        if rel in blobs:
            dest = _dest(staging, f"{base}/{rel}.zst")
            dest.write_bytes(blobs[rel])
            dest.chmod(0o644)
        else:
            _put_file(staging, f"{base}/{rel}", kern.modules_dir / rel)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (kern.modules_dir / meta).exists():
            _put_file(staging, f"{base}/{meta}", kern.modules_dir / meta)
    proc.run(["depmod", "-b", str(staging), kern.release])
    by_name = {kmod.module_name(p) for p in order}
    present = [n for n in names.names if n in by_name]
    listing = ("# Written by pyinit_build: modules /init loads, in order (with their deps);\n"
               "# @name: staged, loaded on demand only.\n")
    _dest(staging, MODULES_LIST_PATH).write_text(listing + "".join(
        f"{'@' if n in names.on_demand else ''}{n}\n" for n in present))
    return [kmod.module_name(p) for p in order], {kmod.module_name(p) for p in listed}


def kernel_aliases(kern: kernel.Kernel) -> kmod.AliasTable:
    """The full kernel's ``modules.alias`` (every module of the package)."""
    alias_file = kern.modules_dir / "modules.alias"
    return kmod.parse_modules_alias(alias_file.read_text() if alias_file.exists() else "")


def select_modules(cfg: BuildConfig, kern: kernel.Kernel, names: kmod.ModuleList
                   ) -> tuple[kmod.ModuleList, list[str], list[str]]:
    """(the list /init reads, extra coldplug-only module paths, host matches) for ``cfg.drivers``.
    ``listed`` returns ``names`` untouched, so the default build is what it always was."""
    if cfg.drivers == "listed":
        return names, [], []
    deps = kmod.parse_modules_dep((kern.modules_dir / "modules.dep").read_text())
    broad = drivers.tree_modules(deps)
    if cfg.drivers == "broad":
        return names, broad, []
    table = kernel_aliases(kern)
    modaliases = coldplug.scan_modaliases(cfg.host_sysfs)
    if not modaliases:
        raise BuildError("drivers", f"--host-sysfs {cfg.host_sysfs}: no modalias under "
                                    f"{cfg.host_sysfs / 'devices'} (not a sysfs tree?)")
    matched = drivers.host_modules(modaliases, table,
                                   [*names.names, *(kmod.module_name(p) for p in broad)])
    log.info("initramfs: host-only: %d modaliases under %s match %d drivers: %s",
             len(modaliases), cfg.host_sysfs, len(matched), " ".join(matched) or "none")
    return drivers.host_list(names, table.device_drivers(), matched), [], matched


def declared_firmware(kern: kernel.Kernel, modules: Iterable[str]) -> list[str]:
    """The firmware names the ``modules`` declare (``.modinfo`` ``firmware=``), first-seen."""
    by_name = {kmod.module_name(rel): rel for rel in
               kmod.parse_modules_dep((kern.modules_dir / "modules.dep").read_text())}
    wanted: list[str] = []
    for name in modules:
        path = kern.modules_dir / by_name[name]
        try:
            declared = drivers.firmware_names(drivers.read_module(path))
        except drivers.ModinfoError as exc:
            raise BuildError("firmware", f"{path}: {exc}") from exc
        wanted += [f for f in declared if f not in wanted]
    return wanted


def stage_firmware(staging: Path, kern: kernel.Kernel, modules: Iterable[str],
                   dirs: Sequence[Path], *, source: str = "debian",
                   cache: Path | None = None) -> FirmwareSet:
    """Stage the firmware files the staged ``modules`` declare into ``lib/firmware``, where the
    kernel's direct loader reads them (no user-space helper): from ``dirs`` first (the host's,
    an operator's), then (``source="debian"``) from Debian's non-free-firmware packages
    (``firmware.py``). A plain file is stored ``.xz`` (CRC32) when the kernel reads that: the
    archive's zstd passes it through and the kernel inflates it only when a driver asks."""
    suffixes = drivers.firmware_suffixes(drivers.parse_kconfig(kern.config.read_text()))
    wanted = sorted(declared_firmware(kern, modules))
    origin: dict[Path, tuple[str, str]] = {d: ("host", str(d)) for d in dirs}
    found = {n: drivers.find_firmware(n, dirs, suffixes) for n in wanted}
    fetch_info: dict[str, Any] = {"source": source}
    absent = [n for n, f in found.items() if f is None]
    if source == "debian" and absent:
        try:
            got = firmware.fetch(absent, (cache or default_cache()) / "firmware")
        except PyinitError as exc:
            log.warning("initramfs: firmware: not fetched from Debian's %s: %s "
                        "(the build goes on; manifest.json firmware_missing)",
                        firmware.COMPONENT, exc)
            fetch_info["error"] = str(exc)
        else:
            for pkg in got.packages:
                for d in pkg.firmware_dirs:
                    origin[d] = (pkg.package, pkg.version)
            pkg_dirs = [d for pkg in got.packages for d in pkg.firmware_dirs]
            for name in absent:
                found[name] = drivers.find_firmware(name, pkg_dirs, suffixes)
            for package, reason in got.failed.items():
                log.warning("initramfs: firmware: %s: %s", package, reason)
            fetch_info.update(packages={p.package: p.version for p in got.packages},
                              failed=got.failed, in_no_package=len(got.unknown))
    staged: list[dict[str, str]] = []
    missing: list[str] = []
    for fw_name in wanted:
        fw = found[fw_name]
        if fw is None:
            missing.append(fw_name)
            continue
        dest_name, data = drivers.staged_form(
            fw, suffixes, xz=lambda raw: compressed(raw, "xz", drivers.xz_crc32, cache))
        dest = _dest(staging, f"{drivers.FIRMWARE_ROOT}/{dest_name}")
        dest.write_bytes(data)
        dest.chmod(0o644)
        package, version = next((origin[d] for d in origin
                                 if fw.source.is_relative_to(d)), ("host", ""))
        staged.append({"file": dest_name, "name": fw_name, "package": package,
                       "version": version})
    return FirmwareSet(tuple(staged), tuple(missing), fetch_info)


def bundle_elf_files(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.rglob("*")
                  if p.is_file() and not p.is_symlink() and elf.is_elf_file(p))


def library_closure(bundle: Path | None, binaries: Sequence[str]) -> set[str]:
    """Host paths the bundle and ``binaries`` need, minus what the bundle already carries.

    The bootloader starts with the default library path (it needs the host's libz.so.1), then
    re-executes itself with ``LD_LIBRARY_PATH=<bundle>/_internal``: everything else in the bundle
    resolves against ``_internal`` first.
    """
    try:
        paths = elf.closure(list(binaries))
        if bundle is not None:
            bootloader = bundle / freeze.NAME
            paths |= elf.closure([str(bootloader)])
            inner = [str(p) for p in bundle_elf_files(bundle) if p != bootloader]
            paths |= elf.closure(inner, [str(bundle / "_internal"), *elf.DEFAULT_SEARCH_DIRS])
    except (elf.LibraryNotFound, elf.ElfError, FileNotFoundError) as exc:
        raise BuildError("libraries", str(exc)) from exc
    if bundle is not None:
        inside = str(bundle.resolve()) + "/"
        paths = {p for p in paths if not (p + "/").startswith(inside)}
    return paths


# --- pack ----------------------------------------------------------------------------------------

def archive_entries(staging: Path, devices: Iterable[DevNode] = DEVICES) -> list[cpio.Entry]:
    entries = [e for e in cpio.entries_from_tree(staging)
               if e.path not in {d.path for d in devices}]
    entries += [cpio.chardev(d.path, d.major, d.minor, d.mode) for d in devices]
    return entries


def compress(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """zstd with fixed parameters (content size, checksum) on every core: same in, same out.
    zstd's multi-threaded mode cuts the input into jobs by its parameters, not by the number of
    workers, so the bytes do not depend on the machine (1, 2 and 4 workers gave the same
    archive here); the default build's 83 MB packed in 20 s on 2 cores against 51 s
    single-threaded."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True,
                                    threads=-1)
    return cctx.compress(data)


def _sha256(path_or_data: Path | bytes) -> str:
    if isinstance(path_or_data, bytes):
        return hashlib.sha256(path_or_data).hexdigest()
    h = hashlib.sha256()
    with path_or_data.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


_PEM_CERT_RE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")


def read_ca(path: Path) -> bytes:
    """The PEM certificates of ``path`` (only those blocks, normalised), each checked by
    OpenSSL, for ``/etc/pyinit/ca.pem``. BuildError when the file is missing or holds none,
    so a wrong file fails the build rather than every machine's first TLS handshake."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError("ca", f"--ca {path}: {exc.strerror or exc}") from exc
    blocks = [m.group(0).replace(b"\r\n", b"\n") for m in _PEM_CERT_RE.finditer(data)]
    if not blocks:
        raise BuildError("ca", f"--ca {path}: no PEM '-----BEGIN CERTIFICATE-----' block "
                               "(a private key or a DER file? convert with "
                               "`openssl x509 -in ca.der -inform DER -out ca.pem`)")
    for i, block in enumerate(blocks, 1):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=block.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            raise BuildError("ca", f"--ca {path}: certificate {i} of {len(blocks)} does not "
                                   f"parse: {getattr(exc, 'reason', None) or exc}") from exc
    return b"\n".join(blocks) + b"\n"


def read_keyring(path: Path) -> bytes:
    """The binary keyring gpgv reads, from an armoured or binary export (``gpg --export``);
    BuildError when the file is missing or holds no public key, so a wrong file fails the
    build rather than every signed image."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError("keyring", f"--keyring {path}: {exc.strerror or exc}") from exc
    try:
        binary, count = check_keyring(data)
    except ValueError as exc:
        raise BuildError("keyring", f"--keyring {path}: not an OpenPGP keyring: {exc}") from exc
    log.info("initramfs: keyring %s: %d public key(s)", path, count)
    return binary


def stage(staging: Path, cfg: BuildConfig, kern: kernel.Kernel, bundle_dir: Path
          ) -> tuple[DriverSet, int]:
    """Fill ``staging`` with the image tree. Returns (modules and firmware staged, busybox
    applet count)."""
    staging.chmod(0o755)
    apply_layout(staging, LAYOUT)
    copy_skeleton(staging, ROOTFS)
    shutil.copytree(bundle_dir, _dest(staging, BUNDLE_DIR), symlinks=True)
    if cfg.ca is not None:
        _dest(staging, CA_PATH).write_bytes(read_ca(cfg.ca))
    if cfg.keyring is not None:
        _dest(staging, KEYRING_PATH).write_bytes(read_keyring(cfg.keyring))
    if cfg.init_shim:
        (staging / "init").write_text(INIT_SHIM)
        (staging / "init").chmod(0o755)
    else:
        (staging / "init").symlink_to(INIT_LINK)

    listed, optional = parse_path_list(cfg.binaries_list.read_text()) \
        if cfg.binaries_list.exists() else ([], set())
    binaries = [b for b in [*listed, *cfg.extra_binaries]
                if os.path.lexists(b) or b not in optional]
    missing = [b for b in binaries if not os.path.lexists(b)]
    if missing:
        raise BuildError("binaries", f"not on this host: {', '.join(missing)}")
    stage_host_paths(staging, library_closure(bundle_dir, binaries))
    applets = stage_busybox(staging, cfg.busybox)

    chosen = DriverSet(mode=cfg.drivers)
    if cfg.modules:
        names = kmod.parse_module_list(cfg.modules_list.read_text())
        try:
            names, extra, matched = select_modules(cfg, kern, names)
            modules, listed_closure = stage_modules(staging, kern, names, extra,
                                                    cache=cfg.cache)
            _dest(staging, KERNEL_ALIASES_PATH).write_text(drivers.left_out_aliases(
                kernel_aliases(kern), modules))
        except PyinitError as exc:
            raise BuildError("modules", str(exc)) from exc
        dirs = [d for d in (*cfg.firmware_dirs, kern.root / drivers.FIRMWARE_ROOT)
                if d.is_dir()]
        fw = stage_firmware(staging, kern, modules, dirs, source=cfg.firmware_source,
                            cache=cfg.cache)
        if fw.missing:
            log.warning("initramfs: firmware: %d file(s) declared by staged modules found "
                        "neither in %s nor in Debian's %s (manifest.json firmware_missing): "
                        "%s%s", len(fw.missing),
                        " ".join(str(d) for d in dirs) or "no firmware directory",
                        firmware.COMPONENT, " ".join(fw.missing[:5]),
                        " ..." if len(fw.missing) > 5 else "")
        staged_aliases = staging / "lib/modules" / kern.release / "modules.alias"
        covered = coverage.check(coverage.reference(), kmod.parse_modules_alias(
            staged_aliases.read_text() if staged_aliases.exists() else ""))
        log.info("initramfs: coverage: %s%s", covered.summary(),
                 "; missing: " + ", ".join(f"{c.ids} {c.driver}" for c, _ in covered.missing)
                 if covered.missing else "")
        chosen = DriverSet(mode=cfg.drivers, covered=covered, modules=tuple(modules),
                           coldplug_only=sum(1 for m in modules if m not in listed_closure),
                           host_matched=tuple(matched), firmware=fw)
    if (staging / "usr/sbin/ldconfig").exists():
        # /etc/ld.so.cache for the staged libraries; -X: do not touch the staged symlinks.
        proc.run(["ldconfig", "-X", "-r", str(staging)])
    return chosen, applets


def build(cfg: BuildConfig) -> BuildResult:
    """Build ``vmlinuz``, ``initramfs.cpio.zst`` and ``manifest.json`` into ``cfg.out``."""
    started = time.monotonic()
    tools = [*preflight.BUILD_TOOLS]
    if cfg.kernel_deb is None:
        tools += preflight.KERNEL_FETCH_TOOLS
    if cfg.bundle is not None:
        tools.remove("python:PyInstaller")
    if not cfg.modules:
        tools.remove("depmod")
    preflight.check(tools)
    if cfg.ca is not None:
        read_ca(cfg.ca)  # before any work: a wrong --ca fails at once
    if cfg.keyring is not None:
        read_keyring(cfg.keyring)  # likewise --keyring
    if cfg.drivers not in drivers.MODES:
        raise BuildError("drivers", f"--drivers {cfg.drivers!r}: expected one of "
                                    f"{', '.join(drivers.MODES)}")
    epoch = source_date_epoch(cfg.repo, cfg.source_date_epoch)
    cfg.cache.mkdir(parents=True, exist_ok=True)

    log.info("initramfs: kernel")
    kern = kernel.fetch(cfg.cache / "kernel", kernel_deb=cfg.kernel_deb)

    log.info("initramfs: freeze")
    if cfg.bundle is not None:
        bundle_dir, freeze_key, freeze_note = cfg.bundle.resolve(), None, "given"
    else:
        frozen = freeze.freeze(cfg.cache, repo=pyinit_source(), entry=cfg.entry)
        bundle_dir, freeze_key = frozen.directory, frozen.key
        freeze_note = "cached" if frozen.cached else f"built in {frozen.seconds:.1f} s"
    if not (bundle_dir / freeze.NAME).is_file():
        raise BuildError("freeze", f"{bundle_dir} has no {freeze.NAME} executable")

    log.info("initramfs: stage")
    with tempfile.TemporaryDirectory(prefix="staging-", dir=cfg.cache) as tmp:
        chosen, applets = stage(Path(tmp), cfg, kern, bundle_dir)
        log.info("initramfs: pack")
        entries = archive_entries(Path(tmp))
    raw = cpio.pack(entries, epoch=epoch)
    data = compress(raw, cfg.zstd_level)

    cfg.out.mkdir(parents=True, exist_ok=True)
    initramfs = cfg.out / "initramfs.cpio.zst"
    vmlinuz = cfg.out / "vmlinuz"
    _write_atomic(initramfs, data)
    if not vmlinuz.exists() or _sha256(vmlinuz) != _sha256(kern.vmlinuz):
        shutil.copyfile(kern.vmlinuz, vmlinuz)
    sha = _sha256(data)
    manifest: dict[str, Any] = {
        "kernel": {"release": kern.release, "package": kern.package, "version": kern.version,
                   "deb": kern.deb.name, "vmlinuz_sha256": _sha256(vmlinuz),
                   "vmlinuz_bytes": vmlinuz.stat().st_size},
        "initramfs": {"file": initramfs.name, "sha256": sha, "bytes_compressed": len(data),
                      "bytes_uncompressed": len(raw), "cpio_sha256": _sha256(raw),
                      "files": sum(1 for e in entries if e.kind == "file"),
                      "entries": len(entries), "compression": f"zstd-{cfg.zstd_level}"},
        "modules": list(chosen.modules),
        "drivers": {"mode": chosen.mode, "modules": len(chosen.modules),
                    "coldplug_only": chosen.coldplug_only,
                    "host_matched": list(chosen.host_matched)},
        "coverage": chosen.covered.manifest() if chosen.covered is not None else None,
        "firmware": list(chosen.firmware.staged),
        "firmware_missing": list(chosen.firmware.missing),
        "firmware_fetch": chosen.firmware.fetch,
        "busybox_applets": applets,
        "source_date_epoch": epoch,
        "freeze_key": freeze_key,
    }
    if cfg.ca is not None:
        manifest["ca_sha256"] = _sha256(read_ca(cfg.ca))
    if cfg.keyring is not None:
        manifest["keyring_sha256"] = _sha256(read_keyring(cfg.keyring))
    manifest_path = cfg.out / "manifest.json"
    _write_atomic(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    log.info("initramfs: %s: %d bytes (%d uncompressed), sha256 %s; %.1f s, freeze %s",
             initramfs, len(data), len(raw), sha, time.monotonic() - started, freeze_note)
    return BuildResult(initramfs, vmlinuz, manifest_path, sha, manifest)


# --- CLI -----------------------------------------------------------------------------------------

def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``initramfs`` subcommand to an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "initramfs", help="build out/vmlinuz, out/initramfs.cpio.zst and out/manifest.json",
        description="Build the initramfs: the Debian kernel (downloaded once), the frozen "
                    "pyinit /init (cached by input hash), busybox, shared libraries and kernel "
                    "modules, packed as a reproducible newc cpio compressed with zstd. "
                    "Same inputs give the same sha256.")
    p.add_argument("--out", type=Path, default=None, help="output directory (default <repo>/out)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache for the kernel, the freeze and staging (default <repo>/.cache)")
    p.add_argument("--kernel-deb", type=Path, default=None,
                   help="use this linux-image .deb instead of apt's linux-image-amd64")
    p.add_argument("--no-modules", action="store_true", help="stage no kernel modules")
    p.add_argument("--modules-list", type=Path, default=DATA / "modules.txt",
                   help="module list: one name per line, '?name' optional (default: %(default)s)")
    p.add_argument("--extra-binary", action="append", default=[], metavar="PATH",
                   help="host binary or library to add with its libraries (repeatable)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="use this PyInstaller onedir bundle instead of freezing")
    p.add_argument("--entry", type=Path, default=freeze.DEFAULT_ENTRY,
                   help="PyInstaller entry script (default: %(default)s)")
    p.add_argument("--source-date-epoch", type=int, default=None,
                   help="mtime clamp (default: $SOURCE_DATE_EPOCH, else the last commit time)")
    p.add_argument("--zstd-level", type=int, default=ZSTD_LEVEL,
                   help="zstd level (default: %(default)s)")
    p.add_argument("--ca", type=Path, default=None, metavar="FILE",
                   help=f"bake PEM CA certificate(s) in as /{CA_PATH}: pyinit then verifies an "
                        "https:// BOOTYURL=/MYURL= against them unless pyinit.ca= overrides "
                        "(docs/tls.md; default: none, certifi's public roots)")
    p.add_argument("--keyring", type=Path, default=None, metavar="FILE",
                   help=f"bake OpenPGP public keys (armoured or binary, `gpg --export KEY`) in "
                        f"as /{KEYRING_PATH}: every writeImage must then be signed by one of "
                        "them, and pyinit.keyring= may not replace it (docs/security.md "
                        "\"The signature chain\"; default: none)")
    p.add_argument("--drivers", choices=drivers.MODES, default=drivers.DEFAULT_MODE,
                   help="driver set: 'broad' = the module list plus every storage and NIC driver "
                        "of the kernel, loaded only when a device matches (a real rack); "
                        "'listed' = the module list only (lean: QEMU and common NICs); "
                        "'host' = the list's non-drivers plus the drivers of this host's devices "
                        "(docs/initramfs.md; default: %(default)s)")
    p.add_argument("--host-sysfs", type=Path, default=Path("/sys"), metavar="DIR",
                   help="--drivers host: the sysfs tree whose devices/**/modalias are matched "
                        "(default: %(default)s)")
    p.add_argument("--firmware", choices=("debian", "host"), default="debian",
                   help="where the firmware the staged drivers ask for comes from: 'debian' = "
                        "the --firmware-dir directories, then Debian's non-free-firmware "
                        "packages from the host's own mirror (a private apt under --cache; the "
                        "host's apt sources are not changed); 'host' = the directories only "
                        "(offline builds). Default: %(default)s")
    p.add_argument("--firmware-dir", type=Path, action="append", default=None, metavar="DIR",
                   help="where to find the firmware files staged modules declare (repeatable; "
                        "default /lib/firmware; the kernel package's lib/firmware is searched "
                        "too); missing files are listed in manifest.json, not an error")
    p.set_defaults(func=_main)
    return p


def _main(args: argparse.Namespace) -> int:
    cfg = BuildConfig(out_dir=args.out, cache_dir=args.cache, kernel_deb=args.kernel_deb,
                      modules=not args.no_modules, modules_list=args.modules_list,
                      extra_binaries=tuple(args.extra_binary), bundle=args.bundle,
                      entry=args.entry, source_date_epoch=args.source_date_epoch,
                      zstd_level=args.zstd_level, ca=args.ca, keyring=args.keyring,
                      drivers=args.drivers,
                      host_sysfs=args.host_sysfs,
                      firmware_dirs=tuple(args.firmware_dir or (Path("/lib/firmware"),)),
                      firmware_source=args.firmware)
    try:
        result = build(cfg)
    except PyinitError as exc:
        log.error("initramfs: %s", exc)
        return 1
    info = result.manifest["initramfs"]
    print(f"{result.initramfs}: {info['bytes_compressed']} bytes "
          f"({info['bytes_uncompressed']} uncompressed, {info['files']} files), "
          f"sha256 {result.sha256}")
    print(f"{result.vmlinuz}: {result.manifest['kernel']['package']} "
          f"{result.manifest['kernel']['version']}")
    cov = result.manifest.get("coverage")
    if cov:
        print(f"drivers {result.manifest['drivers']['mode']}: {cov['covered']}/"
              f"{cov['controllers']} reference controllers ({cov['percent']:.1f} %)"
              + (f"; missing: {', '.join(cov['missing'])}" if cov["missing"] else ""))
    return 0
