"""Early userspace as data: a tuple of small frozen operations applied in order.

Each operation is idempotent (mounts are checked against ``/proc/self/mounts``, nodes and links
against the filesystem) and prints its shell equivalent for error messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pyinit import mounts, syscalls
from pyinit.errors import MountError


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755

    def shell(self) -> str:
        return f"mkdir -p -m {self.mode:o} {self.path}"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    flags: int = 0
    data: str | None = None

    def shell(self) -> str:
        opts = f" -o {self.data}" if self.data else ""
        return f"mount -t {self.fstype}{opts} {self.source} {self.target}"


@dataclass(frozen=True)
class DevNode:
    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o666

    def shell(self) -> str:
        return f"mknod -m {self.mode:o} {self.path} {self.kind} {self.major} {self.minor}"


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str

    def shell(self) -> str:
        return f"ln -s {self.target} {self.path}"


Op = Dir | Mount | DevNode | Symlink

NOSUID_NODEV_NOEXEC = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC

# What the console needs before anything is logged (init._early_console): the directories,
# /proc, /sys and devtmpfs on /dev.
CONSOLE: tuple[Op, ...] = (
    Dir("/dev"), Dir("/proc"), Dir("/sys"), Dir("/run"), Dir("/tmp", 0o1777),
    Mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC),
    Mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC),
    Mount("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
)
EARLY: tuple[Op, ...] = (
    *CONSOLE,
    # Fallback nodes for when devtmpfs lacks them (or is not configured).
    DevNode("/dev/null", "c", 1, 3), DevNode("/dev/zero", "c", 1, 5),
    DevNode("/dev/random", "c", 1, 8), DevNode("/dev/urandom", "c", 1, 9),
    DevNode("/dev/tty", "c", 5, 0), DevNode("/dev/console", "c", 5, 1, 0o600),
    DevNode("/dev/kmsg", "c", 1, 11, 0o644),
    Dir("/dev/pts"), Dir("/dev/shm", 0o1777),
    Mount("devpts", "/dev/pts", "devpts", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
          "gid=5,mode=620,ptmxmode=666"),
    Mount("tmpfs", "/dev/shm", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
    Mount("tmpfs", "/run", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0755"),
    Mount("tmpfs", "/tmp", "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=1777"),
    Symlink("/dev/fd", "/proc/self/fd"), Symlink("/dev/stdin", "/proc/self/fd/0"),
    Symlink("/dev/stdout", "/proc/self/fd/1"), Symlink("/dev/stderr", "/proc/self/fd/2"),
    Symlink("/dev/ptmx", "pts/ptmx"),
)


def mounted_targets(mounts_file: Path = Path("/proc/self/mounts")) -> set[str]:
    return {m.target for m in mounts.read(mounts_file)}


MountFn = Callable[[str, str, str | None, int, str | None], None]


def apply(ops: Iterable[Op], *, root: Path = Path("/"),
          mount: MountFn = syscalls.mount,
          mounts_file: Path = Path("/proc/self/mounts")) -> list[str]:
    """Apply ``ops`` under ``root``; returns the shell lines of what was actually done."""
    done: list[str] = []
    for op in ops:
        path = root / op.path.lstrip("/") if isinstance(op, Dir | DevNode | Symlink) \
            else root / op.target.lstrip("/")
        if isinstance(op, Dir):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(op.mode)
                done.append(op.shell())
        elif isinstance(op, Mount):
            if str(path) in mounted_targets(mounts_file):
                continue
            path.mkdir(parents=True, exist_ok=True)
            try:
                mount(op.source, str(path), op.fstype, op.flags, op.data)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    continue
                raise MountError(str(path), f"{op.shell()}: {exc.strerror or exc}") from exc
            done.append(op.shell())
        elif isinstance(op, DevNode):
            if path.exists() or path.is_symlink():
                continue
            kind = stat.S_IFCHR if op.kind == "c" else stat.S_IFBLK
            try:
                os.mknod(path, op.mode | kind, os.makedev(op.major, op.minor))
            except FileExistsError:
                continue
            done.append(op.shell())
        elif isinstance(op, Symlink):
            if path.exists() or path.is_symlink():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                path.symlink_to(op.target)
                done.append(op.shell())
    return done
