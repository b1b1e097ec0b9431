"""The filesystem writers with the real tools: ext4 (mke2fs + debugfs), XFS (mkfs.xfs + xfs_db)
and FAT (mkfs.fat + mtools).

Each image is built twice and must come out byte-identical; its metadata is read back with the
filesystem's own tools, and GRUB 2.06 (``grub-fstest``) must read ext4 and XFS. One ext4 build
runs as ``nobody`` and must equal the root build: nothing needs privileges.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pyinit import proc
from pyinit.units import MIB
from pyinit_build.demoimage import prng_bytes as prng
from pyinit_build.errors import BuildError
from pyinit_build.golden import fs
from pyinit_build.golden.tree import Entry, Tree
from tests.hostreq import need, need_root

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EPOCH = 1_700_000_000
OLD = EPOCH - 86_400  # most entries' mtime
UUID = "5e7b0c1d-2a3f-4b5c-8d6e-7f8091a2b3c4"
HOSTNAME = b"pyinit-golden\n"
ODD_NAME = '/etc/odd "name" with spaces'  # ext4 only: a protofile cannot hold it
LONG_LINK = "../usr/share/a-symlink-target-longer-than-sixty-bytes/so/it/needs/a/block"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def build_tree(workdir: Path, *, ext4_only: bool = True, payload: int = 24 * MIB) -> Tree:
    """The test root: every kind of entry, odd modes and owners, an xattr, a payload."""
    t = Tree(workdir)
    t.mkdir("/", mode=0o755, mtime=OLD)
    hostname = t.write_file("/etc/hostname", HOSTNAME, mtime=OLD)
    t.add(replace(hostname, xattrs=(("user.pyinit", b"hello"),)))
    t.write_file("/etc/future", b"from the future\n", mtime=EPOCH + 1000)
    t.write_file("/usr/bin/passwd", prng(70_000, b"passwd"), mode=0o4755, mtime=OLD)
    t.add(Entry("/usr/bin/passwd-link", "hardlink", target="/usr/bin/passwd"))
    t.write_file("/usr/share/payload.bin", prng(payload, b"payload"), mtime=OLD)
    t.symlink("/bin", "usr/bin", mtime=OLD)
    t.symlink("/etc/long-link", LONG_LINK, mtime=OLD)
    t.mkdir("/root", mode=0o700, mtime=OLD)
    t.write_file("/root/secret", b"secret\n", mode=0o600, mtime=OLD)
    t.mkdir("/home/user", mode=0o750, uid=1000, gid=1000, mtime=OLD)
    t.write_file("/home/user/file", b"user file\n", uid=1000, gid=1000, mtime=OLD)
    t.write_file("/srv/big-ids", b"x\n", uid=100_000, gid=100_001, mtime=OLD)
    t.mkdir("/tmp", mode=0o1777, mtime=OLD)
    t.mkdir("/var/mail", mode=0o2775, gid=8, mtime=OLD)
    t.mkdir("/var/mail/sub", mode=0o755, mtime=OLD)  # mkfs.xfs would add setgid here
    t.add(Entry("/dev/null", "chardev", 0o666, mtime=OLD, rdev=(1, 3)))
    t.add(Entry("/dev/sda", "blockdev", 0o660, gid=6, mtime=OLD, rdev=(8, 0)))
    t.add(Entry("/run/initctl", "fifo", 0o600, mtime=OLD))
    for i in range(300):  # a directory spanning several blocks
        t.write_file(f"/usr/lib/many/module-{i:04d}.so", prng(i * 13, b"m%d" % i), mtime=OLD)
    if ext4_only:
        t.write_file(ODD_NAME, b"odd\n", mtime=OLD)
    return t


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    logging.getLogger("test").info("%s: %.2f s", what, time.monotonic() - start)


def run(*argv: str) -> str:
    return proc.run(list(argv), env={"TZ": "UTC"}).stdout


# --- ext4 --------------------------------------------------------------------------------------

EXT4_SIZE = 64 * MIB


@dataclass(frozen=True)
class Built:
    tree: Tree
    first: Path
    second: Path


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need("mke2fs", "debugfs")
    base = tmp_path_factory.mktemp("ext4")
    t = build_tree(base / "tree")
    for name in ("first", "second"):
        time.sleep(1.1 if name == "second" else 0)  # a clock leaking in would show
        with timed(f"ext4 {name}"):
            fs.make_ext4(t, base / f"{name}.img", size=EXT4_SIZE, uuid=UUID, label="pyinit-root",
                         epoch=EPOCH, workdir=base / f"work-{name}")
    return Built(t, base / "first.img", base / "second.img")


def stat_ext4(img: Path, path: str) -> str:
    quoted = fs.debugfs_quote(path)
    return run("debugfs", "-R", f"stat {quoted}", str(img))


def test_ext4_is_reproducible(ext4: Built) -> None:
    assert sha256(ext4.first) == sha256(ext4.second)


def test_ext4_fsck_clean(ext4: Built) -> None:
    proc.run(["e2fsck", "-fn", str(ext4.first)])


def test_ext4_superblock(ext4: Built) -> None:
    header = run("dumpe2fs", "-h", str(ext4.first))
    assert re.search(r"Filesystem UUID:\s+" + UUID, header)
    assert re.search(r"Filesystem volume name:\s+pyinit-root", header)
    features = re.search(r"Filesystem features:\s+(.*)", header)
    assert features is not None
    assert "orphan_file" not in features[1] and "metadata_csum_seed" not in features[1]
    assert "has_journal" in features[1] and "metadata_csum" in features[1]


@pytest.mark.parametrize(("path", "mode", "owner", "kind"), [
    ("/", 0o755, (0, 0), "directory"),
    ("/usr/bin/passwd", 0o4755, (0, 0), "regular"),
    ("/root", 0o700, (0, 0), "directory"),
    ("/root/secret", 0o600, (0, 0), "regular"),
    ("/home/user", 0o750, (1000, 1000), "directory"),
    ("/home/user/file", 0o644, (1000, 1000), "regular"),
    ("/srv/big-ids", 0o644, (100_000, 100_001), "regular"),
    ("/tmp", 0o1777, (0, 0), "directory"),
    ("/var/mail", 0o2775, (0, 8), "directory"),
    ("/var/mail/sub", 0o755, (0, 0), "directory"),
    ("/dev/null", 0o666, (0, 0), "character special"),
    ("/dev/sda", 0o660, (0, 6), "block special"),
    ("/run/initctl", 0o600, (0, 0), "FIFO"),
    ("/bin", 0o777, (0, 0), "symlink"),
    ("/lost+found", 0o700, (0, 0), "directory"),
    (ODD_NAME, 0o644, (0, 0), "regular"),
])
def test_ext4_inode_metadata(ext4: Built, path: str, mode: int, owner: tuple[int, int],
                             kind: str) -> None:
    out = stat_ext4(ext4.first, path)
    assert re.search(rf"Type: {kind}\s+Mode:\s+0*{mode:o}\s", out), out
    assert re.search(rf"User:\s+{owner[0]}\s+Group:\s+{owner[1]}\s", out), out
    entry = ext4.tree.get(path)
    want = min(entry.mtime if entry else EPOCH, EPOCH)
    for field in ("ctime", "atime", "mtime", "crtime"):
        assert re.search(rf"\b{field}: 0x{want:08x}:00000000 ", out), (field, out)


def test_ext4_times_clamped_to_epoch(ext4: Built) -> None:
    assert f"mtime: 0x{EPOCH:08x}:00000000" in stat_ext4(ext4.first, "/etc/future")


def test_ext4_devices_links_and_symlinks(ext4: Built) -> None:
    assert "Device major/minor number: 01:03" in stat_ext4(ext4.first, "/dev/null")
    assert "Device major/minor number: 08:00" in stat_ext4(ext4.first, "/dev/sda")
    passwd = stat_ext4(ext4.first, "/usr/bin/passwd")
    link = stat_ext4(ext4.first, "/usr/bin/passwd-link")
    assert re.search(r"Links: 2\s", passwd)
    assert re.search(r"Inode: (\d+)", passwd)[1] == re.search(r"Inode: (\d+)", link)[1]  # type: ignore[index]
    assert 'Fast link dest: "usr/bin"' in stat_ext4(ext4.first, "/bin")
    long_link = stat_ext4(ext4.first, "/etc/long-link")
    assert "Fast link dest" not in long_link and f"Size: {len(LONG_LINK)}" in long_link


def test_ext4_xattr(ext4: Built) -> None:
    out = run("debugfs", "-R", "ea_get /etc/hostname user.pyinit", str(ext4.first))
    assert out.strip() == 'user.pyinit (5) = "hello"'


def test_ext4_content(ext4: Built, tmp_path: Path) -> None:
    run("debugfs", "-R", f"dump /usr/share/payload.bin {tmp_path / 'payload'}", str(ext4.first))
    assert (tmp_path / "payload").read_bytes() == prng(24 * MIB, b"payload")


def test_grub_reads_ext4(ext4: Built) -> None:
    need("grub-fstest")
    listing = run("grub-fstest", str(ext4.first), "ls", "/")
    assert {"etc/", "usr/", "tmp/", "lost+found/", "bin"} <= set(listing.split())
    assert run("grub-fstest", str(ext4.first), "cat", "/etc/hostname").encode() == HOSTNAME


def test_ext4_min_size_builds_and_half_fails(ext4: Built, tmp_path: Path) -> None:
    need_size = fs.ext4_min_size(ext4.tree)
    fs.make_ext4(ext4.tree, tmp_path / "min.img", size=need_size, uuid=UUID, label="r",
                 epoch=EPOCH, workdir=tmp_path / "w1")
    proc.run(["e2fsck", "-fn", str(tmp_path / "min.img")])
    half = need_size // 2 // 4096 * 4096
    with pytest.raises(BuildError, match=rf"ext4 of {half // MIB} MiB is too small for the "
                                         r"rootfs \(\d+ MiB of content\) — give a larger "
                                         "--size or omit it"):
        fs.make_ext4(ext4.tree, tmp_path / "half.img", size=half, uuid=UUID, label="r",
                     epoch=EPOCH, workdir=tmp_path / "w2")
    assert not (tmp_path / "half.img").exists()
    logging.getLogger("test").info("ext4_min_size: %d MiB (content %d MiB)", need_size // MIB,
                                   ext4.tree.content_size() // MIB)


ROOTLESS = """
import hashlib, sys
from pathlib import Path
from pyinit_build.golden import fs
from tests.integration.test_golden_fs import EPOCH, UUID, build_tree, sha256
work = Path(sys.argv[1])
t = build_tree(work / "tree")
fs.make_ext4(t, work / "user.img", size=int(sys.argv[2]), uuid=UUID, label="pyinit-root",
             epoch=EPOCH, workdir=work / "fs")
