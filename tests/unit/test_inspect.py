"""Inspect: the disks of a stored inventory and the rootDeviceHints that name each alone
(``pyinit status MAC --disks``, docs/lifecycle.md "Inspect")."""

from __future__ import annotations

from typing import Any

from pyinit.disks.hints import parse_hints, suggest
from pyinit.disks.inventory import Disk
from pyinit_server.status_cli import disk_hints

GIB = 1 << 30


def test_each_disk_gets_the_first_identity_no_other_disk_shares() -> None:
    disks: list[dict[str, Any]] = [
        {"name": "sda", "serial": "S1", "wwn": "0x5000c500a1",
         "by_path": "pci-0000:00:1f.2-ata-1"},
        {"name": "sdb", "serial": "DUP", "wwn": "0x5000c500b2",
         "by_path": "pci-0000:00:1f.2-ata-2"},
        {"name": "sdc", "serial": "DUP", "wwn": None, "by_path": "pci-0000:00:1f.2-ata-3"},
        {"name": "vda", "serial": None, "wwn": None, "by_path": None},
    ]
    assert suggest(disks) == [{"serial": "S1"}, {"wwn": "0x5000c500b2"},
                              {"by_path": "pci-0000:00:1f.2-ata-3"}, None]


def test_a_suggested_hint_matches_its_disk_and_only_it() -> None:
    real = [Disk("sda", 480 * GIB, serial="S1", by_path="pci-0000:00:1f.2-ata-1"),
            Disk("sdb", 480 * GIB, serial="S2", by_path="pci-0000:00:1f.2-ata-2")]
    stored = [{"name": d.name, "serial": d.serial, "by_path": d.by_path} for d in real]
    for disk, hint in zip(real, suggest(stored), strict=True):
        assert hint is not None
        hints = parse_hints(hint)
        assert [d.name for d in real if hints.mismatch(d) is None] == [disk.name]


def test_status_disks_reads_the_last_inventory_and_escapes_what_the_machine_said() -> None:
    old = {"step": "disks", "status": "inventory", "received": 1796600000.0,
           "disks": [{"name": "sda", "size": GIB, "serial": "OLD"}]}
    new = {"step": "disks", "status": "inventory", "received": 1796678400.0,
           "disks": [{"name": "nvme0n1", "size": 960 * GIB, "transport": "nvme",
                      "model": "Evil\x1b[2J", "serial": "N1"},
                     {"name": "vda", "size": 32 * GIB, "transport": "virtio"}]}
    text = disk_hints({"mac": "52:54:00:00:16:03", "log": [old, {"step": "result"}, new]})
    assert text == (
        "disks of 52:54:00:00:16:03, inventory of 2026-12-07 21:20:00 UTC:\n"
        "  nvme0n1  960 GiB  nvme, Evil\\x1b[2J, N1\n"
        '      rootDeviceHints {"serial": "N1"}\n'
        "  vda  32 GiB  virtio\n"
        "      rootDeviceHints (nothing names it alone: use size, model, rotational "
        "together)\n")
    assert disk_hints({"mac": "x", "log": [{"step": "result"}]}) is None
