"""Signed images booted for real (issue #17): good signature, bad signature, wrong key, missing
signature, expired key — one QEMU machine each, the real kernel, initramfs and its gpgv.

The keyring comes inline on the command line (``pyinit.keyring=base64:…``, ~300 characters
for one ed25519 key), so the suite's one initramfs serves every case; that the builder bakes
``--keyring`` into the cpio is tests/integration/test_initramfs_build.py's. The failing cases
fail before the disk is opened (or, for the signature over other bytes, before the image's
first MiB is written): their console line is the doc's line of the G row
(docs/bad-inputs.md), and the host finds the disk not looking like the image.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pyinit_qemu.vm import guest_url
from tests.faultserver import FaultServer
from tests.gpgkeys import NAMES, Keys, gpg_keys  # noqa: F401 - the fixture
from tests.unit.test_bad_inputs import MIB, raw_image

from .conftest import NEVER, Artifacts, boot, result_line
from .test_bad_inputs import boot_to_failure, doc_line, fault, patterned_disk  # noqa: F401

pytestmark = pytest.mark.vm

IMAGE = raw_image()  # the unit rows' image: 3 MiB
SERVED = gzip.compress(IMAGE, compresslevel=1, mtime=0)


def serve(fault: FaultServer, mac: str, keys: Keys, sig: str | None, *,  # noqa: F811
          over: bytes = SERVED) -> str:
    """The gzip image, its ``.sig`` by key ``sig`` over ``over`` (None: no signature file),
    and this machine's action; returns ``MYURL=``."""
    (fault.root / "x.img.gz").write_bytes(SERVED)
    if sig is not None:
        (fault.root / "x.img.gz.sig").write_bytes(keys.sign(over, sig))
    action: dict[str, Any] = {"action": "writeImage", "destinationDevice": "/dev/vda",
                              "sourceImage": guest_url(fault.url("x.img.gz")),
                              "finish": "poweroff", "confirmFirstBoot": False}
    (fault.root / "actions" / mac.replace(":", "-")).write_text(json.dumps(action))
    return f"MYURL={guest_url(fault.base_url)}/actions"


def named(line: str, keys: Keys) -> str:
    for name in NAMES:
        line = line.replace(keys.keyid(name), f"<{name}>")
    return line


def test_good_signature_writes_and_reports_the_signer(artifacts: Artifacts, tmp_path: Path,
                                                      fault: FaultServer,  # noqa: F811
                                                      gpg_keys: Keys) -> None:  # noqa: F811
    mac = "52:54:00:00:17:01"
    disk, _ = patterned_disk(tmp_path / "disk.raw")
    myurl = serve(fault, mac, gpg_keys, "good")
    with boot(artifacts, tmp_path, f"{myurl} pyinit.keyring={gpg_keys.inline('good')}",
              mac=mac, disks=[disk], timeout=300) as vm:
        vm.expect(r"provision: images must be signed by a key of /run/pyinit/keyring.gpg",
                  timeout=200)
        fpr = gpg_keys.fingerprint("good")
        vm.expect(rf"provision: signature of .*x\.img\.gz verified .*good signature by {fpr}",
                  timeout=120)
        vm.expect(rf"provision: wrote {len(IMAGE)} bytes to /dev/vda .*signed by {fpr}",
                  timeout=60)
        vm.expect(r"reboot: Power down", timeout=60)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert result_line(vm.lines)["signer"] == fpr
    result = [e for e in vm.events if e.get("step") == "result"][-1]
    assert result["status"] == "ok" and result["signer"] == fpr
    assert disk.read_bytes()[:len(IMAGE)] == IMAGE  # the host's check: the image, head included


@pytest.mark.parametrize(("row", "mac", "sig", "ring", "over"), [
    ("G02", "52:54:00:00:17:02", "good", "good", b"other bytes"),
    ("G03", "52:54:00:00:17:03", "other", "good", None),
    ("G04", "52:54:00:00:17:04", None, "good", None),
    ("G05", "52:54:00:00:17:05", "expired", "expired", None),
], ids=["bad-signature", "wrong-key", "missing-signature", "expired-key"])
def test_refused(artifacts: Artifacts, tmp_path: Path, fault: FaultServer,  # noqa: F811
                 gpg_keys: Keys, row: str, mac: str, sig: str | None,  # noqa: F811
                 ring: str, over: bytes | None) -> None:
    disk, before = patterned_disk(tmp_path / "disk.raw")
    myurl = serve(fault, mac, gpg_keys, sig, over=over if over is not None else SERVED)
    out = boot_to_failure(artifacts, tmp_path, f"{myurl} pyinit.keyring={gpg_keys.inline(ring)}",
                          mac=mac, disk=disk)
    assert out.step == "provision"
    assert named(out.line, gpg_keys) == doc_line(row)
    assert out.event["kind"] == "SignatureError"
    data = disk.read_bytes()
    assert data[:MIB] != IMAGE[:MIB], "the image's first MiB was written"
    if row != "G02":  # refused before the disk was opened
        assert hashlib.sha256(data).hexdigest() == before
    elif hashlib.sha256(data).hexdigest() != before:  # the stream had begun: both ends wiped
        assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)
