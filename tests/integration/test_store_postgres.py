"""The durable event store on a real PostgreSQL (tests/pgcluster.py): the behaviours the SQLite
tests check, two replicas on one database, and the database going away under a running store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyinit_server.status import Summary
from pyinit_server.store import Store, StoreError, encode, open_store
from tests.pgcluster import free_port
from tests.unit import test_store as common
from tests.unit.test_store import MAC, OTHER, T0, Opener, assert_counters_match_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def opener(postgres: Any, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Store] = []

    def open_(**limits: int) -> Store:
        opened.append(open_store(postgres.url, tmp_path, **limits))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def test_ack_order_and_log(opener: Opener) -> None:
    common.check_ack_order_and_log(opener)


def test_fold_like_history(opener: Opener) -> None:
    common.check_fold_like_history(opener)


def test_retention_per_machine(opener: Opener) -> None:
    common.check_retention_per_machine(opener)


def test_retention_by_bytes(opener: Opener) -> None:
    common.check_retention_by_bytes(opener)


def test_retention_of_machines(opener: Opener) -> None:
    common.check_retention_of_machines(opener)


@pytest.mark.parametrize("version", [1, 2])
def test_upgrade(opener: Opener, postgres: Any, version: int) -> None:
    def sql(statement: str) -> list[Any]:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    common.check_upgrade(opener, sql, version)


def test_reopen(opener: Opener) -> None:
    common.check_reopen(opener)


def test_close_drains_then_refuses(opener: Opener) -> None:
    common.check_close(opener)


def test_concurrent_submitters(opener: Opener) -> None:
    common.check_concurrent_submitters(opener)


def test_url_scheme_and_no_state_dir(postgres: Any, tmp_path: Path) -> None:
    with open_store(postgres.url.replace("postgresql://", "postgres://"), tmp_path) as store:
        store.add(MAC, {"step": "n"})
        assert store.where == postgres.url.replace("postgresql://", "postgres://")
    assert not (tmp_path / ".pyinit").exists()


def test_unreachable_names_no_password(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(StoreError) as err:
        open_store(f"postgresql://pyinit:hunter2@127.0.0.1:{port}/pyinit", tmp_path)
    assert str(err.value) == (f"cannot open postgresql://pyinit@127.0.0.1:{port}/pyinit: "
                              "connection refused")


def test_newer_schema_refused(postgres: Any, tmp_path: Path) -> None:
    open_store(postgres.url, tmp_path).close()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 4 is newer than this pyinit"):
        open_store(postgres.url, tmp_path)


def test_replicas_lose_no_update(postgres: Any, tmp_path: Path) -> None:
    """Two stores on one database, eight threads (four on each) posting events for one shared
    machine and for machines of their own: every event is there once, every summary counts
    all of its machine's events (no fold lost to a concurrent one), both see the same index."""
    threads, each = 8, 300
    macs = [MAC, OTHER, "52-54-00-00-00-03"]  # 0 shared by all, 1 and 2 by the two halves
    def open_() -> Store:
        return open_store(postgres.url, tmp_path, max_events=threads * each)

    with open_() as a, open_() as b:
        errors: list[BaseException] = []

        def post(n: int) -> None:
            store = (a, b)[n % 2]
            try:
                for i in range(each):
                    mac = macs[0] if i % 2 else macs[1 + n // 4]
                    store.add(mac, {"step": "n", "thread": n, "i": i})
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
        began = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - began
        assert errors == []
        seen = [(e["thread"], e["i"]) for mac in macs for e in a.events(mac)]
        assert sorted(seen) == [(n, i) for n in range(threads) for i in range(each)]
        for mac in macs:
            assert a.events(mac) == b.events(mac)
            posted = sum(1 for e in a.events(mac))
            summary_a, summary_b = a.summary(mac), b.summary(mac)
            assert isinstance(summary_a, Summary) and summary_a == summary_b
            assert summary_a.events == posted
        assert a.index() == b.index()
        assert {m: r.events for m, r in a.index().items()} == {
            macs[0]: threads * each // 2, macs[1]: threads * each // 4,
            macs[2]: threads * each // 4}
        assert a.stats() == b.stats()
        assert a.stats()["events"] == threads * each
        assert_counters_match_rows(a)
    assert "deadlock detected" not in postgres.log.read_text()
    print(f"two replicas, {threads} threads x {each} acknowledged events: {elapsed:.2f} s, "
          f"{threads * each / elapsed:.0f} events/s")


def test_replicas_share_retention(postgres: Any, tmp_path: Path) -> None:
    """Both retention rules under two busy replicas: no deadlock, no error, the counters agree
    with the rows, the size budget holds, every event is counted in its summary."""
    threads, each, macs = 8, 200, [f"52-54-00-00-00-{n:02x}" for n in range(6)]
    size = len(encode({"step": "n", "thread": 0, "i": 100, "pad": "x" * 100}))
    max_bytes = 150 * size

    def open_() -> Store:
        return open_store(postgres.url, tmp_path, max_events=40, max_bytes=max_bytes)

    with open_() as a, open_() as b:
        errors: list[BaseException] = []

        def post(n: int) -> None:
            store = (a, b)[n % 2]
            try:
                for i in range(each):
                    store.add(macs[(n + i) % len(macs)],
                              {"step": "n", "thread": n, "i": 100 + i, "pad": "x" * 100})
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert_counters_match_rows(a)
        stats = a.stats()
        assert stats["bytes"] <= max_bytes
        assert stats["events"] + stats["dropped"] == threads * each
        assert sum(s.events for s in a.summaries(macs).values()) == threads * each
        assert all(len(a.events(mac)) <= 40 for mac in macs)
    assert "deadlock detected" not in postgres.log.read_text()


def test_machine_forgotten_while_waiting(postgres: Any, tmp_path: Path) -> None:
    """Another replica forgets a machine (max_machines) while this one waits to lock its row:
    the row this transaction's INSERT found is gone when the lock is granted. The transaction
    makes the row again, and the event starts the machine's history afresh."""
    with open_store(postgres.url, tmp_path) as store:
        store.add(MAC, {"step": "n", "i": 0})
        size = len(encode({"step": "n", "i": 0}))
        holder = psycopg.connect(postgres.url)  # the other replica's transaction, by hand
        try:
            holder.execute("SELECT mac FROM machines WHERE mac = %s FOR UPDATE", (MAC,))
            waiting = store.submit(MAC, {"step": "n", "i": 1}, T0)
            time.sleep(0.5)
            assert not waiting.done()  # the writer waits in SELECT ... FOR UPDATE
            holder.execute("DELETE FROM events WHERE mac = %s", (MAC,))
            holder.execute("DELETE FROM machines WHERE mac = %s", (MAC,))
            holder.execute("UPDATE totals SET seq = seq + 1, events = events - 1, "
                           "bytes = bytes - %s, dropped = dropped + 1, "
                           "machines_dropped = machines_dropped + 1", (size,))
            holder.commit()
        finally:
            holder.close()
        waiting.result(timeout=30)
        assert store.events(MAC) == [{"step": "n", "i": 1}]
        summary = store.summary(MAC)
        assert summary is not None and (summary.events, summary.dropped) == (1, 0)
        assert store.index()[MAC].events == 1
        assert store.stats()["machines_dropped"] == 1
        assert_counters_match_rows(store, posted=2)


def test_replicas_share_machine_bound(postgres: Any, tmp_path: Path) -> None:
    """Two busy replicas making new machines past max_machines: no deadlock, no error; each
    forgets what the other holds only later (SKIP LOCKED), so the bound is exact again after
    the next new machine; the counters agree with the rows, both see the same index."""
    threads, each, limit = 8, 60, 10

    def open_() -> Store:
        return open_store(postgres.url, tmp_path, max_machines=limit)

    with open_() as a, open_() as b:
        errors: list[BaseException] = []

        def post(n: int) -> None:
            store = (a, b)[n % 2]
            try:
                for i in range(each):  # a new machine every other event, and a shared one
                    mac = MAC if i % 2 else f"52-54-00-01-{n:02x}-{i:02x}"
                    store.add(mac, {"step": "n", "thread": n, "i": i})
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        a.add("52-54-00-02-00-00", {"step": "n"})  # nothing held now: back to the bound
        stats = a.stats()
        assert stats["machines"] == limit
        # Every machine made beyond the bound is forgotten once: the 240 new ones, the final one
        # and the shared MAC, less the ten kept. The shared MAC itself is forgotten (and made
        # again by its next event) when ten new machines arrive between two of its events,
        # which a starved thread allows on a loaded host: each time, one more.
        least = threads * each // 2 + 2 - limit
        assert least <= stats["machines_dropped"] <= least + 3, stats
        assert_counters_match_rows(a, posted=threads * each + 1)
        assert a.index() == b.index() and len(a.index()) == limit
        assert "52-54-00-02-00-00" in a.index() and MAC in a.index()
    assert "deadlock detected" not in postgres.log.read_text()


def test_database_going_away(postgres: Any, tmp_path: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
    """The batch in flight when PostgreSQL stops fails with StoreError; once it is back the
    next batch commits on a new connection. A restart between batches costs no event: the
    writer finds its old connection dead before COMMIT and retries once on a new one."""
    with open_store(postgres.url, tmp_path) as store:
        store.add(MAC, {"step": "n", "i": 0})
        # hold the machine's row so that the writer's next transaction waits in FOR UPDATE
        holder = psycopg.connect(postgres.url)
        try:
            holder.execute("SELECT mac FROM machines WHERE mac = %s FOR UPDATE", (MAC,))
            in_flight = store.submit(MAC, {"step": "n", "i": 1}, T0)
            time.sleep(0.5)
            assert not in_flight.done()
            postgres.stop()
            with pytest.raises(StoreError, match=r"^cannot store 1 event\(s\) in "):
                in_flight.result(timeout=30)
        finally:
            holder.close()
        with pytest.raises(StoreError, match="cannot read"):
            store.log(MAC)
        postgres.start()
        store.add(MAC, {"step": "n", "i": 2})
        postgres.restart()
        caplog.clear()
        store.add(MAC, {"step": "n", "i": 3})
        assert "connection lost" in caplog.text and "reconnecting" in caplog.text
        assert [e["i"] for e in store.events(MAC)] == [0, 2, 3]
        summary = store.summary(MAC)
        assert summary is not None and summary.events == 3
        assert store.stats()["events"] == 3
