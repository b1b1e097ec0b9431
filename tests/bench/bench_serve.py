"""``make bench`` (issue #6): 32 agents pulling one image at once, ``pyinit serve`` against nginx.

    python -m tests.bench.bench_serve [--agents 32] [--size-mb 256] [--rounds 3]
                                      [--json-out FILE]

One incompressible file of 256 MiB (``os.urandom``, written once per run into a temporary
directory under ``.cache/bench``, the filesystem the repository is on) is served at the same time
by nginx (the image bench's config, ``sendfile on``, loopback, access log off, but with
``worker_processes auto;``, the setting Debian's nginx.conf ships and nginx users run: one worker
per core, 2 here; its root is the very ``images/`` directory, so both serve the same inode) and
by ``pyinit serve --root DIR --port P`` (a subprocess). Until issue #13 this baseline ran ONE
nginx worker (the image bench's setting), which let a single-process server look better than
nginx as deployed: ``serve_ratio`` figures from before then are not comparable. The page cache
is warm for both: the file is read through before every measured run and ``fincore`` reports how
much of it is resident.

A pool of 32 agent processes (forked once, before any large allocation, so every agent is small)
waits on a barrier; released together, each opens its own connection, sends one ``GET`` and
reads the body with ``readinto`` into a reusable 1 MiB buffer (no per-chunk allocation).
Aggregate throughput is the bytes of all agents divided by the time from the first agent's start
to the last agent's end (``CLOCK_MONOTONIC``, shared by all processes). Per round the order of
the two servers alternates; the ratio is the median of pyinit's aggregate MB/s over the median
of nginx's, and every run is printed.

The client must not be the bottleneck: first in every round, 32 ``curl -o /dev/null``
processes pull the same file from nginx (the same count, spawned at once; spawning is inside their
time, which only flatters the agents), and ``client_efficiency`` = agents-on-nginx ÷
curl-on-nginx is reported; at ~1 the agents reach what a C client reaches, so a lower pyinit
figure is the server's.

Correctness: every agent checks status 200, ``Content-Length`` and the number of bytes it read;
one agent per run (a different one each run) hashes the whole body and compares the sha256 with
the file's. A mismatch fails loudly (exit 1); a fast wrong answer never counts.

Server memory: ``VmHWM`` (peak RSS) of the ``pyinit serve`` process from ``/proc/<pid>/status``,
read idle before the first run and after the last (``serve_peak_rss_mb``, 10^6 bytes); the
largest nginx worker's for comparison. CPU seconds of each server per run (``/proc/<pid>/stat``;
nginx: all its workers together) show where the time goes.

Output: progress, a table, and as the last line one JSON object with ``serve_ratio`` (target
>= 0.8) and ``serve_peak_rss_mb``; ``--json-out`` writes the same object to a file, which
``bench_image --merge`` folds into its final line (see the Makefile). Exit 0 when everything ran
and was correct (a missed target included), 1 when a result was wrong, 2 when something could not
run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.synchronize
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.bench import harness
from tests.bench.bench_image import BENCH, bench_lock, clean_stale, say
from tests.bench.harness import (
    BenchError,
    WrongResult,
    cpu_all,
    nginx_workers,
    proc_status,
)

MiB = 1 << 20
TARGET = 0.8
CHUNK = 1 * MiB  # the agents' read buffer
AGENT_TIMEOUT = 300.0
IMAGE = "serve-bench.img"


# ---- agents -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pull:
    """What one agent did in one run."""

    agent: int
    start: float
    end: float
    received: int
    sha256: str | None
    error: str | None = None


def fetch(url: str, size: int, want_sha: bool, view: memoryview) -> tuple[int, str | None]:
    """GET ``url`` on a new connection and read the whole body into ``view`` piece by piece;
    raise on a status other than 200 or a length other than ``size``."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=AGENT_TIMEOUT)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise WrongResult(f"HTTP {resp.status} {resp.reason}")
        length = resp.getheader("Content-Length")
        if length != str(size):
            raise WrongResult(f"Content-Length {length}, the file has {size} bytes")
        sha = hashlib.sha256() if want_sha else None
        got = 0
        while n := resp.readinto(view):
            if sha is not None:
                sha.update(view[:n])
            got += n
        if got != size:
            raise WrongResult(f"received {got} of {size} bytes")
        return got, sha.hexdigest() if sha is not None else None
    finally:
        conn.close()


