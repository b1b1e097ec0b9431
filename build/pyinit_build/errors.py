"""Typed errors of the host-side builder. They share :class:`pyinit.errors.PyinitError` as base
so the CLI prints every expected failure as one line."""

from __future__ import annotations

from collections.abc import Sequence

from pyinit.errors import PyinitError


class BuildError(PyinitError):
    """The initramfs cannot be built (bad input, missing file, failed step)."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"{step}: {reason}")


class PreflightError(BuildError):
    """Host tools are missing. Names every one, with the command that installs it
    (``cpio (apt install cpio)``)."""

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = list(missing)
        listed = ", ".join(f"{tool} ({install})" for tool, install in self.missing)
        super().__init__("preflight", f"missing host tools: {listed}")
