"""pyinit.network against real dnsmasq, in network namespaces (root only).

Each test builds its own server and client namespaces (names carry the pid), links them with
veth pairs and runs the runtime's ``configure()`` inside the client namespace. The Router option
is always an address dnsmasq does not own, so a default route via the server would be caught.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from tests.hostreq import need, need_root
from tests.integration.netns_dhcp import Lab

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    """Root and the tools (under make test: a failure when missing, see tests/hostreq.py)."""
    need_root("network namespaces")
    need("ip", "dnsmasq")

MAC0, MAC1 = "02:00:5e:10:00:01", "02:00:5e:10:00:02"
ROUTER = "10.77.0.254"  # not dnsmasq's address (10.77.0.1)
DNS = ("10.77.0.53", "10.77.0.54")
RANGE0 = "10.77.0.100,10.77.0.150,255.255.255.0,2m"
RANGE1 = "10.77.1.100,10.77.1.150,255.255.255.0,2m"



def in_range(address: str, first: str, last: str) -> bool:
    ip = ipaddress.IPv4Address(address)
    return ipaddress.IPv4Address(first) <= ip <= ipaddress.IPv4Address(last)


def addresses(lab: Lab, dev: str) -> list[dict[str, object]]:
    (link,) = lab.client_ip("addr", "show", "dev", dev)
    return [a for a in link["addr_info"] if a["family"] == "inet"]


def test_dhcp_lease_is_applied_and_renewed(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    # T1 = 3 s so the client renews during the test (dnsmasq will not lease for under 2 min).
    server = lab.dnsmasq(["srv0"], [RANGE0], router=ROUTER, dns=",".join(DNS),
                         extra=["--dhcp-option=option:T1,3"])
    resolv = tmp_path / "resolv.conf"

    out = lab.run_client(resolv_conf=str(resolv), wait_renewals=1, renew_timeout=15)

    assert out["ok"], out
    res = out["result"]
    print(f"time to lease: {out['bound_after']:.2f} s (configure: {out['elapsed']:.2f} s)")
    assert (res["interface"], res["mac"], res["source"]) == ("cli0", MAC0, "dhcp")
    assert in_range(res["address"], "10.77.0.100", "10.77.0.150")
    assert res["prefixlen"] == 24
    assert res["gateway"] == ROUTER and res["server"] == "10.77.0.1"
    assert res["dns"] == list(DNS)

    # the address is on the interface, with the lease time as its kernel lifetime
    (addr,) = addresses(lab, "cli0")
    assert (addr["local"], addr["prefixlen"]) == (res["address"], 24)
    assert 0 < int(str(addr["valid_life_time"])) <= 120
    # the default route goes via the Router option, not via the DHCP server
    routes = lab.client_ip("route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(ROUTER, "cli0")]
    assert resolv.read_text() == (
        "# written by pyinit\nnameserver 10.77.0.53\nnameserver 10.77.0.54\n")

    # the client outlives the lease and renews it: a second REQUEST/ACK on the server
    assert out["alive_after_lease"] is True
    assert out["state_after_lease"] == "BOUND"
    assert out["renewed"] >= 1, out
    acks = re.findall(rf"DHCPACK\(srv0\) {re.escape(res['address'])} {MAC0}", server.text())
    assert len(acks) >= 2
    assert out["alive_after_stop"] is False


def test_bootif_selects_the_named_nic(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    lab.veth("cli1", "srv1", MAC1, server_addr="10.77.1.1/24")
    lab.dnsmasq(["srv0", "srv1"], [RANGE0, RANGE1], router=ROUTER, dns=DNS[0],
                extra=["--no-ping"])

    # both have carrier and cli0 comes first; BOOTIF (pxelinux form, upper case) wins
    out = lab.run_client(bootif="01-" + MAC1.replace(":", "-").upper(),
                         resolv_conf=str(tmp_path / "resolv.conf"))

    assert out["ok"], out
    assert (out["result"]["interface"], out["result"]["mac"]) == ("cli1", MAC1)
    assert in_range(out["result"]["address"], "10.77.1.100", "10.77.1.150")
    assert addresses(lab, "cli0") == []
    assert "UP" not in lab.client_ip("link", "show", "dev", "cli0")[0]["flags"]


def test_without_bootif_the_first_nic_with_carrier_is_used(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24", peer_up=False)  # no carrier
    lab.veth("cli1", "srv1", MAC1, server_addr="10.77.1.1/24")
    lab.dnsmasq(["srv1"], [RANGE1], router="10.77.1.254", dns=DNS[0], extra=["--no-ping"])

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"), carrier_timeout=5)

    assert out["ok"], out
    assert out["result"]["interface"] == "cli1"
    assert out["result"]["gateway"] == "10.77.1.254"
    # cli0 was brought up to look for carrier, and put back down
    assert "UP" not in lab.client_ip("link", "show", "dev", "cli0")[0]["flags"]


def test_no_carrier_fails_within_the_timeout(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, peer_up=False)

    for bootif in (None, MAC0):
        out = lab.run_client(bootif=bootif, carrier_timeout=2,
                             resolv_conf=str(tmp_path / "resolv.conf"))
        assert not out["ok"] and out["type"] == "NetworkError", out
        assert out["error"] == f"network: no carrier within 2 s (seen: cli0 {MAC0} no carrier)"
        assert 2 <= out["elapsed"] < 3.5


def test_unknown_bootif_names_the_mac(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0)

    out = lab.run_client(bootif="01-02-00-5E-10-00-99", carrier_timeout=1,
                         resolv_conf=str(tmp_path / "resolv.conf"))

    assert not out["ok"] and out["type"] == "NetworkError", out
    assert out["error"].startswith("network: BOOTIF 02:00:5e:10:00:99 matches no NIC (seen: cli0")


def test_no_dhcp_server_fails_within_the_timeout(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")  # carrier, but nobody answers

    out = lab.run_client(lease_timeout=3, resolv_conf=str(tmp_path / "resolv.conf"))

    assert not out["ok"] and out["type"] == "NetworkError", out
    assert out["error"] == "network: cli0: no DHCP lease within 3 s (client SELECTING)"
    assert 3 <= out["elapsed"] < 5
    assert addresses(lab, "cli0") == []


def test_static_configuration(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0)
    lab.veth("cli1", "srv1", MAC1)
    resolv = tmp_path / "resolv.conf"
    static = {"address": "10.78.0.5", "prefixlen": 24, "gateway": "10.78.0.1",
              "dns": ["10.78.0.53"], "device": "cli1"}

    out = lab.run_client(static=static, resolv_conf=str(resolv))

    assert out["ok"], out
    res = out["result"]
    assert (res["interface"], res["source"], res["address"]) == ("cli1", "static", "10.78.0.5")
    (addr,) = addresses(lab, "cli1")
    assert (addr["local"], addr["prefixlen"]) == ("10.78.0.5", 24)
    assert addr["valid_life_time"] == 0xFFFFFFFF  # forever: no lease behind it
    routes = lab.client_ip("route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("10.78.0.1", "cli1")]
    assert resolv.read_text() == "# written by pyinit\nnameserver 10.78.0.53\n"


def test_without_bootif_dhcp_races_and_the_served_nic_wins(lab: Lab, tmp_path: Path) -> None:
    # Both NICs have carrier; only cli1's side has a DHCP server, and cli0 comes first.
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    lab.veth("cli1", "srv1", MAC1, server_addr="10.77.1.1/24")
    server = lab.dnsmasq(["srv1"], [RANGE1], router="10.77.1.254", dns=DNS[0],
                         extra=["--no-ping"])

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"), carrier_timeout=5,
                         lease_timeout=20)

    assert out["ok"], out
    res = out["result"]
    print(f"race won after {out['bound_after']:.2f} s (configure: {out['elapsed']:.2f} s)")
    assert (res["interface"], res["mac"]) == ("cli1", MAC1)
    assert res["raced"] == ["cli0", "cli1"]
    assert in_range(res["address"], "10.77.1.100", "10.77.1.150")
    assert f"DHCPACK(srv1) {res['address']} {MAC1}" in server.text()
    # the loser was stopped, has no address, and is down again (it was down before)
    assert addresses(lab, "cli0") == []
    assert "UP" not in lab.client_ip("link", "show", "dev", "cli0")[0]["flags"]
    routes = lab.client_ip("route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [("10.77.1.254", "cli1")]


def test_race_with_two_servers_configures_exactly_one_nic(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    lab.veth("cli1", "srv1", MAC1, server_addr="10.77.1.1/24")
    lab.dnsmasq(["srv0", "srv1"], [RANGE0, RANGE1], router=ROUTER, dns=DNS[0],
                extra=["--no-ping"])

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"), carrier_timeout=5)

    assert out["ok"], out
    won = out["result"]["interface"]
    lost = {"cli0": "cli1", "cli1": "cli0"}[won]
    assert out["result"]["mac"] == {"cli0": MAC0, "cli1": MAC1}[won]
    assert len(addresses(lab, won)) == 1 and addresses(lab, lost) == []


def test_race_without_any_server_names_every_nic(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    lab.veth("cli1", "srv1", MAC1, server_addr="10.77.1.1/24")

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"), lease_timeout=3)

    assert not out["ok"] and out["type"] == "NetworkError", out
    assert out["error"] == ("network: no DHCP lease within 3 s on any NIC "
                            "(cli0 SELECTING, cli1 SELECTING)")
    assert 3 <= out["elapsed"] < 5.5
