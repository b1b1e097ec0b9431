"""Command-line values that name a file in the initramfs or carry it inline (``pyinit.ca=``,
``pyinit.keyring=``): an absolute path, or ``base64:<the file's bytes>``. Pure."""

from __future__ import annotations

import base64
import binascii

PREFIX = "base64:"


def path_or_bytes(value: str, *, example: str, inline: str) -> tuple[str | None, bytes | None]:
    """``(path, None)`` for an absolute path, ``(None, decoded bytes)`` for ``base64:…``
    (padding may be left off: boot loaders and hand-typed values drop it). Raises ValueError
    with one line: ``example`` is a path and ``inline`` what the base64 should hold, for the
    message."""
    v = value.strip()
    if v.startswith("/"):
        return v, None
    if not v.startswith(PREFIX):
        raise ValueError(f"expected a path ({example}) or {PREFIX}<{inline}>, got {v[:40]!r}")
    data = v[len(PREFIX):]
    try:
        return None, base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64 ({len(data)} characters): {exc}") from exc
