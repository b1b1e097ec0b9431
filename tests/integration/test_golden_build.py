"""`pyinit image` end to end on the host (no VM): reproducible, rootless, readable by GRUB and
by partition tools, convertible, and failing cleanly. The VM boots are in tests/vm."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinit import parttable
from pyinit.image.sums import find_checksum
from pyinit.units import MIB
from pyinit_build import preflight
from pyinit_build.errors import BuildError, PreflightError
from pyinit_build.golden import build
from tests import golden_rootfs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINIT = REPO / ".venv" / "bin" / "pyinit"
NOBODY = 65534


def fake_kernel(path: Path, release: bytes = b"6.1.0-fake-amd64") -> Path:
    """Enough of a bzImage for the builder: the setup header with a release string."""
    img = bytearray(64 * 1024)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x20E, 0x300)
    img[0x500:0x500 + len(release) + 6] = release + b" (x) "
    path.write_bytes(bytes(img))
    return path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work directory the unprivileged user can write as well."""
    d = Path(tempfile.mkdtemp(prefix="pyinit-golden-"))
    d.chmod(0o777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rootfs(shared_dir: Path) -> Path:
    root = golden_rootfs.busybox_dir(shared_dir / "rootfs")
    fake_kernel(root / "boot" / "vmlinuz-6.1.0-fake-amd64")
    (root / "boot" / "initrd.img-6.1.0-fake-amd64").write_bytes(b"initrd\n")
    return root


def _cli(args: list[str], *, user: int | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(PYINIT), "image", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "HOME": "/tmp"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)


def test_same_inputs_give_the_same_bytes_anywhere_as_root_and_as_nobody(shared_dir: Path) -> None:
    # A tarball: how an unprivileged user holds a root-owned filesystem (0700 /root and all).
    tarball = golden_rootfs.container_tarball(shared_dir / "rootfs.tar")
    kernel = fake_kernel(shared_dir / "vmlinuz")
    initrd = shared_dir / "initrd.img"
    initrd.write_bytes(b"initrd\n")
    for path in (tarball, kernel, initrd):
        path.chmod(0o644)
    moved = shared_dir / "elsewhere"  # the same inputs under other host paths
    moved.mkdir()
    for path in (tarball, kernel, initrd):
        shutil.copy2(path, moved / path.name)
    outs = []
    for n, (user, src) in enumerate(((None, shared_dir), (None, moved), (NOBODY, shared_dir))):
        out = shared_dir / f"run{n}" / "golden.img"
        out.parent.mkdir()
        out.parent.chmod(0o777)
        done = _cli([str(src / tarball.name), "--kernel", str(src / kernel.name),
                     "--initrd", str(src / initrd.name), "--hostname", "golden",
                     "--format", "qcow2", "--headroom", "16M", "-o", str(out)], user=user)
        assert done.returncode == 0, done.stderr + done.stdout
        outs.append(json.loads(out.with_name("golden.img.json").read_text()))
    assert outs[0] == outs[1] == outs[2]  # the manifest holds every output's sha256
    assert set(outs[0]["files"]) == {"raw", "qcow2", "zstd"}
    # rootless: the unprivileged user's image is byte-identical, ownership included
    assert (shared_dir / "run2" / "golden.img").stat().st_uid == NOBODY


def test_image_is_what_the_manifest_says(rootfs: Path, shared_dir: Path) -> None:
    out = shared_dir / "golden.img"
    m = build.build_image(build.ImageSpec(
        rootfs=rootfs, output=out, hostname="golden", firmware="both", table="gpt",
        formats=("qcow2", "vmdk", "vhdx", "vpc"), source_date_epoch=1700000000,
        headroom=16 * MIB))
    assert out.stat().st_size == m.virtual_size
    assert build.sha256_file(out) == m.sha256
    # our own parser and sfdisk agree with the manifest
    with out.open("rb") as f:
        table = parttable.parse(f, disk_size=m.virtual_size)
    assert table is not None and table.kind == "gpt" and not table.problems
    assert [(p.number, p.start, p.size) for p in table.partitions] == \
        [(p["number"], p["start"], p["size"]) for p in m.partitions]
    dump = json.loads(subprocess.run(["sfdisk", "--json", str(out)], check=True,
                                     capture_output=True, text=True).stdout)["partitiontable"]
    assert dump["id"] == m.disk_id
    assert [p["uuid"] for p in dump["partitions"]] == [p["partuuid"] for p in m.partitions]
    # GRUB's own filesystem code reads the root filesystem: grub.cfg, kernel, fstab by UUID
    root = f"(loop0,gpt{m.root['partition']})"  # grub-fstest names its disk loop0
    cfg = _grub_fstest(out, "cat", f"{root}/boot/grub/grub.cfg")
    assert f"search --no-floppy --fs-uuid --set=root {m.root['fs_uuid']}" in cfg
    assert "linux /boot/vmlinuz-6.1.0-fake-amd64 root=UUID=" in cfg
    assert "initrd /boot/initrd.img-6.1.0-fake-amd64" in cfg
    fstab = _grub_fstest(out, "cat", f"{root}/etc/fstab")
    assert f"UUID={m.root['fs_uuid']} / ext4" in fstab
    assert _grub_fstest(out, "cat", f"{root}/etc/hostname") == "golden\n"
    esp = _grub_fstest(out, "ls", "(loop0,gpt2)/EFI/BOOT/")
    assert "bootx64.efi" in esp.lower()  # FAT is case-insensitive; GRUB lists 8.3 names lower
    # blkid sees the filesystem UUIDs the manifest names (probing the file at an offset)
    for part in m.partitions:
        if "fs_uuid" in part:
            probe = subprocess.run(["blkid", "-p", "-O", str(part["start"]), "-s", "UUID",
                                    "-o", "value", str(out)], capture_output=True, text=True)
            assert probe.stdout.strip().lower() == part["fs_uuid"].lower()
    # every conversion is sound and converts back to the same raw bytes
    for fmt in ("qcow2", "vmdk", "vhdx", "vpc"):
        conv = shared_dir / m.files[fmt]["path"]
        if fmt != "vpc":  # qemu-img check does not support vpc
            subprocess.run(["qemu-img", "check", "-f", fmt, str(conv)], check=True,
                           capture_output=True)
        back = shared_dir / f"back-{fmt}.raw"
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(conv), str(back)],
                       check=True)
        assert build.sha256_file(back) == m.sha256, fmt
    # the compressed copy and the action snippet pyinit's writeImage takes
    zst = shared_dir / m.files["zstd"]["path"]
    assert m.action == {"image": zst.name, "checksum": f"sha256:{m.files['zstd']['sha256']}",
                        "size": m.virtual_size}
    sums = (shared_dir / "golden.img.SHA256SUMS").read_text()
    assert f"{m.files['zstd']['sha256']}  golden.img.zst" in sums
    # ... which the writer reads as an action's checksumURL
    assert find_checksum(sums, "golden.img.zst") == ("sha256", m.files["zstd"]["sha256"])


