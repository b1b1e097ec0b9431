"""ginit mode: mount ``root=`` and run ``entrypoint=`` inside it with the console as its terminal.

``root=`` accepts a /dev path (``/dev/vda1``, ``/dev/mapper/vg0-root``, ``/dev/vg0/root``),
``UUID=``, ``PARTUUID=`` and ``LABEL=``, resolved with util-linux ``blkid`` (no udev needed); the
filesystem type comes from ``rootfstype=`` or from blkid, and its module is loaded before the mount.
When the root is not there on the first look, LVM volume groups are activated (:mod:`pyinit.lvm`)
and the wait goes on with their logical volumes in view; activation runs again only when a new
LVM physical volume shows up.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyinit import kmod, lvm, proc, syscalls
from pyinit.errors import ConfigError, MountError, PyinitError
from pyinit.log import get_logger

log = get_logger("pyinit.ginit")

_BLKID_LINE = re.compile(r'^(?P<dev>/dev/[^:]+):(?P<rest>.*)$')
_BLKID_KV = re.compile(r'(\w+)="([^"]*)"')
LVM_MEMBER = "LVM2_member"  # blkid's TYPE for an LVM2 physical volume

Loader = Callable[[Sequence[str]], object]


def parse_blkid(text: str) -> dict[str, dict[str, str]]:
    """``/dev/vda1: UUID="…" TYPE="ext4"`` lines → {device: {UUID: …, TYPE: …}}. Pure."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = _BLKID_LINE.match(line.strip())
        if m:
            out[m["dev"]] = dict(_BLKID_KV.findall(m["rest"]))
    return out


def find_device(spec: str, table: dict[str, dict[str, str]]) -> str | None:
    """The device a ``root=`` spec names in a blkid table, or None. Pure."""
    if spec.startswith("/dev/"):
        return spec
    key, sep, want = spec.partition("=")
    if not sep or key not in ("UUID", "PARTUUID", "LABEL"):
        raise ConfigError("root", f"unsupported form {spec!r} (/dev/…, UUID=, PARTUUID=, LABEL=)")
    for dev, tags in sorted(table.items()):
        value = tags.get(key, "")
        if value == want or (key != "LABEL" and value.lower() == want.lower()):
            return dev
    return None


def blkid_tags(device: str) -> dict[str, str]:
    """blkid's tags of one device (TYPE, UUID, …), probed afresh; {} when it has none."""
    done = proc.run(["blkid", "-c", "/dev/null", device], check=False)
    return next(iter(parse_blkid(done.stdout).values()), {})


def blkid() -> dict[str, dict[str, str]]:
    """Every block device with a signature, probed afresh (``-c /dev/null``: no cache, so a
    device that appeared or changed since the last look is seen as it is now)."""
    return parse_blkid(proc.run(["blkid", "-c", "/dev/null"], check=False).stdout)


def load_modules(names: Sequence[str]) -> list[str]:
    """Load ``names`` with their dependencies if they are modules here (built-in or absent ones
    are skipped). A failure is only logged: the mount or the activation that needed the module
    then fails with its own message."""
    try:
        return kmod.load(names, optional=frozenset(names))
    except PyinitError as exc:  # no modules.dep at all (a --no-modules build), or a refusal
        log.warning(f"ginit: modules {' '.join(names)} not loaded: {exc}")
        return []


def fs_module(fstype: str, aliases: str) -> str:
    """The module that provides ``fstype`` per modules.alias (``fs-ext3`` -> ``ext4``), else the
    type itself (``xfs``). Pure."""
    for pattern, module in kmod.parse_modules_alias(aliases).entries:
        if pattern == f"fs-{fstype}":
            return module
    return fstype


@dataclass
class _LvmState:
    """What LVM activation has done during one wait for the root device."""

    binary: str | None
    tried: bool = False
    covered: frozenset[str] = frozenset()  # physical volumes present at the last activation
    results: list[lvm.Activation] = field(default_factory=list)

    def due(self, members: frozenset[str]) -> bool:
        """Activate on the first miss, then again only when a new physical volume appears."""
        return self.binary is not None and (not self.tried or not members <= self.covered)

    def note(self, members: frozenset[str]) -> str:
        """The LVM part of the not-found error, or ""."""
        pvs = ", ".join(sorted(members))
        if self.binary is None:
            return f"LVM physical volume(s) {pvs} found but no lvm in the initramfs" \
                if members else ""
        if not self.results:
            return ""
        last = self.results[-1]
        if last.rc == 0 and not last.groups and not members:
            return "LVM: no volume groups found (no physical volumes)"
        return f"LVM: {'activated ' if last.groups else ''}{last.summary()}"


