"""The durable event store on SQLite (tmp_path): acknowledgement, folding, retention (events per
machine, bytes, machines), schema and its upgrade, concurrency, the index's speed and durability
across SIGKILL.

The ``check_*`` functions take a way to open a store and hold the behaviours both backends must
show; tests/integration/test_store_postgres.py runs them against a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinit_server import store_sqlite
from pyinit_server.status import History
from pyinit_server.store import (
    SCHEMA_VERSION,
    IndexRow,
    Store,
    StoreError,
    encode,
    lifecycle_columns,
    open_store,
)
from pyinit_server.store_postgres import _libpq_reason, redact

MAC = "52-54-00-12-34-56"
OTHER = "52-54-00-00-00-02"
THIRD = "52-54-00-00-00-03"
T0 = 1_700_000_000.0

# One machine's life: two runs (failed, then ok) with background events in between.
RUN: list[dict[str, Any]] = [
    {"step": "network", "status": "start"},
    {"step": "network", "status": "ok", "elapsed": 2.1},
    {"step": "hardware", "status": "inventory",
     "system": {"vendor": "QEMU", "product": "Standard PC", "serial": "S1"},
     "cpu": {"model": "Xeon", "count": 2}, "memory": {"total": 2 << 30}, "errors": {"dmi": "x"}},
    {"step": "lldp", "status": "neighbour", "interface": "eth0", "system_name": "sw1",
     "port_id": "Gi0/1", "port_vlan": 10},
    {"step": "action", "status": "start"},
    {"step": "provision", "status": "progress", "percent": 42.0, "rate": 1e8, "eta": 3},
    {"step": "provision", "status": "progress", "bytes_read": 512, "total": 1024, "rate": 5},
    {"step": "provision", "status": "failed", "error": "disk gone \u00e9\x00"},
    {"step": "result", "status": "failed", "error": "disk gone"},
    {"step": "action", "status": "start"},
    {"step": "action", "status": "fetched", "action": "writeImage", "dry_run": False},
    {"step": "lldp", "status": "done", "silent": ["eth1"]},
    {"step": "provision", "status": "progress", "percent": 99.5},
    {"step": "result", "status": "ok"},
]

Opener = Callable[..., Store]  # open_(max_events=..., max_bytes=..., max_machines=...) -> a Store
SQL = Callable[[str], list[Any]]  # runs one statement on the store's database, outside any Store


@pytest.fixture
def opener(tmp_path: Path) -> Iterator[Opener]:
    opened: list[Store] = []

    def open_(**limits: int) -> Store:
        opened.append(open_store(None, tmp_path, **limits))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


# -- behaviours of both backends -------------------------------------------------------------


def assert_counters_match_rows(store: Store, posted: int | None = None) -> None:
    """The counters retention relies on (``machines.kept``, ``totals``) agree with the rows;
    with ``posted``, every event stored so far is kept or counted as dropped."""
    def query(sql: str) -> list[Any]:
        return store._read("the check", lambda conn: store._rows(conn, sql))

    [(count, size)] = query("SELECT count(*), coalesce(sum(size), 0) FROM events")
    kept = dict(query("SELECT mac, count(*) FROM events GROUP BY mac"))
    machines = query("SELECT mac, kept, dropped, events FROM machines")
    stats = store.stats()
    assert (stats["machines"], stats["events"], stats["bytes"]) == (len(machines), count, size)
    assert set(kept) <= {mac for mac, _, _, _ in machines}  # no event of a forgotten machine
    # totals.dropped: the kept machines' drops, and every event of each machine forgotten
    if stats["machines_dropped"]:
        assert stats["dropped"] > sum(dropped for _, _, dropped, _ in machines)
    else:
        assert stats["dropped"] == sum(dropped for _, _, dropped, _ in machines)
    for mac, n, dropped, events in machines:
        assert (n, n + dropped) == (kept.get(mac, 0), events), mac
    if posted is not None:
        assert stats["events"] + stats["dropped"] == posted



def check_ack_order_and_log(open_: Opener) -> None:
    store = open_()
    futures = [store.submit(MAC, {"step": "n", "i": i}, T0 + i / 1000) for i in range(200)]
    for f in futures:
        assert f.result(timeout=30) is None
    assert [e["i"] for e in store.events(MAC)] == list(range(200))
    log = store.log(MAC)
    assert log[0] == {"step": "n", "i": 0, "received": T0}
    assert log[123] == {"step": "n", "i": 123, "received": round(T0 + 0.123, 3)}
    assert store.events(OTHER) == [] and store.log(OTHER) == []
    assert store.summary(OTHER) is None


def check_fold_like_history(open_: Opener) -> None:
    store, history = open_(), History()
    t = T0
    for i, event in enumerate(RUN):  # three machines, interleaved, the same events
        for mac in (MAC, OTHER, THIRD)[: 1 + i % 3]:
            t += 0.25
            store.add(mac, event, t)
            history.add(mac, event, t)
    for mac in (MAC, OTHER, THIRD):
        assert store.summary(mac) == history.summary(mac)
        assert store.log(mac) == history.log(mac)
    assert store.summaries([THIRD, MAC, "52-54-00-99-99-99", MAC]) == {
        MAC: history.summary(MAC), THIRD: history.summary(THIRD)}
    assert store.summaries([]) == {}
    index = store.index()
    assert sorted(index) == sorted(history.macs())
    for mac, row in index.items():
        s = history.summary(mac)
        assert s is not None
        assert row == IndexRow(s.phase, s.state, s.result, s.last_seen, s.events,
                               *lifecycle_columns(s))
    assert index[MAC].result == "ok"
    assert (index[MAC].lifecycle, index[THIRD].lifecycle) == ("deployed", "failed")


def check_retention_per_machine(open_: Opener) -> None:
    store, history = open_(max_events=5), History(max_events=5)
    for i in range(12):
        for mac in (MAC, OTHER) if i < 3 else (MAC,):
            store.add(mac, {"step": "n", "i": i}, T0 + i)
            history.add(mac, {"step": "n", "i": i}, T0 + i)
    assert [e["i"] for e in store.events(MAC)] == [7, 8, 9, 10, 11]
    assert store.summary(MAC) == history.summary(MAC)
    summary = store.summary(MAC)
    assert summary is not None and (summary.events, summary.dropped) == (12, 7)
    assert store.summary(OTHER) == history.summary(OTHER)
    kept = store.events(MAC) + store.events(OTHER)
    assert store.stats() == {"machines": 2, "events": 8, "dropped": 7, "machines_dropped": 0,
                             "bytes": sum(len(encode(e)) for e in kept)}
    # more than max_events in one batch: still only the newest kept
    futures = [store.submit(OTHER, {"step": "m", "i": i}, T0 + 100 + i) for i in range(20)]
    for f in futures:
        f.result(timeout=30)
    assert [e["i"] for e in store.events(OTHER)] == [15, 16, 17, 18, 19]
    assert store.stats()["dropped"] == 7 + 18
    assert_counters_match_rows(store)


def check_retention_by_bytes(open_: Opener) -> None:
    size = len(encode({"step": "n", "i": 10, "pad": "x" * 60}))  # every event: the same size
    store = open_(max_bytes=10 * size)  # room for 10 events of any machines
    posted = []
    for i in range(10, 40):
        mac = (MAC, OTHER, THIRD)[i % 3 if i < 25 else 0]
        store.add(mac, {"step": "n", "i": i, "pad": "x" * 60}, T0 + i)
        posted.append((mac, i))
        assert store.stats()["bytes"] <= 10 * size
    kept = {(mac, e["i"]) for mac in (MAC, OTHER, THIRD) for e in store.events(mac)}
    assert kept == set(posted[-10:])  # the newest 10 of all machines, oldest gone first
    stats = store.stats()
    assert stats == {"machines": 3, "events": 10, "bytes": 10 * size, "dropped": 20,
                     "machines_dropped": 0}
    summaries = store.summaries([MAC, OTHER, THIRD])
    for mac, summary in summaries.items():
        assert summary.dropped == sum(m == mac for m, _ in posted) - len(store.events(mac))
        assert summary.events == sum(m == mac for m, _ in posted)
    assert sum(s.dropped for s in summaries.values()) == 20
    # one batch bigger than the budget
    futures = [store.submit(OTHER, {"step": "n", "i": i, "pad": "x" * 60}, T0 + i)
               for i in range(40, 70)]
    for f in futures:
        f.result(timeout=30)
    assert [e["i"] for e in store.events(OTHER)] == list(range(60, 70))
    assert store.stats() == {"machines": 3, "events": 10, "bytes": 10 * size, "dropped": 50,
                             "machines_dropped": 0}
    assert_counters_match_rows(store)


def check_retention_of_machines(open_: Opener) -> None:
    store = open_(max_machines=3)
    macs = [f"52-54-00-00-02-{n:02x}" for n in range(8)]
    posted = 0

    def add(n: int, t: float, i: int = 0) -> None:
        nonlocal posted
        store.add(macs[n], {"step": "n", "i": i}, T0 + t)
        posted += 1

    add(0, 1)
    add(1, 2)
    add(2, 3)
    add(0, 4, i=1)  # heard again: now machine 1 is the one heard from longest ago
    assert store.stats()["machines_dropped"] == 0
    add(3, 5)
    assert sorted(store.index()) == [macs[0], macs[2], macs[3]]
    assert store.summary(macs[1]) is None and store.log(macs[1]) == []
    kept = [e for n in (0, 2, 3) for e in store.events(macs[n])]
    assert store.stats() == {"machines": 3, "events": 4, "dropped": 1, "machines_dropped": 1,
                             "bytes": sum(len(encode(e)) for e in kept)}
    # new machines in one batch (or a few); two were heard (received) before every kept one,
    # so the transaction that makes them forgets them again
    futures = [store.submit(macs[n], {"step": "n", "i": 0}, T0 + t)
               for n, t in ((4, 0.5), (5, 6), (6, 0.25), (7, 7))]
    for f in futures:
        f.result(timeout=30)
    posted += len(futures)
    assert sorted(store.index()) == [macs[3], macs[5], macs[7]]  # the three heard last
    assert store.stats()["machines_dropped"] == 5
    assert store.summaries(macs).keys() == {macs[3], macs[5], macs[7]}
    # a forgotten machine that posts again starts afresh (and the one heard longest ago goes)
    add(1, 8, i=2)
    summary = store.summary(macs[1])
    assert summary is not None and (summary.events, summary.dropped) == (1, 0)
    assert [e["i"] for e in store.events(macs[1])] == [2]
    assert sorted(store.index()) == [macs[1], macs[5], macs[7]]
    assert store.stats()["machines_dropped"] == 6
    # the writer's copy of the index is what another store reads from the rows
    assert open_(max_machines=3).index() == store.index()
    assert_counters_match_rows(store, posted=posted)


# What older versions of the schema lacked: the statements that make a database of version
# v + 1 one of version v (the rows are version v's as they are).
DOWNGRADES = {
    2: ("ALTER TABLE machines DROP COLUMN lifecycle",
        "ALTER TABLE machines DROP COLUMN lifecycle_since",
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'"),
    1: ("DROP INDEX machines_by_last_seen",
        "ALTER TABLE totals DROP COLUMN machines_dropped",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'"),
}


def check_upgrade(open_: Opener, sql: SQL, version: int) -> None:
    """A database of ``version`` is upgraded when opened: the same index (the lifecycle columns
    of version 3 filled from the summaries), summaries, log and totals."""
    store = open_(max_events=2)
    macs = (MAC, OTHER, THIRD)
    for i, event in enumerate(RUN):
        store.add(macs[i % 3], event, T0 + i)
    before = (store.index(), store.summaries(macs), store.log(MAC), store.stats())
    assert {row.lifecycle for row in before[0].values()} == {None, "deployed", "failed"}
    store.close()
    for v in range(SCHEMA_VERSION - 1, version - 1, -1):
        for statement in DOWNGRADES[v]:
            sql(statement)
    assert sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(version),)]
    again = open_(max_events=2, max_machines=2)
    assert sql("SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)]
    assert (again.index(), again.summaries(macs), again.log(MAC), again.stats()) == before
    assert before[-1]["machines_dropped"] == 0
    # the bound holds from the next new machine on: the two heard from longest ago go
    fourth = "52-54-00-00-00-04"
    again.add(fourth, {"step": "n"}, T0 + 100)
    assert sorted(again.index()) == [OTHER, fourth]  # OTHER: heard last of the three
    assert again.stats()["machines_dropped"] == 2
    assert_counters_match_rows(again, posted=len(RUN) + 1)
    stats = again.stats()
    again.close()
    assert open_().stats() == stats  # the current version now: opened as it is


def check_reopen(open_: Opener) -> None:
    store = open_(max_events=3)
    for i, event in enumerate(RUN):
        store.add(MAC if i % 2 else OTHER, event, T0 + i)
    before = (store.log(MAC), store.log(OTHER), store.summaries([MAC, OTHER]), store.index(),
              store.stats())
    store.close()
    again = open_(max_events=3)
    assert (again.log(MAC), again.log(OTHER), again.summaries([MAC, OTHER]), again.index(),
            again.stats()) == before


def check_close(open_: Opener) -> None:
    store = open_(max_events=2000)
    futures = [store.submit(MAC, {"step": "n", "i": i}, T0 + i) for i in range(1500)]
    store.close()  # drains the queue first
    assert all(f.done() and f.exception() is None for f in futures)
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.submit(MAC, {"step": "late"}, T0)
    with pytest.raises(StoreError, match="closed"):
        store.add(MAC, {"step": "late"})
    with pytest.raises(StoreError, match="closed"):
        store.log(MAC)
    again = open_(max_events=2000)
    assert [e["i"] for e in again.events(MAC)] == list(range(1500))


def check_concurrent_submitters(open_: Opener, threads: int = 8, each: int = 500) -> float:
    """``threads`` threads add ``each`` events (each waiting for its acknowledgement), half to
    their own machine, half to one machine they all share. Returns the acknowledged events/s."""
    store = open_(max_events=threads * each)
    shared = "52-54-00-ff-ff-ff"
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def post(n: int) -> None:
        own = f"52-54-00-00-01-{n:02x}"
        try:
            start.wait()
            for i in range(each):
                store.add(shared if i % 2 else own, {"step": "n", "thread": n, "i": i})
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    assert errors == []
    seen = store.events(shared) + [e for n in range(threads)
                                   for e in store.events(f"52-54-00-00-01-{n:02x}")]
    assert sorted((e["thread"], e["i"]) for e in seen) == [
        (n, i) for n in range(threads) for i in range(each)]
    for n in range(threads):  # each thread's events in its order
        assert [e["i"] for e in store.events(shared) if e["thread"] == n] == list(
            range(1, each, 2))
    summary = store.summary(shared)
    assert summary is not None and summary.events == threads * each // 2
    assert store.stats()["events"] == threads * each
    assert_counters_match_rows(store)
    rate = threads * each / elapsed
    print(f"{type(store).__name__}: {threads} threads x {each} acknowledged events: "
          f"{elapsed:.2f} s, {rate:.0f} events/s")
    return rate


# -- SQLite ----------------------------------------------------------------------------------


def test_ack_order_and_log(opener: Opener) -> None:
    check_ack_order_and_log(opener)


def test_fold_like_history(opener: Opener) -> None:
    check_fold_like_history(opener)


def test_retention_per_machine(opener: Opener) -> None:
    check_retention_per_machine(opener)


def test_retention_by_bytes(opener: Opener) -> None:
    check_retention_by_bytes(opener)


def test_retention_of_machines(opener: Opener) -> None:
    check_retention_of_machines(opener)


@pytest.mark.parametrize("version", [1, 2])
def test_upgrade(opener: Opener, tmp_path: Path, version: int) -> None:
    def sql(statement: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(tmp_path / ".pyinit" / "state.sqlite3",
                                                isolation_level=None)) as conn:
            return conn.execute(statement).fetchall()

    check_upgrade(opener, sql, version)


def test_reopen(opener: Opener) -> None:
    check_reopen(opener)


def test_close_drains_then_refuses(opener: Opener) -> None:
    check_close(opener)


def test_concurrent_submitters(opener: Opener) -> None:
    check_concurrent_submitters(opener)


def test_file_location_mode_and_pragmas(tmp_path: Path) -> None:
    state = tmp_path / ".pyinit"
    with open_store(None, tmp_path) as store:
        store.add(MAC, {"step": "n"})
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert {f.name: f.stat().st_mode & 0o777 for f in state.iterdir()} == {
            "state.sqlite3": 0o600, "state.sqlite3-wal": 0o600, "state.sqlite3-shm": 0o600}
    assert state.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(state / "state.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == "3"
    with open_store("sqlite", tmp_path) as store:
        assert store.stats()["events"] == 1


def test_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "events.db"
    with open_store(f"sqlite://{path}", tmp_path / "root") as store:
        store.add(MAC, {"step": "n"})
    assert path.exists() and not (tmp_path / "root").exists()
    with pytest.raises(StoreError, match="sqlite:///absolute/path"):
        open_store("sqlite://relative.db", tmp_path)


def test_unknown_scheme_names_no_password(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        open_store("mysql://admin:hunter2@db.example/pyinit", tmp_path)
    assert "hunter2" not in str(err.value) and "mysql" in str(err.value)


def test_redact() -> None:
    assert redact("postgresql://u:pw@db.example:5433/x?sslmode=require&password=pw") == (
        "postgresql://u@db.example:5433/x?sslmode=require")
    assert redact("postgres://[::1]/x") == "postgres://[::1]/x"
    assert redact("postgresql://u:pw@host:notaport/x") == "postgresql://..."
    assert _libpq_reason(Exception(
        'connection failed: connection to server at "127.0.0.1", port 1 failed: '
        "Connection refused\n\tIs the server running on that host?")) == "connection refused"
    assert _libpq_reason(Exception(
        'connection to server at "h", port 5432 failed: FATAL:  database "x" does not exist'
    )) == 'database "x" does not exist'


def test_newer_schema_refused(tmp_path: Path) -> None:
    open_store(None, tmp_path).close()
    with sqlite3.connect(tmp_path / ".pyinit" / "state.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(StoreError) as err:
        open_store(None, tmp_path)
    assert str(err.value) == (f"cannot open {tmp_path}/.pyinit/state.sqlite3: schema version 7 "
                              "is newer than this pyinit (version 3); upgrade pyinit")
    with sqlite3.connect(tmp_path / ".pyinit" / "state.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 0 is unknown to this pyinit "
                                         r"\(version 3\)$"):
        open_store(None, tmp_path)


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / ".pyinit").mkdir()
    (tmp_path / ".pyinit" / "state.sqlite3").write_bytes(b"not sqlite" * 100)
    with pytest.raises(StoreError, match=r"^cannot open .*: file is not a database$"):
        open_store(None, tmp_path)


def test_failed_batch_then_next_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the write lock past the busy timeout: that batch's futures fail
    with one line, the writer lives on and the next batch commits."""
    monkeypatch.setattr(store_sqlite, "BUSY_TIMEOUT", 0.2)
    with open_store(None, tmp_path) as store:
        store.add(MAC, {"step": "n", "i": 0})
        blocker = sqlite3.connect(tmp_path / ".pyinit" / "state.sqlite3", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        failed = store.submit(MAC, {"step": "n", "i": 1}, T0)
        with pytest.raises(StoreError, match=r"^cannot store 1 event\(s\) in .*: database is "
                                             r"locked$"):
            failed.result(timeout=30)
        blocker.rollback()
        blocker.close()
        store.add(MAC, {"step": "n", "i": 2})
        assert [e["i"] for e in store.events(MAC)] == [0, 2]
        assert store.stats()["events"] == 2


def test_changed_is_notified(opener: Opener) -> None:
    store = opener()
    with store.changed:  # held: the writer cannot notify before wait() releases it
        future = store.submit(MAC, {"step": "n"}, T0)
        assert store.changed.wait(timeout=10)
    assert future.done()


def _fill(store: Store, machines: int) -> None:
    futures = [store.submit(f"52-54-{i >> 16:02x}-{i >> 8 & 255:02x}-{i & 255:02x}-00",
                            RUN[i % len(RUN)], T0 + i) for i in range(machines)]
    for f in futures:
        f.result(timeout=120)


def test_index_of_20000_machines_is_fast(tmp_path: Path) -> None:
    with open_store(None, tmp_path) as store, open_store(None, tmp_path) as other:
        _fill(store, 20_000)
        began = time.perf_counter()
        index = store.index()
        copy = time.perf_counter() - began
        assert len(index) == 20_000
        # ``other`` (another process, say) must read the columns again: the slow path
        began = time.perf_counter()
        assert other.index() == index
        reload = time.perf_counter() - began
    print(f"index() of 20000 machines: {copy * 1000:.1f} ms from the copy, "
          f"{reload * 1000:.1f} ms reloading the columns")
    # A guard against quadratic behaviour, not a speed target (make bench measures the page):
    # 56 ms alone here, 1.3 s while two VMs kept both cores busy.
    assert copy < 3.0 and reload < 3.0


CHILD = """
import sys
from pathlib import Path
from pyinit_server.store import open_store

store = open_store(None, Path(sys.argv[1]), max_events=10**7)
i = 0
while True:
    futures = [store.submit("{mac}", {{"step": "n", "i": i + k}}, 1.0 * (i + k))
               for k in range(50)]
    for f in futures:
        f.result()
    i += 50
    print(f"acked {{i}}", flush=True)
"""


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(mac=MAC), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            acked = int(line.split()[1])
            if acked >= 2000:
                break
        else:
            pytest.fail(f"child ended: {child.wait()} {child.stderr and child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        acked = max([acked, *(int(line.split()[1]) for line in rest.splitlines())])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    with open_store(None, tmp_path, max_events=10**7) as store:
        found = [e["i"] for e in store.events(MAC)]
        stats = store.stats()
    print(f"killed after {acked} acknowledged events; found {len(found)}")
    assert found[:acked] == list(range(acked))  # every acknowledged one, in order
    assert found == list(range(len(found)))
    assert stats["events"] == len(found), stats
