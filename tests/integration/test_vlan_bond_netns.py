"""vlan= and bond= against real dnsmasq in network namespaces (root, and a kernel with 8021q and
bonding: the tests skip, naming the missing kind, on a host kernel built without them).

VLAN: dnsmasq serves one range untagged on the peer and another on its VLAN 100 sub-interface;
the lease must come from the tagged range. Bond: both client veths go into an active-backup
bond, their peers into a bridge with dnsmasq on it; the lease lands on the bond (with the first
slave's MAC), and the address stays reachable after the active slave's peer goes down.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.hostreq import host_limit, need, need_root
from tests.integration.netns_dhcp import Lab, ip, netns_add
from tests.integration.test_dhcp_netns import MAC0, MAC1, addresses, in_range

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    """Root and the tools (under make test: a failure when missing, see tests/hostreq.py)."""
    need_root("network namespaces")
    need("ip", "dnsmasq")


def kernel_has(kind: str, *args: str) -> bool:
    """Whether this kernel can make a ``kind`` link (a throwaway namespace, deleted after)."""
    ns = f"pyinit-probe-{os.getpid()}"
    try:
        netns_add(ns)
        ip("-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        done = subprocess.run(["ip", "-n", ns, "link", "add", *args, "type", kind],
                              capture_output=True, check=False)
        return done.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)



def test_vlan_lease_comes_from_the_tagged_network(lab: Lab, tmp_path: Path) -> None:
    if not kernel_has("vlan", "link", "p0", "name", "p0.5", "id", "5"):
        host_limit("this kernel has no 802.1Q (CONFIG_VLAN_8021Q)",
                   covered_by="tests/vm/test_multinic.py::"
                              "test_vlan_lease_and_provision_over_a_tagged_trunk")
    lab.veth("cli0", "srv0", MAC0, server_addr="10.77.0.1/24")
    s = lab.server_ns
    ip("-n", s, "link", "add", "link", "srv0", "name", "srv0.100", "type", "vlan", "id", "100")
    ip("-n", s, "addr", "add", "10.77.100.1/24", "dev", "srv0.100")
    ip("-n", s, "link", "set", "srv0.100", "up")
    server = lab.dnsmasq(["srv0", "srv0.100"],
                         ["10.77.0.100,10.77.0.150,255.255.255.0,2m",
                          "10.77.100.100,10.77.100.150,255.255.255.0,2m"],
                         router="10.77.100.254", dns="10.77.100.53", extra=["--no-ping"])

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"),
                         vlans=[{"name": "cli0.100", "vid": 100, "parent": "cli0"}])

    assert out["ok"], out
    res = out["result"]
    assert (res["interface"], res["mac"]) == ("cli0.100", MAC0)  # the VLAN has its parent's MAC
    assert in_range(res["address"], "10.77.100.100", "10.77.100.150")
    assert f"DHCPACK(srv0.100) {res['address']} {MAC0}" in server.text()
    assert addresses(lab, "cli0") == []
    (link,) = lab.client_ip("-d", "link", "show", "dev", "cli0.100")
    assert link["linkinfo"]["info_data"]["id"] == 100


def test_bond_gets_the_lease_and_fails_over(lab: Lab, tmp_path: Path) -> None:
    if not kernel_has("bond", "name", "b0"):
        host_limit("this kernel has no bonding (CONFIG_BONDING)",
                   covered_by="tests/vm/test_multinic.py::"
                              "test_bond_lease_and_failover_while_provisioning")
    lab.veth("cli0", "srv0", MAC0, peer_up=False)
    lab.veth("cli1", "srv1", MAC1, peer_up=False)
    s = lab.server_ns
    ip("-n", s, "link", "add", "br0", "type", "bridge")
    for port in ("srv0", "srv1"):
        ip("-n", s, "link", "set", port, "master", "br0")
        ip("-n", s, "link", "set", port, "up")
    ip("-n", s, "addr", "add", "10.77.0.1/24", "dev", "br0")
    ip("-n", s, "link", "set", "br0", "up")
    lab.dnsmasq(["br0"], ["10.77.0.100,10.77.0.150,255.255.255.0,2m"], router="10.77.0.254",
                dns="10.77.0.53", extra=["--no-ping"])

    out = lab.run_client(resolv_conf=str(tmp_path / "resolv.conf"),
                         bonds=[{"name": "bond0", "slaves": ["cli0", "cli1"], "miimon": 50}])

    assert out["ok"], out
    res = out["result"]
    assert (res["interface"], res["mac"]) == ("bond0", MAC0)  # the first slave's MAC
    address = res["address"]

    def ping() -> bool:
        return subprocess.run(["ip", "netns", "exec", s, "ping", "-c", "1", "-W", "1", address],
                              capture_output=True, check=False).returncode == 0

    def active() -> str:
        (link,) = lab.client_ip("-d", "link", "show", "dev", "bond0")
        return str(link["linkinfo"]["info_data"].get("active_slave"))

    assert ping()
    first = active()
    ip("-n", s, "link", "set", {"cli0": "srv0", "cli1": "srv1"}[first], "down")
    deadline = time.monotonic() + 5
    while active() == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert active() != first
    assert ping(), f"{address} unreachable after failing over from {first}"
