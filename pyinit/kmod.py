"""Kernel modules: the modules.dep closure and the loader PID 1 runs before networking.

The closure is pure (``parse_modules_dep``, ``module_name``, ``resolve``); the builder uses the same
functions to pick the modules it stages, so what is copied and what is loaded cannot drift apart.
``load`` is the only function with I/O: it reads ``modules.dep`` and ``/proc/modules`` and calls
``finit_module`` (``init_module`` for compressed modules) through :mod:`pyinit.syscalls`.

Written by hand rather than shelling out to ``modprobe``: the loader must work before anything
else is up, and busybox's modprobe cannot tell us which module failed and why.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyinit import syscalls
from pyinit.errors import ConfigError, PyinitError

log = logging.getLogger("pyinit.kmod")

COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")
_SUFFIXES = (*COMPRESSED_SUFFIXES, ".ko")


class ModuleLoadError(PyinitError):
    """The kernel refused a module (``str()`` names the module and the errno text)."""

    def __init__(self, module: str, path: str, err: int) -> None:
        self.module = module
        self.path = path
        self.errno = err
        super().__init__(f"module {module}: {errno.errorcode.get(err, str(err))} "
                         f"({os.strerror(err)}) loading {path}")


@dataclass(frozen=True)
class ModuleList:
    """A declarative module list: names in order, the subset that may be absent, and the
    subset staged but loaded only on demand (a filesystem when something mounts it)."""

    names: tuple[str, ...]
    optional: frozenset[str]
    on_demand: frozenset[str] = frozenset()


def module_name(path_or_name: str) -> str:
    """``kernel/drivers/ata/libahci.ko.zst`` -> ``libahci``; ``dm-mod`` -> ``dm_mod``."""
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """``modules.dep`` as {relative path: deps as listed}. Order of the file is kept."""
    deps: dict[str, tuple[str, ...]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, rest = line.partition(":")
        if not sep or not path.strip():
            raise ConfigError(f"modules.dep line {lineno}", f"expected 'path: deps', got {raw!r}")
        deps[path.strip()] = tuple(rest.split())
    return deps


def parse_modules_builtin(text: str) -> frozenset[str]:
    """Module names compiled into the kernel (``modules.builtin`` lists one path per line)."""
    return frozenset(module_name(line.strip()) for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def parse_module_list(text: str) -> ModuleList:
    """A module list file: one name per line, ``?name`` = optional, ``@name`` = staged but
    loaded only on demand (``@?name`` both), ``#`` starts a comment."""
    names: list[str] = []
    optional: set[str] = set()
    required: set[str] = set()
    on_demand: set[str] = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        marks = line[:len(line) - len(line.lstrip("?@"))]
        name = module_name(line.lstrip("?@").strip())
        if name not in names:
            names.append(name)
        (optional if "?" in marks else required).add(name)
        if "@" in marks:
            on_demand.add(name)
    # required anywhere wins
    return ModuleList(tuple(names), frozenset(optional - required), frozenset(on_demand))


def resolve(names: Iterable[str], deps: Mapping[str, tuple[str, ...]], *,
            optional: Collection[str] = frozenset(),
            builtin: Collection[str] = frozenset()) -> list[str]:
    """The dependency-first load order (relative paths) of ``names`` and all their deps.

    Each path appears once, before every module that needs it; the order is stable for the same
    input. Built-in names are satisfied without loading; missing optional names are skipped; a
    missing required name raises :class:`ConfigError` naming it.
    """
    by_name: dict[str, str] = {}
    for rel in deps:
        by_name.setdefault(module_name(rel), rel)
    builtin_names = {module_name(b) for b in builtin}
    optional_names = {module_name(o) for o in optional}

    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(path: str) -> None:
        if path in done:
            return
        if path in visiting:
            cycle = " -> ".join(module_name(p) for p in [*visiting, path])
            raise ConfigError("modules.dep", f"dependency cycle: {cycle}")
        visiting.append(path)
        # modules.dep lists the deepest dependency last; modprobe loads from the end.
        for dep in reversed(deps.get(path, ())):
            if module_name(dep) not in builtin_names:
                visit(dep)
        visiting.pop()
        done.add(path)
        order.append(path)

    for raw in names:
        name = module_name(raw)
        if name in builtin_names:
            continue
        found = by_name.get(name)
        if found is None:
            if name in optional_names:
                continue
            raise ConfigError(f"module {name}", "not found in modules.dep nor modules.builtin")
        visit(found)
    return order


