"""A real PostgreSQL server for tests: Debian's ``initdb`` and ``pg_ctl``, started and stopped here.

The cluster listens on 127.0.0.1 on a free port and on a unix socket inside its directory, trusts
every local connection (``initdb --auth=trust``) and runs with ``fsync=on`` like a production
server. PostgreSQL refuses to run as root: as root the commands run as the ``postgres`` system
user (``runuser -u postgres --``), in a directory that user can reach::

    with PostgresCluster(tmp_path) as pg:
        store = open_store(pg.url, root)
        pg.restart()

The test is skipped (with the reason) only when the server binaries are absent; once they are
present, any failure to start is a failure, with the server's log in the message.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import pytest

BINARIES = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
DATABASE = "pyinit"
TIMEOUT = 60  # seconds for initdb and each pg_ctl


def server_bin() -> Path | None:
    """The bin directory of the newest PostgreSQL installed, None if there is none."""
    found = [d / "bin" for d in BINARIES.glob("*") if (d / "bin" / "initdb").exists()
             and d.name.isdigit()]
    return max(found, key=lambda d: int(d.parent.name)) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Can ``user`` traverse every directory down to ``path``? (``tmp_path`` under
    /tmp/pytest-of-root is 0700.)"""
    for d in [path, *path.parents]:
        st = d.stat()
        bit = 0o100 if st.st_uid == user.pw_uid else 0o010 if st.st_gid == user.pw_gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


class PostgresCluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.bin = server_bin()
        self.port = 0
        self.base: Path | None = None  # the cluster's directory (data, socket, log)
        self._made_base = False
        self._as_postgres = os.geteuid() == 0
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log(self) -> Path:
        assert self.base is not None
        return self.base / "postgresql.log"

    def __enter__(self) -> PostgresCluster:
        if self.bin is None:
            pytest.skip(f"PostgreSQL server binaries not found ({BINARIES}/*/bin/initdb; "
                        "apt-get install postgresql)")
        try:
            self._create()
            self.start()
            self._createdb()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, AssertionError):
            self.stop()
        if self._made_base and self.base is not None:
            if kind is None:
                shutil.rmtree(self.base, ignore_errors=True)
            else:
                print(f"postgres: kept {self.base} (log: {self.log})")

    def _create(self) -> None:
        owner = pwd.getpwnam("postgres") if self._as_postgres else None
        if owner is None or _reachable(self.workdir, owner):
            self.base = self.workdir / "postgres"
            self.base.mkdir()
        else:
            self.base = Path(tempfile.mkdtemp(dir="/tmp", prefix="pyinit-pg-"))
            self._made_base = True
        self.base.chmod(0o755)
        if owner is not None:
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        self._run(["initdb", "-D", str(self.base / "data"), "--auth=trust", "-U", "postgres",
                   "-E", "UTF8", "--no-instructions"])
        with (self.base / "data" / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# tests/pgcluster.py\nlisten_addresses = '127.0.0.1'\n"
                       f"port = {self.port}\nunix_socket_directories = '{self.base}'\n"
                       "fsync = on\nsynchronous_commit = on\nmax_connections = 50\n")

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None
        full = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            full = ["runuser", "-u", "postgres", "--", *full]
        print(f"postgres: + {' '.join(full)}")
        done = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{argv[0]} failed (exit {done.returncode}): "
                                 f"{done.stderr.strip()}\n{tail}")
        return done

    def start(self) -> None:
        assert self.base is not None
        self._run(["pg_ctl", "-D", str(self.base / "data"), "-l", str(self.log), "-w",
                   "-t", str(TIMEOUT), "start"])
        self.running = True

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every session is ended, the cluster shuts down cleanly."""
        if self.running and self.base is not None:
            self._run(["pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w",
                       "-t", str(TIMEOUT), "stop"])
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def _createdb(self) -> None:
        import psycopg

        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def reset(self) -> None:
        """Start the cluster if a test left it stopped, and give :attr:`url` an empty database."""
        import psycopg

        if not self.running:
            self.start()
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DATABASE}")
