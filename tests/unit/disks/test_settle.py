"""pyinit.disks.settle: waiting, bounded, for /sys/block to stop changing."""

from __future__ import annotations

import pytest

from pyinit.disks.settle import block_names, settle

from .fakes import GIB, FakeSys, write_attr

# --- waiting for the disks ------------------------------------------------------------------------

class Clock:
    """A fake clock; ``sleep`` advances it and runs the scheduled sysfs changes."""

    def __init__(self, changes: dict[float, object] | None = None) -> None:
        self.now = 0.0
        self.changes = dict(changes or {})

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 3)
        for at in sorted(self.changes):
            if at <= self.now:
                self.changes.pop(at)()  # type: ignore[operator]


def test_settle_waits_until_block_is_quiet(machine: FakeSys) -> None:
    late = lambda: machine.disk("pci0000:00/0000:00:06.0/virtio3", "vdc",  # noqa: E731
                                size=GIB, devnum="254:32")
    clock = Clock({0.5: late})
    got = settle(machine.sysfs, timeout=10, quiet=1.0, clock=clock, sleep=clock.sleep)
    assert got.settled and "vdc" in got.names
    assert got.seconds == pytest.approx(1.5, abs=0.05)     # quiet for 1 s after the change


def test_settle_is_bounded_and_names_pending_usb_storage(machine: FakeSys) -> None:
    iface = machine.sysfs / "bus" / "usb" / "devices" / "2-1:1.0"
    write_attr(iface / "bInterfaceClass", "08")
    (iface / "driver").mkdir()                     # usb-storage bound, SCSI scan not done
    clock = Clock()
    got = settle(machine.sysfs, timeout=3, quiet=1.0, clock=clock, sleep=clock.sleep)
    assert not got.settled and got.pending == ("2-1:1.0",)
    assert got.seconds == pytest.approx(3, abs=0.05)
    write_attr(iface / "host9" / "target9:0:0" / "9:0:0:0" / "block" / "sdd" / "size", "8")
    clock = Clock()
    assert settle(machine.sysfs, timeout=3, quiet=1.0, clock=clock,
                  sleep=clock.sleep).settled


def test_settle_ignores_usb_storage_without_a_driver(machine: FakeSys) -> None:
    write_attr(machine.sysfs / "bus" / "usb" / "devices" / "2-1:1.0" / "bInterfaceClass", "08")
    clock = Clock()
    assert settle(machine.sysfs, timeout=3, clock=clock, sleep=clock.sleep).settled


def test_settle_counts_quiet_from_an_unchanged_baseline(machine: FakeSys) -> None:
    """The boot takes /sys/block once the drivers are loaded; seconds later (DHCP, the action)
    the same names mean the disks have been quiet all along: no second wait."""
    clock = Clock()
    clock.now = 5.0
    before = (block_names(machine.sysfs), 2.0)
    got = settle(machine.sysfs, timeout=10, quiet=1.0, baseline=before, clock=clock,
                 sleep=clock.sleep)
    assert got.settled and got.seconds == 0


def test_settle_waits_when_the_baseline_differs(machine: FakeSys) -> None:
    clock = Clock()
    clock.now = 5.0
    stale = (("vda",), 2.0)  # a disk appeared (or went) since: the quiet period starts now
    got = settle(machine.sysfs, timeout=10, quiet=1.0, baseline=stale, clock=clock,
                 sleep=clock.sleep)
    assert got.settled and got.seconds == pytest.approx(1.0, abs=0.15)
