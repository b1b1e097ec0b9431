"""Sizes as operators write them: ``1024``, ``64M``, ``64MiB``, ``1.5G``, ``2T`` (binary units).
Pure; shared by the runtime (disk hints), the image builder, the server and the QEMU harness."""

from __future__ import annotations

import argparse
import re

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``1T``, ``500G``, ``64MiB``, ``1024`` -> bytes. Raises ValueError naming the input."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 1024, 64M, 500G, 1T)")
    unit = m.group(2).lower()
    scale = 1024 ** ("kmgtp".index(unit) + 1) if unit else 1
    return int(float(m.group(1)) * scale)


def size_arg(text: str) -> int:
    """:func:`parse_size` for argparse ``type=``: a bad size is a usage error."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
