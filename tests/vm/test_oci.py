"""sourceImage oci:// in a real kernel: Debian's docker-registry (tests/registry.py) over HTTPS
(the test CA, given inline as pyinit.ca=) behind htpasswd on the host's loopback, which the
guest reaches as 10.0.2.2 through slirp (the certificate names both); the demo image pushed as
a zstd artifact by pyinit's push, pulled by its manifest digest with Basic credentials from the
action. One boot; the host checks the disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import zstandard

from pyinit.oci.parse import Credentials, parse_reference
from pyinit_build import ocipush
from pyinit_build.demoimage import DemoImage, sha256_file
from tests.registry import Registry
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture

from .conftest import NEVER, Artifacts, Server, blank_disk, boot, result_line

pytestmark = pytest.mark.vm

MAC = "52:54:00:00:17:01"
USERS = {"pyinit": "vm-secret"}


def test_provision_from_an_oci_registry(artifacts: Artifacts, server: Server,
                                        demo_image: DemoImage, tmp_path: Path,
                                        tls_files: TLSFiles,  # noqa: F811
                                        ) -> None:
    zst = tmp_path / "demo.img.zst"
    with demo_image.raw.open("rb") as src, zst.open("wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst, size=demo_image.size)
    with Registry(tmp_path, users=USERS, tls=tls_files) as reg:
        with requests.Session() as session:
            session.verify, session.trust_env = str(tls_files.ca), False
            pushed = ocipush.push(zst, parse_reference(f"oci://{reg.address}/disks/demo:v1"),
                                  session=session, credentials=Credentials("pyinit", "vm-secret"),
                                  progress=lambda s: None)
        guest_registry = reg.address.replace("127.0.0.1", "10.0.2.2")
        server.machine(MAC, {
            "action": "writeImage", "destinationDevice": "/dev/vda", "finish": "poweroff",
            "sourceImage": f"oci://{guest_registry}/disks/demo@{pushed.manifest_digest}",
            "registryAuth": {"username": "pyinit", "password": "vm-secret"}})
        disk = blank_disk(tmp_path / "disk.raw", 2 * demo_image.size)
        with boot(artifacts, tmp_path, f"MYURL={server.guest_url} pyinit.ca={tls_files.inline()}",
                  mac=MAC, disks=[disk]) as vm:
            vm.expect(r"pyinit \S+ starting as PID 1", timeout=90)
            vm.expect_event(step="network", status="ok", timeout=90)
            vm.expect_event(step="action", status="ok", timeout=60)
            vm.expect(r"provision: oci://10\.0\.2\.2:\d+/disks/demo@sha256:[0-9a-f]{64}: "
                      r"manifest sha256:[0-9a-f]{64}, layer sha256:", timeout=60)
            vm.expect_event(step="provision", status="ok", timeout=180)
            result = vm.expect_event(step="result", timeout=30)
            assert vm.wait_exit(timeout=60) == 0
            vm.assert_never(*NEVER, "vm-secret")  # the password is never printed
        log = reg.log.read_text()
    assert result["status"] == "ok", result
    fields = result_line(vm.lines)
    assert fields["registry"] == guest_registry and fields["repository"] == "disks/demo"
    assert fields["manifest_digest"] == pushed.manifest_digest
    assert fields["layer_digest"] == pushed.layer_digest
    assert fields["image"] == f"https://{guest_registry}/v2/disks/demo/blobs/{pushed.layer_digest}"
    assert fields["format"] == "zstd" and fields["checksum_verified"] == "sha256"
    assert int(fields["bytes_written"]) == demo_image.size
    # the registry saw the guest pull with the credentials (htpasswd names the user)
    assert 'auth.user.name="pyinit"' in log or "auth.user.name=pyinit" in log, log[-2000:]
    # The host's own check: the disk holds the image, byte for byte.
    assert sha256_file(disk, demo_image.size) == demo_image.sha256
