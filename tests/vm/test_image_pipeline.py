"""Issue #3 in a real kernel: zstd and xz images written with a checksum, a wrong checksum that
leaves no bootable-looking disk, a dropped connection resumed inside the VM, and a capture
uploaded to the server then written back to a second VM, byte-identical."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pyinit import parttable
from pyinit.image.progress import megabytes
from pyinit.units import MIB
from pyinit_build.demoimage import DemoImage, compressed_copy, sha256_file
from pyinit_qemu.vm import guest_url
from tests.faultserver import FaultServer

from .conftest import NEVER, Artifacts, Server, assert_progress, blank_disk, boot, result_line

pytestmark = pytest.mark.vm


def provision(artifacts: Artifacts, tmp_path: Path, server: Server, mac: str,
              action: dict[str, object], disk: Path
              ) -> tuple[dict[str, object], list[str], list[dict[str, Any]]]:
    server.machine(mac, action)
    with boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=mac, disks=[disk]) as vm:
        result = vm.expect_event(step="result", timeout=240)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
        return result, vm.lines, vm.events


@pytest.mark.parametrize("kind", ["zstd", "xz"])
def test_compressed_image_with_checksum(artifacts: Artifacts, server: Server,
                                        demo_image: DemoImage, tmp_path: Path,
                                        kind: str) -> None:
    image = compressed_copy(demo_image, kind)
    server.image(image.name, image)
    digest = sha256_file(image)
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    mac = {"zstd": "52:54:00:00:05:01", "xz": "52:54:00:00:05:02"}[kind]
    result, lines, events = provision(artifacts, tmp_path, server, mac, {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "destinationDevice": "/dev/vda", "checksum": f"sha256:{digest}", "finish": "poweroff"},
        disk)
    assert result["status"] == "ok", result
    assert result["format"] == kind
    assert result["checksum_verified"] == "sha256"
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    # the RESULT line and event say which bytes the sha256 covers, and label the counts
    served = image.stat().st_size
    scope = f"the downloaded file (compressed {kind}, {megabytes(served)})"
    assert (result["bytes_written"], result["bytes_downloaded"], result["sha256_of"]) == (
        demo_image.size, served, scope)
    fields = result_line(lines)
    assert (fields["bytes_written"], fields["bytes_downloaded"], fields["sha256"],
            fields["sha256_of"]) == (str(demo_image.size), str(served), digest, scope)
    # zstd's frame header declares the raw size; xz does not
    assert_progress(lines, events, demo_image.size, known=kind == "zstd")


def test_wrong_checksum_leaves_no_valid_partition_table(artifacts: Artifacts, server: Server,
                                                       demo_image: DemoImage,
                                                       tmp_path: Path) -> None:
    image = compressed_copy(demo_image, "zstd")
    server.image(image.name, image)
    # The disk already holds a bootable-looking image: after the failure it must not.
    disk = tmp_path / "disk.raw"
    shutil.copyfile(demo_image.raw, disk)
    with disk.open("r+b") as f:
        f.truncate(2 * demo_image.size)
    result, _, _ = provision(artifacts, tmp_path, server, "52:54:00:00:05:03", {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "destinationDevice": "/dev/vda", "checksum": "sha256:" + "0" * 64}, disk)
    assert result["status"] == "failed"
    assert result["failed_step"] == "provision"
    assert "checksum mismatch" in str(result["error"])
    data = disk.read_bytes()
    assert data[:MIB] == bytes(MIB)  # MBR and boot code gone
    assert data[-MIB:] == bytes(MIB)  # and any GPT backup


def test_dropped_connection_resumes_inside_the_vm(artifacts: Artifacts, server: Server,
                                                  demo_image: DemoImage,
                                                  tmp_path: Path) -> None:
    image = compressed_copy(demo_image, "zstd")
    (tmp_path / "faulty").mkdir()
    shutil.copyfile(image, tmp_path / "faulty" / image.name)
    size = image.stat().st_size
    with FaultServer(tmp_path / "faulty") as faulty:
        faulty.set_faults(image.name, drop_at=[size // 2])
        disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
        result, _, _ = provision(artifacts, tmp_path, server, "52:54:00:00:05:04", {
            "action": "writeImage", "sourceImage": guest_url(faulty.url(image.name)),
            "destinationDevice": "/dev/vda", "checksum": f"sha256:{sha256_file(image)}",
            "finish": "poweroff"}, disk)
        ranges = faulty.ranges(image.name)
    assert result["status"] == "ok", result
    assert result["resumes"] == 1
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert sha256_file(disk, demo_image.size) == demo_image.sha256


def test_capture_then_write_back_to_a_second_machine(artifacts: Artifacts, server: Server,
                                                     demo_image: DemoImage,
                                                     tmp_path: Path) -> None:
    source = tmp_path / "source.raw"
    shutil.copyfile(demo_image.raw, source)
    with source.open("r+b") as f:  # junk after the last partition is not part of the capture
        f.seek(demo_image.size)
        f.write(b"JUNK" * 1024)
        f.truncate(2 * demo_image.size)
    mac1, mac2 = "52:54:00:00:06:01", "52:54:00:00:06:02"
    first, _, _ = provision(artifacts, tmp_path / "vm1", server, mac1, {
        "action": "readImage", "sourceDevice": "/dev/vda", "compression": "zstd",
        "desintationAddress": "image", "finish": "poweroff"}, source)
    assert first["status"] == "ok", first
    uploaded = server.root / "images" / "52-54-00-00-06-01.img.zst"
    assert uploaded.exists()
    assert first["sha256_sent"] == sha256_file(uploaded)

    target = blank_disk(tmp_path / "target.raw", 2 * demo_image.size)
    second, _, _ = provision(artifacts, tmp_path / "vm2", server, mac2, {
        "action": "writeImage", "sourceImage": f"images/{uploaded.name}",
        "destinationDevice": "/dev/vda", "checksum": f"sha256:{first['sha256_sent']}",
        "finish": "poweroff"}, target)
    assert second["status"] == "ok", second
    # The partitioned part of the source, byte for byte; nothing of the junk after it.
    end = demo_image.size - MIB  # the demo image's partition ends 1 MiB before its end
    assert sha256_file(target, end) == sha256_file(source, end)
    assert first["bytes_read"] == end


def gpt_disk_image(path: Path, size: int) -> bytes:
    """A GPT disk of ``size`` bytes (its backup header in the last sector) with one partition
    full of random data: what an image the size of its disk looks like."""
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "--quiet", str(path)], input=b"label: gpt\n,,L\n", check=True)
    data = bytearray(path.read_bytes())
    data[2 * MIB:size - 64 * 1024] = os.urandom(size - 2 * MIB - 64 * 1024)  # up to the end
    path.write_bytes(data)
    assert parttable.parse(path.open("rb"), disk_size=size) is not None
    return bytes(data)


def test_power_cut_before_the_checksum_leaves_no_table_at_either_end(
        artifacts: Artifacts, server: Server, tmp_path: Path) -> None:
    """An image the size of the disk whose stream stalls after the whole disk was decoded and
    handed to the writer but before the stream ended (a zstd skippable frame follows the image;
    the stall is at a 256 KiB network-read boundary inside it, so no read waits for more), so
    the checksum cannot be checked yet; then QEMU is killed with SIGKILL, a power cut. The disk
    must carry neither the image's first MiB nor its last (data and the GPT backup), from which
    recovery tools, and parttable.parse, would rebuild a table on a half-written disk."""
    import zstandard

    from pyinit.image.decode import NET_CHUNK

    size = 32 * MIB  # a multiple of the pipeline's 4 MiB blocks: the last one is handed over
    image = gpt_disk_image(tmp_path / "gpt.raw", size)
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True,
                                     write_content_size=True).compress(image)
    stall = -(-len(frame) // NET_CHUNK) * NET_CHUNK + NET_CHUNK  # inside the skippable frame
    filler = stall - len(frame) - 8 + 64 * 1024
    stream = frame + (0x184D2A50).to_bytes(4, "little") + filler.to_bytes(4, "little") + \
        bytes(filler)
    (tmp_path / "faulty").mkdir()
    zst = tmp_path / "faulty" / "disk.img.zst"
    zst.write_bytes(stream)
    digest = hashlib.sha256(stream).hexdigest()
    disk = blank_disk(tmp_path / "disk.raw", size)
    mac = "52:54:00:00:05:07"
    with FaultServer(tmp_path / "faulty") as faulty:
        faulty.set_faults(zst.name, stall_at=stall, stall_seconds=120)
        server.machine(mac, {"action": "writeImage", "sourceImage": guest_url(faulty.url(zst.name)),
                             "destinationDevice": "/dev/vda", "checksum": f"sha256:{digest}",
                             "size": size, "finish": "poweroff"})
        with boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=mac, disks=[disk],
                  timeout=400) as vm:
            vm.expect_event(step="provision", status="start", timeout=240)
            # the data just before the last MiB is on the disk: the writer has the last block
            edge = slice(size - MIB - 4096, size - MIB)
            deadline = time.monotonic() + 180
            with disk.open("rb") as f:
                while time.monotonic() < deadline:
                    f.seek(edge.start)
                    if f.read(4096) == image[edge]:
                        break
                    time.sleep(0.2)
                else:
                    pytest.fail("the writer never reached the disk's last block")
            time.sleep(2.0)  # time for writes into the last MiB to land, were any issued
            # still the first request, stalled (pyinit resumes one after 30 s without data)
            assert len(faulty.requests(zst.name)) == 1
            assert vm.pid is not None
            os.kill(vm.pid, signal.SIGKILL)  # the power cut
            vm.kill()
    data = disk.read_bytes()
    assert data[size - 2 * MIB:size - MIB] == image[size - 2 * MIB:size - MIB]  # it got there
    assert image[-MIB:] != bytes(MIB)  # the image does carry data and a GPT backup there
    assert data[:MIB] == bytes(MIB), "the first MiB was written before the checksum"
    assert data[-MIB:] == bytes(MIB), "the last MiB was written before the checksum"
    with disk.open("rb") as f:
        assert parttable.parse(f, disk_size=size) is None
