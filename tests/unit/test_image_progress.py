"""pyinit.image.progress: the numbers, the line and the rate limit."""

from __future__ import annotations

from typing import Any

from pyinit.image.progress import Progress, progress_fields, progress_line


def test_progress_is_rate_limited() -> None:
    now = [0.0]
    seen: list[dict[str, Any]] = []
    p = Progress(interval=1.0, clock=lambda: now[0], emit=seen.append)
    for t in (0.1, 0.5, 0.99, 1.0, 1.5, 1.9, 2.0, 2.01, 3.5):
        now[0] = t
        p.tick(int(t * 1e8), 0, int(4e8))
    assert [f["bytes"] for f in seen] == [int(1e8), int(2e8), int(3.5e8)]
    assert p.tick(4, 0, force=True)
    assert len(seen) == 4


def test_progress_fields_and_line() -> None:
    f = progress_fields(250_000_000, 50_000_000, 1_000_000_000, None, 2.0)
    assert (f["percent"], f["rate"], f["eta"]) == (25.0, 125_000_000, 6.0)
    assert progress_line(f) == "provision: 250 MB written (25%), 125 MB/s, ETA 6 s"
    # No raw size: the fraction comes from the compressed bytes fetched.
    f = progress_fields(250_000_000, 50_000_000, None, 100_000_000, 2.0)
    assert f["percent"] == 50.0
    f = progress_fields(1, 1, None, None, 0.0)
    assert f["percent"] is None and "ETA" not in progress_line(f)
