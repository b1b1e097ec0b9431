"""pyinit.network.links against a fake sysfs in tmp_path: the NICs, the choice by BOOTIF,
waiting for carrier with a fake clock, the NIC inventory, vlan=/bond= with a fake IPRoute.
Nothing here touches the host's links."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyinit.errors import ConfigError, NetworkError
from pyinit.network.links import (
    Nic,
    choose_nic,
    create_links,
    list_links,
    list_nics,
    nic_inventory_event,
    nic_inventory_lines,
    wait_for_carrier,
)

from .fakes import add_nic

# --- list_nics ---------------------------------------------------------------------------------


def test_list_nics_physical_ethernet_only_in_ifindex_order(sysfs: Path) -> None:
    nics = list_nics(sysfs)
    assert [n.name for n in nics] == ["eth0", "eth1"]
    eth0, eth1 = nics
    assert eth0 == Nic(name="eth0", mac="52:54:00:00:00:01", carrier=None, ifindex=2, up=False,
                       driver="virtio_net", physical=True)
    assert eth1.carrier is True and eth1.up is True


def test_list_links_includes_virtual(sysfs: Path) -> None:
    names = [n.name for n in list_links(sysfs)]
    assert names == ["eth0", "eth1", "veth0"]  # still no lo, no InfiniBand


def test_list_nics_reads_carrier_and_case(tmp_path: Path) -> None:
    add_nic(tmp_path, "enp1s0", "52:54:00:AB:CD:EF", ifindex=2, carrier="0", driver=None)
    (nic,) = list_nics(tmp_path)
    assert nic.mac == "52:54:00:ab:cd:ef"
    assert nic.carrier is False
    assert nic.driver is None


def test_list_nics_without_sysfs(tmp_path: Path) -> None:
    assert list_nics(tmp_path / "nope") == []


# --- choose_nic --------------------------------------------------------------------------------

NICS = [
    Nic("eth0", "52:54:00:00:00:01", carrier=None, ifindex=2),
    Nic("eth1", "52:54:00:00:00:02", carrier=False, ifindex=3),
    Nic("eth2", "52:54:00:00:00:03", carrier=True, ifindex=4),
    Nic("eth3", "52:54:00:00:00:04", carrier=True, ifindex=5),
]


@pytest.mark.parametrize(("bootif", "expected"), [
    (None, "eth2"),  # first with carrier
    ("", "eth2"),
    ("52:54:00:00:00:01", "eth0"),  # BOOTIF wins, even without carrier
    ("01-52-54-00-00-00-02", "eth1"),  # pxelinux/iPXE form, hardware type 01
    ("52-54-00-00-00-04", "eth3"),
    ("52:54:00:00:00:03".upper(), "eth2"),
    ("01-52-54-00-00-00-04".upper(), "eth3"),
])
def test_choose_nic(bootif: str | None, expected: str) -> None:
    assert choose_nic(NICS, bootif).name == expected


def test_choose_nic_unknown_bootif_names_the_mac_and_the_nics() -> None:
    with pytest.raises(NetworkError) as err:
        choose_nic(NICS, "01-AA-BB-CC-DD-EE-FF")
    msg = str(err.value)
    assert "BOOTIF aa:bb:cc:dd:ee:ff matches no NIC" in msg
    assert "eth0 52:54:00:00:00:01" in msg and "eth3 52:54:00:00:00:04" in msg
    assert "\n" not in msg


def test_choose_nic_bad_bootif_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BOOTIF"):
        choose_nic(NICS, "not-a-mac")


def test_choose_nic_no_carrier_lists_nics() -> None:
    with pytest.raises(NetworkError, match=r"no NIC has carrier \(seen: eth0 52:54:00:00:00:01 "
                                           r"down, eth1 52:54:00:00:00:02 no carrier\)"):
        choose_nic(NICS[:2], None)


def test_choose_nic_no_nics() -> None:
    with pytest.raises(NetworkError, match="no physical NIC found"):
        choose_nic([], None)


# --- wait_for_carrier ---------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when the code sleeps; runs ``on_sleep`` hooks."""

    def __init__(self) -> None:
        self.now = 100.0
        self.on_sleep: list[Callable[[float], None]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


def test_wait_for_carrier_brings_links_up_and_waits(sysfs: Path) -> None:
    clock = FakeClock()
    raised: list[str] = []

    def link_up(nic: Nic) -> None:
        raised.append(nic.name)
        (sysfs / "class/net" / nic.name / "flags").write_text("0x1003\n")
        (sysfs / "class/net" / nic.name / "carrier").write_text("0\n")

    def cable_in(now: float) -> None:
        if now >= 102.0:
            (sysfs / "class/net/eth0/carrier").write_text("1\n")

    clock.on_sleep.append(cable_in)
    nic, up = wait_for_carrier(lambda n: n.name == "eth0", timeout=5, link_up=link_up,
                               sysfs=sysfs, clock=clock, sleep=clock.sleep)
    assert nic.name == "eth0" and nic.carrier is True
    assert raised == ["eth0"]  # once, although polled ~20 times
    assert [n.name for n in up] == ["eth0"]
    assert 102.0 <= clock.now < 102.2


def test_wait_for_carrier_first_with_carrier_in_ifindex_order(sysfs: Path) -> None:
    (sysfs / "class/net/eth0/carrier").write_text("1\n")
    nic, up = wait_for_carrier(lambda n: True, timeout=5, link_up=lambda n: None,
                               sysfs=sysfs)
    assert nic.name == "eth0"
    assert [n.name for n in up] == ["eth0"]  # eth1 was already up


def test_wait_for_carrier_times_out_listing_nics(sysfs: Path) -> None:
    clock = FakeClock()
    (sysfs / "class/net/eth1/carrier").write_text("0\n")
    with pytest.raises(NetworkError) as err:
        wait_for_carrier(lambda n: True, timeout=3, link_up=lambda n: None,
                         sysfs=sysfs, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(103.0)
    assert str(err.value) == ("network: no carrier within 3 s (seen: eth0 52:54:00:00:00:01 "
                              "(virtio_net) down, eth1 52:54:00:00:00:02 (virtio_net) no carrier)")


def test_wait_for_carrier_finds_a_late_nic(tmp_path: Path) -> None:
    clock = FakeClock()

    def probe(now: float) -> None:
        if now >= 101.0 and not (tmp_path / "class/net/eth0").exists():
            add_nic(tmp_path, "eth0", "52:54:00:00:00:01", ifindex=2)

    clock.on_sleep.append(probe)
    nic, _ = wait_for_carrier(lambda n: n.mac == "52:54:00:00:00:01", timeout=5,
                              link_up=lambda n: None, sysfs=tmp_path, clock=clock,
                              sleep=clock.sleep)
    assert nic.name == "eth0"


# --- NIC inventory -----------------------------------------------------------------------------


def test_read_nic_speed_and_operstate(tmp_path: Path) -> None:
    d = add_nic(tmp_path, "eno1", "3c:ec:ef:00:00:01", ifindex=2, driver="ixgbe")
    (d / "speed").write_text("10000\n")
    (d / "operstate").write_text("up\n")
    d2 = add_nic(tmp_path, "ens3", "52:54:00:00:00:03", ifindex=3)
    (d2 / "speed").write_text("-1\n")  # virtio: SPEED_UNKNOWN
    eno1, ens3 = list_nics(tmp_path)
    assert (eno1.speed, eno1.operstate, eno1.driver) == (10000, "up", "ixgbe")
    assert (ens3.speed, ens3.operstate) == (None, None)


def test_nic_inventory_lines_and_event() -> None:
    nics = [Nic("eno1", "3c:ec:ef:00:00:01", True, 2, driver="ixgbe", speed=10000,
                operstate="up"),
            Nic("eno2", "3c:ec:ef:00:00:02", None, 3, driver=None, operstate="down")]
    assert nic_inventory_lines(nics) == [
        "NAME  MAC                DRIVER  CARRIER  SPEED      STATE",
        "eno1  3c:ec:ef:00:00:01  ixgbe   yes      10000Mb/s  up",
        "eno2  3c:ec:ef:00:00:02  -       -        -          down",
    ]
    assert nic_inventory_lines([])[-1] == "(no NICs)"
    event = nic_inventory_event(nics)
    assert event["count"] == 2
    assert event["nics"][0] == {"name": "eno1", "mac": "3c:ec:ef:00:00:01", "driver": "ixgbe",
                                "carrier": True, "speed": 10000, "operstate": "up",
                                "physical": True}
    json.dumps(event)


# --- vlan= and bond= links ---------------------------------------------------------------------


class FakeIPRoute:
    """Records pyroute2 ``link`` calls; ``links`` maps names to indexes."""

    def __init__(self, links: dict[str, int]) -> None:
        self.links = dict(links)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def link_lookup(self, *, ifname: str) -> list[int]:
        return [self.links[ifname]] if ifname in self.links else []

    def link(self, command: str, **kwargs: Any) -> None:
        self.calls.append((command, kwargs))
        if command == "add":
            self.links[kwargs["ifname"]] = 100 + len(self.links)


def test_create_links_bond_then_vlan_on_it(tmp_path: Path) -> None:
    from pyinit.cmdline import BondConfig, VlanConfig

    ipr = FakeIPRoute({"eth0": 2, "eth1": 3})
    made = create_links(ipr, [VlanConfig("bond0.7", 7, "bond0")],
                                [BondConfig(miimon=50)], timeout=1, sysfs=tmp_path)
    assert made == ["bond0", "bond0.7"]
    bond, vlan = ipr.links["bond0"], ipr.links["bond0.7"]
    assert ipr.calls == [
        ("add", {"ifname": "bond0", "kind": "bond"}),
        ("set", {"index": bond, "state": "down"}),
        ("set", {"index": bond, "kind": "bond", "bond_mode": 1, "bond_miimon": 50,
                 "bond_updelay": 0, "bond_downdelay": 0}),
        ("set", {"index": 2, "state": "down"}), ("set", {"index": 2, "master": bond}),
        ("set", {"index": 3, "state": "down"}), ("set", {"index": 3, "master": bond}),
        ("set", {"index": 2, "state": "up"}), ("set", {"index": 3, "state": "up"}),
        ("set", {"index": bond, "state": "up"}),
        ("set", {"index": bond, "state": "up"}),  # the VLAN's parent
        ("add", {"ifname": "bond0.7", "kind": "vlan", "link": bond, "vlan_id": 7}),
        ("set", {"index": vlan, "state": "up"}),
    ]


def test_create_links_missing_parent_names_it(tmp_path: Path) -> None:
    from pyinit.cmdline import VlanConfig

    add_nic(tmp_path, "eth0", "52:54:00:00:00:01", ifindex=2)
    with pytest.raises(NetworkError) as err:
        create_links(FakeIPRoute({"eth0": 2}), [VlanConfig("eth9.5", 5, "eth9")], [],
                     timeout=0.2, sysfs=tmp_path, sleep=lambda s: time.sleep(0.05))
    assert str(err.value) == ("network: eth9.5 parent eth9 does not exist after 0.2 s "
                              "(seen: eth0 52:54:00:00:00:01 (virtio_net) carrier)")
