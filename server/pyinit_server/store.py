"""The durable event store of the provisioning server: one interface, SQLite or PostgreSQL.

Machines POST JSON events; :class:`Store` keeps them, each machine's :class:`~status.Summary`
(folded with :func:`status.fold`, exactly as :class:`status.History` does) and a small index of
every machine. :func:`open_store` picks the backend: SQLite (the default, a file under the server
root; :mod:`pyinit_server.store_sqlite`) or PostgreSQL (a ``postgresql://`` URL, shared by several
server replicas; :mod:`pyinit_server.store_postgres`). This module holds what both share: the
writer thread, the transaction, retention, the index cache and the reads.

Group commit
    :meth:`Store.submit` only queues the event and returns a future. One writer thread takes
    everything queued (up to :data:`BATCH` events) and runs one transaction: lock the machines'
    rows (sorted by MAC), insert the events, fold each into its machine's summary, apply
    retention, bump the totals row, COMMIT; then it resolves every future of the batch. With one
    fsync per commit this is how thousands of acknowledged events per second are reached while
    each HTTP handler waits for its own event. Reads use their own connections (a small pool), so
    they never wait for the writer (SQLite in WAL mode; PostgreSQL's MVCC).

Durability
    A future resolves only after its transaction committed: SQLite runs with ``synchronous=FULL``
    in WAL mode (every commit is fsynced: an acknowledged event survives a power loss, not only a
    ``kill -9``); PostgreSQL commits synchronously by default. An event still queued when the
    process dies was never acknowledged and may be lost. If a batch fails its futures get a
    :class:`StoreError` (the server answers 503) and the writer goes on: the connection is dropped
    and made again for the next batch. A batch that failed on a connection made before it (the
    database restarted while the writer was idle or mid-batch) is retried once on a new
    connection, since nothing of it can have been committed; a failure during COMMIT is not
    retried (the outcome is unknown, a retry could store the events twice).

Retention
    At most ``max_events`` events are kept per machine (its oldest deleted first), at most
    ``max_bytes`` of event JSON in all (the oldest events of any machine deleted first) and at
    most ``max_machines`` machines (those heard from longest ago forgotten first, with their
    events). All three are enforced inside the writing transaction, cheaply: ``machines.kept``
    counts each machine's rows, the single ``totals`` row counts rows, bytes and drops, and the
    machines are counted only by a batch that created one (a machine whose row had no summary
    yet). Every deleted event is counted in ``totals.dropped`` (:meth:`Store.stats`), and in
    ``machines.dropped`` (:attr:`Summary.dropped`) while its machine is kept; every forgotten
    machine in ``totals.machines_dropped``. So ``events + dropped`` is every event ever stored.

Replicas (PostgreSQL)
    Every replica reads and writes the same tables, so every replica sees every machine. A
    transaction locks its machines' rows (``SELECT ... FOR UPDATE``, sorted by MAC so two
    replicas cannot deadlock) before it reads, folds and writes their summaries: no update is
    lost. The ``totals`` row is updated last, so it serialises only the end of transactions, and
    size retention skips the rows of machines another transaction holds (``SKIP LOCKED``): no
    transaction waits for a machine while holding the totals row. Forgetting machines skips
    them too; a transaction that waited for a machine another one forgot makes its row again.
    ``totals.seq`` counts commits; it orders the updates of :meth:`Store.index`'s in-memory
    copy.

The index
    :meth:`Store.index` answers from a copy of the ``machines`` columns kept in memory: the writer
    updates it after each commit; a read that finds ``totals.seq`` ahead of the copy (another
    replica, another process) reloads it from the columns. Reading 20 000 rows through
    :mod:`sqlite3` costs tens of milliseconds; the copy costs one small query.

Schema
    ``meta`` (``schema_version``); ``machines``: per machine the index columns (``phase``,
    ``state``, ``result``, ``last_seen``, ``events``, ``lifecycle`` and ``lifecycle_since``: the
    lifecycle state and since when, docs/lifecycle.md), the counters ``kept`` and ``dropped``,
    and the whole summary as JSON text (but ``dropped``: size retention changes it for machines
    whose summary it does not rewrite), indexed by ``last_seen`` too; ``events``: the JSON text
    as posted, its size and the server's receive time; ``totals``: one row. Created when
    missing; an older schema is upgraded in one transaction (version 1: no
    ``totals.machines_dropped``, no index by ``last_seen``; version 2: no lifecycle columns,
    filled from the summaries by the upgrade); a database of a newer schema is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pyinit_server.lifecycle import Lifecycle
from pyinit_server.status import MAX_EVENTS, Summary, fold

log = logging.getLogger("pyinit_server.store")

SCHEMA_VERSION = 3
DEFAULT_MAX_BYTES = 512 << 20  # event JSON kept in all
DEFAULT_MAX_MACHINES = 100_000  # machines kept (each a summary row and a line of the index)
BATCH = 500  # events per transaction at most (x 11 parameters: under SQLite's 32766)
CHUNK = 500  # values per IN (...) list; events looked at per size-retention step
STATE_DIR = ".pyinit"  # under the server root: the default SQLite file and its WAL
SQLITE_NAME = "state.sqlite3"

_SUMMARY_FIELDS = tuple(f.name for f in fields(Summary) if f.name != "dropped")
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot do what was asked; the message is one line: what and why."""


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One machine in :meth:`Store.index`, from the summary's columns."""

    phase: str | None
    state: str | None
    result: str | None
    last_seen: float | None
    events: int
    lifecycle: str | None = None  # the lifecycle state (None: none yet, "new")
    lifecycle_since: float | None = None


