"""RAID1 roots (issue #17): a real Debian golden image (mdadm, initramfs-tools) provisioned onto
two disks as an md RAID1 boots, boots degraded from either disk alone, and can be provisioned
again over its old array; under OVMF each disk gets its own boot entry.

One machine, one test, every boot under TCG costing ~40-60 s, so the phases share it:

1. a single-disk provisioning of the same image (the baseline for the RAID1 figure);
2. pyinit provisions both disks as a RAID1 (``raid.devices``) and kexecs the target, whose own
   initramfs assembles the array: the target reports /proc/mdstat (2 members), waits for the
   recovery to finish and powers off;
3. SeaBIOS boots the *second* disk alone (its boot code, BIOS boot partition and table were
   copied from the first): the array runs degraded, the target still comes up;
4. pyinit provisions both disks again: the wipe removes the old array (which the two disks now
   disagree about: the second one ran alone), the new array is the only one;

and the host reads each disk's md superblock afterwards (``mdadm --examine`` through a loop
device over the member partition): metadata 1.0, two devices, the new array's UUID only.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyinit import parttable
from pyinit_build.golden import build
from pyinit_qemu.vm import VM, Disk, VMConfig, create_disk
from tests import debian_root, golden_rootfs, hostreq
from tests.uefivars import boot_variables
from tests.vm.conftest import NEVER, Artifacts, Server, boot, result_line
from tests.vm.test_after_write import read_only_loop

pytestmark = pytest.mark.vm

MAC = "52:54:00:5e:17:01"
MARKER = "PYINIT-RAID"
# init= of every boot of the target: what the kernel assembled, then (recovery finished) power
# off. The Debian initramfs has already assembled the array and mounted it read-only.
STEP = f"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
root=$(awk '$2 == "/" {{print $1}}' /proc/mounts | tail -n 1)
md=$(awk '/^md/ {{print $1}}' /proc/mdstat | head -n 1)
echo "{MARKER} up root=$root md=$md members=$(ls /sys/block/$md/slaves | tr '\\n' ,)" \
    "state=$(cat /sys/block/$md/md/array_state) degraded=$(cat /sys/block/$md/md/degraded)" \
    "metadata=$(cat /sys/block/$md/md/metadata_version)" \
    "conf=$(grep -c "^ARRAY /dev/md/root metadata=1.0 name=any:root UUID=" /etc/mdadm/mdadm.conf)"
mdadm --wait /dev/$md > /dev/null 2>&1
echo "{MARKER} synced sync=$(cat /sys/block/$md/md/sync_action)" \
    "degraded=$(cat /sys/block/$md/md/degraded)"
sync
echo o > /proc/sysrq-trigger
while :; do :; done
"""
# As in test_kernel_upgrade: mkinitramfs takes the modules this machine needs (named: pyinit
# regenerates the initramfs in a chroot, where MODULES=dep would look at the installer's
# kernel) and compresses fast.
INITRAMFS_CONF = b"MODULES=list\nCOMPRESSLEVEL=1\n"
INITRAMFS_MODULES = b"virtio_pci\nvirtio_blk\next4\nmd_mod\nraid1\n"
DISK = 1536 << 20   # each member; the image is smaller (the mirror grows to the disks)
UUID_RE = re.compile(r"UUID=([0-9a-f:]+)")
ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def _member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.size, info.mtime = mode, len(data), golden_rootfs.EPOCH
    tar.addfile(info, io.BytesIO(data))


