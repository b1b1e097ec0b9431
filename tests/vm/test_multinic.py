"""Two NICs, no BOOTIF: DHCP is served only on the second one, and pyinit must find it.

The first NIC (lower PCI slot, so lower ifindex: the one the old "first NIC with carrier" rule
took) sits on a QEMU hub with nothing else on it: it has carrier, but nobody answers. The second
is slirp with the provisioning server behind it. pyinit races DHCP on both, the second wins, its
MAC identifies the machine (the action is fetched by it, as the server's access log shows) and
the image is written; the host checks the disk.

Then ``vlan=`` and ``bond=`` in the guest's kernel (this host's kernel has neither 8021q nor
bonding, so the netns tests in tests/integration/test_vlan_bond_netns.py skip here): a VLAN whose
only way to the server is a userspace 802.1Q trunk port, and an active-backup bond whose active
slave's link is cut (QMP ``set_link``) right after the lease, before the action and the image.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import VM, Disk, VMConfig

from .conftest import NEVER, Artifacts, Server, blank_disk

pytestmark = pytest.mark.vm

DEAD, LIVE = "52:54:00:00:07:01", "52:54:00:00:07:02"


def test_dhcp_on_the_second_nic_is_found(artifacts: Artifacts, server: Server,
                                         demo_image: DemoImage, tmp_path: Path) -> None:
    server.image("demo.img.gz", demo_image.gz)
    server.machine(LIVE, {"action": "writeImage", "compressed": True,
                          "sourceImage": f"{server.guest_url}/images/demo.img.gz",
                          "destinationDevice": "/dev/vda", "finish": "poweroff"})
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    cfg = VMConfig(
        kernel=artifacts.kernel, initrd=artifacts.initrd,
        append=f"MYURL={server.guest_url} pyinit.on_failure=poweroff pyinit.dhcp_timeout=90",
        nic_model=None, disks=[Disk(disk, interface="virtio")], timeout=300,
        workdir=tmp_path / "vm",
        extra_args=[
            # carrier, no DHCP: a hub with no other port (frames go nowhere)
            "-netdev", "hubport,id=dead,hubid=7",
            "-device", f"virtio-net-pci,netdev=dead,mac={DEAD},romfile=,addr=0x4",
            "-netdev", "user,id=live",
            "-device", f"virtio-net-pci,netdev=live,mac={LIVE},romfile=,addr=0x5",
        ])
    with VM(cfg) as vm:
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=120)
        vm.expect(r"network: DHCP on eth0", timeout=90)
        vm.expect(r"network: DHCP on eth1", timeout=30)
        vm.expect(r"network: first lease on eth1 \(raced on eth0, eth1; stopped eth0; "
                  r"down again: eth0\)", timeout=120)
        inventory = vm.expect_event(step="network", status="inventory", timeout=10)
        lease = vm.expect_event(step="network", status="ok", timeout=30)
        vm.expect_event(step="provision", status="ok", timeout=180)
        result = vm.expect_event(step="result", timeout=60)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER, r"lease \S+ on eth0")
    print(f"network step: {lease['elapsed']} s")
    assert result["status"] == "ok", result
    assert (result["mac"], result["interface"]) == (LIVE, "eth1")
    assert result["address"].startswith("10.0.2.")
    nics = {n["name"]: n for n in inventory["nics"]}
    assert {n: (v["mac"], v["driver"], v["carrier"]) for n, v in nics.items()} == {
        "eth0": (DEAD, "virtio_net", True), "eth1": (LIVE, "virtio_net", True)}
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    paths = [r["path"] for r in server.srv.access_log]
    assert "/" + LIVE.replace(":", "-") in paths, paths
    assert not any(DEAD.replace(":", "-") in p for p in paths), paths
    # the inventory reached the server too (replayed once the event sink existed)
    assert ("network", "inventory") in [(e.get("step"), e.get("status"))
                                        for e in server.events(LIVE)]


# --- vlan= and bond= in the guest's kernel -----------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TrunkPort(threading.Thread):
    """A userspace 802.1Q trunk port between a guest NIC and a QEMU hub with slirp on it (both
    ``-netdev socket,udp=``: one Ethernet frame per loopback datagram). Frames from the guest
    reach slirp only when tagged with ``vid`` (the tag is stripped); slirp's frames reach the
    guest tagged. So DHCP works only on the guest's VLAN link. (The host kernel here has no
    8021q, so a netns bridge cannot do this.)"""

    def __init__(self, vid: int) -> None:
        super().__init__(name="trunk", daemon=True)
        self.vid = vid
        self.guest = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.hub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.guest, self.hub):
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
        self.guest_qemu, self.hub_qemu = free_udp_port(), free_udp_port()  # QEMU's ends
        self.tagged = self.dropped = 0
        self._halt = threading.Event()

    def netdev(self, side: str, netdev_id: str) -> str:
        mine = self.guest if side == "guest" else self.hub
        theirs = self.guest_qemu if side == "guest" else self.hub_qemu
        return (f"socket,id={netdev_id},udp=127.0.0.1:{mine.getsockname()[1]},"
                f"localaddr=127.0.0.1:{theirs}")

    def run(self) -> None:
        tag = b"\x81\x00" + struct.pack("!H", self.vid)
        while not self._halt.is_set():
            ready, _, _ = select.select([self.guest, self.hub], [], [], 0.2)
            for s in ready:
                frame = s.recv(65536)
                if s is self.guest:
                    if frame[12:14] == b"\x81\x00" and struct.unpack(
                            "!H", frame[14:16])[0] & 0xFFF == self.vid:
                        self.tagged += 1
                        self.hub.sendto(frame[:12] + frame[16:], ("127.0.0.1", self.hub_qemu))
                    else:
                        self.dropped += 1
                else:
                    self.guest.sendto(frame[:12] + tag + frame[12:],
                                      ("127.0.0.1", self.guest_qemu))

    def close(self) -> None:
        self._halt.set()
        self.join(2)
        self.guest.close()
        self.hub.close()


def provision_action(server: Server, mac: str, demo_image: DemoImage) -> None:
    server.image("demo.img.gz", demo_image.gz)
    server.machine(mac, {"action": "writeImage", "compressed": True,
                         "sourceImage": f"{server.guest_url}/images/demo.img.gz",
                         "destinationDevice": "/dev/vda", "finish": "poweroff"})


def test_vlan_lease_and_provision_over_a_tagged_trunk(
        artifacts: Artifacts, server: Server, demo_image: DemoImage, tmp_path: Path) -> None:
    mac = "52:54:00:00:07:11"
    provision_action(server, mac, demo_image)
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    trunk = TrunkPort(vid=100)
    trunk.start()
    cfg = VMConfig(
        kernel=artifacts.kernel, initrd=artifacts.initrd,
        append=f"MYURL={server.guest_url} vlan=eth0.100:eth0 pyinit.on_failure=poweroff",
        nic_model=None, disks=[Disk(disk, interface="virtio")], timeout=300,
        workdir=tmp_path / "vm",
        extra_args=["-netdev", trunk.netdev("guest", "g0"),
                    "-device", f"virtio-net-pci,netdev=g0,mac={mac},romfile=",
                    "-netdev", trunk.netdev("hub", "t0"),
                    "-netdev", "hubport,id=h0,hubid=3,netdev=t0",
                    "-netdev", "user,id=u0",
                    "-netdev", "hubport,id=h1,hubid=3,netdev=u0"])
    try:
        with VM(cfg) as vm:
            vm.expect(r"network: vlan eth0\.100 \(id 100\) on eth0", timeout=120)
            lease = vm.expect_event(step="network", status="ok", timeout=120)
            vm.expect_event(step="provision", status="ok", timeout=180)
            result = vm.expect_event(step="result", timeout=60)
            assert vm.wait_exit(timeout=60) == 0
            vm.assert_never(*NEVER)
    finally:
        trunk.close()
    print(f"network step {lease['elapsed']} s; frames tagged {trunk.tagged}, "
          f"dropped {trunk.dropped}")
    assert result["status"] == "ok", result
    assert (result["interface"], result["mac"]) == ("eth0.100", mac)
    assert trunk.tagged > 100  # the image came over the VLAN
    assert sha256_file(disk, demo_image.size) == demo_image.sha256


def qmp(path: Path, *commands: dict[str, Any]) -> list[dict[str, Any]]:
    """Run QMP ``commands`` on QEMU's socket; their answers (errors raise)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        answers = []
        for cmd in [{"execute": "qmp_capabilities"}, *commands]:
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while "event" in (answer := json.loads(f.readline())):
                pass
            if "error" in answer:
                raise RuntimeError(f"QMP {cmd}: {answer['error']}")
            answers.append(answer)
        return answers[1:]


