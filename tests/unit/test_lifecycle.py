"""A machine's lifecycle on the server (issue #16, first step): states moved only by what the
machine reported, since when, with the evidence; the warning for an unconfirmed deployment."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import requests

from pyinit_build.cli import build_parser
from pyinit_server.lifecycle import CONFIRM_TIMEOUT, Lifecycle, advance, warning
from pyinit_server.status import Summary, fold
from tests.serverkit import ObservedServer

MAC = "52:54:00:5e:16:01"
FETCHED = {"step": "action", "status": "fetched", "action": "writeImage", "dry_run": False}
OK = {"step": "result", "status": "ok", "handoff": "kexec", "action": "writeImage"}
BOOTED = {"step": "firstboot", "status": "booted", "kernel": "6.1.0-57-cloud-amd64"}


def run(events: list[tuple[float, dict[str, Any]]]) -> list[str | None]:
    state: Lifecycle | None = None
    seen = []
    for now, event in events:
        state = advance(state, event, now)
        seen.append(state.state if state else None)
    return seen


def test_a_deployment_and_its_first_boot() -> None:
    assert run([(1.0, {"step": "rootfs", "status": "start"}), (2.0, FETCHED),
                (3.0, {"step": "provision", "status": "progress"}), (4.0, OK), (9.0, BOOTED)]) \
        == [None, "deploying", "deploying", "deployed", "booted"]
    state = None
    for now, ev in ((2.0, FETCHED), (4.0, OK), (9.0, BOOTED)):
        state = advance(state, ev, now)
    assert state == Lifecycle("booted", 9.0, "first boot confirmed by the target (kernel "
                              "6.1.0-57-cloud-amd64)", "deployed")


def test_a_first_boot_counts_only_after_a_deployment() -> None:
    assert advance(None, BOOTED, 1.0) is None
    deploying = advance(None, FETCHED, 1.0)
    assert advance(deploying, BOOTED, 2.0) == deploying
    failed = advance(deploying, {"step": "result", "status": "failed", "failed_step": "grow",
                                 "error": "resize2fs failed"}, 3.0)
    booted = advance(failed, BOOTED, 4.0)  # the written disk booted after a later step failed
    assert booted is not None and booted.state == "booted" and booted.previous == "failed"


def test_failures_dry_runs_and_captures() -> None:
    failed = {"step": "result", "status": "failed", "failed_step": "provision",
              "error": "sha256 mismatch\nsecond line"}
    assert run([(1.0, FETCHED), (2.0, failed)]) == ["deploying", "failed"]
    state = advance(advance(None, FETCHED, 1.0), failed, 2.0)
    assert state is not None and state.evidence == "provision: sha256 mismatch second line"
    assert run([(1.0, {**FETCHED, "dry_run": True}), (2.0, OK)]) == [None, None]
    booted = advance(advance(advance(None, FETCHED, 1.0), OK, 2.0), BOOTED, 3.0)
    capture = {**FETCHED, "action": "readImage"}
    assert advance(booted, capture, 4.0) == booted  # a capture moves no state
    assert advance(booted, OK, 5.0) == booted       # nor a result of a run that deployed none


def test_a_repeated_event_keeps_the_clock_and_a_late_deployment_warns() -> None:
    state = advance(None, FETCHED, 1.0)
    assert advance(state, FETCHED, 50.0) == state
    deployed = advance(state, OK, 100.0)
    assert warning(deployed, 100.0 + CONFIRM_TIMEOUT - 1) is None
    assert warning(deployed, 100.0 + CONFIRM_TIMEOUT + 120) == \
        "deployed 17 min ago and no first boot confirmed"
    assert warning(advance(deployed, BOOTED, 200.0), 1e9) is None


def test_stored_lifecycles_that_do_not_parse_are_none() -> None:
    assert Lifecycle.from_json({"state": "pwned", "since": 1}) is None
    assert Lifecycle.from_json("deployed") is None
    back = Lifecycle.from_json({"state": "deployed", "since": "x", "evidence": 5,
                                "previous": "nonsense"})
    assert back == Lifecycle("deployed", 0.0, "5", None)


def test_the_summary_carries_it_and_status_shows_it(tmp_path: Path) -> None:
    s = Summary(MAC)
    for now, ev in ((1.0, FETCHED), (2.0, OK)):
        fold(s, ev, now)
    assert s.lifecycle is not None and s.lifecycle["state"] == "deployed"
    fold(s, {"step": "rootfs", "status": "start"}, 3.0)  # the target's own boot is no new run
    assert s.lifecycle["state"] == "deployed"
    (tmp_path / "machines").mkdir()
    with ObservedServer(tmp_path, open_writes=True) as srv:
        for ev in (FETCHED, OK, BOOTED):
            assert requests.post(f"{srv.url}/events/{MAC}", json=ev, timeout=10).status_code \
                == 204
        one = requests.get(f"{srv.url}/api/machines/{MAC}", timeout=10).json()
        out = io.StringIO()
        args = build_parser().parse_args(["status", "--server", srv.url, MAC])
        assert args.func(args, out=out) == 0
    assert one["lifecycle"]["state"] == "booted" and one["lifecycle"]["previous"] == "deployed"
    assert one["lifecycle_warning"] is None
    [line] = [x for x in out.getvalue().splitlines() if x.startswith("state:")]
    assert line.startswith("state:    booted for ") and "first boot confirmed" in line


def test_a_first_boot_and_a_redeploy_move_the_state_not_the_run() -> None:
    """After the result, the target's confirmation and the operator's redeploy are no new run:
    the machine keeps its run's result (the dashboard would show a run that never ends)."""
    s = Summary(MAC)
    for now, ev in ((1.0, FETCHED), (2.0, OK), (3.0, BOOTED),
                    (4.0, {"step": "operator", "status": "redeploy"})):
        fold(s, ev, now)
    assert (s.result, s.phase, s.state, s.events, s.last_seen) == ("ok", "action", "fetched", 4,
                                                                  4.0)
    assert s.lifecycle is not None
    assert (s.lifecycle["state"], s.lifecycle["pending"]) == ("booted", "redeploy")
    fold(s, {"step": "rootfs", "status": "start"}, 5.0)  # the redeploy's boot: a new run
    assert (s.result, s.phase) == (None, "rootfs")


