"""Shared fakes for unit tests."""

from __future__ import annotations


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