def agent(index: int, jobs: multiprocessing.connection.Connection,
          barrier: multiprocessing.synchronize.Barrier) -> None:
    """One simulated machine: per job (url, size, hash?), wait for the others, pull, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tears the pool down
    buf = bytearray(CHUNK)
    with memoryview(buf) as view:
        while (job := jobs.recv()) is not None:
            url, size, want_sha = job
            barrier.wait(timeout=60)
            start = time.monotonic()
            try:
                got, digest = fetch(url, size, want_sha, view)
                pull = Pull(index, start, time.monotonic(), got, digest)
            except Exception as exc:  # reported to the parent, which fails the run
                pull = Pull(index, start, time.monotonic(), 0, None,
                            f"{type(exc).__name__}: {exc}")
            jobs.send(pull)


class Agents:
    """A pool of agent processes, forked once and reused for every run."""

    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("fork")  # small children: forked before big buffers
        self.barrier = ctx.Barrier(count + 1)
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=agent, args=(i, child, self.barrier), daemon=True,
                               name=f"bench-agent-{i}")
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def pull(self, url: str, size: int, hasher: int) -> list[Pull]:
        for i, pipe in enumerate(self.pipes):
            pipe.send((url, size, i == hasher))
        self.barrier.wait(timeout=60)  # every agent is ready: go
        pulls = []
        for pipe in self.pipes:
            if not pipe.poll(AGENT_TIMEOUT):
                raise BenchError(f"an agent gave no result within {AGENT_TIMEOUT:.0f} s")
            pulls.append(pipe.recv())
        return pulls

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def agents(count: int) -> Iterator[Agents]:
    pool = Agents(count)
    try:
        yield pool
    finally:
        pool.close()


# ---- measurements -------------------------------------------------------------------------------

def make_image(path: Path, size: int) -> str:
    """``size`` bytes of ``os.urandom`` (incompressible); its sha256."""
    sha = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            sha.update(block)
            f.write(block)
    return sha.hexdigest()


def warm(path: Path) -> float:
    """Read ``path`` through (into the page cache); the resident fraction per ``fincore``."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", str(path)],
                         capture_output=True, text=True)
    try:
        res, size = (int(x) for x in out.stdout.split())
    except ValueError:
        return float("nan")
    return res / size if size else float("nan")