print(sha256(work / "user.img"))
"""


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    need_root("switching to nobody")
    need("setpriv")
    work = Path(tempfile.mkdtemp(prefix="pyinit-rootless-"))
    try:
        os.chown(work, 65534, 65534)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_ext4_as_nobody_equals_root_build(ext4: Built, nobody_dir: Path) -> None:
    done = proc.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, "-c", ROOTLESS, str(nobody_dir), str(EXT4_SIZE)],
                    cwd=REPO, env={"HOME": str(nobody_dir)})
    assert (nobody_dir / "user.img").stat().st_uid == 65534
    assert done.stdout.strip() == sha256(ext4.first)


# --- XFS ---------------------------------------------------------------------------------------

XFS_SIZE = 300 * MIB


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Built:
    need("mkfs.xfs", "xfs_db", "faketime")
    base = tmp_path_factory.mktemp("xfs")
    t = build_tree(base / "tree", ext4_only=False)
    for name in ("first", "second"):
        time.sleep(1.1 if name == "second" else 0)  # a clock leaking in would show
        with timed(f"xfs {name}"):
            fs.make_xfs(t, base / f"{name}.img", size=XFS_SIZE, uuid=UUID, label="pyinit-root",
                        epoch=EPOCH, workdir=base / f"work-{name}")
    return Built(t, base / "first.img", base / "second.img")


def xfs_print(img: Path, path: str, *fields: str) -> dict[str, str]:
    out = run("xfs_db", "-r", "-c", f"path {path}", "-c", f"print {' '.join(fields)}", str(img))
    return dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)


def test_xfs_is_reproducible(xfs: Built) -> None:
    assert sha256(xfs.first) == sha256(xfs.second)


def test_xfs_repair_finds_nothing(xfs: Built) -> None:
    proc.run(["xfs_repair", "-n", str(xfs.first)])


def test_xfs_uuid_label_and_features(xfs: Built) -> None:
    out = run("xfs_db", "-r", "-c", "uuid", "-c", "label", "-c", "version", str(xfs.first))
    assert f"UUID = {UUID}" in out
    assert 'label = "pyinit-root"' in out
    assert "BIGTIME" in out and "NREXT64" not in out


@pytest.mark.parametrize(("path", "mode", "owner"), [
    ("/", 0o40755, (0, 0)),
    ("/usr/bin/passwd", 0o104755, (0, 0)),
    ("/usr/bin/passwd-link", 0o104755, (0, 0)),
    ("/root/secret", 0o100600, (0, 0)),
    ("/home/user", 0o40750, (1000, 1000)),
    ("/home/user/file", 0o100644, (1000, 1000)),
    ("/srv/big-ids", 0o100644, (100_000, 100_001)),
    ("/tmp", 0o41777, (0, 0)),
    ("/var/mail", 0o42775, (0, 8)),
    ("/var/mail/sub", 0o40755, (0, 0)),
    ("/dev/null", 0o20666, (0, 0)),
    ("/dev/sda", 0o60660, (0, 6)),
    ("/run/initctl", 0o10600, (0, 0)),
    ("/bin", 0o120777, (0, 0)),
])
def test_xfs_inode_metadata(xfs: Built, path: str, mode: int, owner: tuple[int, int]) -> None:
    got = xfs_print(xfs.first, path, "core.mode", "core.uid", "core.gid", "core.mtime",
                    "core.atime", "core.ctime", "v3.crtime")
    assert int(got["core.mode"], 8) == mode
    assert (int(got["core.uid"]), int(got["core.gid"])) == owner
    entry = xfs.tree.get(path)
    want = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(min(entry.mtime, EPOCH)
                                                             if entry else EPOCH))
    for field in ("core.mtime", "core.atime", "core.ctime", "v3.crtime"):
        assert got[f"{field}.sec"] == want, field


def test_xfs_times_clamped_to_epoch(xfs: Built) -> None:
    got = xfs_print(xfs.first, "/etc/future", "core.mtime")
    assert got["core.mtime.sec"] == time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(EPOCH))


def test_grub_reads_xfs(xfs: Built, tmp_path: Path) -> None:
    need("grub-fstest")
    listing = run("grub-fstest", str(xfs.first), "ls", "/")
    assert {"etc/", "usr/", "tmp/", "bin"} <= set(listing.split())
    assert run("grub-fstest", str(xfs.first), "cat", "/etc/hostname").encode() == HOSTNAME
    # The payload spans allocation groups' worth of blocks; the hard link is a full copy.
    (tmp_path / "payload").write_bytes(prng(24 * MIB, b"payload"))
    (tmp_path / "passwd").write_bytes(prng(70_000, b"passwd"))
    for path, host in (("/usr/share/payload.bin", "payload"), ("/usr/bin/passwd", "passwd"),
                       ("/usr/bin/passwd-link", "passwd")):
        run("grub-fstest", str(xfs.first), "cmp", path, str(tmp_path / host))


def test_xfs_drops_xattrs_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    need("mkfs.xfs", "xfs_db", "faketime")
    t = build_tree(tmp_path / "tree", ext4_only=False, payload=MIB)
    with caplog.at_level(logging.INFO, logger="pyinit_build.golden.fs"):
        fs.make_xfs(t, tmp_path / "x.img", size=XFS_SIZE, uuid=UUID, label="r", epoch=EPOCH,
                    workdir=tmp_path / "w")
    assert "dropped 1 extended attributes" in caplog.text
    assert "1 hard links written as copies" in caplog.text


def test_xfs_refuses_whitespace_names(tmp_path: Path) -> None:
    t = build_tree(tmp_path / "tree", payload=MIB)
    with pytest.raises(BuildError, match="cannot express a name containing whitespace"):
        fs.make_xfs(t, tmp_path / "x.img", size=XFS_SIZE, uuid=UUID, label="r", epoch=EPOCH,
                    workdir=tmp_path / "w")


def test_xfs_too_small(tmp_path: Path) -> None:
    need("mkfs.xfs", "xfs_db", "faketime")
    t = Tree(tmp_path / "tree")
    sparse = tmp_path / "zeros"
    with sparse.open("wb") as f:
        f.truncate(280 * MIB)  # zeros still take blocks in XFS
    t.add(Entry("/zeros", "file", 0o644, size=280 * MIB, source=sparse))
    with pytest.raises(BuildError, match=r"XFS of 300 MiB is too small for the rootfs "
                                         r"\(281 MiB of content\)"):
        fs.make_xfs(t, tmp_path / "x.img", size=XFS_SIZE, uuid=UUID, label="r", epoch=EPOCH,
                    workdir=tmp_path / "w")
    assert not (tmp_path / "x.img").exists()


def test_xfs_file_larger_than_an_allocation_group_fails_instead_of_corrupting(
        tmp_path: Path) -> None:
    need("mkfs.xfs", "xfs_db", "faketime")
    t = Tree(tmp_path / "tree")
    sparse = tmp_path / "zeros"
    with sparse.open("wb") as f:
        f.truncate(100 * MIB)  # the 300 MiB filesystem has four 75 MiB allocation groups
    t.add(Entry("/big", "file", 0o644, size=100 * MIB, source=sparse))
    with pytest.raises(BuildError, match="/big did not get contiguous space"):
        fs.make_xfs(t, tmp_path / "x.img", size=XFS_SIZE, uuid=UUID, label="r", epoch=EPOCH,
                    workdir=tmp_path / "w")


def test_xfs_min_size_fits_a_file_larger_than_a_default_group(tmp_path: Path) -> None:
    need("mkfs.xfs", "xfs_db", "faketime", "grub-fstest")
    t = Tree(tmp_path / "tree")
    payload = tmp_path / "payload"
    payload.write_bytes(prng(100 * MIB, b"big"))
    t.add(Entry("/big", "file", 0o644, size=100 * MIB, source=payload))
    size = fs.xfs_min_size(t)
    with timed(f"xfs {size // MIB} MiB with a 100 MiB file"):
        fs.make_xfs(t, tmp_path / "x.img", size=size, uuid=UUID, label="r", epoch=EPOCH,
                    workdir=tmp_path / "w")
    run("grub-fstest", str(tmp_path / "x.img"), "cmp", "/big", str(payload))
    proc.run(["xfs_repair", "-n", str(tmp_path / "x.img")])


# --- FAT ---------------------------------------------------------------------------------------

EFI = prng(300_000, b"efi")
GRUB_CFG = b"search --fs-uuid --set=root 5e7b0c1d\nconfigfile /boot/grub/grub.cfg\n"


@pytest.fixture(scope="module", params=[32 * MIB, 64 * MIB], ids=["fat16", "fat32"])
def vfat(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[int, Path, Path]:
    need("mkfs.fat", "mmd", "mcopy")
    size: int = request.param
    base = tmp_path_factory.mktemp("vfat")
    (base / "BOOTX64.EFI").write_bytes(EFI)
    images = []
    for name in ("first", "second"):
        img = base / f"{name}.img"
        with timed(f"vfat {size // MIB} MiB {name}"):
            fs.make_vfat({"/EFI/BOOT/BOOTX64.EFI": base / "BOOTX64.EFI",
                          "/EFI/BOOT/grub.cfg": GRUB_CFG},
                         img, size=size, volume_id=0x5079696E, label="esp", epoch=EPOCH)
        images.append(img)
        time.sleep(1.1)  # a clock leaking into the image would show
    return size, images[0], images[1]


def test_vfat_is_reproducible(vfat: tuple[int, Path, Path]) -> None:
    _, first, second = vfat
    assert sha256(first) == sha256(second)


def test_vfat_type_label_and_serial(vfat: tuple[int, Path, Path]) -> None:
    size, img, _ = vfat
    boot = img.read_bytes()[:512]
    if size >= 64 * MIB:
        assert boot[82:90] == b"FAT32   " and boot[67:71] == bytes.fromhex("6E697950")
        assert boot[71:82] == b"ESP        "
    else:
        assert boot[54:62] == b"FAT16   " and boot[39:43] == bytes.fromhex("6E697950")
        assert boot[43:54] == b"ESP        "


def test_vfat_content(vfat: tuple[int, Path, Path], tmp_path: Path) -> None:
    _, img, _ = vfat
    listing = run("mdir", "-i", str(img), "::/EFI/BOOT")
    assert re.search(r"BOOTX64\s+EFI\s+300 ?000 2023-11-14\s+22:13", listing), listing
    proc.run(["mcopy", "-i", str(img), "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "out.efi")])
    assert (tmp_path / "out.efi").read_bytes() == EFI
    assert run("mtype", "-i", str(img), "::/EFI/BOOT/grub.cfg").encode() == GRUB_CFG
