"""The first-boot one-shot (pyinit.firstboot) run for real against a real server: with curl,
with GNU wget, with busybox alone (its sh and its wget, as a busybox target has them) and with
bash alone (/dev/tcp), each under the machine's token;
then the server's lifecycle says ``booted``. It removes itself and its unit either way, and an
unreachable server costs it a bounded time and never an error exit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from pyinit import firstboot
from tests import hostreq
from tests.serverkit import ObservedServer

pytestmark = pytest.mark.integration
MAC = "52:54:00:5e:16:02"
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
    [ev] = [e for e in events if e.get("step") == "firstboot"]
    assert ev["status"] == "booted" and ev["kernel"] == os.uname().release
    assert isinstance(ev["uptime"], float) and ev["hostname"]
    assert state["state"] == "booted"
    for rel in (firstboot.SCRIPT, firstboot.UNIT, firstboot.WANTS):
        assert not os.path.lexists(root / rel), rel


def test_a_wrong_token_and_an_unreachable_server_give_up_cleanly(tmp_path: Path) -> None:
    hostreq.need("curl")
    (tmp_path / "srv" / "machines").mkdir(parents=True)
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/rc.local").write_text(f"#!/bin/sh\n{firstboot.RC_LOCAL_LINE}\nexit 0\n")
    with ObservedServer(tmp_path / "srv") as srv:
        url = f"{srv.url}/events/{MAC.replace(':', '-')}"
        plan = firstboot.plan(systemd=False, rcs=False, rc_local=True, url=url,
                              token="m1.not-the-token")
        one = root / firstboot.SCRIPT
        one.parent.mkdir(parents=True)
        one.write_text(firstboot.script(url, "m1.not-the-token", attempts=2))
        done = subprocess.run(["sh", str(one)], env={"PATH": toolbox(tmp_path, "curl"),
                                                     "PYINIT_FIRSTBOOT_ROOT": str(root)},
                              capture_output=True, text=True, timeout=120)
        assert srv.events(MAC) == []  # refused: another machine's word is not taken
    assert plan.method == "rc.local" and plan.rc_local
    assert done.returncode == 0 and "giving up" in done.stderr
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
