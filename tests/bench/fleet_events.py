"""Issue #13's durable events: acknowledged events per second into ``pyinit serve`` over HTTP.

``connections`` keep-alive connections (spread over the client processes of
:mod:`tests.bench.fleet_clients`) each post for their own share of the fleet's MACs, one machine
after the other, a ``provision progress`` event as ``pyinit.image`` sends it (about 150 bytes,
with that machine's own token), the next as soon as the 204 is in, for ``seconds``. The figure is
the number of 204s over the time from the release to the last answer. Sides: ``pyinit serve`` on
SQLite (the default store, ``synchronous=FULL``: every commit fsynced) and on PostgreSQL
(``--db``, a cluster with ``fsync=on``), both acknowledging each event only after its group
commit; and, as the ceiling of the HTTP layer alone (with these same Python clients), nginx
answering ``return 204;`` on ``/events/`` (the export's config), which stores nothing. Rounds
alternate the order of the sides; medians of the rounds are compared.

A fast wrong answer never counts: before and after every pyinit run the bench reads every
machine's event count from ``GET /api/machines`` and the store's totals; the increase of each
MAC must equal the 204s its connection received (a request that got no answer, counted as
unknown, may or may not have been stored), and the totals must agree. After the last round each
pyinit server is killed with SIGKILL and started again on the same store: the counts must be
the same (acknowledged means committed). nginx's access log must hold one line per answer.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.bench import harness
from tests.bench.fleet_burst import quantile
from tests.bench.fleet_clients import Pool, Posted
from tests.bench.fleet_peers import api_events, fsync_ms
from tests.bench.harness import BenchError, WrongResult

TARGET = 2000.0  # acknowledged events per second, at least
NAMES = {"nginx": "nginx return 204 (HTTP layer only)", "sqlite": "pyinit serve, SQLite",
         "postgresql": "pyinit serve, PostgreSQL"}


@dataclass
class Side:
    """A server the events go to: its URL, the pids whose CPU counts, and how its count is
    checked (pyinit: the status API; nginx: its access log)."""

    name: str
    url: str
    pids: list[int]
    access_log: Path | None = None  # nginx
    restart: Callable[[], str] | None = None  # pyinit: SIGKILL, start again, the new URL


@dataclass
class Run:
    side: str
    round: int
    acked: int
    seconds: float
    refused: dict[int, int]
    unknown: int
    lat_p50: float
    lat_p99: float
    server_cpu: float
    client_cpu: float
    connects: int
    check: str
    errors: list[str]

    @property
    def rate(self) -> float:
        return self.acked / self.seconds if self.seconds else 0.0

    def cells(self) -> tuple[str, ...]:
        return (NAMES[self.side], str(self.round), f"{self.rate:.0f}", str(self.acked),
                f"{self.seconds:.2f}", f"{self.lat_p50 * 1e3:.1f}", f"{self.lat_p99 * 1e3:.1f}",
                str(sum(self.refused.values()) + self.unknown), f"{self.server_cpu:.1f}",
                f"{self.client_cpu:.1f}")

    def as_json(self) -> dict[str, Any]:
        return {"round": self.round, "events_per_s": round(self.rate, 1), "acked": self.acked,
                "seconds": round(self.seconds, 3), "refused": self.refused,
                "unknown": self.unknown, "latency_p50_ms": round(self.lat_p50 * 1e3, 2),
                "latency_p99_ms": round(self.lat_p99 * 1e3, 2),
                "server_cpu_s": round(self.server_cpu, 2),
                "client_cpu_s": round(self.client_cpu, 2), "connects": self.connects,
                "check": self.check, **({"errors": self.errors} if self.errors else {})}


@dataclass
class Events:
    connections: int
    processes: int
    seconds: float
    rounds: int
    machines: int
    sides: tuple[str, ...] = ("nginx", "sqlite", "postgresql")
    runs: list[Run] = field(default_factory=list)
    restarts: dict[str, str] = field(default_factory=dict)  # side -> what the restart showed
    setup: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # nothing could run
    side_errors: dict[str, str] = field(default_factory=dict)  # one side could not run
    wrong: str | None = None

    def median(self, side: str) -> float | None:
        rates = [r.rate for r in self.runs if r.side == side]
        return statistics.median(rates) if rates else None

    def value(self, side: str) -> float | None:
        if self.wrong or side in self.side_errors:
            return None
        median = self.median(side)
        return round(median, 1) if median is not None else None

    def http_ratio(self, side: str) -> float | None:
        mine, ceiling = self.value(side), self.value("nginx")
        return round(mine / ceiling, 3) if mine and ceiling else None

    def status(self, side: str) -> str:
        value = self.value(side)
        if self.wrong:
            return "WRONG"
        return "n/a" if value is None else "ok" if value >= TARGET else "MISS"

    def table(self) -> list[str]:
        rows: list[tuple[str, ...]] = [("events: server", "round", "events/s", "204s", "s",
                                        "p50 ms", "p99 ms", "not 204", "srv cpu s",
                                        "cli cpu s")]
        rows += [r.cells() for r in self.runs]
        lines = harness.format_table(rows)
        for side, key in (("sqlite", "events_per_s_sqlite"), ("postgresql", "events_per_s_pg")):
            value = self.value(side)
            lines.append(f"{key}: {value if value is not None else '-'}  target >= "
                         f"{TARGET:g}  {self.status(side)}   (÷ nginx return 204, the HTTP "
                         f"layer alone with these clients: {self.http_ratio(side) or '-'})")
            if side in self.side_errors:
                lines.append(f"  {side} could not run: {self.side_errors[side]}")
        if "fsync_ms_median" in self.setup:
            lines.append(f"  fsync of 4 KiB on the stores' filesystem (a virtual disk here): "
                         f"median {self.setup['fsync_ms_median']} ms, max "
                         f"{self.setup['fsync_ms_max']} ms. Every commit waits for one: a "
                         "slower disk (no power-safe write cache: milliseconds) lowers these "
                         "figures; a cached virtual disk flatters them.")
        nginx = self.value("nginx")
        lines.append(f"  nginx return 204 (stores nothing): {nginx if nginx else '-'} events/s "
                     f"with {self.connections} keep-alive connections from {self.processes} "
                     "Python processes: the ceiling these clients reach, not a store's.")
        for side, text in self.restarts.items():
            lines.append(f"  {side}: after kill -9 and a restart: {text}")
        if self.wrong or self.error:
            lines.append(f"  {'WRONG' if self.wrong else 'could not run'}: "
                         f"{self.wrong or self.error}")
        return lines

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": TARGET, "connections": self.connections, "processes": self.processes,
            "seconds_per_run": self.seconds, "rounds": self.rounds, "machines": self.machines,
            **self.setup,
        }
        for side in self.sides:
            out[side] = {"median_events_per_s": self.value(side),
                         "runs": [r.as_json() for r in self.runs if r.side == side]}
            if side != "nginx":
                out[side] |= {"status": self.status(side), "ratio_to_nginx_204":
                              self.http_ratio(side), "after_kill9_restart":
                              self.restarts.get(side)}
            if side in self.side_errors:
                out[side]["error"] = self.side_errors[side]
        if self.error:
            out["error"] = self.error
        if self.wrong:
            out["wrong"] = self.wrong
        return out


def shares(fleet: list[str], tokens: dict[str, str], connections: int,
           processes: int) -> list[list[list[tuple[str, str]]]]:
    """Per process, per connection, its machines (MAC, token): connection ``c`` posts for
    ``fleet[c::connections]``."""
    per_conn = [[(mac, tokens[mac]) for mac in fleet[c::connections]]
                for c in range(connections)]
    return [per_conn[p::processes] for p in range(processes)]


def merge(posted: list[Posted]) -> Posted:
    out = Posted(start=min(p.start for p in posted), end=max(p.end for p in posted))
    for p in posted:
        out.acked.update(p.acked)
        out.unknown.update(p.unknown)
        out.refused.update(p.refused)
        out.errors += p.errors[:5 - len(out.errors)]
        out.latencies += p.latencies
        out.connects += p.connects
    return out


def log_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if b'"POST /events/' in line)


def check_store(side: Side, session: requests.Session, before: tuple[dict[str, int],
                dict[str, int]], posted: Posted) -> tuple[dict[str, int], dict[str, int], str]:
    """The status API's counts after a run against ``before`` and the 204s; raises
    WrongResult."""
    if posted.unknown:
        time.sleep(2)  # an unanswered event may still be committed: let the writer finish
    counts, store = api_events(side.url, session)
    old_counts, old_store = before
    bad = []
    for mac in sorted(set(counts) | set(posted.acked) | set(posted.unknown)):
        grew = counts.get(mac, 0) - old_counts.get(mac, 0)
        if not posted.acked[mac] <= grew <= posted.acked[mac] + posted.unknown[mac]:
            bad.append(f"{mac}: +{grew} counted, {posted.acked[mac]} acknowledged"
                       + (f" ({posted.unknown[mac]} unanswered)" if posted.unknown[mac] else ""))
    total = (store["events"] + store["dropped"]) - (old_store["events"] + old_store["dropped"])
    acked, unknown = sum(posted.acked.values()), sum(posted.unknown.values())
    if not acked <= total <= acked + unknown:
        bad.append(f"store totals grew by {total} events, {acked} acknowledged")
    if bad:
        raise WrongResult(f"events: {NAMES[side.name]}: {len(bad)} count(s) disagree with the "
                          f"204s: {'; '.join(bad[:5])}")
    return counts, store, f"status API +{total} = {acked} 204s" + (
        f" (+{unknown} unanswered)" if unknown else "")


def one_run(res: Events, pool: Pool, side: Side, round_no: int, jobs: list[list[Any]],
            session: requests.Session, state: dict[str, Any], say: Any) -> Run:
    before = state.get(side.name, ({}, {"events": 0, "dropped": 0}))
    lines0 = log_lines(side.access_log) if side.access_log else 0
    cpu0, client0 = harness.cpu_all(side.pids), pool.cpu_seconds()
    host, port = side.url.removeprefix("http://").rsplit(":", 1)
    _, results = pool.run("events", [(host, int(port), conns, res.seconds) for conns in jobs])
    cpu1, client1 = harness.cpu_all(side.pids), pool.cpu_seconds()
    posted = merge(results)
    acked = sum(posted.acked.values())
    unknown = sum(posted.unknown.values())
    if side.access_log is not None:
        logged = log_lines(side.access_log) - lines0
        answered = acked + sum(posted.refused.values())
        if not answered <= logged <= answered + unknown:
            raise WrongResult(f"events: nginx logged {logged} POSTs, {answered} were answered")
        check = f"access log +{logged} = answers"
    else:
        counts, store, check = check_store(side, session, before, posted)
        state[side.name] = (counts, store)
    lat = sorted(posted.latencies) or [float("nan")]
    run = Run(side.name, round_no, acked, posted.end - posted.start, dict(posted.refused),
              unknown, quantile(lat, 0.5), quantile(lat, 0.99), cpu1 - cpu0, client1 - client0,
              posted.connects, check, posted.errors)
    say(f"bench: events round {round_no}/{res.rounds} {side.name:10} {run.rate:7.0f} events/s "
        f"({acked} 204s in {run.seconds:.2f} s; latency p50 {run.lat_p50 * 1e3:.1f} ms, p99 "
        f"{run.lat_p99 * 1e3:.1f} ms; not 204: {dict(posted.refused) or 0}"
        f"{f', unanswered {unknown}' if unknown else ''}; server cpu {run.server_cpu:.1f} s, "
        f"clients {run.client_cpu:.1f} s; {check})")
    for error in posted.errors:
        say(f"bench:   {side.name}: {error}")
    return run


def measure(res: Events, pool: Pool, sides: dict[str, Side], fleet: list[str],
            tokens: dict[str, str], say: Any, store_dir: Path | None = None) -> None:
    """``res.rounds`` rounds over the sides in ``sides``, the order rotating; then the SIGKILL
    check of every pyinit side. ``store_dir``: where the stores keep their files (its fsync
    time is measured and shown)."""
    jobs = shares(fleet, tokens, res.connections, len(pool.pids))
    if store_dir is not None:
        res.setup["fsync_ms_median"], res.setup["fsync_ms_max"] = fsync_ms(store_dir)
        say(f"bench: events: fsync of 4 KiB under {store_dir}: median "
            f"{res.setup['fsync_ms_median']} ms, max {res.setup['fsync_ms_max']} ms")
    session = requests.Session()
    state: dict[str, Any] = {name: api_events(side.url, session)
                             for name, side in sides.items() if side.access_log is None}
    order = [s for s in res.sides if s in sides]
    for r in range(1, res.rounds + 1):
        shift = (r - 1) % len(order)
        for name in order[shift:] + order[:shift]:
            res.runs.append(one_run(res, pool, sides[name], r, jobs, session, state, say))
    for name, side in sides.items():
        if side.restart is None:
            continue
        counts, store = state[name]
        url = side.restart()
        again, store_again = api_events(url, session)
        lost = {m: (c, again.get(m, 0)) for m, c in counts.items() if again.get(m, 0) != c}
        if lost or store_again["events"] != store["events"]:
            example = next(iter(lost.items()), None)
            raise WrongResult(f"events: {NAMES[name]}: after kill -9 and a restart "
                              f"{len(lost)} machine(s) have other counts (e.g. {example}), "
                              f"store events {store['events']} -> {store_again['events']}")
        res.restarts[name] = (f"all {sum(counts.values())} events of {len(counts)} machines "
                              "still counted")
        say(f"bench: events {name}: killed with SIGKILL and started again: "
            f"{res.restarts[name]}")


def kill9(pid_file: Path) -> None:
    """SIGKILL the process group of the server whose pid is in ``pid_file``; wait until gone."""
    pid = int(pid_file.read_text().split()[0])
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":  # dead; its parent (harness.pyinit_serve) reaps it later
            return
        time.sleep(0.05)
    raise BenchError(f"pid {pid} did not die after SIGKILL")

