"""Send events to the provisioning server (``POST {base}/events/{mac}``) without blocking the boot.

With a ``token`` each POST carries ``Authorization: Bearer <token>`` (the server's ``--token``).
A bounded queue drained by one daemon thread; when the server is slow or gone, events are dropped
(the console keeps the full record). ``flush()`` waits, bounded, before reboot or a shell.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import requests

from pyinit.log import Event, get_logger

log = get_logger("pyinit.events")

_STOP = object()


def refusal_reason(status: int, has_token: bool) -> str:
    """Why the server refused an event, for the one warning. Pure.

    401 is about the token; 403 from a server given no token is as likely a server that takes
    no events at all (a static nginx serving the actions answers every POST so), so the
    warning must not send the operator hunting for a token that was never needed."""
    if status == 401:
        return ("the server wants a token for events (pyinit.token= wrong)" if has_token
                else "the server wants a token for events (pyinit.token= missing)")
    if has_token:
        return "the server refuses events (pyinit.token= not accepted, or it takes no events)"
    return ("the server does not accept events here (no pyinit.token= given; a static web "
            "server answers so)")


RETRIES = 3  # of an event the server answered 503/429


def retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (seconds form), clamped to 0.2-2 s. Pure."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    return min(2.0, max(0.2, seconds))


class ServerSink:
    def __init__(self, url: str, *, session: requests.Session | None = None,
                 timeout: float = 2.0, maxsize: int = 256, token: str | None = None) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = session or requests.Session()
        self.timeout = timeout
        self.queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self.failures = 0
        self._warned = False
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
                        resp = self._post(item)
                        self.failures = 0
                        if resp.status_code in (401, 403) and not self._warned:
                            self._warned = True  # once: the console has every event anyway
                            log.warning(f"events: {self.url}: HTTP {resp.status_code}: "
                                        f"{refusal_reason(resp.status_code, bool(self._headers))}"
                                        "; they stay on the console only")
                    except requests.RequestException:
                        self.failures += 1
            finally:
                self.queue.task_done()

    def _post(self, item: object) -> requests.Response:
        """POST one event; a 503 or 429 (the server's store restarting, a replica busy) is
        retried after its Retry-After (capped), at most RETRIES times."""
        for attempt in range(RETRIES + 1):
            resp = self.session.post(self.url, json=item, timeout=self.timeout,
                                     headers=self._headers)
            if resp.status_code not in (429, 503) or attempt == RETRIES:
                return resp
            time.sleep(retry_after(resp.headers.get("Retry-After")))
        raise AssertionError("unreachable")

    def flush(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
