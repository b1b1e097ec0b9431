"""The first-boot one-shot (pyinit.firstboot) run for real against a real server: with curl,
with GNU wget, with busybox alone (its sh and its wget, as a busybox target has them) and with
bash alone (/dev/tcp), each under the machine's token;
then the server's lifecycle says ``booted``. It removes itself and its unit either way, and an
unreachable server costs it a bounded time and never an error exit: the rows of
docs/bad-inputs.md's first-boot table (FB1-FB4), each with the one line it prints."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from pyinit import firstboot
from tests import hostreq
from tests.serverkit import ObservedServer

pytestmark = pytest.mark.integration
MAC = "52:54:00:5e:16:02"
DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
TEST_FILE = "tests/integration/test_firstboot.py"
TOOLS = ("sh", "uname", "hostname", "cat", "cut", "sed", "rm", "sleep")


def toolbox(tmp_path: Path, *extra: str, busybox: bool = False) -> str:
    """A PATH with only the basic tools and ``extra`` (so curl/wget cannot be picked up); with
    ``busybox``, each of them busybox's applet."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in (*TOOLS, *extra):
        found = "/bin/busybox" if busybox else shutil.which(tool)
        assert found, tool
        (bindir / tool).unlink(missing_ok=True)
        (bindir / tool).symlink_to(found)
    return str(bindir)


def install(root: Path, url: str, token: str | None) -> Path:
    plan = firstboot.plan(systemd=True, rcs=False, rc_local=False, url=url, token=token)
    for rel, (text, mode) in plan.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    for rel, target in plan.symlinks.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root / firstboot.SCRIPT


def deployed(url: str, token: str) -> None:
    """What pyinit posts when it deploys: the run's start and its result."""
    for ev in ({"step": "action", "status": "fetched", "action": "writeImage", "dry_run": False},
               {"step": "result", "status": "ok", "handoff": "reboot"}):
        assert requests.post(url, json=ev, headers={"Authorization": f"Bearer {token}"},
                             timeout=10).status_code == 204


# busybox: Debian's busybox-static, whose wget has no -T (and dies of SIGSEGV when given one:
# the one-shot asks wget --help first); its sh runs the script too.
@pytest.mark.parametrize("client", ["curl", "wget", "busybox", "bash"])
def test_the_one_shot_confirms_and_removes_itself(tmp_path: Path, client: str) -> None:
    hostreq.need("curl", "wget", "bash", "busybox")
    (tmp_path / "srv" / "machines").mkdir(parents=True)
    root = tmp_path / "target"
    with ObservedServer(tmp_path / "srv") as srv:  # writes need the machine's token
        url = f"{srv.url}/events/{MAC.replace(':', '-')}"
        deployed(url, srv.machine_token(MAC))
        one = install(root, url, srv.machine_token(MAC))
        path = toolbox(tmp_path, "wget", busybox=True) if client == "busybox" \
            else toolbox(tmp_path, client)
        done = subprocess.run(["sh", str(one)], env={"PATH": path,
                                                     "PYINIT_FIRSTBOOT_ROOT": str(root)},
                              capture_output=True, text=True, timeout=120)
        events = srv.events(MAC)
        state = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=10).json()["lifecycle"]
    assert done.returncode == 0, done.stderr
    assert "told" in done.stdout and "booted" in done.stdout, (done.stdout, done.stderr)
    if client == "busybox":  # docs/bad-inputs.md FB4: Debian's busybox wget, no -T
        said = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", done.stdout.strip())
        assert said == doc_line("FB4"), done.stdout
    [ev] = [e for e in events if e.get("step") == "firstboot"]
    assert ev["status"] == "booted" and ev["kernel"] == os.uname().release
    assert isinstance(ev["uptime"], float) and ev["hostname"]
    assert state["state"] == "booted"
    for rel in (firstboot.SCRIPT, firstboot.UNIT, firstboot.WANTS):
        assert not os.path.lexists(root / rel), rel


# ---- docs/bad-inputs.md, the first-boot one-shot -------------------------------------------

# row id -> the test that proves it (FB4 is a case of the confirmation test above)
FB_TESTS = {"FB1": "test_bad_input[FB1]", "FB2": "test_bad_input[FB2]",
            "FB3": "test_bad_input[FB3]",
            "FB4": "test_the_one_shot_confirms_and_removes_itself[busybox]"}


