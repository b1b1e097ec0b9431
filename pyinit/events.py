"""Send events to the provisioning server (``POST {base}/events/{mac}``) without blocking the boot.

A bounded queue drained by one daemon thread; when the server is slow or gone, events are dropped
(the console keeps the full record). ``flush()`` waits, bounded, before reboot or a shell.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import requests

from pyinit.log import Event

_STOP = object()


class ServerSink:
    def __init__(self, url: str, *, session: requests.Session | None = None,
                 timeout: float = 2.0, maxsize: int = 256) -> None:
        self.url = url
        self.session = session or requests.Session()
        self.timeout = timeout
        self.queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self.failures = 0
        self._thread = threading.Thread(target=self._drain, name="events", daemon=True)
        self._thread.start()

    def __call__(self, ev: Event) -> None:
        if ev.get("status") == "progress" and self.queue.qsize() > 16:
            return  # never let progress chatter crowd out results
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(dict(ev))

    def _drain(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                if self.failures < 5:  # a dead server must not cost 2 s per event forever
                    try:
                        self.session.post(self.url, json=item, timeout=self.timeout)
                        self.failures = 0
                    except requests.RequestException:
                        self.failures += 1
            finally:
                self.queue.task_done()

    def flush(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
