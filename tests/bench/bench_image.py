"""``make bench`` (issue #3): the image writer and disk capture against plain tools, in one run.

Every figure is a ratio against a baseline measured in the same run on the same machine, never an
absolute time: ``pyinit`` and the baseline run alternately (the order flips every repetition to
cancel drift), five times each for the writes and three for the capture (``--reps``,
``--capture-reps``), and the medians are compared; the ratio of the minima and every single time
are reported too, so noise shows.

    write_sparse_ratio  2 GiB, ~30 % data / 70 % zero runs, zstd -3:  python -m pyinit.image
                        / curl -sf URL | zstd -dc | dd of=DEV bs=4M iflag=fullblock oflag=direct
                        conv=fsync                                             target <= 0.40
                        Destination: the loop device below (over ext4 here), where pyinit's
                        BLKZEROOUT is offloaded (a cheap fallocate ZERO_RANGE of the backing
                        file) while dd writes real zeros: optimistic for disks without a
                        write-zeroes offload. The details say how it zeroed (same probe).
    write_sparse_nooffload_ratio
                        the same two, same image, onto a destination where zeroing is real: a
                        loop device over a file on a tmpfs the bench mounts (RAM). tmpfs has no
                        FALLOC_FL_ZERO_RANGE, so the loop driver drops its write-zeroes limit at
                        the first BLKZEROOUT and the kernel writes zero pages. Established, not
                        assumed: a first BLKZEROOUT must take queue/write_zeroes_max_bytes to 0
                        and grow the backing file's allocation by its length; after every run
                        the limit must still be 0, and after pyinit's the backing file must be
                        fully allocated (zero runs written as zero pages, not holes) and pyinit
                        must not report the zeroing as offloaded. Otherwise the figure is
                        reported as not measured.                              target <= 1.0
    write_dense_ratio   1 GiB of random data, zstd -3: the same two            target <= 1.05
    write_signed_ratio  the cost of signature checking (issue #17): the 1 GiB dense image
                        (the served file is ~1 GiB: the most bytes gpgv can be fed per raw
                        byte) written by python -m pyinit.image with --keyring (its detached
                        signature, made by gpg with an ed25519 key, verified by gpgv on the
                        stream) / the same write without       target <= 1.10
                        The baseline side here is pyinit itself, unsigned: both sides also
                        check --checksum, as the other figures' pyinit side does. Beside it,
                        no target: signed_sums_ratio, the same write covered by a signed
                        SHA256SUMS instead (one gpgv over a small file before the stream).
    write_peak_rss_mb   peak RSS (GNU time %M) of the writer on a 20 GiB, ~1 % data image, in
                        10^6 bytes; also shown for the 2 GiB and 1 GiB runs    target <= 100
    capture_ratio       python -m pyinit.capture DEV URL --method put --compression zstd
                        / dd if=DEV bs=4M | zstd -T0 -3 | curl -sf -H 'Expect:' -T - URL
                                                                               target <= 0.6
                        Also printed beside it, no target: the same against the baseline with
                        dd iflag=direct (ratio_vs_direct_dd): dd's buffered reads are how it
                        is run, but they cost it the page cache's copy and readahead limits,
                        which pyinit's O_DIRECT reads do not pay.

Real peers: images are served by nginx (sendfile, loopback, access log off) from a generated
config; the disk is a loop device (direct I/O) over a sparse file under ``.cache/bench`` (and, for
the no-offload figure, one over a file on a tmpfs mounted under the run's temp dir, released
after that figure); uploads go to ``pyinit serve``'s ``PUT /images/<name>``.

Fairness, decided once for both sides:
- Before every write run (baseline and pyinit alike) the destination range is overwritten with
  non-zero junk, so both start from the same allocated, dirty-disk state and a writer that skips
  zeros without zeroing them on the disk fails verification. (The 20 GiB RSS run uses 4 KiB junk
  stripes every MiB instead: a full fill would be 20 GiB of writes.)
- Then ``sync`` and ``drop_caches`` (skipped where not allowed), then the served image and the
  programs (the venv's modules, curl, zstd, dd) are read back into the page cache: a busy server
  has the image hot, and the initramfs has its programs in RAM. The disk side stays cold.
- The baseline uses ``iflag=fullblock`` (else dd writes whatever short read the pipe returned,
  as small synchronous O_DIRECT writes: a weaker baseline) and ``conv=fsync`` (pyinit fsyncs).
  The capture baseline sends ``Expect:`` empty (else curl waits for ``100 Continue``).
- The capture source is the 2 GiB image laid down by dd, so the loop device's backing file is
  fully allocated like a real disk (no holes that make reading zeros free).
- Times are wall clock from spawn to exit of one fresh process tree, interpreter start included.
- Both capture sides upload to the same ``pyinit serve``; its own cost is measured once (curl
  uploading a file of the capture's size) and reported as the best ratio any capture could reach.

Correctness: every pyinit write is checked (sha256 of the device range read with O_DIRECT ==
sha256 of the raw image; for 20 GiB, the sha256 of every data run and zeros everywhere else),
the baseline's once; every pyinit capture is decompressed and hashed against the device, the
baseline's once. A mismatch, or pyinit failing, fails loudly (exit 1).

Output: progress, a table, and as the last line exactly one JSON object. Exit 0 when everything
ran and was correct (missed targets included: this is a measurement, not a gate), 1 when a result
was wrong, 2 when something could not run (a missing CLI or endpoint, a tool, a peer).
``--merge FILE`` (repeatable) folds the JSON object another bench wrote (``bench_serve
--json-out``, ``bench_fleet --json-out``) into that last line: its figures (``serve_ratio``,
``serve_peak_rss_mb``; ``burst_p99_ratio``, ``events_per_s_sqlite``, ...) beside these, its
details under ``details``; an unreadable file is named under ``merge_errors``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import indent
from typing import Any
from urllib.parse import urlsplit

from tests.bench import harness
from tests.bench.harness import BenchError, Loop, Run, WrongResult, run_measured
from tests.bench.images import GiB, Image, ImageSpec, MiB, ensure_image

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / ".cache" / "bench"
PY = sys.executable

SPARSE = ImageSpec("sparse", 2 * GiB, 0.30, seed=1)
DENSE = ImageSpec("dense", 1 * GiB, 1.0, seed=2)
HUGE = ImageSpec("huge", 20 * GiB, 0.01, seed=3)

TARGETS = {
    "write_sparse_ratio": 0.40,
    "write_sparse_nooffload_ratio": 1.0,
    "write_dense_ratio": 1.05,
    "write_signed_ratio": 1.10,
    "write_peak_rss_mb": 100.0,
    "capture_ratio": 0.6,
}
WRITE_TIMEOUT = 300.0
HUGE_TIMEOUT = 600.0
CAPTURE_TIMEOUT = 300.0
PROBE_BYTES = 256 * MiB  # the BLKZEROOUT that shows how a destination zeroes


def say(msg: str) -> None:
    print(msg, flush=True)


def mb(kib: int) -> float:
    """ru_maxrss (KiB) in decimal megabytes (the larger, stricter number)."""
    return round(kib * 1024 / 1e6, 1)


@dataclass
class Figure:
    name: str
    target: float
    unit: str = "ratio"
    baseline_s: list[float] = field(default_factory=list)
    pyinit_s: list[float] = field(default_factory=list)
    value: float | None = None
    error: str | None = None  # could not run
    skipped: bool = False  # not selected with --only
    wrong: str | None = None  # ran, result incorrect
    not_measured: str | None = None  # the destination is not what the figure claims
    extra: dict[str, Any] = field(default_factory=dict)

    def finish_ratio(self) -> None:
        if self.baseline_s and self.pyinit_s and not (self.error or self.wrong
                                                      or self.not_measured):
            self.value = round(statistics.median(self.pyinit_s)
                               / statistics.median(self.baseline_s), 3)
            self.extra["ratio_of_minima"] = round(min(self.pyinit_s) / min(self.baseline_s), 3)

    @property
    def status(self) -> str:
        if self.wrong:
            return "WRONG"
        if self.skipped:
            return "skipped"
        if self.not_measured:
            return "not measured"
        if self.error or self.value is None:
            return "n/a"
        return "ok" if self.value <= self.target else "MISS"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "target": self.target, "status": self.status}
        if self.baseline_s:
            out["baseline_s"] = [round(s, 3) for s in self.baseline_s]
            out["baseline_median_s"] = round(statistics.median(self.baseline_s), 3)
        if self.pyinit_s:
            out["pyinit_s"] = [round(s, 3) for s in self.pyinit_s]
            out["pyinit_median_s"] = round(statistics.median(self.pyinit_s), 3)
        if self.error:
            out["error"] = self.error
        if self.wrong:
            out["wrong"] = self.wrong
        if self.not_measured:
            out["not_measured"] = self.not_measured
        out.update(self.extra)
        return out


class Bench:
    def __init__(self, run: Path, reps: int, capture_reps: int) -> None:
        self.run = run
        self.reps = reps
        self.capture_reps = capture_reps
        self.www = run / "www"  # nginx root: symlinks to the cached images
        self.srv = run / "srv"  # pyinit serve root: uploads land in srv/images
        self.www.mkdir()
        (self.srv / "images").mkdir(parents=True)
        self.drop_caches_ok = True
        self.nginx_url = ""
        self.serve_url = ""

    # -- state between runs -----------------------------------------------------------------------

    def settle(self, warm: list[Path]) -> None:
        """sync + drop caches, then warm what a real server and an initramfs hold in RAM."""
        self.drop_caches_ok = harness.drop_caches() and self.drop_caches_ok
        for path in warm:
            with path.open("rb") as f:
                while f.read(8 * MiB):
                    pass
        for argv in ([PY, "-c", "import pyinit.image.write, requests, zstandard\n"
                      "try:\n import pyinit.capture\nexcept Exception:\n pass"],
                     ["zstd", "-V"], ["curl", "-V"], ["dd", "--version"]):
            subprocess.run(argv, capture_output=True, cwd=REPO)

    def serve_image(self, image: Image) -> str:
        link = self.www / image.path.name
        if not link.exists():
            link.symlink_to(image.path)
        return f"{self.nginx_url}/{image.path.name}"

    # -- commands ---------------------------------------------------------------------------------

    @staticmethod
    def baseline_write(url: str, device: str) -> list[str]:
        return ["bash", "-o", "pipefail", "-c",
                f"curl -sf {shlex.quote(url)} | zstd -dc | "
                f"dd of={shlex.quote(device)} bs=4M iflag=fullblock oflag=direct conv=fsync "
                "status=none"]

    @staticmethod
    def pyinit_write(url: str, device: str, image: Image,
                     keyring: Path | None = None) -> list[str]:
        return [PY, "-m", "pyinit.image", url, device,
                "--checksum", f"sha256:{image.zst_sha256}", "--size", str(image.raw_size),
                *(["--keyring", str(keyring)] if keyring else [])]

    @staticmethod
    def baseline_capture(device: str, url: str) -> list[str]:
        return ["bash", "-o", "pipefail", "-c",
                f"dd if={shlex.quote(device)} bs=4M status=none | zstd -q -c -T0 -3 | "
                f"curl -sf -H 'Expect:' -T - {shlex.quote(url)}"]

    @staticmethod
    def direct_capture(device: str, url: str) -> list[str]:
        """The baseline with ``iflag=direct``: not how dd is usually run, but what pyinit's
        O_DIRECT reads are compared with when the rig's page cache is taken out."""
        return ["bash", "-o", "pipefail", "-c",
                f"dd if={shlex.quote(device)} bs=4M iflag=direct status=none | "
                f"zstd -q -c -T0 -3 | curl -sf -H 'Expect:' -T - {shlex.quote(url)}"]

    @staticmethod
    def pyinit_capture(device: str, url: str) -> list[str]:
        return [PY, "-m", "pyinit.capture", device, url, "--method", "put",
                "--compression", "zstd"]

    def measured(self, argv: list[str], timeout: float) -> Run:
        return run_measured(argv, self.run, timeout=timeout)

    # -- checks -----------------------------------------------------------------------------------

    @staticmethod
    def verify_device(loop: Loop, image: Image, who: str) -> None:
        start = time.monotonic()
        got = harness.device_sha256(loop.device, image.raw_size)
        if got != image.raw_sha256:
            raise WrongResult(f"{who}: {loop.device}[0:{image.raw_size}] has sha256 {got}, "
                              f"the image {image.key} has {image.raw_sha256}")
        say(f"bench:   verified {who}: device sha256 == image ({time.monotonic() - start:.1f} s)")

    def verify_upload(self, path: Path, expected: str, who: str) -> int:
        if not path.is_file():
            found = sorted(str(p.relative_to(self.srv)) for p in self.srv.rglob("*")
                           if p.is_file())
            raise WrongResult(f"{who}: no upload at {path} (server root holds {found})")
        sha = hashlib.sha256()
        with subprocess.Popen(["zstd", "-dc", "-q", str(path)], stdout=subprocess.PIPE) as z:
            assert z.stdout is not None
            while chunk := z.stdout.read(8 * MiB):
                sha.update(chunk)
        if z.returncode != 0:
            raise WrongResult(f"{who}: the upload {path.name} is not a valid zstd stream "
                              f"(zstd -d exited {z.returncode})")
        if sha.hexdigest() != expected:
            raise WrongResult(f"{who}: the upload {path.name} decompresses to sha256 "
                              f"{sha.hexdigest()}, the disk has {expected}")
        say(f"bench:   verified {who}: upload decompresses to the disk's sha256")
        return path.stat().st_size


