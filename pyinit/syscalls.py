"""Raw syscalls and ioctls through ctypes. No policy here: thin, typed wrappers that raise OSError.

Everything that needs ctypes or an ioctl lives in this one module so the rest of the runtime can be
tested with plain fakes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
import termios

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# x86_64 syscall numbers (the only architecture pyinit targets today).
SYS_INIT_MODULE = 175
SYS_FINIT_MODULE = 313
SYS_KEXEC_FILE_LOAD = 320

# <linux/fs.h>
BLKRRPART = 0x125F
BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKFLSBUF = 0x1261

# <linux/reboot.h>
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_HALT = 0xCDEF0123
LINUX_REBOOT_CMD_KEXEC = 0x45584543

# <linux/kexec.h>: kexec_file_load flags
KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2

# finit_module flags
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mount(source: str, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def reboot(cmd: int) -> None:
    """reboot(2). Call os.sync() first; this does not return on success."""
    _check(_libc.reboot(ctypes.c_int(cmd)), "reboot")


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    _check(_libc.syscall(SYS_FINIT_MODULE, fd, params.encode(), flags), "finit_module")


def init_module(image: bytes, params: str = "") -> None:
    buf = ctypes.create_string_buffer(image, len(image))
    _check(_libc.syscall(SYS_INIT_MODULE, buf, ctypes.c_ulong(len(image)), params.encode()),
           "init_module")


def kexec_file_load(kernel_fd: int, initrd_fd: int, cmdline: str, flags: int = 0) -> None:
    data = cmdline.encode() + b"\0"
    _check(_libc.syscall(SYS_KEXEC_FILE_LOAD, kernel_fd, initrd_fd, ctypes.c_ulong(len(data)),
                         data, ctypes.c_ulong(flags)), "kexec_file_load")


def set_controlling_tty(fd: int) -> None:
    """ioctl(TIOCSCTTY, 1): make the terminal on ``fd`` the controlling terminal of this session
    (taking it from another session if needed, as root may). Call os.setsid() first."""
    fcntl.ioctl(fd, termios.TIOCSCTTY, 1)


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): this process gets ``sig`` when its parent dies."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def blk_reread_partitions(fd: int) -> None:
    fcntl.ioctl(fd, BLKRRPART)


def blk_size_bytes(fd: int) -> int:
    buf = bytearray(8)
    fcntl.ioctl(fd, BLKGETSIZE64, buf)
    return int(struct.unpack("=Q", bytes(buf))[0])


def blk_sector_size(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, BLKSSZGET, buf)
    return int(struct.unpack("=i", bytes(buf))[0])


def blk_flush_buffers(fd: int) -> None:
    fcntl.ioctl(fd, BLKFLSBUF)


# --- issue #3: zeroing and preallocation for the image writer ----------------------------------

# <linux/fs.h>: BLKZEROOUT = _IO(0x12, 127); its argument is uint64_t[2] = {start, length}.
BLKZEROOUT = 0x127F

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def blk_zeroout(fd: int, offset: int, length: int) -> None:
    """BLKZEROOUT: the range reads back as zeros afterwards (offloaded to the device when it
    supports Write Zeroes / WRITE SAME, else the kernel writes zero pages). ``offset`` and
    ``length`` must be multiples of 512; the fd must be open for writing."""
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("=QQ", offset, length))


# <linux/fs.h>: BLKDISCARD = _IO(0x12, 119), BLKSECDISCARD = _IO(0x12, 125); uint64_t[2] too.
BLKDISCARD = 0x1277
BLKSECDISCARD = 0x127D


def blk_discard(fd: int, offset: int, length: int, *, secure: bool = False) -> None:
    """BLKDISCARD (BLKSECDISCARD with ``secure``) over a byte range of the device open for
    writing on ``fd`` (the erase action, issue #16). EOPNOTSUPP where the device has none."""
    fcntl.ioctl(fd, BLKSECDISCARD if secure else BLKDISCARD, struct.pack("=QQ", offset, length))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with ``mode`` flags (``os.posix_fallocate`` has none)."""
    _check(_libc.fallocate(fd, mode, offset, length), "fallocate")


# --- issue #5: growing a partition the kernel already knows ------------------------------------

# <linux/blkpg.h>: BLKPG = _IO(0x12, 105); struct blkpg_ioctl_arg {int op, flags, datalen;
# void *data;} pointing at struct blkpg_partition {long long start, length; int pno;
# char devname[64], volname[64];}.
BLKPG = 0x1269
BLKPG_RESIZE_PARTITION = 3
_BLKPG_PARTITION = struct.Struct("=qqi64s64s4x")  # 152 bytes, as the kernel lays it out
_BLKPG_ARG = struct.Struct("=iii4xQ")


def blkpg_resize_partition(fd: int, number: int, start: int, length: int) -> None:
    """BLKPG_RESIZE_PARTITION: tell the kernel partition ``number`` of the disk open on ``fd``
    now spans ``length`` bytes from ``start`` (which must not change). Unlike BLKRRPART it works
    while partitions of the disk are in use (what ``partx --update`` and growpart do)."""
    part = ctypes.create_string_buffer(
        _BLKPG_PARTITION.pack(start, length, number, b"", b""), _BLKPG_PARTITION.size)
    arg = _BLKPG_ARG.pack(BLKPG_RESIZE_PARTITION, 0, _BLKPG_PARTITION.size,
                          ctypes.addressof(part))
    fcntl.ioctl(fd, BLKPG, arg)
