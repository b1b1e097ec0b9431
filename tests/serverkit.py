"""The provisioning server as the tests drive it: what it answered, what it stored, and waiting
for a machine's event. Test code, kept out of ``pyinit_server``: :class:`ObservedServer` is
:class:`~pyinit_server.server.ProvisioningServer` plus records taken through its ``observe``
hook and its upload path."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pyinit_server import uploads as receiving
from pyinit_server.server import ProvisioningServer, normalize_mac

ACCESS_RECORDS = 10_000  # requests remembered: bounded, also for a long VM test


class ObservedServer(ProvisioningServer):
    """A :class:`ProvisioningServer` that remembers its requests (:attr:`access_log`) and the
    uploads it stored (:attr:`uploads`), and can wait for an event (:meth:`wait_event`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._access: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=ACCESS_RECORDS)
        self._stored: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def start(self) -> ObservedServer:
        super().start()
        # the machine files parsed before a test edits them: a parse racing the test's own
        # write would see the file half-written and count as a second change
        self.preloaded.wait(30)
        return self

    def observe(self, request: web.BaseRequest, status: int) -> None:
        with self._lock:  # before the answer leaves: a client that has it finds the record
            self._access.append({"method": request.method, "path": request.raw_path,
                                 "status": status, "range": request.headers.get("Range")})

    async def _upload(self, request: web.Request,
                      receive: Callable[[], Awaitable[tuple[str, receiving.Incoming]]],
                      ) -> web.StreamResponse:
        resp = await super()._upload(request, receive)
        if resp.status == 201 and isinstance(resp, web.Response) and resp.body is not None:
            record = json.loads(bytes(resp.body))  # type: ignore[arg-type]
            with self._lock:
                self._stored[record["name"]] = record
        return resp

    @property
    def access_log(self) -> list[dict[str, Any]]:
        """One record per recent request: method, path (with the query), status, range."""
        with self._lock:
            return list(self._access)

    @property
    def uploads(self) -> dict[str, dict[str, Any]]:
        """Uploads stored since the start, by name: ``{name, size, sha256}``."""
        with self._lock:
            return {k: dict(v) for k, v in self._stored.items()}

    def wait_event(self, mac: str, step: str | None = None, status: str | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        """The first event for ``mac`` matching ``step``/``status``, waiting up to ``timeout``
        (events committed by another replica are seen within 0.2 s)."""
        key = normalize_mac(mac)
        if key is None:
            raise ValueError(f"not a MAC address: {mac!r}")
        store = self._store()
        deadline = time.monotonic() + timeout
        while True:
            for ev in store.events(key):
                if (step is None or ev.get("step") == step) and (
                        status is None or ev.get("status") == status):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no event step={step} status={status} for {key} "
                                   f"within {timeout:g} s")
            with store.changed:
                store.changed.wait(min(left, 0.2))
