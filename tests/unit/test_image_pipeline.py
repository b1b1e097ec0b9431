"""The whole write (pyinit.image.write, .pipeline, the CLI) against tests.faultserver (in-process,
127.0.0.1) and regular files: formats, checksums, resume, restart, fail-safe wiping, size checks
and the CLI."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import json
import lzma
import os
import random
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard

from pyinit import log
from pyinit.errors import ChecksumMismatch, DiskError, FetchError, ImageError
from pyinit.fetch import backoff
from pyinit.image.__main__ import main
from pyinit.image.progress import megabytes
from pyinit.image.write import WriteRequest, WriteResult, write_image
from pyinit.units import MIB
from tests.faultserver import Faults, FaultServer

DISK = 24 * MIB
JUNK = b"\xaa"


def make_image(size: int = 12 * MIB, seed: int = 1) -> bytes:
    """A disk-like image: a non-zero first MiB, data, long zero runs, short zero holes."""
    rng = random.Random(seed)
    out = bytearray(os.urandom(MIB))
    while len(out) < size:
        if rng.random() < 0.4:
            chunk = bytearray(os.urandom(rng.choice([4096, 65536, MIB // 2, MIB])))
            if rng.random() < 0.5:  # a short zero hole inside data
                chunk[100:100 + 8192] = bytes(8192)
            out += chunk
        else:
            out += bytes(rng.choice([MIB, 2 * MIB, 3 * MIB + 512]))
    return bytes(out[:size])


@dataclass
class Served:
    srv: FaultServer
    root: Path
    raw: bytes

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.srv.url(name)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("www")
    raw = make_image()
    with FaultServer(root) as srv:
        s = Served(srv, root, raw)
        s.put("a.img", raw)
        s.put("a.img.zst", zstandard.ZstdCompressor(write_checksum=True).compress(raw))
        s.put("a.img.gz", gzip.compress(raw, 1))
        s.put("a.img.xz", lzma.compress(raw, preset=0))
        s.put("a.img.bz2", bz2.compress(raw, 1))
        yield s


@pytest.fixture(autouse=True)
def _no_leftover_faults(served: Served) -> None:
    served.srv.clear_faults()


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(JUNK * DISK)  # old contents that must never survive a failure
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(url: str, disk: Path, **kw: Any) -> WriteResult:
    session = kw.pop("session", None) or requests.Session()
    opts: dict[str, Any] = {"read_timeout": 1.0, "delays": lambda: backoff(initial=0.01)}
    for key in ("read_timeout", "delays", "max_attempts", "progress_interval", "before_open"):
        if key in kw:
            opts[key] = kw.pop(key)
    return write_image(WriteRequest(url=url, device=str(disk), **kw), session=session,
                       allow_regular_file=True, **opts)


def assert_image(disk: Path, raw: bytes) -> None:
    content = disk.read_bytes()
    assert content[:len(raw)] == raw
    assert content[len(raw):-MIB] == JUNK * (DISK - len(raw) - MIB)  # past the image: untouched
    assert content[-MIB:] == bytes(MIB)  # the old GPT backup area was wiped first


def assert_wiped(disk: Path) -> None:
    content = disk.read_bytes()
    assert content[:MIB] == bytes(MIB), "first MiB (MBR/GPT) not wiped"
    assert content[-MIB:] == bytes(MIB), "last MiB (GPT backup) not wiped"


def assert_untouched(disk: Path) -> None:
    assert disk.read_bytes() == JUNK * DISK


@pytest.mark.parametrize(("name", "kind"), [("a.img", "raw"), ("a.img.zst", "zstd"),
                                            ("a.img.gz", "gzip"), ("a.img.xz", "xz"),
                                            ("a.img.bz2", "bzip2")])
def test_formats_round_trip_with_checksum_and_readback(served: Served, disk: Path, name: str,
                                                      kind: str) -> None:
    digest = sha256((served.root / name).read_bytes())
    r = write(served.srv.url(name), disk, checksum=("sha256", digest), verify=True)
    assert_image(disk, served.raw)
    assert (r.format, r.bytes_written, r.sha256) == (kind, len(served.raw), digest)
    assert r.checksum_verified == "sha256"
    # which bytes the sha256 covers: the file as downloaded, of its own size
    size = (served.root / name).stat().st_size
    assert r.file_size == r.bytes_fetched == size
    if kind == "raw":
        assert r.sha256_of() == "the 13 MB written (the raw file as downloaded)"
    else:
        assert r.sha256_of() == f"the downloaded file (compressed {kind}, {megabytes(size)})"
    assert r.verified_readback
    assert r.zero_bytes >= 4 * MIB
    assert (r.resumes, r.restarts) == (0, 0)
    assert r.bytes_fetched == (served.root / name).stat().st_size


def test_sha512_checksum(served: Served, disk: Path) -> None:
    digest = hashlib.sha512((served.root / "a.img.zst").read_bytes()).hexdigest()
    r = write(served.srv.url("a.img.zst"), disk, checksum=("sha512", digest))
    assert r.checksum_verified == "sha512"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("reset", [False, True])
def test_dropped_connection_resumes_with_if_range(served: Served, disk: Path, fraction: float,
                                                  reset: bool) -> None:
    name = "a.img.zst"
    size = (served.root / name).stat().st_size
    at = int(size * fraction)
    served.srv.set_faults(name, Faults(drop_at=[at], reset=reset))
    before = served.srv.count(name)
    r = write(served.srv.url(name), disk)
    assert_image(disk, served.raw)
    reqs = served.srv.requests(name)[before:]
    if reset and reqs[-1].status == 200:
        # A TCP RST may discard what the client had not read yet: nothing to resume from.
        assert (r.resumes, r.restarts, len(reqs)) == (0, 0, 2)
        return
    assert (r.resumes, r.restarts) == (1, 0)
    assert [q.status for q in reqs] == [200, 206]
    assert reqs[1].range is not None and reqs[1].if_range is not None
    resumed_at = int(reqs[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= at
    assert r.bytes_fetched == size  # nothing fetched twice


def test_five_drops(served: Served, disk: Path) -> None:
    name = "a.img.gz"
    size = (served.root / name).stat().st_size
    served.srv.set_faults(name, Faults(drop_after=size // 7, drop_times=5))
    r = write(served.srv.url(name), disk, checksum=("sha256", sha256(
        (served.root / name).read_bytes())))
    assert_image(disk, served.raw)
    assert r.resumes == 5 and r.checksum_verified == "sha256"


def test_server_ignoring_range_restarts_cleanly(served: Served, disk: Path) -> None:
    name = "a.img.xz"
    size = (served.root / name).stat().st_size
    served.srv.set_faults(name, Faults(drop_at=[size // 2], ignore_range=True))
    digest = sha256((served.root / name).read_bytes())
    r = write(served.srv.url(name), disk, checksum=("sha256", digest))
    assert_image(disk, served.raw)
    assert (r.resumes, r.restarts, r.sha256) == (0, 1, digest)
    assert r.bytes_fetched > size
    assert r.file_size == size  # what the sha256 covers: the file once, not what was fetched
    assert r.sha256_of() == f"the downloaded file (compressed xz, {megabytes(size)})"


def test_changed_etag_restarts(served: Served, disk: Path) -> None:
    name = "a.img.zst"
    size = (served.root / name).stat().st_size
    served.srv.set_faults(name, Faults(drop_at=[size // 3], change_etag=True))
    r = write(served.srv.url(name), disk)
    assert_image(disk, served.raw)
    assert (r.resumes, r.restarts) == (0, 1)
    assert [q.status for q in served.srv.requests(name)[-2:]] == [200, 200]


def test_image_replaced_mid_transfer_restarts_with_the_new_one(served: Served,
                                                               disk: Path) -> None:
    new_raw = make_image(seed=2)
    served.put("b.img.zst", zstandard.ZstdCompressor().compress(new_raw))
    size = (served.root / "a.img.zst").stat().st_size
    served.srv.set_faults("a.img.zst", Faults(drop_at=[size // 2], swap_to="b.img.zst"))
    r = write(served.srv.url("a.img.zst"), disk)
    assert (r.resumes, r.restarts) == (0, 1)
    assert_image(disk, new_raw)  # every block of the first pass was rewritten
    # With the old image's checksum, the new one is refused (and the disk wiped).
    served.srv.set_faults("a.img.zst", Faults(drop_at=[size // 2], swap_to="b.img.zst"))
    with pytest.raises(ChecksumMismatch):
        write(served.srv.url("a.img.zst"), disk, checksum=("sha256", sha256(
            (served.root / "a.img.zst").read_bytes())))
    assert_wiped(disk)


def test_disk_write_error_fails_and_wipes(served: Served, disk: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def flaky(fd: int, data: Any, offset: int) -> int:
        if MIB <= offset < len(served.raw):  # image data; the wipes (0, end) work
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr("pyinit.image.destination.os.pwrite", flaky)
    with pytest.raises(DiskError, match=r"write at byte \d+ failed: Input/output error"):
        write(served.srv.url("a.img"), disk)
    monkeypatch.undo()
    assert_wiped(disk)


def test_readback_mismatch_fails_and_wipes(served: Served, disk: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pyinit.image.write.readback_sha256", lambda *a, **k: "0" * 64)
    with pytest.raises(DiskError, match="read-back verification failed"):
        write(served.srv.url("a.img.gz"), disk, verify=True)
    assert_wiped(disk)


def test_no_validators_restart_unless_a_checksum_guards(served: Served, disk: Path) -> None:
    name = "a.img"
    served.srv.set_faults(name, Faults(drop_at=[5 * MIB], no_validators=True))
    r = write(served.srv.url(name), disk)
    assert (r.resumes, r.restarts) == (0, 1)
    assert served.srv.ranges(name)[-1] is None
    served.srv.set_faults(name, Faults(drop_at=[5 * MIB], no_validators=True))
    r = write(served.srv.url(name), disk, checksum=("sha256", sha256(served.raw)))
    assert (r.resumes, r.restarts) == (1, 0)
    assert served.srv.requests(name)[-1].if_range is None
    assert_image(disk, served.raw)


def test_stall_resumes_after_the_read_timeout(served: Served, disk: Path) -> None:
    name = "a.img.bz2"
    size = (served.root / name).stat().st_size
    served.srv.set_faults(name, Faults(stall_at=size // 2, stall_seconds=2.0))
    r = write(served.srv.url(name), disk, read_timeout=0.3)
    assert_image(disk, served.raw)
    assert r.resumes == 1


def test_transient_status_is_retried(served: Served, disk: Path) -> None:
    served.srv.set_faults("a.img.zst", Faults(status=503, status_times=2))
    r = write(served.srv.url("a.img.zst"), disk)
    assert_image(disk, served.raw)
    assert r.resumes == 0


def test_404_is_fatal_at_once_and_touches_nothing(served: Served, disk: Path) -> None:
    before = served.srv.count("missing.img")
    with pytest.raises(FetchError, match="HTTP 404") as err:
        write(served.srv.url("missing.img"), disk)
    assert not err.value.retryable
    assert served.srv.count("missing.img") == before + 1
    assert_untouched(disk)


def test_persistent_truncation_gives_up_and_wipes(served: Served, disk: Path) -> None:
    name = "a.img"
    served.srv.set_faults(name, Faults(truncate_at=6 * MIB))
    with pytest.raises(FetchError, match=r"gave up after 3 attempts"):
        write(served.srv.url(name), disk, max_attempts=3)
    assert_wiped(disk)


def test_checksum_mismatch_never_writes_the_head(served: Served, disk: Path) -> None:
    url = served.srv.url("a.img.zst")
    with pytest.raises(ChecksumMismatch) as err:
        write(url, disk, checksum=("sha256", "0" * 64))
    msg = str(err.value)
    assert msg.startswith(f"image {url}: checksum mismatch: expected sha256:{'0' * 64}, got "
                          f"sha256:")
    assert "\n" not in msg
    assert_wiped(disk)


def test_preserve_on_error_leaves_the_disk(served: Served, disk: Path) -> None:
    with pytest.raises(ChecksumMismatch):
        write(served.srv.url("a.img"), disk, checksum=("sha256", "0" * 64),
              preserve_on_error=True)
    content = disk.read_bytes()
    assert content[MIB:len(served.raw)] == served.raw[MIB:]  # the data stays for debugging
    assert content[:MIB] == bytes(MIB)  # but the head was never written


def test_checksum_url(served: Served, disk: Path) -> None:
    digest = sha256((served.root / "a.img.zst").read_bytes())
    sums = f"{'1' * 64}  a.img\n{digest} *a.img.zst\n"
    sums_url = served.put("SHA256SUMS", sums.encode())
    r = write(served.srv.url("a.img.zst"), disk, checksum_url=sums_url)
    assert r.checksum_verified == "sha256"
    assert_image(disk, served.raw)


def test_checksum_url_without_a_line_for_the_image(served: Served, disk: Path) -> None:
    sums_url = served.put("OTHER.SHA256SUMS", f"{'1' * 64}  b.img\n".encode())
    with pytest.raises(ImageError, match=r"OTHER.SHA256SUMS: no sha256 checksum line for "
                                         r"a.img.zst"):
        write(served.srv.url("a.img.zst"), disk, checksum_url=sums_url)
    assert_untouched(disk)


def test_checksum_url_404(served: Served, disk: Path) -> None:
    with pytest.raises(FetchError, match=r"SHA256SUMS\.missing: HTTP 404"):
        write(served.srv.url("a.img.zst"), disk,
              checksum_url=served.srv.url("SHA256SUMS.missing"))
    assert_untouched(disk)


def test_before_open_runs_once_the_checks_passed_never_for_a_refused_image(
        served: Served, disk: Path) -> None:
    """#17: a RAID1 root's members are wiped in ``before_open``: not when the checksum file
    refuses the image, and before the disk is opened when it passes."""
    calls: list[bytes] = []
    with pytest.raises(FetchError, match=r"HTTP 404"):
        write(served.srv.url("a.img.zst"), disk, checksum_url=served.srv.url("NO.SUMS"),
              before_open=lambda: calls.append(disk.read_bytes()[:MIB]))
    assert calls == []
    write(served.srv.url("a.img.zst"), disk,
          before_open=lambda: calls.append(disk.read_bytes()[:MIB]))
    assert calls == [JUNK * MIB]  # the disk as it was: not opened yet
    assert disk.read_bytes()[:MIB] == served.raw[:MIB]


def test_declared_size_larger_than_the_disk_is_refused_up_front(served: Served,
                                                                disk: Path) -> None:
    before = served.srv.count("a.img.zst")
    with pytest.raises(DiskError, match="larger than the disk"):
        write(served.srv.url("a.img.zst"), disk, size=DISK + 1)
    assert served.srv.count("a.img.zst") == before  # not even fetched
    assert_untouched(disk)


def test_declared_size_must_match(served: Served, disk: Path) -> None:
    with pytest.raises(ImageError, match="declared size"):
        write(served.srv.url("a.img.zst"), disk, size=len(served.raw) + 4096)
    assert_wiped(disk)


@pytest.mark.parametrize(("name", "make"), [
    ("big.img", lambda raw: raw * 3),  # raw: Content-Length
    ("big.img.zst", lambda raw: zstandard.ZstdCompressor().compress(raw * 3)),  # frame size
])
def test_image_known_larger_than_the_disk_is_refused_before_writing(
        served: Served, disk: Path, name: str, make: Any) -> None:
    url = served.put(name, make(served.raw))
    with pytest.raises(DiskError, match=f"disk {disk}: image is larger than the disk"):
        write(url, disk)
    assert_untouched(disk)


def test_image_larger_than_the_disk_found_mid_stream(served: Served, disk: Path) -> None:
    url = served.put("big.img.gz", gzip.compress(served.raw * 3, 1))
    with pytest.raises(DiskError, match="larger than the disk"):
        write(url, disk)
    assert_wiped(disk)


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("trunc.img.zst", lambda raw: zstandard.ZstdCompressor().compress(raw)[:-1000],
     "truncated zstd stream"),
    ("garbage.img.gz", lambda raw: gzip.compress(raw, 1) + b"junk", "trailing garbage"),
    ("empty.img", lambda raw: b"", "empty image"),
    ("disk.qcow2", lambda raw: b"QFI\xfb\x00\x00\x00\x03" + bytes(1000), "qcow2 is not a raw"),
])
def test_bad_images(served: Served, disk: Path, name: str, data: Any, needle: str) -> None:
    url = served.put(name, data(served.raw))
    with pytest.raises(ImageError, match=needle) as err:
        write(url, disk)
    assert str(err.value).startswith(f"image {url}: ")
    content = disk.read_bytes()
    if content[:MIB] != JUNK * MIB:
        assert_wiped(disk)


def test_small_image_inside_the_first_mib(served: Served, disk: Path) -> None:
    url = served.put("tiny.img", b"\x01" * 1000)
    r = write(url, disk)
    assert r.bytes_written == 1000
    content = disk.read_bytes()
    assert content[:1000] == b"\x01" * 1000 and content[-MIB:] == bytes(MIB)


def zstd_two_frames(raw: bytes) -> bytes:
    """Two frames: the first's header declares only its own 4 MiB."""
    c = zstandard.ZstdCompressor()
    return c.compress(raw[:4 * MIB]) + c.compress(raw[4 * MIB:])


