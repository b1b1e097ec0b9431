"""The hardware inventory: one ``hardware inventory`` event, taken in a background thread.

In the spirit of ironic-python-agent's collectors: the system's DMI identity (vendor, product,
serial, UUID, BIOS), the CPUs, the memory, the PCI devices with their IDs and bound drivers,
and — reused, not read again — the disks (:func:`pyinit.disks.inventory.inventory`) and the
NICs the network step saw (:func:`pyinit.network.links.nic_inventory_event`). See docs/inventory.md.

Readers take their roots (``sysfs``, ``procfs``) so unit tests run on ``tmp_path`` trees; the
parsing functions (:func:`parse_cpuinfo`, :func:`parse_meminfo`, :func:`smbios_memory`,
:func:`clean`) do no I/O. A source that does not exist (no DMI on a VM without it, no PCI bus)
gives an empty part; one that exists but cannot be read raises :class:`CollectorError`, which
:func:`collect` turns into one warning line and an ``errors`` entry: a collector never fails
the boot.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinit import log
from pyinit.disks.inventory import Disk, human_size
from pyinit.disks.inventory import inventory as disk_inventory
from pyinit.errors import PyinitError
from pyinit.network.links import Nic, nic_inventory_event

logger = log.get_logger("pyinit.inventory")

MAX_PCI = 400  # listed in the event (a big server has ~150): it must stay under 64 KiB
MAX_TEXT = 256

# /sys/class/dmi/id attribute -> (part, key)
DMI_FIELDS = (
    ("sys_vendor", "system", "vendor"), ("product_name", "system", "product"),
    ("product_version", "system", "version"), ("product_serial", "system", "serial"),
    ("product_uuid", "system", "uuid"), ("product_sku", "system", "sku"),
    ("bios_vendor", "bios", "vendor"), ("bios_version", "bios", "version"),
    ("bios_date", "bios", "date"),
    ("board_vendor", "board", "vendor"), ("board_name", "board", "product"),
    ("board_serial", "board", "serial"),
)


class CollectorError(PyinitError):
    """A source that exists but cannot be read: ``dmi: cannot read …/product_serial: …``."""

    def __init__(self, collector: str, reason: str) -> None:
        self.collector = collector
        self.reason = reason
        super().__init__(f"{collector}: {reason}")


# ---- parsing (pure) ----------------------------------------------------------------------


def clean(text: str | None) -> str | None:
    """A firmware string: stripped, control characters escaped, cut at 256 characters;
    None when empty."""
    if text is None:
        return None
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text.strip())
    return text[:MAX_TEXT] or None


@dataclass(frozen=True)
class Cpus:
    model: str | None
    count: int  # logical CPUs (what the kernel schedules on)
    sockets: int | None = None
    cores: int | None = None  # physical cores, all sockets


def parse_cpuinfo(text: str) -> Cpus:
    """/proc/cpuinfo -> :class:`Cpus`. x86 gives ``model name``, ``physical id`` and ``cpu
    cores``; arm64 gives none of them (the count is still right). Pure."""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    entries = []
    for block in blocks:
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry.setdefault(key.strip(), value.strip())
        if "processor" in entry:
            entries.append(entry)
    model = next((clean(e.get("model name") or e.get("cpu model") or e.get("Model"))
                  for e in entries if e.get("model name") or e.get("cpu model")
                  or e.get("Model")), None)
    sockets = {e["physical id"] for e in entries if "physical id" in e}
    cores: dict[str, int] = {}
    for e in entries:
        if "physical id" in e and e.get("cpu cores", "").isdigit():
            cores[e["physical id"]] = int(e["cpu cores"])
    return Cpus(model=model, count=len(entries), sockets=len(sockets) or None,
                cores=sum(cores.values()) or None)


def parse_meminfo(text: str) -> int | None:
    """``MemTotal`` of /proc/meminfo in bytes (what the kernel manages). Pure."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemTotal":
            parts = rest.split()
            if parts and parts[0].isdigit():
                return int(parts[0]) * 1024
    return None


