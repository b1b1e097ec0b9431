"""pyinit.inventory: the parsers on real texts, the collectors on tmp_path sysfs/proc trees, the
event's shape and size, and the boot's background hook (init.start_lldp, init.start_inventory)."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from pyinit import init, inventory, lldp, log
from pyinit.network.links import list_nics
from pyinit.network.result import NetworkResult
from pyinit_server.server import MAX_EVENT_BYTES

from .disks.fakes import FakeSys
from .network.fakes import add_nic
from .test_lldp import LLDPD_FRAME

GIB = 1 << 30

# Two sockets of a real Xeon, trimmed to two logical CPUs per socket.
XEON = "".join(f"""processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
physical id\t: {i // 2}
core id\t: {i % 2}
cpu cores\t: 16
flags\t\t: fpu vme de pse

""" for i in range(4))
ARM64 = "".join(f"""processor\t: {i}
BogoMIPS\t: 50.00
CPU implementer\t: 0x41
CPU part\t: 0xd0c

""" for i in range(8))
MEMINFO = "MemTotal:        2014388 kB\nMemFree:          1780000 kB\n"


def smbios(kind: int, formatted: bytes, strings: bytes = b"") -> bytes:
    """One SMBIOS structure: header (type, length, handle), formatted area, string set."""
    body = bytes([kind, 4 + len(formatted)]) + b"\x00\x00" + formatted
    return body + (strings or b"\0") + b"\0"


def dimm(size_word: int, extended: int = 0) -> bytes:
    formatted = bytearray(0x1C + 4 - 4)  # up to and including Extended Size (0x1C..0x1F)
    formatted[0x0C - 4:0x0E - 4] = size_word.to_bytes(2, "little")
    formatted[0x1C - 4:0x20 - 4] = extended.to_bytes(4, "little")
    return smbios(17, bytes(formatted), b"DIMM A1\0")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def machine(root: Path) -> tuple[Path, Path]:
    """A sysfs and a procfs tree: DMI, two PCI devices (one bound), cpuinfo, meminfo."""
    sysfs, procfs = root / "sys", root / "proc"
    dmi = sysfs / "class" / "dmi" / "id"
    for attr, value in {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R640",
                        "product_serial": "7XYZ123", "product_version": "",
                        "product_uuid": "4c4c4544-0058-5910-8033-b7c04f5a3132",
                        "bios_vendor": "Dell Inc.", "bios_version": "2.12.2",
                        "bios_date": "07/09/2021", "board_name": "0W23H8"}.items():
        write(dmi / attr, value + "\n")
    pci = sysfs / "bus" / "pci" / "devices"
    for slot, ids in {"0000:00:1f.2": ("0x8086", "0x2922", "0x010601", "0x1af4", "0x1100"),
                      "0000:3b:00.0": ("0x14e4", "0x16d7", "0x020000", "0x1028", "0x1fe5")
                      }.items():
        dev = sysfs / "devices" / "pci0000:00" / slot
        for name, value in zip(("vendor", "device", "class", "subsystem_vendor",
                                "subsystem_device"), ids, strict=True):
            write(dev / name, value + "\n")
        pci.mkdir(parents=True, exist_ok=True)
        (pci / slot).symlink_to(dev)
    drivers = sysfs / "bus" / "pci" / "drivers" / "bnxt_en"
    drivers.mkdir(parents=True)
    (sysfs / "devices" / "pci0000:00" / "0000:3b:00.0" / "driver").symlink_to(drivers)
    write(procfs / "cpuinfo", XEON)
    write(procfs / "meminfo", MEMINFO)
    table = sysfs / "firmware" / "dmi" / "tables" / "DMI"
    table.parent.mkdir(parents=True)
    table.write_bytes(dimm(16384) + dimm(0) + smbios(127, b""))
    return sysfs, procfs


# ---- parsers -------------------------------------------------------------------------------


def test_parse_cpuinfo() -> None:
    assert inventory.parse_cpuinfo(XEON) == inventory.Cpus(
        model="Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", count=4, sockets=2, cores=32)
    assert inventory.parse_cpuinfo(ARM64) == inventory.Cpus(model=None, count=8)
    assert inventory.parse_cpuinfo("") == inventory.Cpus(model=None, count=0)


def test_parse_meminfo() -> None:
    assert inventory.parse_meminfo(MEMINFO) == 2014388 * 1024
    assert inventory.parse_meminfo("MemFree: 1 kB\n") is None


@pytest.mark.parametrize(("table", "size"), [
    (dimm(16384) + dimm(16384) + smbios(127, b""), 32 * GIB),  # MiB granularity
    (dimm(0x8000 | 512) + smbios(127, b""), 512 << 10),  # KiB granularity
    (dimm(0x7FFF, extended=65536) + smbios(127, b""), 64 * GIB),  # Extended Size
    (dimm(0) + dimm(0xFFFF) + smbios(127, b""), None),  # empty slot, unknown size
    (smbios(1, bytes(20), b"QEMU\0") + dimm(2048), 2 * GIB),  # other types, no end marker
    (dimm(2048)[:10], None),  # truncated
    (b"", None),
])
def test_smbios_memory(table: bytes, size: int | None) -> None:
    assert inventory.smbios_memory(table) == size


def test_clean() -> None:
    assert inventory.clean("  Dell Inc.\n") == "Dell Inc."
    assert inventory.clean(" \n") is None and inventory.clean(None) is None
    assert inventory.clean("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert len(inventory.clean("x" * 1000) or "") == inventory.MAX_TEXT


# ---- collectors ----------------------------------------------------------------------------


def test_collect_a_machine(tmp_path: Path) -> None:
    sysfs, procfs = machine(tmp_path)
    FakeSys(tmp_path).disk("pci0000:00/0000:00:05.0/virtio3", "vda", size=20 * GIB,
                           devnum="253:0", attrs={"serial": "DISK0"})
    add_nic(sysfs, "eth0", "52:54:00:12:34:56", ifindex=2)
    inv = inventory.collect(sysfs=sysfs, procfs=procfs, dev=tmp_path / "dev",
                            nics=list_nics(sysfs))
    ev = inv.event()
    assert ev["system"] == {"vendor": "Dell Inc.", "product": "PowerEdge R640", "version": None,
                            "serial": "7XYZ123", "uuid": "4c4c4544-0058-5910-8033-b7c04f5a3132",
                            "sku": None}
    assert ev["bios"] == {"vendor": "Dell Inc.", "version": "2.12.2", "date": "07/09/2021"}
    assert ev["board"] == {"vendor": None, "product": "0W23H8", "serial": None}
    assert ev["cpu"] == {"model": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", "count": 4,
                         "sockets": 2, "cores": 32}
    assert ev["memory"] == {"total": 2014388 * 1024, "physical": 16 * GIB}
    assert ev["pci"] == {"count": 2, "devices": [
        {"slot": "0000:00:1f.2", "id": "8086:2922", "class": "010601", "subsystem": "1af4:1100",
         "driver": None},
        {"slot": "0000:3b:00.0", "id": "14e4:16d7", "class": "020000", "subsystem": "1028:1fe5",
         "driver": "bnxt_en"}]}
    assert ev["disks"]["count"] == 1
    assert {k: ev["disks"]["disks"][0][k] for k in ("name", "size", "serial")} == {
        "name": "vda", "size": 20 * GIB, "serial": "DISK0"}
    assert [n["name"] for n in ev["nics"]["nics"]] == ["eth0"]
    assert ev["errors"] == {}
    json.dumps(ev)  # JSON-ready as it is
    assert inv.summary() == ("Dell Inc. PowerEdge R640, serial 7XYZ123; 4 CPUs (Intel(R) Xeon(R) "
                             "Gold 6130 CPU @ 2.10GHz); 1.9 GiB memory; 2 PCI devices, 1 disks, "
                             "1 NICs")


def test_collect_without_dmi_pci_or_block(tmp_path: Path) -> None:
    """An arm64 VM: no DMI, no PCI bus, no disks: empty parts, no warning."""
    write(tmp_path / "proc" / "cpuinfo", ARM64)
    write(tmp_path / "proc" / "meminfo", MEMINFO)
    (tmp_path / "sys").mkdir()
    inv = inventory.collect(sysfs=tmp_path / "sys", procfs=tmp_path / "proc")
    ev = inv.event()
    assert (ev["system"], ev["pci"]["count"], ev["disks"]["count"], ev["errors"]) == (
        None, 0, 0, {})
    assert ev["memory"] == {"total": 2014388 * 1024, "physical": None}
    assert inv.summary().startswith("no DMI, serial -; 8 CPUs (model unknown)")


def test_a_failing_collector_is_one_warning(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(log, "_console", buf)
    log.configure()
    sysfs, procfs = machine(tmp_path)
    serial = sysfs / "class" / "dmi" / "id" / "product_serial"
    serial.unlink()
    serial.mkdir()  # unreadable: EISDIR, as a firmware bug's EIO would be
    inv = inventory.collect(sysfs=sysfs, procfs=procfs)
    assert inv.dmi is None and inv.cpus is not None and len(inv.pci) == 2
    assert inv.errors == {"dmi": f"dmi: cannot read {serial}: Is a directory"}
    assert buf.getvalue() == (f"pyinit: WARNING: inventory: dmi: cannot read {serial}: "
                              "Is a directory; left out\n")


def test_event_of_a_big_server_fits_the_server(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    pci = sysfs / "bus" / "pci" / "devices"
    for i in range(532):
        dev = pci / f"0000:{i >> 5:02x}:{i & 31:02x}.0"
        (dev / "driver").parent.mkdir(parents=True)
        (dev / "driver").symlink_to(tmp_path / "drivers" / "i40e")
        for name, value in (("vendor", "0x8086"), ("device", "0x1572"), ("class", "0x020000"),
                            ("subsystem_vendor", "0x8086"), ("subsystem_device", "0x0006")):
            write(dev / name, value)
    inv = inventory.collect(sysfs=sysfs, procfs=tmp_path / "proc")
    assert inv.pci[0]["driver"] == "i40e"
    assert len(inv.pci) == inventory.MAX_PCI and inv.event()["pci"]["count"] == 532
    event = {"step": "hardware", "status": "inventory", **inv.event()}
    assert len(json.dumps(event)) < MAX_EVENT_BYTES


# ---- the boot's hook -------------------------------------------------------------------------


def test_background_posts_inventory_and_lldp(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """step_action's background work: the inventory event, and the LLDP listener on every
    physical NIC — the down one raised for the window and put down again by stop_background
    before the result."""
    sysfs, procfs = machine(tmp_path)
    add_nic(sysfs, "eth0", "52:54:00:12:34:56", ifindex=2)
    add_nic(sysfs, "eth1", "52:54:00:12:34:57", ifindex=3, flags="0x1002", carrier=None)
    monkeypatch.setattr(init, "SYSFS", sysfs)
    monkeypatch.setattr(init, "PROCFS", procfs)
    ends: dict[str, socket.socket] = {}
    links: list[tuple[str, bool]] = []

    def opener(name: str) -> socket.socket:
        ours, ends[name] = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        return ours

    monkeypatch.setattr(lldp, "open_socket", opener)
    monkeypatch.setattr(lldp, "set_link", lambda name, up: links.append((name, up)))
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(log, "_console", io.StringIO())
    log.configure()
    log.clear_sinks()
    log.add_sink(events.append)
    ctx = init.Context(network=NetworkResult(
        interface="eth0", mac="52:54:00:12:34:56", address="10.0.2.15", prefixlen=24,
        gateway=None, dns=(), source="static", server=None, nics=tuple(list_nics(sysfs))))
    try:
        t0 = time.monotonic()
        init.start_lldp(ctx)
        init.start_inventory(ctx)
        assert time.monotonic() - t0 < 0.5  # never waits for a switch
        deadline = time.monotonic() + 5
        while len(ends) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ends["eth0"].send(LLDPD_FRAME)
        while not any(e["step"] == "lldp" for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        init.stop_background(ctx)
    finally:
        log.clear_sinks()
        for end in ends.values():
            end.close()
    kinds = [(e["step"], e["status"], e.get("interface")) for e in events]
    assert ("hardware", "inventory", None) in kinds
    assert [k for k in kinds if k[0] == "lldp"] == [("lldp", "neighbour", "eth0"),
                                                     ("lldp", "done", None)]
    assert events[-1]["silent"] == ["eth1"]
    hw = next(e for e in events if e["step"] == "hardware")
    assert hw["system"]["product"] == "PowerEdge R640" and hw["nics"]["count"] == 2
    assert links == [("eth1", True), ("eth1", False)]
    assert ctx.lldp_listener is not None and not ctx.lldp_listener.is_alive()
