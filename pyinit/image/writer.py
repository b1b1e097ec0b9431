"""The writer stage: decoded blocks onto the :class:`~pyinit.image.destination.Target`, data
with pwrite and zero runs zeroed, the first and the last MiB held back until the checksum
matched."""

from __future__ import annotations

import functools
import mmap

from pyinit.errors import DiskError, ImageError
from pyinit.image.destination import HEAD, Target, aligned
from pyinit.image.diskio import DiskIO, Ref, SyncIO
from pyinit.image.zeros import MIN_ZERO_RUN, coalesce, zero_extents
from pyinit.units import MIB

ZERO_BATCH_RUNS = 64  # zero runs issued together (see Writer)
ZERO_BATCH_BYTES = 256 * MIB


class _NoRef:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class Writer:
    """Lays decoded blocks onto a :class:`Target`, in order: data with pwrite; zero runs with
    ``target.zero``, joined across blocks into one call; the first MiB kept in :attr:`head` and
    the bytes bound for the disk's last MiB in :attr:`tail`, both written only at the end
    (:meth:`write_head`, after the checksum matched): a power cut at any moment before leaves
    neither a partition table at the start nor a GPT backup at the end that a recovery tool
    would rebuild the disk from. Before its first write it zeroes both partition-table areas
    (``pre_wipe``). Data writes go through ``io`` (several in flight with :class:`ThreadedIO`).

    Zero runs are issued in batches (:data:`ZERO_BATCH_RUNS` runs or :data:`ZERO_BATCH_BYTES`),
    back to back once the writes in flight have landed: a loop device turns each one into an
    fallocate on its backing file, which first waits for all direct I/O in flight, so zero calls
    interleaved with writes cost a queue drain each (134 of them: 0.6 s of 1 GiB).

    Where the device does not offload zeroing (``target.zero_offload`` is False: the kernel
    writes zero pages for ``BLKZEROOUT``), a zero run is as much disk work as a write of its
    size: it goes to ``io`` like data, several in flight, without that drain (issued one after
    another by this thread, 1.5 GB of zero runs stalled decoding for 0.6 s)."""

    def __init__(self, target: Target, *, url: str, size: int | None = None,
                 min_zero: int = MIN_ZERO_RUN, pre_wipe: bool = True,
                 io: DiskIO | None = None) -> None:
        self.target = target
        self.io: DiskIO = io if io is not None else SyncIO()
        self.url = url
        self.size = size  # declared raw size: the stream must not exceed it
        self.min_zero = min_zero
        self.pre_wipe = pre_wipe
        self.head = aligned(HEAD)
        self.head_len = 0
        cap = target.capacity
        # the disk's last MiB (never inside the first): None for a file that grows
        self.tail_start = max(HEAD, cap - HEAD) if cap is not None and cap > HEAD else None
        self.tail = aligned(HEAD) if self.tail_start is not None else None
        self.tail_len = 0  # bytes of the tail area the stream reached
        self.offset = 0
        self.zero_bytes = 0
        self.started = False
        self._pending: tuple[int, int] | None = None
        self._zeros: list[tuple[int, int]] = []  # the batch not issued yet
        self._zeros_bytes = 0

    def reset(self) -> None:
        """The stream restarts from byte 0: whatever lands now overwrites the earlier pass
        (whose writes all land first; its unissued zero runs are dropped: the new pass
        zeroes what is zero in it)."""
        self.io.drain()
        self.offset = self.head_len = self.zero_bytes = self._zeros_bytes = self.tail_len = 0
        self._pending = None
        self._zeros.clear()
        if self.tail is not None:
            self.tail[:] = bytes(len(self.tail))

    def _start(self) -> None:
        if not self.started:
            self.started = True
            if self.pre_wipe:
                self.target.wipe_tables()

    def block(self, buf: mmap.mmap, offset: int, length: int, ref: Ref | None = None) -> None:
        """Lay ``buf[:length]`` at ``offset``. ``ref`` is acquired for each write that still
        reads ``buf`` after this returns (and released when it is done)."""
        ref = ref if ref is not None else _NoRef()
        end = offset + length
        cap = self.target.capacity
        if cap is not None and end > cap:
            raise DiskError(self.target.path, f"image is larger than the disk ({cap} bytes): "
                            f"it goes on past byte {cap}")
        if self.size is not None and end > self.size:
            raise ImageError(self.url, f"image is larger than its declared size "
                             f"({self.size} bytes)")
        pos = 0
        if offset < HEAD:
            pos = min(HEAD - offset, length)
            self.head[offset:offset + pos] = buf[:pos]
            self.head_len = offset + pos
        stop = length  # where the bytes bound for the tail area begin
        if self.tail is not None and self.tail_start is not None and end > self.tail_start:
            stop = max(pos, self.tail_start - offset)
            rel = offset + stop - self.tail_start
            self.tail[rel:rel + length - stop] = buf[stop:length]
            self.tail_len = max(self.tail_len, end - self.tail_start)
        if pos < stop:
            view = memoryview(buf)
            for s, e, is_zero in coalesce(zero_extents(buf, pos, stop),
                                          min_zero=self.min_zero):
                if is_zero:
                    self._zero(offset + s, offset + e)
                else:
                    self._flush_zero()
                    self._start()
                    ref.acquire()
                    self.io.submit(functools.partial(self.target.write, offset + s, view[s:e]),
                                   ref)
        self.offset = end

    def _zero(self, start: int, end: int) -> None:
        if self._pending and self._pending[1] == start:
            self._pending = (self._pending[0], end)
        else:
            self._flush_zero()
            self._pending = (start, end)

    def _flush_zero(self) -> None:
        if self._pending is None:
            return
        start, end = self._pending
        self._pending = None
        self._start()
        if end - start >= self.min_zero and self.target.zero_offload is False:
            self.zero_bytes += end - start
            self.io.submit(functools.partial(self.target.zero, start, end - start))
        elif end - start >= self.min_zero:
            self._zeros.append((start, end - start))
            self._zeros_bytes += end - start
            if len(self._zeros) >= ZERO_BATCH_RUNS or self._zeros_bytes >= ZERO_BATCH_BYTES:
                self._issue_zeros()
        else:
            self.io.submit(functools.partial(self.target.write_zeros, start, end - start))

    def _issue_zeros(self) -> None:
        if not self._zeros:
            return
        self.io.drain()
        for start, length in self._zeros:
            self.target.zero(start, length)
            self.zero_bytes += length
        self._zeros.clear()
        self._zeros_bytes = 0

    def finish(self) -> None:
        """End of stream: the last zero runs, then fsync (everything but the first MiB and the
        last MiB's bytes is durable)."""
        self._flush_zero()
        self._issue_zeros()
        self.io.drain()
        if self.started:
            self.target.sync()

    def write_head(self) -> None:
        """The bytes of the disk's last MiB, then the first MiB; then fsync."""
        self._start()
        if self.tail is not None and self.tail_start is not None and self.tail_len:
            self.target.write(self.tail_start, memoryview(self.tail)[:self.tail_len])
        self.target.write(0, memoryview(self.head)[:self.head_len])
        self.target.sync()
