"""pyinit.image.writer against a recording fake target: zero runs joined across blocks, the
first and last MiB held back, restarts, size limits."""

from __future__ import annotations

import mmap
import os
from typing import Any

import pytest

from pyinit.errors import DiskError, ImageError
from pyinit.image.destination import HEAD
from pyinit.image.writer import Writer
from pyinit.image.zeros import GRANULE
from pyinit.units import MIB


class FakeTarget:
    """Records writes and zeroing; ``data`` is the resulting image."""

    def __init__(self, capacity: int | None = None, zero_offload: bool | None = None) -> None:
        self.capacity = capacity
        self.zero_offload = zero_offload
        self.path = "/dev/fake"
        self.calls: list[tuple[str, int, int]] = []
        self.data = bytearray()
        self.syncs = 0

    def _put(self, offset: int, data: bytes) -> None:
        if len(self.data) < offset + len(data):
            self.data.extend(bytes(offset + len(data) - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def write(self, offset: int, data: Any) -> None:
        self.calls.append(("write", offset, len(data)))
        self._put(offset, bytes(data))

    def write_zeros(self, offset: int, length: int) -> None:
        self.calls.append(("write_zeros", offset, length))
        self._put(offset, bytes(length))

    def zero(self, offset: int, length: int) -> None:
        self.calls.append(("zero", offset, length))
        self._put(offset, bytes(length))

    def wipe_tables(self) -> None:
        self.calls.append(("wipe", 0, 0))

    def sync(self) -> None:
        self.syncs += 1


def feed_writer(w: Writer, image: bytes, block: int = 4 * MIB) -> None:
    buf = mmap.mmap(-1, block)
    for off in range(0, len(image), block):
        piece = image[off:off + block]
        buf[:len(piece)] = piece
        w.block(buf, off, len(piece))
    w.finish()


def test_writer_coalesces_zero_runs_across_blocks_and_holds_the_head_back() -> None:
    image = b"\x01" * HEAD + bytes(10 * MIB) + b"\x02" * MIB + bytes(100)
    t = FakeTarget()
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, image)
    assert t.calls == [
        ("wipe", 0, 0),  # both partition-table areas, before anything else
        ("write", 11 * MIB, MIB),
        ("write_zeros", 12 * MIB, 100),  # a short run at the end is written
        ("zero", HEAD, 10 * MIB),  # one call across three blocks, issued in a batch
    ]
    assert w.zero_bytes == 10 * MIB
    assert t.syncs == 1
    assert bytes(t.data[:HEAD]) == bytes(HEAD)  # the head is not written yet
    w.write_head()
    assert t.calls[-1] == ("write", 0, HEAD)
    assert bytes(t.data) == image
    assert w.offset == len(image)


def test_writer_holds_the_disks_last_mib_back_too() -> None:
    """An image the size of the disk (its GPT backup in the last sectors): until write_head,
    which runs after the checksum matched, neither end of the disk carries the image's bytes,
    whatever order the stream and the zero runs arrive in."""
    cap = 24 * MIB
    image = (b"\x01" * HEAD + os.urandom(3 * MIB) + bytes(cap - 6 * MIB) + os.urandom(MIB)
             + b"\x03" * (MIB - 512) + b"GPT BACKUP".ljust(512, b"\x04"))
    assert len(image) == cap
    for block in (4 * MIB, 3 * MIB + 4096, MIB // 2):  # tail area split across blocks or not
        t = FakeTarget(capacity=cap)
        t.data = bytearray(b"\xaa" * cap)
        w = Writer(t, url="u")  # type: ignore[arg-type]
        feed_writer(w, image, block)
        assert not any(c for c in t.calls if c[0] != "wipe" and c[1] + c[2] > cap - MIB), \
            "a write into the last MiB before the checksum"
        assert bytes(t.data[cap - MIB:]) == b"\xaa" * MIB  # (the fake does not wipe)
        w.write_head()
        assert t.calls[-2:] == [("write", cap - MIB, MIB), ("write", 0, HEAD)]  # tail, head
        assert bytes(t.data) == image


def test_writer_tail_area_of_a_short_image_and_a_restart() -> None:
    cap = 8 * MIB
    t = FakeTarget(capacity=cap)
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, b"\x05" * (7 * MIB + 100))  # reaches 100 bytes into the last MiB
    w.reset()
    feed_writer(w, b"\x06" * (7 * MIB + 50))  # the restart reaches 50: nothing of the first
    w.write_head()
    assert t.calls[-2:] == [("write", 7 * MIB, 50), ("write", 0, HEAD)]
    assert bytes(t.data) == b"\x06" * (7 * MIB + 50)


def test_writer_never_skips_zeros_it_did_not_zero() -> None:
    """Whatever the layout, the result equals the image (the fake starts with 0xAA junk)."""
    rng = __import__("random").Random(3)
    parts = []
    for _ in range(40):
        n = rng.choice([1, 100, GRANULE, GRANULE + 1, MIB - 1, MIB, 3 * MIB])
        parts.append(bytes(n) if rng.random() < 0.6 else os.urandom(n))
    image = b"".join(parts)
    t = FakeTarget()
    t.data = bytearray(b"\xaa" * (len(image) + MIB))
    w = Writer(t, url="u")  # type: ignore[arg-type]
    feed_writer(w, image)
    w.write_head()
    assert bytes(t.data[:len(image)]) == image


def test_writer_refuses_to_write_past_the_disk() -> None:
    t = FakeTarget(capacity=6 * MIB)
    w = Writer(t, url="u")  # type: ignore[arg-type]
    with pytest.raises(DiskError, match="larger than the disk"):
        feed_writer(w, b"\x01" * 7 * MIB)
    assert ("write", 4 * MIB, 2 * MIB) not in t.calls


def test_writer_enforces_the_declared_size() -> None:
    w = Writer(FakeTarget(), url="u", size=5 * MIB)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="declared size"):
        feed_writer(w, b"\x01" * 6 * MIB)


