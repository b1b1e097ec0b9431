"""Load the drivers for the devices that are actually there: coldplug, then hotplug.

Every device the kernel knows has a ``modalias`` (``pci:v00001AF4d00001000…``); ``modules.alias``
maps glob patterns of those to modules. At boot pyinit

1. loads the listed modules that are not device drivers (filesystems, crc32c, nls: no bus alias),
2. scans the modaliases of the network controllers (PCI class 02 and the devices below them,
   such as a virtio NIC's virtio device), loads every match, and rescans until nothing new
   matches (a bus driver's probe creates the devices of its children synchronously): DHCP
   needs these and nothing else;
3. in a background thread, does the same for every other device (storage controllers, whose
   probe can take seconds on a real HBA, run while DHCP does), marks that done for the steps
   that need disks (:meth:`Background.wait`), then listens to kernel uevents (pyudev,
   ``source="kernel"``: no udevd needed), rescanning once the monitor is up, so devices that
   appear later (a SCSI disk behind an AHCI port that is scanned asynchronously, a USB stick)
   get their driver too.

A network or storage controller left without a driver is reported in one line
(:func:`no_driver_lines`), with why when it can be told: no driver in this initramfs (and
whether the kernel has one), or a driver that matched but did not bind (and the firmware it
failed to load, read from the kernel log).

Only modules staged in the initramfs can match: the build decides the driver set (broad or
host-only), the hardware decides what is loaded. Pure matching lives in :mod:`pyinit.kmod`.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit import kmod
from pyinit.log import event, get_logger

log = get_logger("pyinit.coldplug")


def modaliases_below(root: Path | str) -> set[str]:
    """Every non-empty ``modalias`` file's value in the directory tree ``root`` (symbolic links
    to other devices, such as ``driver`` and ``subsystem``, are not followed)."""
    found: set[str] = set()
    for dirpath, _dirs, files in os.walk(root):
        if "modalias" in files:
            try:
                value = (Path(dirpath) / "modalias").read_text().strip()
            except OSError:
                continue
            if value:
                found.add(value)
    return found


def scan_modaliases(sysfs: Path = Path("/sys")) -> list[str]:
    """Every ``modalias`` under ``sysfs/devices``, in a stable order."""
    return sorted(modaliases_below(sysfs / "devices"))


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


def coldplug(plugger: Plugger, *, sysfs: Path = Path("/sys"), rounds: int = 5,
             scan: Callable[[Path], list[str]] = scan_modaliases) -> list[str]:
    """Scan (every device, or what ``scan`` picks) and load until a round loads nothing new
    (bounded by ``rounds``)."""
    loaded: list[str] = []
    for _ in range(rounds):
        new = plugger.plug(scan(sysfs))
        if not new:
            break
        loaded.extend(new)
    return loaded


class Background:
    """The background half of the modules step: coldplug of every device, then hotplug."""

    def __init__(self, plugger: Plugger, *, sysfs: Path = Path("/sys"),
                 then: Callable[[Plugger, Path], None] | None = None) -> None:
        self.plugger = plugger
        self.sysfs = sysfs
        self.then = then if then is not None else listen  # after the coldplug: hotplug
        self.loaded: list[str] = []
        self.finished_at: float | None = None  # time.monotonic() when the coldplug ended
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="coldplug", daemon=True)

    def start(self) -> Background:
        self.thread.start()
        return self

    def wait(self, timeout: float) -> bool:
        """Whether every present device has had its driver loaded (False: still loading)."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            self.loaded = coldplug(self.plugger, sysfs=self.sysfs)
        except Exception as exc:  # a broken sysfs must not leave the disks step waiting
            log.warning(f"modules: background coldplug stopped: {exc}")
        finally:
            self.finished_at = time.monotonic()
            self._done.set()
        if self.loaded:
            log.info(f"modules: loaded {len(self.loaded)} in the background: "
                     f"{' '.join(self.loaded)}")
        self.then(self.plugger, self.sysfs)


def listen(plugger: Plugger, sysfs: Path = Path("/sys")) -> None:
    """Listen to kernel uevents and plug every new device's modalias (never returns).

    Importing pyudev and opening the netlink socket take about half a second under emulation;
    once the monitor receives, sysfs is scanned again, so a device that appeared in between is
    not missed. A new network or storage controller that no staged driver matches gets the same
    one line as at coldplug."""
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
            on_add(plugger, device.properties.get("MODALIAS"), device.subsystem,
                   Path(device.sys_path))


def on_add(plugger: Plugger, alias: str | None, subsystem: str | None, path: Path
           ) -> list[str]:
    """One ``add`` uevent: load what matches its modalias; a PCI network or storage
    controller that nothing staged matches gets the coldplug's one line and event."""
    if not alias:
        return []
    new = plugger.plug([alias])
    if new:
        log.info(f"modules: hotplug {path}: {' '.join(new)}")
    elif subsystem == "pci" and not kmod.match_aliases([alias], plugger.aliases):
        dev = read_pci_device(path)
        if dev is not None and dev.kind and not dev.driver:
            for line, fields in no_driver_lines([dev], staged=plugger.aliases):
                log.warning(line)
                event("modules", "no-driver", **fields)
    return new


# --- network and storage controllers without a driver ----------------------------------------

KINDS = {0x01: "storage controller", 0x02: "network controller"}
FIBRE_CHANNEL = 0x0C04  # serial bus class, Fibre Channel subclass: SAN boot disks


