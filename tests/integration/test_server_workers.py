"""``pyinit serve --workers N``: N processes on one port (SO_REUSEPORT), one store, one stop."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

MAC = "52-54-00-0b-00-01"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def start(root: Path, port: int, log: Path, workers: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pyinit_build.cli", "serve", "--root",
                                 str(root), "--port", str(port), "--workers", workers],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.read_text().count("serving ") >= int(workers) and \
                len(children(proc.pid)) == int(workers) - 1:
            try:
                requests.get(f"http://127.0.0.1:{port}/api/machines", timeout=2)
                return proc
            except requests.ConnectionError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"pyinit serve exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"pyinit serve --workers {workers} did not come up: "
                         f"{log.read_text()[-2000:]}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "machines" / f"{MAC}.yaml").write_text(
        "action: writeImage\nsourceImage: images/a.img\ndestinationDevice: /dev/vda\n")
    return tmp_path


def test_workers_share_the_port_and_the_store(root: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(root, port, log, "2")
    try:
        workers = [proc.pid, *children(proc.pid)]
        assert len(workers) == 2
        cpu0 = {pid: _cpu(pid) for pid in workers}
        token = (root / ".pyinit" / "operator-token").read_text().strip()
        for i in range(200):  # a new connection each: the kernel spreads them over both
            resp = requests.post(f"http://127.0.0.1:{port}/events/{MAC}",
                                 json={"step": "provision", "n": i},
                                 headers={"Authorization": f"Bearer {token}",
                                          "Connection": "close"}, timeout=10)
            assert resp.status_code == 204
        status = requests.get(f"http://127.0.0.1:{port}/api/machines/{MAC}", timeout=10).json()
        assert status["events"] == 200 and [e["n"] for e in status["log"]] == list(range(200))
        busy = [pid for pid in workers if _cpu(pid) - cpu0[pid] > 0]
        assert busy == workers, "one worker took every connection"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(alive(pid) for pid in workers)
        text = log.read_text()
        assert text.count("server on ") == 2 and "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_first_process_takes_its_workers_along(root: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    proc = start(root, port, log, "3")
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 30  # SIGTERM from the kernel (PR_SET_PDEATHSIG), then a stop
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), log.read_text()[-2000:]
    with socket.socket() as s:  # the port is free again: nobody is left serving it
        s.bind(("127.0.0.1", port))


def _cpu(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
