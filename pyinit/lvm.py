"""LVM2 for ginit: activate the volume groups with the real ``lvm`` tool, name dm devices.

An initramfs has no udev, so Debian's ``/sbin/lvm`` (lvm2 2.03) runs with the settings dracut and
initramfs-tools use without udev: libdevmapper makes the ``/dev/mapper/<vg>-<lv>`` nodes itself
(``DM_DISABLE_UDEV=1``, ``udev_sync = 0``) and lvm the ``/dev/<vg>/<lv>`` links
(``udev_rules = 0``); ``--sysinit`` means no dmeventd monitoring, no lvmpolld, no complaint about
locking. Nothing is written outside ``/run``: metadata backups, archives and device hints are off.
(``global/locking_type`` and ``use_lvmetad`` no longer exist in 2.03 and are not passed.)

The kernel calls device-mapper devices ``dm-N`` (``/proc/partitions``, devtmpfs); operators and
``root=`` use ``/dev/mapper/<name>``: :func:`canonical_device` maps one to the other through
``/sys/block/dm-N/dm/name``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit.errors import CommandError

# One --config string: these override lvm.conf (the initramfs has none; built-in defaults apply).
LVM_CONFIG = ("activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } "
              "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 "
              'hints = "none" } '
              "global { use_lvmpolld = 0 } "
              "backup { backup = 0 archive = 0 }")
LVM_ENV = {"DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
LVM_TIMEOUT = 60.0  # seconds for one lvm command (a slow disk answering every metadata read)

# vgchange -ay prints one line per volume group it activated (lib/activate, "now active").
_NOW_ACTIVE = re.compile(r'(\d+) logical volume\(s\) in volume group "([^"]+)" now active')
_DM = re.compile(r"dm-\d+")


@dataclass(frozen=True)
class Activation:
    """What one ``vgchange -ay`` did: the groups it activated with their active LV counts."""

    groups: tuple[tuple[str, int], ...]
    rc: int | None = 0  # None: timed out
    error: str = ""  # the last line lvm wrote to stderr when rc != 0

    def summary(self) -> str:
        """``vg0 (1 LV), data (2 LVs)``, ``no volume groups found`` or the failure. Pure."""
        if self.rc != 0:
            status = "timed out" if self.rc is None else f"exited {self.rc}"
            return f"vgchange {status}" + (f": {self.error}" if self.error else "")
        if not self.groups:
            return "no volume groups found"
        return ", ".join(f"{vg} ({n} LV{'' if n == 1 else 's'})" for vg, n in self.groups)


def find_lvm(path: str = proc.SAFE_PATH) -> str | None:
    """The ``lvm`` binary on ``path``, or None (an initramfs built without lvm2)."""
    return shutil.which("lvm", path=path)


def activate_argv(lvm: str) -> list[str]:
    """``vgchange -ay`` for every volume group lvm finds, configured for an initramfs. Pure."""
    return [lvm, "vgchange", "--sysinit", "--activate", "ay", "--config", LVM_CONFIG]


def parse_vgchange(text: str) -> tuple[tuple[str, int], ...]:
    """(group, active LVs) from ``vgchange -ay`` output, in output order. Pure."""
    return tuple((m[2], int(m[1])) for m in _NOW_ACTIVE.finditer(text))


def activate(lvm: str) -> Activation:
    """Activate every LVM volume group lvm can see (idempotent: active LVs stay as they are)."""
    try:
        done = proc.run(activate_argv(lvm), check=False, env=LVM_ENV, timeout=LVM_TIMEOUT)
    except CommandError as exc:  # timed out, or the binary cannot be started
        tail = exc.stderr_tail.strip().splitlines()
        return Activation((), exc.rc, tail[-1].strip() if tail else "")
    groups = parse_vgchange(done.stdout)
    tail = done.stderr.strip().splitlines()
    return Activation(groups, done.rc, tail[-1].strip() if done.rc != 0 and tail else "")


def dm_name(kernel_name: str, *, sysfs: Path = Path("/sys")) -> str | None:
    """``dm-0`` -> ``vg0-root`` (``/sys/block/dm-0/dm/name``), or None when it is not a dm
    device or sysfs does not say."""
    if not _DM.fullmatch(kernel_name):
        return None
    try:
        name = (sysfs / "block" / kernel_name / "dm" / "name").read_text().strip()
    except OSError:
        return None
    return name or None


def canonical_device(path: str, *, sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> str:
    """The name a block device is best known by, as an absolute ``/dev/…`` path that exists.

    Symlinks under ``/dev`` are resolved (``/dev/vg0/root`` -> ``/dev/mapper/vg0-root``), and a
    kernel name ``/dev/dm-N`` becomes ``/dev/mapper/<name>`` when libdevmapper made that node; a
    ``/dev/mapper/<name>`` with no node falls back to the ``/dev/dm-N`` devtmpfs made. Anything
    else is returned as given. ``dev`` and ``sysfs`` are the roots (tests pass ``tmp_path``).
    """
    if not path.startswith("/dev/"):
        return path
    host = dev / path.removeprefix("/dev/")
    real = Path(os.path.realpath(host))
    try:
        rel = real.relative_to(dev.resolve())
    except ValueError:
        return path
    name = rel.as_posix()
    mapped = dm_name(name, sysfs=sysfs)
    if mapped is not None and (dev / "mapper" / mapped).exists():
        return f"/dev/mapper/{mapped}"
    if name.startswith("mapper/") and not real.exists():
        wanted = name.removeprefix("mapper/")
        for entry in sorted((sysfs / "block").glob("dm-*")):
            if dm_name(entry.name, sysfs=sysfs) == wanted and (dev / entry.name).exists():
                return f"/dev/{entry.name}"
    return f"/dev/{name}"
