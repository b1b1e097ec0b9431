"""The configuration ``pyinit dnsmasq`` generates, run by real dnsmasq in network namespaces.

Each test builds its namespaces (names carry the pid), runs dnsmasq with the GENERATED file
(``--conf-file``, nothing added but the pid, lease and log files a test needs), and asks it from
the client namespace with :mod:`tests.integration.dhcpclient`, which sends exactly what a PXE ROM
(vendor class ``PXEClient``, client architecture) or iPXE (option 175, user class ``iPXE``)
sends. TFTP is fetched with curl and compared byte for byte with Debian's ipxe files.

Proxy mode runs a plain dnsmasq handing out addresses and the generated proxy dnsmasq in a
third namespace, both on one bridge, as on a real network with an existing DHCP server.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from pyinit_server.dnsmasq import BIOS_FILE, DEFAULT_TFTP_ROOT, EFI64_FILE, make_spec, render
from tests.hostreq import need, need_file, need_root
from tests.integration.netns_dhcp import REPO, Dnsmasq, Lab, ip, netns_add

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    """Root and the tools (under make test: a failure when missing, see tests/hostreq.py)."""
    need_root("network namespaces")
    need("ip", "dnsmasq")
    need_file(DEFAULT_TFTP_ROOT / BIOS_FILE, "ipxe")

MAC = "02:00:5e:20:00:01"
URL = "http://10.79.0.1:8080"
BOOT_URL = f"{URL}/boot.ipxe"



def run_generated(lab: Lab, ns: str, conf_text: str, name: str) -> Dnsmasq:
    """dnsmasq in ``ns`` with the generated file; waits until its DHCP side is up."""
    conf = lab.tmp / f"{name}.conf"
    conf.write_text(conf_text)
    print(f"--- {conf.name}\n{conf_text}")
    check = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stderr
    return lab.start_dnsmasq([f"--conf-file={conf}"], ns=ns, ready=("DHCP, ", "TFTP root"),
                             name=name)


def ask(lab: Lab, **args: Any) -> list[dict[str, Any]]:
    """Run the test DHCP client in the client namespace; every reply it got."""
    argv = ["ip", "netns", "exec", lab.client_ns, sys.executable, "-m",
            "tests.integration.dhcpclient", json.dumps({"device": "cli0", "mac": MAC, **args})]
    print("+", " ".join(argv))
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=proc.clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    replies: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    for r in replies:
        print(f"reply: {r}")
    return replies


def only(replies: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(replies) == 1, replies
    return replies[0]


def tftp_get(lab: Lab, server: str, name: str, dest: Path) -> bytes:
    need("curl")
    subprocess.run(["ip", "netns", "exec", lab.client_ns, "curl", "-sS", "--max-time", "20",
                    "-o", str(dest), f"tftp://{server}/{name}"], check=True, timeout=30)
    return dest.read_bytes()


def test_full_mode_boot_files_by_architecture_and_ipxe(lab: Lab, tmp_path: Path) -> None:
    lab.veth("cli0", "srv0", MAC, server_addr="10.79.0.1/24")
    spec = make_spec(mode="full", server_url_text=URL, interface="srv0", subnet="10.79.0.0/24",
                     dhcp_range="10.79.0.100,10.79.0.150")
    server = run_generated(lab, lab.server_ns, render(spec), "full")
    net = ipaddress.IPv4Network("10.79.0.0/24")

    bios = only(ask(lab, arch=0, want=1))
    assert bios["msg_type"] == 2  # OFFER
    assert ipaddress.IPv4Address(bios["yiaddr"]) in net
    assert 100 <= int(bios["yiaddr"].rsplit(".", 1)[1]) <= 150
    assert (bios["filename"], bios["siaddr"], bios["server_id"]) == (
        BIOS_FILE, "10.79.0.1", "10.79.0.1")
    # no --router and no --dns: neither dnsmasq's own address nor anything else is offered
    assert 3 not in map(int, bios["options"]) and 6 not in map(int, bios["options"])

    for arch in (7, 9):
        efi = only(ask(lab, arch=arch, want=1))
        assert (efi["filename"], efi["siaddr"]) == (EFI64_FILE, "10.79.0.1"), arch

    # iPXE's own request: option 175 alone, or the user class alone, selects the HTTP URL,
    # whatever the architecture
    for how in ({"ipxe_175": True, "arch": 0}, {"user_class": "iPXE", "arch": 7},
                {"ipxe_175": True, "user_class": "iPXE", "arch": 0, "pxe": False}):
        assert only(ask(lab, want=1, **how))["filename"] == BOOT_URL, how

    # an architecture the file does not cover (6: 32-bit UEFI) gets an address, no boot file
    other = only(ask(lab, arch=6, want=1))
    assert other["filename"] == "" and ipaddress.IPv4Address(other["yiaddr"]) in net

    # log-dhcp shows the tags the file set, for the operator reading journalctl
    text = server.text()
    for tags in ("tags: bios, srv0", "tags: efi64, srv0", "tags: ipxe, bios, srv0",
                 "tags: ipxe, efi64, srv0"):
        assert tags in text, tags

    # TFTP: what the ROM would download is Debian's undionly.kpxe, byte for byte
    ip("-n", lab.client_ns, "addr", "add", "10.79.0.50/24", "dev", "cli0")
    got = tftp_get(lab, "10.79.0.1", BIOS_FILE, tmp_path / "got.kpxe")
    assert got == (DEFAULT_TFTP_ROOT / BIOS_FILE).read_bytes()
    got = tftp_get(lab, "10.79.0.1", EFI64_FILE, tmp_path / "got.efi")
    assert got == (DEFAULT_TFTP_ROOT / EFI64_FILE).read_bytes()
    assert f"sent {DEFAULT_TFTP_ROOT / BIOS_FILE} to 10.79.0.50" in server.text()


def test_full_mode_router_dns_and_fixed_host(lab: Lab) -> None:
    lab.veth("cli0", "srv0", MAC, server_addr="10.79.0.1/24")
    spec = make_spec(mode="full", server_url_text=URL, interface="srv0", subnet="10.79.0.0/24",
                     dhcp_range="10.79.0.100,10.79.0.150", router="10.79.0.254",
                     dns="10.79.0.53,10.79.0.54", hosts=(f"{MAC},10.79.0.20",),
                     lease_time="10m")
    run_generated(lab, lab.server_ns, render(spec), "full")

    offer = only(ask(lab, arch=0, want=1))
    assert offer["yiaddr"] == "10.79.0.20"  # the --host address, outside the range
    assert offer["options"]["3"] == "0a4f00fe"  # router 10.79.0.254
    assert offer["options"]["6"] == "0a4f00350a4f0036"  # 10.79.0.53, 10.79.0.54
    assert offer["options"]["51"] == f"{600:08x}"  # lease time 10m
    assert offer["filename"] == BIOS_FILE


def test_proxy_mode_next_to_an_existing_dhcp_server(lab: Lab) -> None:
    """A bridge in the 'server' namespace joins the client, a plain dnsmasq (addresses only,
    on the bridge) and, in a third namespace, dnsmasq running the generated proxy file."""
    pxe_ns = f"{lab.server_ns[:-4]}-pxe"
    netns_add(pxe_ns)
    try:
        _proxy_checks(lab, pxe_ns)
    finally:
        for server in lab.servers:
            server.stop()
        subprocess.run(["ip", "netns", "del", pxe_ns], check=False, capture_output=True)


def _proxy_checks(lab: Lab, pxe_ns: str) -> None:
    srv = lab.server_ns
    ip("-n", srv, "link", "add", "br0", "type", "bridge")
    ip("-n", srv, "addr", "add", "10.79.0.2/24", "dev", "br0")
    ip("-n", srv, "link", "set", "br0", "up")
    lab.veth("cli0", "srv0", MAC)
    ip("-n", srv, "link", "set", "srv0", "master", "br0")
    ip("-n", pxe_ns, "link", "add", "pxe0", "type", "veth", "peer", "name", "srvpxe",
       "netns", srv)
    ip("-n", pxe_ns, "addr", "add", "10.79.0.1/24", "dev", "pxe0")
    ip("-n", pxe_ns, "link", "set", "pxe0", "up")
    ip("-n", srv, "link", "set", "srvpxe", "master", "br0")
    ip("-n", srv, "link", "set", "srvpxe", "up")
    # the existing DHCP server: addresses, no boot information at all
    lab.dnsmasq(["br0"], ["10.79.0.100,10.79.0.150,255.255.255.0,2m"], router="10.79.0.254",
                dns="10.79.0.53")
    spec = make_spec(mode="proxy", server_url_text=URL, interface="pxe0", subnet="10.79.0.0/24")
    proxy = run_generated(lab, pxe_ns, render(spec), "proxy")

    # 1. the ROM's DISCOVER: an address from the DHCP server, PXE information from the proxy
    replies = ask(lab, arch=0, want=2, wait=10)
    by_server = {r["server_id"]: r for r in replies}
    assert set(by_server) == {"10.79.0.2", "10.79.0.1"}, replies
    plain, offer = by_server["10.79.0.2"], by_server["10.79.0.1"]
    assert 100 <= int(plain["yiaddr"].rsplit(".", 1)[1]) <= 150 and plain["filename"] == ""
    assert offer["yiaddr"] == "0.0.0.0"  # a proxy offers no address
    assert offer["vendor_class"] == "PXEClient"
    assert [text for _, text in offer["menu"]] == ["pyinit: load iPXE"]
    ((item, _),) = offer["menu"]

    # 2. the ROM, now with its address, asks the proxy (port 4011) for the chosen menu item
    ip("-n", lab.client_ns, "addr", "add", f"{plain['yiaddr']}/24", "dev", "cli0")
    ack = only(ask(lab, arch=0, msg_type=3, to="10.79.0.1", port=4011, ciaddr=plain["yiaddr"],
                   boot_item=item, want=1))
    assert (ack["msg_type"], ack["filename"], ack["siaddr"]) == (5, BIOS_FILE, "10.79.0.1")

    # UEFI firmware shows no PXE menus: for a single matching entry dnsmasq (2.76+) leaves the
    # menu out and answers the firmware's port-4011 request with the file directly
    efi = next(r for r in ask(lab, arch=7, want=2, wait=10) if r["server_id"] == "10.79.0.1")
    assert (efi["menu"], efi["filename"], efi["siaddr"]) == ([], "", "10.79.0.1")
    efi_ack = only(ask(lab, arch=7, msg_type=3, to="10.79.0.1", port=4011,
                       ciaddr=plain["yiaddr"], want=1))
    assert (efi_ack["msg_type"], efi_ack["filename"]) == (5, EFI64_FILE)

    # 3. iPXE (option 175, user class iPXE) is sent to pyinit serve over HTTP
    ipxe = next(r for r in ask(lab, arch=0, ipxe_175=True, user_class="iPXE", want=2, wait=10)
                if r["server_id"] == "10.79.0.1")
    assert [text for _, text in ipxe["menu"]] == ["pyinit: boot.ipxe"]
    ((ipxe_item, _),) = ipxe["menu"]
    ipxe_ack = only(ask(lab, arch=0, ipxe_175=True, user_class="iPXE", msg_type=3,
                        to="10.79.0.1", port=4011, ciaddr=plain["yiaddr"], boot_item=ipxe_item,
                        want=1))
    assert ipxe_ack["filename"] == BOOT_URL
    assert "proxy" in proxy.text()