def pyinit_json(run: Run, who: str) -> dict[str, Any]:
    lines = [ln for ln in run.stdout.splitlines() if ln.strip()]
    try:
        value = json.loads(lines[-1]) if lines else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WrongResult(f"{who}: last stdout line is not one JSON object: "
                          f"{lines[-1][:200] if lines else '(no output)'!r}")
    return value


class NotMeasured(BenchError):
    """The destination does not zero the way the figure says: the figure is not reported."""


_WRITING = re.compile(r"provision: writing \S+ to (\S+) \((.*)\)\s*$")


def pyinit_destination(run: Run) -> str | None:
    """What ``python -m pyinit.image`` logged about its destination: size, O_DIRECT or buffered,
    and how it zeroes (``zero runs via BLKZEROOUT, offloaded to the device`` / ``..., the kernel
    writes the zeros``), plus its warning if BLKZEROOUT failed and it fell back to write()."""
    found = None
    for line in run.stderr.splitlines():
        if m := _WRITING.search(line):
            found = m.group(2)
        elif "BLKZEROOUT unsupported" in line:
            found = f"{found}; {line.split('provision: ', 1)[-1]}"
    return found


def check_rc(run: Run, who: str, *, measured: bool) -> None:
    if run.returncode == 0:
        return
    msg = f"{who} exited {run.returncode}: {run.failure()}"
    raise (WrongResult if measured else BenchError)(msg, stderr_tail=run.stderr_tail())


