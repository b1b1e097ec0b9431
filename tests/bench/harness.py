"""The real peers a benchmark needs, each a context manager that always cleans up: a loop device
over a sparse file, a tmpfs of our own to put one on, nginx on a free loopback port, ``pyinit
serve``; a child runner that measures wall time, CPU time (``os.wait4``) and peak RSS (GNU time)
of one fresh process tree; junk fills and O_DIRECT verification of a device; what a loop device
does with ``BLKZEROOUT`` (offloaded to its backing file, or zero pages written by the kernel).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinit import mounts, syscalls

MiB = 1 << 20

# Host tools -> the Debian package that provides them.
TOOLS = {
    "losetup": "mount",
    "nginx": "nginx-light (or nginx)",
    "zstd": "zstd",
    "curl": "curl",
    "dd": "coreutils",
    "bash": "bash",
    "time": "time",
}
NGINX = "/usr/sbin/nginx"
TIME = "/usr/bin/time"  # GNU time, for a child's own peak RSS


class BenchError(Exception):
    """The benchmark could not run (missing tool, a peer that did not start, a failed command)."""

    def __init__(self, message: str, *, stderr_tail: str | None = None) -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class WrongResult(BenchError):
    """A measured program failed or produced a wrong result: the benchmark fails loudly."""


def preflight() -> None:
    """Name every missing prerequisite at once, before any work."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (loop devices, drop_caches)")
    for tool, package in TOOLS.items():
        found = shutil.which(tool) or (tool == "nginx" and os.access(NGINX, os.X_OK))
        if tool == "time":
            found = os.access(TIME, os.X_OK)
        if not found:
            problems.append(f"{tool} not found (Debian package: {package})")
    if problems:
        raise BenchError("; ".join(problems))


def drop_caches() -> bool:
    """sync, then drop the page cache; False (and no error) where that is not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path,
                  timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop one child we started (its own process group), escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- processes ---------------------------------------------------------------------------------

def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_workers(run: Path) -> list[int]:
    """The pids of the nginx master's workers (``worker_processes auto``: one per core)."""
    master = int((run / "nginx.pid").read_text().split()[0])
    children = [int(c) for c in
                Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    if not children:
        raise BenchError(f"no nginx worker under pid {master}")
    return children


def cpu_all(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


# ---- loop devices -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Loop:
    device: str
    backing: Path
    size: int
    direct_io: bool


def _losetup_attach(backing: Path, direct_io: bool) -> str:
    argv = ["losetup", "-f", "--show"] + (["--direct-io=on"] if direct_io else []) + [str(backing)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)}: {out.stderr.strip()}")
    return out.stdout.strip()


@contextlib.contextmanager
def loop_device(backing: Path, size: int) -> Iterator[Loop]:
    """A loop device over a new sparse file of ``size`` bytes; detached on the way out, whatever
    happens. Direct I/O (no second page cache for the backing file) when the kernel allows it,
    so the loop device behaves more like a disk."""
    with backing.open("wb") as f:
        f.truncate(size)
    try:
        device = _losetup_attach(backing, direct_io=True)
    except BenchError:
        device = _losetup_attach(backing, direct_io=False)
    try:
        dio = Path(f"/sys/block/{os.path.basename(device)}/loop/dio")
        direct = dio.is_file() and dio.read_text().strip() == "1"
        yield Loop(device, backing, size, direct)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)
        backing.unlink(missing_ok=True)


def fs_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on (its longest mount point in /proc/self/mounts)."""
    best, fstype = "", "?"
    resolved = str(path.resolve())
    for m in mounts.read():
        if (resolved == m.target or resolved.startswith(m.target.rstrip("/") + "/")) \
                and len(m.target) >= len(best):
            best, fstype = m.target, m.fstype
    return fstype


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes (RAM) of our own at ``mountpoint``; unmounted on the way out,
    whatever happens (after what is inside it, e.g. a loop device, was released)."""
    mountpoint.mkdir(mode=0o700)
    argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "pyinit-bench", str(mountpoint)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"{shlex.join(argv)}: {out.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def unmount(mountpoint: Path) -> None:
    """umount, retried while a just-detached loop device still holds its file; lazily at last."""
    for _ in range(50):
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
            return
        if not any(m.target == str(mountpoint) for m in mounts.read()):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True)