def resolve_root(spec: str, timeout: float = 20.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 lvm_binary: str | None = None, load: Loader = load_modules,
                 sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> tuple[str, str | None]:
    """(device, fstype-or-None), waiting (bounded) for the device to appear.

    With ``lvm_binary``, a miss activates LVM (dm_mod loaded first) and looks again at once;
    device-mapper devices are reported as ``/dev/mapper/<name>``.
    """
    deadline = clock() + timeout
    state = _LvmState(lvm_binary)
    while True:
        table: dict[str, dict[str, str]] = {}
        for name, tags in blkid().items():
            table.setdefault(lvm.canonical_device(name, sysfs=sysfs, dev=dev), tags)
        found = find_device(spec, table)
        if found is not None:
            found = lvm.canonical_device(found, sysfs=sysfs, dev=dev)
            if (dev / found.removeprefix("/dev/")).exists():
                return found, table.get(found, {}).get("TYPE")
        members = frozenset(d for d, tags in table.items() if tags.get("TYPE") == LVM_MEMBER)
        if state.due(members):
            assert state.binary is not None
            if not state.tried:
                load(["dm_mod"])
            state.tried, state.covered = True, members
            result = lvm.activate(state.binary)
            state.results.append(result)
            for vg, count in result.groups:
                log.info(f"ginit: activated LVM volume group {vg} ({count} LV"
                         f"{'' if count == 1 else 's'})")
            if result.rc != 0 or not result.groups:
                log.info(f"ginit: LVM: {result.summary()}")
            continue  # look again at once: the logical volumes are there now or never
        if clock() >= deadline:
            seen = ", ".join(f"{d} ({tags['TYPE']})" if tags.get("TYPE") else d
                             for d, tags in sorted(table.items())) or "none"
            note = state.note(members)
            raise MountError(f"root={spec}", f"not found within {timeout:.0f} s "
                             f"(block devices seen: {seen})" + (f"; {note}" if note else ""))
        sleep(0.25)


def mount_root(spec: str, target: Path, *, fstype: str | None = None,
               load: Loader = load_modules, modules_dir: Path | None = None,
               sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> str:
    """Mount ``root=`` on ``target`` (then bind /proc, /sys, /dev under it); returns the device."""
    device, detected = resolve_root(spec, lvm_binary=lvm.find_lvm(), load=load, sysfs=sysfs,
                                    dev=dev)
    fs = fstype or detected
    if not fs:
        raise MountError(str(target), f"cannot tell the filesystem type of {device}; "
                         "give rootfstype=")
    base = modules_dir or Path("/lib/modules") / os.uname().release
    try:
        aliases = (base / "modules.alias").read_text()
    except OSError:
        aliases = ""
    load([fs_module(fs, aliases)])  # filesystems have no device modalias: coldplug skips them
    target.mkdir(parents=True, exist_ok=True)
    try:
        syscalls.mount(device, str(target), fs, 0, None)
    except OSError as exc:
        raise MountError(str(target), f"mount -t {fs} {device} {target}: {exc.strerror}") from exc
    log.info(f"entrypoint: mounted {device} ({fs}) on {target}")
    for sub in ("proc", "sys", "dev"):
        path = target / sub
        if path.is_dir():
            try:
                syscalls.mount(f"/{sub}", str(path), None, syscalls.MS_BIND | syscalls.MS_REC,
                               None)
            except OSError as exc:
                log.warning(f"entrypoint: bind /{sub}: {exc}")
    return device


def run_entrypoint(root: Path, argv: Sequence[str]) -> int:
    """Run ``argv`` chrooted in ``root`` as a child on the console (new session, console as its
    controlling terminal); returns its exit status."""
    log.info(f"entrypoint: running {' '.join(argv)} in {root}")
    done = proc.run(["setsid", "-c", "chroot", str(root), *argv], check=False, capture=False,
                    env={"HOME": "/root", "TERM": "linux"})
    log.info(f"entrypoint: {argv[0]} exited {done.rc}")
    return done.rc
