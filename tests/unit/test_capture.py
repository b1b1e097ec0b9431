"""pyinit.capture: the pure parts (names, multipart body, read range, read plan), the source
checks against a fake /proc and /sys, and whole captures of regular files to the real
provisioning server (and to small stub servers) on 127.0.0.1. No commands are run.
"""

from __future__ import annotations

import email.message
import email.parser
import errno
import gzip
import hashlib
import itertools
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard

from pyinit import capture, log
from pyinit.capture import (
    CaptureResult,
    ReadRange,
    Segment,
    capture_image,
    data_extents,
    decide_range,
    multipart_body,
    plan_reads,
    upload_filename,
)
from pyinit.disks.usage import device_usage
from pyinit.errors import ConfigError, DiskError, FetchError, ImageError
from pyinit.parttable import parse
from tests.serverkit import ObservedServer
from tests.unit.test_parttable import GptPart, gpt_disk, mbr_sector

MAC = "52:54:00:AB:cd:01"
MIB = 1 << 20


# -- names and the multipart body -------------------------------------------------------------


@pytest.mark.parametrize(("compression", "name"), [
    ("none", "52-54-00-ab-cd-01.img"), ("gzip", "52-54-00-ab-cd-01.zmg"),
    ("zstd", "52-54-00-ab-cd-01.img.zst"),
])
def test_upload_filename(compression: capture.Compression, name: str) -> None:
    assert upload_filename(MAC, compression) == name


@pytest.mark.parametrize("mac", ["", "52:54:00:ab:cd", "../../etc/passwd", "52:54:00:ab:cd:0g",
                                 "52-54-00-ab-cd-01/x"])
def test_bad_mac(mac: str) -> None:
    with pytest.raises(ConfigError, match="mac"):
        upload_filename(mac, "none")


def test_multipart_body_parses_back() -> None:
    chunks = [b"first", b"", b"--not-the-boundary\r\n", bytes(range(256)) * 100]
    body = b"".join(multipart_body(iter(chunks), boundary="b0undary", filename='a"b.img'))
    # the standard library's (buffering) parser reads it back
    msg = email.parser.BytesParser().parsebytes(
        b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n" + body)
    assert msg.is_multipart()
    payload = msg.get_payload()
    assert isinstance(payload, list)
    (part,) = payload
    assert isinstance(part, email.message.Message)
    assert part.get_param("name", header="content-disposition") == "BootyImage"
    assert part.get_filename() == 'a"b.img'
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_payload(decode=True) == b"".join(chunks)


# -- what to read -----------------------------------------------------------------------------


def test_decide_range() -> None:
    gpt = parse(bytes(gpt_disk(8192, [GptPart(2048, 4095), GptPart(4096, 6143)])))
    empty = parse(bytes(mbr_sector([])))
    assert decide_range(100 * MIB, None) == ReadRange(100 * MIB, "whole device: no partition "
                                                                 "table")
    assert decide_range(100 * MIB, gpt) == ReadRange(6144 * 512, "end of the last partition "
                                                                 "(gpt, 2 partitions)")
    assert decide_range(100 * MIB, empty).length == 100 * MIB
    assert "no partitions" in decide_range(100 * MIB, empty).reason
    too_big = decide_range(MIB, gpt)
    assert too_big.length == MIB and "past the device's end" in too_big.reason
    broken = decide_range(100 * MIB, None, "partition table: bad CRC")
    assert broken == ReadRange(100 * MIB, "whole device: partition table: bad CRC")


def segs(*items: tuple[int, int, bool]) -> list[Segment]:
    return [Segment(*i) for i in items]


@pytest.mark.parametrize(("length", "extents", "expected"), [
    (0, [], []),
    (100, [(0, 100)], segs((0, 40, True), (40, 40, True), (80, 20, True))),
    (100, [], segs((0, 40, False), (40, 40, False), (80, 20, False))),
    # holes of 10 or more are skipped, shorter ones are read
    (100, [(20, 30), (60, 65)], segs((0, 20, False), (20, 10, True), (30, 30, False),
                                     (60, 5, True), (65, 35, False))),
    (100, [(5, 30), (35, 50), (95, 99)], segs((0, 40, True), (40, 10, True), (50, 40, False),
                                              (90, 5, False), (95, 5, True))),
    # extents past the end are clipped, overlapping ones merged
    (50, [(10, 30), (20, 40), (45, 80)], segs((0, 10, False), (10, 40, True))),
    (50, [(60, 80)], segs((0, 40, False), (40, 10, False))),
])
def test_plan_reads(length: int, extents: list[tuple[int, int]],
                    expected: list[Segment]) -> None:
    plan = list(plan_reads(length, extents, chunk=40, min_hole=10))
    assert plan == expected
    # the plan always covers [0, length) exactly, in order
    assert sum(s.length for s in plan) == length
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(plan))


