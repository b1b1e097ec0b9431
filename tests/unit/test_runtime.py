"""The step runner, early rootfs as data, ginit's root= resolution, the event line format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyinit import init, log, rootfs
from pyinit.cmdline import parse_cmdline
from pyinit.errors import ConfigError, DiskError, MountError
from pyinit.ginit import find_device, parse_blkid

from ..conftest import Recorder


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    log.clear_sinks()
    log.add_sink(seen.append)
    yield seen
    log.clear_sinks()


def test_steps_run_in_order_and_emit_events(events: list[dict[str, Any]]) -> None:
    order: list[str] = []
    steps = (("a", lambda ctx: order.append("a")), ("b", lambda ctx: order.append("b")))
    init.run_steps(init.Context(), steps)
    assert order == ["a", "b"]
    assert [(e["step"], e["status"]) for e in events] == [
        ("a", "start"), ("a", "ok"), ("b", "start"), ("b", "ok")]
    assert all(isinstance(e["elapsed"], float) for e in events if e["status"] == "ok")


def test_a_failing_step_stops_the_table_with_one_line(events: list[dict[str, Any]]) -> None:
    def bad(ctx: init.Context) -> None:
        raise DiskError("/dev/sdz", "does not exist")

    ran: list[str] = []
    steps = (("a", bad), ("b", lambda ctx: ran.append("b")))
    with pytest.raises(init.StepFailed) as info:
        init.run_steps(init.Context(), steps)
    assert info.value.step == "a"
    assert ran == []
    failed = events[-1]
    assert failed["status"] == "failed"
    assert failed["error"] == "disk /dev/sdz: does not exist"
    assert failed["kind"] == "DiskError"


def test_break_opens_a_shell_before_the_step(events: list[dict[str, Any]],
                                             recorder: Recorder, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shell = tmp_path / "sh"
    shell.write_text("")
    monkeypatch.setattr("pyinit.policy.SHELL", str(shell))
    ctx = init.Context(params=parse_cmdline("pyinit.break=b"))
    init.run_steps(ctx, (("a", lambda c: None), ("b", lambda c: None)))
    assert recorder.calls == [["setsid", "-c", str(shell), "-l"]]
    assert ("b", "break") in [(e["step"], e["status"]) for e in events]


def test_bugs_are_reported_with_their_type() -> None:
    assert init.one_line(KeyError("x")) == "KeyError: 'x'"
    assert init.one_line(ConfigError("ip", "bad netmask")) == "ip: bad netmask"


def test_event_line_is_json_after_a_fixed_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure(console=__import__("sys").stdout)
    log.event("network", "ok", elapsed=1.5, mac="52:54:00:12:34:56")
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "PYINIT-EVENT" in ln)
    assert line.startswith("PYINIT-EVENT {")
    ev = json.loads(line.removeprefix("PYINIT-EVENT "))
    assert ev["step"] == "network" and ev["mac"] == "52:54:00:12:34:56"
    assert log.parse_event("vm: " + line) == ev
    assert log.parse_event("PYINIT-EVENT {broken") is None
    # a kernel console message after the JSON (before the newline) leaves the event readable
    assert log.parse_event(line + "[   15.655886] sd 3:0:0:0: [sdb] 65536 blocks") == ev
    assert log.find_event(line + "[ 1.0] x") == (ev, len(line))


def test_rootfs_apply_is_idempotent(tmp_path: Path) -> None:
    mounted: list[tuple[str, str]] = []
    mounts = tmp_path / "mounts"
    mounts.write_text("")

    def fake_mount(src: str, target: str, fstype: str | None, flags: int,
                   data: str | None) -> None:
        mounted.append((fstype or "", target))
        with mounts.open("a") as f:
            f.write(f"{src} {target} {fstype} rw 0 0\n")

    ops = (rootfs.Dir("/proc"), rootfs.Mount("proc", "/proc", "proc"),
           rootfs.Symlink("/dev/fd", "/proc/self/fd"), rootfs.Dir("/tmp", 0o1777))
    first = rootfs.apply(ops, root=tmp_path, mount=fake_mount, mounts_file=mounts)
    second = rootfs.apply(ops, root=tmp_path, mount=fake_mount, mounts_file=mounts)
    assert first == ["mkdir -p -m 755 /proc", "mount -t proc proc /proc",
                     "ln -s /proc/self/fd /dev/fd", "mkdir -p -m 1777 /tmp"]
    assert second == []
    assert mounted == [("proc", str(tmp_path / "proc"))]
    assert (tmp_path / "dev" / "fd").is_symlink()
    assert (tmp_path / "tmp").stat().st_mode & 0o1777 == 0o1777


def test_rootfs_mount_failure_names_the_shell_equivalent(tmp_path: Path) -> None:
    def failing(*_: Any) -> None:
        raise OSError(19, "No such device")

    mounts = tmp_path / "mounts"
    mounts.write_text("")
    with pytest.raises(MountError, match="mount -t devtmpfs devtmpfs /dev"):
        rootfs.apply((rootfs.Mount("devtmpfs", "/dev", "devtmpfs"),), root=tmp_path,
                     mount=failing, mounts_file=mounts)


def test_early_table_mounts_the_essentials() -> None:
    shells = [op.shell() for op in rootfs.EARLY]
    for needed in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys",
                   "mount -t devtmpfs -o mode=0755 devtmpfs /dev",
                   "mknod -m 600 /dev/console c 5 1", "mknod -m 666 /dev/null c 1 3"):
        assert needed in shells


BLKID = """/dev/vda: LABEL="ginit-root" UUID="8d6f7c2e-1111-4c3b-9c55-0a1b2c3d4e5f" \
BLOCK_SIZE="4096" TYPE="ext4"
/dev/vdb1: UUID="ABCD-1234" TYPE="vfat" PARTUUID="5079696e-01"
"""


def test_root_specs_resolve_through_blkid() -> None:
    table = parse_blkid(BLKID)
    assert table["/dev/vda"]["TYPE"] == "ext4"
    assert find_device("LABEL=ginit-root", table) == "/dev/vda"
    assert find_device("UUID=8D6F7C2E-1111-4C3B-9C55-0A1B2C3D4E5F", table) == "/dev/vda"
    assert find_device("PARTUUID=5079696e-01", table) == "/dev/vdb1"
    assert find_device("LABEL=nope", table) is None
    assert find_device("/dev/sda2", table) == "/dev/sda2"
    with pytest.raises(ConfigError, match="unsupported form"):
        find_device("ZFS=tank/root", table)
