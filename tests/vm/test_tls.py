"""Issue #6 in a real kernel: pyinit provisions from ``pyinit serve`` over HTTPS, trusting the CA
given inline on the kernel command line (``pyinit.ca=base64:…``, so the stock initramfs serves);
with another CA it stops at the action step with one line on the console and the disk untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyinit_build.demoimage import DemoImage, sha256_file
from pyinit_qemu.vm import kernel_append
from tests.serverkit import ObservedServer
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture

from .conftest import NEVER, Artifacts, Server, blank_disk, boot, is_all_zero

pytestmark = pytest.mark.vm

CMDLINE_MAX = 2048  # x86 COMMAND_LINE_SIZE, terminating NUL included


@pytest.fixture
def tls_server(tmp_path: Path, tls_files: TLSFiles) -> Iterator[Server]:  # noqa: F811
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    with ObservedServer(root, tls_cert=tls_files.cert, tls_key=tls_files.key,
                            open_writes=True, symlinks="any") as srv:
        yield Server(srv, root)


def append_for(server: Server, ca: str) -> str:
    append = f"MYURL={server.guest_url} pyinit.ca={ca} pyinit.fetch_timeout=60"
    full = kernel_append(f"{append} pyinit.on_failure=poweroff")
    assert len(full) < CMDLINE_MAX, len(full)
    print(f"kernel command line: {len(full)} bytes of {CMDLINE_MAX - 1}")
    return append


def test_provision_over_https_with_an_inline_ca(artifacts: Artifacts, tls_server: Server,
                                                tls_files: TLSFiles,  # noqa: F811
                                                demo_image: DemoImage, tmp_path: Path) -> None:
    mac = "52:54:00:00:06:11"
    server = tls_server
    assert server.guest_url.startswith("https://10.0.2.2:")
    server.image("demo.img.gz", demo_image.gz)
    server.machine(mac, {"action": "writeImage", "compressed": True,
                         "sourceImage": f"{server.guest_url}/images/demo.img.gz",
                         "destinationDevice": "/dev/vda", "finish": "poweroff"})
    disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
    with boot(artifacts, tmp_path, append_for(server, tls_files.inline()), mac=mac,
              disks=[disk], timeout=420) as vm:
        vm.expect(r"pyinit \S+ starting as PID 1", timeout=150)
        fetched = vm.expect_event(step="action", status="ok", timeout=180)
        vm.expect_event(step="provision", status="ok", timeout=180)
        result = vm.expect_event(step="result", timeout=60)
        assert vm.wait_exit(timeout=90) == 0
        vm.assert_never(*NEVER, r"TLS error")
    assert result["status"] == "ok", result
    assert result["sha256"] == demo_image.gz_sha256
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
    assert fetched["uptime"] > 0
    # everything went over HTTPS: the action, the image and the events
    assert ("result", "ok") in [(e.get("step"), e.get("status")) for e in server.events(mac)]
    assert server.srv.http_url is not None
    assert all(r["status"] < 400 for r in server.srv.access_log), server.srv.access_log


def test_a_wrong_ca_stops_with_one_line_and_an_untouched_disk(
        artifacts: Artifacts, tls_server: Server, tls_files: TLSFiles,  # noqa: F811
        tmp_path: Path) -> None:
    mac = "52:54:00:00:06:12"
    server = tls_server
    server.machine(mac, json.dumps({"action": "writeImage", "sourceImage": "x",
                                    "destinationDevice": "/dev/vda"}))
    disk = blank_disk(tmp_path / "disk.raw", 64 << 20)
    with boot(artifacts, tmp_path, append_for(server, tls_files.inline(tls_files.other_ca)),
              mac=mac, disks=[disk], timeout=420) as vm:
        url = re.escape(f"{server.guest_url}/52-54-00-00-06-12")
        line = vm.expect(rf"action: FAILED: {url}: TLS error: certificate verify failed: "
                         r"unable to get local issuer certificate \(trusting the CA from "
                         r"pyinit\.ca= \(inline\)\)$", timeout=300)
        failed = vm.expect_event(step="action", status="failed", timeout=30)
        vm.expect_event(step="result", status="failed", timeout=30)
        assert vm.wait_exit(timeout=90) == 0
        vm.assert_never(*NEVER, r"retry \d+ in")
    print(f"console: {line.group(0)}")
    assert failed["kind"] == "FetchError"
    assert is_all_zero(disk)
    assert server.srv.access_log == []  # no request ever reached the server in clear or not
    assert server.events(mac) == []