def test_data_extents_of_a_sparse_file(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        for off in (0, 20 * MIB, 63 * MIB):
            f.seek(off)
            f.write(b"x" * MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        extents = list(data_extents(fd, 0, 64 * MIB))
        clipped = list(data_extents(fd, 10 * MIB, 20 * MIB + 4096))
    finally:
        os.close(fd)
    if extents == [(0, 64 * MIB)]:
        pytest.skip("the file system does not report holes")
    assert extents == [(0, MIB), (20 * MIB, 21 * MIB), (63 * MIB, 64 * MIB)]
    assert clipped == [(20 * MIB, 20 * MIB + 4096)]


# -- the source -------------------------------------------------------------------------------


@pytest.fixture
def fake_sys(tmp_path: Path) -> Path:
    """sda (8:0) with sda1 and sda2 (8:1, 8:2); dm-0 sits on sda2; sdb is unrelated; loop3
    has a backing file."""
    block = tmp_path / "sys" / "class" / "block"
    for d in ("sda/sda1", "sda/sda2", "sda/sda2/holders/dm-0", "dm-0/holders", "sdb/sdb1",
              "loop3/loop"):
        (block / d).mkdir(parents=True)
    for part in ("sda/sda1", "sda/sda2", "sdb/sdb1"):
        (block / part / "partition").write_text("1\n")
        (block / part.split("/")[1]).symlink_to(part)  # as in sysfs: class/block/sda1
    for node, devnum in (("sda", "8:0"), ("sda/sda1", "8:1"), ("sda/sda2", "8:2")):
        (block / node / "dev").write_text(devnum + "\n")
    (block / "loop3" / "loop" / "backing_file").write_text("/srv/disk.img\n")
    (block / "loop3" / "loop" / "offset").write_text("1048576\n")
    return tmp_path / "sys"


BUSY = "; unmount it (or mount it read-only) before capturing"


@pytest.mark.parametrize(("mounts", "mountinfo", "swaps", "busy"), [
    ("/dev/sdb1 /mnt ext4 rw,relatime 0 0\n", "", "", None),   # another disk; dm-0 idle: fine
    ("/dev/sda1 /mnt ext4 ro,relatime 0 0\n", "", "", None),   # read-only: fine
    ("/dev/sda1 /mnt ext4 rw,relatime 0 0\n", "", "", "/dev/sda1 is mounted read-write on /mnt"),
    ("/dev/dm-0 /srv xfs rw 0 0\n", "", "", "/dev/dm-0 is mounted read-write on /srv"),
    ("/dev/sda /m\\040n ext4 rw 0 0\n", "", "", "/dev/sda is mounted read-write on /m n"),
    ("/dev/root / ext4 rw 0 0\n", "22 1 8:2 / / rw,relatime - ext4 /dev/root rw\n", "",
     "/dev/sda2 is mounted read-write on /"),                  # found by major:minor
    ("/dev/root / ext4 ro 0 0\n", "22 1 8:2 / / ro,relatime - ext4 /dev/root ro\n", "", None),
    ("proc /proc proc rw 0 0\n", "", "/dev/sda2 partition 1024 0 -2\n",
     "/dev/sda2 is in use as swap"),
])
def test_source_conflict(tmp_path: Path, fake_sys: Path, mounts: str, mountinfo: str,
                         swaps: str, busy: str | None) -> None:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text(mounts)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "swaps").write_text("Filename Type Size Used Priority\n" + swaps)
    usage = device_usage("sda", sysfs=fake_sys, proc=proc)
    assert capture.source_conflict(usage) == (busy and busy + BUSY)


def test_source_conflict_without_sysfs_uses_partition_names(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mounts").write_text("/dev/nvme0n1p2 / ext4 rw 0 0\n")
    kwargs: dict[str, Any] = dict(proc=tmp_path, sysfs=tmp_path / "nosys")
    assert capture.source_conflict(device_usage("nvme0n1", **kwargs)) == \
        "/dev/nvme0n1p2 is mounted read-write on /" + BUSY
    assert capture.source_conflict(device_usage("nvme0n", **kwargs)) is None


def test_check_source(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not exist"):
        capture.check_source(str(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DiskError, match="not a block device"):
        capture.check_source(str(tmp_path / "file"))
    with pytest.raises(DiskError, match="not a block device"):
        capture.check_source(str(tmp_path), allow_regular_file=True)
    assert capture.check_source(str(tmp_path / "file"), allow_regular_file=True) is False


def test_default_mac(tmp_path: Path) -> None:
    net = tmp_path / "class" / "net"
    for name, addr in (("lo", "00:00:00:00:00:00"), ("eth1", "52:54:00:00:00:02"),
                       ("eth0", "52:54:00:00:00:01"), ("dummy", "00:00:00:00:00:00")):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(addr + "\n")
    assert capture.default_mac(tmp_path) == "52-54-00-00-00-01"
    assert capture.default_mac(tmp_path / "none") == "00-00-00-00-00-00"


# -- whole captures of regular files ----------------------------------------------------------


def disk_with_gpt(path: Path) -> bytes:
    """A 16 MiB 'disk': GPT with two partitions (data in both) ending at 10 MiB, garbage after
    it, and a hole in the middle. Returns what a capture must contain."""
    per_mib = MIB // 512
    disk = gpt_disk(16 * per_mib, [GptPart(per_mib, 4 * per_mib - 1, "a"),
                                   GptPart(6 * per_mib, 10 * per_mib - 1, "b",
                                           uuid="66666666-7777-4888-9999-aaaaaaaaaaaa")])
    disk[MIB:MIB + 300_000] = os.urandom(300_000)
    disk[9 * MIB:10 * MIB] = b"last partition's last MiB " * (MIB // 26) + bytes(MIB % 26)
    disk[11 * MIB:12 * MIB] = b"\xee" * MIB  # after the last partition: not captured
    with open(path, "wb") as f:
        f.write(disk[:MIB + 300_000])
        f.seek(9 * MIB)
        f.write(disk[9 * MIB:])  # leaves a hole between
    return bytes(disk[:10 * MIB])


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == "gzip":
        return gzip.decompress(data)
    return data


@pytest.mark.parametrize("method", ["multipart", "put"])
@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_capture_round_trip(tmp_path: Path, server: ObservedServer,
                            session: requests.Session, method: capture.Method,
                            compression: capture.Compression) -> None:
    expected = disk_with_gpt(tmp_path / "disk.img")
    seen: list[requests.PreparedRequest] = []
    session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request))
    url = server.url + ("/image" if method == "multipart" else "/images/cap.raw")

    result = capture_image(str(tmp_path / "disk.img"), url, mac=MAC, method=method,
                           compression=compression, session=session, allow_regular_file=True)

    name = result.filename if method == "multipart" else "cap.raw"
    assert name is not None
    stored = (server.root / "images" / name).read_bytes()
    assert decompress(stored, compression) == expected
    sha_sent = hashlib.sha256(stored).hexdigest()
    assert result == CaptureResult(
        device=str(tmp_path / "disk.img"), url=url, method=method, compression=compression,
        bytes_read=len(expected), bytes_sent=len(stored),
        sha256_raw=hashlib.sha256(expected).hexdigest(), sha256_sent=sha_sent,
        seconds=result.seconds, filename=upload_filename(MAC, compression)
        if method == "multipart" else None)
    assert server.uploads[name] == {"name": name, "size": len(stored), "sha256": sha_sent}
    # without compression the size is known: Content-Length, else chunked
    (request,) = seen
    if compression == "none":
        assert "Transfer-Encoding" not in request.headers
        assert int(request.headers["Content-Length"]) >= len(expected)
    else:
        assert request.headers["Transfer-Encoding"] == "chunked"


def test_capture_whole_file_without_table(tmp_path: Path, server: ObservedServer,
                                          session: requests.Session) -> None:
    data = os.urandom(MIB) + bytes(3 * MIB) + b"tail"
    (tmp_path / "disk").write_bytes(data)
    result = capture_image(str(tmp_path / "disk"), f"{server.url}/images/x.zst", mac=MAC,
                           method="put", session=session, allow_regular_file=True)
    assert result.bytes_read == len(data)
    stored = (server.root / "images" / "x.zst").read_bytes()
    assert decompress(stored, "zstd") == data


class _SlowCopy:
    """A compressor that takes its time before it copies its input: the pipeline must not hand
    the buffer back for the next read until ``compress`` returned."""

    def compress(self, data: bytes | memoryview) -> bytes:
        time.sleep(0.1)  # the next read meanwhile waits for the buffer
        return bytes(data)

    def flush(self) -> bytes:
        return b""


def test_direct_read_buffers_go_back_only_after_the_compressor_took_their_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one buffer, one read at a time: the next read waits for the buffer, so one handed back
    # too early is overwritten while the compressor still reads it
    monkeypatch.setattr(capture, "DIRECT_BUFFERS", 1)
    monkeypatch.setattr(capture, "READ_AHEAD", 1)
    chunks = 6
    path = tmp_path / "disk"
    with open(path, "wb") as f:
        for i in range(chunks):
            f.write(bytes([i]) * capture.CHUNK)
    size = chunks * capture.CHUNK
    fd = os.open(path, os.O_RDONLY)
    try:
        direct = capture.DirectReads.open(str(path), 512)
        if direct is None:
            pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT")  # tmpfs
        monkeypatch.setattr(capture, "make_compressor", lambda compression: _SlowCopy())
        progress = capture._Progress(size, time.monotonic)
        with capture._Pipeline(fd, str(path), capture.plan_reads(size, [(0, size)]), "zstd",
                               progress, direct=direct) as pipe:
            out = b"".join(bytes(c) for c in pipe.chunks())
        direct.close()
    finally:
        os.close(fd)
    assert pipe.buffers is not None and pipe.buffered_reads == 0
    assert [out[i * capture.CHUNK] for i in range(chunks)] == list(range(chunks))
    assert out == path.read_bytes()


def test_holes_are_not_read(tmp_path: Path, server: ObservedServer,
                            session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(256 * MIB)
        f.seek(100 * MIB)
        f.write(b"data" * (MIB // 4))
    fd = os.open(path, os.O_RDONLY)
    try:
        if list(data_extents(fd, 0, 256 * MIB)) == [(0, 256 * MIB)]:
            pytest.skip("the file system does not report holes")
    finally:
        os.close(fd)
    real_pread = os.pread
    read: list[int] = []

    def counting_pread(fd: int, n: int, off: int) -> bytes:
        data = real_pread(fd, n, off)
        read.append(len(data))
        return data

    monkeypatch.setattr("pyinit.capture.os.pread", counting_pread)
    result = capture_image(str(path), f"{server.url}/images/sparse.zst", mac=MAC, method="put",
                           session=session, allow_regular_file=True)
    assert result.bytes_read == 256 * MIB
    assert sum(read) < 2 * MIB  # the 1 MiB of data and the partition table probe
    expected = bytes(100 * MIB) + b"data" * (MIB // 4) + bytes(155 * MIB)
    assert result.sha256_raw == hashlib.sha256(expected).hexdigest()
    stored = (server.root / "images" / "sparse.zst").read_bytes()
    assert len(stored) < 100_000
    assert decompress(stored, "zstd") == expected


def test_capture_with_a_broken_table_reads_everything(tmp_path: Path,
                                                      server: ObservedServer,
                                                      session: requests.Session) -> None:
    disk = gpt_disk(8192, [GptPart(2048, 4095)])
    disk[512 + 40] ^= 0xFF  # primary header
    disk[-512 + 40] ^= 0xFF  # backup header
    (tmp_path / "disk").write_bytes(disk)
    result = capture_image(str(tmp_path / "disk"), f"{server.url}/images/b.zst", mac=MAC,
                           method="put", session=session, allow_regular_file=True)
    assert result.bytes_read == len(disk)


def test_capture_of_an_empty_file(tmp_path: Path, server: ObservedServer,
                                  session: requests.Session) -> None:
    (tmp_path / "empty").write_bytes(b"")
    result = capture_image(str(tmp_path / "empty"), f"{server.url}/images/e.zst", mac=MAC,
                           method="put", session=session, allow_regular_file=True)
    assert result.bytes_read == 0
    assert decompress((server.root / "images" / "e.zst").read_bytes(), "zstd") == b""


def test_progress_events(tmp_path: Path, server: ObservedServer,
                         session: requests.Session) -> None:
    (tmp_path / "disk").write_bytes(os.urandom(3 * capture.CHUNK))
    events: list[dict[str, Any]] = []
    log.add_sink(events.append)
    ticks = iter(range(1000))
    try:
        capture_image(str(tmp_path / "disk"), f"{server.url}/images/p", mac=MAC, method="put",
                      compression="none", session=session, allow_regular_file=True,
                      clock=lambda: float(next(ticks)))
    finally:
        log.clear_sinks()
    progress = [e for e in events if (e["step"], e["status"]) == ("capture", "progress")]
    assert len(progress) >= 2
    assert progress[-1]["bytes_read"] == progress[-1]["total"] == 3 * capture.CHUNK


# -- failures ---------------------------------------------------------------------------------


class Stub:
    """A server that answers every upload with ``status`` (after reading the body)."""

    def __init__(self, status: int, body: bytes = b"", read: bool = True) -> None:
        self.requests = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                stub.requests += 1
                if read and self.headers.get("Transfer-Encoding") == "chunked":
                    while size := int(self.rfile.readline(), 16):
                        self.rfile.read(size + 2)
                    self.rfile.readline()
                elif read:
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            do_PUT = do_POST

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/image"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def small_disk(tmp_path: Path) -> str:
    path = tmp_path / "disk"
    path.write_bytes(os.urandom(256 * 1024))
    return str(path)


def test_http_500_fails_at_once(small_disk: str, session: requests.Session) -> None:
    stub = Stub(500, b'{"error": "disk full", "status": 500}')
    sleeps: list[float] = []
    try:
        with pytest.raises(FetchError) as info:
            capture_image(small_disk, stub.url, mac=MAC, session=session,
                          allow_regular_file=True, sleep=sleeps.append)
    finally:
        stub.close()
    assert stub.url in str(info.value) and "HTTP 500" in str(info.value)
    assert "disk full" in str(info.value)
    assert (info.value.status, info.value.retryable, stub.requests, sleeps) == (500, False, 1, [])


def test_http_503_recaptures_then_gives_up(small_disk: str, session: requests.Session) -> None:
    stub = Stub(503, b"busy")
    sleeps: list[float] = []
    try:
        with pytest.raises(FetchError, match=r"HTTP 503 .*busy.*gave up after 3 attempts"):
            capture_image(small_disk, stub.url, mac=MAC, session=session,
                          allow_regular_file=True, sleep=sleeps.append)
    finally:
        stub.close()
    assert stub.requests == 3 and len(sleeps) == 2


def test_unreachable_server(small_disk: str, session: requests.Session) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{port}/image"
    with pytest.raises(FetchError) as info:
        capture_image(small_disk, url, mac=MAC, session=session, allow_regular_file=True,
                      attempts=2, sleep=sleeps.append)
    text = str(info.value)
    assert url in text and "Connection refused" in text and "gave up after 2 attempts" in text
    assert len(sleeps) == 1


def test_checksum_reported_by_the_server_must_match(small_disk: str,
                                                    session: requests.Session) -> None:
    stub = Stub(201, json.dumps({"name": "x", "size": 1, "sha256": "0" * 64}).encode())
    try:
        with pytest.raises(ImageError, match="server stored sha256 0000"):
            capture_image(small_disk, stub.url, mac=MAC, session=session,
                          allow_regular_file=True)
    finally:
        stub.close()


def test_plain_text_answer_is_accepted(small_disk: str, session: requests.Session) -> None:
    stub = Stub(200, b"Upload complete")  # what plunder answers
    try:
        result = capture_image(small_disk, stub.url, mac=MAC, session=session,
                               allow_regular_file=True)
    finally:
        stub.close()
    assert result.bytes_read == 256 * 1024


def test_read_error_mid_capture_leaves_nothing(tmp_path: Path, server: ObservedServer,
                                               session: requests.Session,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "disk").write_bytes(os.urandom(4 * capture.CHUNK))
    real_preadv = os.preadv
    calls = 0

    def failing_preadv(fd: int, buffers: list[memoryview], off: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_preadv(fd, buffers, off)

    monkeypatch.setattr("pyinit.capture.os.preadv", failing_preadv)
    for method in ("put", "multipart"):
        calls = 0
        with pytest.raises(DiskError, match=r"read error at offset \d+: Input/output error"):
            capture_image(str(tmp_path / "disk"),
                          server.url + ("/images/broken" if method == "put" else "/image"),
                          mac=MAC, method=method, compression="none", session=session,
                          allow_regular_file=True)
    # the server noticed the cut-off upload and removed its temporary file
    deadline = time.monotonic() + 10
    while list((server.root / "images").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((server.root / "images").iterdir()) == []


def test_bad_arguments(small_disk: str, session: requests.Session) -> None:
    with pytest.raises(ConfigError, match="uploadMethod"):
        capture_image(small_disk, "http://x/", mac=MAC, method="ftp",  # type: ignore[arg-type]
                      session=session, allow_regular_file=True)
    with pytest.raises(ConfigError, match="compression"):
        capture_image(small_disk, "http://x/", mac=MAC, compression="xz",  # type: ignore[arg-type]
                      session=session, allow_regular_file=True)
    with pytest.raises(FetchError, match="invalid URL"):
        capture_image(small_disk, "nope://x/", mac=MAC, session=session,
                      allow_regular_file=True)


def test_cli(tmp_path: Path, server: ObservedServer, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "configure", lambda **_: None)  # keep pytest's logging set-up
    (tmp_path / "disk").write_bytes(b"hello" * 1000)
    rc = capture.main([str(tmp_path / "disk"), f"{server.url}/image", "--mac", MAC,
                       "--compression", "gzip", "--allow-file"])
    out = capsys.readouterr()
    assert rc == 0
    result = json.loads(out.out.splitlines()[-1])
    assert result["filename"] == "52-54-00-ab-cd-01.zmg" and result["bytes_read"] == 5000
    assert capture.main([str(tmp_path / "nope"), f"{server.url}/image", "--mac", MAC]) == 1
    assert "does not exist" in capsys.readouterr().err
