"""readImage against real loop devices, real sfdisk tables and the real server on 127.0.0.1.

Each test makes its own sparse backing file and loop device (``losetup -f --show``) and detaches
it afterwards. Data is written through the loop device and kept unsynced in its page cache (the
writer stays open: the last close of a block device flushes it): the capture reads the device,
never its backing file, so it must see that data.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import zstandard

from pyinit import capture, parttable
from pyinit.capture import capture_image
from pyinit.errors import DiskError, FetchError
from pyinit.units import MIB
from tests.hostreq import need, need_root
from tests.serverkit import ObservedServer
from tests.unit.test_capture import Stub

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _host() -> None:
    need_root("loop devices")
    need("losetup", "sfdisk")

MAC = "52:54:00:c0:ff:ee"
GPT_SCRIPT = """label: gpt
label-id: 0B6F8A4C-1C35-4E3F-9C1A-6A1F7C0E2D11
first-lba: 2048
start=2048, size=32768, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system", uuid=6F1A2B3C-4D5E-4F60-8172-93A4B5C6D7E8
start=34816, size=65536, type=0FC63DAF-8483-4772-8E79-3D69E4C47D4C, name="root", uuid=1D2C3B4A-5F6E-4071-8293-A4B5C6D7E8F9
"""  # noqa: E501 - one partition per line, as sfdisk dumps them
GPT_END = (34816 + 65536) * 512  # 49 MiB
DOS_SCRIPT = """label: dos
label-id: 0x5eed1234
start=2048, size=8192, type=83, bootable
start=10240, size=40960, type=5
start=12288, size=4096, type=82
start=18432, size=8192, type=83
start=28672, size=2048, type=83
"""
DOS_END = (10240 + 40960) * 512


def run(*argv: str, input: str | None = None) -> str:
    return subprocess.run(argv, input=input, text=True, check=True,
                          capture_output=True).stdout


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``loop(size_mib, sfdisk_script=None) -> /dev/loopN`` over a sparse file."""
    devices: list[str] = []

    def make(size_mib: int, script: str | None = None) -> str:
        backing = tmp_path / f"disk{len(devices)}.img"
        with open(backing, "wb") as f:
            f.truncate(size_mib * MIB)
        if script is not None:
            run("sfdisk", "--quiet", "--no-reread", str(backing), input=script)
        dev = run("losetup", "-f", "--show", str(backing)).strip()
        devices.append(dev)
        return dev

    yield make
    for dev in devices:
        subprocess.run(["losetup", "-d", dev], check=False)


Writer = Callable[[int, bytes], object]


@contextlib.contextmanager
def unsynced(dev: str) -> Iterator[Writer]:
    """``write(offset, data)`` through the device, left in its page cache while the block
    stays open."""
    fd = os.open(dev, os.O_WRONLY)
    try:
        yield lambda offset, data: os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def device_bytes(dev: str, length: int) -> bytes:
    with open(dev, "rb") as f:
        return f.read(length)


def fill_gpt_disk(write: Writer) -> None:
    write(2048 * 512, os.urandom(3 * MIB))             # p1, start
    write(34816 * 512 + 5 * MIB, b"root fs " * MIB)    # p2, middle
    write(GPT_END - 4096, os.urandom(4096))            # p2, last 4 KiB
    write(GPT_END + MIB, b"garbage " * MIB)            # after the last partition


