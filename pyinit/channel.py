"""One abortable bounded queue between the threads of a pipeline: the image writer's stages, the
capture's reader and compressor, the read-back's reader and hasher.

A thread blocked in :meth:`Channel.put` (the consumer is gone) or :meth:`Channel.get` (the
producer is gone) gives up with :class:`Aborted` once the pipeline's ``abort`` event is set, by
whichever side failed or by the caller; it looks at the event every :data:`POLL` seconds, so no
thread waits for ever on a peer that stopped. In band, a producer ends the stream with
:data:`END`, or hands its failure on with :meth:`Channel.fail`: the consumer's :meth:`Channel.get`
raises it, after the items that came before it.

The standard library's ``queue.Queue`` has no way to give up a blocking call but a timeout, and
``queue.Queue.shutdown`` (which would do it) is Python 3.13's: hence this small wrapper.
"""

from __future__ import annotations

import contextlib
import enum
import queue
import threading
from typing import Final, Generic, TypeVar

T = TypeVar("T")

POLL = 0.1  # seconds a blocked put/get waits before it looks at the abort event again


class Aborted(Exception):
    """The pipeline was aborted (a stage failed, or the caller stopped it): unwind quietly."""


class End(enum.Enum):
    """The type of :data:`END` (an enum, so that ``item is END`` narrows an item's type)."""

    END = "end"


END: Final = End.END  # the producer is done: nothing follows


class _Failure:
    """The producer's exception, on its way to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Channel(Generic[T]):
    """A queue of at most ``maxsize`` items (0: no bound) whose blocking calls raise
    :class:`Aborted` once ``abort`` is set."""

    def __init__(self, maxsize: int, abort: threading.Event) -> None:
        self._q: queue.Queue[T | _Failure] = queue.Queue(maxsize)
        self._abort = abort

    def put(self, item: T) -> None:
        """Wait for room, then queue ``item``."""
        self._put(item)

    def _put(self, item: T | _Failure) -> None:
        while True:
            if self._abort.is_set():
                raise Aborted
            try:
                self._q.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    def get(self) -> T:
        """Wait for the next item. Raises :class:`Aborted`, or the exception a producer handed
        on with :meth:`fail`."""
        while True:
            if self._abort.is_set():
                raise Aborted
            try:
                item = self._q.get(timeout=POLL)
            except queue.Empty:
                continue
            if isinstance(item, _Failure):
                raise item.exc
            return item

    def fail(self, exc: BaseException) -> None:
        """The producer failed: the consumer's :meth:`get` raises ``exc``. Once the pipeline is
        aborted no one is listening, and this does nothing."""
        with contextlib.suppress(Aborted):
            self._put(_Failure(exc))

    def put_nowait(self, item: T) -> None:
        """For returning buffers to a pool that can hold them all: never blocks or aborts."""
        self._q.put_nowait(item)
