"""Freeze the runtime (``pyinit.init:main``) with PyInstaller into a onedir bundle.

Onedir, not onefile: a onefile executable unpacks itself and runs the program as a *child*, so the
Python code would not be PID 1. The bundle is ``<dir>/pyinit`` (the bootloader) plus
``<dir>/_internal`` (libpython, extension modules, the PYZ archive).

pyroute2 imports most of its modules dynamically, so every submodule is collected (its test
fixtures excepted); modules /init never uses are excluded. The output is cached under a key hashed
from every input (runtime sources, entry script, PyInstaller arguments, installed distributions,
the interpreter), so a second build with the same inputs is instant. ``SOURCE_DATE_EPOCH`` and
``PYTHONHASHSEED=0`` make the freeze as reproducible as PyInstaller allows.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit_build.errors import BuildError

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_ENTRY = DATA / "init_entry.py"
NAME = "pyinit"
# Bump to invalidate every cached freeze when this file changes how bundles are made.
_CACHE_VERSION = "1"
# SOURCE_DATE_EPOCH for the freeze itself: fixed, so a new commit does not invalidate the cache
# (the cpio clamps file mtimes to the build's own epoch anyway). Zip cannot store times before
# 1980, and PyInstaller writes zip archives, hence 1980-01-01.
FREEZE_EPOCH = 315532800

# Interpreter options baked into the bundle. hash_seed: as PID 1, before /dev is mounted, the
# interpreter cannot read /dev/urandom and getrandom() would block on an uninitialised pool;
# Python aborts ("failed to get random numbers") unless the hash seed is fixed. u: unbuffered
# console output, so no line is lost when PID 1 reboots or panics.
PYTHON_OPTIONS = ("hash_seed=0", "u")
# Imported dynamically (importlib / plugin tables), invisible to PyInstaller's analysis.
COLLECT_SUBMODULES = ("pyroute2",)
HIDDEN_IMPORTS = ("pyroute2.dhcp", "pyroute2.dhcp.client", "pyroute2.iproute.linux",
                  "pyroute2.netlink.rtnl.ifinfmsg", "pyroute2.ndb.main")
# Never used by /init: GUIs, test frameworks, packaging and REPL tooling. Not excludable although
# they look unused: unittest (pyroute2.netlink.rtnl.iprsocket imports unittest.mock) and sqlite3
# (`import pyroute2` loads the NDB schema module, which imports it).
EXCLUDES = (
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "doctest", "pydoc", "pydoc_data",
    "test", "tests", "distutils", "setuptools", "pkg_resources", "lib2to3", "ensurepip", "venv",
    "dbm", "curses", "_curses", "xmlrpc", "pdb", "pytest", "_pytest", "mypy", "ruff",
    "PyInstaller", "pyinit_build", "pyinit_server", "pyinit_qemu", "pyroute2.fixtures",
    # zstandard's CFFI backend (1 MB) duplicates the C backend it prefers.
    "zstandard.backend_cffi", "zstandard._cffi", "_cffi_backend", "cffi",
)


@dataclass(frozen=True)
class Bundle:
    directory: Path      # holds the bootloader executable and _internal/
    executable: Path
    key: str
    cached: bool
    seconds: float


def pyinstaller_args(entry: Path, *, repo: Path, dist: Path, work: Path) -> list[str]:
    """The PyInstaller command line (pure)."""
    args = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--onedir",
            "--name", NAME, "--strip", "--log-level", "WARN",
            "--distpath", str(dist), "--workpath", str(work), "--specpath", str(work),
            "--paths", str(repo)]
    for option in PYTHON_OPTIONS:
        args += ["--python-option", option]
    for package in COLLECT_SUBMODULES:
        args += ["--collect-submodules", package]
    for module in HIDDEN_IMPORTS:
        args += ["--hidden-import", module]
    for module in EXCLUDES:
        args += ["--exclude-module", module]
    return [*args, str(entry)]


def _installed() -> list[str]:
    names = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
             if d.metadata["Name"]}
    return sorted(names, key=str.lower)


def cache_key(entry: Path, repo: Path, *, epoch: int = FREEZE_EPOCH) -> str:
    """sha256 over every input of a freeze."""
    h = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    feed("version", _CACHE_VERSION.encode())
    feed("python", sys.version.encode())
    feed("epoch", str(epoch).encode())
    feed("args", "\0".join(pyinstaller_args(Path("ENTRY"), repo=Path("REPO"), dist=Path("D"),
                                            work=Path("W"))[1:]).encode())
    feed("entry", entry.read_bytes())
    for source in sorted((repo / "pyinit").rglob("*.py")):
        feed(str(source.relative_to(repo)), source.read_bytes())
    feed("installed", "\n".join(_installed()).encode())
    return h.hexdigest()


def tree_digest(directory: Path) -> str:
    """sha256 over the relative paths, modes and contents of a tree (to compare two freezes)."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            h.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            h.update(f"F {rel} {path.stat().st_mode & 0o777:o} ".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            h.update(f"D {rel}\n".encode())
    return h.hexdigest()


def run_pyinstaller(entry: Path, out: Path, *, repo: Path, epoch: int = FREEZE_EPOCH) -> Path:
    """One uncached freeze into ``out`` (replaced); returns the bundle directory."""
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True)
    dist = work / "dist"
    env = {"SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc.run(pyinstaller_args(entry, repo=repo, dist=dist, work=work / "build"), env=env,
             cwd=work)
    built = dist / NAME
    if not (built / NAME).is_file():
        raise BuildError("freeze", f"PyInstaller produced no {built / NAME}")
    built.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def freeze(cache_dir: Path, *, repo: Path, entry: Path = DEFAULT_ENTRY, epoch: int = FREEZE_EPOCH,
           use_cache: bool = True, keep: int = 3) -> Bundle:
    """The frozen bundle for ``entry``, from the cache when every input is unchanged.

    ``keep`` old bundles are kept (newest first) so switching branches back and forth is cheap.
    """
    started = time.monotonic()
    key = cache_key(entry, repo, epoch=epoch)
    root = cache_dir / "freeze"
    target = root / key[:20]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds share the cache
        if use_cache and (target / NAME).is_file():
            target.touch()
            return Bundle(target, target / NAME, key, True, time.monotonic() - started)
        run_pyinstaller(entry, target, repo=repo, epoch=epoch)
        _prune(root, target, keep)
    return Bundle(target, target / NAME, key, False, time.monotonic() - started)


def _prune(root: Path, target: Path, keep: int) -> None:
    olds = sorted((p for p in root.iterdir() if p.is_dir() and p != target
                   and not p.name.endswith(".work")), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    for old in olds[max(keep - 1, 0):]:
        shutil.rmtree(old, ignore_errors=True)