def test_sfdisk_gpt_is_parsed_like_sfdisk_reads_it(loop: Callable[..., str]) -> None:
    dev = loop(64, GPT_SCRIPT)
    with open(dev, "rb") as f:
        table = parttable.parse(f, disk_size=64 * MIB)
    dump = json.loads(run("sfdisk", "--json", dev))["partitiontable"]
    assert table is not None and table.kind == dump["label"] == "gpt"
    assert table.disk_id == dump["id"].lower()
    assert table.first_usable_lba == dump["firstlba"]
    assert table.last_usable_lba == dump["lastlba"]
    assert table.backup_header_offset == 64 * MIB - 512
    assert [(p.start // 512, p.size // 512, p.type, p.uuid, p.name)
            for p in table.partitions] == [
        (d["start"], d["size"], d["type"].lower(), d["uuid"].lower(), d["name"])
        for d in dump["partitions"]]
    assert table.end_of_last_partition == GPT_END


def test_sfdisk_dos_with_logical_partitions(loop: Callable[..., str]) -> None:
    dev = loop(32, DOS_SCRIPT)
    with open(dev, "rb") as f:
        table = parttable.parse(f)
    dump = json.loads(run("sfdisk", "--json", dev))["partitiontable"]
    assert table is not None and table.kind == "mbr" and dump["label"] == "dos"
    assert table.disk_id == "5eed1234"
    assert [(p.number, p.start // 512, p.size // 512, p.type) for p in table.partitions] == [
        (int(d["node"].rsplit("p", 1)[1]), d["start"], d["size"], f"0x{int(d['type'], 16):02x}")
        for d in dump["partitions"]]
    assert [p.kind for p in table.partitions] == ["primary", "extended", "logical", "logical",
                                                  "logical"]
    assert table.by_number(1).attributes == 0x80
    assert table.end_of_last_partition == DOS_END
    assert table.by_number(6).uuid == "5eed1234-06"  # the kernel's PARTUUID for an MBR


def test_capture_gpt_zstd_multipart(loop: Callable[..., str], server: ObservedServer,
                                    session: requests.Session) -> None:
    dev = loop(64, GPT_SCRIPT)
    with unsynced(dev) as write:
        fill_gpt_disk(write)
        result = capture_image(dev, f"{server.url}/image", mac=MAC, session=session)
        expected = device_bytes(dev, GPT_END)
    assert result.filename == "52-54-00-c0-ff-ee.img.zst"
    stored = (server.root / "images" / result.filename).read_bytes()
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    assert len(raw) == GPT_END and raw == expected
    assert (result.bytes_read, result.sha256_raw) == (GPT_END, hashlib.sha256(expected).hexdigest())
    assert (result.bytes_sent, result.sha256_sent) == (len(stored),
                                                       hashlib.sha256(stored).hexdigest())
    # read with O_DIRECT, and still the bytes written through the page cache a moment ago
    # (the kernel writes a range back before a direct read of it)
    assert result.direct_io
    print(f"captured {GPT_END / MIB:.0f} MiB to {len(stored) / MIB:.1f} MiB "
          f"in {result.seconds:.2f} s")
    # the image holds the primary GPT only: the writer puts the backup at its disk's end
    table = parttable.parse(raw)
    assert table is not None and table.end_of_last_partition == GPT_END


def test_capture_gpt_gzip_put(loop: Callable[..., str], server: ObservedServer,
                              session: requests.Session) -> None:
    dev = loop(64, GPT_SCRIPT)
    with unsynced(dev) as write:
        fill_gpt_disk(write)
        result = capture_image(dev, f"{server.url}/images/put.img.gz", mac=MAC, method="put",
                               compression="gzip", session=session)
        expected = device_bytes(dev, GPT_END)
    stored = (server.root / "images" / "put.img.gz").read_bytes()
    assert gzip.decompress(stored) == expected
    assert result.filename is None and result.sha256_sent == hashlib.sha256(stored).hexdigest()
    assert (server.root / "images" / "put.img.gz.sha256").read_text().split()[0] == \
        result.sha256_sent


def test_capture_without_partition_table_is_the_whole_device(
        loop: Callable[..., str], server: ObservedServer, session: requests.Session) -> None:
    dev = loop(16)
    with unsynced(dev) as write:
        write(0, b"no table here")
        write(16 * MIB - 4096, os.urandom(4096))
        result = capture_image(dev, f"{server.url}/images/whole.img", mac=MAC, method="put",
                               compression="none", session=session)
    assert result.bytes_read == 16 * MIB and result.direct_io  # Content-Length from views
    assert (server.root / "images" / "whole.img").read_bytes() == device_bytes(dev, 16 * MIB)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_capture_larger_than_its_buffers_reuses_them_without_mixing_bytes(
        loop: Callable[..., str], server: ObservedServer, session: requests.Session,
        compression: capture.Compression) -> None:
    """The O_DIRECT buffers go round (READ_AHEAD + QUEUE_DEPTH + 2 of them): 160 MiB with a
    different pattern in every CHUNK shows a buffer is never refilled before the compressor
    took its bytes in."""
    size = 160 * MIB
    assert size > (capture.READ_AHEAD + capture.QUEUE_DEPTH + 2) * capture.CHUNK * 1.5
    dev = loop(size // MIB)
    with unsynced(dev) as write:
        for i, offset in enumerate(range(0, size, capture.CHUNK)):
            write(offset, os.urandom(MIB // 2) + f"chunk {i} ".encode() * 4096)
        result = capture_image(dev, f"{server.url}/images/big", mac=MAC, method="put",
                               compression=compression, session=session)
        expected = device_bytes(dev, size)
    stored = (server.root / "images" / "big").read_bytes()
    raw = (zstandard.ZstdDecompressor().decompressobj().decompress(stored)
           if compression == "zstd" else gzip.decompress(stored))
    assert raw == expected and result.direct_io
    assert result.sha256_raw == hashlib.sha256(expected).hexdigest()


def test_capture_refuses_a_mounted_device(loop: Callable[..., str], tmp_path: Path,
                                          server: ObservedServer,
                                          session: requests.Session) -> None:
    """The whole device carries the file system: partition devices need udev (and partition
    scanning), which this test cannot count on; partitions and stacked devices are covered by
    the unit tests against a fake /sys."""
    need("mkfs.ext4")
    dev = loop(32)
    run("mkfs.ext4", "-q", dev)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run("mount", dev, str(mnt))
    try:
        with pytest.raises(DiskError, match=rf"{dev} is mounted read-write on {mnt}"):
            capture_image(dev, f"{server.url}/image", mac=MAC, session=session)
        run("mount", "-o", "remount,ro", str(mnt))
        result = capture_image(dev, f"{server.url}/image", mac=MAC, session=session)
        assert result.bytes_read == 32 * MIB  # read-only mounts are fine
    finally:
        run("umount", str(mnt))


def test_capture_server_error_and_unreachable(loop: Callable[..., str],
                                              session: requests.Session) -> None:
    dev = loop(16, GPT_SCRIPT.replace("size=65536", "size=8192").replace(
        "start=2048, size=32768", "start=2048, size=4096").replace("start=34816", "start=6144"))
    stub = Stub(500, b'{"error": "no space left", "status": 500}')
    try:
        with pytest.raises(FetchError) as info:
            capture_image(dev, stub.url, mac=MAC, session=session)
    finally:
        stub.close()
    assert f"{stub.url}: upload rejected: HTTP 500" in str(info.value)
    assert "no space left" in str(info.value)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/image"
    with pytest.raises(FetchError, match=r"Connection refused \(gave up after 2 attempts\)"):
        capture_image(dev, url, mac=MAC, session=session, attempts=2, sleep=lambda _: None)
