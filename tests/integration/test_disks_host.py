"""pyinit.disks against THIS host's real /sys, /dev and /proc (read-only): the inventory must
not crash, must find the disk that holds ``/`` and mark it mounted, and must agree with
util-linux ``lsblk`` (an independent reader of the same sysfs) on size, rotational, removable
and read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyinit.disks.inventory import Disk, inventory
from pyinit.disks.report import inventory_event, inventory_lines
from pyinit.disks.selection import NoDiskError, refusals, select_disk
from tests.hostreq import host_limit, need

pytestmark = pytest.mark.integration


def _root_disk(found: list[Disk]) -> Disk:
    st = os.stat("/")
    number = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    if os.major(st.st_dev) == 0:
        host_limit(f"/ is not on a block device here ({number}: overlay, tmpfs, nfs)",
                   covered_by="tests/vm/test_disks.py (the inventory of real virtio/SCSI/NVMe "
                              "disks)")
    for disk in found:
        if disk.devnum == number or any(p.devnum == number for p in disk.partitions):
            return disk
    raise AssertionError(f"no disk in the inventory holds / ({number}): "
                         f"{[d.name for d in found]}")


def test_host_inventory_finds_the_root_disk() -> None:
    found = inventory(probe=False)
    for line in inventory_lines(found):
        print(line)
    root = _root_disk(found)
    assert root.size > 0
    assert root.mounted, f"{root.name} holds / but is not marked mounted"
    assert root.name not in {d.name for d in found if not refusals(d)}
    assert Path(root.path).exists()
    json.dumps(inventory_event(found))
    # The default rule never picks the disk the host runs from.
    try:
        chosen = select_disk(found)
    except NoDiskError as exc:
        assert root.name in str(exc)
    else:
        assert chosen.name != root.name


def test_host_inventory_agrees_with_lsblk() -> None:
    need("lsblk")
    lsblk = shutil.which("lsblk", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert lsblk is not None
    out = subprocess.run([lsblk, "-J", "-b", "-d", "-o", "NAME,SIZE,ROTA,RM,RO"],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    theirs = {d["name"]: d for d in json.loads(out)["blockdevices"]}
    found = inventory(probe=False)
    assert found, "no disks found"
    for disk in found:
        other = theirs[disk.name]

        def flag(value: object) -> bool:
            return value in (True, 1, "1")
        assert (disk.size, disk.rotational, disk.read_only) == (
            int(other["size"]), flag(other["rota"]), flag(other["ro"])), disk.name
        if not flag(other["rm"]):
            assert disk.removable == (disk.transport == "usb"), disk.name
