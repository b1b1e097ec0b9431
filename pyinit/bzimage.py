"""The release string an x86 bzImage carries in its setup header (``6.1.0-9-amd64``): which
kernel a file is, whatever its name. Shared by the hand-off (which kernel a ``/vmlinuz`` link
boots) and the image builder (the release of a ``--kernel`` file)."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = 0x210  # the setup header up to kernel_version (0x20E, u16)
_RELEASE = re.compile(r"[\w.+~-]+")


def release(header: bytes, version_text: bytes) -> str | None:
    """The release from the first 0x210 bytes of a bzImage and the bytes at its
    ``kernel_version`` pointer (:func:`version_offset`). Pure."""
    text = version_text.split(b"\0", 1)[0].decode("ascii", "replace").split(" ", 1)[0]
    return text if version_offset(header) is not None and _RELEASE.fullmatch(text) else None


def version_offset(header: bytes) -> int | None:
    """Where the version string starts in the file, or None if this is no bzImage. Pure."""
    if len(header) < HEADER or header[0x202:0x206] != b"HdrS":
        return None
    pointer = int.from_bytes(header[0x20E:0x210], "little")
    return pointer + 0x200 if pointer else None


def image_release(image: bytes) -> str | None:
    """:func:`release` of a whole kernel image in memory. Pure."""
    offset = version_offset(image[:HEADER])
    return None if offset is None else release(image[:HEADER], image[offset:offset + 256])


def read_release(path: Path) -> str | None:
    """:func:`release` of the kernel file at ``path``; None if it is not a bzImage or
    cannot be read."""
    try:
        with path.open("rb") as f:
            header = f.read(HEADER)
            offset = version_offset(header)
            if offset is None:
                return None
            f.seek(offset)
            return release(header, f.read(256))
    except OSError:
        return None
