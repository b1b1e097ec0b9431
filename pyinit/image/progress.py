"""Progress while an image is written: at most one console line and one ``provision progress``
event per interval (a second by default; one more at the end): the fraction done, the rate and
the time left."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pyinit.log import event, get_logger

log = get_logger("pyinit.image")


def progress_fields(written: int, fetched: int, total: int | None, fetched_total: int | None,
                    elapsed: float) -> dict[str, Any]:
    """Numbers for one progress line/event. The fraction done is by raw bytes when the image
    size is known, else by compressed bytes fetched. Pure."""
    elapsed = max(elapsed, 1e-9)
    frac = None
    if total:
        frac = min(written / total, 1.0)
    elif fetched_total:
        frac = min(fetched / fetched_total, 1.0)
    eta = elapsed * (1 - frac) / frac if frac else None
    return {"bytes": written, "fetched": fetched, "total": total,
            "percent": None if frac is None else round(100 * frac, 1),
            "rate": round(written / elapsed), "eta": None if eta is None else round(eta, 1)}


def progress_line(f: Mapping[str, Any]) -> str:
    """``provision: 512 MB written (48%), 230 MB/s, ETA 2 s``. Pure."""
    pct = f" ({f['percent']:.0f}%)" if f.get("percent") is not None else ""
    eta = f", ETA {f['eta']:.0f} s" if f.get("eta") is not None else ""
    return (f"provision: {f['bytes'] / 1e6:.0f} MB written{pct}, {f['rate'] / 1e6:.0f} MB/s"
            f"{eta}")


def _emit_progress(fields: dict[str, Any]) -> None:
    log.info(progress_line(fields))
    event("provision", "progress", **fields)


class Progress:
    """One console line and one event per ``interval`` seconds at most (and one at the end)."""

    def __init__(self, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[dict[str, Any]], None] = _emit_progress) -> None:
        self.interval = interval
        self.clock = clock
        self.emit = emit
        self.start = clock()
        self.last = self.start

    def tick(self, written: int, fetched: int, total: int | None = None,
             fetched_total: int | None = None, *, force: bool = False) -> bool:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return False
        self.last = now
        self.emit(progress_fields(written, fetched, total, fetched_total, now - self.start))
        return True
