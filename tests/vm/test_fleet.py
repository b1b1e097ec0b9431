"""Issue #6 beyond one machine: three VMs provisioned at once from one server, and one VM
provisioned from nginx serving a ``pyinit export`` of the same tree.

Each fleet machine has its own MAC, its own machine file and its own image (raw, gzip, zstd;
distinct content, each action carrying its image's checksum), so a mix-up anywhere (server,
MAC spelling, caching) shows up twice: the machine refuses a checksum that does not match, and
the host finds the wrong bytes on the disk. TCG only, three guests on two shared cores: the
timeouts are generous.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import random
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit_qemu.vm import VM, Disk, VMConfig
from pyinit_server.export import export
from tests.integration.test_nginx_tree import run_nginx

from .conftest import NEVER, Artifacts, Server, blank_disk

pytestmark = pytest.mark.vm

MIB = 1 << 20
IMAGE_SIZE = 8 * MIB
VM_TIMEOUT = 900.0


@dataclass(frozen=True)
class Image:
    name: str  # the file served (compressed or not)
    raw: bytes  # what must end up on the disk
    served_sha256: str


def make_image(directory: Path, seed: int, fmt: str) -> Image:
    """An 8 MiB image unique to ``seed``: random blocks, zero runs, a marker at offset 0."""
    rng = random.Random(seed)
    raw = bytearray(IMAGE_SIZE)
    for pos in range(0, IMAGE_SIZE, MIB // 2):
        if rng.random() < 0.5:
            raw[pos:pos + MIB // 4] = rng.randbytes(MIB // 4)
    raw[:32] = f"pyinit fleet image {seed:02d}".encode().ljust(32, b".")
    name = f"fleet{seed}.img"
    path = directory / name
    path.write_bytes(raw)
    if fmt == "gz":
        name += ".gz"
        (directory / name).write_bytes(gzip.compress(bytes(raw), compresslevel=1, mtime=0))
    elif fmt == "zst":
        subprocess.run(["zstd", "-q", "-3", str(path), "-o", str(directory / f"{name}.zst")],
                       check=True)
        name += ".zst"
    served = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    return Image(name, bytes(raw), served)


def disk_sha256(path: Path, size: int) -> str:
    with path.open("rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def start_vm(artifacts: Artifacts, workdir: Path, append: str, mac: str, disk: Path) -> VM:
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd,
                   append=f"{append} pyinit.on_failure=poweroff", mac=mac, memory_mb=768,
                   disks=[Disk(disk, interface="virtio")], timeout=VM_TIMEOUT, workdir=workdir)
    return VM(cfg)


def action(image: Image, **extra: Any) -> dict[str, Any]:
    return {"action": "writeImage", "sourceImage": f"images/{image.name}",
            "destinationDevice": "/dev/vda", "checksum": f"sha256:{image.served_sha256}",
            "finish": "poweroff", **extra}


FLEET = [("52:54:00:00:06:01", "raw"), ("52:54:00:00:06:02", "gz"), ("52:54:00:00:06:03", "zst")]


def test_three_vms_at_once_from_one_server(artifacts: Artifacts, server: Server,
                                           tmp_path: Path) -> None:
    images = {mac: make_image(server.root / "images", i + 1, fmt)
              for i, (mac, fmt) in enumerate(FLEET)}
    for mac, _ in FLEET:
        server.machine(mac, action(images[mac]))
    disks = {mac: blank_disk(tmp_path / f"disk-{mac[-2:]}.raw", 2 * IMAGE_SIZE)
             for mac, _ in FLEET}
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        vms = {mac: stack.enter_context(start_vm(artifacts, tmp_path / f"vm-{mac[-2:]}",
                                                 f"BOOTYURL={server.guest_url}", mac, disks[mac]))
               for mac, _ in FLEET}
        # all three run at once; each is read by its own threads, so waiting in turn is fine
        for vm in vms.values():
            vm.expect(r"pyinit \S+ starting as PID 1", timeout=300)
        for mac, vm in vms.items():
            results[mac] = vm.expect_event(step="result", timeout=VM_TIMEOUT)
        for vm in vms.values():
            assert vm.wait_exit(timeout=120) == 0
            vm.assert_never(*NEVER)
    wall = time.monotonic() - started
    print(f"fleet: 3 VMs provisioned concurrently in {wall:.1f} s")
    for mac, _ in FLEET:
        image, result = images[mac], results[mac]
        assert result["status"] == "ok", (mac, result)
        assert result["mac"] == mac
        assert result["sha256"] == image.served_sha256
        assert result["bytes_written"] == IMAGE_SIZE
        # the host's own check: this machine's disk holds this machine's image
        assert disk_sha256(disks[mac], IMAGE_SIZE) == hashlib.sha256(image.raw).hexdigest(), mac
        # and the server recorded this machine's result under its own MAC
        ok = server.srv.wait_event(mac, step="result", status="ok", timeout=30)
        assert ok["sha256"] == image.served_sha256
    served = [r["path"] for r in server.srv.access_log if r["method"] == "GET"]
    for mac, _ in FLEET:
        assert f"/{mac.replace(':', '-')}.bty" in served
        assert f"/images/{images[mac].name}" in served


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_vm_provisioned_from_nginx(artifacts: Artifacts, server: Server, tmp_path: Path) -> None:
    """nginx serves the exported tree (events answered 204 and discarded): the machine fetches
    its action and image from nginx, provisions, and the disk holds the image."""
    mac = "52:54:00:00:06:10"
    image = make_image(server.root / "images", 10, "zst")
    server.machine(mac, action(image))
    port = free_port()
    www = tmp_path / "www"
    export(server.root, www, listen=f"127.0.0.1:{port}")
    disk = blank_disk(tmp_path / "disk.raw", 2 * IMAGE_SIZE)
    with run_nginx(tmp_path / "nginx", [www], [port]) as access_log, \
            start_vm(artifacts, tmp_path / "vm", f"BOOTYURL=http://10.0.2.2:{port}", mac,
                     disk) as vm:
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=180)
        fetched = vm.expect_event(step="action", status="ok", timeout=300)
        result = vm.expect_event(step="result", timeout=600)
        assert vm.wait_exit(timeout=120) == 0
        vm.assert_never(*NEVER)
        log = access_log.read_text()
    assert result["status"] == "ok", result
    assert result["sha256"] == image.served_sha256
    assert fetched  # the action step succeeded against nginx
    assert disk_sha256(disk, IMAGE_SIZE) == hashlib.sha256(image.raw).hexdigest()
    # everything came from nginx, and nothing reached pyinit serve
    assert f'"GET /{mac.replace(":", "-")}.bty HTTP/1.1" 200' in log
    assert f'"GET /images/{image.name} HTTP/1.1" 200' in log
    assert f'"POST /events/{mac.replace(":", "-")} HTTP/1.1" 204' in log
    assert server.srv.access_log == []