def smbios_structures(table: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, formatted area) of each SMBIOS structure of a DMI table
    (/sys/firmware/dmi/tables/DMI); stops at the end-of-table type 127 or at a structure
    that does not fit. Pure."""
    pos = 0
    while pos + 4 <= len(table):
        kind, length = table[pos], table[pos + 1]
        if length < 4 or pos + length > len(table):
            return
        yield kind, table[pos:pos + length]
        if kind == 127:
            return
        end = table.find(b"\0\0", pos + length)  # the string set ends with a double NUL
        if end < 0:
            return
        pos = end + 2


def smbios_memory(table: bytes) -> int | None:
    """The installed memory in bytes: the sum of the SMBIOS type 17 (Memory Device) sizes,
    or None when the table has none. Pure."""
    total, found = 0, False
    for kind, area in smbios_structures(table):
        if kind != 17 or len(area) < 0x0E:
            continue
        size = int.from_bytes(area[0x0C:0x0E], "little")
        if size in (0, 0xFFFF):  # empty slot, unknown
            continue
        found = True
        if size == 0x7FFF and len(area) >= 0x20:  # Extended Size: MiB, bits 0-30
            total += (int.from_bytes(area[0x1C:0x20], "little") & 0x7FFFFFFF) << 20
        elif size & 0x8000:  # granularity KiB
            total += (size & 0x7FFF) << 10
        else:
            total += size << 20
    return total if found else None


def _hex_id(text: str | None) -> str | None:
    """``0x8086`` -> ``8086``."""
    if not text:
        return None
    text = text.strip().lower()
    return text[2:] if text.startswith("0x") else text


# ---- readers -------------------------------------------------------------------------------


def _read(path: Path, collector: str) -> str | None:
    """A sysfs/procfs file's text; None when it does not exist, :class:`CollectorError` when
    it exists but cannot be read."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        raise CollectorError(collector, f"cannot read {path}: {reason}") from exc


def read_dmi(sysfs: Path = Path("/sys")) -> dict[str, dict[str, str | None]] | None:
    """System, BIOS and board identity from ``<sysfs>/class/dmi/id``; None without DMI."""
    base = sysfs / "class" / "dmi" / "id"
    if not base.is_dir():
        return None
    out: dict[str, dict[str, str | None]] = {"system": {}, "bios": {}, "board": {}}
    for attr, part, key in DMI_FIELDS:
        out[part][key] = clean(_read(base / attr, "dmi"))
    return out


def read_cpus(procfs: Path = Path("/proc")) -> Cpus | None:
    text = _read(procfs / "cpuinfo", "cpu")
    return None if text is None else parse_cpuinfo(text)


def read_memory(procfs: Path = Path("/proc"), sysfs: Path = Path("/sys")) -> dict[str, Any]:
    """``total``: MemTotal (bytes); ``physical``: the DIMMs the SMBIOS table lists (bytes),
    when the table is there (x86, root)."""
    meminfo = _read(procfs / "meminfo", "memory")
    table = sysfs / "firmware" / "dmi" / "tables" / "DMI"
    try:
        physical = smbios_memory(table.read_bytes())
    except OSError:  # optional: no table (arm64 without SMBIOS), or not root
        physical = None
    return {"total": None if meminfo is None else parse_meminfo(meminfo), "physical": physical}


def _pair(a: str | None, b: str | None) -> str | None:
    return f"{a}:{b}" if a and b else None


def read_pci(sysfs: Path = Path("/sys")) -> tuple[list[dict[str, str | None]], int]:
    """The first :data:`MAX_PCI` devices of ``<sysfs>/bus/pci/devices`` (slot,
    ``vendor:device``, class, ``subsystem_vendor:subsystem_device``, bound driver) and how
    many there are; nothing without a PCI bus."""
    base = sysfs / "bus" / "pci" / "devices"
    try:
        slots = sorted(p.name for p in base.iterdir())
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise CollectorError("pci", f"cannot list {base}: {exc.strerror}") from exc
    out = []
    for slot in slots[:MAX_PCI]:
        dev = base / slot
        driver = dev / "driver"

        def read(name: str, dev: Path = dev) -> str | None:
            return _hex_id(_read(dev / name, "pci"))

        out.append({
            "slot": slot, "id": _pair(read("vendor"), read("device")), "class": read("class"),
            "subsystem": _pair(read("subsystem_vendor"), read("subsystem_device")),
            "driver": os.path.basename(os.readlink(driver)) if driver.is_symlink() else None,
        })
    return out, len(slots)


def disk_summary(found: Sequence[Disk]) -> list[dict[str, Any]]:
    """The inventory's view of :func:`pyinit.disks.inventory.inventory`: identity only (the
    ``disks`` step's event has the rest). Pure."""
    return [{"name": d.name, "size": d.size, "model": d.model, "serial": d.serial,
             "wwn": d.wwn, "rotational": d.rotational, "removable": d.removable,
             "transport": d.transport} for d in found]


