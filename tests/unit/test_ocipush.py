"""pyinit_build.ocipush: the manifest it writes, credentials from the environment, and a bad
``--push`` reference refused before anything is built. The pushes themselves run against a real
registry in tests/integration/test_oci_registry.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pyinit.oci.parse import Credentials, choose_layer
from pyinit_build import cli, ocipush
from pyinit_build.errors import BuildError

HEX = "cd" * 32


def test_the_manifest_is_orass_for_one_file_and_pyinit_reads_it() -> None:
    body = ocipush.manifest(f"sha256:{HEX}", 1234, "disk.img.zst")
    doc = json.loads(body)
    assert doc["artifactType"] == "application/vnd.pyinit.disk.v1"
    assert doc["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                             "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
                             "data": "e30="}
    layer = choose_layer(body, None)
    assert (layer.digest, layer.size, layer.title) == (f"sha256:{HEX}", 1234, "disk.img.zst")


def test_credentials_come_from_the_environment_both_or_neither() -> None:
    assert ocipush.credentials_from_env({}) is None
    assert ocipush.credentials_from_env({ocipush.USER_ENV: "ci", ocipush.PASSWORD_ENV: "pw"}) \
        == Credentials("ci", "pw")
    with pytest.raises(BuildError, match="set both PYINIT_REGISTRY_USER and"):
        ocipush.credentials_from_env({ocipush.USER_ENV: "ci"})


def test_a_bad_push_reference_fails_before_the_build(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["image", str(tmp_path / "no-rootfs"), "-o", str(tmp_path / "x.img"),
                   "--push", "oci://registry.lab/Disks:v1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "pyinit image: error: push: 'oci://registry.lab/Disks:v1': repository 'Disks'" in err
    assert not (tmp_path / "x.img").exists()


def test_push_wants_a_tag() -> None:
    ref = ocipush.parse_ref(f"oci://registry.lab/disks/x@sha256:{HEX}")
    with pytest.raises(BuildError, match="push to a tag"):
        ocipush.push(Path("/nonexistent"), ref, session=None)  # type: ignore[arg-type]