def lifecycle_columns(summary: Summary) -> tuple[str | None, float | None]:
    """The index's ``lifecycle`` and ``lifecycle_since`` of ``summary``. Pure."""
    current = Lifecycle.from_json(summary.lifecycle)
    return (None, None) if current is None else (current.state, current.since)


# what a committed batch changed: the new totals.seq, the index rows of the batch's machines,
# the machines forgotten
_Written = tuple[int, dict[str, IndexRow], list[str]]


@dataclass(slots=True)
class _Item:
    mac: str
    event: dict[str, Any]
    body: str  # the JSON text stored
    received: float
    future: concurrent.futures.Future[None]


def reason(exc: BaseException) -> str:
    """The first line of an exception, for a one-line error message."""
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


def encode(event: dict[str, Any]) -> str:
    """The stored text of an event (ASCII: its length is its size in bytes)."""
    return json.dumps(event, separators=(",", ":"))


def _summary(mac: str, text: str | None, dropped: int) -> Summary:
    if text is None:
        return Summary(mac, dropped=dropped)
    data = json.loads(text)
    return Summary(**{k: v for k, v in data.items() if k in _SUMMARY_FIELDS}, dropped=dropped)


def _summary_text(summary: Summary) -> str:
    # not to_json(): asdict() deep-copies, a good part of a small batch's time; and without
    # dropped, counted in machines.dropped (also by other machines' transactions)
    return json.dumps({name: getattr(summary, name) for name in _SUMMARY_FIELDS},
                      separators=(",", ":"))


