"""pyinit.channel: the abortable queue between pipeline threads (image writer, capture,
read-back): the normal end, a producer's failure, a consumer's failure, an abort while blocked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pyinit.channel import END, POLL, Aborted, Channel, End


class Worker(threading.Thread):
    """Runs ``fn`` and keeps what it returned or raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def finished(self, timeout: float = 5.0) -> Worker:
        self.join(timeout)
        assert not self.is_alive(), "still blocked"
        return self


def blocked(worker: Worker) -> Worker:
    worker.start()
    time.sleep(3 * POLL)  # long enough to be waiting inside put/get
    assert worker.is_alive()
    return worker


def test_items_arrive_in_order_then_the_end() -> None:
    ch: Channel[int | End] = Channel(2, threading.Event())

    def produce() -> None:
        for i in range(10):
            ch.put(i)
        ch.put(END)

    producer = Worker(produce)
    producer.start()
    got = []
    while (item := ch.get()) is not END:
        got.append(item)
    assert got == list(range(10))
    assert producer.finished().error is None


def test_a_producers_failure_reaches_the_consumer_after_the_items_before_it() -> None:
    ch: Channel[int | End] = Channel(2, threading.Event())
    boom = OSError(5, "Input/output error")

    def produce() -> None:
        try:
            ch.put(1)
            ch.put(2)
            raise boom
        except OSError as exc:
            ch.fail(exc)

    Worker(produce).start()
    assert (ch.get(), ch.get()) == (1, 2)
    with pytest.raises(OSError) as err:
        ch.get()
    assert err.value is boom


def test_a_consumers_failure_stops_a_producer_blocked_in_put() -> None:
    """The consumer fails and aborts the pipeline: the producer, waiting for room in the full
    queue, gives up with Aborted instead of waiting for ever."""
    abort = threading.Event()
    ch: Channel[int] = Channel(1, abort)

    def consume() -> None:
        try:
            ch.get()
            raise ValueError("corrupt stream")
        finally:
            abort.set()

    def produce() -> None:
        for i in range(100):
            ch.put(i)

    producer = Worker(produce)
    producer.start()
    consumer = Worker(consume)
    consumer.start()
    assert isinstance(consumer.finished().error, ValueError)
    assert isinstance(producer.finished().error, Aborted)


def test_abort_while_blocked_in_put() -> None:
    abort = threading.Event()
    ch: Channel[int] = Channel(1, abort)
    ch.put(1)
    producer = blocked(Worker(lambda: ch.put(2)))
    abort.set()
    assert isinstance(producer.finished().error, Aborted)


def test_abort_while_blocked_in_get() -> None:
    abort = threading.Event()
    ch: Channel[int] = Channel(1, abort)
    consumer = blocked(Worker(ch.get))
    abort.set()
    assert isinstance(consumer.finished().error, Aborted)


def test_nothing_passes_once_aborted() -> None:
    abort = threading.Event()
    ch: Channel[int] = Channel(1, abort)
    ch.put(1)
    abort.set()
    with pytest.raises(Aborted):
        ch.get()  # even with an item waiting
    with pytest.raises(Aborted):
        ch.put(2)
    ch.fail(RuntimeError("no one listens"))  # neither blocks nor raises


def test_put_nowait_returns_a_buffer_to_its_pool_even_after_an_abort() -> None:
    abort = threading.Event()
    pool: Channel[bytes] = Channel(2, abort)
    pool.put_nowait(b"a")
    abort.set()
    pool.put_nowait(b"b")