# ---- the whole inventory -----------------------------------------------------------------


@dataclass
class Inventory:
    dmi: dict[str, dict[str, str | None]] | None = None
    cpus: Cpus | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    pci: list[dict[str, str | None]] = field(default_factory=list)
    pci_total: int = 0
    disks: list[dict[str, Any]] = field(default_factory=list)
    nics: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # collector -> its one line

    def event(self) -> dict[str, Any]:
        """The fields of the ``hardware inventory`` event (docs/inventory.md). Pure."""
        dmi = self.dmi or {}
        cpus = self.cpus
        return {
            "system": dmi.get("system"), "bios": dmi.get("bios"), "board": dmi.get("board"),
            "cpu": None if cpus is None else {"model": cpus.model, "count": cpus.count,
                                              "sockets": cpus.sockets, "cores": cpus.cores},
            "memory": self.memory or None,
            "pci": {"count": self.pci_total, "devices": self.pci},
            "disks": {"count": len(self.disks), "disks": self.disks},
            "nics": {"count": len(self.nics), "nics": self.nics},
            "errors": self.errors,
        }

    def summary(self) -> str:
        """One console line: ``QEMU Standard PC (i440FX + PIIX, 1996), serial -; 2 CPUs …``."""
        system = (self.dmi or {}).get("system") or {}
        who = " ".join(x for x in (system.get("vendor"), system.get("product")) if x)
        parts = [f"{who or 'no DMI'}, serial {system.get('serial') or '-'}"]
        if self.cpus is not None:
            parts.append(f"{self.cpus.count} CPUs ({self.cpus.model or 'model unknown'})")
        total = self.memory.get("total")
        if total:
            parts.append(f"{human_size(total)} memory")
        parts.append(f"{self.pci_total} PCI devices, {len(self.disks)} disks, "
                     f"{len(self.nics)} NICs")
        return "; ".join(parts)


def collect(*, sysfs: Path = Path("/sys"), procfs: Path = Path("/proc"),
            dev: Path = Path("/dev"), nics: Sequence[Nic] = ()) -> Inventory:
    """Run every collector; one that raises leaves its part empty, with one warning line
    and an ``errors`` entry. Never raises."""
    inv = Inventory(nics=nic_inventory_event(nics)["nics"])

    def dmi() -> None:
        inv.dmi = read_dmi(sysfs)

    def cpu() -> None:
        inv.cpus = read_cpus(procfs)

    def memory() -> None:
        inv.memory = read_memory(procfs, sysfs)

    def pci() -> None:
        inv.pci, inv.pci_total = read_pci(sysfs)

    def disk() -> None:
        if (sysfs / "block").is_dir():  # none at all: no block layer to list
            inv.disks = disk_summary(disk_inventory(sysfs, dev, probe=False))

    collectors: tuple[tuple[str, Callable[[], None]], ...] = (
        ("dmi", dmi), ("cpu", cpu), ("memory", memory), ("pci", pci), ("disks", disk))
    for name, run in collectors:
        try:
            run()
        except Exception as exc:  # a collector never fails the boot
            reason = str(exc) if isinstance(exc, PyinitError) else \
                f"{name}: {type(exc).__name__}: {exc}"
            inv.errors[name] = reason
            logger.warning(f"inventory: {reason}; left out")
    return inv


def start(*, sysfs: Path = Path("/sys"), procfs: Path = Path("/proc"), dev: Path = Path("/dev"),
          nics: Sequence[Nic] = (), wait: Callable[[], object] | None = None
          ) -> threading.Thread:
    """Take the inventory in a daemon thread: one console line and one ``hardware inventory``
    event (which the server sink posts) when done. ``wait``: called first in the thread (the
    boot passes the wait for the drivers still loading in the background, so the PCI list
    shows which driver each device got)."""
    def work() -> None:
        try:
            if wait is not None:
                wait()
            inv = collect(sysfs=sysfs, procfs=procfs, dev=dev, nics=nics)
            logger.info(f"inventory: {inv.summary()}")
            log.event("hardware", "inventory", **inv.event())
        except Exception as exc:  # a bug: one line, the boot goes on
            logger.warning(f"inventory: not taken: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=work, name="inventory", daemon=True)
    thread.start()
    return thread
