"""pyinit.network.dhcp4: resolv.conf, leases, DhcpThread over a fake client, the race of
several NICs. Nothing here touches the host's links (configure() itself is covered by the netns
tests)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyinit.errors import NetworkError
from pyinit.network import dhcp4
from pyinit.network.dhcp4 import DhcpThread, LeaseInfo

from .fakes import FakeClient, factory, make_lease

# --- resolv.conf -------------------------------------------------------------------------------


def test_render_resolv_conf() -> None:
    assert dhcp4.render_resolv_conf(("10.0.2.3", "10.0.2.4"), ("example.org",)) == (
        "# written by pyinit\nsearch example.org\nnameserver 10.0.2.3\nnameserver 10.0.2.4\n")
    assert dhcp4.render_resolv_conf(["10.0.2.3"]) == (
        "# written by pyinit\nnameserver 10.0.2.3\n")
    assert dhcp4.render_resolv_conf([], ["", "a.b"]) == "# written by pyinit\nsearch a.b\n"


def test_write_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "resolv.conf"
    assert dhcp4.write_resolv_conf(path, ()) is False
    assert not path.exists()
    assert dhcp4.write_resolv_conf(path, ("10.0.2.3",)) is True
    assert path.read_text() == "# written by pyinit\nnameserver 10.0.2.3\n"
    assert dhcp4.write_resolv_conf(path, ("10.0.2.3",)) is False  # unchanged
    assert [p.name for p in path.parent.iterdir()] == ["resolv.conf"]  # no temp left



def test_lease_info_gateway_is_the_router_option() -> None:
    info = dhcp4.lease_info(make_lease(domain_name="lab.example"))
    assert info == LeaseInfo(address="10.0.2.15", prefixlen=24, gateway="10.0.2.1",
                             dns=("10.0.2.3",), server="10.0.2.2", domain="lab.example",
                             lease_time=600)


def test_lease_info_without_router_mask_or_lease_end() -> None:
    info = dhcp4.lease_info(make_lease(router=None, subnet_mask=None, name_server=None,
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


# --- the DHCP race -----------------------------------------------------------------------------


def racer(bind_after: dict[str, float | None], applied: list[tuple[str, str]],
          fail: dict[str, BaseException] | None = None) -> dict[str, Any]:
    """race_dhcp's peers: DhcpThreads over FakeClients binding after ``bind_after[name]`` s,
    and an apply callback recording (ifname, event)."""
    def start(name: str, on_change: dhcp4.LeaseCallback) -> DhcpThread:
        return DhcpThread(name, on_change=on_change, client_factory=lambda config: FakeClient(
            config, bind_after=bind_after[name], fail=(fail or {}).get(name))).start()

    def apply(name: str) -> dhcp4.LeaseCallback:
        async def on_change(event: str, lease: LeaseInfo) -> None:
            applied.append((name, event))
        return on_change

    return {"start": start, "apply": apply}


def test_race_first_lease_wins_and_the_others_stop() -> None:
    applied: list[tuple[str, str]] = []
    # eth0 is slow, eth1 fast, eth2 never answers
    winner, lease, started = dhcp4.race_dhcp(
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
    gate = dhcp4.FirstLease(racer({}, applied)["apply"])
    info = dhcp4.lease_info(make_lease())

    async def deliver(name: str, event: str) -> None:
        await gate.callback(name)(event, info)

    for name, event in (("eth1", "bound"), ("eth0", "bound"), ("eth1", "renewed")):
        asyncio.run(deliver(name, event))
    assert gate.winner == "eth1" and gate.won.is_set()
    assert applied == [("eth1", "bound"), ("eth1", "renewed")]


def test_race_a_nic_with_late_carrier_joins() -> None:
    applied: list[tuple[str, str]] = []
    calls = iter([[], ["eth0"], ["eth0", "eth1"]])
    winner, _lease, started = dhcp4.race_dhcp(
        ["eth0"], timeout=5, poll=0.05, more=lambda: next(calls, ["eth0", "eth1"]),
        **racer({"eth0": None, "eth1": 0.05}, applied))
    winner.stop()
    assert winner.interface == "eth1" and started == ["eth0", "eth1"]


def test_race_timeout_names_every_nic_and_state() -> None:
    t0 = time.monotonic()
    with pytest.raises(NetworkError) as err:
        dhcp4.race_dhcp(["eth0", "eth1"], timeout=0.4,
                        **racer({"eth0": None, "eth1": None}, []))
    assert str(err.value) == ("network: no DHCP lease within 0.4 s on any NIC "
                              "(eth0 SELECTING, eth1 SELECTING)")
    assert 0.4 <= time.monotonic() - t0 < 3
    assert all(c.exited for c in FakeClient.instances[-2:])


def test_race_single_nic_error_is_the_lone_clients() -> None:
    with pytest.raises(NetworkError) as err:
        dhcp4.race_dhcp(["eth0"], timeout=0.3, **racer({"eth0": None}, []))
    assert str(err.value) == "network: eth0: no DHCP lease within 0.3 s (client SELECTING)"


def test_race_all_clients_failing_ends_at_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(NetworkError, match=r"eth0: DHCP client failed: OSError"):
        dhcp4.race_dhcp(["eth0"], timeout=10, **racer(
            {"eth0": None}, [], fail={"eth0": OSError(19, "No such device")}))
    assert time.monotonic() - t0 < 2


def test_race_apply_failure_lets_another_nic_win() -> None:
    applied: list[tuple[str, str]] = []
    apply_ok = racer({}, applied)["apply"]

    def apply(name: str) -> dhcp4.LeaseCallback:
        if name == "eth0":
            async def broken(event: str, lease: LeaseInfo) -> None:
                raise PermissionError("Operation not permitted")
            return broken
        return apply_ok(name)  # type: ignore[no-any-return]

    winner, _lease, _started = dhcp4.race_dhcp(
        ["eth0", "eth1"], timeout=5, start=racer({"eth0": 0.01, "eth1": 0.3}, applied)["start"],
        apply=apply)
    winner.stop()
    assert winner.interface == "eth1" and applied == [("eth1", "bound")]
