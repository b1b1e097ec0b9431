"""After the write (issue #5): grow, configure, hand off — proven in QEMU, checked on the host.

Each test writes a golden image built by `pyinit image` (busybox target, the Debian kernel and
pyinit's initramfs as its initrd) onto a disk twice its size, with an action that grows the root
partition (and LV and filesystem) to the end of the disk and writes the machine's identity, then
hands off: ``reboot`` (QEMU exits; a second QEMU boots the disk through SeaBIOS and GRUB),
``kexec`` (the target's kernel and initrd from its grub.cfg, no firmware) or ``switch_root``
(the target's /sbin/init as PID 1). The target prints its marker; the host then reads the disk:
partition table, filesystem size, the network file.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinit import parttable, unique
from pyinit_build.demoimage import sha256_file
from pyinit_build.golden import build, busybox
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk
from tests.vm.conftest import NEVER, Artifacts, Server, boot

pytestmark = pytest.mark.vm

MIB = 1 << 20
CMDLINE = "entrypoint=/sbin/marker pyinit.on_failure=poweroff"
MAC = "52:54:00:5e:00:05"


def golden(artifacts: Artifacts, tmp_path: Path, *, sshd_config: str | None = None,
           cmdline: str = CMDLINE, extra: dict[str, tuple[int, str]] | None = None,
           **options: Any) -> tuple[Path, build.Manifest]:
    """The busybox golden image; ``cmdline``: its kernel's (pyinit's ginit mode runs the
    marker by default), ``extra``: files added to the root (path: mode, text)."""
    rootfs = busybox.busybox_rootfs(tmp_path / "rootfs")
    if sshd_config is not None:  # an SSH server's configuration, and no ssh-keygen
        (rootfs / "etc/ssh").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc/ssh/sshd_config").write_text(sshd_config)
    for rel, (mode, text) in (extra or {}).items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
        (rootfs / rel).chmod(mode)
    spec = build.ImageSpec(rootfs=rootfs, output=tmp_path / "golden.img", kernel=artifacts.kernel,
                           initrds=(artifacts.archive,), cmdline=cmdline, hostname="golden",
                           headroom=32 * MIB, source_date_epoch=busybox.EPOCH, **options)
    manifest = build.build_image(spec)
    return spec.output, manifest


def provision(artifacts: Artifacts, tmp_path: Path, server: Server, image: Path,
              manifest: build.Manifest, disk: Path, **fields: Any) -> VM:
    compressed = image.with_name(manifest.action["image"])
    server.image(compressed.name, compressed)
    server.machine(MAC, {"action": "writeImage", "sourceImage": f"images/{compressed.name}",
                         "destinationDevice": "/dev/vda",
                         "checksum": manifest.action["checksum"], **fields})
    return boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=MAC, disks=[disk],
                timeout=300)


def marker(vm: VM) -> str:
    line: str = vm.expect(busybox.MARKER + r".*", timeout=180).group(0)
    return line


def boot_disk(disk: Path, tmp_path: Path, firmware: str = "bios") -> str:
    cfg = VMConfig(kernel=None, firmware=firmware,  # type: ignore[arg-type]
                   disks=[Disk(disk)], nic_model=None, timeout=300,
                   workdir=tmp_path / f"vm-disk-{firmware}")
    with VM(cfg) as vm:
        vm.expect(r"GNU GRUB|Loading /boot/vmlinuz", timeout=120)
        line = marker(vm)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    return line


# --- host-side checks ----------------------------------------------------------------------

def table(disk: Path) -> parttable.PartitionTable:
    with disk.open("rb") as f:
        parsed = parttable.parse(f, disk_size=disk.stat().st_size)
    assert parsed is not None and not parsed.problems, parsed
    return parsed


def fs_size(disk: Path, part: parttable.Partition, fstype: str) -> int:
    """The filesystem's size as the host's own tools report it: dumpe2fs's block count x block
    size (at the partition's offset in the disk file), xfs_db's dblocks x blocksize (through a
    read-only loop device)."""
    if fstype == "ext4":
        out = subprocess.run(["dumpe2fs", "-h", f"{disk}?offset={part.start}"],
                             capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return int(fields["Block count"]) * int(fields["Block size"])
    with read_only_loop(disk, part) as loop:
        out = subprocess.run(["xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", loop],
                             capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(" = ") for line in out.splitlines())
    return int(fields["dblocks"]) * int(fields["blocksize"])


GROW_LINE = re.compile(r"^pyinit: grow: partition (\d+) .*, (\w+) (\d+) MiB -> (\d+) MiB "
                       r"\(\w+ from the (?:target|initramfs)\), (\d+) MiB free$")


def assert_grow_line(vm: VM, fstype: str, size: int, partition_size: int | None = None) -> None:
    """The grow line and event give the filesystem's size as the host's tools read it off the
    written disk (``size``, bytes): the event to the byte, the line to the MiB."""
    # the step's summary, not grow_table's "grow: partition 3 of /dev/vda: N -> M bytes"
    [line] = [s for s in vm.lines if re.match(r"pyinit: grow: partition \d+ (?!of )", s)]
    m = GROW_LINE.match(line)
    assert m is not None and m.group(2) == fstype, line
    assert abs(int(m.group(4)) * MIB - size) <= MIB // 2, (line, size)
    [ev] = [e for e in vm.events if (e["step"], e["status"]) == ("grow", "sizes")]
    assert ev["fs_size_after"] == size, ev
    assert ev["fs_size_before"] < size and 0 < ev["fs_free_after"] < size, ev
    assert abs(int(m.group(5)) * MIB - ev["fs_free_after"]) <= MIB // 2, (line, ev)
    if partition_size is not None:
        assert ev["partition_size_after"] == partition_size, ev


def grub_cat(disk: Path, path: str) -> str:
    done = subprocess.run(["grub-fstest", str(disk), "cat", path], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextlib.contextmanager
def read_only_loop(disk: Path, part: parttable.Partition) -> Iterator[str]:
    """A read-only loop device over ``part`` of ``disk`` (this host's loop devices show no
    partitions of their own)."""
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", "--offset",
                           str(part.start), "--sizelimit", str(part.size), str(disk)],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def lvs(disk: Path, part: parttable.Partition) -> dict[str, Any]:
    """The LVs of the PV in ``part``, as LVM reads them (a read-only loop device; no
    device-mapper needed)."""
    with read_only_loop(disk, part) as loop:
        out = subprocess.run(["lvs", "--devices", loop, "--reportformat", "json", "--units",
                              "b", "--nosuffix", "-o", "vg_name,lv_name,lv_size"],
                             capture_output=True, text=True, check=True).stdout
    lv: dict[str, Any] = json.loads(out)["report"][0]["lv"][0]
    return lv


def assert_grown(disk: Path, manifest: build.Manifest) -> parttable.Partition:
    parsed = table(disk)
    root = parsed.by_number(manifest.root["partition"])
    size = disk.stat().st_size
    end = size - MIB if parsed.kind == "gpt" else size
    assert end - root.end < MIB, (root, size)  # the root partition reaches the end of the disk
    before = next(p for p in manifest.partitions if p["role"] == "root")
    assert root.start == before["start"] and root.size > before["size"] * 1.8
    return root


def network_file(disk: Path, root: str) -> str:
    return grub_cat(disk, f"{root}/etc/network/interfaces.d/pyinit")


IDENTITY = {"hostname": "grown", "address": "10.0.2.15/24", "gateway": "10.0.2.2",
            "nameserver": "10.0.2.3", "sshKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA test"]}


def test_mbr_ext4_grow_configure_reboot_into_the_disk(artifacts: Artifacts, tmp_path: Path,
                                                      server: Server) -> None:
    image, manifest = golden(artifacts, tmp_path, table="mbr", firmware="bios",
                             sshd_config="HostKey /etc/ssh/ssh_host_ed25519_key\n")
    disk = create_disk(tmp_path / "disk.raw", 2 * manifest.virtual_size)
    with provision(artifacts, tmp_path, server, image, manifest, disk, growPartition="last",
                   finish="reboot", **IDENTITY) as vm:
        # The target has an SSH server's configuration but no ssh-keygen: the initramfs's
        # makes the one key its sshd_config names (docs/identity.md).
        printed = vm.expect(r"configure: SSH host key ED25519 (SHA256:\S+) ", timeout=300)
        vm.expect(r"configure: per-machine identity: 1 SSH host key from the initramfs's "
                  r"ssh-keygen", timeout=60)
        result = vm.expect_event(step="result", timeout=300)
        vm.wait_exit(timeout=60)  # the guest's reboot ends QEMU (-no-reboot)
        vm.assert_never(*NEVER)
    assert result["status"] == "ok" and result["handoff"] == "reboot", result
    assert sum("reboot now" in s for s in vm.lines) == 1
    root = assert_grown(disk, manifest)
    size = fs_size(disk, root, "ext4")
    assert abs(size - root.size) < 4 * MIB
    assert_grow_line(vm, "ext4", size, root.size)
    assert "10.0.2.15" in network_file(disk, "(loop0,msdos1)")
    assert grub_cat(disk, "(loop0,msdos1)/etc/hostname") == "grown\n"
    pub = grub_cat(disk, "(loop0,msdos1)/etc/ssh/ssh_host_ed25519_key.pub")
    assert unique.fingerprint(pub) == printed.group(1) and pub.split()[-1] == "root@grown"
    line = boot_disk(disk, tmp_path, "bios")
    assert "hostname=grown" in line.split() and "net=pyinit" in line.split(), line


def test_gpt_ext4_grow_then_kexec_into_the_target(artifacts: Artifacts, tmp_path: Path,
                                                  server: Server) -> None:
    image, manifest = golden(artifacts, tmp_path, table="gpt", firmware="both")
    disk = create_disk(tmp_path / "disk.raw", 2 * manifest.virtual_size)
    with provision(artifacts, tmp_path, server, image, manifest, disk, growPartition="last",
                   finish="kexec", **IDENTITY) as vm:
        result = vm.expect_event(step="result", timeout=300)
        vm.expect(r"kexec", timeout=60)
        line = marker(vm)  # the target's kernel + initrd, no firmware in between
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert result["status"] == "ok" and result["handoff"] == "kexec", result
    assert "hostname=grown" in line.split(), line
    # #15: the hand-off said once (it was seen twice), counted over the whole console
    assert sum("kexec now" in s for s in vm.lines) == 1, [s for s in vm.lines if "now" in s]
    root = assert_grown(disk, manifest)
    size = fs_size(disk, root, "ext4")
    assert abs(size - root.size) < 4 * MIB
    assert_grow_line(vm, "ext4", size, root.size)
    assert "10.0.2.15" in network_file(disk, f"(loop0,gpt{root.number})")


def test_gpt_xfs_grow_then_switch_root(artifacts: Artifacts, tmp_path: Path,
                                       server: Server) -> None:
    image, manifest = golden(artifacts, tmp_path, table="gpt", firmware="bios",
                             filesystem="xfs")
    disk = create_disk(tmp_path / "disk.raw", 2 * manifest.virtual_size)
    with provision(artifacts, tmp_path, server, image, manifest, disk, growPartition="last",
                   finish="switch_root", **IDENTITY) as vm:
        result = vm.expect_event(step="result", timeout=300)
        vm.expect(r"PYINIT-TARGET-INIT pid=1$", timeout=120)  # the target's init is PID 1
        line = marker(vm)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert result["status"] == "ok" and result["handoff"] == "switch_root", result
    assert "hostname=grown" in line.split() and "rootfs=xfs" in line.split(), line
    assert sum("switch_root now" in s for s in vm.lines) == 1
    root = assert_grown(disk, manifest)
    size = fs_size(disk, root, "xfs")
    assert abs(size - root.size) < 8 * MIB
    assert_grow_line(vm, "xfs", size, root.size)
    assert "10.0.2.15" in network_file(disk, f"(loop0,gpt{root.number})")


def test_gpt_lvm_ext4_grows_pv_lv_and_filesystem(artifacts: Artifacts, tmp_path: Path,
                                                 server: Server) -> None:
    image, manifest = golden(artifacts, tmp_path, table="gpt", firmware="bios", lvm="vg0/root")
    disk = create_disk(tmp_path / "disk.raw", 2 * manifest.virtual_size)
    with provision(artifacts, tmp_path, server, image, manifest, disk, growPartition="last",
                   lvmRootName="vg0/root", finish="kexec", **IDENTITY) as vm:
        result = vm.expect_event(step="result", timeout=300)
        line = marker(vm)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert result["status"] == "ok", result
    assert "hostname=grown" in line.split(), line
    root = assert_grown(disk, manifest)
    lv = lvs(disk, root)
    assert (lv["vg_name"], lv["lv_name"]) == ("vg0", "root")
    assert int(lv["lv_size"]) > root.size - 8 * MIB
    assert_grow_line(vm, "ext4", int(lv["lv_size"]))  # the filesystem fills its LV
    assert "10.0.2.15" in network_file(disk, "(lvm/vg0-root)")


@pytest.mark.parametrize(("fields", "error"), [
    ({"growPartition": 7}, r"growPartition: 7: no such partition \(the image has 1, 2, 3\)"),
    ({"growPartition": "last", "lvmRootName": "vg0/nope"}, r"vg0/nope: no such logical volume"),
    # partition 2 is the ESP: a filesystem, but no kernel on it
    ({"finish": "kexec", "rootPartition": 2}, r"kexec: no kernel found"),
])
def test_failures_after_the_write_leave_the_good_disk(artifacts: Artifacts, tmp_path: Path,
                                                      server: Server, fields: dict[str, Any],
                                                      error: str) -> None:
    """BOOTy wipes a freshly written disk when a post-step fails; pyinit keeps it."""
    image, manifest = golden(artifacts, tmp_path, table="gpt", firmware="both",
                             lvm="vg0/root" if "lvmRootName" in fields else None)
    disk = create_disk(tmp_path / "disk.raw", 2 * manifest.virtual_size)
    with provision(artifacts, tmp_path, server, image, manifest, disk, **fields) as vm:
        result = vm.expect_event(step="result", timeout=300)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert result["status"] == "failed", result
    assert re.search(error, result["error"]), result["error"]
    if "growPartition" in fields and fields["growPartition"] == 7:
        # nothing was changed: the disk holds exactly the image
        assert sha256_file(disk, manifest.virtual_size) == manifest.sha256
    assert table(disk).by_number(manifest.root["partition"]) is not None
