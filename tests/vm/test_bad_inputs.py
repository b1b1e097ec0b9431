"""Rows of the bad-input catalogue (docs/bad-inputs.md, issue #7) booted for real.

The unit catalogue (tests/unit/test_bad_inputs.py) drives every row through the boot's step
table with the seams a unit test may not use replaced. These tests boot a few of the same rows
in QEMU with the real kernel and initramfs, so a difference between the seams and a machine
(console formatting, the failure policy really powering off, a disk really written or not) shows
up here: the serial console's ``FAILED:`` line must be the doc's line for that row id, the
``failed`` PYINIT-EVENT carries it, QEMU exits by itself (``pyinit.on_failure=poweroff``) and the
host checks the disk afterwards.

The servers are :class:`tests.faultserver.FaultServer` on the host's 127.0.0.1, which the guest
reaches as 10.0.2.2 through slirp; nothing else is on the network.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pyinit_qemu.vm import VM, guest_url
from tests.faultserver import FaultServer
from tests.unit.test_bad_inputs import HTML, MIB, raw_image
from tests.unit.test_bad_inputs import doc_rows as unit_doc_rows

from .conftest import NEVER, Artifacts, boot

pytestmark = pytest.mark.vm

FAILED = re.compile(r"\[\d+/\d+\] (\S+): FAILED: (.*)$")
DISK_SIZE = 16 * MIB


def doc_line(row_id: str) -> str:
    """The documented one line of ``row_id`` (the doc cell without its backticks)."""
    cell = unit_doc_rows()[row_id][2]
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def normalise(line: str) -> str:
    """The guest's view of the host server (10.0.2.2:<port>) as the doc shows it."""
    return re.sub(r"10\.0\.2\.2:\d+", "127.0.0.1:PORT", line)


def patterned_disk(path: Path) -> tuple[Path, str]:
    """A disk full of a non-zero pattern (so "wiped" and "untouched" both show), its sha256."""
    data = bytes((i * 13 + 1) & 0xFF or 1 for i in range(4096)) * (DISK_SIZE // 4096)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Failure:
    step: str
    line: str  # as the console shows it, normalised
    event: dict[str, Any]
    vm: VM


def boot_to_failure(artifacts: Artifacts, tmp_path: Path, append: str, *, mac: str,
                    disk: Path) -> Failure:
    """Boot, wait for the one ``FAILED:`` line, then for the policy: QEMU must power off by
    itself (the kernel's ``reboot: Power down``), never panic, never print a traceback."""
    with boot(artifacts, tmp_path, append, mac=mac, disks=[disk], timeout=300) as vm:
        m = vm.expect(FAILED, timeout=200)
        vm.expect(r"pyinit: RESULT failed step=", timeout=60)
        vm.expect(r"reboot: Power down", timeout=60)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    step, line = m.group(1), m.group(2).rstrip()
    failed = [e for e in vm.events if e.get("status") == "failed" and e.get("step") != "result"]
    assert [e["step"] for e in failed] == [step], failed
    assert failed[0]["error"] == line  # the event carries the console's line, unchanged
    result = [e for e in vm.events if e.get("step") == "result"]
    assert result and result[-1]["failed_step"] == step and result[-1]["policy"] == "poweroff"
    results = [s for s in vm.lines if "pyinit: RESULT failed" in s]
    assert results and f"error={line} policy=poweroff" in results[-1], results
    return Failure(step, normalise(line), failed[0], vm)


@pytest.fixture
def fault(tmp_path: Path) -> Iterator[FaultServer]:
    files = tmp_path / "files"
    (files / "actions").mkdir(parents=True)
    with FaultServer(files) as srv:
        yield srv


def serve_action(fault: FaultServer, mac: str, body: str | dict[str, Any]) -> str:
    """This machine's action at <server>/actions/<mac>; ``MYURL=`` as the guest reaches it."""
    text = body if isinstance(body, str) else json.dumps(body)
    (fault.root / "actions" / mac.replace(":", "-")).write_text(text)
    return f"MYURL={guest_url(fault.base_url)}/actions"


def test_c18_bad_ip_mask_powers_off(artifacts: Artifacts, tmp_path: Path) -> None:
    """C18: a command line that does not parse still gets the policy it asked for."""
    disk, before = patterned_disk(tmp_path / "disk.raw")
    out = boot_to_failure(artifacts, tmp_path,
                          "ip=10.0.0.5::10.0.0.1:255.0.255.0::eth0:off MYURL=http://x",
                          mac="52:54:00:00:07:01", disk=disk)
    assert out.step == "rootfs"
    assert out.line == doc_line("C18")
    assert out.event["kind"] == "ConfigError"
    assert sha256(disk) == before


def test_a01_server_answers_html(artifacts: Artifacts, tmp_path: Path,
                                 fault: FaultServer) -> None:
    """A01: a web server's index page where the action should be; fatal at once."""
    mac = "52:54:00:00:07:02"
    disk, before = patterned_disk(tmp_path / "disk.raw")
    out = boot_to_failure(artifacts, tmp_path, serve_action(fault, mac, HTML), mac=mac,
                          disk=disk)
    assert out.step == "action"
    assert out.line == doc_line("A01")
    assert fault.count(f"actions/{mac.replace(':', '-')}") == 1  # not retried
    assert sha256(disk) == before


def test_a10_image_url_with_unknown_scheme(artifacts: Artifacts, tmp_path: Path,
                                           fault: FaultServer) -> None:
    """A10: ``ftp://`` refused while the action is validated, before any disk is opened."""
    mac = "52:54:00:00:07:03"
    disk, before = patterned_disk(tmp_path / "disk.raw")
    action = {"action": "writeImage", "sourceImage": "ftp://10.0.2.2/debian.img",
              "destinationDevice": "/dev/vda"}
    out = boot_to_failure(artifacts, tmp_path, serve_action(fault, mac, action), mac=mac,
                          disk=disk)
    assert out.step == "action"
    assert out.line == doc_line("A10")
    assert sha256(disk) == before


def test_i05_checksum_mismatch_wipes_the_headers(artifacts: Artifacts, tmp_path: Path,
                                                 fault: FaultServer) -> None:
    """I05: the image is written, its sha256 does not match: the first and last MiB (MBR, GPT,
    backup GPT) are zeroed so the half-trusted disk never boots. Same image bytes as the unit
    row, so the ``got sha256:`` in the line is the same too."""
    mac = "52:54:00:00:07:04"
    image = raw_image()
    (fault.root / "x.img").write_bytes(image)
    disk, _ = patterned_disk(tmp_path / "disk.raw")
    action = {"action": "writeImage", "sourceImage": guest_url(fault.url("x.img")),
              "destinationDevice": "/dev/vda", "checksum": "sha256:" + "0" * 64}
    out = boot_to_failure(artifacts, tmp_path, serve_action(fault, mac, action), mac=mac,
                          disk=disk)
    assert out.step == "provision"
    assert out.line == doc_line("I05")
    data = disk.read_bytes()
    assert data[:MIB] == bytes(MIB), "first MiB not wiped"
    assert data[-MIB:] == bytes(MIB), "last MiB not wiped"
    # between the two, the image was written (the failure came during the write, not before)
    assert data[MIB:len(image)] == image[MIB:]
