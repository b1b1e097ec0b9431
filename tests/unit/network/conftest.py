"""The network tests' fake sysfs: two NICs, a veth pair end, lo and an InfiniBand port."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fakes import add_nic


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    add_nic(root, "lo", "00:00:00:00:00:00", ifindex=1, physical=False, arptype=772,
            flags="0x9")
    add_nic(root, "eth1", "52:54:00:00:00:02", ifindex=3, carrier="1")
    add_nic(root, "eth0", "52:54:00:00:00:01", ifindex=2, carrier=None, flags="0x1002")
    add_nic(root, "veth0", "02:00:00:00:00:09", ifindex=4, physical=False)
    add_nic(root, "ib0", "80:00:00:48:fe:80", ifindex=5, arptype=32)
    return root