def unmount_stale(run: Path) -> None:
    """Unmount what a killed earlier run left mounted under ``run`` (deepest first)."""
    prefix = str(run.resolve()) + "/"
    for m in sorted(mounts.read(), key=lambda m: len(m.target), reverse=True):
        if m.target.startswith(prefix):
            unmount(Path(m.target))


def write_zeroes_max_bytes(device: str) -> int | None:
    """``queue/write_zeroes_max_bytes`` of a whole-disk device (0: no write-zeroes offload: the
    kernel answers ``BLKZEROOUT`` by writing zero pages); None when sysfs does not say."""
    path = Path("/sys/block") / os.path.basename(device) / "queue" / "write_zeroes_max_bytes"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def allocated_bytes(path: Path) -> int:
    """Bytes the filesystem has allocated to ``path`` (st_blocks: holes are not counted)."""
    return os.stat(path).st_blocks * 512


@dataclass(frozen=True)
class ZeroProbe:
    """One ``BLKZEROOUT`` of ``[0, length)`` on a loop device, and what it left behind."""

    length: int
    seconds: float
    limit_before: int | None  # queue/write_zeroes_max_bytes before the first BLKZEROOUT
    limit_after: int | None  # ... and after it
    allocated_before: int  # the backing file's allocated bytes
    allocated_after: int

    def as_json(self) -> dict[str, Any]:
        return {"blkzeroout_bytes": self.length, "seconds": round(self.seconds, 4),
                "write_zeroes_max_bytes_before": self.limit_before,
                "write_zeroes_max_bytes_after": self.limit_after,
                "backing_allocated_before": self.allocated_before,
                "backing_allocated_after": self.allocated_after}


