"""Machine files: ``machines/<mac>.yaml|.yml|.json`` and ``machines/default.*``, read on demand.

One file per machine, named by its MAC (dashes or colons, any case: ``52-54-00-12-34-56.yaml``,
``52:54:00:AB:CD:EF.json``), plus an optional ``default.yaml``/``.yml``/``.json`` for any other
MAC. Files with other names (and hidden files: editor swap files) are ignored. JSON files are
read as JSON, ``.yaml``/``.yml`` files as YAML (a safe loader, libyaml's where available; a JSON
file is valid YAML too).

Reloading: the directory is listed once and again only when it changed (its mtime moves when a file
is created, removed or renamed), and a file is parsed again only when its ``(inode, size, mtime)``
changed, so an edit, a new file or a removal takes effect on the next request without a restart, and
a request costs two ``stat`` calls, also with 10 000 files. An edit that keeps the size and lands
within the file system's timestamp granularity of the previous one can go unnoticed until the next
change; editors and ``mv`` replace the inode and are always seen.

What a machine file holds: a BOOTy action object (``action``, ``sourceImage``, ...; see
docs/action.md), plus optionally ``pxe:``, a mapping of server-side settings that is never sent
to the machine (``pxe.cmdline``: extra kernel arguments for the iPXE script, a string or a list).
The action is validated with :func:`pyinit.action.parse_action` on load; a failure is a warning
(logged once per change, shown in ``/api/machines``), not a refusal: the machine itself refuses
a bad action with one line naming the field, and serving it lets the operator see that on the
console, exactly as plunder would.

Errors that are the server's to report (a file that cannot be parsed, a top level that is not a
mapping, two files for one MAC) are :class:`MachineError` with a ``file:line: message`` text;
they concern that MAC (or, for ``default.*``, the MACs without their own file) only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyinit import macaddr
from pyinit.action import parse_action
from pyinit.errors import ConfigError

log = logging.getLogger("pyinit_server")

SUFFIXES = (".json", ".yaml", ".yml")
DEFAULT = "default"
# libyaml's safe loader where PyYAML was built with it (the wheels are): ~10x faster, which is
# what parsing 20 000 machine files at start takes
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SERVER_KEYS = ("pxe",)  # keys of a machine file that are the server's, never sent to machines
RACY_SECONDS = 2.0  # a directory changed more recently than this is listed on every lookup


def normalize_mac(text: str) -> str | None:
    """``52:54:00:AB:cd:EF`` or ``52-54-...`` -> ``52-54-00-ab-cd-ef``; None if not a MAC."""
    return macaddr.normalize(text)


class MachineError(Exception):
    """A machine file the server cannot serve: ``message`` is ``file[:line]: reason``."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Machine:
    """One machine's parsed file."""

    key: str  # the MAC (lower-case, dashes) or "default"
    path: Path
    action: dict[str, Any]  # what is served: the file without SERVER_KEYS
    pxe: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None  # parse_action's complaint, if any
    raw: bytes | None = None  # a JSON file without server keys: served byte for byte

    def action_json(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return self._rendered

    @functools.cached_property
    def _rendered(self) -> bytes:  # once per parsed file, not once per request
        return (json.dumps(self.action, indent=2, default=str) + "\n").encode()

    def kernel_args(self) -> list[str]:
        """``pxe.cmdline`` as a list of arguments (validated on load)."""
        extra = self.pxe.get("cmdline")
        if extra is None:
            return []
        if isinstance(extra, str):
            return extra.split()
        return [str(a) for a in extra]


def file_key(name: str) -> str | None:
    """``52:54:00:AB:CD:EF.yaml`` -> ``52-54-00-ab-cd-ef``; ``default.json`` -> ``default``;
    None for a file that is not a machine file. Pure."""
    if name.startswith("."):
        return None
    stem, dot, suffix = name.rpartition(".")
    if not dot or f".{suffix.lower()}" not in SUFFIXES:
        return None
    if stem.lower() == DEFAULT:
        return DEFAULT
    return normalize_mac(stem)


def _where(rel: str, line: int | None) -> str:
    return f"{rel}:{line}" if line else rel


def _load_yaml(text: bytes) -> Any:
    """libyaml's safe loader for speed; a file it refuses is parsed again by PyYAML's own, whose
    messages operators get (and the tests pin)."""
    try:
        return yaml.load(text, Loader=_FastLoader)
    except yaml.YAMLError:
        return yaml.safe_load(text)


def parse_machine(text: bytes, *, rel: str, key: str, path: Path) -> Machine:
    """Parse one machine file's bytes; ``rel`` names it in messages. Raises MachineError."""
    data: Any
    if rel.lower().endswith(".json"):
        try:
            data = json.loads(text.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise MachineError(f"{_where(rel, exc.lineno)}: {exc.msg}") from exc
        except UnicodeDecodeError as exc:
            raise MachineError(f"{rel}: not UTF-8: {exc.reason}") from exc
    else:
        try:
            data = _load_yaml(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = exc.problem or exc.context or "malformed YAML"
            raise MachineError(f"{_where(rel, mark.line + 1 if mark else None)}: "
                               f"{reason}") from exc
        except yaml.YAMLError as exc:  # e.g. a byte that is not allowed in YAML
            raise MachineError(f"{rel}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}"
        raise MachineError(f"{rel}: the file is {what}, expected a mapping of action fields")
    action = {str(k): v for k, v in data.items() if k not in SERVER_KEYS}
    pxe = data.get("pxe") or {}
    if not isinstance(pxe, dict):
        raise MachineError(f"{rel}: pxe: expected a mapping, got {type(pxe).__name__}")
    unknown = sorted(set(map(str, pxe)) - {"cmdline"})
    if unknown:
        raise MachineError(f"{rel}: pxe: unknown key {unknown[0]!r} (known: cmdline)")
    extra = pxe.get("cmdline")
    if extra is not None and not isinstance(extra, str) and not (
            isinstance(extra, list) and all(isinstance(a, str | int | float) for a in extra)):
        raise MachineError(f"{rel}: pxe.cmdline: expected a string or a list of strings")
    warning = None
    try:
        # the server's own base URL is unknown here; a placeholder lets relative URLs pass
        parse_action(action, base_url="http://server.invalid")
    except ConfigError as exc:
        warning = f"{rel}: {exc}"
    raw = text if rel.lower().endswith(".json") and not set(data) & set(SERVER_KEYS) else None
    return Machine(key=key, path=path, action=action, pxe=dict(pxe), warning=warning, raw=raw)


@dataclass
class _Cached:
    stamp: tuple[int, int, int]
    machine: Machine | None
    error: MachineError | None


class MachineStore:
    """The machines of ``directory`` (``root/machines``), parsed on demand and cached by stat."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._index_stamp: tuple[int, int] | None = None
        self._index_cache: dict[str, list[str]] = {}
        self.listings = 0  # how often the directory was listed (tests: once per change)

    def _index(self) -> dict[str, list[str]]:
        """Key -> the file names that claim it, sorted. Listed again only when the directory
        changed (its inode or mtime: a file created, removed or renamed), else one stat."""
        try:
            st = os.stat(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        stamp = (st.st_ino, st.st_mtime_ns)
        # "racily clean", as git calls it: a change within the file system's timestamp
        # granularity of the listing would keep the stamp; a recent stamp is not trusted
        settled = time.time() - st.st_mtime > RACY_SECONDS
        with self._lock:
            if settled and stamp == self._index_stamp:
                return self._index_cache
        try:
            names = sorted(os.listdir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        index: dict[str, list[str]] = {}
        for name in names:
            key = file_key(name)
            if key is not None:
                index.setdefault(key, []).append(name)
        with self._lock:
            self._index_stamp, self._index_cache = stamp, index
            self.listings += 1
        return index

    def _load(self, key: str, name: str) -> Machine | None:
        path = self.directory / name
        rel = f"{self.directory.name}/{name}"
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None  # removed since the listing
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(name)
        if cached is None or cached.stamp != stamp:
            try:
                text = path.read_bytes()
            except IsADirectoryError:
                return None
            except OSError as exc:
                raise MachineError(f"{rel}: cannot read: {exc.strerror or exc}") from exc
            machine, error = None, None
            try:
                machine = parse_machine(text, rel=rel, key=key, path=path)
            except MachineError as exc:
                error = exc
            cached = _Cached(stamp, machine, error)
            with self._lock:  # two threads may parse one change (the start's preload and a
                current = self._cache.get(name)  # request): one keeps it, one line is logged
                first = current is None or current.stamp != stamp
                if current is None or first:
                    self._cache[name] = cached
                else:
                    cached = current
            if not first:
                pass
            elif error is not None:
                log.error("machine file %s", error.message)
            elif machine is not None and machine.warning:
                log.warning("machine file %s (served anyway; the machine will refuse it)",
                            machine.warning)
            else:
                log.debug("machine file %s loaded", rel)
        if cached.error is not None:
            raise cached.error
        return cached.machine

    def _get(self, key: str, index: dict[str, list[str]]) -> Machine | None:
        names = index.get(key, [])
        if len(names) > 1:
            listed = " and ".join(f"{self.directory.name}/{n}" for n in names)
            raise MachineError(f"{listed}: two files for {key}: remove all but one")
        return self._load(key, names[0]) if names else None

    def lookup(self, mac: str, index: dict[str, list[str]] | None = None) -> Machine | None:
        """The machine for ``mac`` (normalised), its default, or None. Raises MachineError.
        ``index``: from :meth:`snapshot`, to look up many machines with one directory stat."""
        if index is None:
            index = self._index()
        if mac in index:
            return self._get(mac, index)
        return self._get(DEFAULT, index)

    def snapshot(self) -> dict[str, list[str]]:
        """The directory's index now (for :meth:`lookup` of a page of machines)."""
        return self._index()

    def preload(self) -> tuple[int, int]:
        """Parse every machine file now (the server does it in a thread at start), so that the
        first requests of a rack booting at once find them parsed; ``(files, errors)``."""
        loaded = errors = 0
        for key in self._index():
            _machine, error = self.check(key)
            loaded += 1
            errors += error is not None
        return loaded, errors

    def known(self) -> list[str]:
        """Every MAC with a file (and ``default``), sorted."""
        return sorted(self._index())

    def check(self, key: str) -> tuple[Machine | None, str | None]:
        """``(machine, error)`` for a key of :meth:`known`, never raising."""
        try:
            return self._get(key, self._index()), None
        except MachineError as exc:
            return None, exc.message