def test_writer_reset_starts_over() -> None:
    t = FakeTarget()
    w = Writer(t, url="u")  # type: ignore[arg-type]
    buf = mmap.mmap(-1, 4 * MIB)
    buf[:] = b"\x01" * 4 * MIB
    w.block(buf, 0, 4 * MIB)
    w.reset()
    assert (w.offset, w.head_len) == (0, 0)
    buf[:] = b"\x02" * 4 * MIB
    w.block(buf, 0, 4 * MIB)
    w.finish()
    w.write_head()
    assert bytes(t.data) == b"\x02" * 4 * MIB


class RecordingIO:
    """Records what the writer hands to its I/O threads and when it waits for them."""

    def __init__(self, target: FakeTarget) -> None:
        self.target = target

    def submit(self, fn: Any, ref: Any = None) -> None:
        self.target.calls.append(("submit", 0, 0))
        fn()
        if ref is not None:
            ref.release()

    def drain(self) -> None:
        self.target.calls.append(("drain", 0, 0))


@pytest.mark.parametrize("offload", [True, None, False])
def test_zero_runs_go_to_the_io_threads_only_where_the_kernel_writes_the_zeros(
        offload: bool | None) -> None:
    image = b"\x01" * HEAD + bytes(10 * MIB) + b"\x02" * MIB + bytes(6 * MIB) + b"\x03" * MIB
    t = FakeTarget(zero_offload=offload)
    w = Writer(t, url="u", io=RecordingIO(t))  # type: ignore[arg-type]
    feed_writer(w, image)
    zeros = [c for c in t.calls if c[0] == "zero"]
    assert zeros == [("zero", HEAD, 10 * MIB), ("zero", 12 * MIB, 6 * MIB)]
    assert w.zero_bytes == 16 * MIB
    before = [t.calls[t.calls.index(z) - 1][0] for z in zeros]
    # offloaded (or unknown): batched, back to back after the writes in flight landed;
    # the kernel writing zero pages: each submitted like a write, nothing drained for it
    assert before == (["submit", "submit"] if offload is False else ["drain", "zero"])
    w.write_head()
    assert bytes(t.data) == image