def _values(rows: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """``(?, ?), (?, ?)...`` for a multi-row VALUES of ``rows``, and its parameters."""
    one = f"({', '.join('?' * len(rows[0]))})"
    return ", ".join([one] * len(rows)), [value for row in rows for value in row]


def _chunks(values: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


class Store:
    """Events, summaries and the index of every machine; see the module docstring.

    A backend subclass provides the connections and the few statements that differ
    (placeholders, DDL, row locks). Statements here are written with ``?`` placeholders.
    """

    SCHEMA: ClassVar[tuple[str, ...]]  # the DDL of SCHEMA_VERSION, run in one transaction
    # UPGRADES[v - 1]: the statements that take a database from version v to v + 1
    UPGRADES: ClassVar[tuple[tuple[str, ...], ...]]
    LOCK_ROWS: ClassVar[str] = ""  # appended to the SELECT of the batch's machines rows
    OLDEST: ClassVar[str]  # (id, mac, size) of the oldest deletable events, LIMIT ?
    LEAST_RECENT: ClassVar[str]  # the macs of the deletable machines heard longest ago, LIMIT ?

    def __init__(self, where: str, *, max_events: int = MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_machines: int = DEFAULT_MAX_MACHINES) -> None:
        if max_events < 1 or max_bytes < 1 or max_machines < 1:
            raise ValueError("max_events, max_bytes and max_machines must be positive")
        self.where = where  # the file or the URL without its password, for messages
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_machines = max_machines
        self.changed = threading.Condition()  # notify_all() after every batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._writer: Any = None  # the writer thread's connection (None: make one)
        self._readers: queue.SimpleQueue[Any] = queue.SimpleQueue()  # idle read connections
        self._index: dict[str, IndexRow] = {}
        self._index_seq = -1  # the totals.seq the copy is known to include
        self._index_lock = threading.Lock()  # guards _index and _index_seq (short sections)
        self._reload_lock = threading.Lock()  # one reload of the index at a time
        self._thread = threading.Thread(target=self._write_loop, name="store-writer",
                                        daemon=True)

    # -- backend seams --------------------------------------------------------------------

    def _connect(self, *, writer: bool) -> Any:
        """A new connection (the writer's: transactions; a reader's: autocommit)."""
        raise NotImplementedError

    def _begin(self, conn: Any) -> None:
        """Start the writer's transaction (SQLite: take the write lock now)."""

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _pipeline(self, conn: Any) -> AbstractContextManager[Any]:
        """Send the writer's statements without waiting for each (PostgreSQL: pipeline mode;
        a fetch waits for everything sent before it)."""
        return contextlib.nullcontext()

    def _lock_schema(self, conn: Any) -> None:
        """Keep other processes out of the schema check (PostgreSQL: an advisory lock)."""

    def _lock_forget(self, conn: Any) -> None:
        """One transaction at a time counts and forgets machines (PostgreSQL: an advisory lock
        held to the commit; SQLite has one writer anyway). Without it, two replicas that both
        count one machine too many each forget a different one: one more than the bound asks.
        No deadlock: whoever holds it waits on no row (``SKIP LOCKED``) before it commits."""

    def _sql(self, text: str) -> str:
        """``text`` in the backend's placeholder style."""
        return text

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column IN (values)`` as SQL and its parameters."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _lost(self, conn: Any) -> bool:
        """True when ``conn`` failed because the server ended it (worth one more connection;
        not so for an error of the statement, a deadlock, a full disk)."""
        return False

    def _describe(self, exc: Exception) -> str:
        """``exc`` in one line, for the end of a StoreError's message."""
        return reason(exc)

    # -- life -------------------------------------------------------------------------------

    def _start(self) -> None:
        """Connect, create or check the schema, load the index, start the writer."""
        try:
            self._writer = self._connect(writer=True)
            self._prepare(self._writer)
            seq, rows = self._load_index(self._writer)
            self._writer.commit()  # end the read transaction (PostgreSQL)
        except StoreError:
            self._drop_writer()
            raise
        except Exception as exc:
            self._drop_writer()
            raise StoreError(f"cannot open {self.where}: {self._describe(exc)}") from exc
        self._index, self._index_seq = rows, seq
        self._thread.start()

    def _prepare(self, conn: Any) -> None:
        self._begin(conn)
        self._lock_schema(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            for statement in self.SCHEMA:
                conn.execute(statement)
            conn.execute(self._sql("INSERT INTO meta (key, value) VALUES (?, ?), (?, ?)"),
                         ("schema_version", str(SCHEMA_VERSION), "created", str(time.time())))
            conn.execute("INSERT INTO totals (id, seq, events, bytes, dropped, machines_dropped) "
                         "VALUES (1, 0, 0, 0, 0, 0)")
        elif not row[0].isdigit() or not 1 <= int(row[0]) <= SCHEMA_VERSION:
            conn.rollback()
            newer = row[0].isdigit() and int(row[0]) > SCHEMA_VERSION
            raise StoreError(f"cannot open {self.where}: schema version {row[0]} is "
                             f"{'newer than' if newer else 'unknown to'} this pyinit "
                             f"(version {SCHEMA_VERSION})" + ("; upgrade pyinit" if newer else ""))
        elif (version := int(row[0])) < SCHEMA_VERSION:
            for statement in (s for upgrade in self.UPGRADES[version - 1:] for s in upgrade):
                conn.execute(statement)
            if version < 3:
                self._fill_lifecycle(conn)
            conn.execute(self._sql("UPDATE meta SET value = ? WHERE key = 'schema_version'"),
                         (str(SCHEMA_VERSION),))
            log.info("%s: schema upgraded from version %d to %d", self.where, version,
                     SCHEMA_VERSION)
        self._commit(conn)

    def _fill_lifecycle(self, conn: Any) -> None:
        """The upgrade to version 3: the new lifecycle columns from the summaries. In Python,
        not SQL: the summaries are Python's JSON (a NaN a machine sent is in them, and
        PostgreSQL's JSON refuses it), read once."""
        rows = []
        for mac, text in conn.execute("SELECT mac, summary FROM machines "
                                      "WHERE summary IS NOT NULL").fetchall():
            life, since = lifecycle_columns(_summary(mac, text, 0))
            if life is not None:
                rows.append((life, since, mac))
        if rows:
            conn.cursor().executemany(self._sql(
                "UPDATE machines SET lifecycle = ?, lifecycle_since = ? WHERE mac = ?"), rows)

    def close(self) -> None:
        """Write everything queued, stop the writer, close the connections. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()
        self._drop_writer()
        while True:
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                break
            _close(conn)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    def submit(self, mac: str, event: dict[str, Any],
               received: float) -> concurrent.futures.Future[None]:
        """Queue ``event`` (not to be changed afterwards) of ``mac`` received at ``received``.

        The future resolves once the transaction holding the event committed, or carries the
        :class:`StoreError` of its failure. Thread-safe; raises StoreError once closed, TypeError
        or ValueError for an event JSON cannot encode."""
        item = _Item(mac, event, encode(event), received, concurrent.futures.Future())
        with self._close_lock:
            if self._closed:
                raise StoreError(f"{self.where}: the store is closed")
            self._queue.put(item)
        return item.future

    def add(self, mac: str, event: dict[str, Any], received: float | None = None) -> None:
        """Store one event and wait until it is committed."""
        self.submit(mac, event, time.time() if received is None else received).result()

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            items: list[_Item] = []
            item = self._queue.get()
            while True:
                if item is None:
                    stop = True
                    break
                if item.future.set_running_or_notify_cancel():
                    items.append(item)
                if len(items) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if items:
                self._write_batch(items)

    def _write_batch(self, items: list[_Item]) -> None:
        try:
            seq, rows, forgotten = self._commit_batch(items)
        except Exception as exc:
            message = (f"cannot store {len(items)} event(s) in {self.where}: "
                       f"{self._describe(exc)}")
            log.error("%s", message)
            for item in items:
                error = StoreError(message)
                error.__cause__ = exc
                item.future.set_exception(error)
        else:
            with self._index_lock:
                if self._index_seq == seq - 1:  # the copy was current: keep it so
                    self._index.update(rows)
                    for mac in forgotten:
                        self._index.pop(mac, None)
                    self._index_seq = seq
            for item in items:
                item.future.set_result(None)
        with self.changed:
            self.changed.notify_all()

    def _commit_batch(self, items: list[_Item]) -> _Written:
        """Write ``items`` in one transaction; once more on a new connection if the one made
        before this batch turns out dead before COMMIT."""
        for attempt in (1, 2):
            fresh = self._writer is None
            committing = False
            try:
                if fresh:
                    self._writer = self._connect(writer=True)
                with self._pipeline(self._writer):
                    result = self._transaction(self._writer, items)
                    committing = True
                    self._commit(self._writer)
                return result
            except Exception as exc:
                lost = self._writer is not None and self._lost(self._writer)
                self._drop_writer()
                if attempt == 1 and lost and not fresh and not committing:
                    log.warning("%s: connection lost (%s); reconnecting", self.where,
                                self._describe(exc))
                    continue
                raise
        raise AssertionError("unreachable")

    def _drop_writer(self) -> None:
        if self._writer is not None:
            _close(self._writer)
            self._writer = None

    def _transaction(self, conn: Any, items: list[_Item]) -> _Written:
        """Everything of one batch but the COMMIT; returns the new ``totals.seq``, the index rows
        of the batch's machines and the machines forgotten. A handful of statements whatever the
        batch's size (multi-row VALUES), most of them sent without waiting (PostgreSQL's
        pipeline)."""
        batch: dict[str, list[_Item]] = {}
        for item in items:
            batch.setdefault(item.mac, []).append(item)
        macs = sorted(batch)  # rows are locked in this order: no deadlock between replicas
        self._begin(conn)
        locked = self._lock_machines(conn, macs)
        rows, params = _values([(i.mac, i.received, len(i.body), i.body) for i in items])
        conn.execute(self._sql(f"INSERT INTO events (mac, received, size, body) VALUES {rows}"),
                     params)
        summaries: dict[str, Summary] = {}
        trimming = []
        for mac in macs:
            kept, dropped, text = locked[mac]
            summary = summaries[mac] = _summary(mac, text, dropped)
            for item in batch[mac]:
                fold(summary, item.event, item.received)
            excess = kept + len(batch[mac]) - self.max_events
            if excess > 0:  # this machine's oldest go
                trimming.append(conn.execute(self._sql(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE mac = ? "
                    "ORDER BY id LIMIT ?) RETURNING mac, size"), (mac, excess)))
        removed: dict[str, list[int]] = {}
        for cursor in trimming:
            for mac, size in cursor.fetchall():
                removed.setdefault(mac, []).append(size)
        machine_rows, index = [], {}
        for mac in macs:
            summary, (kept, dropped, _) = summaries[mac], locked[mac]
            gone = len(removed.get(mac, ()))
            life, since = lifecycle_columns(summary)
            machine_rows.append((mac, summary.phase, summary.state, summary.result,
                                 summary.last_seen, summary.events, life, since,
                                 kept + len(batch[mac]) - gone, dropped + gone,
                                 _summary_text(summary)))
            index[mac] = IndexRow(summary.phase, summary.state, summary.result,
                                  summary.last_seen, summary.events, life, since)
        rows, params = _values(machine_rows)
        conn.execute(self._sql(
            "INSERT INTO machines (mac, phase, state, result, last_seen, events, lifecycle, "
            f"lifecycle_since, kept, dropped, summary) VALUES {rows} ON CONFLICT (mac) DO "
            "UPDATE SET phase = excluded.phase, state = excluded.state, "
            "result = excluded.result, last_seen = excluded.last_seen, "
            "events = excluded.events, lifecycle = excluded.lifecycle, "
            "lifecycle_since = excluded.lifecycle_since, kept = excluded.kept, "
            "dropped = excluded.dropped, summary = excluded.summary"), params)
        forgotten: list[str] = []
        forgotten_events = forgotten_bytes = 0
        if any(text is None for _, _, text in locked.values()):  # the batch made a machine
            forgotten, forgotten_events, forgotten_bytes = self._forget(conn)
            for mac in forgotten:
                index.pop(mac, None)
        dropped_now = sum(len(sizes) for sizes in removed.values()) + forgotten_events
        freed = sum(sum(sizes) for sizes in removed.values()) + forgotten_bytes
        seq, total = conn.execute(self._sql(
            "UPDATE totals SET seq = seq + 1, events = events + ?, bytes = bytes + ?, "
            "dropped = dropped + ?, machines_dropped = machines_dropped + ? WHERE id = 1 "
            "RETURNING seq, bytes"),
            (len(items) - dropped_now, sum(len(i.body) for i in items) - freed, dropped_now,
             len(forgotten)),
        ).fetchone()
        if total > self.max_bytes:
            self._trim(conn, total - self.max_bytes)
        return seq, index, forgotten

    def _lock_machines(self, conn: Any, macs: list[str]) -> dict[str, tuple[int, int, Any]]:
        """Make the missing rows of ``macs`` (sorted), lock them all and return each one's
        ``kept``, ``dropped`` and ``summary`` (None: a row made by this transaction)."""
        locked: dict[str, tuple[int, int, Any]] = {}
        wanted = macs
        for _attempt in range(3):
            rows, params = _values([(m,) for m in wanted])
            conn.execute(self._sql(f"INSERT INTO machines (mac) VALUES {rows} "
                                   "ON CONFLICT (mac) DO NOTHING"), params)
            where, params = self._in("mac", wanted)
            # The summary is read from the locked row itself: in READ COMMITTED a locking
            # SELECT that waited sees the new version of the rows it locks, but any joined
            # table as of its start (a summary kept in another table could be the one just
            # replaced).
            locked.update((mac, (kept, dropped, text)) for mac, kept, dropped, text in
                          conn.execute(self._sql(
                              f"SELECT mac, kept, dropped, summary FROM machines WHERE {where}"
                              f"{self.LOCK_ROWS}"), params).fetchall())
            # A row is missing when another replica forgot its machine while this transaction
            # waited to lock it (PostgreSQL): the next INSERT makes it again.
            wanted = [mac for mac in wanted if mac not in locked]
            if not wanted:
                return locked
        raise StoreError(f"the rows of {len(wanted)} machine(s) vanished three times")

    def _forget(self, conn: Any) -> tuple[list[str], int, int]:
        """Delete the machines heard from longest ago, with their events, while more than
        ``max_machines`` are kept (PostgreSQL: not those other transactions hold; a later batch
        that makes a machine catches up). Returns their MACs and their events' count and
        bytes."""
        self._lock_forget(conn)
        (count,) = conn.execute("SELECT count(*) FROM machines").fetchone()
        if count <= self.max_machines:
            return [], 0, 0
        macs = [mac for (mac,) in conn.execute(self._sql(self.LEAST_RECENT),
                                               (count - self.max_machines,)).fetchall()]
        events = size = 0
        for part in _chunks(macs):
            where, params = self._in("mac", part)
            n, total = conn.execute(self._sql(
                f"SELECT count(*), coalesce(sum(size), 0) FROM events WHERE {where}"),
                params).fetchone()
            events, size = events + n, size + total
            conn.execute(self._sql(f"DELETE FROM events WHERE {where}"), params)
            conn.execute(self._sql(f"DELETE FROM machines WHERE {where}"), params)
        log.debug("%s: %d machine(s) over max_machines: forgot the %d heard from longest ago, "
                  "with their %d event(s)", self.where, count - self.max_machines, len(macs),
                  events)  # a flood would log a line per batch; stats() counts them
        return macs, events, size

    def _trim(self, conn: Any, excess: int) -> None:
        """Delete the oldest events of any machine until ``excess`` bytes are gone (or nothing
        more can be deleted now: PostgreSQL skips machines other transactions hold)."""
        cur = conn.cursor()
        while excess > 0:
            chosen: list[int] = []
            for id_, _mac, size in conn.execute(self._sql(self.OLDEST), (CHUNK,)).fetchall():
                chosen.append(id_)
                excess -= size
                if excess <= 0:
                    break
            if not chosen:
                log.warning("%s: %d bytes over max_bytes, nothing deletable now",
                            self.where, excess)
                return
            per_machine: dict[str, list[int]] = {}
            for part in _chunks(chosen):
                where, params = self._in("id", part)
                for mac, size in conn.execute(
                        self._sql(f"DELETE FROM events WHERE {where} RETURNING mac, size"),
                        params).fetchall():
                    per_machine.setdefault(mac, []).append(size)
            if not per_machine:
                return
            cur.executemany(self._sql("UPDATE machines SET kept = kept - ?, "
                                      "dropped = dropped + ? WHERE mac = ?"),
                            [(len(s), len(s), mac) for mac, s in sorted(per_machine.items())])
            count = sum(len(s) for s in per_machine.values())
            conn.execute(self._sql("UPDATE totals SET events = events - ?, bytes = bytes - ?, "
                                   "dropped = dropped + ? WHERE id = 1"),
                         (count, sum(sum(s) for s in per_machine.values()), count))

    # -- reading ----------------------------------------------------------------------------

    def _read(self, what: str, query: Callable[[Any], T]) -> T:
        """Run ``query`` on a pooled read connection (once more on a new one if it went away)."""
        for attempt in (1, 2):
            if self._closed:
                raise StoreError(f"{self.where}: the store is closed")
            try:
                conn, pooled = self._readers.get_nowait(), True
            except queue.Empty:
                pooled = False
                try:
                    conn = self._connect(writer=False)
                except Exception as exc:
                    raise StoreError(f"cannot read {what} from {self.where}: "
                                     f"{self._describe(exc)}") from exc
            try:
                result = query(conn)
            except Exception as exc:
                lost = self._lost(conn)
                _close(conn)
                if attempt == 1 and lost and pooled:  # a pooled connection the server ended
                    continue
                raise StoreError(f"cannot read {what} from {self.where}: "
                                 f"{self._describe(exc)}") from exc
            if self._closed:
                _close(conn)
            else:
                self._readers.put(conn)
            return result
        raise AssertionError("unreachable")

    def _rows(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(conn.execute(self._sql(sql), params).fetchall())

    def log(self, mac: str) -> list[dict[str, Any]]:
        """The kept events of ``mac``, oldest first, each with ``received`` (server time)."""
        rows = self._read(f"the events of {mac}", lambda c: self._rows(
            c, "SELECT received, body FROM events WHERE mac = ? ORDER BY id", (mac,)))
        return [{**json.loads(body), "received": round(received, 3)} for received, body in rows]

    def events(self, mac: str) -> list[dict[str, Any]]:
        """The kept events of ``mac``, oldest first, as posted."""
        rows = self._read(f"the events of {mac}", lambda c: self._rows(
            c, "SELECT body FROM events WHERE mac = ? ORDER BY id", (mac,)))
        return [json.loads(body) for (body,) in rows]

    def summary(self, mac: str) -> Summary | None:
        """The summary of ``mac``, None if it never posted an event."""
        return self.summaries([mac]).get(mac)

    def summaries(self, macs: Sequence[str]) -> dict[str, Summary]:
        """The summaries of those of ``macs`` that posted events (a page of the API)."""
        wanted = sorted(set(macs))

        def query(conn: Any) -> list[Any]:
            rows = []
            for part in _chunks(wanted):
                where, params = self._in("mac", part)
                rows += self._rows(conn, "SELECT mac, dropped, summary FROM machines "
                                         f"WHERE {where}", params)
            return rows

        rows = self._read("summaries", query) if wanted else []
        return {mac: _summary(mac, text, dropped) for mac, dropped, text in rows}

    def index(self) -> dict[str, IndexRow]:
        """Every machine that posted events: its phase, state, result, last_seen, count and
        lifecycle state (with since when)."""
        seq = self._read("the index", lambda c: self._rows(
            c, "SELECT seq FROM totals WHERE id = 1")[0][0])
        with self._index_lock:
            if seq <= self._index_seq:
                return dict(self._index)
        with self._reload_lock:  # another replica or process wrote: read the columns again
            seq, rows = self._read("the index", self._load_index)
            with self._index_lock:
                if seq > self._index_seq:
                    self._index, self._index_seq = rows, seq
                    return dict(rows)
                return dict(self._index)

    def _load_index(self, conn: Any) -> tuple[int, dict[str, IndexRow]]:
        # seq first: the rows read after it are at least that new
        seq = self._rows(conn, "SELECT seq FROM totals WHERE id = 1")[0][0]
        rows = self._rows(conn, "SELECT mac, phase, state, result, last_seen, events, "
                                "lifecycle, lifecycle_since FROM machines")
        return seq, {mac: IndexRow(*row) for mac, *row in rows}

    def stats(self) -> dict[str, int]:
        """``machines``, ``events`` and ``bytes`` kept; ``dropped``: the events retention deleted
        in all (with forgotten machines too); ``machines_dropped``: the machines it forgot."""
        row = self._read("the totals", lambda c: self._rows(
            c, "SELECT (SELECT count(*) FROM machines), events, bytes, dropped, machines_dropped "
               "FROM totals WHERE id = 1")[0])
        return dict(zip(("machines", "events", "bytes", "dropped", "machines_dropped"),
                        map(int, row), strict=True))


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception as exc:  # a dead connection may fail to close; nothing is lost
        log.debug("closing a store connection: %s", reason(exc))


def open_store(db: str | None, root: Path, *, max_events: int = MAX_EVENTS,
               max_bytes: int = DEFAULT_MAX_BYTES,
               max_machines: int = DEFAULT_MAX_MACHINES) -> Store:
    """Open (and create if needed) the event store ``db`` names.

    None or ``sqlite``: ``root/.pyinit/state.sqlite3``; ``sqlite:///abs/path``: that file;
    ``postgresql://...`` or ``postgres://...``: that database. Raises StoreError."""
    if db is None or db == "sqlite" or db.startswith("sqlite:"):
        from pyinit_server.store_sqlite import SQLiteStore

        if db is None or db == "sqlite":
            path = root / STATE_DIR / SQLITE_NAME
        elif db.startswith("sqlite:///"):
            path = Path(db.removeprefix("sqlite://"))
        else:
            raise StoreError(f"cannot open {db}: an SQLite URL is sqlite:///absolute/path")
        return SQLiteStore.open(path, max_events=max_events, max_bytes=max_bytes,
                                max_machines=max_machines)
    if db.startswith(("postgresql://", "postgres://")):
        from pyinit_server.store_postgres import PostgresStore

        return PostgresStore.open(db, max_events=max_events, max_bytes=max_bytes,
                                  max_machines=max_machines)
    raise StoreError(f"cannot open the store {db.split('://')[0]!r}: expected sqlite, "
                     "sqlite:///path or postgresql://...")
