"""Mount the written system and bind the initramfs's /dev, /proc, /sys, /run into it, for tools
run through ``chroot`` (growing its filesystem, writing its identity).

:func:`mounted_target` is a context manager: whatever it mounted is unmounted in reverse order when
the block ends, also when the body raises. A failing unmount is logged and the unwinding goes on;
the first error wins (the body's, else the first unmount's).

resolv.conf: the initramfs's ``/etc/resolv.conf`` is bound over the target's only when the target
has a regular file there. A symlink (systemd-resolved's ``../run/systemd/resolve/stub-resolv.conf``)
or a missing file is left alone: the target is never given files it did not have, and nothing has
to be removed afterwards (a crash between create and remove would leave a stray file behind).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit import ginit, syscalls
from pyinit.errors import MountError
from pyinit.log import get_logger

log = get_logger("pyinit.target")

DEFAULT_BINDS = ("/dev", "/proc", "/sys", "/run")
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class Target:
    root: Path    # where the target's root filesystem is mounted
    device: str
    fstype: str
    read_only: bool = False


def detect_fstype(device: str) -> str | None:
    """The filesystem type blkid sees on ``device``, probed afresh (no cache)."""
    return ginit.blkid_tags(device).get("TYPE")


def load_fs_module(fstype: str, *, load: ginit.Loader = ginit.load_modules,
                   modules_dir: Path | None = None) -> None:
    """Load the module that provides ``fstype`` (modules.alias ``fs-<type>``), as ginit does:
    filesystems have no device modalias, so coldplug never loads them."""
    base = modules_dir or Path("/lib/modules") / os.uname().release
    try:
        aliases = (base / "modules.alias").read_text()
    except OSError:
        aliases = ""
    load([ginit.fs_module(fstype, aliases)])


def _shell(source: str, target: Path, fstype: str | None, flags: int) -> str:
    """The mount(8) equivalent of one mount(2) call, for messages. Pure."""
    opts = []
    if flags & syscalls.MS_BIND:
        opts.append("rbind" if flags & syscalls.MS_REC else "bind")
    if flags & syscalls.MS_RDONLY:
        opts.append("ro")
    return " ".join(["mount", *(["-t", fstype] if fstype else []),
                     *(["-o", ",".join(opts)] if opts else []), source, str(target)])


@contextlib.contextmanager
def mounted_target(device: str, mountpoint: Path = Path("/newroot"), *,
                   fstype: str | None = None, binds: Sequence[str] = DEFAULT_BINDS,
                   resolv_conf: Path | None = RESOLV_CONF, read_only: bool = False,
                   load: ginit.Loader = ginit.load_modules,
                   modules_dir: Path | None = None) -> Iterator[Target]:
    """Mount ``device`` on ``mountpoint`` (type from blkid unless given; its module loaded on
    demand), bind each of ``binds`` (recursively: /dev/pts, /sys/firmware/efi/efivars come along)
    over the directory of the same name in it (skipped when the target has no such directory),
    and ``resolv_conf`` over the target's /etc/resolv.conf (see the module docstring). Yields a
    :class:`Target`; unmounts everything in reverse order on the way out.
    """
    fs = fstype or detect_fstype(device)
    if not fs:
        raise MountError(str(mountpoint), f"cannot tell the filesystem type of {device}")
    load_fs_module(fs, load=load, modules_dir=modules_dir)
    mounted: list[tuple[Path, int]] = []  # (path, umount2 flags), in mount order

    def mount(source: str, target: Path, mtype: str | None, flags: int, undo: int) -> None:
        try:
            syscalls.mount(source, str(target), mtype, flags, None)
        except OSError as exc:
            raise MountError(str(target), f"{_shell(source, target, mtype, flags)}: "
                             f"{exc.strerror}") from exc
        mounted.append((target, undo))

    failed: BaseException | None = None
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        mount(device, mountpoint, fs, syscalls.MS_RDONLY if read_only else 0, 0)
        log.info(f"target: mounted {device} ({fs}) on {mountpoint}"
                 + (" read-only" if read_only else ""))
        for src in binds:
            dest = mountpoint / src.lstrip("/")
            if not dest.is_dir() or dest.is_symlink():
                log.info(f"target: no {src} directory in the target; not bound")
                continue
            # Detached on the way out: a recursive bind has submounts (/dev/pts) that a plain
            # umount would call busy.
            mount(src, dest, None, syscalls.MS_BIND | syscalls.MS_REC, syscalls.MNT_DETACH)
            # ... and a slave of the original: where the original is a shared mount (a host's
            # /run/netns), unmounting the copy's submounts would otherwise unmount the
            # original's too (a network namespace's name gone from under it)
            try:
                syscalls.mount("none", str(dest), None, syscalls.MS_SLAVE | syscalls.MS_REC,
                               None)
            except OSError as exc:
                raise MountError(str(dest), f"mount --make-rslave {dest}: {exc.strerror}") \
                    from exc
        if resolv_conf is not None and resolv_conf.is_file():
            dest = mountpoint / "etc" / "resolv.conf"
            if dest.is_file() and not dest.is_symlink():
                mount(str(resolv_conf), dest, None, syscalls.MS_BIND, 0)
            else:
                log.info("target: its /etc/resolv.conf is a symlink or missing; not bound")
        yield Target(mountpoint, device, fs, read_only)
    except BaseException as exc:
        failed = exc
        raise
    finally:
        first = _unmount_all(mounted)
        if failed is None and first is not None:
            raise first


def _unmount_all(mounted: list[tuple[Path, int]]) -> MountError | None:
    """Unmount in reverse order, going on past failures; returns the first failure."""
    first: MountError | None = None
    for path, flags in reversed(mounted):
        try:
            syscalls.umount(str(path), flags)
        except OSError as exc:
            err = MountError(str(path), f"umount: {exc.strerror}")
            log.error(f"target: {err}")
            first = first or err
    mounted.clear()
    return first