@pytest.mark.parametrize(("name", "size", "source"), [
    ("a.img.xz", True, "the action's size"),
    ("a.img", False, "its Content-Length"),
    ("a.img.zst", False, "its zstd frame header"),
    ("a.img.gz", False, None),
    ("two-frames.img.zst", False, "its zstd frame header"),
])
def test_progress_follows_the_raw_bytes_written(served: Served, disk: Path,
                                                monkeypatch: pytest.MonkeyPatch, name: str,
                                                size: bool, source: str | None) -> None:
    """The percentage is of raw bytes written against the raw size where one is known, 100
    only on the last line; without a size (gzip, or a zstd stream longer than its first frame
    declared) the lines say "of unknown size" and give no percentage and no ETA."""
    if name == "two-frames.img.zst":
        served.put(name, zstd_two_frames(served.raw))
    console = io.StringIO()
    monkeypatch.setattr(log, "_console", console)
    log.configure()
    events: list[dict[str, Any]] = []
    log.add_sink(events.append)
    try:
        r = write(served.srv.url(name), disk, size=len(served.raw) if size else None,
                  progress_interval=0.0)
    finally:
        log.clear_sinks()
    assert r.bytes_written == len(served.raw)
    progress = [e for e in events if e.get("status") == "progress"]
    lines = [line.removeprefix("pyinit: ") for line in console.getvalue().splitlines()
             if line.startswith("pyinit: provision: ") and " MB written" in line]
    assert len(progress) == len(lines) >= 2
    last, before = progress[-1], progress[:-1]
    assert (last["bytes_written"], last["bytes_downloaded"]) == (
        len(served.raw), (served.root / name).stat().st_size)
    if source is None:
        assert all(e["percent"] is None and e["eta"] is None for e in progress)
        assert all(" MB written of unknown size (" in line and "%" not in line
                   and "ETA" not in line for line in lines)
    if name == "two-frames.img.zst":  # sized by its first frame, until it went past it
        assert all(e["percent"] is None or e["percent"] < 100 for e in progress)
        assert all(e["percent"] is None for e in progress if e["bytes_written"] > 4 * MIB)
    if source is None or name == "two-frames.img.zst":
        assert last["size"] is None and " MB written of unknown size (" in lines[-1]
    else:
        assert (last["size"], last["percent"], last["eta"]) == (len(served.raw), 100.0, None)
        assert lines[-1].startswith("provision: 13 of 13 MB written (100%), ")
        assert all(e["percent"] is not None and e["percent"] < 100 for e in before)
        assert all("(100%)" not in line and "ETA 0 s" not in line for line in lines[:-1])
    said = console.getvalue()
    if source is None:
        assert "provision: raw size unknown (gzip does not declare it; no size in the action)" \
            in said
    else:
        first = 4 * MIB if name == "two-frames.img.zst" else len(served.raw)
        assert f"provision: raw size {first} bytes ({source})" in said