@dataclass(frozen=True)
class AliasTable:
    """``modules.alias`` as (pattern, module) pairs in file order."""

    entries: tuple[tuple[str, str], ...]

    def modules(self) -> frozenset[str]:
        return frozenset(m for _, m in self.entries)

    @functools.cached_property
    def index(self) -> dict[str, list[tuple[int, str, str]]]:
        """(file position, glob, module) keyed by the glob's literal prefix (the text before its
        first ``*``, ``?`` or ``[``). A glob can only match an alias that starts with its literal
        prefix, so matching one alias looks up each of the alias's own prefixes: about 60 dict
        look-ups whatever the table's size. With every storage and NIC driver staged the table
        has ~6,000 lines; scanning them per alias was the cost when Python runs emulated at PID 1.
        """
        out: dict[str, list[tuple[int, str, str]]] = {}
        for position, (pattern, module) in enumerate(self.entries):
            if ":" in pattern:
                out.setdefault(_literal_prefix(pattern), []).append((position, pattern, module))
        return out

    def device_drivers(self) -> frozenset[str]:
        """Modules with a bus alias (``pci:…``, ``virtio:…``, ``scsi:…``): loaded only when a
        device matches. Filesystems (``fs-ext4``) and helpers (``crypto-crc32c``) have none."""
        return frozenset(m for pattern, m in self.entries
                         if ":" in pattern and not pattern.startswith(("devname:", "fs-")))


def _literal_prefix(pattern: str) -> str:
    """The text before a glob's first ``*``, ``?`` or ``[`` (str.find: a regex per line of a
    6,000-line table cost a tenth of a second at PID 1 under emulation)."""
    cut = len(pattern)
    for special in "*?[":
        found = pattern.find(special, 0, cut)
        if found >= 0:
            cut = found
    return pattern[:cut]


def parse_modules_alias(text: str) -> AliasTable:
    """``alias <pattern> <module>`` lines; comments and junk are skipped. Pure."""
    entries: list[tuple[str, str]] = []
    names: dict[str, str] = {}  # ~6,000 lines name ~1,000 modules: normalise each once
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            name = names.get(parts[2])
            if name is None:
                name = names[parts[2]] = module_name(parts[2])
            entries.append((parts[1], name))
    return AliasTable(tuple(entries))


def match_aliases(modaliases: Iterable[str], table: AliasTable) -> list[str]:
    """Modules whose alias glob matches any of ``modaliases``: per alias in table order, then
    in alias order, each module once. Pure."""
    out: list[str] = []
    index = table.index
    for alias in modaliases:
        if ":" not in alias:  # device modaliases always carry a bus prefix
            continue
        candidates = [hit for end in range(len(alias) + 1)
                      for hit in index.get(alias[:end], ())]
        for _position, pattern, module in sorted(candidates):
            if module not in out and fnmatch.fnmatchcase(alias, pattern):
                out.append(module)
    return out


def loaded_modules(text: str) -> frozenset[str]:
    """Module names from the text of ``/proc/modules`` (first column)."""
    return frozenset(line.split(maxsplit=1)[0] for line in text.splitlines() if line.strip())


def _decompress(path: Path) -> bytes:
    name = path.name
    if name.endswith(".ko.xz"):
        import lzma
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        import gzip
        return gzip.decompress(path.read_bytes())
    import zstandard
    with path.open("rb") as fh:
        data: bytes = zstandard.ZstdDecompressor().stream_reader(fh).read()
    return data


def _load_one(path: Path) -> None:
    if path.name.endswith(COMPRESSED_SUFFIXES):
        syscalls.init_module(_decompress(path))
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.finit_module(fd)
    finally:
        os.close(fd)


def load(names: Iterable[str], *, optional: Collection[str] = frozenset(),
         modules_root: Path = Path("/lib/modules"), release: str | None = None,
         proc_modules: Path = Path("/proc/modules")) -> list[str]:
    """Load ``names`` and their dependencies in order; return the names actually loaded.

    Modules already listed in ``/proc/modules`` are skipped and ``EEXIST`` counts as loaded.
    A module the kernel refuses raises :class:`ModuleLoadError`, except an ``optional`` one
    (``crc32c_intel`` answers ENODEV on a CPU without SSE4.2), which is logged and skipped.
    """
    optional_names = {module_name(o) for o in optional}
    base = modules_root / (release or os.uname().release)
    dep_file = base / "modules.dep"
    try:
        deps = parse_modules_dep(dep_file.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("modules", f"{dep_file} not found") from exc
    try:
        builtin = parse_modules_builtin((base / "modules.builtin").read_text())
    except FileNotFoundError:
        builtin = frozenset()
    try:
        already = loaded_modules(proc_modules.read_text())
    except FileNotFoundError:
        already = frozenset()

    loaded: list[str] = []
    for rel in resolve(names, deps, optional=optional_names, builtin=builtin):
        name = module_name(rel)
        if name in already:
            continue
        try:
            _load_one(base / rel)
        except FileNotFoundError as exc:
            raise ModuleLoadError(name, str(base / rel), errno.ENOENT) from exc
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue
            if name in optional_names:
                log.warning("optional module %s not loaded: %s", name, os.strerror(exc.errno or 0))
                continue
            raise ModuleLoadError(name, str(base / rel), exc.errno or 0) from exc
        log.debug("loaded module %s", name)
        loaded.append(name)
    return loaded
