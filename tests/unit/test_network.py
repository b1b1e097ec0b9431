"""Unit tests for pyinit.network: a fake sysfs in tmp_path, a fake clock, a fake DHCP client.

Nothing here touches the host's links (configure() itself is covered by the netns tests).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyinit import network
from pyinit.errors import ConfigError, NetworkError
from pyinit.network import DhcpThread, LeaseInfo, NetworkResult, Nic

# --- fake sysfs --------------------------------------------------------------------------------


def add_nic(sysfs: Path, name: str, mac: str, *, ifindex: int, carrier: str | None = "1",
            physical: bool = True, arptype: int = 1, flags: str = "0x1003",
            driver: str | None = "virtio_net") -> Path:
    """One ``class/net/<name>`` entry, laid out as the kernel does."""
    d = sysfs / "class" / "net" / name
    d.mkdir(parents=True)
    (d / "address").write_text(mac + "\n")
    (d / "type").write_text(f"{arptype}\n")
    (d / "ifindex").write_text(f"{ifindex}\n")
    (d / "flags").write_text(flags + "\n")
    if carrier is not None:
        (d / "carrier").write_text(carrier + "\n")
    if physical:
        dev = sysfs / "devices" / "pci0000:00" / f"0000:00:0{ifindex}.0"
        dev.mkdir(parents=True)
        (d / "device").symlink_to(dev)
        if driver:
            drv = sysfs / "bus" / "pci" / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (dev / "driver").symlink_to(drv)
    return d


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    add_nic(root, "lo", "00:00:00:00:00:00", ifindex=1, physical=False, arptype=772,
            flags="0x9")
    add_nic(root, "eth1", "52:54:00:00:00:02", ifindex=3, carrier="1")
    add_nic(root, "eth0", "52:54:00:00:00:01", ifindex=2, carrier=None, flags="0x1002")
    add_nic(root, "veth0", "02:00:00:00:00:09", ifindex=4, physical=False)
    add_nic(root, "ib0", "80:00:00:48:fe:80", ifindex=5, arptype=32)
    return root


# --- list_nics ---------------------------------------------------------------------------------


def test_list_nics_physical_ethernet_only_in_ifindex_order(sysfs: Path) -> None:
    nics = network.list_nics(sysfs)
    assert [n.name for n in nics] == ["eth0", "eth1"]
    eth0, eth1 = nics
    assert eth0 == Nic(name="eth0", mac="52:54:00:00:00:01", carrier=None, ifindex=2, up=False,
                       driver="virtio_net", physical=True)
    assert eth1.carrier is True and eth1.up is True


def test_list_nics_include_virtual(sysfs: Path) -> None:
    names = [n.name for n in network.list_nics(sysfs, include_virtual=True)]
    assert names == ["eth0", "eth1", "veth0"]  # still no lo, no InfiniBand


def test_list_nics_reads_carrier_and_case(tmp_path: Path) -> None:
    add_nic(tmp_path, "enp1s0", "52:54:00:AB:CD:EF", ifindex=2, carrier="0", driver=None)
    (nic,) = network.list_nics(tmp_path)
    assert nic.mac == "52:54:00:ab:cd:ef"
    assert nic.carrier is False
    assert nic.driver is None


def test_list_nics_without_sysfs(tmp_path: Path) -> None:
    assert network.list_nics(tmp_path / "nope") == []


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
    assert network.choose_nic(NICS, bootif).name == expected


def test_choose_nic_unknown_bootif_names_the_mac_and_the_nics() -> None:
    with pytest.raises(NetworkError) as err:
        network.choose_nic(NICS, "01-AA-BB-CC-DD-EE-FF")
    msg = str(err.value)
    assert "BOOTIF aa:bb:cc:dd:ee:ff matches no NIC" in msg
    assert "eth0 52:54:00:00:00:01" in msg and "eth3 52:54:00:00:00:04" in msg
    assert "\n" not in msg


def test_choose_nic_bad_bootif_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BOOTIF"):
        network.choose_nic(NICS, "not-a-mac")


def test_choose_nic_no_carrier_lists_nics() -> None:
    with pytest.raises(NetworkError, match=r"no NIC has carrier \(seen: eth0 52:54:00:00:00:01 "
                                           r"down, eth1 52:54:00:00:00:02 no carrier\)"):
        network.choose_nic(NICS[:2], None)


def test_choose_nic_no_nics() -> None:
    with pytest.raises(NetworkError, match="no physical NIC found"):
        network.choose_nic([], None)


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
    nic, up = network.wait_for_carrier(lambda n: n.name == "eth0", timeout=5, link_up=link_up,
                                       sysfs=sysfs, clock=clock, sleep=clock.sleep)
    assert nic.name == "eth0" and nic.carrier is True
    assert raised == ["eth0"]  # once, although polled ~20 times
    assert [n.name for n in up] == ["eth0"]
    assert 102.0 <= clock.now < 102.2


def test_wait_for_carrier_first_with_carrier_in_ifindex_order(sysfs: Path) -> None:
    (sysfs / "class/net/eth0/carrier").write_text("1\n")
    nic, up = network.wait_for_carrier(lambda n: True, timeout=5, link_up=lambda n: None,
                                       sysfs=sysfs)
    assert nic.name == "eth0"
    assert [n.name for n in up] == ["eth0"]  # eth1 was already up


def test_wait_for_carrier_times_out_listing_nics(sysfs: Path) -> None:
    clock = FakeClock()
    (sysfs / "class/net/eth1/carrier").write_text("0\n")
    with pytest.raises(NetworkError) as err:
        network.wait_for_carrier(lambda n: True, timeout=3, link_up=lambda n: None,
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
    nic, _ = network.wait_for_carrier(lambda n: n.mac == "52:54:00:00:00:01", timeout=5,
                                      link_up=lambda n: None, sysfs=tmp_path, clock=clock,
                                      sleep=clock.sleep)
    assert nic.name == "eth0"


# --- resolv.conf -------------------------------------------------------------------------------


def test_render_resolv_conf() -> None:
    assert network.render_resolv_conf(("10.0.2.3", "10.0.2.4"), ("example.org",)) == (
        "# written by pyinit\nsearch example.org\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n")
    assert network.render_resolv_conf(["10.0.2.3"]) == (
        "# written by pyinit\nnameserver 10.0.2.3\n")
    assert network.render_resolv_conf([], ["", "a.b"]) == "# written by pyinit\nsearch a.b\n"


def test_write_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "resolv.conf"
    assert network.write_resolv_conf(path, ()) is False
    assert not path.exists()
    assert network.write_resolv_conf(path, ("10.0.2.3",)) is True
    assert path.read_text() == "# written by pyinit\nnameserver 10.0.2.3\n"
    assert network.write_resolv_conf(path, ("10.0.2.3",)) is False  # unchanged
    assert [p.name for p in path.parent.iterdir()] == ["resolv.conf"]  # no temp left


# --- leases ------------------------------------------------------------------------------------


def make_lease(**options: Any) -> Any:
    opts: dict[str, Any] = {
        "message_type": 5, "server_id": "10.0.2.2", "subnet_mask": "255.255.255.0",
        "router": ["10.0.2.1", "10.0.2.254"], "name_server": ["10.0.2.3"], "lease_time": 600,
        **options}
    ack = {"yiaddr": "10.0.2.15", "options": {k: v for k, v in opts.items() if v is not None}}
    return network._memory_lease_type()(ack=ack, interface="eth0",
                                         server_mac="52:55:0a:00:02:02")


def test_lease_info_gateway_is_the_router_option() -> None:
    info = network.lease_info(make_lease(domain_name="lab.example"))
    assert info == LeaseInfo(address="10.0.2.15", prefixlen=24, gateway="10.0.2.1",
                             dns=("10.0.2.3",), server="10.0.2.2", domain="lab.example",
                             lease_time=600)


def test_lease_info_without_router_mask_or_lease_end() -> None:
    info = network.lease_info(make_lease(router=None, subnet_mask=None, name_server=None,
                                         lease_time=-1))
    assert info.gateway is None  # never falls back to the server's address
    assert info.prefixlen == 32
    assert info.dns == ()
    assert info.lease_time is None


def test_memory_lease_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    lease = make_lease()
    lease.dump()
    assert type(lease).load("eth0") is None
    assert list(tmp_path.iterdir()) == []


def test_network_result_as_dict_is_json() -> None:
    result = NetworkResult(interface="eth0", mac="52:54:00:00:00:01", address="10.0.2.15",
                           prefixlen=24, gateway="10.0.2.1", dns=("10.0.2.3",), source="dhcp",
                           server="10.0.2.2", dhcp=DhcpThread("eth0"))
    out = json.loads(json.dumps(result.as_dict()))
    assert "dhcp" not in out
    assert out["dns"] == ["10.0.2.3"] and out["gateway"] == "10.0.2.1"


# --- DhcpThread with a fake client --------------------------------------------------------------


class FakeClient:
    """Stands in for AsyncDHCPClient: binds ``bind_after`` s after bootstrap (never if None)."""

    instances: list[FakeClient] = []

    def __init__(self, config: Any, *, bind_after: float | None = 0.01,
                 fail: BaseException | None = None) -> None:
        self.config = config
        self.state = "INIT"
        self.bind_after = bind_after
        self.fail = fail
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exited = False
        FakeClient.instances.append(self)

    async def __aenter__(self) -> FakeClient:
        if self.fail:
            raise self.fail
        self.loop = asyncio.get_running_loop()
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.state = "OFF"
        self.exited = True

    async def bootstrap(self) -> None:
        self.state = "SELECTING"
        if self.bind_after is not None:
            asyncio.get_running_loop().call_later(
                self.bind_after, lambda: asyncio.ensure_future(self.fire("bound")))

    async def fire(self, trigger: str) -> None:
        self.state = "BOUND"
        for hook in self.config.hooks:
            if trigger in hook.triggers:
                await hook(make_lease())

    def fire_threadsafe(self, trigger: str) -> None:
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self.fire(trigger), self.loop).result(5)


def factory(**kwargs: Any) -> Callable[[Any], FakeClient]:
    return lambda config: FakeClient(config, **kwargs)


def test_dhcp_thread_binds_applies_and_keeps_running() -> None:
    events: list[tuple[str, str, str]] = []

    async def on_change(event: str, lease: LeaseInfo) -> None:
        events.append((event, lease.address, threading.current_thread().name))

    dhcp = DhcpThread("eth0", on_change=on_change, client_factory=factory()).start()
    try:
        lease = dhcp.wait_bound(5)
        assert lease.address == "10.0.2.15" and lease.gateway == "10.0.2.1"
        assert events == [("bound", "10.0.2.15", "dhcp-eth0")]  # applied in the DHCP thread
        assert dhcp.bound_after is not None and dhcp.bound_after < 5
        config = FakeClient.instances[-1].config
        assert config.handle_signals is False and config.write_pidfile is False
        assert config.release is False and config.vendor_id == "pyinit"
        assert config.host_name is None
        time.sleep(0.1)
        assert dhcp.is_alive() and dhcp.state == "BOUND"
        FakeClient.instances[-1].fire_threadsafe("renewed")
        assert dhcp.count("renewed") == 1 and events[-1][0] == "renewed"
        FakeClient.instances[-1].fire_threadsafe("expired")
        assert dhcp.lease is None
    finally:
        dhcp.stop()
    assert not dhcp.is_alive()
    assert FakeClient.instances[-1].exited


def test_dhcp_thread_timeout_is_a_network_error() -> None:
    dhcp = DhcpThread("eth0", client_factory=factory(bind_after=None)).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(NetworkError) as err:
            dhcp.wait_bound(0.3)
    finally:
        dhcp.stop()
    assert 0.3 <= time.monotonic() - t0 < 2
    assert str(err.value) == "network: eth0: no DHCP lease within 0.3 s (client SELECTING)"
    assert not dhcp.is_alive()


def test_dhcp_thread_client_failure_is_reported_at_once() -> None:
    dhcp = DhcpThread("eth9", client_factory=factory(
        fail=OSError(19, "No such device"))).start()
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match=r"eth9: DHCP client failed: OSError: .*No such device"):
        dhcp.wait_bound(10)
    assert time.monotonic() - t0 < 2
    dhcp.stop()


def test_dhcp_thread_apply_failure_fails_the_wait() -> None:
    async def on_change(event: str, lease: LeaseInfo) -> None:
        raise PermissionError("Operation not permitted")

    dhcp = DhcpThread("eth0", on_change=on_change, client_factory=factory()).start()
    try:
        with pytest.raises(NetworkError, match="PermissionError: Operation not permitted"):
            dhcp.wait_bound(5)
    finally:
        dhcp.stop()


def test_dhcp_thread_stop_before_start_is_harmless() -> None:
    DhcpThread("eth0").stop()


# --- NIC inventory -----------------------------------------------------------------------------


def test_read_nic_speed_and_operstate(tmp_path: Path) -> None:
    d = add_nic(tmp_path, "eno1", "3c:ec:ef:00:00:01", ifindex=2, driver="ixgbe")
    (d / "speed").write_text("10000\n")
    (d / "operstate").write_text("up\n")
    d2 = add_nic(tmp_path, "ens3", "52:54:00:00:00:03", ifindex=3)
    (d2 / "speed").write_text("-1\n")  # virtio: SPEED_UNKNOWN
    eno1, ens3 = network.list_nics(tmp_path)
    assert (eno1.speed, eno1.operstate, eno1.driver) == (10000, "up", "ixgbe")
    assert (ens3.speed, ens3.operstate) == (None, None)


def test_nic_inventory_lines_and_event() -> None:
    nics = [Nic("eno1", "3c:ec:ef:00:00:01", True, 2, driver="ixgbe", speed=10000,
                operstate="up"),
            Nic("eno2", "3c:ec:ef:00:00:02", None, 3, driver=None, operstate="down")]
    assert network.nic_inventory_lines(nics) == [
        "NAME  MAC                DRIVER  CARRIER  SPEED      STATE",
        "eno1  3c:ec:ef:00:00:01  ixgbe   yes      10000Mb/s  up",
        "eno2  3c:ec:ef:00:00:02  -       -        -          down",
    ]
    assert network.nic_inventory_lines([])[-1] == "(no NICs)"
    event = network.nic_inventory_event(nics)
    assert event["count"] == 2
    assert event["nics"][0] == {"name": "eno1", "mac": "3c:ec:ef:00:00:01", "driver": "ixgbe",
                                "carrier": True, "speed": 10000, "operstate": "up",
                                "physical": True}
    json.dumps(event)


# --- the DHCP race -----------------------------------------------------------------------------


def racer(bind_after: dict[str, float | None], applied: list[tuple[str, str]],
          fail: dict[str, BaseException] | None = None) -> dict[str, Any]:
    """race_dhcp's peers: DhcpThreads over FakeClients binding after ``bind_after[name]`` s,
    and an apply callback recording (ifname, event)."""
    def start(name: str, on_change: network.LeaseCallback) -> DhcpThread:
        return DhcpThread(name, on_change=on_change, client_factory=lambda config: FakeClient(
            config, bind_after=bind_after[name], fail=(fail or {}).get(name))).start()

    def apply(name: str) -> network.LeaseCallback:
        async def on_change(event: str, lease: LeaseInfo) -> None:
            applied.append((name, event))
        return on_change

    return {"start": start, "apply": apply}


def test_race_first_lease_wins_and_the_others_stop() -> None:
    applied: list[tuple[str, str]] = []
    # eth0 is slow, eth1 fast, eth2 never answers
    winner, lease, started = network.race_dhcp(
        ["eth0", "eth1", "eth2"], timeout=5,
        **racer({"eth0": 0.6, "eth1": 0.05, "eth2": None}, applied))
    try:
        assert winner.interface == "eth1" and lease.address == "10.0.2.15"
        assert started == ["eth0", "eth1", "eth2"]
        time.sleep(0.8)  # eth0's late lease must not be applied (its client is stopped anyway)
        assert applied == [("eth1", "bound")]
        assert winner.is_alive()
        others = [c for c in FakeClient.instances[-3:] if c.config.interface != "eth1"]
        assert all(c.exited for c in others)
    finally:
        winner.stop()


def test_race_late_lease_of_a_loser_is_ignored() -> None:
    applied: list[tuple[str, str]] = []
    gate = network.FirstLease(racer({}, applied)["apply"])
    info = network.lease_info(make_lease())

    async def deliver(name: str, event: str) -> None:
        await gate.callback(name)(event, info)

    for name, event in (("eth1", "bound"), ("eth0", "bound"), ("eth1", "renewed")):
        asyncio.run(deliver(name, event))
    assert gate.winner == "eth1" and gate.won.is_set()
    assert applied == [("eth1", "bound"), ("eth1", "renewed")]


def test_race_a_nic_with_late_carrier_joins() -> None:
    applied: list[tuple[str, str]] = []
    calls = iter([[], ["eth0"], ["eth0", "eth1"]])
    winner, _lease, started = network.race_dhcp(
        ["eth0"], timeout=5, poll=0.05, more=lambda: next(calls, ["eth0", "eth1"]),
        **racer({"eth0": None, "eth1": 0.05}, applied))
    winner.stop()
    assert winner.interface == "eth1" and started == ["eth0", "eth1"]


def test_race_timeout_names_every_nic_and_state() -> None:
    t0 = time.monotonic()
    with pytest.raises(NetworkError) as err:
        network.race_dhcp(["eth0", "eth1"], timeout=0.4,
                          **racer({"eth0": None, "eth1": None}, []))
    assert str(err.value) == ("network: no DHCP lease within 0.4 s on any NIC "
                              "(eth0 SELECTING, eth1 SELECTING)")
    assert 0.4 <= time.monotonic() - t0 < 3
    assert all(c.exited for c in FakeClient.instances[-2:])


def test_race_single_nic_error_is_the_lone_clients() -> None:
    with pytest.raises(NetworkError) as err:
        network.race_dhcp(["eth0"], timeout=0.3, **racer({"eth0": None}, []))
    assert str(err.value) == "network: eth0: no DHCP lease within 0.3 s (client SELECTING)"


def test_race_all_clients_failing_ends_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match=r"eth0: DHCP client failed: OSError"):
        network.race_dhcp(["eth0"], timeout=10, **racer(
            {"eth0": None}, [], fail={"eth0": OSError(19, "No such device")}))
    assert time.monotonic() - t0 < 2


def test_race_apply_failure_lets_another_nic_win() -> None:
    applied: list[tuple[str, str]] = []
    apply_ok = racer({}, applied)["apply"]

    def apply(name: str) -> network.LeaseCallback:
        if name == "eth0":
            async def broken(event: str, lease: LeaseInfo) -> None:
                raise PermissionError("Operation not permitted")
            return broken
        return apply_ok(name)  # type: ignore[no-any-return]

    winner, _lease, _started = network.race_dhcp(
        ["eth0", "eth1"], timeout=5, start=racer({"eth0": 0.01, "eth1": 0.3}, applied)["start"],
        apply=apply)
    winner.stop()
    assert winner.interface == "eth1" and applied == [("eth1", "bound")]


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
    made = network.create_links(ipr, [VlanConfig("bond0.7", 7, "bond0")],
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
        network.create_links(FakeIPRoute({"eth0": 2}), [VlanConfig("eth9.5", 5, "eth9")], [],
                             timeout=0.2, sysfs=tmp_path, sleep=lambda s: time.sleep(0.05))
    assert str(err.value) == ("network: eth9.5 parent eth9 does not exist after 0.2 s "
                              "(seen: eth0 52:54:00:00:00:01 (virtio_net) carrier)")


# ---------------------------------------------------------------------------------------------
# IPv6: address choice, when to start DHCPv6, sysctls, the bounded wait (fakes, fake clock)

LL = network.Addr6("fe80::5054:ff:fe12:3456", 64, network.RT_SCOPE_LINK, 0x80)
LL_TENTATIVE = network.Addr6("fe80::5054:ff:fe12:3456", 64, network.RT_SCOPE_LINK,
                             network.IFA_F_TENTATIVE)
# the kernel gives QEMU slirp's fec0::/64 site scope (200), a ULA or global prefix scope 0
SLAAC = network.Addr6("fec0::5054:ff:fe12:3456", 64, network.RT_SCOPE_SITE, 0x100)
ULA = network.Addr6("fd00:77::5054:ff:fe12:3456", 64, network.RT_SCOPE_UNIVERSE, 0x100)
HOST = network.Addr6("::1", 128, 254, 0x80)
SLAAC_TENTATIVE = network.Addr6(SLAAC.address, 64, 0, network.IFA_F_TENTATIVE)
DEPRECATED = network.Addr6("fd00:1::5", 64, 0, network.IFA_F_DEPRECATED)
DADFAILED = network.Addr6("fd00:2::5", 64, 0, network.IFA_F_DADFAILED)
LEASED = network.Addr6("fd00:77::142", 128, 0, 0x80)


@pytest.mark.parametrize(("addrs", "prefer", "expected"), [
    ((), None, None),
    ((LL,), None, None),  # link-local never counts
    ((LL, SLAAC_TENTATIVE), None, None),  # DAD still running
    ((LL, DADFAILED), None, None),
    ((LL, SLAAC), None, SLAAC),  # site-local (slirp) counts
    ((LL, ULA), None, ULA),
    ((HOST, LL), None, None),  # host scope never
    ((DEPRECATED, SLAAC), None, SLAAC),  # a preferred address before a deprecated one
    ((DEPRECATED,), None, DEPRECATED),  # … but a deprecated one still works
    ((SLAAC, LEASED), None, SLAAC),  # kernel order
    ((SLAAC, LEASED), LEASED.address, LEASED),  # the DHCPv6 lease first
])
def test_global_address(addrs: tuple[network.Addr6, ...], prefer: str | None,
                        expected: network.Addr6 | None) -> None:
    assert network.global_address(addrs, prefer) == expected


RA = network.IF_RA_RCVD
RA_M = network.IF_RA_RCVD | network.IF_RA_MANAGED


@pytest.mark.parametrize(("addrs", "flags", "mode", "elapsed", "expected"), [
    ((LL,), 0, "auto6", 0.0, False),  # wait for the RA / SLAAC
    ((LL,), RA, "auto6", 3.0, False),  # RA without M: SLAAC is on its way
    ((LL,), RA_M, "auto6", 0.5, True),  # RA says managed
    ((LL,), 0, "auto6", 8.0, True),  # no RA in the grace time: try DHCPv6 anyway
    ((LL,), 0, "dhcp6", 0.0, True),  # ip=dhcp6: at once
    ((LL_TENTATIVE,), RA_M, "dhcp6", 9.0, False),  # never before link-local DAD is done
    ((), 0, "dhcp6", 9.0, False),
])
def test_v6_wants_dhcp(addrs: tuple[network.Addr6, ...], flags: int, mode: str,
                       elapsed: float, expected: bool) -> None:
    state = network.V6State(addresses=addrs, ra_flags=flags)
    assert network.v6_wants_dhcp(state, mode=mode, elapsed=elapsed) is expected


@pytest.mark.parametrize(("values", "fixes"), [
    ({"disable_ipv6": "0", "accept_ra": "1", "autoconf": "1", "forwarding": "0"}, {}),
    ({"disable_ipv6": "1", "accept_ra": "1", "autoconf": "1", "forwarding": "0"},
     {"disable_ipv6": "0"}),
    ({"disable_ipv6": "0", "accept_ra": "0", "autoconf": "0", "forwarding": "0"},
     {"accept_ra": "1", "autoconf": "1"}),
    ({"disable_ipv6": "0", "accept_ra": "1", "autoconf": "1", "forwarding": "1"},
     {"accept_ra": "2"}),  # forwarding makes accept_ra=1 ignore RAs
    ({"disable_ipv6": "0", "accept_ra": "2", "autoconf": "1", "forwarding": "0"}, {}),
])
def test_ipv6_sysctl_fixes(values: dict[str, str], fixes: dict[str, str]) -> None:
    assert network.ipv6_sysctl_fixes(values) == fixes


def test_ensure_ipv6_sysctls_writes_only_what_is_wrong(tmp_path: Path) -> None:
    conf = tmp_path / "sys/net/ipv6/conf/eth0"
    conf.mkdir(parents=True)
    for key, value in (("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "1"),
                       ("forwarding", "0")):
        (conf / key).write_text(value + "\n")
    assert network.ensure_ipv6_sysctls("eth0", tmp_path) == {"accept_ra": "1"}
    assert (conf / "accept_ra").read_text() == "1\n"
    assert network.ensure_ipv6_sysctls("eth0", tmp_path) == {}


def test_ensure_ipv6_sysctls_without_ipv6_in_the_kernel(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="no IPv6 in this kernel"):
        network.ensure_ipv6_sysctls("eth0", tmp_path)


class V6Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.01)


class FakeDhcp6:
    """Stands in for Dhcp6Thread: its lease appears ``after`` s of fake time."""

    def __init__(self, clock: V6Clock, lease: Any = None, after: float = 0.0) -> None:
        self.clock, self._lease, self.after = clock, lease, after
        self.started_at: float | None = None
        self.stopped = False
        self.state = "SOLICITING"

    def start(self) -> FakeDhcp6:
        self.started_at = self.clock.now
        return self

    @property
    def lease(self) -> Any:
        if self._lease is None or self.started_at is None:
            return None
        return self._lease if self.clock.now - self.started_at >= self.after else None

    def stop(self) -> None:
        self.stopped = True


def _wait(timeline: Callable[[float], network.V6State], *, mode: str = "auto6",
          dhcp: FakeDhcp6 | None = None, clock: V6Clock | None = None,
          timeout: float = 30) -> tuple[Any, ...]:
    clock = clock or V6Clock()
    t0 = clock.now
    started: list[FakeDhcp6] = []

    def start() -> Any:
        fake = dhcp or FakeDhcp6(clock)
        started.append(fake)
        return fake.start()

    out = network.wait_for_ipv6(mode=mode, timeout=timeout,
                                observe=lambda: timeline(clock.now - t0), start_dhcp6=start,
                                clock=clock, sleep=clock.sleep)
    return (*out, started, clock.now - t0)


def test_wait_slaac_after_dad_without_dhcpv6() -> None:
    def timeline(t: float) -> network.V6State:  # RA at 1 s, DAD of the SLAAC address to 2 s
        if t < 1:
            return network.V6State((LL,))
        return network.V6State((LL, SLAAC_TENTATIVE if t < 2 else SLAAC), ra_flags=RA,
                               gateway="fe80::2")

    addr, source, state, dhcp, started, took = _wait(timeline)
    assert (addr, source, dhcp, started, state.gateway) == (SLAAC, "slaac", None, [], "fe80::2")
    assert 2.0 <= took < 2.2


def test_wait_managed_ra_starts_dhcpv6_and_takes_its_address() -> None:
    clock = V6Clock()
    lease = type("L", (), {"address": LEASED.address})()
    fake = FakeDhcp6(clock, lease, after=1.0)

    def timeline(t: float) -> network.V6State:
        addrs: tuple[network.Addr6, ...] = (LL,)
        if fake.lease is not None:  # applied by the client, then DAD (0.5 s)
            addrs += (LEASED if t >= 1.5 + 0.5 else network.Addr6(
                LEASED.address, 128, 0, network.IFA_F_TENTATIVE),)
        return network.V6State(addrs, ra_flags=RA_M if t >= 0.5 else 0)

    addr, source, _state, dhcp, started, took = _wait(timeline, dhcp=fake, clock=clock)
    assert (addr, source, dhcp) == (LEASED, "dhcpv6", fake)
    assert fake.started_at is not None and 0.5 <= fake.started_at - 100.0 < 0.6
    assert started == [fake] and not fake.stopped
    assert 2.0 <= took < 2.2


def test_wait_no_ra_tries_dhcpv6_after_the_grace_time_and_names_everything_on_timeout() -> None:
    with pytest.raises(NetworkError) as info:
        _wait(lambda t: network.V6State((LL, SLAAC_TENTATIVE)), timeout=12)
    assert str(info.value) == ("network: no global IPv6 address within 12 s (no router "
                               "advertisement; DHCPv6 SOLICITING; DAD not done: "
                               f"{SLAAC.address})")


def test_wait_slaac_wins_over_a_dhcpv6_client_without_lease_which_is_stopped() -> None:
    clock = V6Clock()
    fake = FakeDhcp6(clock)  # never gets a lease

    def timeline(t: float) -> network.V6State:
        return network.V6State((LL, SLAAC) if t >= 3 else (LL,), ra_flags=RA_M)

    addr, source, _state, dhcp, started, _took = _wait(timeline, dhcp=fake, clock=clock)
    assert (addr, source, dhcp, started) == (SLAAC, "slaac", None, [fake])
    assert fake.stopped


def test_wait_a_dhcpv6_address_without_any_ra_is_not_usable() -> None:
    clock = V6Clock()
    lease = type("L", (), {"address": LEASED.address})()
    fake = FakeDhcp6(clock, lease)

    def timeline(t: float) -> network.V6State:
        return network.V6State((LL, LEASED) if fake.lease is not None else (LL,))

    with pytest.raises(NetworkError, match=r"within 10 s \(no router advertisement to route "
                                           r"DHCPv6's fd00:77::142; DHCPv6 SOLICITING\)"):
        _wait(timeline, mode="dhcp6", dhcp=fake, clock=clock, timeout=10)
    assert fake.stopped