def test_cli_prints_one_json_line(served: Served, disk: Path) -> None:
    digest = sha256((served.root / "a.img.zst").read_bytes())
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main([served.srv.url("a.img.zst"), str(disk), "--allow-file",
                   "--checksum", f"sha256:{digest}", "--size", str(len(served.raw))])
    assert rc == 0
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    assert result["checksum_verified"] == "sha256" and result["format"] == "zstd"
    assert set(result) == {f.name for f in WriteResult.__dataclass_fields__.values()}
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main([served.srv.url("a.img.zst"), str(disk)])
    assert rc == 1
    assert json.loads(out.getvalue()) == {"error": f"disk {disk}: is not a block device",
                                          "type": "DiskError"}


# --- the fault server itself -------------------------------------------------------------------

def test_faultserver_ranges_and_validators(served: Served) -> None:
    url = served.srv.url("a.img")
    full = requests.get(url)
    etag, lm = full.headers["ETag"], full.headers["Last-Modified"]
    r = requests.get(url, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert (r.status_code, r.content) == (206, served.raw[10:20])
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(served.raw)}"
    assert requests.get(url, headers={"Range": "bytes=10-", "If-Range": lm}).status_code == 206
    assert requests.get(url, headers={"Range": "bytes=10-", "If-Range": '"x"'}).status_code == 200
    assert requests.get(url, headers={"Range": f"bytes={len(served.raw)}-"}).status_code == 416
    assert requests.head(url).headers["Content-Length"] == str(len(served.raw))
    assert served.srv.ranges("a.img")[-3:] == ["bytes=10-", f"bytes={len(served.raw)}-", None]


def test_faultserver_drop_and_truncate(served: Served) -> None:
    name = "a.img"
    served.srv.set_faults(name, Faults(drop_after=1000, drop_times=1))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(served.srv.url(name)).content  # noqa: B018
    assert len(requests.get(served.srv.url(name)).content) == len(served.raw)  # once only
    served.srv.set_faults(name, status=429, status_times=1)
    assert requests.get(served.srv.url(name)).status_code == 429
    assert requests.get(served.srv.url(name)).status_code == 200