def _grub_fstest(image: Path, *args: str) -> str:
    done = subprocess.run(["grub-fstest", str(image), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _no_outputs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("golden"))


def test_rootfs_without_kernel_fails_cleanly(shared_dir: Path) -> None:
    bare = golden_rootfs.busybox_dir(shared_dir / "bare")
    out = shared_dir / "golden.img"
    with pytest.raises(BuildError, match=r"no kernel in the rootfs .* --kernel"):
        build.build_image(build.ImageSpec(rootfs=bare, output=out))
    assert _no_outputs(shared_dir) == []
    assert not [p for p in shared_dir.iterdir() if p.name.startswith(".golden")]  # work dir


def test_size_too_small_fails_cleanly(rootfs: Path, shared_dir: Path) -> None:
    out = shared_dir / "golden.img"
    with pytest.raises(BuildError, match="too small"):
        build.build_image(build.ImageSpec(rootfs=rootfs, output=out, size=8 * MIB))
    assert _no_outputs(shared_dir) == []


def test_unknown_filesystem_and_missing_tool(rootfs: Path, shared_dir: Path) -> None:
    done = _cli([str(rootfs), "-o", str(shared_dir / "golden.img"), "--fs", "btrfs"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "pyinit image: error: options: unknown filesystem 'btrfs' (supported: ext4, xfs)")
    # a host without xfsprogs: the preflight names the tool and the package before any work
    bindir = shared_dir / "bin"
    bindir.mkdir()
    for tool in ("sfdisk", "grub-mkimage", "mkfs.fat", "mcopy", "mmd", "faketime"):
        found = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
        assert found is not None
        (bindir / tool).symlink_to(found)
    spec = build.ImageSpec(rootfs=rootfs, output=shared_dir / "golden.img", filesystem="xfs")
    with pytest.raises(PreflightError, match=r"missing host tools: mkfs\.xfs \(apt install "
                                             r"xfsprogs\), xfs_db \(apt install xfsprogs\)$"):
        preflight.check(build.required_tools(spec), path=str(bindir))
    assert _no_outputs(shared_dir) == []


def test_kernel_deb_installs_kernel_and_modules_with_depmod(shared_dir: Path) -> None:
    debs = sorted((REPO / ".cache" / "kernel").glob("linux-image-*.deb"))
    if not debs:
        message = "no cached linux-image .deb: run `make initramfs` first"
        if "PYINIT_OUT" in os.environ:
            pytest.fail(message)
        pytest.skip(message)
    rootfs = golden_rootfs.busybox_dir(shared_dir / "rootfs")
    out = shared_dir / "golden.img"
    m = build.build_image(build.ImageSpec(rootfs=rootfs, output=out, kernel_deb=debs[-1],
                                          firmware="bios", compress="none",
                                          source_date_epoch=1700000000))
    release = m.kernel["release"]
    assert m.kernel["path"] == f"/boot/vmlinuz-{release}" and m.kernel["initrd"] is None
    root = f"(loop0,gpt{m.root['partition']})"
    assert f"linux /boot/vmlinuz-{release} root=UUID={m.root['fs_uuid']}" in \
        _grub_fstest(out, "cat", f"{root}/boot/grub/grub.cfg")
    dep = _grub_fstest(out, "cat", f"{root}/lib/modules/{release}/modules.dep")
    assert "kernel/fs/ext4/ext4.ko: " in dep  # depmod ran on the package's modules


def test_debian_kernel_links_name_the_kernel_in_grub_cfg(rootfs: Path, shared_dir: Path) -> None:
    """A Debian root whose linux-update-symlinks links point at its kernel: grub.cfg boots
    /vmlinuz (and /vmlinuz.old as the previous kernel), so a kernel upgrade inside the target
    is what GRUB boots next (issue #15). Without the tool the build warns and names the file."""
    (rootfs / "etc" / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    tool = rootfs / "usr" / "bin" / "linux-update-symlinks"
    tool.parent.mkdir(parents=True, exist_ok=True)
    tool.write_text("#!/usr/bin/perl\n")
    for link, target in (("vmlinuz", "vmlinuz-6.1.0-fake-amd64"),
                         ("initrd.img", "initrd.img-6.1.0-fake-amd64")):
        (rootfs / link).symlink_to(f"boot/{target}")
        (rootfs / f"{link}.old").symlink_to(f"boot/{target}")
    lines: list[str] = []
    out = shared_dir / "golden.img"
    m = build.build_image(build.ImageSpec(rootfs=rootfs, output=out, firmware="bios",
                                          compress="none", headroom=16 * MIB),
                          progress=lines.append)
    assert "image: kernel boot: stable-links (/vmlinuz -> /boot/vmlinuz-6.1.0-fake-amd64, kept " \
           "current by linux-update-symlinks; previous kernel through /vmlinuz.old)" in lines
    assert not [line for line in lines if "warning" in line]
    assert m.kernel["boot"] == "stable-links"
    assert m.kernel["path"] == "/boot/vmlinuz-6.1.0-fake-amd64"
    assert [(e["kernel"], e["initrd"]) for e in m.kernel["entries"]] == [
        ("/vmlinuz", "/initrd.img"), ("/vmlinuz.old", "/initrd.img.old")]
    root = f"(loop0,gpt{m.root['partition']})"
    cfg = _grub_fstest(out, "cat", f"{root}/boot/grub/grub.cfg")
    assert "linux /vmlinuz root=UUID=" in cfg and "initrd /initrd.img\n" in cfg
    assert "linux /vmlinuz.old root=UUID=" in cfg and "initrd /initrd.img.old\n" in cfg
    # GRUB follows the link on the root filesystem to the kernel itself
    assert _grub_fstest(out, "cat", f"{root}/vmlinuz").encode("latin-1")[0x202:0x206] == b"HdrS"

    tool.unlink()
    lines.clear()
    m = build.build_image(build.ImageSpec(rootfs=rootfs, output=out, firmware="bios",
                                          compress="none", headroom=16 * MIB),
                          progress=lines.append)
    assert m.kernel["boot"] == "versioned"
    assert "image: kernel boot: versioned (/boot/vmlinuz-6.1.0-fake-amd64)" in lines
    assert "image: warning: grub.cfg names /boot/vmlinuz-6.1.0-fake-amd64: kernel upgrades " \
           "inside the target will not be booted until its own tooling rewrites grub.cfg (no " \
           "/usr/bin/linux-update-symlinks in the root (package linux-base))" in lines
    cfg = _grub_fstest(out, "cat", f"{root}/boot/grub/grub.cfg")
    assert "linux /boot/vmlinuz-6.1.0-fake-amd64 root=UUID=" in cfg and "vmlinuz.old" not in cfg