# ---- the figures --------------------------------------------------------------------------------

def alternate(reps: int, sides: tuple[str, ...] = ("baseline", "pyinit")
              ) -> Iterator[tuple[int, str]]:
    """Each rep runs every side once, the order rotated by one each rep (drift cancels)."""
    for i in range(reps):
        k = i % len(sides)
        for who in sides[k:] + sides[:k]:
            yield i, who


def measure_write(b: Bench, fig: Figure, image: Image, loop: Loop,
                  check: Callable[[str, Run], None] | None = None) -> None:
    """``check(who, run)``: called after every run, before the verification (the no-offload
    figure's evidence that zeroing stayed real)."""
    url = b.serve_image(image)
    rss: list[float] = []
    baseline_verified = False
    for i, who in alternate(b.reps):
        harness.fill_junk(loop.device, image.raw_size)
        b.settle([image.path])
        if who == "baseline":
            r = b.measured(b.baseline_write(url, loop.device), WRITE_TIMEOUT)
            check_rc(r, "baseline pipeline", measured=False)
            fig.baseline_s.append(r.seconds)
        else:
            r = b.measured(b.pyinit_write(url, loop.device, image), WRITE_TIMEOUT)
            check_rc(r, "python -m pyinit.image", measured=True)
            result = fig.extra["pyinit_result"] = pyinit_json(r, "python -m pyinit.image")
            fig.pyinit_s.append(r.seconds)
            rss.append(mb(r.max_rss_kib))
            # its own clock (open to last fsync): the rest of the wall time is start-up
            if isinstance(result.get("seconds"), (int, float)):
                fig.extra.setdefault("pyinit_internal_s", []).append(round(result["seconds"], 3))
            said = pyinit_destination(r)
            if said not in fig.extra.setdefault("pyinit_destination", []):
                fig.extra["pyinit_destination"].append(said)
        fig.extra.setdefault(f"{who}_cpu_s", []).append(round(r.cpu_seconds, 2))
        say(f"bench: {fig.name} rep {i + 1}/{b.reps} {who:8} {r.seconds:7.2f} s "
            f"(cpu {r.cpu_seconds:.1f} s, max rss {mb(r.max_rss_kib)} MB)")
        if check is not None:
            check(who, r)
        if who == "pyinit" or not baseline_verified:
            b.verify_device(loop, image, f"{who} write")
            baseline_verified = baseline_verified or who == "baseline"
    fig.extra["pyinit_max_rss_mb"] = max(rss) if rss else None
    fig.finish_ratio()


def zeroing_note(probe: harness.ZeroProbe) -> str:
    """How the destination zeroes, in one line, from what a first BLKZEROOUT did to it."""
    what = (f"a {probe.length >> 20} MiB BLKZEROOUT took {probe.seconds:.3f} s; "
            f"queue/write_zeroes_max_bytes {probe.limit_before} before it, "
            f"{probe.limit_after} after; backing file allocation "
            f"{probe.allocated_before >> 20} -> {probe.allocated_after >> 20} MiB")
    if probe.limit_after:
        return (f"offloaded: {what} (the loop driver turns write-zeroes into fallocate "
                "ZERO_RANGE on the backing file: no zeros are written)")
    return (f"real: {what} (no write-zeroes offload: the kernel writes zero pages)")


