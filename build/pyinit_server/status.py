"""Machine status: the events a machine posted, bounded, and a summary computed from them.

The server keeps the last :data:`MAX_EVENTS` events of each MAC in memory (a restart forgets them;
the console of each machine keeps the full record) and folds every event into a summary:

``phase``
    the step of the last event other than ``result`` (``action``, ``provision``, ``finish``...)
    and ``state`` the status of that event (``start``, ``ok``, ``failed``, ``progress``).
``percent``, ``rate``, ``eta``
    from the last ``progress`` event: the image writer's ``percent``/``rate``/``eta``, or the
    capture's ``bytes_read``/``total``/``rate``.
``error``
    the ``error`` of the last ``failed`` event.
``result``
    ``ok`` or ``failed`` from the final ``result`` event (None while the run goes on).
``last_seen``
    the server's clock when the last event arrived (machines' clocks are often wrong).

An event that arrives after a ``result`` starts a new run: the summary is reset (the history is
kept).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

MAX_EVENTS = 1000  # per MAC


@dataclass
class Summary:
    mac: str
    phase: str | None = None
    state: str | None = None
    percent: float | None = None
    rate: float | None = None  # bytes per second
    eta: float | None = None  # seconds
    error: str | None = None
    result: str | None = None
    events: int = 0
    first_seen: float | None = None
    last_seen: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def fold(summary: Summary, event: dict[str, Any], now: float) -> None:
    """Update ``summary`` with one event received at ``now``. Pure but for the mutation."""
    step, status = event.get("step"), event.get("status")
    if summary.result is not None:  # a new run after the last one's result
        summary.phase = summary.state = summary.error = summary.result = None
        summary.percent = summary.rate = summary.eta = None
    summary.events += 1
    summary.first_seen = summary.first_seen or now
    summary.last_seen = now
    if step == "result":
        summary.result = str(status) if status is not None else None
        if status == "failed" and event.get("error"):
            summary.error = str(event["error"])
        if status == "ok" and summary.percent is not None:
            summary.percent, summary.eta = 100.0, None
        return
    if isinstance(step, str):
        summary.phase, summary.state = step, None if status is None else str(status)
    if status == "failed" and event.get("error"):
        summary.error = str(event["error"])
    if status == "progress":
        pct = _number(event.get("percent"))
        if pct is None:
            done, total = _number(event.get("bytes_read")), _number(event.get("total"))
            if done is not None and total:
                pct = round(100 * done / total, 1)
        summary.percent = pct
        summary.rate = _number(event.get("rate"))
        summary.eta = _number(event.get("eta"))
    elif status == "start":
        summary.percent = summary.rate = summary.eta = None


class History:
    """Each MAC's last events (with the server's receive time) and its summary."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._received: dict[str, deque[float]] = {}
        self._summaries: dict[str, Summary] = {}

    def add(self, mac: str, event: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._events.setdefault(mac, deque(maxlen=self.max_events)).append(event)
        self._received.setdefault(mac, deque(maxlen=self.max_events)).append(now)
        fold(self._summaries.setdefault(mac, Summary(mac)), event, now)

    def events(self, mac: str) -> list[dict[str, Any]]:
        return list(self._events.get(mac, ()))

    def log(self, mac: str) -> list[dict[str, Any]]:
        """The events with ``received`` (server time) added, oldest first."""
        return [{**ev, "received": round(t, 3)}
                for ev, t in zip(self._events.get(mac, ()), self._received.get(mac, ()),
                                 strict=True)]

    def summary(self, mac: str) -> Summary | None:
        s = self._summaries.get(mac)
        return None if s is None else Summary(**asdict(s))

    def macs(self) -> list[str]:
        return sorted(self._summaries)