def _image(tmp_path: Path, debian: debian_root.DebianRoot) -> tuple[Path, build.Manifest]:
    tarball = tmp_path / "bookworm.tar"
    shutil.copyfile(debian.tarball, tarball)
    with tarfile.open(tarball, "a") as tar:
        _member(tar, "./usr/sbin/pyinit-raid-step", STEP.encode(), 0o755)
        _member(tar, "./etc/initramfs-tools/conf.d/pyinit-test.conf", INITRAMFS_CONF)
        _member(tar, "./etc/initramfs-tools/modules", INITRAMFS_MODULES)
    spec = build.ImageSpec(rootfs=tarball, output=tmp_path / "debian.img", table="gpt",
                           firmware="both", hostname="raid", compress="none",
                           headroom=192 * build.MIB,
                           cmdline="init=/usr/sbin/pyinit-raid-step panic=-1")
    manifest = build.build_image(spec, progress=lambda _: None)
    return spec.output, manifest


@contextmanager
def _partition_loop(disk: Path, number: int) -> Iterator[str]:
    """A read-only loop device over partition ``number`` of the disk file."""
    table = parttable.parse(disk.read_bytes()[:1 << 20], disk_size=disk.stat().st_size)
    assert table is not None
    with read_only_loop(disk, table.by_number(number)) as loop:
        yield loop