def curl_pull(url: str, size: int, count: int) -> tuple[float, float]:
    """``count`` curl processes pulling ``url`` to /dev/null at once: (start, end)."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
    start = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    results = [p.communicate(timeout=AGENT_TIMEOUT) for p in procs]
    end = time.monotonic()
    for p, (out, err) in zip(procs, results, strict=True):
        if p.returncode != 0 or out.split() != ["200", str(size)]:
            raise BenchError(f"curl {url}: exit {p.returncode}, {out!r} {err.strip()!r}")
    return start, end


@dataclass
class Side:
    name: str
    mbps: list[float] = field(default_factory=list)  # aggregate, 10^6 bytes/s
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)  # server process CPU per run
    slowest_agent_s: list[float] = field(default_factory=list)
    fastest_agent_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.mbps) if self.mbps else None

    def add(self, total: int, start: float, end: float) -> float:
        rate = total / (end - start) / 1e6
        self.mbps.append(rate)
        self.seconds.append(end - start)
        return rate

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"aggregate_mb_s": [round(x, 1) for x in self.mbps],
                               "seconds": [round(x, 3) for x in self.seconds]}
        if self.median is not None:
            out["median_mb_s"] = round(self.median, 1)
        if self.cpu_s:
            out["server_cpu_s"] = [round(x, 2) for x in self.cpu_s]
        if self.slowest_agent_s:
            out["slowest_agent_s"] = [round(x, 3) for x in self.slowest_agent_s]
            out["fastest_agent_s"] = [round(x, 3) for x in self.fastest_agent_s]
        return out


def check_pulls(pulls: list[Pull], size: int, sha256: str, who: str) -> None:
    for p in pulls:
        if p.error:
            raise WrongResult(f"{who}: agent {p.agent}: {p.error}")
        if p.received != size:
            raise WrongResult(f"{who}: agent {p.agent} received {p.received} of {size} bytes")
        if p.sha256 is not None and p.sha256 != sha256:
            raise WrongResult(f"{who}: agent {p.agent} received sha256 {p.sha256}, the file "
                              f"has {sha256}")
    if not any(p.sha256 for p in pulls):
        raise WrongResult(f"{who}: no agent hashed the body")


@dataclass
class Result:
    agents: int
    size: int
    rounds: int
    nginx: Side = field(default_factory=lambda: Side("nginx"))
    pyinit: Side = field(default_factory=lambda: Side("pyinit serve"))
    curl: Side = field(default_factory=lambda: Side("curl (C client) on nginx"))
    resident: list[float] = field(default_factory=list)
    rss: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wrong: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.wrong or self.error or not (self.nginx.median and self.pyinit.median):
            return None
        return round(self.pyinit.median / self.nginx.median, 3)

    @property
    def client_efficiency(self) -> float | None:
        if not (self.nginx.median and self.curl.median):
            return None
        return round(self.nginx.median / self.curl.median, 3)


def measure(res: Result, run: Path) -> None:
    root = run / "srv"
    images = root / "images"
    images.mkdir(parents=True)
    path = images / IMAGE
    say(f"bench: writing {res.size / MiB:.0f} MiB of os.urandom to {path}")
    sha256 = make_image(path, res.size)
    with contextlib.ExitStack() as stack:
        # Agents first: forked while this process is still small.
        pool = stack.enter_context(agents(res.agents))
        nginx_base = stack.enter_context(harness.nginx(images, run, workers="auto"))
        serve_base = stack.enter_context(harness.pyinit_serve(root, run))
        serve_pid = int((run / "serve.pid").read_text())
        workers = nginx_workers(run)
        urls = {"nginx": f"{nginx_base}/{IMAGE}", "pyinit": f"{serve_base}/images/{IMAGE}"}
        res.rss["serve_idle_rss_mb"] = round(proc_status(serve_pid, "VmRSS") / 1e6, 1)
        res.rss["serve_idle_hwm_mb"] = round(proc_status(serve_pid, "VmHWM") / 1e6, 1)
        say(f"bench: nginx {nginx_base} ({len(workers)} workers, pids "
            f"{' '.join(map(str, workers))}), pyinit serve {serve_base} "
            f"(pid {serve_pid}, idle RSS {res.rss['serve_idle_rss_mb']} MB), "
            f"{res.agents} agents, temp {run}")
        total = res.agents * res.size
        run_no = 0
        for r in range(res.rounds):
            order = ("nginx", "pyinit") if r % 2 == 0 else ("pyinit", "nginx")
            res.resident.append(warm(path))
            start, end = curl_pull(urls["nginx"], res.size, res.agents)
            rate = res.curl.add(total, start, end)
            say(f"bench: round {r + 1}/{res.rounds} curl x{res.agents} on nginx "
                f"{rate:8.0f} MB/s ({end - start:.2f} s)")
            for who in order:
                side = res.nginx if who == "nginx" else res.pyinit
                pids = workers if who == "nginx" else [serve_pid]
                res.resident.append(warm(path))
                cpu0 = cpu_all(pids)
                pulls = pool.pull(urls[who], res.size, hasher=run_no % res.agents)
                side.cpu_s.append(cpu_all(pids) - cpu0)
                run_no += 1
                check_pulls(pulls, res.size, sha256, side.name)
                start, end = min(p.start for p in pulls), max(p.end for p in pulls)
                rate = side.add(total, start, end)
                durations = sorted(p.end - p.start for p in pulls)
                side.fastest_agent_s.append(durations[0])
                side.slowest_agent_s.append(durations[-1])
                say(f"bench: round {r + 1}/{res.rounds} {who:6} {rate:8.0f} MB/s "
                    f"({end - start:.2f} s; agents {durations[0]:.2f}-{durations[-1]:.2f} s; "
                    f"server cpu {side.cpu_s[-1]:.2f} s; all {res.agents} lengths ok, "
                    f"agent {pulls[(run_no - 1) % res.agents].agent} sha256 ok)")
        res.rss["serve_peak_rss_mb"] = round(proc_status(serve_pid, "VmHWM") / 1e6, 1)
        res.rss["serve_rss_end_mb"] = round(proc_status(serve_pid, "VmRSS") / 1e6, 1)
        res.rss["nginx_worker_peak_rss_mb"] = round(
            max(proc_status(w, "VmHWM") for w in workers) / 1e6, 1)
        res.rss["nginx_workers"] = len(workers)


# ---- report -------------------------------------------------------------------------------------

def table(res: Result) -> str:
    rows = [("server", "aggregate MB/s (median)", "runs", "server cpu s")]
    for side in (res.curl, res.nginx, res.pyinit):
        rows.append((side.name, f"{side.median:.0f}" if side.median else "-",
                     " ".join(f"{x:.0f}" for x in side.mbps) or "-",
                     " ".join(f"{x:.2f}" for x in side.cpu_s) or "-"))
    lines = harness.format_table(rows)
    ratio = res.ratio
    status = "WRONG" if res.wrong else "n/a" if ratio is None else \
        "ok" if ratio >= TARGET else "MISS"
    lines.append(f"serve_ratio (pyinit / nginx): {ratio if ratio is not None else '-'}  "
                 f"target >= {TARGET:g}  {status}")
    lines.append(f"client_efficiency (agents / curl, both on nginx): "
                 f"{res.client_efficiency if res.client_efficiency is not None else '-'}")
    if res.rss:
        lines.append(f"pyinit serve peak RSS {res.rss.get('serve_peak_rss_mb', '-')} MB "
                     f"(idle {res.rss.get('serve_idle_rss_mb', '-')} MB); largest of "
                     f"{res.rss.get('nginx_workers', '-')} nginx workers "
                     f"{res.rss.get('nginx_worker_peak_rss_mb', '-')} MB")
    if res.wrong or res.error:
        lines.append(f"{'WRONG' if res.wrong else 'could not run'}: {res.wrong or res.error}")
    return "\n".join(lines)


def report(res: Result, started: float, load_start: list[float]) -> dict[str, Any]:
    ratio = res.ratio
    status = "WRONG" if res.wrong else "n/a" if ratio is None else \
        "ok" if ratio >= TARGET else "MISS"
    details: dict[str, Any] = {
        "value": ratio, "target": TARGET, "status": status,
        "nginx": res.nginx.as_json(), "pyinit": res.pyinit.as_json(),
        "curl_on_nginx": res.curl.as_json(), "client_efficiency": res.client_efficiency,
        "agents": res.agents, "bytes_per_agent": res.size, "rounds": res.rounds,
        "page_cache_resident_min": round(min(res.resident), 4) if res.resident else None,
        **res.rss,
    }
    if res.nginx.mbps and res.pyinit.mbps and not res.wrong:
        details["ratio_of_maxima"] = round(max(res.pyinit.mbps) / max(res.nginx.mbps), 3)
    if res.error:
        details["error"] = res.error
    if res.wrong:
        details["wrong"] = res.wrong
    return {
        "serve_ratio": ratio,
        "serve_peak_rss_mb": res.rss.get("serve_peak_rss_mb"),
        "details": {"serve_ratio": details},
        "seconds_total": round(time.monotonic() - started, 1),
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                 "loadavg_start": load_start,
                 "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "method": {
            "image": "os.urandom file in a temp dir under .cache/bench, read through (page "
                     "cache warm) before every run; nginx and pyinit serve the same inode",
            "agents": "forked processes, released by a barrier, one GET each, readinto a 1 MiB "
                      "buffer; every length checked, one sha256 per run",
            "aggregate": "all bytes / (last agent end - first agent start)",
            "statistic": "median pyinit MB/s / median nginx MB/s, order alternating per round",
            "nginx": "worker_processes auto (one per core), sendfile on, tcp_nopush on, "
                     "access_log off (tests/bench/harness); before issue #13: 1 worker",
            "rss_unit": "MB = 10^6 bytes of VmHWM of the pyinit serve process",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_serve",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=32,
                        help="concurrent agent processes (default: %(default)s)")
    parser.add_argument("--size-mb", type=int, default=256,
                        help="image size in MiB (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each server, alternating order (default: %(default)s)")
    parser.add_argument("--json-out", type=Path,
                        help="also write the final JSON object to this file")
    args = parser.parse_args(argv)
    if min(args.agents, args.size_mb, args.rounds) < 1:
        parser.error("--agents, --size-mb and --rounds must be at least 1")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    res = Result(args.agents, args.size_mb * MiB, args.rounds)
    if args.json_out:
        args.json_out.unlink(missing_ok=True)  # no stale figures for bench_image --merge
    try:
        if not (shutil.which("curl") and os.access(harness.NGINX, os.X_OK)):
            raise BenchError("needs curl and nginx (Debian packages curl, nginx-light)")
        with bench_lock():
            clean_stale()
            run = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH))
            try:
                measure(res, run)
            finally:
                shutil.rmtree(run, ignore_errors=True)
    except KeyboardInterrupt:
        say("bench: interrupted; cleaned up")
        return 130
    except WrongResult as exc:
        res.wrong = str(exc)
        say(f"bench: FAIL: {exc}")
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        res.error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        say(f"bench: could not run: {res.error}")
    say("")
    say(table(res))
    line = json.dumps(report(res, started, load_start), separators=(",", ":"))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(line + "\n")
    say(line)
    return 1 if res.wrong else 2 if res.error else 0


if __name__ == "__main__":
    sys.exit(main())