# --- deploy once -------------------------------------------------------------------------------

def test_deploy_once_boots_the_local_disk_until_a_redeploy_or_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "machines").mkdir()
    machine_file = tmp_path / "machines" / (MAC.replace(":", "-") + ".json")
    machine_file.write_text(json.dumps({"action": "writeImage", "sourceImage": "http://x/i.img",
                                        "destinationDevice": "/dev/vda"}))
    with ObservedServer(tmp_path) as srv:
        mine = {"Authorization": f"Bearer {srv.machine_token(MAC)}"}
        operator = {"Authorization": f"Bearer {srv.token}"}

        def ipxe() -> str:
            return requests.get(f"{srv.url}/{MAC}.ipxe", timeout=10).text

        def post(ev: dict[str, Any], headers: dict[str, str] = mine) -> int:
            return requests.post(f"{srv.url}/events/{MAC}", json=ev, headers=headers,
                                 timeout=10).status_code

        def redeploy(headers: dict[str, str]) -> requests.Response:
            return requests.post(f"{srv.url}/api/machines/{MAC}/redeploy", headers=headers,
                                 timeout=10)

        served = hashlib.sha256(requests.get(f"{srv.url}/{MAC}.bty", timeout=10).content)
        assert "kernel " in ipxe()                              # new: provision
        assert post({**FETCHED, "action_sha256": served.hexdigest()}) == 204
        assert redeploy(operator).status_code == 409            # mid-deployment: refused
        assert "deploying now" in redeploy(operator).json()["error"]
        assert post(OK) == 204
        script = ipxe()
        assert "sanboot --no-describe --drive 0x80" in script and "kernel " not in script
        assert post({"step": "operator", "status": "redeploy"}) == 400  # not a machine's word
        assert redeploy(mine).status_code == 403                # the operator's alone
        assert "kernel " not in ipxe()
        assert redeploy(operator).status_code == 200
        assert "kernel " in ipxe()                              # provisions again
        assert post({**FETCHED, "action_sha256": served.hexdigest()}) == 204
        assert post(OK) == 204
        assert "sanboot" in ipxe()
        machine_file.write_text(json.dumps({"action": "writeImage",
                                            "sourceImage": "http://x/other.img",
                                            "destinationDevice": "/dev/vda"}))
        assert "kernel " in ipxe()                              # a changed file: provision
        out = io.StringIO()
        args = build_parser().parse_args(["status", "--server", srv.url, MAC])
        assert args.func(args, out=out) == 0
        unknown = requests.post(f"{srv.url}/api/machines/52:54:00:00:00:99/redeploy",
                                headers=operator, timeout=10)
    assert unknown.status_code == 404
    assert "its PXE boots go to its local disk" in out.getvalue()


def test_clean_once_an_erased_machine_does_not_erase_again_at_its_next_boot() -> None:
    from pyinit_server.lifecycle import local_boot

    erase = {"step": "action", "status": "fetched", "action": "erase", "dry_run": False,
             "action_sha256": "a" * 64}
    done = {"step": "result", "status": "ok", "handoff": "poweroff", "action": "erase"}
    inspect = {"step": "result", "status": "ok", "handoff": "poweroff", "action": "inspect"}
    assert run([(1.0, erase), (2.0, done)]) == ["cleaning", "available"]
    cleaning = advance(None, erase, 1.0)
    available = advance(cleaning, done, 2.0)
    assert local_boot(cleaning, "a" * 64) is None  # mid-erase: nothing decided yet
    assert local_boot(available, "a" * 64) == "available since 2 with this machine file's action"
    assert local_boot(available, "b" * 64) is None  # a new machine file runs
    failed = advance(cleaning, {"step": "result", "status": "failed", "action": "erase",
                                "failed_step": "provision", "error": "erase: …"}, 2.0)
    assert failed is not None and failed.state == "failed"
    assert local_boot(failed, "a" * 64) is None  # a failed erase runs again
    assert run([(1.0, inspect)]) == ["inspected"]
