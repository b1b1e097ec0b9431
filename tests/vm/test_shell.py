"""The interactive paths on a real console: pyinit.break opens a shell before a step and `exit`
resumes the boot; the shell failure policy gives a working shell (controlling tty, busybox) and
`poweroff` typed there is honoured by PID 1 (busybox signals init, pyinit syncs and powers off)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import NEVER, Artifacts, Server, blank_disk, boot

pytestmark = pytest.mark.vm


def test_break_then_shell_policy_then_poweroff(artifacts: Artifacts, server: Server,
                                               tmp_path: Path) -> None:
    mac = "52:54:00:00:04:01"  # unknown to the server: the action step will fail
    disk = blank_disk(tmp_path / "disk.raw", 16 << 20)
    append = f"MYURL={server.guest_url} pyinit.break=action"
    with boot(artifacts, tmp_path, append, mac=mac, disks=[disk], policy="shell") as vm:
        vm.expect_event(step="action", status="break", timeout=120)
        vm.expect(r"starting a shell \(pyinit.break=action\)", timeout=30)
        vm.send("echo ppid=$PPID tty=$(tty)\n")
        m = vm.expect(r"ppid=(\d+) tty=(\S+)", timeout=30)
        vm.send("exit\n")
        vm.expect_event(step="action", status="start", timeout=30)
        vm.expect_event(step="result", status="failed", timeout=30)
        vm.expect(r"starting a shell \(action failed\)", timeout=30)
        vm.send("poweroff\n")
        vm.expect(r"pyinit: poweroff now", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert m.group(1) == "1"  # the shell is pyinit's child
    assert m.group(2) in ("/dev/console", "/dev/ttyS0")  # with the console as its terminal
