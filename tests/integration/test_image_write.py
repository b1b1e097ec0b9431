"""Issue #3's write path on real loop devices, served by tests.faultserver on 127.0.0.1.

Images are made by the real tools (sfdisk, zstd, xz, bzip2, gzip): 16 MiB with a GPT, data and
long zero runs. Every loop device is created by a fixture and always detached. Each failure case
checks that the disk shows no partition table afterwards (first and last MiB zeroed, or untouched
when the failure came before any write) and that the error is one line naming the cause.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit import log
from pyinit.errors import ChecksumMismatch, DiskError, FetchError, ImageError, PyinitError
from pyinit.fetch import backoff
from pyinit.image.write import WriteRequest, WriteResult, write_image
from pyinit.units import MIB
from tests.faultserver import Faults, FaultServer
from tests.hostreq import host_limit, need

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 16 * MIB
DISK_SIZE = 24 * MIB
JUNK = 0xAA


def sh(*argv: str, input: bytes | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, input=input).stdout.decode()


def read_device(device: str, length: int) -> bytes:
    """The device's first ``length`` bytes from the disk (O_DIRECT: no page cache)."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, length)
        got = os.preadv(fd, [buf], 0)
        assert got == length
        return bytes(buf)
    finally:
        os.close(fd)


def partition_table(device: str) -> str:
    """blkid's verdict: "gpt", "dos" or "" (nothing a firmware would boot)."""
    r = subprocess.run(["blkid", "-p", "-o", "value", "-s", "PTTYPE", device],
                       capture_output=True, text=True)
    return r.stdout.strip()


@dataclass
class Loop:
    device: str
    backing: Path
    size: int

    def content(self) -> bytes:
        return read_device(self.device, self.size)

    def fill(self, data: bytes | int = JUNK) -> None:
        payload = bytes([data]) * self.size if isinstance(data, int) else \
            data + bytes([JUNK]) * (self.size - len(data))
        fd = os.open(self.device, os.O_WRONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, self.size)
            buf[:] = payload
            os.pwritev(fd, [buf], 0)
            os.fsync(fd)
        finally:
            os.close(fd)


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[Callable[..., Loop]]:
    need("losetup")
    loops: list[Loop] = []

    def make(size: int = DISK_SIZE, *, partscan: bool = False, under: Path | None = None) -> Loop:
        """``under``: the directory for the backing file (default: the test's tmp_path)."""
        backing = (under or tmp_path) / f"disk{len(loops)}.img"
        with backing.open("wb") as f:
            f.truncate(size)
        argv = ["losetup", "-f", "--show", *(["-P"] if partscan else []), str(backing)]
        loop = Loop(sh(*argv).strip(), backing, size)
        loops.append(loop)
        loop.fill()
        return loop

    yield make
    for loop in reversed(loops):
        subprocess.run(["umount", "-l", loop.device], capture_output=True)
        subprocess.run(["losetup", "-d", loop.device], capture_output=True)


def _raw_image(path: Path) -> bytes:
    """16 MiB: a GPT with two partitions (sfdisk), data and long zero runs inside them."""
    rng = random.Random(7)
    with path.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    sh("sfdisk", "-q", str(path), input=b"label: gpt\n,5MiB\n,\n")
    img = bytearray(path.read_bytes())
    pos = 2 * MIB
    while pos < IMAGE_SIZE - 2 * MIB:
        n = rng.choice([64 << 10, 256 << 10, MIB])
        if rng.random() < 0.35:
            img[pos:pos + n] = rng.randbytes(n // 2) * 2
        pos += n + rng.choice([0, MIB, 2 * MIB])
    path.write_bytes(img)
    return bytes(img)


@dataclass
class Images:
    srv: FaultServer
    root: Path
    raw: bytes

    def url(self, name: str) -> str:
        return self.srv.url(name)

    def sha256(self, name: str) -> str:
        return hashlib.sha256((self.root / name).read_bytes()).hexdigest()

    def size(self, name: str) -> int:
        return (self.root / name).stat().st_size


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    need("sfdisk", "zstd", "xz", "bzip2", "gzip", "blkid")
    root = tmp_path_factory.mktemp("www")
    raw = _raw_image(root / "disk.img")
    sh("zstd", "-q", "-3", str(root / "disk.img"), "-o", str(root / "disk.img.zst"))
    sh("xz", "-k", "-1", "-T2", "--block-size=4MiB", str(root / "disk.img"))
    sh("bzip2", "-k", "-1", str(root / "disk.img"))
    sh("gzip", "-k", "-1", str(root / "disk.img"))
    zst = (root / "disk.img.zst").read_bytes()
    (root / "truncated.img.zst").write_bytes(zst[:len(zst) * 2 // 3])
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("disk.img", "disk.img.zst")))
    with FaultServer(root) as srv:
        yield Images(srv, root, raw)


@pytest.fixture(autouse=True)
def _clean_faults(images: Images) -> None:
    images.srv.clear_faults()


def write(images: Images, name: str, device: str, **kw: Any) -> WriteResult:
    opts = {k: kw.pop(k) for k in ("read_timeout", "max_attempts") if k in kw}
    with requests.Session() as session:
        return write_image(WriteRequest(url=images.url(name), device=device, **kw),
                           session=session, delays=lambda: backoff(initial=0.02),
                           read_timeout=opts.get("read_timeout", 2.0),
                           max_attempts=opts.get("max_attempts", 8))


def assert_identical(loop: Loop, raw: bytes) -> None:
    content = loop.content()
    assert hashlib.sha256(content[:len(raw)]).hexdigest() == hashlib.sha256(raw).hexdigest()
    assert content[-MIB:] == bytes(MIB)  # the old last MiB (a stale GPT backup) was wiped
    assert partition_table(loop.device) == "gpt"


def assert_no_partition_table(loop: Loop, *, touched: bool | None = None) -> None:
    content = loop.content()
    untouched = content == bytes([JUNK]) * loop.size
    wiped = content[:MIB] == bytes(MIB) and content[-MIB:] == bytes(MIB)
    assert untouched or wiped
    if touched is not None:
        assert wiped if touched else untouched
    assert partition_table(loop.device) == ""


def assert_one_line(err: PyinitError, *needles: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# --- success paths -----------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [("disk.img", "raw"), ("disk.img.zst", "zstd"),
                                            ("disk.img.xz", "xz"), ("disk.img.bz2", "bzip2"),
                                            ("disk.img.gz", "gzip")])
