"""IPv6 for the server URL in a real guest: QEMU's slirp sends router advertisements for
``fec0::/64`` (the kernel does SLAAC) and forwards the guest's connections to ``fec0::2`` to the
host's ``::1``. The provisioning server listens on ``::1`` only, so the action, the image and
the events can only have come over IPv6; the host checks the disk afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit_build.demoimage import DemoImage, sha256_file
from tests.serverkit import ObservedServer

from .conftest import NEVER, Artifacts, Server, blank_disk, boot

pytestmark = pytest.mark.vm

MAC = "52:54:00:00:06:01"


@pytest.fixture
def server6(tmp_path: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    with ObservedServer(root, host="::1", open_writes=True, symlinks="any") as srv:
        yield Server(srv, root)


def test_provision_over_slaac_from_slirp(artifacts: Artifacts, server6: Server,
                                         demo_image: DemoImage, tmp_path: Path) -> None:
    url = f"http://[fec0::2]:{server6.srv.port}"
    server6.image("demo.img.gz", demo_image.gz)
    server6.machine(MAC, {"action": "writeImage", "compressed": True,
                          "sourceImage": f"{url}/images/demo.img.gz",
                          "destinationDevice": "/dev/vda", "finish": "poweroff"})
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    with boot(artifacts, tmp_path, f"MYURL={url}", mac=MAC, disks=[disk], timeout=400) as vm:
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=120)
        vm.expect(r"network: slaac fec0::\S+/64", timeout=120)
        net = vm.expect_event(step="network", status="ok", timeout=60)
        vm.expect_event(step="action", status="ok", timeout=90)
        vm.expect_event(step="provision", status="ok", timeout=180)
        result = vm.expect_event(step="result", timeout=60)
        assert vm.wait_exit(timeout=90) == 0
        vm.assert_never(*NEVER, r"DHCP on eth0", r"no DHCP lease")
    print(f"network step: {net}")
    assert result["status"] == "ok", result
    assert result["mac"] == MAC
    assert result["address"].startswith("fec0::")  # SLAAC from slirp's RA, no IPv4 at all
    assert result["bytes_written"] == demo_image.size
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    seen = [(e.get("step"), e.get("status")) for e in server6.events(MAC)]
    assert ("result", "ok") in seen
