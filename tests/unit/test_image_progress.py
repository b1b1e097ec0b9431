"""pyinit.image.progress: the numbers, the line and the rate limit."""

from __future__ import annotations

from typing import Any

import pytest

from pyinit.image.progress import Progress, megabytes, progress_fields, progress_line


def test_progress_is_rate_limited() -> None:
    now = [0.0]
    seen: list[dict[str, Any]] = []
    p = Progress(interval=1.0, clock=lambda: now[0], emit=seen.append)
    for t in (0.1, 0.5, 0.99, 1.0, 1.5, 1.9, 2.0, 2.01, 3.5):
        now[0] = t
        p.tick(int(t * 1e8), 0, int(4e8))
    assert [f["bytes_written"] for f in seen] == [int(1e8), int(2e8), int(3.5e8)]
    assert p.tick(int(4e8), 0, int(4e8), done=True)  # the last line, whatever the time
    assert len(seen) == 4 and seen[-1]["percent"] == 100.0


def test_known_size_the_fraction_of_raw_bytes_written() -> None:
    f = progress_fields(250_000_000, 50_000_000, 1_000_000_000, 2.0)
    assert (f["percent"], f["rate"], f["eta"]) == (25.0, 125_000_000, 6.0)
    assert progress_line(f) == "provision: 250 of 1000 MB written (25%), 125 MB/s, ETA 6 s"


def test_the_operators_console_the_download_is_not_the_write() -> None:
    """#15: the 312 MB zstd download had finished at 453 of 762 MB written; the line said
    100%, ETA 0 s. It follows the raw bytes written now."""
    f = progress_fields(453_000_000, 312_000_000, 762_000_000, 5.3,
                        download_size=312_000_000)
    assert (f["percent"], f["eta"]) == (59.4, 3.6)
    assert progress_line(f) == "provision: 453 of 762 MB written (59%), 85 MB/s, ETA 4 s"


@pytest.mark.parametrize("written", [761_600_000, 761_999_999, 762_000_000])
def test_never_100_percent_before_the_last_byte(written: int) -> None:
    f = progress_fields(written, 312_000_000, 762_000_000, 9.0)
    assert f["percent"] == 99.9 and f["eta"] is not None and f["eta"] > 0
    line = progress_line(f)
    assert "(99%)" in line and "ETA 1 s" in line
    done = progress_fields(762_000_000, 312_000_000, 762_000_000, 9.0, done=True)
    assert (done["percent"], done["eta"]) == (100.0, None)
    assert progress_line(done) == "provision: 762 of 762 MB written (100%), 85 MB/s"


def test_unknown_size_no_percentage_no_eta() -> None:
    f = progress_fields(453_000_000, 200_000_000, None, 5.3, download_size=312_000_000)
    assert (f["size"], f["percent"], f["eta"]) == (None, None, None)
    assert progress_line(f) == ("provision: 453 MB written of unknown size (200 of 312 MB "
                                "downloaded), 85 MB/s")
    f = progress_fields(453_000_000, 200_000_000, None, 5.3)  # chunked: no Content-Length
    assert progress_line(f) == ("provision: 453 MB written of unknown size (200 MB downloaded), "
                                "85 MB/s")
    f = progress_fields(1, 1, None, 0.0)
    assert f["percent"] is None and "ETA" not in progress_line(f)


def test_a_size_the_stream_went_past_was_not_the_size() -> None:
    """A zstd stream of several frames, sized by its first frame's header: past it, the size
    is unknown, never 105 %."""
    f = progress_fields(800_000_000, 300_000_000, 762_000_000, 5.0)
    assert (f["size"], f["percent"], f["eta"]) == (None, None, None)
    assert "of unknown size" in progress_line(f)


def test_megabytes() -> None:
    assert [megabytes(n) for n in (312_400_000, 4_240_000, 1000)] == \
        ["312 MB", "4.2 MB", "1000 bytes"]
