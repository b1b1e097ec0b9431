"""switch_root: make a program in a mounted root PID 1 (the target's init, or with
``pyinit.exec=1`` the ginit entrypoint itself, see :func:`exec_entrypoint`).

:func:`check_switch_root` checks everything that can make it fail while failing is harmless;
:func:`switch_root` moves /dev, /proc, /sys and /run into the root and execs busybox's
``switch_root``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pyinit import elf, mounts, proc, syscalls
from pyinit.bootcfg.find import resolve_in
from pyinit.errors import HandoffError
from pyinit.log import console, get_logger

log = get_logger("pyinit.switchroot")

BUSYBOX = Path("/bin/busybox")
PSEUDO_MOUNTS = ("/dev", "/proc", "/sys", "/run")  # moved into the new root, as util-linux does


def read_mounts(mounts_file: Path) -> list[tuple[str, str]]:
    """(mount point, fstype) per mount, in mount order."""
    return [(m.target, m.fstype) for m in mounts.parse(mounts_file.read_text())]


def _elf_interpreter(path: Path) -> str | None:
    """PT_INTERP of an ELF64 executable, or None (static, not ELF, unreadable, malformed)."""
    try:
        info = elf.read_info(path)
    except (OSError, elf.ElfError):
        return None
    return info.interp if info is not None else None


def _program(root: Path, name: str, what: str, depth: int = 0) -> str:
    """Check that ``name`` can be exec'd inside ``root``: it exists (symlinks followed inside
    ``root``), is a regular executable file, and so are its ``#!`` or ELF interpreter. A bare
    name is looked up in PATH inside ``root``. Returns the absolute in-root path."""
    if "/" not in name:
        for directory in proc.SAFE_PATH.split(":"):
            if resolve_in(root, f"{directory}/{name}").is_file():
                name = f"{directory}/{name}"
                break
        else:
            raise HandoffError(f"switch_root: {what} {name} not found in PATH inside {root}")
    if not name.startswith("/"):
        raise HandoffError(f"switch_root: {what} {name} must be an absolute path")
    real = resolve_in(root, name)
    if not real.exists():
        link = root / name.lstrip("/")
        if link.is_symlink() or real != link:
            raise HandoffError(f"switch_root: {what} {name} in {root} is a dangling symlink "
                               f"(-> /{real.relative_to(root)}, not there)")
        raise HandoffError(f"switch_root: {what} {name} not found in {root}")
    if not real.is_file():
        raise HandoffError(f"switch_root: {what} {name} in {root} is not a regular file")
    if not os.stat(real).st_mode & 0o111:
        raise HandoffError(f"switch_root: {what} {name} in {root} is not executable")
    if depth < 4:
        with real.open("rb") as f:
            first = f.readline(256)
        interp = None
        if first.startswith(b"#!"):
            words = first[2:].decode(errors="replace").split()
            interp = words[0] if words else None
        else:
            interp = _elf_interpreter(real)
        if interp:
            _program(root, interp, f"interpreter of {name}:", depth + 1)
    return name


def _is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def _is_pid1() -> bool:
    return os.getpid() == 1


def check_switch_root(root: Path, init: str, *, initramfs: Path = Path("/"),
                      busybox: Path = BUSYBOX,
                      mounts_file: Path = Path("/proc/self/mounts")) -> str:
    """Everything that can make a switch_root fail, checked while failing is harmless: we are
    PID 1 on an initramfs (busybox's own sanity checks: ramfs/tmpfs root with a regular
    ``/init``), busybox and its switch_root applet are there, ``root`` is a mount point, and
    ``init`` can be exec'd inside it. Returns init's absolute in-root path."""
    if not _is_pid1():
        raise HandoffError(f"switch_root: only PID 1 can switch root (this is PID {os.getpid()})")
    mounts = read_mounts(mounts_file)
    top = str(root.resolve()) if root.is_absolute() else str(root)
    if top == "/" or top not in {m for m, _ in mounts}:
        raise HandoffError(f"switch_root: {root} is not a mount point (mount the new root "
                           "there first)")
    fstype = next((t for m, t in reversed(mounts) if m == "/"), "")
    if fstype not in ("rootfs", "ramfs", "tmpfs"):
        raise HandoffError(f"switch_root: / is {fstype or 'unknown'}, not the initramfs "
                           "(rootfs/ramfs/tmpfs): refusing to delete its contents")
    if not (initramfs / "init").is_file():
        raise HandoffError(f"switch_root: {initramfs / 'init'} is not a regular file "
                           "(busybox switch_root refuses to run)")
    bb = initramfs / str(busybox).lstrip("/")
    if not bb.is_file() or not os.access(bb, os.X_OK):
        raise HandoffError(f"switch_root: {busybox} missing or not executable")
    if not any((initramfs / d / "switch_root").exists() for d in ("bin", "sbin", "usr/bin",
                                                                  "usr/sbin")):
        raise HandoffError(f"switch_root: {busybox} has no switch_root applet")
    return _program(root, init, "init")


def _move_pseudo(root: Path) -> list[str]:
    """MS_MOVE /dev, /proc, /sys, /run under ``root``, skipping any already mounted there (a
    ginit bind). Returns what moved, for :func:`_move_back`."""
    moved: list[str] = []
    for src in PSEUDO_MOUNTS:
        dst = root / src.lstrip("/")
        if _is_mount(dst) or not _is_mount(Path(src)):
            continue
        try:
            dst.mkdir(mode=0o755, exist_ok=True)
            syscalls.mount(src, str(dst), None, syscalls.MS_MOVE)
        except OSError as exc:
            log.warning(f"switch_root: mount --move {src} {dst}: {exc}")
            continue
        moved.append(src)
    return moved


def _move_back(root: Path, moved: Iterable[str]) -> None:
    for src in moved:
        try:
            syscalls.mount(str(root / src.lstrip("/")), src, None, syscalls.MS_MOVE)
        except OSError as exc:
            log.error(f"switch_root: moving {src} back failed: {exc}")


def _default_signals() -> dict[signal.Signals, Any]:
    """Reset ignored signals to their defaults (SIG_IGN survives execve: Python ignores SIGPIPE
    and SIGXFSZ, pyinit SIGINT). Returns the previous dispositions."""
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGHUP, signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:
            previous[sig] = signal.signal(sig, signal.SIG_DFL)
    return previous


def switch_root(root: Path, init: str = "/sbin/init", argv: Sequence[str] = (), *,
                env: Mapping[str, str] | None = None, controlling_tty: bool = False,
                busybox: Path = BUSYBOX, mounts_file: Path = Path("/proc/self/mounts"),
                initramfs: Path = Path("/")) -> NoReturn:
    """Make ``init`` (a path inside the mounted ``root``) PID 1 with ``argv`` as its arguments.
    PID 1 only. Raises :class:`HandoffError` when something is wrong, before anything changed.

    This execs busybox ``switch_root`` rather than doing it in Python: after the exec nothing
    depends on the initramfs any more, so busybox can delete it (freeing its RAM: pyinit's
    bundle is most of it) and then ``mount --move`` the root, chroot and exec init; Python doing
    the same would be deleting the bundle it still imports from. Everything busybox checks (and
    would die on, panicking the kernel as PID 1) is checked here first, along with init itself
    and its interpreter, inside the target. /dev, /proc, /sys and /run are moved into the root
    first, as util-linux switch_root does (busybox's does not); a mount already there (ginit's
    binds) is kept. ``env`` defaults to :func:`proc.clean_env` (no PyInstaller variables).
    ``controlling_tty``: start a session with stdin (the console) as controlling terminal, as
    ginit's ``setsid -c`` does for a child entrypoint (an init such as systemd sets up its own).
    """
    init = check_switch_root(root, init, initramfs=initramfs, busybox=busybox,
                             mounts_file=mounts_file)
    args = [str(busybox), "switch_root", str(root), init, *argv]
    environment = dict(env) if env is not None else proc.clean_env()
    console(f"pyinit: switch_root into {root}, exec {' '.join([init, *argv])}")
    log.info(f"+ {' '.join(args)}")
    sys.stdout.flush()
    sys.stderr.flush()
    # The point of no return starts here; an execve failure still puts things back.
    moved = _move_pseudo(root)
    previous = _default_signals()
    try:
        if controlling_tty:
            with contextlib.suppress(OSError):  # EPERM: already a session leader
                os.setsid()
            try:
                syscalls.set_controlling_tty(0)
            except OSError as exc:
                log.warning(f"switch_root: no controlling terminal: {exc}")
        os.execve(busybox, args, environment)
    except OSError as exc:
        _move_back(root, reversed(moved))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise HandoffError(f"switch_root: exec {busybox}: {exc.strerror}") from exc


def exec_entrypoint(root: Path, argv: Sequence[str], *, busybox: Path = BUSYBOX,
                    mounts_file: Path = Path("/proc/self/mounts"),
                    initramfs: Path = Path("/")) -> NoReturn:
    """ginit ``pyinit.exec=1``: the entrypoint replaces pyinit as PID 1 inside ``root`` (already
    mounted by :func:`pyinit.ginit.mount_root`), with the console as its controlling terminal
    and the same environment a child entrypoint gets (HOME=/root, TERM=linux, no PyInstaller
    variables). A bare ``argv[0]`` is looked up in PATH inside ``root``."""
    if not argv:
        raise HandoffError("switch_root: empty entrypoint")
    env = proc.clean_env({"HOME": "/root", "TERM": "linux"})
    switch_root(root, argv[0], argv[1:], env=env, controlling_tty=True, busybox=busybox,
                mounts_file=mounts_file, initramfs=initramfs)