def probe_zeroing(loop: Loop, length: int) -> ZeroProbe:
    """``BLKZEROOUT`` the first ``length`` bytes of ``loop`` and observe how it was done.

    A loop device advertises write-zeroes when its backing file's filesystem has ``fallocate``;
    whether ``FALLOC_FL_ZERO_RANGE`` really works is only learnt from the first request: if it
    fails with EOPNOTSUPP (tmpfs), the loop driver clears the limit to 0 and the block layer
    writes zero pages instead. So the limit is read before and after, and the backing file's
    allocation shows what landed in it."""
    limit_before = write_zeroes_max_bytes(loop.device)
    allocated_before = allocated_bytes(loop.backing)
    fd = os.open(loop.device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        start = time.perf_counter()
        syscalls.blk_zeroout(fd, 0, length)
        os.fsync(fd)
        seconds = time.perf_counter() - start
    except OSError as exc:
        raise BenchError(f"BLKZEROOUT of {length} bytes on {loop.device}: {exc.strerror}") \
            from exc
    finally:
        os.close(fd)
    return ZeroProbe(length, seconds, limit_before, write_zeroes_max_bytes(loop.device),
                     allocated_before, allocated_bytes(loop.backing))


def detach_stale(backing: Path) -> None:
    """Detach loop devices a killed earlier run left on ``backing``."""
    out = subprocess.run(["losetup", "-j", str(backing), "-O", "NAME", "-n"],
                         capture_output=True, text=True)
    for dev in out.stdout.split():
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _aligned(size: int) -> mmap.mmap:
    return mmap.mmap(-1, size)  # page-aligned anonymous memory, as O_DIRECT wants


def fill_junk(device: str, length: int, *, stripe: int | None = None) -> None:
    """Overwrite ``[0, length)`` of ``device`` with non-zero junk (O_DIRECT, then fsync), so a
    writer that merely skips zeros leaves visible garbage. ``stripe``: only 4 KiB of junk at the
    start of every ``stripe`` bytes (cheap for huge devices; still catches skipped zero runs of
    ``stripe`` bytes or more)."""
    chunk = 4 * MiB if stripe is None else 4096
    buf = _aligned(chunk)
    buf.write(bytes((i * 131 + 7) % 255 + 1 for i in range(256)) * (chunk // 256))
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        step = chunk if stripe is None else stripe
        for off in range(0, length, step):
            n = min(chunk, length - off)
            if os.pwritev(fd, [memoryview(buf)[:n]], off) != n:
                raise BenchError(f"short write filling {device} with junk at {off}")
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()


_READ_CHUNK = 8 * MiB


def _scan(fd: int, device: str, start: int, end: int, use: Callable[[memoryview], None]) -> None:
    """Read ``[start, end)`` of an O_DIRECT fd in chunks, handing each to ``use`` (the view is
    only valid during the call)."""
    buf = _aligned(_READ_CHUNK)
    try:
        off = start
        while off < end:
            with memoryview(buf) as view, view[:min(_READ_CHUNK, end - off)] as want:
                n = os.preadv(fd, [want], off)
                if n <= 0:
                    raise WrongResult(f"{device} ends at {off}, before {end}")
                with want[:n] as got:
                    use(got)
            off += n
    finally:
        buf.close()


def device_sha256(device: str, length: int) -> str:
    """sha256 of ``[0, length)`` of ``device``, read with O_DIRECT (what is on the disk, not in
    a cache)."""
    sha = hashlib.sha256()
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        _scan(fd, device, 0, length, sha.update)
    finally:
        os.close(fd)
    return sha.hexdigest()


def _allocated(backing: Path, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The parts of ``[start, end)`` of a file that are not holes (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole from here on
                return
            if data >= end:
                return
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            yield data, hole
            pos = hole
    finally:
        os.close(fd)


def verify_layout(loop: Loop, size: int, runs: Sequence[Sequence[Any]]) -> int:
    """Check ``[0, size)`` of ``loop`` against an image given as data runs ``[offset, length,
    sha256]`` with zeros everywhere else, without hashing gigabytes of zeros: every data run is
    read from the device (O_DIRECT) and hashed; every zero range is read from the device and
    compared with zeros, except where the loop's backing file has a hole there (a hole in the
    file behind a loop device at offset 0 reads as zeros). Returns the bytes read."""
    zeros = bytes(_READ_CHUNK)
    read = 0
    fd = os.open(loop.device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        pos = 0
        for off, length, digest in [*runs, (size, 0, None)]:
            for start, end in _allocated(loop.backing, pos, off):
                def zero(part: memoryview, start: int = start, end: int = end) -> None:
                    if part.tobytes() != zeros[:len(part)]:  # memoryview == is slow
                        raise WrongResult(f"{loop.device}: non-zero bytes in "
                                          f"[{start}, {end}), where the image has zeros")
                _scan(fd, loop.device, start, end, zero)
                read += end - start
            if digest is not None:
                sha = hashlib.sha256()
                _scan(fd, loop.device, off, off + length, sha.update)
                read += length
                if sha.hexdigest() != digest:
                    raise WrongResult(f"{loop.device}: data run [{off}, {off + length}) has "
                                      f"sha256 {sha.hexdigest()}, the image has {digest}")
            pos = off + length
    finally:
        os.close(fd)
    return read


# ---- servers ------------------------------------------------------------------------------------

NGINX_CONF = """\
# Generated by tests/bench: a static server for the benchmark images, nothing else.
daemon off;
master_process on;
worker_processes {workers};
# Root: the images sit under a 0700 temp dir that the default worker user cannot traverse.
user root;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {run}/nginx-tmp/body;
    proxy_temp_path {run}/nginx-tmp/proxy;
    fastcgi_temp_path {run}/nginx-tmp/fastcgi;
    uwsgi_temp_path {run}/nginx-tmp/uwsgi;
    scgi_temp_path {run}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, run: Path, *, workers: str = "1") -> Iterator[str]:
    """nginx serving ``root`` on a free loopback port (config generated in ``run``); yields the
    base URL; always stopped. ``workers``: ``worker_processes`` (``auto``: one per core, what
    Debian's nginx.conf sets)."""
    port = free_port()
    (run / "nginx-tmp").mkdir(exist_ok=True)
    conf = run / "nginx.conf"
    conf.write_text(NGINX_CONF.format(run=run, port=port, root=root, workers=workers))
    log = run / "nginx-error.log"
    with (run / "nginx.out").open("wb") as out:
        proc = subprocess.Popen([NGINX, "-p", str(run), "-e", str(log), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_port(port, proc, "nginx", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGQUIT)  # graceful: the master waits for its worker


@contextlib.contextmanager
def pyinit_serve(root: Path, run: Path, args: Sequence[str] = (),
                 timeout: float = 15.0) -> Iterator[str]:
    """``pyinit serve --root ROOT [ARGS]`` on a free loopback port; yields the base URL. Its log
    is ``run/serve.log``, its pid in ``run/serve.pid``."""
    port = free_port()
    log = run / "serve.log"
    pyinit = Path(sys.executable).with_name("pyinit")
    with log.open("ab") as out:
        proc = subprocess.Popen([str(pyinit), "serve", "--root", str(root), "--port", str(port),
                                 *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (run / "serve.pid").write_text(f"{proc.pid}\n")
    try:
        wait_for_port(port, proc, "pyinit serve", log, timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, signal.SIGINT)


def kill_stale(run: Path) -> None:
    """Stop the servers a killed earlier run left behind: only a process whose pid file is in
    ``run`` (or a directory under it) and whose command line names ``run``; and a PostgreSQL
    cluster (tests/pgcluster.py) whose data directory is ``run/**/postgres/data``."""
    for name, sig in (("nginx.pid", signal.SIGQUIT), ("serve.pid", signal.SIGTERM),
                      ("postmaster.pid", signal.SIGQUIT)):  # SIGQUIT: postgres' immediate stop
        for pid_file in run.rglob(name):
            try:
                pid = int(pid_file.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if str(run).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


# ---- measured children --------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    seconds: float
    returncode: int
    cpu_seconds: float  # user + system of the whole tree
    max_rss_kib: int  # largest single process in the tree
    stdout: str
    stderr: str

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])

    def failure(self) -> str:
        """One line on why the child failed: its JSON ``error`` if it printed one, else the last
        line of its stderr."""
        for line in reversed(self.stdout.strip().splitlines()):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and "error" in value:
                    return f"{value.get('type', 'error')}: {value['error']}"
            break
        lines = self.stderr.strip().splitlines()
        return lines[-1].strip() if lines else "(no output)"


def run_measured(argv: Sequence[str], run_dir: Path, *, timeout: float) -> Run:
    """Run ``argv`` as a fresh child in its own process group; wall time from spawn to reap.

    Peak RSS comes from GNU time wrapped around ``argv``: a child forked from this (large)
    Python process starts with the parent's RSS as its high-water mark (fork copies the page
    tables, and exec records the old mm's peak), so ``wait4`` here would report this process's
    size for any small child; ``time`` is small and reports its own child's peak alone. CPU
    time is the whole tree's, from ``os.wait4``. Output goes to files (no pipes to drain while
    timing); on timeout or interruption the group is killed.
    """
    out_path, err_path = run_dir / "child.out", run_dir / "child.err"
    rss_path = run_dir / "child.rss"
    rss_path.unlink(missing_ok=True)
    wrapped = [TIME, "-q", "-f", "%M", "-o", str(rss_path), *argv]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    except BaseException:
        kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if timed_out.is_set():
        raise BenchError(f"{shlex.join(argv)}: no result within {timeout:.0f} s (killed)")
    try:
        rss = int(rss_path.read_text().split()[-1])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchError(f"{TIME} left no peak RSS in {rss_path}: {exc}") from exc
    return Run(tuple(argv), seconds, proc.returncode, usage.ru_utime + usage.ru_stime,
               rss, out_path.read_text(errors="replace"),
               err_path.read_text(errors="replace"))


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned lines: the first column left-aligned, the others right; a rule under the
    header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines: list[str] = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return lines
