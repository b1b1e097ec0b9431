"""Shared fakes and helpers for unit tests."""

from __future__ import annotations

from pathlib import Path


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps; records the sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def write(root: Path, rel: str, data: str | bytes = "x") -> Path:
    """``rel`` under ``root`` with ``data`` (directories made as needed)."""
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path
