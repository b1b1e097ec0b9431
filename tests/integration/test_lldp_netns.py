"""pyinit's LLDP listener against a real sender, Debian's lldpd, in network namespaces (root).

The "switch" namespace runs lldpd on ``swp1`` with its own socket, pid file and configuration
(system name ``switch01``, port ID = interface name, a port description, ``tx-interval 1``);
the "machine" namespace holds the other end of the veth pair, ``eth0``, left down as firmware
leaves a NIC. :mod:`tests.integration.lldp_peer` runs the listener there: it must raise
``eth0`` for the window, hear lldpd, and put ``eth0`` down again.

The VLAN: lldpd sends the IEEE 802.1 Port VLAN ID TLV only for a port of a VLAN-aware bridge
(it reads the PVID from the bridge's netlink VLAN info), so the switch namespace makes
``swp1`` a port of such a bridge with PVID 100. A host kernel without
``CONFIG_BRIDGE_VLAN_FILTERING`` cannot, and there lldpd is told to send the same two 802.1
TLVs (Port VLAN ID 100, VLAN Name ``vlan100``) as custom TLVs in its configuration file; the
test prints which way it went. Either way the bytes come from lldpd's own encoder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit import lldp, proc
from pyinit.errors import CommandError
from tests.hostreq import host_limit, need, need_root
from tests.integration.netns_dhcp import REPO, Lab, ip, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    """Root and the tools (under make test: a failure when missing, see tests/hostreq.py)."""
    need_root("network namespaces")
    need("ip")

MACHINE_MAC = "02:00:5e:11:00:01"
HOSTNAME, DESCRIPTION, PORT_DESCRIPTION = "switch01", "pyinit test switch", "uplink to rack1"
VLAN = 100


@dataclass
class Switch:
    lab: Lab
    tmp: Path  # lldpd's files: world-readable, lldpcli runs as the _lldpd user
    vlan_by: str = ""  # "bridge" or "custom-tlv"
    popen: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.tmp / "lldpd.socket"

    @property
    def log(self) -> Path:
        return self.tmp / "lldpd.log"

    def mac(self) -> str:
        (link,) = json.loads(ip("-j", "-n", self.lab.server_ns, "link", "show", "swp1"))
        return str(link["address"])

    def lldpcli(self, *args: str) -> str:
        return proc.run(["lldpcli", "-u", str(self.socket), *args], timeout=10).stdout

    def start(self) -> None:
        """lldpd -d on swp1 only, configured by its own file (read before its first frame)."""
        conf = self.tmp / "lldpd.d"
        conf.mkdir(exist_ok=True)
        lines = [f"configure system hostname {HOSTNAME}",
                 f"configure system description \"{DESCRIPTION}\"",
                 "configure lldp tx-interval 1",
                 "configure lldp portidsubtype ifname",
                 f"configure ports swp1 lldp portdescription \"{PORT_DESCRIPTION}\""]
        if self.vlan_by == "custom-tlv":
            vid, name = VLAN.to_bytes(2, "big"), f"vlan{VLAN}".encode()
            for subtype, info in ((1, vid), (3, vid + bytes([len(name)]) + name)):
                lines.append(f"configure ports swp1 lldp custom-tlv add oui 00,80,c2 subtype "
                             f"{subtype} oui-info {','.join(f'{b:02x}' for b in info)}")
        (conf / "switch.conf").write_text("\n".join(lines) + "\n")
        argv = ["ip", "netns", "exec", self.lab.server_ns, "lldpd", "-d", "-u",
                str(self.socket), "-p", str(self.tmp / "lldpd.pid"), "-I", "swp1", "-O",
                str(conf)]
        print("+", " ".join(argv))
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                          env=proc.clean_env())
        deadline = time.monotonic() + 10
        while "resume operations" not in self.log.read_text(errors="replace"):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lldpd did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen is not None:
            stop_process(self.popen)


def _vlan_aware_bridge(lab: Lab) -> bool:
    """swp1 as a port of a VLAN-aware bridge with PVID 100 (untagged); False when the
    kernel has no bridge VLAN filtering."""
    ns = lab.server_ns
    try:
        ip("-n", ns, "link", "add", "br0", "type", "bridge", "vlan_filtering", "1")
    except CommandError:
        subprocess.run(["ip", "-n", ns, "link", "del", "br0"], check=False, capture_output=True)
        return False
    ip("-n", ns, "link", "set", "swp1", "master", "br0")
    proc.run(["bridge", "-n", ns, "vlan", "add", "dev", "swp1", "vid", str(VLAN), "pvid",
              "untagged"], timeout=10)
    proc.run(["bridge", "-n", ns, "vlan", "del", "dev", "swp1", "vid", "1"], timeout=10)
    ip("-n", ns, "link", "set", "br0", "up")
    return True


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Switch]:
    for tool in ("lldpd", "lldpcli"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: apt-get install lldpd (make apt installs it)")
    try:
        lab = Lab(tmp_path)
    except CommandError as exc:
        host_limit(f"network namespaces are not available here: {exc}",
                   covered_by="tests/vm/test_hardware_matrix.py (the inventory in QEMU)")
    files = Path(tempfile.mkdtemp(prefix="pyinit-lldpd-"))
    files.chmod(0o755)  # pytest's tmp_path is 0700: lldpcli (user _lldpd) could not connect
    sw = Switch(lab, files)
    try:
        lab.veth("eth0", "swp1", MACHINE_MAC)
        for ns, dev in ((lab.client_ns, "eth0"), (lab.server_ns, "swp1")):
            ip("-n", ns, "link", "set", dev, "mtu", "9000")  # room for the oversized frame
        sw.vlan_by = "bridge" if _vlan_aware_bridge(lab) else "custom-tlv"
        print(f"switch: the VLAN TLVs come from lldpd by {sw.vlan_by}")
        yield sw
    finally:
        sw.stop()
        lab.close()
        if sw.log.exists():
            print(f"--- lldpd.log\n{sw.log.read_text(errors='replace')}")
        shutil.rmtree(files, ignore_errors=True)


def listener(sw: Switch, **args: Any) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", sw.lab.client_ns, sys.executable, "-m",
            "tests.integration.lldp_peer", "listen", json.dumps(args)]
    print("+", " ".join(argv))
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=proc.clean_env())


def wait_ready(popen: subprocess.Popen[str], name: str) -> None:
    assert popen.stdout is not None
    line = popen.stdout.readline()
    assert line.strip() == f"READY {name}", line + (popen.stderr.read() if popen.stderr else "")


def result(popen: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, err = popen.communicate(timeout=timeout)
    for line in err.splitlines():
        print(f"listener: {line}")
    assert popen.returncode == 0, err
    answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    print(answer["console"])
    return answer


def eth0_is_up(sw: Switch) -> bool:
    (link,) = sw.lab.client_ip("link", "show", "eth0")
    return "UP" in link["flags"]


def test_hears_lldpd(switch: Switch) -> None:
    switch.start()
    assert not eth0_is_up(switch)
    t0 = time.monotonic()
    popen = listener(switch, interfaces=["eth0"], down=["eth0"], timeout=20)
    wait_ready(popen, "eth0")
    out = result(popen)
    print(f"first neighbour after {time.monotonic() - t0:.2f} s (lldpd tx-interval 1 s)")

    n = out["heard"]["eth0"]
    assert (n["system_name"], n["port_id"], n["port_id_subtype"]) == (
        HOSTNAME, "swp1", "interface name")
    assert (n["chassis_id"], n["chassis_id_subtype"]) == (switch.mac(), "mac")
    assert n["port_description"] == PORT_DESCRIPTION
    assert n["system_description"] == DESCRIPTION
    assert n["port_vlan"] == VLAN
    assert {"id": VLAN, "name": f"vlan{VLAN}"} in n["vlans"]
    assert n["source_mac"] == switch.mac() and n["ttl"] > 0
    assert out["malformed"] == {} and not out["alive"]
    assert out["elapsed"] < 10  # the first frame ends the window: no 20 s wait
    assert "WARNING" not in out["console"] and "Traceback" not in out["console"]
    assert f"lldp: eth0: {HOSTNAME} port swp1 ({PORT_DESCRIPTION}), vlan {VLAN}" in \
        out["console"]
    assert not eth0_is_up(switch)  # raised for the window only
    assert switch.lldpcli("-f", "json", "show", "statistics")  # lldpd is still there


def frame(src: str, lldpdu: bytes) -> str:
    return (lldp.LLDP_MULTICAST + bytes.fromhex(src.replace(":", ""))
            + lldp.ETH_P_LLDP.to_bytes(2, "big") + lldpdu).hex()


def tlv(kind: int, value: bytes) -> bytes:
    return ((kind << 9) | len(value)).to_bytes(2, "big") + value


def test_survives_malformed_and_oversized_frames(switch: Switch) -> None:
    src = switch.mac()
    truncated = tlv(1, b"\x04" + bytes(6)) + b"\x04\x10abc"  # Port ID claims 16 bytes, has 3
    oversized = (tlv(1, b"\x07big") + tlv(2, b"\x05p1") + tlv(3, b"\x00\x78")
                 + tlv(127, bytes(4) + bytes(500)) * 3 + tlv(0, b""))  # 1.5 kB + headers
    junk = bytes(range(7, 107))
    assert len(oversized) > lldp.MAX_LLDPDU
    popen = listener(switch, interfaces=["eth0"], down=["eth0"], timeout=20)
    wait_ready(popen, "eth0")
    sender = ["ip", "netns", "exec", switch.lab.server_ns, sys.executable, "-m",
              "tests.integration.lldp_peer", "send",
              json.dumps({"interface": "swp1",
                          "frames": [frame(src, truncated), frame(src, oversized),
                                     frame(src, junk)]})]
    sent = subprocess.run(sender, cwd=REPO, capture_output=True, text=True, timeout=30,
                          env=proc.clean_env(), check=True)
    print(sent.stdout.strip())
    time.sleep(0.3)
    switch.start()  # then a real, good frame
    out = result(popen)

    console = out["console"]
    warnings = [line for line in console.splitlines() if "WARNING" in line]
    assert warnings == [f"pyinit: WARNING: lldp: eth0: ignored a malformed LLDP frame from "
                        f"{src}: TLV type 2 at byte 9: length 16 runs past the end of the "
                        f"LLDPDU (14 bytes)"], console  # one line, the rest rate-limited
    assert out["malformed"] == {"eth0": 3}
    assert "Traceback" not in console
    assert out["heard"]["eth0"]["system_name"] == HOSTNAME
    assert out["heard"]["eth0"]["port_vlan"] == VLAN
    assert not eth0_is_up(switch)
