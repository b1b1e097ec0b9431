"""Paths inside a target root, as a chroot sees them. Reads symlinks; no other I/O.

:func:`resolve` follows every symlink with ``root`` as ``/`` (an absolute target means
``root/target``, ``..`` stops at ``root``), so the result never lies outside ``root``; it may
not exist (a dangling link resolves to its missing target). ``os.path.realpath`` would follow
absolute links on the host: the hand-off (kernels, init) and the configure step (the target's
files) both need the target's view.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyinit.errors import PyinitError

MAX_LINKS = 40  # as the kernel's ELOOP limit


class SymlinkLoop(PyinitError):
    def __init__(self, path: str, root: Path) -> None:
        self.path = path
        super().__init__(f"{path} in {root}: too many levels of symbolic links")


def parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve(root: Path, path: str, *, follow_last: bool = True,
            max_links: int = MAX_LINKS) -> Path:
    """``path`` under ``root`` with symlinks followed inside ``root``; with
    ``follow_last=False`` a final symlink is not followed. Raises :class:`SymlinkLoop`."""
    todo = list(reversed(parts(path)))
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if (todo or follow_last) and candidate.is_symlink():
            links += 1
            if links > max_links:
                raise SymlinkLoop("/" + path.lstrip("/"), root)
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo.extend(reversed(parts(target)))
            continue
        done.append(part)
    return root.joinpath(*done)
