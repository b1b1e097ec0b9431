"""Read-back verification: the written range read again from the disk (``O_DIRECT``, not the page
cache) and hashed, the reading and the hashing overlapped."""

from __future__ import annotations

import hashlib
import mmap
import os
import threading

from pyinit.channel import END, Aborted, Channel, End
from pyinit.errors import DiskError
from pyinit.image.destination import aligned
from pyinit.image.pipeline import BLOCK


def readback_sha256(path: str, length: int, *, direct: bool, sector: int = 4096,
                    buffers: list[mmap.mmap] | None = None) -> str:
    """sha256 of the first ``length`` bytes as read back from ``path`` (O_DIRECT for block
    devices: from the disk, not the page cache). Reading and hashing overlap (two threads);
    ``buffers`` (aligned, :data:`BLOCK` bytes each; the pipeline's, reused) carry the data."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DiskError(path, f"cannot open for read-back: {exc.strerror}") from exc
    bufs = buffers or [aligned(BLOCK) for _ in range(3)]
    stop = threading.Event()
    free: Channel[mmap.mmap] = Channel(len(bufs), stop)
    for buf in bufs:
        free.put_nowait(buf)
    full: Channel[tuple[mmap.mmap, int] | End] = Channel(len(bufs), stop)

    def reader() -> None:
        try:
            for off in range(0, length, BLOCK):
                n = min(BLOCK, length - off)
                want = -(-n // sector) * sector if direct else n
                buf = free.get()
                got = os.preadv(fd, [memoryview(buf)[:want]], off)
                if got < n:
                    raise DiskError(path, f"read-back ended at byte {off + got} of {length}")
                full.put((buf, n))
            full.put(END)
        except Aborted:
            return
        except OSError as exc:
            full.fail(DiskError(path, f"read-back failed: {exc.strerror}"))
        except BaseException as exc:  # handed to the hashing thread
            full.fail(exc)

    thread = threading.Thread(target=reader, name="pyinit-readback", daemon=True)
    thread.start()
    h = hashlib.sha256()
    try:
        while (item := full.get()) is not END:
            buf, n = item
            h.update(memoryview(buf)[:n])
            free.put(buf)
    finally:
        stop.set()  # the reader gives up if it still waits for a buffer
        thread.join()
        os.close(fd)
    return h.hexdigest()
