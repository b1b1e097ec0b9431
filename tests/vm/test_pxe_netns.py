"""The dnsmasq file ``pyinit dnsmasq`` generates, network-booting a real NIC ROM end to end.

No slirp and no ``-kernel``: two network namespaces stand in for two machines on a wire. The
"server" namespace is the provisioning host (``srv0`` = 10.77.0.1/24) running real dnsmasq with
the GENERATED full-mode file and ``pyinit serve`` (a subprocess: a server in this process could
not bind inside another namespace). The "client" namespace is the hypervisor: a bridge joins a
TAP device and the veth to the server, and QEMU runs there (``VMConfig.netns``/``tap``) with
QEMU's own iPXE ROM booting first. iPXE gets a lease and, because it sends option 175, the
``boot.ipxe`` URL from dnsmasq; it chains to ``/{mac}.ipxe``, loads kernel and initramfs over
HTTP, and pyinit (after a second DHCP lease, its own) provisions the disk from the same server.

iPXE prints only to the (absent) display, so the serial console proves the chain with the
kernel's ``Command line:`` (BOOTYURL= and BOOTIF= come from ``/{mac}.ipxe``); dnsmasq's
``log-dhcp`` output, its lease file and the server's access log prove who answered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk
from pyinit_server.dnsmasq import DEFAULT_TFTP_ROOT, make_spec, render
from tests.integration.netns_dhcp import REPO, Lab, ip
from tests.integration.test_dnsmasq_netns import run_generated

from .conftest import NEVER, Artifacts

pytestmark = pytest.mark.vm

MAC = "52:54:00:9e:77:01"
MAC_DASHES = MAC.replace(":", "-")
SERVER_IP = "10.77.0.1"
PORT = 8080  # the namespace is new: no other listener can hold it
URL = f"http://{SERVER_IP}:{PORT}"
PYINIT = REPO / ".venv" / "bin" / "pyinit"
KERNEL_ARGS = "console=ttyS0,115200 panic=-1 pyinit.on_failure=poweroff"


def _missing() -> str | None:
    """Why this host cannot run the test, or None."""
    if os.geteuid() != 0:
        return "network namespaces and TAP devices need root"
    for tool in ("ip", "dnsmasq", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (iproute2, dnsmasq-base, curl)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun: QEMU cannot create a TAP device"
    if not DEFAULT_TFTP_ROOT.is_dir():
        return f"no {DEFAULT_TFTP_ROOT} (Debian's ipxe package): the generated file serves it"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if done.returncode != 0:
        return f"`ip netns` does not work here: {done.stderr.decode().strip()}"
    return None


@pytest.fixture(autouse=True)
def _needs_netns() -> None:
    why = _missing()
    if why is not None:
        if "PYINIT_OUT" in os.environ:  # make test: the environment must have them
            pytest.fail(why)
        pytest.skip(why)


@dataclass
class Serve:
    """``pyinit serve`` running inside a namespace; its log file holds the access lines."""

    popen: subprocess.Popen[bytes]
    log: Path
    ns: str

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def get(self, path: str) -> Any:
        done = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-sSf", "--max-time",
                               "10", f"{URL}{path}"], capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode == 0, f"GET {path}: {done.stderr.strip()}"
        return json.loads(done.stdout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def start_serve(ns: str, root: Path, boot: Path, log: Path) -> Serve:
    argv = ["ip", "netns", "exec", ns, str(PYINIT), "serve", "--root", str(root),
            "--boot-dir", str(boot), "--host", SERVER_IP, "--port", str(PORT),
            "--public-url", URL, "--kernel-args", KERNEL_ARGS,
            # the boot files and the image are links to what out/ holds
            "--symlinks", "any"]
    print("+", " ".join(argv))
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 env=proc.clean_env())
    serve = Serve(popen, log, ns)
    deadline = time.monotonic() + 30
    while True:
        up = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sf", "--max-time", "2",
                             "-o", "/dev/null", f"{URL}/boot.ipxe"], check=False,
                            capture_output=True)
        if up.returncode == 0:
            return serve
        if popen.poll() is not None or time.monotonic() > deadline:
            serve.stop()
            raise RuntimeError(f"pyinit serve did not come up on {URL}:\n{serve.text()}")
        time.sleep(0.2)



def wire(lab: Lab) -> str:
    """srv0 (10.77.0.1/24) in the server namespace, its veth peer and a TAP device on a bridge
    in the client namespace. The TAP exists before QEMU opens it, so the bridge forwards the
    ROM's first DHCPDISCOVER. Returns the TAP's name."""
    cli = lab.client_ns
    ip("-n", lab.server_ns, "link", "add", "srv0", "type", "veth", "peer", "name", "uplink",
       "netns", cli)
    ip("-n", lab.server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", "srv0")
    ip("-n", lab.server_ns, "link", "set", "srv0", "up")
    ip("-n", cli, "link", "add", "br0", "type", "bridge")
    ip("-n", cli, "tuntap", "add", "dev", "tap0", "mode", "tap")
    for dev in ("uplink", "tap0"):
        ip("-n", cli, "link", "set", dev, "master", "br0")
        ip("-n", cli, "link", "set", dev, "up")
    ip("-n", cli, "link", "set", "br0", "up")
    return "tap0"


@dataclass
class Provisioned:
    result: dict[str, Any]  # the guest's result event, from the serial console
    status: dict[str, Any]  # GET /api/machines/{mac}: the server's record of the run
    access: dict[str, str]  # path -> the client address that fetched it (pyinit serve's log)


def provision(lab: Lab, tap: str, artifacts: Artifacts, demo_image: DemoImage,
              tmp_path: Path) -> Provisioned:
    """``pyinit serve`` at :data:`URL` in the server namespace, then QEMU's iPXE ROM on ``tap``
    network-booting from whatever DHCP answers there, until pyinit wrote the demo image and
    powered off. Checks the serial console and the disk; returns what the server saw."""
    root, boot = tmp_path / "srv", tmp_path / "boot"
    for d in (root / "machines", root / "images", boot):
        d.mkdir(parents=True)
    (boot / "vmlinuz").symlink_to(artifacts.kernel)
    (boot / "initramfs.cpio.zst").symlink_to(artifacts.archive)
    (root / "images" / "demo.img.gz").symlink_to(demo_image.gz)
    (root / "machines" / f"{MAC_DASHES}.json").write_text(json.dumps({
        "action": "writeImage", "sourceImage": "images/demo.img.gz",
        "checksum": f"sha256:{demo_image.gz_sha256}", "destinationDevice": "/dev/vda",
        "finish": "poweroff"}))
    disk = create_disk(tmp_path / "disk.raw", 2 * demo_image.size)

    serve = start_serve(lab.server_ns, root, boot, tmp_path / "serve.log")
    try:
        cfg = VMConfig(kernel=None, mac=MAC, disks=[Disk(disk)], netns=lab.client_ns, tap=tap,
                       net_boot=True, timeout=600, workdir=tmp_path / "vm")
        with VM(cfg) as vm:
            # BOOTYURL= is pyinit serve's address on the wire: iPXE got boot.ipxe from the
            # generated dnsmasq file, and boot.ipxe chained to this MAC's script
            vm.expect(rf"Command line: .*BOOTYURL={URL} BOOTIF=01-{MAC_DASHES}", timeout=300)
            result = vm.expect_event(step="result", timeout=400)
            vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        status = serve.get(f"/api/machines/{MAC_DASHES}")
    finally:
        serve.stop()
        print(f"--- serve.log\n{serve.text()}")

    assert result["status"] == "ok", result
    assert result["mac"] == MAC and result["checksum_verified"] == "sha256"
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    # the server's own record: the guest POSTed its events over the wire
    assert status["result"] == "ok", status
    assert any(e.get("step") == "result" and e.get("status") == "ok" for e in status["log"])
    access = {m.group(2): m.group(1) for m in re.finditer(
        r'(\d+\.\d+\.\d+\.\d+) "GET (\S+) HTTP/1\.1" 200', serve.text())}
    return Provisioned(result, status, access)


def fetched_from(done: Provisioned, first: int, last: int) -> set[str]:
    """Asserts iPXE and pyinit fetched every step over the wire from an address in
    10.77.0.first-last (the range of the DHCP server under test); the addresses seen."""
    seen = set()
    for path in ("/boot.ipxe", f"/{MAC_DASHES}.ipxe", "/boot/vmlinuz",
                 "/boot/initramfs.cpio.zst", f"/{MAC_DASHES}.bty", "/images/demo.img.gz"):
        assert path in done.access, (path, done.access)
        net, _, host = done.access[path].rpartition(".")
        assert net == "10.77.0" and first <= int(host) <= last, (path, done.access[path])
        seen.add(done.access[path])
    return seen


def test_full_mode_nic_rom_boots_from_generated_dnsmasq_and_provisions(
        lab: Lab, artifacts: Artifacts, demo_image: DemoImage, tmp_path: Path) -> None:
    started = time.monotonic()
    tap = wire(lab)
    spec = make_spec(mode="full", server_url_text=URL, interface="srv0", subnet="10.77.0.0/24",
                     dhcp_range="10.77.0.100,10.77.0.150", lease_time="10m")
    dnsmasq = run_generated(lab, lab.server_ns, render(spec), "full")

    done = provision(lab, tap, artifacts, demo_image, tmp_path)
    addresses = fetched_from(done, 100, 150)

    # dnsmasq: iPXE's requests were tagged ipxe (option 175) and bios (option 93 = 0), and got
    # the HTTP URL as boot file; the VM's address was acknowledged and is in the lease file
    log = dnsmasq.text()
    assert "tags: ipxe, bios, srv0" in log, log
    assert re.search(rf"option: 67 bootfile-name +{re.escape(URL)}/boot\.ipxe", log), log
    acked = set(re.findall(rf"DHCPACK\(srv0\) (\S+) {MAC}", log))
    assert addresses <= acked, (addresses, acked)
    assert MAC in dnsmasq.leases.read_text()
    print(f"full mode: test took {time.monotonic() - started:.1f} s")


def test_proxy_mode_nic_rom_boots_next_to_an_existing_dhcp_server(
        lab: Lab, artifacts: Artifacts, demo_image: DemoImage, tmp_path: Path) -> None:
    """A plain dnsmasq in a third namespace (10.77.0.2, on the same bridge) hands out addresses
    and nothing else; the generated proxy file on the provisioning host adds the boot
    information (PXE menu, boot server request on UDP 4011)."""
    started = time.monotonic()
    tap = wire(lab)
    dhcp_tmp = tmp_path / "dhcp"
    dhcp_tmp.mkdir()
    dhcp = Lab(dhcp_tmp)  # its server namespace is the existing DHCP server
    try:
        ip("-n", dhcp.server_ns, "link", "add", "dhcp0", "type", "veth", "peer", "name",
           "uplink2", "netns", lab.client_ns)
        ip("-n", dhcp.server_ns, "addr", "add", "10.77.0.2/24", "dev", "dhcp0")
        ip("-n", dhcp.server_ns, "link", "set", "dhcp0", "up")
        ip("-n", lab.client_ns, "link", "set", "uplink2", "master", "br0")
        ip("-n", lab.client_ns, "link", "set", "uplink2", "up")
        plain = dhcp.dnsmasq(["dhcp0"], ["10.77.0.160,10.77.0.200,255.255.255.0,10m"],
                             router="10.77.0.254", dns="10.77.0.53")
        spec = make_spec(mode="proxy", server_url_text=URL, interface="srv0",
                         subnet="10.77.0.0/24")
        proxy = run_generated(lab, lab.server_ns, render(spec), "proxy")

        done = provision(lab, tap, artifacts, demo_image, tmp_path)
        addresses = fetched_from(done, 160, 200)  # addresses from the plain server only
    finally:
        dhcp.close()
        for server in dhcp.servers:
            print(f"--- {server.log.name}\n{server.text()}")

    plain_log, proxy_log = plain.text(), proxy.text()
    acked = set(re.findall(rf"DHCPACK\(dhcp0\) (\S+) {MAC}", plain_log))
    assert addresses <= acked, (addresses, acked)
    assert "boot.ipxe" not in plain_log  # the existing server knows nothing of PXE
    # the proxy answered iPXE (tagged ipxe) with the boot.ipxe URL and handed out no address
    assert "tags: ipxe, " in proxy_log, proxy_log
    # iPXE's boot server request (UDP 4011), from the address the plain server gave it
    served = re.findall(rf"PXE\(srv0\) (\S+) {MAC} {re.escape(URL)}/boot\.ipxe", proxy_log)
    assert served and set(served) <= acked, (served, acked)
    assert "DHCPACK(srv0) 10.77." not in proxy_log
    print(f"proxy mode: test took {time.monotonic() - started:.1f} s")