@dataclass(frozen=True)
class PciDevice:
    slot: str                   # 0000:3b:00.0
    vendor: int
    device: int
    pci_class: int              # 0x020000
    modalias: str
    driver: str | None          # the bound driver's name, None when unbound

    @property
    def kind(self) -> str | None:
        """"network controller" / "storage controller" (a Fibre Channel HBA, class 0c04,
        counts as storage), None for any other class."""
        if self.pci_class >> 8 == FIBRE_CHANNEL:
            return KINDS[0x01]
        return KINDS.get(self.pci_class >> 16)

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


def read_pci_device(path: Path) -> PciDevice | None:
    """One ``/sys/bus/pci/devices/<slot>`` directory, None when its files are unreadable."""
    try:
        vendor = int((path / "vendor").read_text(), 16)
        device = int((path / "device").read_text(), 16)
        pci_class = int((path / "class").read_text(), 16)
        modalias = (path / "modalias").read_text().strip()
    except (OSError, ValueError):
        return None
    driver = path / "driver"
    return PciDevice(path.name, vendor, device, pci_class, modalias,
                     os.path.basename(os.readlink(driver)) if driver.is_symlink() else None)


def pci_devices(sysfs: Path = Path("/sys"), kinds: Collection[str] = tuple(KINDS.values())
                ) -> list[PciDevice]:
    """The PCI devices of ``kinds`` (network and storage controllers), by slot."""
    base = sysfs / "bus/pci/devices"
    try:
        slots = sorted(os.listdir(base))
    except OSError:
        return []
    found = [read_pci_device(base / slot) for slot in slots]
    return [d for d in found if d is not None and d.kind in kinds]


def network_modaliases(sysfs: Path = Path("/sys")) -> list[str]:
    """The modaliases of the PCI network controllers and of every device below one (the
    virtio device of a virtio-net function): what DHCP needs loaded before it starts."""
    found: set[str] = set()
    for dev in pci_devices(sysfs, ("network controller",)):
        # the device's real directory: its children are directories below it
        found |= modaliases_below(os.path.realpath(sysfs / "bus/pci/devices" / dev.slot))
    return sorted(found)


def wait_bound(devices: Sequence[PciDevice], sysfs: Path, timeout: float, *,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> list[PciDevice]:
    """``devices`` re-read until each has a driver or ``timeout`` passes (some drivers probe
    asynchronously); returns them as last read."""
    deadline = clock() + timeout
    current = list(devices)
    while True:
        current = [read_pci_device(sysfs / "bus/pci/devices" / d.slot) or d for d in current]
        if all(d.driver for d in current) or clock() >= deadline:
            return current
        sleep(0.05)


_FW_FAILED = re.compile(r"^(?:\S+ )?(?P<slot>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): "
                        r"Direct firmware load for (?P<name>\S+) failed with error (?P<err>-?\d+)")


def firmware_failures(kernel_log: Iterable[str]) -> dict[str, list[str]]:
    """{PCI slot: ["name (error -2)", ...]} from kernel log messages such as
    ``bnx2x 0000:3b:00.0: Direct firmware load for bnx2x/x.fw failed with error -2``. Pure."""
    out: dict[str, list[str]] = {}
    for line in kernel_log:
        match = _FW_FAILED.search(line.split(";", 1)[-1].strip())
        if match:
            item = f"{match['name']} (error {match['err']})"
            if item not in out.setdefault(match["slot"], []):
                out[match["slot"]].append(item)
    return out


def read_kernel_log(path: Path = Path("/dev/kmsg")) -> list[str]:
    """Every message in the kernel's log buffer (``/dev/kmsg`` records, read without
    blocking); empty when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    lines: list[str] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while reading: skip ahead
                    continue
                break  # EAGAIN: the end of the buffer
            if not record:
                break
            lines.append(record.decode("utf-8", "replace").rstrip("\n"))
    finally:
        os.close(fd)
    return lines


def no_driver_lines(devices: Iterable[PciDevice], *, staged: kmod.AliasTable,
                    kernel: kmod.AliasTable | None = None, loaded: Collection[str] = (),
                    firmware: Mapping[str, Sequence[str]] | None = None
                    ) -> list[tuple[str, dict[str, object]]]:
    """One console line and the event's fields per unbound device. Pure.

    ``staged``: this initramfs's aliases; ``kernel``: those of the kernel's modules left out
    of it (``/etc/pyinit/kernel-aliases``); ``loaded``: modules loaded so far; ``firmware``:
    :func:`firmware_failures`."""
    out: list[tuple[str, dict[str, object]]] = []
    for dev in devices:
        if dev.driver:
            continue
        line = f"modules: no driver for {dev.slot} [{dev.ids}] ({dev.kind})"
        fields: dict[str, object] = {"slot": dev.slot, "ids": dev.ids,
                                     "class": f"{dev.pci_class:06x}", "kind": dev.kind}
        here = kmod.match_aliases([dev.modalias], staged)
        failed = list((firmware or {}).get(dev.slot, ()))
        if here:
            tried = [m for m in here if m in loaded] or here
            hint = f"{' '.join(tried)} {'is' if len(tried) == 1 else 'are'} here but did not bind"
            if failed:
                hint += f": firmware {', '.join(failed)} failed to load"
            fields.update(matched=here, firmware_failed=failed)
        else:
            elsewhere = kmod.match_aliases([dev.modalias], kernel) if kernel else []
            if elsewhere:
                hint = (f"the kernel has {' '.join(elsewhere)}, not in this initramfs "
                        f"(build it with --drivers broad)")
                fields.update(kernel_has=elsewhere)
            else:
                hint = "no driver for it in this initramfs" + (" nor in the kernel"
                                                                 if kernel else "")
        fields["hint"] = hint
        out.append((f"{line}: {hint}", fields))
    return out
