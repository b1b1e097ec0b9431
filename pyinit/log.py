"""Console logging (structlog) and the machine-readable event stream.

Every step emits one ``PYINIT-EVENT {json}`` line per start/ok/failure. Tests and operators match
those lines, never free prose. Extra sinks (the provisioning server) can subscribe with
:func:`add_sink`; a failing sink never breaks the boot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

EVENT_PREFIX = "PYINIT-EVENT "

Event = dict[str, Any]
Sink = Callable[[Event], None]

_sinks: list[Sink] = []
_lock = threading.Lock()
_console: TextIO = sys.stdout
_kmsg: Any = None


def configure(*, debug: bool = False, console: TextIO | None = None,
              kmsg: Path | None = None) -> None:
    """Send structlog and stdlib logging to the console (and /dev/kmsg when given)."""
    global _console, _kmsg
    if console is not None:
        _console = console
    if kmsg is not None:
        try:
            _kmsg = open(kmsg, "w", buffering=1)  # noqa: SIM115 - lives as long as PID 1
        except OSError:
            _kmsg = None
    level = logging.DEBUG if debug else logging.INFO
    handler = logging.StreamHandler(_ConsoleTee())
    handler.setFormatter(logging.Formatter("pyinit: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pyroute2 and urllib3 are chatty at INFO.
    for noisy in ("pyroute2", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    structlog.configure(
        processors=[structlog.processors.add_log_level, _render],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=_ConsoleTee()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _render(_logger: Any, _name: str, ev: MutableMapping[str, Any]) -> str:
    """``pyinit: <message> key=value`` — plain text for a serial console; level only when it
    is not info."""
    level = ev.pop("level", "info")
    message = str(ev.pop("event", ""))
    prefix = "pyinit: " if level in ("info", "debug") else f"pyinit: {level.upper()}: "
    extra = " ".join(f"{k}={v}" for k, v in ev.items())
    return prefix + message + (f" {extra}" if extra else "")


class _ConsoleTee:
    """A file-like object writing to the console and, line by line, to /dev/kmsg."""

    def write(self, text: str) -> int:
        with _lock:
            try:
                _console.write(text)
                _console.flush()
            except (OSError, ValueError):
                pass
            if _kmsg is not None:
                for line in text.splitlines():
                    if line.strip():
                        with contextlib.suppress(OSError):
                            # <7> (debug): kept in dmesg but not echoed on the console,
                            # which already shows the line.
                            _kmsg.write(f"<7>pyinit: {line[:900]}\n")
        return len(text)

    def flush(self) -> None:
        pass


def get_logger(name: str = "pyinit") -> Any:
    return structlog.get_logger(name)


def console(line: str) -> None:
    """Write one raw line to the console (no log decoration)."""
    _ConsoleTee().write(line.rstrip("\n") + "\n")


def add_sink(sink: Sink) -> None:
    _sinks.append(sink)


def clear_sinks() -> None:
    _sinks.clear()


def event(step: str, status: str, **fields: Any) -> Event:
    """Emit one machine-readable event line and hand the event to every sink."""
    ev: Event = {"step": step, "status": status, **fields, "time": round(time.time(), 3)}
    up = uptime()
    if up is not None:
        ev["uptime"] = up
    console(EVENT_PREFIX + json.dumps(ev, sort_keys=False, default=str))
    for sink in list(_sinks):
        try:
            sink(ev)
        except Exception as exc:  # a sink must never break the boot
            logging.getLogger("pyinit.log").debug("event sink failed: %s", exc)
    return ev


def uptime(path: str = "/proc/uptime") -> float | None:
    """Seconds since the kernel started (guest uptime), or None when /proc is not there."""
    try:
        with open(path) as f:
            return round(float(f.read().split()[0]), 2)
    except (OSError, ValueError, IndexError):
        return None


def find_event(line: str) -> tuple[Event, int] | None:
    """The event carried by a console line and the index just past its JSON, or None. Text
    after the JSON is allowed: on a serial console the kernel's own messages can land between
    an event and its newline."""
    idx = line.find(EVENT_PREFIX)
    if idx < 0:
        return None
    start = idx + len(EVENT_PREFIX)
    try:
        value, end = json.JSONDecoder().raw_decode(line, start)
    except json.JSONDecodeError:
        return None
    return (value, end) if isinstance(value, dict) else None


def parse_event(line: str) -> Event | None:
    """The event carried by a console line, or None (used by tests and the harness)."""
    found = find_event(line)
    return found[0] if found is not None else None
