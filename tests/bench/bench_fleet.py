"""``make bench`` (issue #13): a fleet against ``pyinit serve``: a burst of machines, durable
events, memory and status pages with 20 000 machines.

    python -m tests.bench.bench_fleet [--only burst,events,rss] [--clients 1000]
        [--processes 4] [--burst-rounds 5] [--connections 64] [--seconds 10]
        [--event-rounds 3] [--rss-machines 20000] [--rss-reps 5] [--json-out FILE]

    burst_p99_ratio      1000 machines GET /<mac> at once: p99 latency of ``pyinit serve`` ÷ p99
                         of nginx serving the same machines from ``pyinit export``
                         (worker_processes auto)                   target <= 2, no client fails
    events_per_s_sqlite  acknowledged (committed) events per second over HTTP, 64 keep-alive
    events_per_s_pg      connections, SQLite (default) / PostgreSQL (``--db``)   target >= 2000
                         (also ÷ nginx ``return 204;``: the HTTP layer alone, labelled so)
    serve_rss_20k_mb     VmHWM of ``pyinit serve`` with 20 000 machines x 50 events after status
                         pages and machine logs (baseline: the same server, empty root)
    api_page_ms_20k      median of ``GET /api/machines`` with those 20 000 (issue: <= 100 ms
                         with 10 000)

How each is measured, and what the rig flatters, is in the docstrings of
:mod:`tests.bench.fleet_burst`, :mod:`tests.bench.fleet_events` and :mod:`tests.bench.fleet_rss`;
the clients in :mod:`tests.bench.fleet_clients`, the fleet and its peers (machine files, the
export behind nginx with the packaged nginx.conf settings, PostgreSQL) in
:mod:`tests.bench.fleet_peers`. The client processes are forked first, while this process is
small. The burst and the events share one ``pyinit serve`` (default options: SQLite, secure
writes: every event carries its machine's own token) and one nginx on the export of the same
1000 machine files; the servers inherit this process's open-file limit (printed).

Output: progress (every run), a table per figure, and as the last line one JSON object with the
figures above; ``--json-out`` writes it to a file too, which ``bench_image --merge`` folds into
the last line of ``make bench``. Exit 0 when everything ran and was correct (a missed target
included), 1 when a result was wrong (a wrong body, a count that disagrees with the 204s, a
count lost across kill -9), 2 when something could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

from tests.bench import fleet_burst, fleet_events, fleet_rss, harness
from tests.bench.bench_image import BENCH, bench_lock, clean_stale, say
from tests.bench.fleet_clients import Pool
from tests.bench.fleet_peers import (
    export_tree,
    macs,
    nginx_export,
    postgres,
    pyinit_cli,
    worker_connections,
    write_machines,
)
from tests.bench.harness import BenchError, WrongResult

FIGURES = ("burst", "events", "rss")


class Figure(Protocol):
    error: str | None
    wrong: str | None

    def table(self) -> list[str]: ...


def guarded(fig: Figure, name: str, step: Callable[[], None]) -> None:
    """Run one figure; a wrong result or a failure to run is recorded on it, the others go on."""
    try:
        step()
    except WrongResult as exc:
        fig.wrong = str(exc)
        say(f"bench: FAIL {name}: {exc}")
    except (BenchError, OSError, subprocess.SubprocessError, requests.RequestException,
            ValueError, KeyError) as exc:
        fig.error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        say(f"bench: {name} could not run: {fig.error}")


def addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def serve_pid(run: Path) -> int:
    return int((run / "serve.pid").read_text())


def serve_pids(run: Path) -> list[int]:
    """``pyinit serve``'s process and its worker processes (``--workers``): whose CPU counts."""
    pid = serve_pid(run)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


# pyinit serve as we tell operators to run it for a rack (docs/server.md): one worker process
# per CPU, as nginx's worker_processes auto
SERVE_ARGS = ("--workers", "auto")


def started(stack: contextlib.ExitStack, root: Path, run: Path, args: tuple[str, ...] = ()) -> str:
    """``pyinit serve`` on ``root`` (pid and log in ``run``) for the rest of ``stack``."""
    run.mkdir(exist_ok=True)
    return stack.enter_context(harness.pyinit_serve(root, run, args))


@contextlib.contextmanager
def fleet_servers(run: Path, fleet: list[str]) -> Iterator[dict[str, Any]]:
    """The machine files, their export behind nginx and ``pyinit serve`` on them."""
    root, tree = run / "root", run / "tree"
    write_machines(root, fleet)
    port = harness.free_port()
    say(f"bench: {export_tree(root, tree, port)}")
    with contextlib.ExitStack() as stack:
        nginx_url = stack.enter_context(nginx_export(tree, run / "nginx", port,
                                                     worker_connections(len(fleet))))
        serve_url = started(stack, root, run / "serve-sqlite", SERVE_ARGS)
        workers = harness.nginx_workers(run / "nginx")
        say(f"bench: nginx {nginx_url} ({len(workers)} workers), pyinit serve {serve_url} "
            f"(pids {serve_pids(run / 'serve-sqlite')}), {len(fleet)} machines, temp {run}")
        yield {"root": root, "tree": tree, "nginx": nginx_url, "serve": serve_url,
               "workers": workers, "stack": stack}