def doc_fb_rows() -> dict[str, list[str]]:
    """Row id -> the cells of the first-boot table of docs/bad-inputs.md."""
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(FB\d+)\s*\|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|",
                                                             line.strip().strip("|"))]
    return rows


def doc_line(row: str) -> str:
    [line] = re.findall(r"`([^`]*)`", doc_fb_rows()[row][2])
    return line


def test_doc_and_tests_agree() -> None:
    rows = doc_fb_rows()
    assert sorted(rows) == sorted(FB_TESTS)
    for row, cells in rows.items():
        assert cells[-1] == f"`{TEST_FILE}::{FB_TESTS[row]}`", row


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("row", ["FB1", "FB2", "FB3"])
def test_bad_input(tmp_path: Path, row: str) -> None:
    """The one-shot gives up with one line of its own (after the client's, if it has one), in
    bounded time (2 tries here; 10 on a machine), exits 0 and removes itself and its rc.local
    line; the server, deployed, took nothing."""
    hostreq.need("curl")
    (tmp_path / "srv" / "machines").mkdir(parents=True)
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/rc.local").write_text(f"#!/bin/sh\n{firstboot.RC_LOCAL_LINE}\nexit 0\n")
    with ObservedServer(tmp_path / "srv") as srv:
        deployed(f"{srv.url}/events/{MAC.replace(':', '-')}", srv.machine_token(MAC))
        base = f"http://127.0.0.1:{closed_port()}" if row == "FB2" else srv.url
        url = f"{base}/events/{MAC.replace(':', '-')}"
        token = "m1.not-the-token" if row == "FB1" else srv.machine_token(MAC)
        plan = firstboot.plan(systemd=False, rcs=False, rc_local=True, url=url, token=token)
        one = root / firstboot.SCRIPT
        one.parent.mkdir(parents=True)
        one.write_text(firstboot.script(url, token, attempts=2))
        path = toolbox(tmp_path) if row == "FB3" else toolbox(tmp_path, "curl")
        done = subprocess.run(["sh", str(one)], env={"PATH": path,
                                                     "PYINIT_FIRSTBOOT_ROOT": str(root)},
                              capture_output=True, text=True, timeout=120)
        firstboots = [e for e in srv.events(MAC) if e.get("step") == "firstboot"]
        state = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=10).json()["lifecycle"]
    assert plan.method == "rc.local" and plan.rc_local
    assert done.returncode == 0 and done.stdout == "", done
    ours = [line for line in done.stderr.splitlines() if line.startswith("pyinit-firstboot")]
    assert len(ours) == 1, done.stderr  # one line of its own, whatever the client said
    assert re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", ours[0]) == doc_line(row)
    if row == "FB3":
        assert done.stderr.splitlines() == ours  # said once: no retry, nothing else
    assert firstboots == [] and state["state"] == "deployed"  # no other machine's word taken
    assert not one.exists()
    assert (root / "etc/rc.local").read_text() == "#!/bin/sh\nexit 0\n"


def test_a_url_a_shell_must_not_carry_is_refused() -> None:
    with pytest.raises(firstboot.FirstBootError, match="server URL"):
        firstboot.script("http://10.0.2.2/events/x'; rm -rf /; '", None)
    with pytest.raises(firstboot.FirstBootError, match="token"):
        firstboot.script("http://10.0.2.2/events/x", "m1.a'b")
    assert firstboot.plan(systemd=False, rcs=False, rc_local=False, url="http://x/e",
                          token=None).method is None


def test_a_confirmation_without_a_deployment_moves_nothing_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "srv" / "machines").mkdir(parents=True)
    with ObservedServer(tmp_path / "srv") as srv:
        url = f"{srv.url}/events/{MAC.replace(':', '-')}"
        mine = {"Authorization": f"Bearer {srv.machine_token(MAC)}"}
        assert requests.post(url, json={"step": "firstboot", "status": "booted",
                                        "kernel": "6.1"}, headers=mine,
                             timeout=10).status_code == 204
        one = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=10).json()
    assert one["lifecycle"] is None  # kept as an event, no state claimed
    assert any("a first-boot confirmation without a deployment on record (no state)" in
               r.getMessage() for r in caplog.records if r.levelname == "WARNING")