def destination(loop: Loop, where: str) -> str:
    return (f"{loop.device}: loop device (direct I/O {'on' if loop.direct_io else 'OFF'}) over "
            f"a {loop.size >> 20} MiB file on {harness.fs_type(loop.backing)} ({where}); both "
            "sides open it O_DIRECT")


def no_offload_problem(probe: harness.ZeroProbe) -> str | None:
    """Why ``probe`` does not show real zeroing, or None."""
    if probe.limit_after is None:
        return "sysfs does not say whether the loop device offloads write-zeroes"
    if probe.limit_after > 0:
        return (f"the loop device still advertises write-zeroes after a BLKZEROOUT "
                f"(queue/write_zeroes_max_bytes {probe.limit_after}): zeroing may be offloaded")
    grown = probe.allocated_after - probe.allocated_before
    if grown < probe.length:
        return (f"a {probe.length}-byte BLKZEROOUT grew the backing file's allocation by only "
                f"{grown} bytes: the zeros were not written as data")
    return None


def no_offload_check(loop: Loop, image: Image, who: str, run: Run) -> None:
    """After every run on the no-offload destination: zeroing is still real."""
    limit = harness.write_zeroes_max_bytes(loop.device)
    if limit != 0:
        raise NotMeasured(f"after the {who} write, {loop.device} advertises write-zeroes "
                          f"(queue/write_zeroes_max_bytes {limit}): zeroing may be offloaded")
    if who != "pyinit":
        return
    allocated = harness.allocated_bytes(loop.backing)
    if allocated < image.raw_size:
        raise NotMeasured(f"after pyinit's write only {allocated} of the first {image.raw_size} "
                          f"bytes of {loop.backing} are allocated: zero runs became holes "
                          "(discarded or punched), not zeros written")
    said = pyinit_destination(run) or ""
    if "offloaded" in said:
        raise NotMeasured(f"pyinit reports its zeroing as offloaded ({said}) where the device "
                          "advertises no write-zeroes")


def measure_rss(b: Bench, fig: Figure, image: Image, loop: Loop, reps: int) -> None:
    url = b.serve_image(image)
    for i in range(reps):
        harness.fill_junk(loop.device, image.raw_size, stripe=MiB)
        b.settle([image.path])
        r = b.measured(b.pyinit_write(url, loop.device, image), HUGE_TIMEOUT)
        check_rc(r, "python -m pyinit.image (20 GiB)", measured=True)
        fig.extra["pyinit_result"] = pyinit_json(r, "python -m pyinit.image (20 GiB)")
        fig.pyinit_s.append(r.seconds)
        fig.extra.setdefault("rss_mb_20gib", []).append(mb(r.max_rss_kib))
        say(f"bench: {fig.name} rep {i + 1}/{reps} pyinit {r.seconds:7.2f} s "
            f"(cpu {r.cpu_seconds:.1f} s, max rss {mb(r.max_rss_kib)} MB)")
        start = time.monotonic()
        read = harness.verify_layout(loop, image.raw_size, image.runs)
        say(f"bench:   verified pyinit write: every data run's sha256 and zeros elsewhere "
            f"({read / GiB:.1f} GiB read, {time.monotonic() - start:.1f} s)")
    fig.value = max(fig.extra["rss_mb_20gib"])


def measure_capture(b: Bench, fig: Figure, image: Image, loop: Loop) -> None:
    # The capture source: the sparse image laid down by dd over the whole disk, so the loop
    # device's backing file is fully allocated like a real disk: no holes that read for free.
    assert image.raw_size == loop.size, "the capture source must fill the disk"
    harness.fill_junk(loop.device, loop.size)
    b.settle([image.path])
    r = b.measured(b.baseline_write(b.serve_image(image), loop.device), WRITE_TIMEOUT)
    check_rc(r, "baseline pipeline (capture source)", measured=False)
    b.verify_device(loop, image, "capture source")
    disk_sha = image.raw_sha256
    # The server's own cost, which both sides pay: upload a file of about the capture's size
    # (the compressed image itself, already in the page cache) with nothing to read or compress.
    floor_name = "capture-floor.img.zst"
    b.settle([image.path])
    floor_url = f"{b.serve_url}/images/{floor_name}"
    r = b.measured(["bash", "-o", "pipefail", "-c",
                    f"curl -sf -H 'Expect:' -T - {shlex.quote(floor_url)} "
                    f"< {shlex.quote(str(image.path))}"], CAPTURE_TIMEOUT)
    check_rc(r, "upload of a precompressed file (server floor)", measured=False)
    floor = r.seconds
    say(f"bench: {fig.name} server floor (curl upload of {image.zst_size / 1e6:.0f} MB): "
        f"{floor:.2f} s")
    for name in (floor_name, floor_name + ".sha256"):
        (b.srv / "images" / name).unlink(missing_ok=True)
    sizes: dict[str, list[int]] = {"baseline": [], "pyinit": [], "direct": []}
    direct_s: list[float] = []
    verified: set[str] = set()
    for i, who in alternate(b.capture_reps, ("baseline", "pyinit", "direct")):
        name = f"capture-{who}-{i + 1}.img.zst"
        upload = b.srv / "images" / name
        url = f"{b.serve_url}/images/{name}"
        b.settle([])
        if who == "baseline":
            r = b.measured(b.baseline_capture(loop.device, url), CAPTURE_TIMEOUT)
            check_rc(r, "baseline capture pipeline", measured=False)
            fig.baseline_s.append(r.seconds)
        elif who == "direct":
            r = b.measured(b.direct_capture(loop.device, url), CAPTURE_TIMEOUT)
            check_rc(r, "baseline capture pipeline with iflag=direct", measured=False)
            direct_s.append(r.seconds)
        else:
            r = b.measured(b.pyinit_capture(loop.device, url), CAPTURE_TIMEOUT)
            check_rc(r, "python -m pyinit.capture", measured=True)
            fig.extra["pyinit_result"] = pyinit_json(r, "python -m pyinit.capture")
            claimed = fig.extra["pyinit_result"].get("sha256_raw")
            if claimed is not None and claimed != disk_sha:
                raise WrongResult(f"pyinit capture reports sha256_raw {claimed}, the disk has "
                                  f"{disk_sha}")
            fig.pyinit_s.append(r.seconds)
            fig.extra.setdefault("rss_mb_pyinit", []).append(mb(r.max_rss_kib))
        fig.extra.setdefault(f"{who}_cpu_s", []).append(round(r.cpu_seconds, 2))
        say(f"bench: {fig.name} rep {i + 1}/{b.capture_reps} {who:8} {r.seconds:7.2f} s "
            f"(cpu {r.cpu_seconds:.1f} s, max rss {mb(r.max_rss_kib)} MB)")
        if who == "pyinit" or who not in verified:
            sizes[who].append(b.verify_upload(upload, disk_sha, f"{who} capture"))
            verified.add(who)
        elif upload.is_file():
            sizes[who].append(upload.stat().st_size)
        upload.unlink(missing_ok=True)
        upload.with_name(upload.name + ".sha256").unlink(missing_ok=True)
    fig.extra["upload_bytes"] = {k: max(v) for k, v in sizes.items() if v}
    fig.extra["server_floor_s"] = round(floor, 3)
    fig.finish_ratio()
    if fig.baseline_s:
        # No capture can beat the time the server takes to receive it: the best ratio possible.
        fig.extra["floor_ratio"] = round(floor / statistics.median(fig.baseline_s), 3)
    if direct_s and fig.pyinit_s:
        # What dd's page-cache reads flatter: the same ratio against dd iflag=direct.
        fig.extra["baseline_direct_s"] = [round(x, 3) for x in direct_s]
        fig.extra["ratio_vs_direct_dd"] = round(statistics.median(fig.pyinit_s)
                                                / statistics.median(direct_s), 3)


