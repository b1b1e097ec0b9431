"""Growing real images on the host (no VM): `pyinit image` builds a golden image, it is truncated
to twice its size, and pyinit.grow rewrites its table on the FILE.

- the table: compared with what sfdisk itself makes of the same image (``--relocate
  gpt-bak-std`` and ``-N 3`` with ``,+``), ``sfdisk --verify``, our parser (also from the
  backup header alone), and a second run that changes no byte;
- the filesystem: the grown partition through a loop device (``--offset/--sizelimit``: this host's
  loop devices show no partitions), mounted by ``mounted_target`` with the real /dev, /proc, /sys,
  /run bound in, grown online by ``grow_fs`` (the busybox target has no resize2fs/xfs_growfs, so
  the host's copies run, as the initramfs's would), then checked offline;
- LVM: the real ``lvm`` lists the LVs, resizes the PV and extends the LV. This host has no
  device-mapper, so lvm runs through a wrapper adding ``--driverloaded n`` (metadata only).

Needs root (loop devices, mount), sfdisk, e2fsprogs, xfsprogs, lvm2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinit import grow, parttable
from pyinit.errors import ConfigError
from pyinit.target import mounted_target
from tests import golden_rootfs
from tests.hostreq import host_limit, need, need_root
from tests.integration.netns_dhcp import netns_add
from tests.integration.test_golden_build import fake_kernel
from tests.mountns import private_mounts

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINIT = REPO / ".venv" / "bin" / "pyinit"
VG = f"vggrow{os.getpid()}"


def sh(*argv: str, input: str | None = None) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Golden images: gpt/ext4, mbr/ext4, gpt/xfs, gpt/ext4 on LVM."""
    need("sfdisk", "mke2fs", "mkfs.xfs", "grub-mkimage")
    work = tmp_path_factory.mktemp("grow-images")
    root = golden_rootfs.busybox_dir(work / "rootfs")
    fake_kernel(root / "boot" / "vmlinuz-6.1.0-fake-amd64")
    (root / "boot" / "initrd.img-6.1.0-fake-amd64").write_bytes(b"initrd\n")
    variants = {"gpt": [], "mbr": ["--table", "mbr"], "xfs": ["--fs", "xfs"],
                "lvm": ["--lvm", f"{VG}/root"]}
    out = {}
    for name, args in variants.items():
        path = work / f"{name}.img"
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "HOME": "/tmp"}
        done = subprocess.run([str(PYINIT), "image", str(root), "-o", str(path),
                               "--compress", "none", *args],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        out[name] = path
    return out


def doubled(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    os.truncate(dest, 2 * src.stat().st_size)
    return dest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sfdisk_json(path: Path) -> dict[str, object]:
    table = json.loads(sh("sfdisk", "--json", str(path)))["partitiontable"]
    table.pop("device")
    for p in table["partitions"]:
        p["node"] = p["node"].removeprefix(str(path))
    return dict(table)


@pytest.mark.parametrize("kind", ["gpt", "mbr"])
def test_table_grows_as_sfdisk_would(images: dict[str, Path], tmp_path: Path, kind: str) -> None:
    ours = doubled(images[kind], tmp_path / "ours.img")
    theirs = doubled(images[kind], tmp_path / "theirs.img")
    size = ours.stat().st_size
    before = parttable.parse(ours.read_bytes()[:1 << 20])
    assert before is not None

    last = max(before.partitions, key=lambda p: p.end).number  # MBR has no BIOS boot partition
    grown = grow.grow_table(str(ours), "last")
    assert (grown.plan.number, grown.plan.changed, grown.reread) == \
        (last, True, "not a block device")

    if kind == "gpt":
        sh("sfdisk", "--no-reread", "--no-tell-kernel", "--relocate", "gpt-bak-std",
           str(theirs))
    sh("sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(last), str(theirs), input=",+\n")
    assert sfdisk_json(ours) == sfdisk_json(theirs)
    assert "No errors detected." in sh("sfdisk", "--verify", str(ours))

    after = parttable.parse(ours.read_bytes(), disk_size=size)
    assert after is not None and after.problems == ()
    assert after.by_number(last).end == grown.plan.new_end
    assert [p for p in after.partitions if p.number != last] == \
        [p for p in before.partitions if p.number != last]
    if kind == "gpt":
        assert grown.plan.new_end == size - 33 * 512
        raw = bytearray(ours.read_bytes())
        raw[512:1024] = bytes(512)  # the primary header gone: the backup alone must do
        alone = parttable.parse(bytes(raw), disk_size=size)
        assert alone is not None and alone.partitions == after.partitions
    else:
        assert grown.plan.new_end == size

    digest = sha(ours)
    again = grow.grow_table(str(ours), last)
    assert (again.plan.changed, again.reread) == (False, "unchanged")
    assert sha(ours) == digest


CAP_SYS_RESOURCE = 24


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


@contextlib.contextmanager
def partition_loop(image: Path, number: int) -> Iterator[str]:
    """A loop device over partition ``number`` of ``image`` (offset and size from our parser)."""
    table = parttable.parse(image.read_bytes()[:1 << 20])
    assert table is not None
    part = table.by_number(number)
    loop = sh("losetup", "--find", "--show", "--offset", str(part.start), "--sizelimit",
              str(part.size), str(image)).strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@pytest.mark.parametrize(("kind", "fstype", "tool"), [
    ("gpt", "ext4", "resize2fs"), ("mbr", "ext4", "resize2fs"), ("xfs", "xfs", "xfs_growfs")])
def test_filesystem_grows_online(images: dict[str, Path], tmp_path: Path, kind: str,
                                 fstype: str, tool: str) -> None:
    need("losetup", "resize2fs", "xfs_growfs", "e2fsck", "xfs_repair", "dumpe2fs", "xfs_db")
    need_root("loop devices and mounts")
    if fstype == "ext4" and not has_capability(CAP_SYS_RESOURCE):
        host_limit("ext4 online resize (EXT4_IOC_RESIZE_FS) needs CAP_SYS_RESOURCE, which this "
                   "container does not grant",
                   covered_by="tests/vm/test_after_write.py::test_gpt_ext4_grow_then_kexec_into_"
                              "the_target")
    image = doubled(images[kind], tmp_path / "disk.img")
    plan = grow.grow_table(str(image), "last").plan
    mp = tmp_path / "newroot"
    with partition_loop(image, plan.number) as loop:
        before = grow.fs_size(loop, fstype)  # as grow.grow reads it: unmounted
        # private: a namespace copied meanwhile (ip netns exec) would keep the fs mounted
        with private_mounts(), mounted_target(loop, mp, resolv_conf=None) as target:
            assert target.fstype == fstype
            assert os.path.ismount(mp / "proc") and (mp / "proc" / "self").exists()
            first = grow.grow_fs(loop, fstype, target.root, chroot=target.root)
            second = grow.grow_fs(loop, fstype, target.root, chroot=target.root)
        assert not os.path.ismount(mp) and not os.path.ismount(mp / "dev")
        after = grow.fs_size(loop, fstype)
        assert (first.tool, first.source) == (tool, "initramfs")
        assert before is not None and after is not None
        assert plan.old_size - (8 << 20) < before <= plan.old_size
        # the superblock's size, as the filesystem's own tool reports it, fills the partition
        if fstype == "ext4":
            sh("e2fsck", "-fn", loop)
            blocks, bsize = (int(sh("dumpe2fs", "-h", loop).split(f"{k}:")[1].split()[0])
                             for k in ("Block count", "Block size"))
            assert after == blocks * bsize
            assert plan.new_size - bsize < after <= plan.new_size
        else:
            sh("xfs_repair", "-n", loop)
            out = sh("xfs_db", "-r", "-c", "sb 0", "-c", "p dblocks blocksize", loop)
            fields = dict(line.split(" = ") for line in out.splitlines())
            assert after == int(fields["dblocks"]) * int(fields["blocksize"])
            assert plan.new_size - (16 << 20) < after <= plan.new_size
        # the free space is statvfs's, labelled apart, and less than the size
        assert first.free_after is not None and second.free_after is not None
        assert before < first.free_after < after


@pytest.fixture
def lvm_wrapper(tmp_path: Path) -> str:
    """``lvm`` with ``--driverloaded n`` after the command: this host has no device-mapper."""
    need("lvm")
    path = tmp_path / "lvm"
    path.write_text('#!/bin/sh\ncmd=$1; shift\nexec lvm "$cmd" --driverloaded n "$@"\n')
    path.chmod(0o755)
    return str(path)


def test_lvm_pv_and_lv_grow(images: dict[str, Path], tmp_path: Path, lvm_wrapper: str) -> None:
    need("losetup")
    need_root("loop devices")
    image = doubled(images["lvm"], tmp_path / "disk.img")
    plan = grow.grow_table(str(image), "last").plan
    with partition_loop(image, plan.number) as loop:
        with pytest.raises(ConfigError) as info:
            grow.grow_lvm(loop, f"{VG}/nope", lvm_binary=lvm_wrapper)
        assert f"lvmRootName: {VG}/nope: no such logical volume (found: " in str(info.value)
        assert f"{VG}/root" in str(info.value)

        first = grow.grow_lvm(loop, f"/dev/mapper/{VG}-root", lvm_binary=lvm_wrapper)
        second = grow.grow_lvm(loop, f"/dev/{VG}/root", lvm_binary=lvm_wrapper)
        assert (first.extended, second.extended) == (True, False)
        out = sh("lvm", "lvs", "--driverloaded", "n", "--noheadings", "--units", "b",
                 "--nosuffix", "-o", "lv_size,vg_free,vg_extent_size", VG)
        lv_size, vg_free, extent = (int(float(v)) for v in out.split())
        assert vg_free == 0
        assert plan.new_size - 2 * extent - (1 << 20) < lv_size <= plan.new_size


def test_leaving_the_target_leaves_the_hosts_mounts_alone(images: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """The target's /run is a recursive bind of the host's: unmounting it on the way out must
    not unmount what sits under the host's shared /run/netns (a network namespace's name), as
    an rbind without --make-rslave would."""
    need("losetup", "ip")
    need_root("loop devices, mounts and network namespaces")
    image = doubled(images["xfs"], tmp_path / "disk.img")
    plan = grow.grow_table(str(image), "last").plan
    ns = f"pyinit-{os.getpid()}-target"
    netns_add(ns)
    try:
        with partition_loop(image, plan.number) as loop, \
                mounted_target(loop, tmp_path / "newroot", resolv_conf=None) as target:
            assert os.path.ismount(target.root / "run")
        assert not os.path.ismount(tmp_path / "newroot" / "run")
        assert os.path.ismount(f"/run/netns/{ns}"), "the host's netns mount went with the target"
        assert "lo" in sh("ip", "-n", ns, "link", "show", "lo")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
