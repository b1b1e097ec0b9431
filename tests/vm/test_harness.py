"""The QEMU harness against a real kernel, with a throwaway busybox initramfs (not pyinit's).

Needs a kernel at ``$PYINIT_KERNEL`` or ``out/vmlinuz`` (skipped otherwise) and a static busybox
(``$PYINIT_BUSYBOX`` or ``busybox`` on PATH). The network/disk test also needs the kernel's
modules (virtio_pci, virtio_net, virtio_blk) when they are not built in: ``$PYINIT_MODULES`` or
``<prefix>/lib/modules/<version>`` beside ``<prefix>/boot/vmlinuz-<version>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from pyinit_qemu.vm import VM, Disk, ExpectTimeout, VMConfig, create_disk, guest_url
from tests import busyboxrd, hostreq
from tests.serverkit import ObservedServer

pytestmark = pytest.mark.vm

MAC = "52:54:00:12:34:56"
BOOT_TIMEOUT = 120.0  # TCG on a slow, shared host


@pytest.fixture
def busybox() -> Path:
    try:
        return busyboxrd.static_busybox()
    except busyboxrd.Missing as exc:
        hostreq.fail_or_skip(str(exc))


def find_modules(kernel: Path, names: Iterable[str]) -> list[Path]:
    try:
        return busyboxrd.find_modules(kernel, names)
    except busyboxrd.Missing as exc:
        hostreq.fail_or_skip(str(exc))


@pytest.fixture
def initramfs(tmp_path: Path, busybox: Path) -> Callable[..., Path]:
    def make(body: str, modules: Iterable[Path] = ()) -> Path:
        return busyboxrd.build(tmp_path / "initrd.cpio", busyboxrd.INIT_HEADER + body, busybox,
                               modules)
    return make


# --------------------------------------------------------------------------------------------
# Tests


def test_boot_to_marker_and_poweroff(vm_kernel: Path, initramfs: Callable[..., Path],
                                     boot_vm: Callable[..., VM]) -> None:
    initrd = initramfs("""
echo "HARNESS-MARKER $(uname -r) $(cat /proc/cmdline)"
echo 'PYINIT-EVENT {"step": "smoke", "status": "ok", "n": 1}'
poweroff -f
""")
    started = time.monotonic()
    vm = boot_vm(VMConfig(kernel=vm_kernel, initrd=initrd, append="quiet extra=1",
                          timeout=BOOT_TIMEOUT * 2))
    m = vm.expect(r"HARNESS-MARKER (\S+) (.*)$", timeout=BOOT_TIMEOUT)
    print(f"boot to marker: {time.monotonic() - started:.1f} s")
    assert m.group(2).split() == ["console=ttyS0", "panic=-1", "quiet", "extra=1"]
    assert vm.expect_event("smoke", "ok", timeout=30)["n"] == 1
    assert vm.wait_exit(timeout=60) == 0
    vm.assert_never("Traceback", "Kernel panic")
    serial = (vm.workdir / "serial.log").read_text()
    assert "HARNESS-MARKER" in serial
    assert (vm.workdir / "command.txt").read_text().startswith("qemu-system-x86_64 -accel tcg")


def test_panic_ends_qemu(vm_kernel: Path, initramfs: Callable[..., Path],
                         boot_vm: Callable[..., VM]) -> None:
    """panic=-1 and -no-reboot: a dying init ends QEMU instead of hanging the test."""
    initrd = initramfs("echo about to die\nexit 7\n")
    vm = boot_vm(VMConfig(kernel=vm_kernel, initrd=initrd, timeout=BOOT_TIMEOUT * 2))
    vm.expect("about to die", timeout=BOOT_TIMEOUT)
    vm.expect(r"Kernel panic - not syncing: Attempted to kill init", timeout=60)
    assert vm.wait_exit(timeout=60) == 0
    with pytest.raises(AssertionError, match="Kernel panic"):
        vm.assert_never("Kernel panic")
    with pytest.raises(ExpectTimeout, match=r"QEMU exited \(status 0\)"):
        vm.expect("never printed", timeout=5)


def test_network_server_and_disk(vm_kernel: Path, initramfs: Callable[..., Path],
                                 boot_vm: Callable[..., VM], tmp_path: Path) -> None:
    """The guest reaches the host's server at 10.0.2.2 (slirp), with the configured MAC, and
    writes to the configured disk; the host checks the server's records and the disk after."""
    modules = find_modules(vm_kernel, busyboxrd.NET_BLK_MODULES)
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    action = {"action": "writeImage", "sourceImage": "images/payload.bin"}
    (root / "machines" / "52-54-00-12-34-56.json").write_text(json.dumps(action))
    payload = os.urandom(300_000)
    (root / "images" / "payload.bin").write_bytes(payload)
    disk = create_disk(tmp_path / "disk.raw", 4 << 20)

    with ObservedServer(root) as server:
        url = guest_url(server.url)
        initrd = initramfs(f"""
for m in {' '.join(p.name.split('.ko')[0] for p in modules)}; do
    insmod /lib/modules/$m.ko || echo "insmod $m failed"
done
sleep 1
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "SERIAL $(cat /sys/block/vda/serial)"
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
echo "ACTION $(wget -q -O - {url}/52:54:00:12:34:56.bty)"
wget -q -O /dev/vda {url}/images/payload.bin && echo "WROTE $(wc -c < /dev/vda)"
wget -q -O - --header 'Content-Type: application/json' \\
    --header 'Authorization: Bearer {server.machine_token(MAC)}' \\
    --post-data '{{"step": "smoke", "status": "ok"}}' {url}/events/52-54-00-12-34-56
sync
poweroff -f
""", modules)
        vm = boot_vm(VMConfig(kernel=vm_kernel, initrd=initrd, append="quiet", mac=MAC,
                              disks=[Disk(disk, serial="PYINIT-TEST-0")],
                              timeout=BOOT_TIMEOUT * 2))
        assert vm.expect(r"^MAC (\S+)", timeout=BOOT_TIMEOUT).group(1) == MAC
        assert vm.expect(r"^SERIAL (\S+)", timeout=30).group(1) == "PYINIT-TEST-0"
        assert json.loads(vm.expect(r"^ACTION (.*)", timeout=60).group(1)) == action
        vm.expect(r"^WROTE", timeout=60)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never("Traceback", "Kernel panic", "insmod .* failed")
        assert server.events(MAC) == [{"step": "smoke", "status": "ok"}]
        paths = [r["path"] for r in server.access_log]
        assert "/52:54:00:12:34:56.bty" in paths and "/images/payload.bin" in paths
    with open(disk, "rb") as f:
        written = f.read(len(payload))
    assert hashlib.sha256(written).hexdigest() == hashlib.sha256(payload).hexdigest()
