"""Benchmark disk images: a seeded, realistic layout of data and zero runs, compressed with the
``zstd`` CLI and cached under ``.cache/bench/images`` keyed by every parameter.

The layout is a pure function of the spec (tested by eye in the bench output: the actual data
fraction is printed). The raw file is written sparse (only data extents are written after a
``truncate``), hashed in order while it is written, compressed with ``zstd -T0 -<level> --check
--rm`` and only the ``.zst`` plus a JSON sidecar (sizes, sha256 of raw and compressed) are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyinit_build.demoimage import sha256_file

MiB = 1 << 20
GiB = 1 << 30
# Bump when the layout or content generation changes: cached images are keyed by it.
LAYOUT_VERSION = 3
_ZEROS = bytes(8 * MiB)


@dataclass(frozen=True)
class ImageSpec:
    """``size`` bytes, ``data_fraction`` of them random data in runs of 1 MiB blocks, the rest
    zero runs of varying length; ``data_fraction=1`` is one dense, incompressible extent."""

    name: str
    size: int
    data_fraction: float
    seed: int
    level: int = 3

    @property
    def key(self) -> str:
        return (f"{self.name}-{self.size}-d{self.data_fraction:g}-s{self.seed}-zstd{self.level}"
                f"-v{LAYOUT_VERSION}")


@dataclass(frozen=True)
class Image:
    key: str
    path: Path  # the .zst
    raw_size: int
    raw_sha256: str
    zst_size: int
    zst_sha256: str
    data_bytes: int  # non-zero-run bytes (data blocks, including their small zero gaps)
    data_runs: int
    seconds_to_build: float
    # [offset, length, sha256] of every data run: everything else is zeros. Lets a verifier
    # check a huge, mostly empty device without hashing gigabytes of zeros.
    runs: list[list[Any]]

    @property
    def data_fraction(self) -> float:
        return self.data_bytes / self.raw_size


def layout(spec: ImageSpec) -> list[tuple[int, int]]:
    """Data runs as (offset, length), MiB-aligned, sorted, non-overlapping. Pure.

    The first MiB is always data (a partition table and boot code); then data runs of 1-16 MiB
    (mostly short) alternate with zero runs whose lengths vary widely (0.2x-1.8x of what keeps
    the requested fraction, some of them a single MiB), so zero detection at any granularity
    from 1 MiB upwards is exercised.
    """
    if spec.size % MiB:
        raise ValueError("image size must be a multiple of 1 MiB")
    blocks = spec.size // MiB
    if spec.data_fraction >= 1:
        return [(0, spec.size)]
    rng = random.Random(spec.seed)
    ratio = (1 - spec.data_fraction) / spec.data_fraction
    runs: list[tuple[int, int]] = []
    pos = 0
    first = True
    while pos < blocks:
        d = 1 if first else min(16, 1 + int(rng.expovariate(1 / 3)))
        d = min(d, blocks - pos)
        runs.append((pos * MiB, d * MiB))
        pos += d
        first = False
        z = max(1, round(d * ratio * rng.uniform(0.2, 1.8)))
        pos += z
    return runs


def _block(rng: random.Random, gaps: bool) -> bytes:
    """1 MiB of seeded random data; with ``gaps``, one block in four has a 4 KiB-aligned zero
    gap of 4-256 KiB inside it (a partly used filesystem block group)."""
    data = rng.randbytes(MiB)
    if gaps and rng.random() < 0.25:
        length = rng.randrange(1, 65) * 4096
        start = rng.randrange(0, (MiB - length) // 4096 + 1) * 4096
        data = data[:start] + bytes(length) + data[start + length:]
    return data


def _zeros(n: int) -> Iterator[memoryview]:
    view = memoryview(_ZEROS)
    while n > 0:
        take = min(n, len(_ZEROS))
        yield view[:take]
        n -= take


def _write_raw(spec: ImageSpec, raw: Path) -> tuple[str, int, list[list[Any]]]:
    """Write the sparse raw image; returns (sha256, data bytes, [offset, length, sha256] of
    every data run)."""
    runs = layout(spec)
    hashed: list[list[Any]] = []
    rng = random.Random(spec.seed * 7919 + 1)
    sha = hashlib.sha256()
    pos = 0
    data_bytes = 0
    with raw.open("wb") as f:
        f.truncate(spec.size)
        for off, length in runs:
            for zero in _zeros(off - pos):
                sha.update(zero)
            f.seek(off)
            run_sha = hashlib.sha256()
            for _ in range(length // MiB):
                block = _block(rng, gaps=spec.data_fraction < 1)
                f.write(block)
                sha.update(block)
                run_sha.update(block)
            hashed.append([off, length, run_sha.hexdigest()])
            pos = off + length
            data_bytes += length
        for zero in _zeros(spec.size - pos):
            sha.update(zero)
    return sha.hexdigest(), data_bytes, hashed


def ensure_image(spec: ImageSpec, cache: Path, *,
                 log: Callable[[str], None] = print) -> Image:
    """The cached compressed image for ``spec``, building it first if needed."""
    cache.mkdir(parents=True, exist_ok=True)
    zst = cache / f"{spec.key}.zst"
    meta = cache / f"{spec.key}.json"
    if zst.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("zst_size") == zst.stat().st_size:
                info["path"] = zst
                return Image(**info)
        except (ValueError, TypeError, OSError):
            pass
    log(f"bench: building {spec.key}.zst (cached for later runs)")
    start = time.monotonic()
    raw = cache / f"tmp-{spec.key}.raw"
    tmp = cache / f"tmp-{spec.key}.zst"
    try:
        raw_sha, data_bytes, runs = _write_raw(spec, raw)
        subprocess.run(["zstd", "-q", "-f", "-T0", f"-{spec.level}", "--check", "--rm",
                        str(raw), "-o", str(tmp)], check=True)
        image = Image(key=spec.key, path=zst, raw_size=spec.size, raw_sha256=raw_sha,
                      zst_size=tmp.stat().st_size, zst_sha256=sha256_file(tmp),
                      data_bytes=data_bytes, data_runs=len(runs),
                      seconds_to_build=round(time.monotonic() - start, 1), runs=runs)
        os.replace(tmp, zst)
        info = asdict(image)
        info.pop("path")
        meta.write_text(json.dumps(info, indent=1) + "\n")
        return image
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