def run_burst(res: fleet_burst.Burst, pool: Pool, run: Path, fleet: list[str],
              peers: dict[str, Any]) -> None:
    tree = peers["tree"]
    targets = [(f"/{mac}", (tree / f"{mac}.json").read_bytes()) for mac in fleet]
    res.setup = {"nginx_workers": len(peers["workers"]),
                 "nginx_worker_connections": worker_connections(len(fleet)),
                 "nginx_backlog": 511, "pyinit_backlog": 1024}
    fleet_burst.measure(res, pool, {"nginx": addr(peers["nginx"]),
                                    "pyinit": addr(peers["serve"])},
                        targets, {"nginx": peers["workers"],
                                  "pyinit": serve_pids(run / "serve-sqlite")}, say)


def run_events(res: fleet_events.Events, pool: Pool, run: Path, fleet: list[str],
               peers: dict[str, Any]) -> None:
    from pyinit_server import auth

    root: Path = peers["root"]
    stack: contextlib.ExitStack = peers["stack"]
    secret = auth.load_secret(root)
    tokens = {mac: auth.machine_token(secret, mac) for mac in fleet}

    def restarter(name: str, args: tuple[str, ...],
                  stack: contextlib.ExitStack) -> Callable[[], str]:
        def restart() -> str:
            fleet_events.kill9(run / name / "serve.pid")
            return started(stack, root, run / name, args)
        return restart

    sides = {
        "nginx": fleet_events.Side("nginx", peers["nginx"], peers["workers"],
                                   access_log=run / "nginx" / "nginx-access.log"),
        "sqlite": fleet_events.Side("sqlite", peers["serve"],
                                    serve_pids(run / "serve-sqlite"),
                                    restart=restarter("serve-sqlite", SERVE_ARGS, stack)),
    }
    res.setup["sqlite_file"] = str(root / ".pyinit" / "state.sqlite3")
    with contextlib.ExitStack() as pg_stack:
        try:
            url = pg_stack.enter_context(postgres(run))
            args = ("--db", url, *SERVE_ARGS)
            pg_url = started(pg_stack, root, run / "serve-pg", args)
            sides["postgresql"] = fleet_events.Side(
                "postgresql", pg_url, serve_pids(run / "serve-pg"),
                restart=restarter("serve-pg", args, pg_stack))
            res.setup["postgresql_cluster"] = "tests/pgcluster.py: Debian's server, fsync=on, " \
                                      "synchronous_commit=on, data under the run directory"
        except BenchError as exc:
            res.side_errors["postgresql"] = str(exc)
            say(f"bench: events: PostgreSQL could not run: {exc}")
        fleet_events.measure(res, pool, sides, fleet, tokens, say, store_dir=root / ".pyinit")


def with_fleet(run: Path, fleet: list[str], only: set[str], pool: Pool,
               burst: fleet_burst.Burst, events: fleet_events.Events) -> None:
    with fleet_servers(run, fleet) as peers:
        if "burst" in only:
            guarded(burst, "burst", lambda: run_burst(burst, pool, run, fleet, peers))
        if "events" in only:
            guarded(events, "events", lambda: run_events(events, pool, run, fleet, peers))


@dataclass
class Shared:
    """The outcome of a step several figures need (their servers)."""

    error: str | None = None
    wrong: str | None = None

    def table(self) -> list[str]:
        return []


def guarded_all(figs: list[Figure], name: str, step: Callable[[], None]) -> None:
    """:func:`guarded` for a step several figures need: its failure is theirs."""
    shared = Shared()
    guarded(shared, name, step)
    for fig in figs:
        fig.error = fig.error or shared.error
        fig.wrong = fig.wrong or shared.wrong


