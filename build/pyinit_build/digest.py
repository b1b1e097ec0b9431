"""File digests for the builders and the tests: one streaming sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pyinit.units import MIB


def sha256_file(path: Path, length: int | None = None) -> str:
    """sha256 of a file (or of its first ``length`` bytes: a disk holding a smaller image)."""
    h = hashlib.sha256()
    left = length if length is not None else -1
    with path.open("rb") as f:
        while left != 0 and (chunk := f.read(4 * MIB if left < 0 else min(4 * MIB, left))):
            h.update(chunk)
            left = left - len(chunk) if left > 0 else left
    return h.hexdigest()
