"""Which of the servers' network and storage controllers an initramfs can drive.

``data/hardware.csv`` is the project's reference list: real controllers (vendor and device IDs,
subsystem IDs, PCI class code) and the driver the kernel binds to each. For every row the
device's modalias is built exactly as the kernel writes it under ``/sys`` and matched with the
boot's own matcher (:func:`pyinit.kmod.match_aliases`):

- against the full kernel's ``modules.alias``: the list itself is right (the driver named is one
  the kernel would load for that device);
- against the built initramfs's ``modules.alias``: the initramfs covers the device.

Pure: text in, results out. The builder prints the figure and writes it into the manifest; the
tests fail the default build below 100 %.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from pyinit import kmod
from pyinit_build.errors import BuildError

REFERENCE = "data/hardware.csv"
KINDS = ("net", "storage")
BUSES = ("pci", "usb")
FIELDS = ("kind", "bus", "vendor", "device", "subvendor", "subdevice", "class", "driver",
          "name")
_HEX4 = re.compile(r"[0-9a-f]{4}")
_HEX6 = re.compile(r"[0-9a-f]{6}")


@dataclass(frozen=True)
class Controller:
    kind: str               # net | storage
    bus: str                # pci | usb
    vendor: str             # 4 lower-case hex digits
    device: str             # (USB: the product ID)
    subvendor: str          # PCI only, "" for USB
    subdevice: str
    device_class: str       # PCI: 24-bit class code; USB: interface class/subclass/protocol
    driver: str             # module name, as kmod.module_name() spells it
    name: str

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"

    @property
    def modalias(self) -> str:
        """The modalias the kernel gives this device (``drivers/pci/pci-sysfs.c``,
        ``drivers/usb/core/message.c``), with the interface of a USB device."""
        c = self.device_class.upper()
        if self.bus == "pci":
            return (f"pci:v0000{self.vendor.upper()}d0000{self.device.upper()}"
                    f"sv0000{self.subvendor.upper()}sd0000{self.subdevice.upper()}"
                    f"bc{c[0:2]}sc{c[2:4]}i{c[4:6]}")
        return (f"usb:v{self.vendor.upper()}p{self.device.upper()}d0100dc00dsc00dp00"
                f"ic{c[0:2]}isc{c[2:4]}ip{c[4:6]}in00")


def parse_reference(text: str, source: str = REFERENCE) -> list[Controller]:
    """The rows of a reference list (``#`` lines are comments, then a header row). A bad row
    raises :class:`BuildError` naming ``source:line`` and the field."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise BuildError("coverage", f"{source}: no rows")
    header = next(csv.reader([lines[0][1]]))
    if tuple(h.strip() for h in header) != FIELDS:
        raise BuildError("coverage", f"{source}:{lines[0][0]}: header must be "
                                     f"{','.join(FIELDS)}")
    out: list[Controller] = []
    seen: set[tuple[str, str]] = set()
    for lineno, line in lines[1:]:
        row = [f.strip() for f in next(csv.reader([line]))]
        where = f"{source}:{lineno}"
        if len(row) != len(FIELDS):
            raise BuildError("coverage", f"{where}: {len(row)} fields, expected {len(FIELDS)}")
        values = dict(zip(FIELDS, row, strict=True))
        for key in ("vendor", "device"):
            values[key] = values[key].lower()
            if not _HEX4.fullmatch(values[key]):
                raise BuildError("coverage", f"{where}: {key} {values[key]!r} is not 4 hex "
                                             "digits")
        values["class"] = values["class"].lower()
        if not _HEX6.fullmatch(values["class"]):
            raise BuildError("coverage", f"{where}: class {values['class']!r} is not 6 hex "
                                         "digits")
        if values["kind"] not in KINDS or values["bus"] not in BUSES:
            raise BuildError("coverage", f"{where}: kind must be one of {', '.join(KINDS)} "
                                         f"and bus one of {', '.join(BUSES)}")
        if values["bus"] == "pci":
            for key in ("subvendor", "subdevice"):
                values[key] = values[key].lower()
                if not _HEX4.fullmatch(values[key]):
                    raise BuildError("coverage", f"{where}: {key} {values[key]!r} is not 4 "
                                                 "hex digits")
        elif values["subvendor"] or values["subdevice"]:
            raise BuildError("coverage", f"{where}: a USB row has no subsystem IDs")
        if not values["driver"] or not values["name"]:
            raise BuildError("coverage", f"{where}: driver and name must not be empty")
        identity = (values["bus"], values["vendor"] + values["device"] + values["subvendor"]
                    + values["subdevice"])
        if identity in seen:
            raise BuildError("coverage", f"{where}: {values['vendor']}:{values['device']} "
                                         "is listed twice with the same subsystem")
        seen.add(identity)
        out.append(Controller(values["kind"], values["bus"], values["vendor"], values["device"],
                              values["subvendor"], values["subdevice"], values["class"],
                              kmod.module_name(values["driver"]), values["name"]))
    return out


def reference() -> list[Controller]:
    """The project's reference list (package data)."""
    text = resources.files("pyinit_build").joinpath(REFERENCE).read_text()
    return parse_reference(text)


@dataclass(frozen=True)
class Coverage:
    covered: tuple[Controller, ...]
    missing: tuple[tuple[Controller, tuple[str, ...]], ...]  # with what matched instead

    @property
    def total(self) -> int:
        return len(self.covered) + len(self.missing)

    @property
    def percent(self) -> float:
        return round(100.0 * len(self.covered) / self.total, 1) if self.total else 0.0

    def summary(self) -> str:
        return f"{len(self.covered)}/{self.total} reference controllers ({self.percent:.1f} %)"

    def manifest(self) -> dict[str, object]:
        return {"reference": REFERENCE, "controllers": self.total,
                "covered": len(self.covered), "percent": self.percent,
                "missing": [f"{c.ids} {c.driver} ({c.name})" for c, _ in self.missing]}


def check(controllers: Iterable[Controller], table: kmod.AliasTable) -> Coverage:
    """Which ``controllers`` get their driver from ``table``: the named driver must be among
    the modules the boot's matcher loads for the device's modalias."""
    covered: list[Controller] = []
    missing: list[tuple[Controller, tuple[str, ...]]] = []
    for c in controllers:
        matched = kmod.match_aliases([c.modalias], table)
        if c.driver in matched:
            covered.append(c)
        else:
            missing.append((c, tuple(matched)))
    return Coverage(tuple(covered), tuple(missing))


def by_driver(controllers: Sequence[Controller]) -> dict[str, list[Controller]]:
    """The rows grouped by driver, in first-seen order (the docs' hardware table)."""
    out: dict[str, list[Controller]] = {}
    for c in controllers:
        out.setdefault(c.driver, []).append(c)
    return out
