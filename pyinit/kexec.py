"""kexec: boot the written system's kernel without going through the firmware again.

:func:`kexec` loads a :class:`~pyinit.bootcfg.entry.BootEntry` with kexec_file_load(2) and jumps
into it. Everything that can fail (missing files, lockdown, signature policy, unknown image
format) fails in :func:`kexec_load`, before anything is unmounted, so the caller can still apply
its failure policy with the written disk intact; :func:`kexec_reboot` is the point of no return.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pyinit import policy, syscalls
from pyinit.bootcfg.entry import BootEntry
from pyinit.bootcfg.find import resolve_in
from pyinit.errors import HandoffError
from pyinit.log import get_logger

log = get_logger("pyinit.kexec")


def concat_initrds(paths: Sequence[Path], out: BinaryIO) -> int:
    """Write ``paths`` one after the other into ``out``, each padded with zeros to a multiple of
    4 bytes as GRUB does (the kernel unpacks concatenated cpio archives, compressed or not,
    and skips the zero padding between them). Returns the bytes written."""
    total = 0
    for path in paths:
        with path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            size = src.tell()
        pad = -size % 4
        out.write(b"\0" * pad)
        total += size + pad
    return total


_KEXEC_HINTS = {
    errno.EPERM: "kernel lockdown (Secure Boot) or kernel.kexec_load_disabled=1? the running "
                 "kernel refuses to load another one",
    errno.EACCES: "refused by the IMA appraisal policy (Secure Boot?)",
    errno.ENOEXEC: "not a kernel image this kernel can load (bzImage for x86_64 expected)",
    errno.ENOSYS: "the running kernel lacks CONFIG_KEXEC_FILE",
    errno.EKEYREJECTED: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.EBADMSG: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.ENOKEY: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.ENODATA: "it is not signed and the running kernel requires signatures",
    errno.EBUSY: "another kexec load is in progress",
    errno.ENOMEM: "not enough memory for the kernel and initrd",
    errno.EINVAL: "invalid image or command line too long",
    errno.ETXTBSY: "the kernel or initrd file is open for writing",
}


def kexec_load(entry: BootEntry, root: Path, *, extra_cmdline: str = "",
               scratch: Path = Path("/run")) -> str:
    """kexec_file_load(2) ``entry`` (paths inside ``root``); several initrds are concatenated
    into one file in ``scratch`` (tmpfs) first. Touches nothing else: on failure nothing is
    loaded or unmounted. Returns the command line loaded."""
    cmdline = " ".join(f"{entry.cmdline} {extra_cmdline}".split())
    if "root=" not in cmdline:
        log.warning(f"kexec: no root= on the command line {cmdline!r}")
    kernel = resolve_in(root, entry.kernel)
    initrds = [resolve_in(root, p) for p in entry.initrds]
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(kernel, os.O_RDONLY | os.O_CLOEXEC))
            if len(initrds) == 1:
                fds.append(os.open(initrds[0], os.O_RDONLY | os.O_CLOEXEC))
            elif initrds:
                fds.append(_concatenated(initrds, scratch))
        except OSError as exc:
            raise HandoffError(f"kexec: {exc.filename or kernel}: {exc.strerror}") from exc
        initrd_fd = fds[1] if len(fds) > 1 else -1
        flags = 0 if initrd_fd >= 0 else syscalls.KEXEC_FILE_NO_INITRAMFS
        log.info(f"kexec: loading {entry.kernel} ({' + '.join(entry.initrds) or 'no initrd'}) "
                 f"from {root}: {cmdline}")
        try:
            syscalls.kexec_file_load(fds[0], initrd_fd, cmdline, flags)
        except OSError as exc:
            hint = _KEXEC_HINTS.get(exc.errno or 0, "see dmesg")
            raise HandoffError(f"kexec_file_load: {os.strerror(exc.errno or 0)} — {hint} "
                               f"({entry.kernel} in {root})") from exc
    finally:
        for fd in fds:
            os.close(fd)
    return cmdline


def _concatenated(paths: Sequence[Path], scratch: Path) -> int:
    """A read-only fd on the concatenation of ``paths`` (the file itself is already unlinked:
    kexec_file_load refuses files open for writing, ETXTBSY)."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="kexec-initrd-", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as out:
            size = concat_initrds(paths, out)
        log.info(f"kexec: {len(paths)} initrds concatenated ({size} bytes)")
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.unlink(name)


def kexec_reboot(mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """The point of no return: sync, unmount everything (the target too), reboot(2) into the
    loaded kernel. Returns only by raising, if reboot(2) itself failed. (The handoff step has
    said ``pyinit: kexec now``.)"""
    policy.quiesce(mounts_file)
    try:
        syscalls.reboot(syscalls.LINUX_REBOOT_CMD_KEXEC)
    except OSError as exc:
        raise HandoffError(f"reboot(LINUX_REBOOT_CMD_KEXEC): {exc.strerror} (the kernel was "
                           "loaded; filesystems are already unmounted)") from exc


def kexec(entry: BootEntry, root: Path, *, extra_cmdline: str = "",
          scratch: Path = Path("/run"), mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """:func:`kexec_load` then :func:`kexec_reboot`. Raises :class:`HandoffError`; when it
    comes from the load, nothing has been unmounted."""
    kexec_load(entry, root, extra_cmdline=extra_cmdline, scratch=scratch)
    kexec_reboot(mounts_file)
