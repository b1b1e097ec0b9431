"""The destination block device: the checks before the first byte (an existing block device that
nothing mounts, swaps on or holds), waiting for it to appear, and :class:`Target`, the device
opened ``O_EXCL`` (``O_DIRECT`` by default): aligned writes, zero runs with ``BLKZEROOUT``
(regular files: ``fallocate``), fsync, wiping the partition tables, re-reading them."""

from __future__ import annotations

import errno
import mmap
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from pyinit import grow, syscalls
from pyinit.disks.usage import Usage, check_device
from pyinit.errors import DiskError
from pyinit.log import get_logger
from pyinit.sysfs import read_attr
from pyinit.units import MIB

log = get_logger("pyinit.image")

HEAD = MIB  # held back and written last
MAX_ZERO_CALL = 1 << 30  # one BLKZEROOUT/fallocate call zeroes at most this much
DIRECT_DEFAULT = True  # O_DIRECT for block devices: measured faster (see write_image)


def destination_conflict(usage: Usage) -> str | None:
    """Why a disk with ``usage`` may not be written (every use refuses), or None. Pure."""
    for use in usage.conflicts("write")[:1]:
        if use.kind == "holder":
            return f"{use.sentence} (LVM/MD/device-mapper): release it first"
        return use.sentence
    return None


def check_destination(device: str, *, proc: Path = Path("/proc"), sysfs: Path = Path("/sys"),
                      allow_regular_file: bool = False) -> None:
    """Refuse anything but an existing block device that nothing mounts, swaps on or holds
    (:func:`pyinit.disks.usage.check_device`). (Regular files are for tests, with
    ``allow_regular_file``.)"""
    check_device(device, destination_conflict, allow_regular_file=allow_regular_file,
                 proc=proc, sysfs=sysfs)


