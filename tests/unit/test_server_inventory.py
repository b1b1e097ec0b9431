"""The server side of the hardware inventory and LLDP: folded into the machine's summary
without moving its phase, shown by ``pyinit status MAC`` with every machine string escaped."""

from __future__ import annotations

import io
from pathlib import Path

import requests

from pyinit_build.cli import build_parser
from pyinit_server.status import MAX_NICS, Summary, fold
from tests.serverkit import ObservedServer

MAC = "52-54-00-12-34-56"
HARDWARE = {
    "step": "hardware", "status": "inventory",
    "system": {"vendor": "Dell Inc.", "product": "PowerEdge R640", "serial": "7XYZ123",
               "uuid": "4c4c4544-0058-5910-8033-b7c04f5a3132"},
    "bios": {"vendor": "Dell Inc.", "version": "2.12.2", "date": "07/09/2021"},
    "cpu": {"model": "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", "count": 64, "sockets": 2},
    "memory": {"total": 201_326_592_000, "physical": 206_158_430_208},
    "pci": {"count": 48, "devices": [{"slot": "0000:00:00.0"}] * 48},
    "disks": {"count": 2, "disks": []}, "nics": {"count": 4, "nics": []}, "errors": {},
}
NEIGHBOUR = {"step": "lldp", "status": "neighbour", "interface": "eno1",
             "chassis_id": "0c:42:a1:5e:77:07", "port_id": "Ethernet1/3",
             "port_description": "rack1 node01", "system_name": "switch01", "port_vlan": 100}
DONE = {"step": "lldp", "status": "done", "listened": ["eno1", "eno2"], "heard": ["eno1"],
        "silent": ["eno2"]}


def test_background_events_neither_move_the_phase_nor_start_a_run() -> None:
    s = Summary(MAC)
    fold(s, {"step": "provision", "status": "progress", "percent": 40.0}, 1.0)
    fold(s, HARDWARE, 2.0)
    fold(s, NEIGHBOUR, 3.0)
    assert (s.phase, s.state, s.percent, s.events, s.last_seen) == (
        "provision", "progress", 40.0, 3, 3.0)
    fold(s, {"step": "result", "status": "ok"}, 4.0)
    fold(s, DONE, 5.0)  # a late background event is no new run
    assert (s.result, s.phase) == ("ok", "provision")
    assert s.hardware is not None and s.hardware["product"] == "PowerEdge R640"
    assert (s.hardware["cpus"], s.hardware["pci"], s.hardware["memory"]) == (64, 48,
                                                                             201_326_592_000)
    assert s.lldp == {"eno1": {"heard": True, "system_name": "switch01",
                               "chassis_id": "0c:42:a1:5e:77:07", "port_id": "Ethernet1/3",
                               "port_description": "rack1 node01", "vlan": 100},
                      "eno2": {"heard": False}}
    fold(s, {"step": "rootfs", "status": "start"}, 6.0)  # the machine boots again
    assert s.result is None and s.hardware is not None  # the hardware is still the machine's


def test_hostile_inventory_is_bounded() -> None:
    s = Summary(MAC)
    fold(s, {"step": "hardware", "status": "inventory", "system": "not a dict",
             "cpu": {"count": "64", "model": ["x"]}, "pci": {"count": True}}, 1.0)
    assert s.hardware is not None
    assert (s.hardware["vendor"], s.hardware["cpus"], s.hardware["cpu_model"],
            s.hardware["pci"]) == (None, None, None, None)
    for i in range(MAX_NICS + 10):
        fold(s, {**NEIGHBOUR, "interface": f"eth{i}", "system_name": "x" * 10_000}, 2.0)
    assert len(s.lldp) == MAX_NICS
    assert len(s.lldp["eth0"]["system_name"]) == 200


def test_status_shows_hardware_and_neighbours(tmp_path: Path) -> None:
    (tmp_path / "machines").mkdir()
    with ObservedServer(tmp_path, open_writes=True) as srv:
        for ev in ({"step": "action", "status": "ok"}, HARDWARE,
                   {**NEIGHBOUR, "system_name": "sw\x1b[2J01"}, DONE):
            assert requests.post(f"{srv.url}/events/{MAC}", json=ev, timeout=10).status_code == 204
        one = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=10).json()
        assert one["hardware"]["serial"] == "7XYZ123" and one["lldp"]["eno2"] == {"heard": False}
        out = io.StringIO()
        args = build_parser().parse_args(["status", "--server", srv.url, MAC])
        assert args.func(args, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[2:6] == [
        "hardware: Dell Inc. PowerEdge R640, serial 7XYZ123, BIOS Dell Inc. 2.12.2 (07/09/2021)",
        "          64 CPUs (2 sockets): Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz; memory 187.5 "
        "GiB (192.0 GiB installed); 48 PCI devices, 2 disks, 4 NICs",
        "lldp:     eno1  sw\\x1b[2J01 port Ethernet1/3 (rack1 node01), vlan 100",
        "          eno2  no neighbour heard"]
    assert "\x1b" not in out.getvalue()
    hw = next(line for line in lines if "  hardware   inventory" in line)
    assert "pci=48" in hw and "slot" not in hw  # the PCI list as its count
