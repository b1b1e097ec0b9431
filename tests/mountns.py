"""A private mount namespace for the calling thread, for tests that mount a filesystem and then
read its device offline.

Why: ``ip netns exec`` (the DHCP tests' dnsmasq) and ``unshare -m`` copy *every* mount of the
namespace they start from. A copy made while a test's XFS is mounted keeps that superblock alive
after the test's own ``umount``, so nothing is written back and ``xfs_repair -n`` reads a primary
superblock that "would have been modified" (seen in a fresh-clone run; reproduced by hand with
``unshare -m sleep`` across the umount). Mounting inside a namespace of its own keeps the test's
mounts out of everyone else's copies.

Only the calling thread moves (unshare(CLONE_NEWNS) unshares its fs_struct, not the process's); it
is moved back, with its working directory, when the block ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from pyinit import syscalls

CLONE_NEWNS = 0x00020000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _call(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextlib.contextmanager
def private_mounts() -> Iterator[None]:
    """Run the block in a fresh mount namespace whose mounts propagate nowhere."""
    home = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _call(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        try:
            syscalls.mount("none", "/", None, syscalls.MS_REC | MS_PRIVATE)
            yield
        finally:
            # back home; setns moves the thread's root and cwd to the namespace's root
            _call(_libc.setns(home, CLONE_NEWNS), "setns(CLONE_NEWNS)")
            os.fchdir(cwd)
    finally:
        os.close(home)
        os.close(cwd)
