"""pyinit.disks.report: the console table and the disks event."""

from __future__ import annotations

import json

from pyinit.disks.report import inventory_event, inventory_lines

from .fakes import FakeSys, inv

# --- reporting -----------------------------------------------------------------------------------

def test_inventory_lines(machine: FakeSys) -> None:
    lines = inventory_lines(inv(machine))
    assert lines[0].split() == ["NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "WWN", "ROT", "RM",
                                "BY-PATH", "STATE"]
    assert len(lines) == 6 and all(len(line) <= 200 for line in lines)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["vda"].endswith("  ok")
    assert rows["vdb"].endswith("mounted: /dev/vdb1 on /mnt")
    assert rows["sdb"].endswith("removable (usb)")
    assert "Samsung SSD 970 EVO Plu~" in rows["nvme0n1"]
    assert inventory_lines([])[-1] == "(no disks)"


def test_inventory_event_is_json(machine: FakeSys) -> None:
    event = json.loads(json.dumps(inventory_event(inv(machine))))
    assert event["count"] == 5
    vdb = next(d for d in event["disks"] if d["name"] == "vdb")
    assert vdb["path"] == "/dev/vdb"
    assert vdb["refused"] == ["mounted: /dev/vdb1 on /mnt"]
    assert vdb["partitions"][0]["name"] == "vdb1"
