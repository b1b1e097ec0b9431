"""Two ``pyinit serve`` replicas on one real PostgreSQL: every replica shows every machine.

The replicas share the root (so the secret: a machine token is good at both) and the database
(``--db``); machines post to either, as they would behind a load balancer. Nothing may be lost or
counted twice, also for a machine whose events go to both replicas at the same moment.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.serverkit import ObservedServer

pytestmark = pytest.mark.integration

MACS = [f"52-54-00-0a-00-{i:02x}" for i in range(8)]
SHARED = "52-54-00-0a-00-ff"  # posted to both replicas at once
PER_MAC = 40


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "machines").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "machines" / f"{MACS[0]}.yaml").write_text(
        "action: writeImage\nsourceImage: images/a.img\ndestinationDevice: /dev/vda\n")
    return tmp_path


def post_all(srv: ObservedServer, mac: str, start: int, count: int,
             errors: list[str]) -> None:
    token = srv.machine_token(mac)
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {token}"
        for i in range(start, start + count):
            event = {"step": "provision", "status": "progress", "percent": float(i), "n": i}
            resp = s.post(f"{srv.url}/events/{mac}", json=event, timeout=30)
            if resp.status_code != 204:
                errors.append(f"{mac} #{i}: {resp.status_code} {resp.text}")


def test_two_replicas_serve_one_fleet(root: Path, postgres: Any) -> None:
    with ObservedServer(root, db=postgres.url) as one, \
            ObservedServer(root, db=postgres.url) as two:
        errors: list[str] = []
        threads = [threading.Thread(target=post_all, args=((one, two)[i % 2], mac, 0, PER_MAC,
                                                           errors))
                   for i, mac in enumerate(MACS)]
        # one machine whose events reach both replicas at the same moment (no lost update)
        threads += [threading.Thread(target=post_all, args=(srv, SHARED, start, PER_MAC, errors))
                    for srv, start in ((one, 0), (two, PER_MAC))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        # the last event of every machine, then the same answers from both replicas
        pages = [requests.get(f"{srv.url}/api/machines", timeout=10).json() for srv in (one, two)]
        for page in pages:
            by_mac = {m["mac"]: m for m in page["machines"]}
            assert set(by_mac) == {*MACS, SHARED}
            for mac in MACS:
                assert by_mac[mac]["events"] == PER_MAC
                assert by_mac[mac]["percent"] == float(PER_MAC - 1)
            assert by_mac[SHARED]["events"] == 2 * PER_MAC
            assert page["store"]["events"] == (len(MACS) + 2) * PER_MAC
            assert page["counts"]["running"] == len(MACS) + 1
        assert pages[0]["machines"] == pages[1]["machines"]
        # the machine file is seen by both, with its status
        assert pages[0]["machines"][0]["file"] == f"machines/{MACS[0]}.yaml"
        shared = [e["n"] for e in one.events(SHARED)]
        assert sorted(shared) == list(range(2 * PER_MAC))
        # a machine token made by one replica is good at the other (the shared secret)
        resp = requests.post(f"{two.url}/events/{MACS[1]}", json={"step": "result",
                                                                "status": "ok"},
                             headers={"Authorization": f"Bearer {one.machine_token(MACS[1])}"},
                             timeout=10)
        assert resp.status_code == 204
        assert one.wait_event(MACS[1], step="result", timeout=5)["status"] == "ok"
        one_mac = requests.get(f"{one.url}/api/machines/{MACS[1]}", timeout=10).json()
        assert one_mac["result"] == "ok" and len(one_mac["log"]) == PER_MAC + 1
    # a restart of both: everything is still there
    with ObservedServer(root, db=postgres.url) as again:
        page = requests.get(f"{again.url}/api/machines?state=ok", timeout=10).json()
        assert [m["mac"] for m in page["machines"]] == [MACS[1]]
        assert page["store"]["events"] == (len(MACS) + 2) * PER_MAC + 1


def test_database_down_is_503_and_recovers(root: Path, postgres: Any) -> None:
    with ObservedServer(root, db=postgres.url) as srv:
        auth = {"Authorization": f"Bearer {srv.machine_token(MACS[0])}"}
        url = f"{srv.url}/events/{MACS[0]}"
        assert requests.post(url, json={"step": "a"}, headers=auth, timeout=10).status_code == 204
        postgres.stop()
        try:
            resp = requests.post(url, json={"step": "b"}, headers=auth, timeout=30)
            assert resp.status_code == 503
            assert resp.headers["Retry-After"] == "1"
            assert resp.json()["error"].startswith("cannot store the event: ")
            assert "Traceback" not in resp.text
        finally:
            postgres.start()
        assert requests.post(url, json={"step": "c"}, headers=auth, timeout=30).status_code == 204
        assert [e["step"] for e in srv.events(MACS[0])] == ["a", "c"]
