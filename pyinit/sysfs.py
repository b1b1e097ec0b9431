"""The one reader of the kernel's small text files (sysfs attributes, /proc/sys entries) that
the disk, network, capture and writer modules share."""

from __future__ import annotations

from pathlib import Path


def read_attr(path: Path) -> str | None:
    """A sysfs attribute, stripped (trailing NULs too, which some drivers leave); None when
    absent, unreadable (EINVAL: the carrier of a down link) or empty."""
    try:
        text = path.read_bytes().decode("utf-8", "replace").strip().strip("\0").strip()
    except OSError:
        return None
    return text or None
