"""A small deterministic data-only disk image for the write-pipeline tests: MBR, one ext4
partition with a marker and an 8 MiB incompressible payload (so a compressed stream is long
enough to be cut and resumed mid-way), gzip/zstd/xz copies.

Bootable golden images come from `pyinit image` (:mod:`pyinit_build.golden`); `make demo`
flashes one of those. This one stays because the pipeline tests want a payload, not a kernel.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit.units import MIB
from pyinit_build.digest import sha256_file as sha256_file  # re-exported for the tests

SOURCE_DATE_EPOCH = 1700000000
FS_UUID = "5e7b0c1d-2a3f-4b5c-8d6e-7f8091a2b3c4"


@dataclass(frozen=True)
class DemoImage:
    raw: Path
    gz: Path
    size: int
    sha256: str
    gz_sha256: str


def prng_bytes(n: int, seed: bytes = b"pyinit-demo") -> bytes:
    """``n`` deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def compressed_copy(image: DemoImage, kind: str) -> Path:
    """``demo.img.zst`` (with the frame checksum) or ``demo.img.xz`` beside the raw image,
    made once and reused."""
    suffix = {"zstd": ".zst", "xz": ".xz"}[kind]
    out = image.raw.with_name(image.raw.name + suffix)
    if out.exists() and out.stat().st_mtime >= image.raw.stat().st_mtime:
        return out
    tmp = out.with_name(out.name + ".tmp")
    with image.raw.open("rb") as src, tmp.open("wb") as dst:
        if kind == "zstd":
            import zstandard

            zstandard.ZstdCompressor(level=3, write_checksum=True,
                                     write_content_size=True).copy_stream(
                src, dst, size=image.size)
        else:
            import lzma

            with lzma.LZMAFile(dst, "wb", preset=1) as xz:
                shutil.copyfileobj(src, xz, 4 * MIB)
    os.replace(tmp, out)
    return out


def build_demo_image(out_dir: Path, *, size_mib: int = 64, label: str = "pyinit-demo") -> DemoImage:
    """Build (or reuse) ``out_dir/demo.img`` and ``demo.img.gz``. Concurrent callers (test
    workers) share one build: the first builds under a lock, the others reuse it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(out_dir, size_mib=size_mib, label=label)


def _build_locked(out_dir: Path, *, size_mib: int, label: str) -> DemoImage:
    raw = out_dir / "demo.img"
    gz = out_dir / "demo.img.gz"
    meta = out_dir / "demo.json"
    key = {"size_mib": size_mib, "label": label, "version": 2}
    if raw.exists() and gz.exists() and meta.exists():
        cached = json.loads(meta.read_text())
        if cached.get("key") == key:
            return DemoImage(raw, gz, raw.stat().st_size, cached["sha256"], cached["gz_sha256"])

    work = out_dir / "demo.work"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("pyinit-demo\n")
    (tree / "PYINIT-DEMO").write_text("written by pyinit\n")
    # Incompressible payload (deterministic), so the compressed image is big enough to be
    # interrupted and resumed mid-stream in tests.
    (tree / "payload.bin").write_bytes(prng_bytes(8 * MIB))
    for path in [*sorted(tree.rglob("*")), tree]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)

    fs = work / "fs.img"
    fs_size = (size_mib - 2) * MIB
    env = {"E2FSPROGS_FAKE_TIME": str(SOURCE_DATE_EPOCH), "SOURCE_DATE_EPOCH":
           str(SOURCE_DATE_EPOCH)}
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-U", FS_UUID,
              "-E", f"hash_seed={FS_UUID},root_owner=0:0", "-d", str(tree), str(fs),
              f"{fs_size // 1024}k"], env=env)

    part = work / "disk.img"
    with part.open("wb") as f:
        f.truncate(size_mib * MIB)
    proc.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(part)],
             input=f"label: dos\nlabel-id: 0x5079696e\nstart=2048, size={fs_size // 512}, "
                   "type=83\n")
    with part.open("r+b") as dst, fs.open("rb") as src:
        dst.seek(MIB)
        shutil.copyfileobj(src, dst, 4 * MIB)

    tmp_gz = work / "demo.img.gz"
    with part.open("rb") as src, gzip.GzipFile(tmp_gz, "wb", compresslevel=6, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 4 * MIB)
    os.replace(part, raw)
    os.replace(tmp_gz, gz)
    result = DemoImage(raw, gz, raw.stat().st_size, sha256_file(raw), sha256_file(gz))
    meta.write_text(json.dumps({"key": key, "sha256": result.sha256,
                                "gz_sha256": result.gz_sha256}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return result