def host_info(load_start: list[float]) -> dict[str, Any]:
    nginx = subprocess.run([harness.NGINX, "-v"], capture_output=True, text=True)
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    return {"cpus": os.cpu_count(), "kernel": os.uname().release,
            "nginx": nginx.stderr.strip().removeprefix("nginx version: "),
            "nofile_soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "somaxconn": int(somaxconn.read_text()) if somaxconn.exists() else None,
            "loadavg_start": load_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def report(burst: fleet_burst.Burst, events: fleet_events.Events, rss: fleet_rss.Rss,
           only: set[str], started_at: float, load_start: list[float]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if "burst" in only:
        details["burst_p99_ratio"] = burst.as_json()
    if "events" in only:
        details["events_per_s"] = events.as_json()
    if "rss" in only:
        details["serve_rss_20k_mb"] = rss.as_json()
    return {
        "burst_p99_ratio": burst.ratio,
        "events_per_s_sqlite": events.value("sqlite"),
        "events_per_s_pg": events.value("postgresql"),
        "serve_rss_20k_mb": rss.value,
        "api_page_ms_20k": rss.page_ms,
        "details": details,
        "seconds_total": round(time.monotonic() - started_at, 1),
        "host": host_info(load_start),
        "method": {
            "clients": "forked processes released by a barrier (tests/bench/fleet_clients): "
                       "the burst an epoll loop, the events asyncio; a minimal HTTP/1.1 client",
            "burst": "one GET /<mac> per connection, connect to last byte, body compared byte "
                     "for byte with the export; unmeasured first burst, then alternating rounds; "
                     "median of p99 / median of p99",
            "nginx": "packaged nginx.conf settings: worker_processes auto, worker_connections "
                     "1024 (nginx.org's; Debian's 768 reset connections of a 1000 burst), "
                     "sendfile, access log; listen backlog 511 (nginx's default)",
            "events": "keep-alive POST /events/<mac> with the machine's token, 204 counted; "
                      "status API counts checked per MAC after every run and after kill -9",
            "rss": "store filled with open_store(None, root) before the server starts; VmHWM "
                   "after status pages; baseline the same server on an empty root",
            "flattered": "loopback: the kernel accepts into the backlog instantly (no RTT, no "
                         "loss); clients and servers share 2 cores",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.bench_fleet",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--clients", type=int, default=1000,
                        help="machines (files, MACs) and burst connections (default: "
                             "%(default)s)")
    parser.add_argument("--processes", type=int, default=4,
                        help="client processes (default: %(default)s)")
    parser.add_argument("--burst-rounds", type=int, default=5,
                        help="bursts per server, alternating (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=64,
                        help="keep-alive connections posting events (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of one events run (default: %(default)s)")
    parser.add_argument("--event-rounds", type=int, default=3,
                        help="events runs per server, rotating order (default: %(default)s)")
    parser.add_argument("--rss-machines", type=int, default=20_000,
                        help="machines of the memory figure (default: %(default)s)")
    parser.add_argument("--rss-reps", type=int, default=5,
                        help="requests of each kind (default: %(default)s)")
    parser.add_argument("--json-out", type=Path,
                        help="also write the final JSON object to this file")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(FIGURES) or min(args.clients, args.processes, args.burst_rounds,
                                  args.connections, args.event_rounds, args.rss_machines,
                                  args.rss_reps) < 1 or args.seconds <= 0:
        parser.error(f"--only takes {','.join(FIGURES)}; counts must be at least 1")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    started_at = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    burst = fleet_burst.Burst(args.clients, args.processes, args.burst_rounds)
    events = fleet_events.Events(args.connections, args.processes, args.seconds,
                                 args.event_rounds, args.clients)
    rss = fleet_rss.Rss(args.rss_machines, args.rss_reps)
    figs: list[Figure] = [f for f, key in ((burst, "burst"), (events, "events"), (rss, "rss"))
                          if key in only]
    if args.json_out:
        args.json_out.unlink(missing_ok=True)  # no stale figures for bench_image --merge
    try:
        if not os.access(harness.NGINX, os.X_OK) or not Path(pyinit_cli()).exists():
            raise BenchError(f"needs {harness.NGINX} (Debian package nginx-light) and "
                             f"{pyinit_cli()} (pip install -e .)")
        say(f"bench: open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} (the "
            "servers inherit it; the clients raise theirs)")
        with bench_lock():
            clean_stale()
            run = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH))
            run.chmod(0o755)  # PostgreSQL runs as the postgres user: its cluster lives here
            try:
                with Pool(args.processes) as pool:
                    fleet = macs(args.clients)
                    if only & {"burst", "events"}:
                        served: list[Figure] = [f for f, key in ((burst, "burst"),
                                                                 (events, "events"))
                                                if key in only]
                        guarded_all(served, "burst and events", lambda: with_fleet(
                            run, fleet, only, pool, burst, events))
                if "rss" in only:
                    (run / "rss").mkdir()
                    guarded(rss, "rss", lambda: fleet_rss.measure(rss, run / "rss", say))
            finally:
                shutil.rmtree(run, ignore_errors=True)
    except KeyboardInterrupt:
        say("bench: interrupted; cleaned up")
        return 130
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        for fig in figs:
            if isinstance(exc, WrongResult):
                fig.wrong = fig.wrong or message
            else:
                fig.error = fig.error or message
        say(f"bench: could not run: {message}")
    say("")
    for fig, key in ((burst, "burst"), (events, "events"), (rss, "rss")):
        if key in only:
            for line in fig.table():
                say(line)
            say("")
    line = json.dumps(report(burst, events, rss, only, started_at, load_start),
                      separators=(",", ":"))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(line + "\n")
    say(line)
    if any(f.wrong for f in figs):
        return 1
    if any(f.error for f in figs) or (events.side_errors and "events" in only):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
