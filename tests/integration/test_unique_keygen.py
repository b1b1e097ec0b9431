"""The configure step's SSH host keys made with a real ssh-keygen (the initramfs's copy, as
when the target has none), checked by ssh-keygen itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyinit import identity, unique
from tests import hostreq
from tests.unit.test_unique import put

pytestmark = pytest.mark.integration
SSH_KEYGEN = shutil.which("ssh-keygen", path=hostreq.SEARCH)


@pytest.fixture(autouse=True)
def _keygen() -> None:
    hostreq.need("ssh-keygen")


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run([SSH_KEYGEN or "", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    listed = subprocess.run([SSH_KEYGEN or "", "-l", "-f", str(key) + ".pub"], check=True,
                            capture_output=True, text=True).stdout.split()[1]
    assert unique.fingerprint(Path(str(key) + ".pub").read_text()) == listed
    with pytest.raises(ValueError):
        unique.fingerprint("ssh-ed25519")


def test_refresh_uses_the_initramfs_keygen_when_the_target_has_none(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "etc/ssh/sshd_config", "HostKey /etc/ssh/ssh_host_ed25519_key\n")
    fresh = unique.refresh(root, hostname=None, write=identity.write_file,
                           initramfs_keygen=SSH_KEYGEN)
    assert fresh.keygen == "initramfs" and [k.type for k in fresh.host_keys] == ["ed25519"]
    private = root / "etc/ssh/ssh_host_ed25519_key"
    assert private.stat().st_mode & 0o777 == 0o600
    listed = subprocess.run([SSH_KEYGEN or "", "-l", "-f", str(private)], check=True,
                            capture_output=True, text=True).stdout.split()
    assert listed[1] == fresh.host_keys[0].fingerprint and listed[2] == "root@localhost"
    assert fresh.machine_id == "" and not (root / "etc/machine-id").exists()  # no systemd
