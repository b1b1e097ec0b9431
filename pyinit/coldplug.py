"""Load the drivers for the devices that are actually there: coldplug, then hotplug.

Every device the kernel knows has a ``modalias`` (``pci:v00001AF4d00001000…``); ``modules.alias``
maps glob patterns of those to modules. At boot pyinit

1. loads the listed modules that are not device drivers (filesystems, crc32c, nls: no bus alias),
2. scans ``/sys/devices/**/modalias``, loads every match, and rescans until nothing new
   matches (a bus driver's probe creates the devices of its children synchronously);
3. listens to kernel uevents in a background thread (pyudev, ``source="kernel"``: no udevd
   needed), rescanning once the monitor is up, so devices that appear later (a SCSI disk behind
   an AHCI port that is scanned asynchronously, a USB stick) get their driver too.

Only modules staged in the initramfs can match: the build decides the driver set (broad or
host-only), the hardware decides what is loaded. Pure matching lives in :mod:`pyinit.kmod`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pyinit import kmod
from pyinit.log import get_logger

log = get_logger("pyinit.coldplug")


def scan_modaliases(sysfs: Path = Path("/sys")) -> list[str]:
    """Every ``modalias`` under ``sysfs/devices``, in a stable order."""
    found: list[str] = []
    for dirpath, _dirs, files in os.walk(sysfs / "devices"):
        if "modalias" in files:
            try:
                value = (Path(dirpath) / "modalias").read_text().strip()
            except OSError:
                continue
            if value:
                found.append(value)
    return sorted(set(found))


class Plugger:
    """Loads the modules matching modaliases, once each, from any thread."""

    def __init__(self, aliases: kmod.AliasTable, *,
                 load: Callable[[list[str]], list[str]]) -> None:
        self.aliases = aliases
        self._load = load
        self._lock = threading.Lock()
        self.tried: set[str] = set()
        self.loaded: list[str] = []
        self.failures: list[str] = []

    def plug(self, modaliases: Iterable[str]) -> list[str]:
        """Load the modules for ``modaliases`` not tried before; returns what was loaded."""
        with self._lock:
            wanted = [m for m in kmod.match_aliases(modaliases, self.aliases)
                      if m not in self.tried]
            if not wanted:
                return []
            self.tried.update(wanted)
            try:
                done = self._load(wanted)
            except Exception as exc:  # one bad driver must not stop the others or the boot
                self.failures.append(f"{' '.join(wanted)}: {exc}")
                log.warning(f"modules: {exc}")
                done = []
            self.loaded.extend(done)
            return done


def coldplug(plugger: Plugger, *, sysfs: Path = Path("/sys"), rounds: int = 5) -> list[str]:
    """Scan and load until a round loads nothing new (bounded by ``rounds``)."""
    loaded: list[str] = []
    for _ in range(rounds):
        new = plugger.plug(scan_modaliases(sysfs))
        if not new:
            break
        loaded.extend(new)
    return loaded


def start_hotplug(plugger: Plugger, *, sysfs: Path = Path("/sys")) -> threading.Thread:
    """Listen to kernel uevents in a daemon thread and plug every new device's modalias.

    Importing pyudev and opening the netlink socket happen in the thread (about half a second
    under emulation, overlapping the network step); once the monitor receives, the thread
    rescans sysfs, so a device that appeared in between is not missed."""

    def listen() -> None:
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
            monitor.start()
        except Exception as exc:  # no netlink uevents (containers): coldplug still happened
            log.warning(f"modules: no uevent monitor ({exc}); late devices get no driver")
            return
        coldplug(plugger, sysfs=sysfs)
        for device in iter(monitor.poll, None):
            if device.action == "add":
                alias = device.properties.get("MODALIAS")
                if alias:
                    new = plugger.plug([alias])
                    if new:
                        log.info(f"modules: hotplug {device.sys_path}: {' '.join(new)}")

    thread = threading.Thread(target=listen, name="hotplug", daemon=True)
    thread.start()
    return thread