def test_bond_lease_and_failover_while_provisioning(
        artifacts: Artifacts, server: Server, demo_image: DemoImage, tmp_path: Path) -> None:
    """Both slaves on one hub with slirp; the active slave's link is cut (QMP set_link) as soon
    as the network step is done, before the action and the image are fetched."""
    mac0, mac1 = "52:54:00:00:07:21", "52:54:00:00:07:22"
    provision_action(server, mac0, demo_image)  # the bond has its first slave's MAC
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    sock = tmp_path / "qmp.sock"
    cfg = VMConfig(
        kernel=artifacts.kernel, initrd=artifacts.initrd,
        append=(f"MYURL={server.guest_url} bond=bond0:eth0,eth1:mode=active-backup,miimon=100 "
                "pyinit.on_failure=poweroff"),
        nic_model=None, disks=[Disk(disk, interface="virtio")], timeout=300,
        workdir=tmp_path / "vm",
        extra_args=["-qmp", f"unix:{sock},server=on,wait=off",
                    "-netdev", "user,id=u0", "-netdev", "hubport,id=h0,hubid=4,netdev=u0",
                    "-netdev", "hubport,id=s0,hubid=4",
                    "-device", f"virtio-net-pci,netdev=s0,mac={mac0},romfile=,id=nic0",
                    "-netdev", "hubport,id=s1,hubid=4",
                    "-device", f"virtio-net-pci,netdev=s1,mac={mac1},romfile=,id=nic1"])
    with VM(cfg) as vm:
        vm.expect(r"network: bond bond0 \(active-backup, miimon 100 ms\) over eth0,eth1; "
                  r"active eth0", timeout=120)
        vm.expect_event(step="network", status="ok", timeout=120)
        qmp(sock, {"execute": "set_link", "arguments": {"name": "nic0", "up": False}})
        vm.expect(r"bond0: \(slave eth0\): link status definitely down", timeout=30)
        vm.expect(r"bond0: \(slave eth1\): making interface the new active one", timeout=30)
        vm.expect_event(step="provision", status="ok", timeout=180)
        result = vm.expect_event(step="result", timeout=60)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert result["status"] == "ok", result
    assert (result["interface"], result["mac"]) == ("bond0", mac0)
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
