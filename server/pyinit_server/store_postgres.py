"""The PostgreSQL backend of :mod:`pyinit_server.store` (psycopg 3), shared by server replicas.

Each replica has one writer connection (transactions, READ COMMITTED) and a pool of autocommit
read connections. A transaction locks its machines' rows in MAC order (``ORDER BY mac FOR UPDATE``
locks rows in output order), so two replicas folding events of the same machine queue up instead
of losing an update, and cannot deadlock. Size retention locks the machines whose oldest events
it deletes with ``SKIP LOCKED``: it never waits while it holds the ``totals`` row; so does the
machines bound, for the machines it forgets.

Messages name the database by its URL without the password (:func:`redact`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pyinit_server.status import MAX_EVENTS
from pyinit_server.store import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_MACHINES,
    Store,
    StoreError,
    reason,
)

try:
    import psycopg
except ImportError:  # a dependency of pyinit; named in the error below if missing
    psycopg = None  # type: ignore[assignment]

CONNECT_TIMEOUT = 5  # seconds; libpq waits this long for an unreachable host
SCHEMA_LOCK = 0x7079696E6974  # pg_advisory_xact_lock key of the schema check ("pyinit")
FORGET_LOCK = SCHEMA_LOCK + 1  # ... and of forgetting machines over max_machines
SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword"})


def redact(url: str) -> str:
    """``url`` without its password (in the authority or the query). Pure."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = (f"{parts.username}@" if parts.username else "") + host + (
            f":{parts.port}" if parts.port is not None else "")
    except ValueError:  # an unparsable port: show no authority at all
        return f"{url.split('://')[0]}://..."
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() not in SECRET_PARAMS])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class PostgresStore(Store):
    SCHEMA = (
        """CREATE TABLE machines (
            mac TEXT PRIMARY KEY,
            phase TEXT, state TEXT, result TEXT, last_seen DOUBLE PRECISION,
            events BIGINT NOT NULL DEFAULT 0,
            lifecycle TEXT, lifecycle_since DOUBLE PRECISION,
            kept BIGINT NOT NULL DEFAULT 0,
            dropped BIGINT NOT NULL DEFAULT 0,
            summary TEXT
        )""",
        """CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            mac TEXT NOT NULL,
            received DOUBLE PRECISION NOT NULL,
            size INTEGER NOT NULL,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX events_by_mac ON events (mac, id)",
        """CREATE TABLE totals (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL, events BIGINT NOT NULL, bytes BIGINT NOT NULL,
            dropped BIGINT NOT NULL,
            machines_dropped BIGINT NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX machines_by_last_seen ON machines (last_seen, mac)",
    )
    UPGRADES = (
        (  # 1 -> 2: max_machines
            "ALTER TABLE totals ADD COLUMN machines_dropped BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX machines_by_last_seen ON machines (last_seen, mac)",
        ),
        (  # 2 -> 3: the lifecycle in the index (filled by Store._fill_lifecycle)
            "ALTER TABLE machines ADD COLUMN lifecycle TEXT",
            "ALTER TABLE machines ADD COLUMN lifecycle_since DOUBLE PRECISION",
        ),
    )
    LOCK_ROWS = " ORDER BY mac FOR UPDATE"
    OLDEST = ("SELECT e.id, e.mac, e.size FROM events e JOIN machines m ON m.mac = e.mac "
              "ORDER BY e.id LIMIT ? FOR UPDATE OF m SKIP LOCKED")
    LEAST_RECENT = ("SELECT mac FROM machines ORDER BY last_seen, mac LIMIT ? "
                    "FOR UPDATE SKIP LOCKED")

    def __init__(self, url: str, *, max_events: int = MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_machines: int = DEFAULT_MAX_MACHINES) -> None:
        super().__init__(redact(url), max_events=max_events, max_bytes=max_bytes,
                         max_machines=max_machines)
        self._url = url

    @classmethod
    def open(cls, url: str, *, max_events: int = MAX_EVENTS,
             max_bytes: int = DEFAULT_MAX_BYTES,
             max_machines: int = DEFAULT_MAX_MACHINES) -> PostgresStore:
        if psycopg is None:
            raise StoreError(f"cannot open {redact(url)}: psycopg is not installed "
                             "(pip install 'psycopg[binary]')")
        store = cls(url, max_events=max_events, max_bytes=max_bytes, max_machines=max_machines)
        store._start()
        return store

    def _connect(self, *, writer: bool) -> Any:
        return psycopg.connect(self._url, autocommit=not writer,
                               connect_timeout=CONNECT_TIMEOUT, application_name="pyinit")

    def _pipeline(self, conn: Any) -> Any:
        return conn.pipeline()

    def _lock_schema(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))

    def _lock_forget(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (FORGET_LOCK,))

    def _sql(self, text: str) -> str:
        # The shared statements use "?"; psycopg wants "%s". They contain no literal ? or %.
        return text.replace("?", "%s")

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _lost(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _describe(self, exc: Exception) -> str:
        # libpq's messages name host and port, never the password
        return _libpq_reason(exc) if isinstance(exc, psycopg.Error) else reason(exc)


def _libpq_reason(exc: Exception) -> str:
    """libpq's first line without its prefixes: ``connection refused``, not ``connection failed:
    connection to server at "127.0.0.1", port 1 failed: Connection refused``. Pure."""
    text = reason(exc)
    if "failed: " in text:
        text = text.rsplit("failed: ", 1)[1]
    text = " ".join(text.removeprefix("FATAL:").split())
    return text[:1].lower() + text[1:] if text[1:2].islower() else text
