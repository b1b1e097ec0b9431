"""The SQLite backend of :mod:`pyinit_server.store`: one file, WAL mode, ``synchronous=FULL``.

One process writes (the store's writer thread, ``BEGIN IMMEDIATE``); readers use their own
connections and, in WAL mode, neither wait for the writer nor make it wait. ``synchronous=FULL``
fsyncs the WAL at every commit, so an acknowledged event survives a power loss.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from pyinit_server.status import MAX_EVENTS
from pyinit_server.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MACHINES,
    Store,
    StoreError,
)

BUSY_TIMEOUT = 30.0  # seconds a connection waits for another process's lock


class SQLiteStore(Store):
    SCHEMA = (
        """CREATE TABLE machines (
            mac TEXT PRIMARY KEY,
            phase TEXT, state TEXT, result TEXT, last_seen REAL,
            events INTEGER NOT NULL DEFAULT 0,  -- Summary.events: posted in all
            lifecycle TEXT, lifecycle_since REAL,  -- Summary.lifecycle's state and since
            kept INTEGER NOT NULL DEFAULT 0,  -- rows in events
            dropped INTEGER NOT NULL DEFAULT 0,  -- deleted by retention
            summary TEXT  -- the whole Summary as JSON but dropped; NULL before the first fold
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,  -- the rowid: insertion order
            mac TEXT NOT NULL,
            received REAL NOT NULL,
            size INTEGER NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_mac ON events (mac, id)",
        """CREATE TABLE totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL, events INTEGER NOT NULL, bytes INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            machines_dropped INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX machines_by_last_seen ON machines (last_seen, mac)",
    )
    UPGRADES = (
        (  # 1 -> 2: max_machines
            "ALTER TABLE totals ADD COLUMN machines_dropped INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX machines_by_last_seen ON machines (last_seen, mac)",
        ),
        (  # 2 -> 3: the lifecycle in the index (filled by Store._fill_lifecycle)
            "ALTER TABLE machines ADD COLUMN lifecycle TEXT",
            "ALTER TABLE machines ADD COLUMN lifecycle_since REAL",
        ),
    )
    OLDEST = "SELECT id, mac, size FROM events ORDER BY id LIMIT ?"
    LEAST_RECENT = "SELECT mac FROM machines ORDER BY last_seen, mac LIMIT ?"

    def __init__(self, path: Path, *, max_events: int = MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_machines: int = DEFAULT_MAX_MACHINES) -> None:
        super().__init__(str(path), max_events=max_events, max_bytes=max_bytes,
                         max_machines=max_machines)
        self.path = path

    @classmethod
    def open(cls, path: Path, *, max_events: int = MAX_EVENTS,
             max_bytes: int = DEFAULT_MAX_BYTES,
             max_machines: int = DEFAULT_MAX_MACHINES) -> SQLiteStore:
        """The store in ``path``; its directory is made (mode 0700) if missing, the file with
        mode 0600 (SQLite gives its -wal and -shm files the mode of the database)."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror or exc}") from exc
        store = cls(path, max_events=max_events, max_bytes=max_bytes, max_machines=max_machines)
        store._start()
        return store

    def _connect(self, *, writer: bool) -> Any:
        # autocommit mode (isolation_level=None): transactions are the BEGIN/COMMIT we send
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        try:
            if writer:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreError(f"cannot open {self.path}: journal mode {mode}, not WAL")
                conn.execute("PRAGMA synchronous = FULL")
            else:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")