def wait_for_device(device: str, timeout: float, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Drivers probe asynchronously after module load: wait (bounded) for the node."""
    deadline = clock() + timeout
    while not os.path.exists(device):
        if clock() >= deadline:
            raise DiskError(device, f"did not appear within {timeout:.0f} s")
        sleep(0.1)


def zeroes_offloaded(sysfs: Path, rdev: int) -> bool | None:
    """Whether the device does Write Zeroes itself (``queue/write_zeroes_max_bytes`` > 0; a
    partition's queue is its disk's). None when sysfs does not say."""
    node = sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
    for queue_dir in (node / "queue", node / ".." / "queue"):
        value = read_attr(queue_dir / "write_zeroes_max_bytes") or ""
        if value.isdigit():
            return int(value) > 0
    return None


def aligned(size: int) -> mmap.mmap:
    """A page-aligned anonymous buffer (O_DIRECT needs aligned memory)."""
    return mmap.mmap(-1, size)


_ZEROS = aligned(MIB)  # never written to


class Target:
    """The opened destination: aligned writes, zeroing, sync. Every mutating call sets
    ``touched`` first (the caller wipes partition tables after a failure only if it is set)."""

    def __init__(self, fd: int, path: str, *, block_device: bool, capacity: int | None,
                 direct: bool, sector: int, buffered_fd: int | None = None) -> None:
        self.fd = fd
        self.buffered_fd = fd if buffered_fd is None else buffered_fd  # for unaligned writes
        self.path = path
        self.block_device = block_device
        self.capacity = capacity  # None: a regular file that grows
        self.direct = direct
        self.sector = sector
        self.touched = False
        self.zero_method = "BLKZEROOUT" if block_device else "fallocate ZERO_RANGE"
        self.zero_offload: bool | None = None  # queue/write_zeroes_max_bytes > 0
        self._offload_source: tuple[Path, int] | None = None  # (sysfs, rdev): to look again

    @classmethod
    def open(cls, path: str, *, allow_regular_file: bool = False,
             direct: bool | None = None, sysfs: Path = Path("/sys")) -> Target:
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise DiskError(path, "does not exist") from exc
        block_device = stat.S_ISBLK(st.st_mode)
        if not block_device and not (allow_regular_file and stat.S_ISREG(st.st_mode)):
            raise DiskError(path, "is not a block device")
        flags = os.O_WRONLY | os.O_CLOEXEC
        if block_device:
            flags |= os.O_EXCL  # fails if anything holds it: a mount, swap, LVM, MD, a writer
        use_direct = block_device and (DIRECT_DEFAULT if direct is None else direct)
        try:
            fd = os.open(path, flags | (os.O_DIRECT if use_direct else 0))
        except OSError as exc:
            if exc.errno == errno.EINVAL and use_direct:
                use_direct = False
                fd = os.open(path, flags)
            elif exc.errno == errno.EBUSY:
                raise DiskError(path, "is in use (cannot open it exclusively: mounted, swap, "
                                "LVM/MD/device-mapper or another writer)") from exc
            else:
                raise DiskError(path, f"cannot open: {exc.strerror}") from exc
        buffered_fd = None
        try:
            if block_device:
                capacity: int | None = syscalls.blk_size_bytes(fd)
                sector = syscalls.blk_sector_size(fd)
            else:
                capacity, sector = st.st_size or None, 512
            if use_direct:  # same device, page cache: for an unaligned tail (we hold O_EXCL)
                buffered_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(fd)
            raise DiskError(path, f"cannot open: {exc.strerror}") from exc
        target = cls(fd, path, block_device=block_device, capacity=capacity,
                     direct=use_direct, sector=sector, buffered_fd=buffered_fd)
        if block_device:
            target.zero_offload = zeroes_offloaded(sysfs, st.st_rdev)
            target._offload_source = (sysfs, st.st_rdev)
        return target

    def offload_refused(self) -> bool:
        """After the zeroing: whether a device that advertised Write Zeroes refused them (the
        kernel then drops its limit to 0 and writes zero pages itself, as loop devices over a
        file system without ZERO_RANGE do). :attr:`zero_offload` is updated to match."""
        if self.zero_offload is not True or self._offload_source is None:
            return False
        if zeroes_offloaded(*self._offload_source) is not False:
            return False
        self.zero_offload = False
        return True

    def close(self) -> None:
        if self.buffered_fd != self.fd:
            os.close(self.buffered_fd)
        os.close(self.fd)

    def describe(self) -> str:
        size = f"{self.capacity / 1e9:.1f} GB" if self.capacity else "growing file"
        io = "O_DIRECT" if self.direct else "buffered"
        how = {True: ", offloaded to the device", False: ", the kernel writes the zeros",
               None: ""}[self.zero_offload]
        return f"{self.path} ({size}, {io}, zero runs via {self.zero_method}{how})"

    def _pwrite(self, fd: int, offset: int, data: memoryview | bytes | mmap.mmap) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            if exc.errno == errno.ENOSPC or (exc.errno == errno.EINVAL and self.capacity
                                            and offset >= self.capacity):
                raise DiskError(self.path, f"image is larger than the disk "
                                f"({self.capacity} bytes)") from exc
            raise DiskError(self.path, f"write at byte {offset} failed: "
                            f"{exc.strerror}") from exc

    def write(self, offset: int, data: memoryview | bytes | mmap.mmap) -> None:
        """Thread-safe (pwrite). O_DIRECT needs sector-aligned offsets and lengths: an unaligned
        piece (an image's odd tail) goes through the page cache; fsync follows."""
        self.touched = True
        aligned = offset % self.sector == 0 and len(data) % self.sector == 0
        self._pwrite(self.fd if aligned else self.buffered_fd, offset, data)

    def write_zeros(self, offset: int, length: int) -> None:
        """Zeros through write(): for short runs and as the fallback."""
        self.touched = True
        view = memoryview(_ZEROS)
        while length > 0:
            n = min(length, len(view))
            self.write(offset, view[:n])
            offset += n
            length -= n

    def zero(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros without sending zeros through write()."""
        self.touched = True
        if self.block_device:
            self._blkzeroout(offset, length)
        else:
            self._fallocate_zero(offset, length)

    def _blkzeroout(self, offset: int, length: int) -> None:
        end = offset + length
        body_end = end - end % self.sector
        pos = offset
        if offset % self.sector == 0 and self.zero_method == "BLKZEROOUT":
            while pos < body_end:
                n = min(body_end - pos, MAX_ZERO_CALL)
                try:
                    syscalls.blk_zeroout(self.fd, pos, n)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                        raise DiskError(self.path, f"BLKZEROOUT at byte {pos} failed: "
                                        f"{exc.strerror}") from exc
                    log.warning(f"provision: BLKZEROOUT unsupported on {self.path} "
                                f"({exc.strerror}); writing zeros instead")
                    self.zero_method = "write"
                    break
                pos += n
        self.write_zeros(pos, end - pos)

    def _fallocate_zero(self, offset: int, length: int) -> None:
        modes = {"fallocate ZERO_RANGE": syscalls.FALLOC_FL_ZERO_RANGE,
                 "fallocate PUNCH_HOLE": syscalls.FALLOC_FL_PUNCH_HOLE
                 | syscalls.FALLOC_FL_KEEP_SIZE}
        while self.zero_method in modes:
            try:
                syscalls.fallocate(self.fd, modes[self.zero_method], offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise DiskError(self.path, f"fallocate at byte {offset} failed: "
                                    f"{exc.strerror}") from exc
                self.zero_method = ("fallocate PUNCH_HOLE"
                                    if self.zero_method == "fallocate ZERO_RANGE" else "write")
                continue
            if self.zero_method == "fallocate PUNCH_HOLE" and \
                    os.fstat(self.fd).st_size < offset + length:
                os.ftruncate(self.fd, offset + length)  # KEEP_SIZE: a hole past the end
            return
        self.write_zeros(offset, length)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)  # a block device's page cache is shared: covers buffered_fd
            if self.buffered_fd != self.fd:
                os.fsync(self.buffered_fd)
        except OSError as exc:
            raise DiskError(self.path, f"fsync failed: {exc.strerror}") from exc

    def wipe_tables(self) -> None:
        """Zero the first and last MiB (MBR/GPT and the GPT backup), then fsync."""
        self.touched = True
        size = self.capacity if self.capacity is not None else os.fstat(self.fd).st_size
        self.write_zeros(0, min(HEAD, size))
        if size > HEAD:
            start = max(HEAD, size - HEAD)
            self.write_zeros(start, size - start)
        self.sync()

    def reread_partitions(self, *, attempts: int = 10,
                          sleep: Callable[[float], None] = time.sleep) -> None:
        """BLKRRPART, retried while EBUSY (one policy for the writer and the grow step)."""
        grow.reread(self.fd, self.path, attempts=attempts, sleep=sleep, block=self.block_device)
