"""Issue #3 in a real kernel: zstd and xz images written with a checksum, a wrong checksum that
leaves no bootable-looking disk, a dropped connection resumed inside the VM, and a capture
uploaded to the server then written back to a second VM, byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyinit_build.demoimage import MIB, DemoImage, compressed_copy, sha256_file
from pyinit_qemu.vm import guest_url
from tests.faultserver import FaultServer

from .conftest import NEVER, Artifacts, Server, blank_disk, boot

pytestmark = pytest.mark.vm


def provision(artifacts: Artifacts, tmp_path: Path, server: Server, mac: str,
              action: dict[str, object], disk: Path) -> tuple[dict[str, object], list[str]]:
    server.machine(mac, action)
    with boot(artifacts, tmp_path, f"MYURL={server.guest_url}", mac=mac, disks=[disk]) as vm:
        result = vm.expect_event(step="result", timeout=240)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
        return result, vm.lines


@pytest.mark.parametrize("kind", ["zstd", "xz"])
def test_compressed_image_with_checksum(artifacts: Artifacts, server: Server,
                                        demo_image: DemoImage, tmp_path: Path,
                                        kind: str) -> None:
    image = compressed_copy(demo_image, kind)
    server.image(image.name, image)
    digest = sha256_file(image)
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    mac = {"zstd": "52:54:00:00:05:01", "xz": "52:54:00:00:05:02"}[kind]
    result, _ = provision(artifacts, tmp_path, server, mac, {
        "action": "writeImage", "sourceImage": f"images/{image.name}",
        "destinationDevice": "/dev/vda", "checksum": f"sha256:{digest}", "finish": "poweroff"},
        disk)
    assert result["status"] == "ok", result
    assert result["format"] == kind
    assert result["checksum_verified"] == "sha256"
    assert sha256_file(disk, demo_image.size) == demo_image.sha256


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
    result, _ = provision(artifacts, tmp_path, server, "52:54:00:00:05:03", {
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
        result, _ = provision(artifacts, tmp_path, server, "52:54:00:00:05:04", {
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
    first, _ = provision(artifacts, tmp_path / "vm1", server, mac1, {
        "action": "readImage", "sourceDevice": "/dev/vda", "compression": "zstd",
        "desintationAddress": "image", "finish": "poweroff"}, source)
    assert first["status"] == "ok", first
    uploaded = server.root / "images" / "52-54-00-00-06-01.img.zst"
    assert uploaded.exists()
    assert first["sha256_sent"] == sha256_file(uploaded)

    target = blank_disk(tmp_path / "target.raw", 2 * demo_image.size)
    second, _ = provision(artifacts, tmp_path / "vm2", server, mac2, {
        "action": "writeImage", "sourceImage": f"images/{uploaded.name}",
        "destinationDevice": "/dev/vda", "checksum": f"sha256:{first['sha256_sent']}",
        "finish": "poweroff"}, target)
    assert second["status"] == "ok", second
    # The partitioned part of the source, byte for byte; nothing of the junk after it.
    end = demo_image.size - MIB  # the demo image's partition ends 1 MiB before its end
    assert sha256_file(target, end) == sha256_file(source, end)
    assert first["bytes_read"] == end