# ---- preconditions ------------------------------------------------------------------------------

def cli_problem(module: str) -> str | None:
    """None when ``python -m MODULE --help`` prints a usage; else what is wrong."""
    path = REPO / Path(*module.split("."))
    if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
        return f"{module} does not exist yet"
    out = subprocess.run([PY, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    if out.returncode != 0 or "usage" not in out.stdout.lower():
        tail = (out.stderr.strip().splitlines() or ["no usage printed"])[-1]
        return f"python -m {module} has no command-line interface yet ({tail})"
    return None


def put_problem(base_url: str, srv: Path) -> str | None:
    """None when the server takes ``PUT /images/<name>`` and stores the body there."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    body = b"pyinit bench probe\n"
    try:
        conn.request("PUT", "/images/bench-probe.bin", body=body,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
    except OSError as exc:
        return f"PUT /images/<name>: {exc}"
    finally:
        conn.close()
    stored = srv / "images" / "bench-probe.bin"
    try:
        if resp.status >= 300:
            return f"pyinit serve has no PUT /images/<name> endpoint yet (HTTP {resp.status})"
        if not stored.is_file() or stored.read_bytes() != body:
            return (f"PUT /images/bench-probe.bin answered {resp.status} but {stored} "
                    "does not hold the body")
    finally:
        stored.unlink(missing_ok=True)
    return None


def host_info(loops: list[Loop], drop_ok: bool) -> dict[str, Any]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        return ((out.stdout or out.stderr).strip().splitlines() or ["?"])[0]

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=REPO).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pyinit", "build"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {
        "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "mem": mem,
        "python": platform.python_version(), "zstd": first_line(["zstd", "-V"]).strip("* "),
        "nginx": first_line([harness.NGINX, "-v"]), "curl": first_line(["curl", "-V"]),
        "git": git + ("+dirty" if dirty else ""),
        "loop_direct_io": all(lp.direct_io for lp in loops) if loops else None,
        "drop_caches": drop_ok,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


# ---- main ---------------------------------------------------------------------------------------

def table(figs: list[Figure]) -> str:
    rows = [("figure", "baseline s", "pyinit s", "value", "target", "")]
    for f in figs:
        shown = not f.not_measured  # its times are in the JSON details, not beside figures
        base = f"{statistics.median(f.baseline_s):.2f}" if f.baseline_s and shown else "-"
        mine = f"{statistics.median(f.pyinit_s):.2f}" if f.pyinit_s and shown else "-"
        if f.value is None:
            value = "-"
        elif f.unit == "MB":
            value = f"{f.value:.1f} MB"
        else:
            value = f"{f.value:.3f}"
        target = f"<= {f.target:g}" + (" MB" if f.unit == "MB" else "")
        rows.append((f.name, base, mine, value, target, f.status))
    lines = harness.format_table(rows)
    notes = []
    for f in figs:
        for key in ("destination", "zeroing", "pyinit_destination"):
            if f.extra.get(key):
                said = f.extra[key]
                said = "; ".join(map(str, said)) if isinstance(said, list) else said
                notes.append(f"  {f.name} {key.replace('_', ' ')}: {said}")
        if f.not_measured:
            notes.append(f"  {f.name}: NOT MEASURED: {f.not_measured}")
            continue
        if f.wrong or f.error:
            notes.append(f"  {f.name}: {'WRONG: ' + f.wrong if f.wrong else f.error}")
            continue
        runs = []
        for who, times in (("baseline", f.baseline_s), ("pyinit", f.pyinit_s)):
            if times:
                runs.append(f"{who} " + " ".join(f"{t:.2f}" for t in times))
                if len(times) > 1 and max(times) > 1.5 * min(times):
                    runs.append(f"({who} spread x{max(times) / min(times):.1f}: noisy)")
        if "signed_sums_ratio" in f.extra:
            runs.append("signed SHA256SUMS instead " + " ".join(f"{t:.2f}"
                                                               for t in f.extra["sums_s"])
                        + f": ratio {f.extra['signed_sums_ratio']:.3f}")
        if "ratio_of_minima" in f.extra:
            runs.append(f"ratio of minima {f.extra['ratio_of_minima']:.3f}")
        if f.extra.get("pyinit_internal_s"):
            runs.append("pyinit's own clock " + " ".join(f"{t:.2f}"
                                                        for t in f.extra["pyinit_internal_s"]))
        if "server_floor_s" in f.extra:
            runs.append(f"server floor {f.extra['server_floor_s']:.2f} s "
                        f"(best possible ratio {f.extra.get('floor_ratio', float('nan')):.3f})")
        if "ratio_vs_direct_dd" in f.extra:
            runs.append("against dd iflag=direct (what page-cache reads flatter) "
                        + " ".join(f"{t:.2f}" for t in f.extra["baseline_direct_s"])
                        + f": ratio {f.extra['ratio_vs_direct_dd']:.3f}")
        rss = [f"{k.removeprefix('rss_mb_')} {v}" for k, v in f.extra.items()
               if k.startswith("rss_mb_") and v is not None]
        if rss:
            runs.append("peak RSS MB: " + ", ".join(rss))
        if runs:
            notes.append(f"  {f.name}: " + "; ".join(runs))
    return "\n".join(lines + notes)


class Interrupted(BaseException):
    pass


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    BENCH.mkdir(parents=True, exist_ok=True)
    with (BENCH / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another benchmark holds {BENCH / '.lock'}") from None
        yield


def clean_stale() -> None:
    """Under the lock, any run-* directory is a leftover of a killed run: release its loop
    devices (also those over files in its tmpfs), servers and mounts, then remove it."""
    for run in BENCH.glob("run-*"):
        harness.kill_stale(run)
        for disk in run.rglob("*.disk"):
            harness.detach_stale(disk)
        harness.unmount_stale(run)
        shutil.rmtree(run, ignore_errors=True)


def guarded(fig: Figure, step: Callable[[], None]) -> None:
    """Run one figure; a wrong result or a failure to run is recorded on it, the others go on."""
    try:
        step()
    except NotMeasured as exc:
        fig.not_measured = str(exc)
        say(f"bench: {fig.name} NOT MEASURED: {exc}")
    except WrongResult as exc:
        fig.wrong = str(exc)
        say(f"bench: FAIL {fig.name}: {exc}")
        if exc.stderr_tail:
            fig.extra["stderr_tail"] = exc.stderr_tail
            say("bench:   its stderr ends with:\n" + indent(exc.stderr_tail, "bench:   | "))
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        if isinstance(exc, BenchError) and exc.stderr_tail:
            fig.extra["stderr_tail"] = exc.stderr_tail
            say("bench:   stderr ends with:\n" + indent(exc.stderr_tail, "bench:   | "))
        fig.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
        say(f"bench: {fig.name} could not run: {fig.error}")


FIGURES = ("sparse", "sparse-nooffload", "dense", "signed", "rss", "capture")


@dataclass
class Session:
    """What the report needs to know about a run, however far it got."""

    figs: dict[str, Figure]
    loops: list[Loop] = field(default_factory=list)
    drop_caches: bool = True


def run_figures(args: argparse.Namespace, only: set[str], ses: Session) -> None:
    figs = ses.figs
    harness.preflight()
    with bench_lock(), contextlib.ExitStack() as stack:
        clean_stale()
        writer = cli_problem("pyinit.image")
        capture = cli_problem("pyinit.capture")
        images: dict[str, Image] = {}
        for key, spec in (("sparse", SPARSE), ("dense", DENSE), ("rss", HUGE)):
            if key in only or (key == "sparse" and only & {"capture", "sparse-nooffload"}) \
                    or (key == "dense" and "signed" in only):
                images[key] = ensure_image(spec, BENCH / "images", log=say)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH))
        stack.callback(shutil.rmtree, run, ignore_errors=True)
        b = Bench(run, args.reps, args.capture_reps)
        b.nginx_url = stack.enter_context(harness.nginx(b.www, run))
        disk = stack.enter_context(harness.loop_device(run / "disk-2g.disk", SPARSE.size))
        ses.loops.append(disk)
        say(f"bench: nginx {b.nginx_url}, disk {disk.device} (direct I/O: {disk.direct_io}), "
            f"temp {run}")
        try:
            for key in FIGURES:
                fig = figs[key]
                problem = writer if key != "capture" else capture
                if key not in only:
                    fig.skipped = True
                elif problem:
                    fig.error = problem
                elif key == "sparse":
                    sparse_figure(b, fig, images[key], disk)
                elif key == "sparse-nooffload":
                    nooffload_figure(b, fig, images["sparse"], ses)
                elif key == "dense":
                    fig.extra["image"] = describe(images[key])
                    guarded(fig, functools.partial(measure_write, b, fig, images[key], disk))
                elif key == "signed":
                    signed_figure(b, fig, images["dense"], disk)
                elif key == "rss":
                    rss_figure(b, fig, figs, images["rss"], args.rss_reps, ses)
                else:
                    capture_figure(b, fig, images["sparse"], disk, stack)
        finally:
            ses.drop_caches = b.drop_caches_ok


def signed_figure(b: Bench, fig: Figure, image: Image, disk: Loop) -> None:
    """The dense image signed by a fresh ed25519 key (tests/gpgkeys.py, a GNUPGHOME in the
    run's temp dir), served with its ``.sig`` and a signed ``SHA256SUMS`` beside it: pyinit
    unsigned (the baseline), with the image's own signature checked on the stream (the
    figure), and with the signed SUMS file instead (``signed_sums_ratio``: one gpgv over a
    small file, then the stream's own sha256), alternating."""
    fig.extra["image"] = describe(image)

    def step() -> None:
        from tests.gpgkeys import make_keys

        keys = make_keys(b.run / "gnupg")
        url = b.serve_image(image)
        start = time.monotonic()
        (b.www / (image.path.name + ".sig")).write_bytes(keys.sign_file(image.path, "good"))
        fig.extra["signing_s"] = round(time.monotonic() - start, 2)
        sums = f"{image.zst_sha256}  {image.path.name}\n".encode()
        (b.www / "SHA256SUMS").write_bytes(sums)
        (b.www / "SHA256SUMS.gpg").write_bytes(keys.sign(sums, "good"))
        keyring = keys.keyring(b.run / "keyring.gpg", "good")
        fpr = keys.fingerprint("good")
        say(f"bench: {fig.name}: {url}.sig by {fpr} ({fig.extra['signing_s']} s to sign)")
        commands = {
            "baseline": b.pyinit_write(url, disk.device, image),
            "pyinit": b.pyinit_write(url, disk.device, image, keyring),
            "sums": [PY, "-m", "pyinit.image", url, disk.device, "--size", str(image.raw_size),
                     "--checksum-url", f"{b.nginx_url}/SHA256SUMS", "--keyring", str(keyring)],
        }
        times: dict[str, list[float]] = {who: [] for who in commands}
        for i, who in alternate(b.reps, tuple(commands)):
            harness.fill_junk(disk.device, image.raw_size)
            b.settle([image.path])
            r = b.measured(commands[who], WRITE_TIMEOUT)
            check_rc(r, f"python -m pyinit.image ({who})", measured=True)
            result = pyinit_json(r, f"python -m pyinit.image ({who})")
            if result.get("signer") != (fpr if who != "baseline" else None):
                raise WrongResult(f"{fig.name}: the {who} write reports signer "
                                  f"{result.get('signer')!r}")
            times[who].append(r.seconds)
            fig.extra.setdefault(f"{who}_cpu_s", []).append(round(r.cpu_seconds, 2))
            say(f"bench: {fig.name} rep {i + 1}/{b.reps} {who:8} {r.seconds:7.2f} s "
                f"(cpu {r.cpu_seconds:.1f} s, max rss {mb(r.max_rss_kib)} MB)")
            b.verify_device(disk, image, f"{who} write")
        fig.baseline_s, fig.pyinit_s = times["baseline"], times["pyinit"]
        fig.extra["sums_s"] = [round(t, 3) for t in times["sums"]]
        fig.extra["signed_sums_ratio"] = round(statistics.median(times["sums"])
                                               / statistics.median(times["baseline"]), 3)
        fig.finish_ratio()

    guarded(fig, step)


def sparse_figure(b: Bench, fig: Figure, image: Image, disk: Loop) -> None:
    fig.extra["image"] = describe(image)

    def step() -> None:
        probe = harness.probe_zeroing(disk, PROBE_BYTES)
        fig.extra["destination"] = destination(disk, f"under {BENCH}")
        fig.extra["zeroing"] = zeroing_note(probe)
        fig.extra["zeroing_probe"] = probe.as_json()
        say(f"bench: {fig.name} zeroing on {disk.device}: {fig.extra['zeroing']}")
        measure_write(b, fig, image, disk)

    guarded(fig, step)


def nooffload_figure(b: Bench, fig: Figure, image: Image, ses: Session) -> None:
    """The sparse image again, onto a loop device over a file on a tmpfs of our own (RAM),
    where zeroing is real; the tmpfs is gone again before the next figure."""
    need = image.raw_size + 2 * GiB
    if mem_available() < need:
        fig.error = (f"needs {need >> 30} GiB of available RAM for a tmpfs to hold the "
                     f"{image.raw_size >> 30} GiB destination")
        return
    fig.extra["image"] = describe(image)

    def step() -> None:
        with harness.tmpfs(b.run / "tmpfs", image.raw_size + 64 * MiB) as mnt, \
                harness.loop_device(mnt / "disk-2g-tmpfs.disk", image.raw_size) as loop:
            ses.loops.append(loop)
            fig.extra["destination"] = destination(loop, "a tmpfs the bench mounted")
            # Before any run, on the fresh (all holes) file: the first BLKZEROOUT is where the
            # loop driver learns that tmpfs has no ZERO_RANGE and drops the offload; it must
            # show up as zero pages landing in the file.
            probe = harness.probe_zeroing(loop, PROBE_BYTES)
            fig.extra["zeroing_probe"] = probe.as_json()
            fig.extra["zeroing"] = zeroing_note(probe)
            problem = no_offload_problem(probe)
            if problem:
                raise NotMeasured(f"{loop.device} over {harness.fs_type(loop.backing)}: {problem}")
            say(f"bench: {fig.name} zeroing on {loop.device}: {fig.extra['zeroing']}")
            measure_write(b, fig, image, loop,
                          check=functools.partial(no_offload_check, loop, image))
            fig.extra["zeroing"] += (
                "; after every run the limit was still 0, and after every pyinit write the "
                "backing file was fully allocated (the zero runs are zero pages, not holes) "
                "and read back as the image")

    guarded(fig, step)


def mem_available() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_figure(b: Bench, fig: Figure, figs: dict[str, Figure], image: Image, reps: int,
               ses: Session) -> None:
    if shutil.disk_usage(BENCH).free < HUGE.size + 4 * GiB:
        fig.error = (f"needs {(HUGE.size + 4 * GiB) >> 30} GiB free under {BENCH} in case the "
                     "writer writes the zeros")
        return
    fig.extra["image"] = describe(image)
    # The same writer's peak on the smaller images (independence of size), and what merely
    # importing it costs.
    fig.extra["rss_mb_2gib_sparse"] = figs["sparse"].extra.get("pyinit_max_rss_mb")
    fig.extra["rss_mb_1gib_dense"] = figs["dense"].extra.get("pyinit_max_rss_mb")
    floor = run_measured([PY, "-c", "import pyinit.image.write"], b.run, timeout=60)
    fig.extra["rss_mb_python_import_floor"] = mb(floor.max_rss_kib)

    def step() -> None:
        with harness.loop_device(b.run / "disk-20g.disk", HUGE.size) as big:
            ses.loops.append(big)
            measure_rss(b, fig, image, big, reps)

    guarded(fig, step)


def capture_figure(b: Bench, fig: Figure, image: Image, disk: Loop,
                   stack: contextlib.ExitStack) -> None:
    try:
        # writes open, asked for by name: this bench measures the capture pipeline, and both
        # sides (pyinit.capture, curl -T) would send the same token header anyway
        b.serve_url = stack.enter_context(harness.pyinit_serve(
            b.srv, b.run, ["--allow-unauthenticated-writes"]))
        problem = put_problem(b.serve_url, b.srv)
    except BenchError as exc:
        problem = str(exc)
    if problem:
        fig.error = problem
        return
    fig.extra["image"] = describe(image)
    guarded(fig, functools.partial(measure_capture, b, fig, image, disk))


def report(ses: Session, args: argparse.Namespace, started: float, load_start: list[float],
           fatal: str | None) -> dict[str, Any]:
    figs = ses.figs
    result: dict[str, Any] = {figs[key].name: figs[key].value for key in FIGURES}
    result["details"] = {f.name: f.as_json() for f in figs.values()}
    result["reps"] = {"write": args.reps, "capture": args.capture_reps,
                      "rss_20gib": args.rss_reps}
    result["seconds_total"] = round(time.monotonic() - started, 1)
    result["host"] = host_info(ses.loops, ses.drop_caches) | {"loadavg_start": load_start}
    result["method"] = {
        "write_pre_state": "destination range overwritten with non-zero junk (O_DIRECT) before "
                           "every write run, both sides; 20 GiB run: 4 KiB junk every MiB",
        "caches": "sync + drop_caches before every run, then served image and programs warmed",
        "baseline_write": Bench.baseline_write("URL", "DEV")[-1],
        "baseline_capture": Bench.baseline_capture("DEV", "URL")[-1],
        "capture_source": "the sparse image written by dd: fully allocated backing file",
        "nooffload_destination": "loop device over a file on a tmpfs mounted by the bench; "
                                 "zeroing there shown real by a first BLKZEROOUT (write-zeroes "
                                 "limit -> 0, allocation grows by its length) and re-checked "
                                 "after every run (limit 0; after pyinit: file fully allocated, "
                                 "pyinit not reporting an offload), else not reported",
        "statistic": "median of pyinit / median of baseline, alternating order",
        "rss_unit": "MB = 10^6 bytes of the writer's peak RSS (GNU time %M)",
    }
    if fatal:
        result["error"] = fatal
    return result


def merge(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """``result`` with the JSON object in ``path`` folded in: its scalar top-level figures after
    this run's figures, its ``details`` beside these, anything else (host, method) under
    ``merged``; this run's own keys win."""
    try:
        other = json.loads(path.read_text())
        if not isinstance(other, dict) or not isinstance(other.get("details", {}), dict):
            raise ValueError("not a JSON object with details")
    except (OSError, ValueError) as exc:
        result.setdefault("merge_errors", []).append(f"{path}: {exc}")
        return result
    figures = {k: v for k, v in other.items()
               if k not in result and not isinstance(v, (dict, list))}
    rest = {k: v for k, v in other.items() if k not in figures and k != "details"}
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key == "details":
            out.update(figures)
            value = value | {k: v for k, v in other.get("details", {}).items()
                             if k not in value}
        out[key] = value
    out.setdefault("merged", {})[path.name] = rest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_image",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5,
                        help="repetitions of each side of the write ratios (default: "
                             "%(default)s)")
    parser.add_argument("--capture-reps", type=int, default=3,
                        help="repetitions of each side of the capture ratio (default: "
                             "%(default)s)")
    parser.add_argument("--rss-reps", type=int, default=1,
                        help="repetitions of the 20 GiB RSS run (default: %(default)s)")
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--merge", type=Path, action="append", default=[], metavar="FILE",
                        help="fold the JSON object another bench wrote to FILE (bench_serve "
                             "or bench_fleet --json-out) into the last line; repeatable")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(FIGURES) or min(args.reps, args.capture_reps, args.rss_reps) < 1:
        parser.error(f"--only takes {','.join(FIGURES)}; repetitions must be at least 1")
    # Ctrl-C even when started with SIGINT ignored (a background job of a script), and
    # SIGTERM/SIGHUP: every path out runs the cleanup (loop devices, nginx, temp files).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)

    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    ses = Session({
        "sparse": Figure("write_sparse_ratio", TARGETS["write_sparse_ratio"]),
        "sparse-nooffload": Figure("write_sparse_nooffload_ratio",
                                   TARGETS["write_sparse_nooffload_ratio"]),
        "dense": Figure("write_dense_ratio", TARGETS["write_dense_ratio"]),
        "signed": Figure("write_signed_ratio", TARGETS["write_signed_ratio"]),
        "rss": Figure("write_peak_rss_mb", TARGETS["write_peak_rss_mb"], unit="MB"),
        "capture": Figure("capture_ratio", TARGETS["capture_ratio"]),
    })
    fatal: str | None = None
    fatal_wrong = False
    try:
        run_figures(args, only, ses)
    except (Interrupted, KeyboardInterrupt) as exc:
        say(f"bench: interrupted ({exc or 'SIGINT'}); cleaned up")
        return 130
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        fatal = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BenchError) else str(exc)
        fatal_wrong = isinstance(exc, WrongResult)
        say(f"bench: {'FAIL' if fatal_wrong else 'could not run'}: {fatal}")

    figs = list(ses.figs.values())
    say("")
    say(table(figs))
    result = report(ses, args, started, load_start, fatal)
    for path in args.merge:
        result = merge(result, path)
    say(json.dumps(result, separators=(",", ":")))
    if fatal_wrong or any(f.wrong for f in figs):
        return 1
    if fatal or any(f.error or f.not_measured for f in figs):
        return 2
    return 0


def describe(image: Image) -> dict[str, Any]:
    return {"key": image.key, "raw_bytes": image.raw_size, "zst_bytes": image.zst_size,
            "data_fraction": round(image.data_fraction, 4), "data_runs": image.data_runs}


if __name__ == "__main__":
    sys.exit(main())