def _examine(disk: Path, number: int) -> dict[str, str]:
    with _partition_loop(disk, number) as loop:
        done = subprocess.run(["mdadm", "--examine", loop], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fields = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition(" : ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _firmware_boot(disk: Path, tmp_path: Path, name: str) -> list[str]:
    cfg = VMConfig(kernel=None, firmware="bios", disks=[Disk(disk)], nic_model=None,
                   timeout=400, workdir=tmp_path / f"vm-{name}")
    with VM(cfg) as vm:
        vm.expect(rf"{MARKER} synced .*", timeout=360)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
        return [line for line in vm.lines if MARKER in line]


def _provision(artifacts: Artifacts, tmp_path: Path, server: Server, name: str,
               disks: list[Path], action: dict[str, object],
               expect: str | None = None) -> tuple[dict[str, str], list[str], float]:
    server.machine(MAC, action)
    started = time.monotonic()
    with boot(artifacts, tmp_path / name, f"MYURL={server.guest_url}", mac=MAC, disks=disks,
              timeout=900) as vm:
        vm.expect(r"pyinit: RESULT ok .*", timeout=840)
        seconds = time.monotonic() - started
        if expect is not None:
            vm.expect(expect, timeout=360)
        vm.wait_exit(timeout=420 if expect is not None else 60)
        vm.assert_never(*NEVER, r"RESULT failed")
        return result_line(vm.lines), [line for line in vm.lines if MARKER in line], seconds


def _provisioned_seconds(events: list[dict[str, object]]) -> float:
    """Seconds from the disks step's start to the end of the grow step (the write and what the
    disks need after it: the raid step, or the single disk's grow)."""
    steps = ("disks", "provision", "raid", "grow")
    return sum(float(str(e["elapsed"])) for e in events
               if e.get("step") in steps and e.get("status") == "ok" and "elapsed" in e)


def test_raid1_root_boots_degraded_and_is_provisioned_again(
        artifacts: Artifacts, tmp_path: Path, server: Server,
        debian_bookworm: debian_root.DebianRoot) -> None:
    hostreq.need("losetup", "mdadm")
    hostreq.need_root("loop devices")
    phases: list[tuple[str, float]] = []
    started = time.monotonic()

    def phase(name: str) -> None:
        phases.append((name, time.monotonic() - started - sum(t for _, t in phases)))

    image, manifest = _image(tmp_path, debian_bookworm)
    server.image(image.name, image)
    root = int(manifest.root["partition"])
    phase("build")

    # 1. the baseline: the same image onto one disk, grown
    single = create_disk(tmp_path / "single.raw", DISK)
    res, _, _ = _provision(artifacts, tmp_path, server, "single", [single], {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "destinationDevice": "/dev/vda", "growPartition": root, "finish": "poweroff"})
    single_seconds = _provisioned_seconds(server.events(MAC))
    assert res["grow"].startswith(f"partition {root} "), res
    single.unlink()
    phase("single-disk provisioning")

    # 2. RAID1 over two disks, then the target kexecs and reports its array
    a = create_disk(tmp_path / "a.raw", DISK)
    b = create_disk(tmp_path / "b.raw", DISK + (64 << 20))  # a little larger: the mirror fits a
    before = len(server.events(MAC))
    res, marks, _ = _provision(artifacts, tmp_path, server, "raid", [a, b], {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "raid": {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}, "finish": "kexec"},
        expect=rf"{MARKER} synced .*")
    raid_seconds = _provisioned_seconds(server.events(MAC)[before:])
    [array_event] = [e for e in server.events(MAC)[before:]
                     if (e.get("step"), e.get("status")) == ("raid", "array")]
    first_uuid = UUID_RE.search(str(array_event["array"]))
    assert first_uuid is not None, array_event
    assert res["target_root"] == "/dev/md/root", res
    assert res["raid"].startswith("RAID1 /dev/md/root (/dev/md127, "), res
    assert res["raid"].endswith(f"over /dev/vda{root}, /dev/vdb{root}"), res
    assert res["kexec"].startswith("/boot/vmlinuz-"), res
    up = next(line for line in marks if f"{MARKER} up " in line)
    assert re.search(rf"root=/dev/md\S* md=md\d+ members=(vda{root},vdb{root}|"
                     rf"vdb{root},vda{root}),", up), up
    assert "metadata=1.0" in up and up.endswith(" conf=1"), up  # pyinit's ARRAY line
    assert any(f"{MARKER} synced sync=idle degraded=0" in line for line in marks), marks
    phase("RAID1 provisioning + kexec boot")

    # the disks on the host: both members of one array, metadata 1.0, the ESPs identical
    for disk in (a, b):
        sb = _examine(disk, root)
        assert sb["Version"] == "1.0" and sb["Raid Level"] == "raid1", sb
        assert sb["Raid Devices"] == "2" and sb["Name"] == "any:root", sb
        assert sb["Array UUID"] == first_uuid.group(1), (sb, first_uuid.group(1))
    ta = parttable.parse(a.read_bytes()[:1 << 20], disk_size=a.stat().st_size)
    tb = parttable.parse(b.read_bytes()[:1 << 20], disk_size=b.stat().st_size)
    assert ta is not None and tb is not None and not tb.problems, tb
    assert [(p.start, p.size) for p in ta.partitions] == [(p.start, p.size) for p in tb.partitions]
    assert ta.disk_id != tb.disk_id
    first_root = ta.by_number(root)
    with a.open("rb") as fa, b.open("rb") as fb:
        assert fa.read(first_root.start) [:440] == fb.read(first_root.start)[:440]
        fa.seek(1 << 20)
        fb.seek(1 << 20)
        assert fa.read(first_root.start - (1 << 20)) == fb.read(first_root.start - (1 << 20))
    phase("host check")

    # 3. the second disk alone, through SeaBIOS and its own copy of GRUB: degraded, still up
    marks = _firmware_boot(b, tmp_path, "degraded")
    up = next(line for line in marks if f"{MARKER} up " in line)
    assert re.search(rf"members=vda{root}, state=\S+ degraded=1", up), up
    phase("degraded boot from the second disk")

    # 4. provisioned again over the old array (the two disks now disagree about it)
    res, _, _ = _provision(artifacts, tmp_path, server, "again", [a, b], {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "raid": {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}, "finish": "poweroff"})
    [again] = [e for e in server.events(MAC) if (e.get("step"), e.get("status")) ==
               ("raid", "array")][-1:]
    second_uuid = UUID_RE.search(str(again["array"]))
    assert second_uuid is not None and second_uuid.group(1) != first_uuid.group(1)
    for disk in (a, b):
        sb = _examine(disk, root)
        assert sb["Array UUID"] == second_uuid.group(1), sb
    phase("re-provision over the old array")
    print(f"raid1 figures: provisioning (disks..grow steps) single disk {single_seconds:.1f} s, "
          f"RAID1 {raid_seconds:.1f} s (x{raid_seconds / single_seconds:.2f}); phases: "
          + ", ".join(f"{n} {t:.0f} s" for n, t in phases))


def test_raid1_root_under_uefi_boots_the_second_disk_through_its_own_entry(
        artifacts: Artifacts, tmp_path: Path, server: Server,
        debian_bookworm: debian_root.DebianRoot) -> None:
    """OVMF: pyinit makes one boot entry per member disk (each pointing at that disk's own ESP,
    whose partition GUID is new on the copy); with the first disk gone, the firmware starts the
    second disk's entry and the target comes up degraded."""
    image, _ = _image(tmp_path, debian_bookworm)
    server.image(image.name, image)
    server.machine(MAC, {"action": "writeImage", "sourceImage": f"images/{image.name}",
                         "raid": {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]},
                         "finish": "poweroff"})
    a, b = create_disk(tmp_path / "a.raw", DISK), create_disk(tmp_path / "b.raw", DISK)
    nvram = tmp_path / "OVMF_VARS.fd"  # the machine's NVRAM, shared by both boots
    cfg = VMConfig(kernel=artifacts.kernel, initrd=artifacts.initrd, firmware="uefi",
                   uefi_vars=nvram, mac=MAC, disks=[Disk(a), Disk(b)], timeout=900,
                   append=f"MYURL={server.guest_url} pyinit.on_failure=poweroff",
                   workdir=tmp_path / "vm-provision")
    label = f"pyinit {image.name}"
    with VM(cfg) as vm:
        made = [vm.expect_event(step="bootentry", status="created", timeout=840,
                                fail_on=r": FAILED: |WARNING: bootentry") for _ in range(2)]
        vm.expect(r"pyinit: RESULT ok .*", timeout=60)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER, r"WARNING: bootentry")
        lines = vm.lines
    res = result_line(lines)
    # the recovery finished before the power-off: the second disk holds the whole mirror
    done = next(i for i, s in enumerate(lines) if re.search(r"md127: recovery done", s))
    assert done < next(i for i, s in enumerate(lines) if s.startswith("pyinit: RESULT ok"))
    assert [m["label"] for m in made] == [f"{label} (vdb)", label], made
    assert [m["disk"] for m in made] == ["/dev/vdb", "/dev/vda"], made
    assert res["boot_entry"] == f"Boot{made[1]['number']},Boot{made[0]['number']}", res
    stored = boot_variables(nvram)
    assert stored.ours() == {made[1]["number"]: label, made[0]["number"]: f"{label} (vdb)"}
    assert stored.order[:2] == (made[1]["number"], made[0]["number"]), stored
    ta = parttable.parse(a.read_bytes()[:1 << 20], disk_size=DISK)
    tb = parttable.parse(b.read_bytes()[:1 << 20], disk_size=DISK)
    assert ta is not None and tb is not None
    esp_a = next(p for p in ta.partitions if p.type == ESP_TYPE)
    esp_b = next(p for p in tb.partitions if p.type == ESP_TYPE)
    assert esp_a.uuid != esp_b.uuid and esp_b.uuid in made[0]["path"].lower(), made[0]

    cfg = VMConfig(kernel=None, firmware="uefi", uefi_vars=nvram, disks=[Disk(b)],
                   nic_model=None, timeout=400, workdir=tmp_path / "vm-second")
    with VM(cfg) as vm:
        loading = vm.expect(r'BdsDxe: loading (Boot[0-9A-F]{4}) "([^"]*)"', timeout=180)
        up = vm.expect(rf"{MARKER} up .*", timeout=300).group(0)
        vm.expect(rf"{MARKER} synced .*", timeout=120)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert loading.group(2) == f"{label} (vdb)", loading.group(0)
    assert re.search(r"members=vda\d+, state=\S+ degraded=1", up), up
