"""The inventory as the disks step shows it: a one-screen console table and the ``disks`` event
for the server, each disk with why the default rule would refuse it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pyinit.disks.inventory import Disk, human_size
from pyinit.disks.selection import refusals

_COLUMNS = ("NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "WWN", "ROT", "RM", "BY-PATH", "STATE")


def inventory_lines(disks: Sequence[Disk], *, min_size: int | None = None) -> list[str]:
    """A one-screen table, one disk per line; STATE is ``ok`` or why the default rule would
    refuse the disk. Pure."""
    rows = [_COLUMNS]
    for d in disks:
        why = refusals(d, min_size=min_size)
        rows.append((d.name, human_size(d.size), d.transport or "-", _cut(d.model, 24),
                     _cut(d.serial, 20), _cut(d.wwn, 22), "1" if d.rotational else "0",
                     "1" if d.removable else "0", _cut(d.by_path, 48),
                     "; ".join(why) if why else "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    if not disks:
        lines.append("(no disks)")
    return [line.rstrip() for line in lines]


def _cut(text: str | None, width: int) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[:width - 1] + "~"


def inventory_event(disks: Sequence[Disk], *, min_size: int | None = None) -> dict[str, Any]:
    """The fields of the ``disks`` event for the server: every disk with its attributes, its
    stable names and why the default rule refuses it. Pure."""
    out = []
    for d in disks:
        item = asdict(d)
        item["path"] = d.path
        item["partitions"] = [asdict(p) for p in d.partitions]
        item["refused"] = refusals(d, min_size=min_size)
        out.append(item)
    return {"count": len(disks), "disks": out}
