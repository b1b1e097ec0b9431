"""IPv6 for the server URL (pyinit.network.configure.configure(ipv6=…), pyinit.dhcp6) against real
dnsmasq router advertisements and DHCPv6, in network namespaces (root only).

The server namespace has ``fd00:77::1/64`` on a veth peer, dnsmasq sending RAs (``enable-ra``)
and, in the stateful case, leasing ``fd00:77::100`` to ``fd00:77::1ff`` (RA with the M flag and a
prefix not for autoconfiguration, so SLAAC cannot give an address), plus a tiny HTTP server on
``[fd00:77::1]``. The runtime's ``configure()`` runs in the client namespace (this module run as
``python -m``), then fetches ``http://[fd00:77::1]:PORT/`` with requests over the new address.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from tests.hostreq import need, need_root
from tests.integration.netns_dhcp import Dnsmasq, Lab, ip, lab_in, lab_nics

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    """Root and the tools (under make test: a failure when missing, see tests/hostreq.py)."""
    need_root("network namespaces")
    need("ip", "dnsmasq")

MAC = "02:00:5e:10:06:01"
SERVER = "fd00:77::1"
PREFIX = ipaddress.IPv6Network("fd00:77::/64")
PORT = 18086


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    http: list[subprocess.Popen[bytes]] = []
    with lab_in(tmp_path) as lab:
        try:
            lab.veth("cli0", "srv0", MAC)
            ip("-n", lab.server_ns, "-6", "addr", "add", f"{SERVER}/64", "dev", "srv0", "nodad")
            (tmp_path / "www").mkdir()
            (tmp_path / "www" / "hello").write_text("over ipv6\n")
            http.append(subprocess.Popen(
                ["ip", "netns", "exec", lab.server_ns, sys.executable, "-m", "http.server",
                 "--bind", SERVER, "--directory", str(tmp_path / "www"), str(PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=proc.clean_env()))
            yield lab
        finally:
            for popen in http:
                popen.terminate()
                popen.wait(5)


def dnsmasq6(lab: Lab, *ranges: str) -> Dnsmasq:
    """dnsmasq with router advertisements (and DHCPv6 for a range with addresses); no DNS."""
    return lab.start_dnsmasq([
        "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--interface=srv0",
        "--enable-ra", *(f"--dhcp-range={r}" for r in ranges),
        f"--dhcp-option=option6:dns-server,[{SERVER}]",
        "--dhcp-option=option6:domain-search,lab.example", "--log-dhcp"],
        ready=("router advertisement on",))


def run_client(lab: Lab, **args: Any) -> dict[str, Any]:
    return lab.run_client(module="tests.integration.test_ipv6_netns", **args)


def global_v6(lab: Lab) -> list[dict[str, Any]]:
    (link,) = json.loads(ip("-j", "-n", lab.client_ns, "-6", "addr", "show", "dev", "cli0"))
    return [a for a in link["addr_info"] if a.get("scope") == "global"]


def test_slaac_from_a_router_advertisement(lab: Lab, tmp_path: Path) -> None:
    server = dnsmasq6(lab, "fd00:77::,ra-only,64")
    got = run_client(lab, ipv6="auto6", url=f"http://[{SERVER}]:{PORT}/hello",
                     resolv_conf=str(tmp_path / "resolv.conf"))
    assert got["ok"], got
    result = got["result"]
    # SLAAC from the MAC (EUI-64, U/L bit flipped): 02:00:5e:10:06:01 → ::5eff:fe10:601
    assert result["source"] == "slaac"
    assert result["address"] == result["address6"] == "fd00:77::5eff:fe10:601"
    assert result["prefixlen"] == 64
    assert result["mac"] == MAC and result["interface"] == "cli0"
    assert got["body"] == "over ipv6\n"
    assert got["dhcp6"] is None  # an RA without M: no DHCPv6 client was started
    assert "DHCPSOLICIT" not in server.text()
    assert [a["local"] for a in global_v6(lab)] == ["fd00:77::5eff:fe10:601"]
    # The kernel ignores the RA answering its first RS (it arrives while the link-local address
    # is still tentative) and takes the one after its second RS, 4 s later; then DAD, 1 s.
    assert got["elapsed"] < 15, "SLAAC took more than two RS rounds plus DAD"


def test_dhcpv6_when_the_ra_says_managed(lab: Lab, tmp_path: Path) -> None:
    server = dnsmasq6(lab, "fd00:77::100,fd00:77::1ff,64,2m")
    got = run_client(lab, ipv6="auto6", url=f"http://[{SERVER}]:{PORT}/hello",
                     resolv_conf=str(tmp_path / "resolv.conf"))
    assert got["ok"], got
    result = got["result"]
    address = ipaddress.IPv6Address(result["address"])
    assert result["source"] == "dhcpv6"
    assert ipaddress.IPv6Address("fd00:77::100") <= address <= ipaddress.IPv6Address(
        "fd00:77::1ff")
    assert result["prefixlen"] == 128 and result["address6"] == result["address"]
    assert result["dns"] == [SERVER] and result["search"] == ["lab.example"]
    assert result["server"].startswith("fe80::")
    assert got["body"] == "over ipv6\n"
    assert got["dhcp6"] == "BOUND"
    assert (tmp_path / "resolv.conf").read_text() == (
        f"# written by pyinit\nsearch lab.example\nnameserver {SERVER}\n")
    text = server.text()
    assert "DHCPSOLICIT(srv0)" in text and f"DHCPREPLY(srv0) {address}" in text
    # The duid dnsmasq logs is our DUID-LL (type 3, Ethernet, the MAC).
    assert "client MAC address: 02:00:5e:10:06:01" in text or "00:03:00:01:02:00:5e" in text
    assert [a["local"] for a in global_v6(lab)] == [str(address)]
    # the on-link prefix came from the RA: the server is reachable without a gateway
    assert got["elapsed"] < 15


def test_dhcp6_mode_does_not_wait_for_slaac(lab: Lab, tmp_path: Path) -> None:
    dnsmasq6(lab, "fd00:77::100,fd00:77::1ff,64,2m")
    got = run_client(lab, ipv6="dhcp6", url=f"http://[{SERVER}]:{PORT}/hello",
                     resolv_conf=str(tmp_path / "resolv.conf"))
    assert got["ok"], got
    assert got["result"]["source"] == "dhcpv6"
    assert got["body"] == "over ipv6\n"


def test_no_router_and_no_dhcpv6_fails_naming_what_was_seen(lab: Lab, tmp_path: Path) -> None:
    got = run_client(lab, ipv6="auto6", lease_timeout=10,
                     resolv_conf=str(tmp_path / "resolv.conf"))
    assert not got["ok"]
    assert got["type"] == "NetworkError"
    assert got["error"].startswith("network: cli0: no global IPv6 address within 10 s (no "
                                   "router advertisement; DHCPv6 ")
    assert "no usable ADVERTISE" in got["error"] or "SOLICITING" in got["error"]
    assert global_v6(lab) == []
    assert 10 <= got["elapsed"] < 14


def client_main(args: dict[str, Any]) -> dict[str, Any]:
    """Inside the client namespace: configure(ipv6=…), then fetch ``url`` over it."""
    import requests

    from pyinit import log
    from pyinit.errors import NetworkError
    from pyinit.network.configure import configure

    log.configure(debug=bool(args.get("debug")), console=sys.stderr)
    t0 = time.monotonic()
    try:
        result = configure(
            bootif=None, static=None, ipv6=args["ipv6"], carrier_timeout=10,
            lease_timeout=args.get("lease_timeout", 30),
            resolv_conf=Path(args["resolv_conf"]), nics=lab_nics)
    except NetworkError as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__,
                "elapsed": time.monotonic() - t0}
    out: dict[str, Any] = {"ok": True, "result": result.as_dict(),
                           "elapsed": time.monotonic() - t0,
                           "dhcp6": result.dhcp6.state if result.dhcp6 else None}
    if args.get("url"):
        out["body"] = requests.get(args["url"], timeout=10).text
    if result.dhcp6 is not None:
        result.dhcp6.stop()
    return out


if __name__ == "__main__":
    print(json.dumps(client_main(json.loads(sys.argv[1]))), flush=True)
