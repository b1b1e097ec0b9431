"""The HTTP resume state machine: what to ask for after a dropped or stalled connection
(``Range: bytes=N-``, validated by ``If-Range``), and what each answer means: continue, start
over from byte 0 (the server ignored the range, or the image changed), retry, or give up. Range
bookkeeping only: the requests themselves are the pipeline's. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pyinit.errors import FetchError
from pyinit.fetch import RETRYABLE_STATUS, USER_AGENT

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes 100-199/1000`` → (100, 200, 1000): [start, end) and the full length. Pure."""
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None
    start, last = int(m.group(1)), int(m.group(2))
    if last < start:
        return None
    return start, last + 1, None if m.group(3) == "*" else int(m.group(3))


def validator_of(headers: Mapping[str, str]) -> str | None:
    """What to put in If-Range: a strong ETag, else Last-Modified (RFC 9110 §13.1.5). Pure."""
    h = {k.lower(): v for k, v in headers.items()}
    etag = h.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return h.get("last-modified") or None


Action = Literal["start", "continue", "restart", "refetch", "retry", "fatal"]


@dataclass(frozen=True)
class Decision:
    """What to do with a response: ``start`` (first body), ``continue`` (a 206 resuming where we
    were), ``restart`` (this 200 is the whole file again: reset everything and read it),
    ``refetch`` (reset everything and ask again from byte 0), ``retry`` (transient: back off and
    ask again) or ``fatal``."""

    action: Action
    reason: str = ""


@dataclass
class Transfer:
    """Range bookkeeping for one download across reconnects. Pure: no I/O.

    ``offset`` counts the bytes of the current pass handed downstream; ``fetched`` all body bytes
    received, re-fetches included."""

    url: str
    allow_unvalidated_resume: bool = False  # resume without If-Range (a checksum guards)
    max_restarts: int = 3
    offset: int = 0
    total: int | None = None
    validator: str | None = None
    fetched: int = 0
    resumes: int = 0
    restarts: int = 0

    def request_headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if self.offset:
            headers["Range"] = f"bytes={self.offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        return headers

    def can_resume(self) -> bool:
        return self.validator is not None or self.allow_unvalidated_resume

    def complete(self) -> bool:
        """At a clean end of body: did we get everything the server promised?"""
        return self.total is None or self.offset >= self.total

    def on_data(self, n: int) -> None:
        self.offset += n
        self.fetched += n

    def restart(self, reason: str) -> None:
        """Start over from byte 0. Raises a fatal FetchError after ``max_restarts``."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise FetchError(self.url, f"{reason}; gave up after {self.max_restarts} restarts")
        self.offset, self.total, self.validator = 0, None, None

    def _adopt(self, headers: Mapping[str, str], total: int | None) -> None:
        self.total = total
        self.validator = validator_of(headers)

    def on_response(self, status: int, headers: Mapping[str, str]) -> Decision:
        h = {k.lower(): v for k, v in headers.items()}
        length = h.get("content-length", "")
        content_length = int(length) if length.isdigit() else None
        if status in RETRYABLE_STATUS:
            return Decision("retry", f"HTTP {status}")
        if status >= 400 and status != 416:
            return Decision("fatal", f"HTTP {status}")
        if self.offset == 0:
            if status == 200:
                self._adopt(h, content_length)
                return Decision("start")
            rng = parse_content_range(h.get("content-range"))
            if status == 206 and rng and rng[0] == 0:
                self._adopt(h, rng[2])
                return Decision("start")
            return Decision("fatal", f"unexpected HTTP {status}")
        # We asked for bytes=offset-.
        if status == 206:
            rng = parse_content_range(h.get("content-range"))
            if rng is None or rng[0] != self.offset:
                got = h.get("content-range", "no Content-Range")
                return Decision("refetch", f"asked for bytes {self.offset}-, got {got}")
            if self.total is not None and rng[2] is not None and rng[2] != self.total:
                return Decision("refetch", f"the image changed size on the server "
                                f"({self.total} → {rng[2]} bytes)")
            etag = h.get("etag")
            if (etag and self.validator and self.validator.startswith('"')
                    and etag != self.validator):
                return Decision("refetch", f"the image changed on the server (ETag "
                                f"{self.validator} → {etag})")
            self.resumes += 1
            return Decision("continue")
        if status == 200:
            new = validator_of(h)
            if self.validator and new and new != self.validator:
                why = f"the image changed on the server ({self.validator} → {new})"
            else:
                why = "the server ignored the Range request"
            self.restart(why)
            self._adopt(h, content_length)
            return Decision("restart", why)
        if status == 416:
            return Decision("refetch", "the server refused the range (HTTP 416): "
                            "the image changed")
        return Decision("fatal", f"unexpected HTTP {status}")