def test_formats_round_trip(images: Images, make_loop: Callable[..., Loop], name: str,
                            kind: str) -> None:
    loop = make_loop()
    r = write(images, name, loop.device, checksum=("sha256", images.sha256(name)), verify=True)
    assert_identical(loop, images.raw)
    assert (r.format, r.bytes_written, r.checksum_verified) == (kind, IMAGE_SIZE, "sha256")
    assert r.verified_readback
    # The 0xAA junk under the image's zero runs was zeroed, not skipped.
    assert r.zero_bytes > 4 * MIB


def test_zero_runs_are_zeroed_on_the_device(images: Images,
                                            make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    r = write(images, "disk.img.zst", loop.device)
    content = loop.content()
    assert content[:IMAGE_SIZE] == images.raw
    zeros_in_image = sum(1 for i in range(0, IMAGE_SIZE, MIB)
                         if images.raw[i:i + MIB] == bytes(MIB))
    assert r.zero_bytes >= (zeros_in_image - 1) * MIB
    assert bytes([JUNK]) * 16 not in content[:IMAGE_SIZE]


def test_a_device_that_refuses_write_zeroes_is_not_reported_as_offloading(
        images: Images, tmp_path: Path, make_loop: Callable[..., Loop],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop device over a tmpfs file advertises Write Zeroes, and the first BLKZEROOUT fails
    inside (tmpfs has no ZERO_RANGE): the kernel drops the limit to 0 and writes zero pages.
    pyinit said "offloaded" from sysfs at open; it looks again after the write and says so."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    sh("mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE + MIB}", "tmpfs", str(mnt))
    try:
        loop = make_loop(under=mnt)  # filled with junk by writes, no zeroing yet
        queue = Path("/sys/block") / Path(loop.device).name / "queue"
        if int((queue / "write_zeroes_max_bytes").read_text()) == 0:
            pytest.fail(f"{loop.device} over tmpfs does not advertise Write Zeroes: this "
                        "kernel's loop driver is not the one the test was written for")
        console = io.StringIO()  # pyinit's console, whatever earlier tests set it to
        monkeypatch.setattr(log, "_console", console)
        log.configure()
        r = write(images, "disk.img.zst", loop.device)
        assert r.zero_bytes > 4 * MIB
        assert loop.content()[:IMAGE_SIZE] == images.raw
        assert int((queue / "write_zeroes_max_bytes").read_text()) == 0
        lines = console.getvalue()
        assert "offloaded to the device" in lines  # what sysfs said at open
        assert "refused them: the kernel wrote the zero runs itself" in lines
    finally:
        # lazily: make_loop detaches the loop device after the test
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_checksum_url(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    r = write(images, "disk.img.zst", loop.device, checksum_url=images.url("SHA256SUMS"))
    assert r.checksum_verified == "sha256"
    assert_identical(loop, images.raw)


def wait_for(path: str) -> bool:
    for _ in range(50):
        if os.path.exists(path):
            return True
        time.sleep(0.02)
    return False


def partitions_supported(loop: Loop) -> bool:
    """Does this kernel parse partition tables at all? (Minimal VM kernels may not.)"""
    sh("sfdisk", "-q", loop.device, input=b"label: gpt\n,\n")
    ok = wait_for(f"{loop.device}p1")
    loop.fill()
    sh("blockdev", "--rereadpt", loop.device)
    return ok


def test_partitions_are_reread(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop(partscan=True)
    if not partitions_supported(loop):
        host_limit("this kernel does not scan partitions on loop devices",
                   covered_by="tests/vm/test_after_write.py (partitions re-read, then grown)")
    write(images, "disk.img.zst", loop.device)
    assert wait_for(f"{loop.device}p2")  # BLKRRPART after the write


# Peak RSS of the CLI alone: measured by a small launcher process, because a child forked from
# pytest inherits pytest's resident size into its ru_maxrss before it execs.
_LAUNCHER = ("import resource, subprocess, sys\n"
             "rc = subprocess.call(sys.argv[1:])\n"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
             "sys.exit(rc)")


def run_measured(argv: list[str]) -> tuple[int, str, str, int]:
    """Run ``argv``; (returncode, stdout, stderr, peak RSS in KiB of that process alone)."""
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    err_lines = out.stderr.rstrip("\n").splitlines()
    return out.returncode, out.stdout, "\n".join(err_lines[:-1]), int(err_lines[-1])


def test_cli_json_line_and_bounded_rss(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    rc, out, err, peak_kib = run_measured([
        sys.executable, "-m", "pyinit.image", images.url("disk.img.zst"), loop.device,
        "--checksum", f"sha256:{images.sha256('disk.img.zst')}", "--size", str(IMAGE_SIZE),
        "--verify"])
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bytes_written"] == IMAGE_SIZE and result["verified_readback"]
    assert "PYINIT-EVENT" not in out  # logs and events go to stderr
    assert "PYINIT-EVENT" in err
    assert peak_kib < 100 * 1024
    assert_identical(loop, images.raw)


# --- resume and restart ------------------------------------------------------------------------

@pytest.mark.parametrize("rep", range(5))
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_dropped_connection_resumes(images: Images, make_loop: Callable[..., Loop],
                                    fraction: float, rep: int) -> None:
    name = "disk.img.zst"
    at = int(images.size(name) * fraction) + rep * 4099
    images.srv.set_faults(name, Faults(drop_at=[at], reset=rep % 2 == 1))
    loop = make_loop()
    r = write(images, name, loop.device, checksum=("sha256", images.sha256(name)))
    assert_identical(loop, images.raw)
    assert r.restarts == 0
    requests = images.srv.requests(name)  # this test's only (the log is cleared per test)
    if rep % 2 == 0:  # a FIN at the drop: exactly one resume, a Range request
        assert r.resumes == 1 and len(requests) == 2
    else:  # an RST may discard what the client had not read: the request can be sent again
        assert r.resumes <= 1 and len(requests) >= 2  # whole, or resumed with a Range
    # every Range request is a counted resume, every other one a whole GET
    assert sum(q.range is not None for q in requests) == r.resumes
    assert all(q.status == (206 if q.range else 200) for q in requests)


def test_five_drops_in_one_transfer(images: Images, make_loop: Callable[..., Loop]) -> None:
    name = "disk.img.xz"
    images.srv.set_faults(name, Faults(drop_after=images.size(name) // 8, drop_times=5))
    loop = make_loop()
    r = write(images, name, loop.device, checksum=("sha256", images.sha256(name)))
    assert_identical(loop, images.raw)
    assert r.resumes == 5
    assert [q.status for q in images.srv.requests(name)] == [200] + [206] * 5


def test_server_ignoring_range_restarts_cleanly(images: Images,
                                                make_loop: Callable[..., Loop]) -> None:
    name = "disk.img.gz"
    images.srv.set_faults(name, Faults(drop_at=[images.size(name) // 2], ignore_range=True))
    loop = make_loop()
    r = write(images, name, loop.device, checksum=("sha256", images.sha256(name)))
    assert_identical(loop, images.raw)
    assert (r.resumes, r.restarts) == (0, 1)
    assert r.bytes_fetched > images.size(name)


def test_stalled_connection_resumes(images: Images, make_loop: Callable[..., Loop]) -> None:
    name = "disk.img.bz2"
    images.srv.set_faults(name, Faults(stall_at=images.size(name) // 2, stall_seconds=3.0))
    loop = make_loop()
    r = write(images, name, loop.device, read_timeout=0.5)
    assert_identical(loop, images.raw)
    assert r.resumes == 1


# --- failures ----------------------------------------------------------------------------------

def test_checksum_mismatch_leaves_no_partition_table(images: Images,
                                                     make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    loop.fill(images.raw)  # the disk holds a bootable-looking image before
    assert partition_table(loop.device) == "gpt"
    with pytest.raises(ChecksumMismatch) as err:
        write(images, "disk.img.zst", loop.device, checksum=("sha256", "ab" * 32))
    assert_one_line(err.value, "checksum mismatch", f"expected sha256:{'ab' * 32}",
                    f"got sha256:{images.sha256('disk.img.zst')}")
    content = loop.content()
    assert content[:MIB] == bytes(MIB) and content[-MIB:] == bytes(MIB)
    assert partition_table(loop.device) == ""


def test_truncated_stream(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    with pytest.raises(ImageError) as err:
        write(images, "truncated.img.zst", loop.device)
    assert_one_line(err.value, "truncated zstd stream", "truncated.img.zst")
    assert_no_partition_table(loop, touched=True)


def test_server_keeps_cutting_the_body(images: Images, make_loop: Callable[..., Loop]) -> None:
    name = "disk.img"
    images.srv.set_faults(name, Faults(truncate_at=9 * MIB))
    loop = make_loop()
    with pytest.raises(FetchError) as err:
        write(images, name, loop.device, max_attempts=3)
    assert_one_line(err.value, "connection lost", "gave up after 3 attempts")
    assert_no_partition_table(loop, touched=True)


def test_image_larger_than_the_disk(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop(8 * MIB)
    with pytest.raises(DiskError) as err:  # raw: Content-Length says so before any write
        write(images, "disk.img", loop.device)
    assert_one_line(err.value, loop.device, "image is larger than the disk")
    assert_no_partition_table(loop, touched=False)
    with pytest.raises(DiskError) as err:  # gzip: found at the first byte past the end
        write(images, "disk.img.gz", loop.device)
    assert_one_line(err.value, loop.device, "image is larger than the disk")
    assert_no_partition_table(loop, touched=True)


def test_missing_destination(images: Images) -> None:
    with pytest.raises(DiskError) as err:
        write(images, "disk.img.zst", "/dev/pyinit-no-such-disk")
    assert_one_line(err.value, "/dev/pyinit-no-such-disk", "does not exist")


def test_mounted_destination(images: Images, make_loop: Callable[..., Loop],
                             tmp_path: Path) -> None:
    need("mke2fs", "mount", "umount")
    loop = make_loop(32 * MIB)
    sh("mke2fs", "-q", "-t", "ext4", "-F", loop.device)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", loop.device, str(mnt))
    try:
        with pytest.raises(DiskError) as err:
            write(images, "disk.img.zst", loop.device)
        assert_one_line(err.value, f"{loop.device} is mounted on {mnt}")
    finally:
        sh("umount", str(mnt))
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", loop.device).strip() == "ext4"


def test_mounted_partition(images: Images, make_loop: Callable[..., Loop],
                           tmp_path: Path) -> None:
    need("mke2fs", "mount", "umount", "sfdisk")
    loop = make_loop(32 * MIB, partscan=True)
    sh("sfdisk", "-q", loop.device, input=b"label: gpt\n,\n")
    part = f"{loop.device}p1"
    if not wait_for(part):
        host_limit("this kernel does not scan partitions on loop devices",
                   covered_by="tests/vm/test_disks.py (a disk in use is refused)")
    sh("mke2fs", "-q", "-t", "ext4", "-F", part)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", part, str(mnt))
    try:
        with pytest.raises(DiskError) as err:
            write(images, "disk.img.zst", loop.device)
        assert_one_line(err.value, f"{part} is mounted on {mnt}")
    finally:
        sh("umount", str(mnt))
    assert partition_table(loop.device) == "gpt"  # untouched


def test_device_held_by_another_opener(images: Images, make_loop: Callable[..., Loop]) -> None:
    loop = make_loop()
    holder = os.open(loop.device, os.O_RDONLY | os.O_EXCL)  # like a mount or an LVM PV
    try:
        with pytest.raises(DiskError) as err:
            write(images, "disk.img.zst", loop.device)
        assert_one_line(err.value, loop.device, "is in use")
    finally:
        os.close(holder)
    assert_no_partition_table(loop, touched=False)


def test_device_held_by_device_mapper(images: Images, make_loop: Callable[..., Loop]) -> None:
    need("dmsetup")
    if subprocess.run(["dmsetup", "version"], capture_output=True).returncode != 0:
        host_limit("no device-mapper in this kernel",
                   covered_by="tests/vm/test_after_write.py::test_gpt_lvm_ext4_grows_pv_lv_and_"
                              "filesystem")
    loop = make_loop()
    name = f"pyinit-test-{os.getpid()}"
    sh("dmsetup", "create", name, "--table", f"0 {DISK_SIZE // 512} linear {loop.device} 0")
    try:
        with pytest.raises(DiskError) as err:
            write(images, "disk.img.zst", loop.device)
        assert_one_line(err.value, "is held by dm-", name)
    finally:
        sh("dmsetup", "remove", name)
    assert_no_partition_table(loop, touched=False)
