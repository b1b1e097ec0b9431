"""The boot's ``disks`` step against a fake sysfs: inventory on the console and as one event,
/dev/disk links, the action's disk resolved into ``ctx.device`` (or one line naming the hints
and every disk), before anything opens a disk. No commands are run."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import init, log
from pyinit.action import parse_action
from pyinit.cmdline import parse_cmdline
from pyinit.disks import inventory as disk_inventory
from pyinit.errors import DiskError

from .disks.fakes import GIB, FakeSys

WRITE = {"action": "writeImage", "sourceImage": "http://10.0.2.2/demo.img"}


@pytest.fixture
def events() -> Any:
    seen: list[dict[str, Any]] = []
    log.clear_sinks()
    log.add_sink(seen.append)
    yield seen
    log.clear_sinks()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSys:
    """The VM test's machine: virtio 1 GiB "small-os", NVMe 2 GiB "big-data", a USB stick."""
    m = FakeSys(tmp_path)
    pci = "pci0000:00"
    m.disk(f"{pci}/0000:00:04.0/virtio1", "vda", size=GIB, devnum="254:0",
           attrs={"serial": "small-os"})
    m.disk(f"{pci}/0000:00:05.0/nvme/nvme0", "nvme0n1", size=2 * GIB, devnum="259:0",
           attrs={"nsid": "1"}, device_attrs={"model": "QEMU NVMe Ctrl", "serial": "big-data"})
    usb = f"{pci}/0000:00:06.0/usb2/2-1"
    m.disk(f"{usb}/2-1:1.0/host0/target0:0:0/0:0:0:0", "sda", size=GIB // 2, devnum="8:0",
           removable=True, device_attrs={"vendor": "QEMU", "model": "QEMU HARDDISK", "type": "0"})
    (tmp_path / "dev").mkdir()
    monkeypatch.setattr(init, "SYSFS", m.sysfs)
    monkeypatch.setattr(init, "DEV", tmp_path / "dev")
    monkeypatch.setattr(init, "DISK_QUIET", 0.0)
    # nothing mounted: not this host's /proc/self/mounts
    # (the disks step imports it when it runs: patched where it lives)
    monkeypatch.setattr(disk_inventory, "inventory", functools.partial(
        disk_inventory.inventory, mounts_text="", mountinfo_text="", swaps_text=""))
    return m


def run(action: dict[str, Any], cmdline: str = "MYURL=http://10.0.2.2/m") -> init.Context:
    ctx = init.Context(params=parse_cmdline(cmdline + " pyinit.disk_timeout=2"),
                       action=parse_action(action))
    init.step_disks(ctx)
    return ctx


@pytest.mark.parametrize(("patch", "device", "how"), [
    ({"rootDeviceHints": {"serial": "big-data"}}, "/dev/nvme0n1",
     "rootDeviceHints {serial: big-data}"),
    ({}, "/dev/vda", "default rule: smallest usable disk"),
    ({"destinationDevice": "/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_big-data"}, "/dev/nvme0n1",
     "by-id link /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_big-data"),
    ({"destinationDevice": "/dev/sda"}, "/dev/sda", "named"),
    ({"rootDeviceHints": {"tran": "usb"}, "allowRemovable": True}, "/dev/sda",
     "rootDeviceHints {tran: usb}"),
])
def test_the_action_disk_is_resolved(machine: FakeSys, events: list[dict[str, Any]],
                                     capsys: pytest.CaptureFixture[str],
                                     patch: dict[str, Any], device: str, how: str) -> None:
    log.configure(console=__import__("sys").stdout)  # capsys's stdout, whatever ran before
    ctx = run(dict(WRITE, **patch))
    assert (ctx.device, ctx.summary["disk_choice"]) == (device, how)
    inventory = [e for e in events if e["status"] == "inventory"]
    assert [d["name"] for d in inventory[0]["disks"]] == ["nvme0n1", "sda", "vda"]
    assert inventory[0]["disks"][1]["refused"] == ["removable (usb)"]
    out = capsys.readouterr().out
    assert "disks: NAME" in out and "small-os" in out
    link = machine.root / "dev" / "disk" / "by-id" / "virtio-small-os"
    assert os.readlink(link) == "../../vda"


def test_size_makes_the_default_skip_small_disks(machine: FakeSys,
                                                 events: list[dict[str, Any]]) -> None:
    ctx = run(dict(WRITE, size=GIB + (GIB >> 3)))
    assert ctx.device == "/dev/nvme0n1"
    assert ctx.summary["disk_choice"] == "default rule: smallest usable disk of at least 1.1 GiB"
    vda = next(d for d in events[-1]["disks"] if d["name"] == "vda")
    assert vda["refused"] == ["too small for the image (1 GiB < 1.1 GiB)"]


def test_hints_matching_nothing_fail_naming_hints_and_disks(machine: FakeSys,
                                                            events: list[dict[str, Any]]) -> None:
    with pytest.raises(DiskError) as err:
        run(dict(WRITE, rootDeviceHints={"serial": "no-such-disk"}))
    text = str(err.value)
    assert text.startswith("disk selection: no disk matches rootDeviceHints "
                           "{serial: no-such-disk}: have nvme0n1 (2 GiB, QEMU NVMe Ctrl, "
                           "serial big-data): serial big-data does not match no-such-disk")
    assert "vda (1 GiB, serial small-os)" in text and "\n" not in text
    assert [e["status"] for e in events] == ["inventory"]  # shown before failing


def test_capture_by_hints_may_read_a_removable_disk_when_allowed(machine: FakeSys,
                                                                 events: list[Any]) -> None:
    ctx = run({"action": "readImage", "desintationAddress": "http://10.0.2.2/up",
               "rootDeviceHints": {"tran": "usb"}, "allowRemovable": True})
    assert ctx.device == "/dev/sda"


def test_skipped_outside_provisioning(machine: FakeSys, events: list[Any]) -> None:
    ctx = init.Context(params=parse_cmdline("root=/dev/vda entrypoint=/bin/sh"))
    init.step_disks(ctx)
    assert ctx.device is None and events == []
