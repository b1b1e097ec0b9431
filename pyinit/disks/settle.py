"""Waiting for the disks: drivers probe asynchronously (USB mass storage waits a second before
its SCSI scan), so the boot first waits, bounded, until ``/sys/block`` stops changing before it
takes the inventory."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyinit.sysfs import read_attr


@dataclass(frozen=True)
class Settled:
    names: tuple[str, ...]          # /sys/block entries at the end
    seconds: float
    settled: bool                   # False: the timeout ended the wait
    pending: tuple[str, ...] = ()   # USB mass-storage interfaces still without a disk


def _usb_storage_pending(sysfs: Path) -> list[str]:
    """USB mass-storage interfaces (class 08) with a driver bound but no block device yet:
    usb-storage waits ``delay_use`` (1 s) before scanning, so a quiet ``/sys/block`` alone
    would end the wait before the stick shows up. Interfaces without a driver are not waited
    for (no module staged: nothing will come)."""
    pending = []
    with contextlib.suppress(OSError):
        for iface in sorted((sysfs / "bus" / "usb" / "devices").iterdir()):
            if read_attr(iface / "bInterfaceClass") != "08" or not (iface / "driver").exists():
                continue
            if not any(iface.glob("host*/target*/*/block/*")):
                pending.append(iface.name)
    return pending


def block_names(sysfs: Path = Path("/sys")) -> tuple[str, ...]:
    """The entries of ``/sys/block``, sorted (empty if it cannot be read)."""
    try:
        return tuple(sorted(p.name for p in (sysfs / "block").iterdir()))
    except OSError:
        return ()


def settle(sysfs: Path = Path("/sys"), *, timeout: float = 10.0, quiet: float = 1.0,
           baseline: tuple[tuple[str, ...], float] | None = None,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Settled:
    """Wait until ``/sys/block`` has not changed for ``quiet`` seconds and no USB
    mass-storage interface is still scanning, at most ``timeout`` seconds. A timeout is not an
    error (a machine may have a dead card reader): the caller takes the inventory it gets and
    says so.

    ``baseline``: ``(block_names(), clock())`` taken earlier (the boot takes it once the
    drivers are loaded). When the names are still the same, the quiet period counts from then,
    so a boot whose disks appeared before DHCP finished does not wait again."""
    names = functools.partial(block_names, sysfs)
    start = clock()
    seen = names()
    changed = start
    if baseline is not None and baseline[0] == seen:
        changed = min(start, baseline[1])
    while True:
        now = clock()
        pending = _usb_storage_pending(sysfs)
        if now - changed >= quiet and not pending:
            return Settled(seen, round(now - start, 2), True)
        if now - start >= timeout:
            return Settled(seen, round(now - start, 2), False, tuple(pending))
        sleep(0.1)
        current = names()
        if current != seen:
            seen, changed = current, clock()
