"""Progress while an image is written: at most one console line and one ``provision progress``
event per interval (a second by default; one more at the end): the raw bytes written, the rate,
and — when the raw size is known — the fraction done and the time left.

The fraction is of raw bytes written against the raw size, never of the download: a compressed
download finishes long before its last block is decoded and written. The raw size is known from
the action's ``size``, a raw image's Content-Length or a zstd frame header that declares it;
gzip, xz and bzip2 carry no reliable one, and the line then says ``of unknown size`` (no
percentage, no ETA). 100 % is shown only for the last line, once the last byte is written."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyinit.log import event, get_logger

log = get_logger("pyinit.image")


def megabytes(n: int) -> str:
    """``762 MB``, ``4.2 MB``, ``1000 bytes`` (decimal, as the progress line counts). Pure."""
    if n >= 10_000_000:
        return f"{n / 1e6:.0f} MB"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n} bytes"


def progress_fields(written: int, downloaded: int, size: int | None, elapsed: float, *,
                    download_size: int | None = None, done: bool = False) -> dict[str, Any]:
    """Numbers for one progress line/event. ``size``: the raw image's size, None when unknown
    (or when the stream has gone past it: then it was not the size). ``done``: the last byte
    is written (only then can the percentage reach 100). Pure."""
    elapsed = max(elapsed, 1e-9)
    rate = written / elapsed
    if size is not None and (size <= 0 or written > size):
        size = None
    percent = eta = None
    if size is not None:
        percent = 100 * written / size
        if not (done and written == size):  # floored to 0.1, below 100 until the end
            percent = min(math.floor(percent * 10) / 10, 99.9)
        if not done:
            # never 'ETA 0 s' while bytes are left: at least a tenth, shown rounded up
            eta = max(round((size - written) / rate, 1), 0.1) if written else None
    return {"bytes_written": written, "bytes_downloaded": downloaded, "size": size,
            "download_size": download_size,
            "percent": None if percent is None else round(percent, 1),
            "rate": round(rate), "eta": eta}


def progress_line(f: Mapping[str, Any]) -> str:
    """``provision: 453 of 762 MB written (59%), 85 MB/s, ETA 4 s``, or without a raw size
    ``provision: 453 MB written of unknown size (200 of 312 MB downloaded), 85 MB/s``. Pure."""
    written, size, rate = f["bytes_written"], f.get("size"), f"{f['rate'] / 1e6:.0f} MB/s"
    if size is None or f.get("percent") is None:
        down = f.get("bytes_downloaded")
        got = ""
        if down is not None and f.get("download_size"):
            got = f" ({down / 1e6:.0f} of {f['download_size'] / 1e6:.0f} MB downloaded)"
        elif down is not None:
            got = f" ({down / 1e6:.0f} MB downloaded)"
        return f"provision: {written / 1e6:.0f} MB written of unknown size{got}, {rate}"
    pct = f["percent"]
    # floored, as the percentage is: the line never reads "762 of 762 MB (100%)" early
    shown = f"{size / 1e6:.0f}" if pct >= 100 else f"{written // 1_000_000}"
    eta = f", ETA {math.ceil(f['eta'])} s" if f.get("eta") is not None else ""
    return f"provision: {shown} of {size / 1e6:.0f} MB written ({math.floor(pct)}%), {rate}{eta}"


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

    def tick(self, written: int, downloaded: int, size: int | None = None,
             download_size: int | None = None, *, done: bool = False) -> bool:
        """Emit a line if ``interval`` has passed since the last one; ``done`` (the last byte
        is written) emits one whatever the time."""
        now = self.clock()
        if not done and now - self.last < self.interval:
            return False
        self.last = now
        self.emit(progress_fields(written, downloaded, size, now - self.start,
                                  download_size=download_size, done=done))
        return True
