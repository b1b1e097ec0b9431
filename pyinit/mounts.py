"""``/proc/self/mounts`` (and ``/proc/swaps``) fields: the one parser. Pure but for :func:`read`.

The kernel escapes space, tab, newline and backslash in these files as octal (``\\040``,
``\\011``, ``\\012``, ``\\134``); every reader goes through :func:`unescape`, so a mount point
with a space in it means the same thing everywhere (unmounting, the rootfs step's idempotence,
the hand-off, the disks' "in use").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTS = Path("/proc/self/mounts")
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """``/mnt/a\\040b`` -> ``/mnt/a b``. Pure."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def parse(text: str) -> list[Mount]:
    """The mounts of a ``/proc/self/mounts`` text, in mount order (short lines skipped). Pure."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append(Mount(unescape(fields[0]), unescape(fields[1]), fields[2],
                             fields[3] if len(fields) > 3 else ""))
    return out


def read(path: Path = MOUNTS) -> list[Mount]:
    """:func:`parse` of ``path``; no mounts when it cannot be read (no /proc yet)."""
    try:
        return parse(path.read_text())
    except OSError:
        return []
