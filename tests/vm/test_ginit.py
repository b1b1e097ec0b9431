"""ginit mode in a real kernel: root= (by LABEL) is mounted and entrypoint= (with a quoted
argument) runs inside it on the console; then the policy applies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pyinit import proc

from .conftest import NEVER, Artifacts, boot

pytestmark = pytest.mark.vm

SCRIPT = """#!/bin/busybox sh
echo "ENTRYPOINT argc=$# first=[$1] marker=$(cat /marker) pid=$$"
"""


def make_root_disk(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, tree / "bin" / "busybox")
    (tree / "hello.sh").write_text(SCRIPT)
    (tree / "hello.sh").chmod(0o755)
    (tree / "marker").write_text("inside-the-root\n")
    for d in ("proc", "sys", "dev", "tmp"):
        (tree / d).mkdir()
    disk = tmp_path / "root.ext4"
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "ginit-root", "-d", str(tree), str(disk),
              "32M"])
    return disk


def test_ginit_runs_the_entrypoint_inside_root(artifacts: Artifacts, tmp_path: Path) -> None:
    disk = make_root_disk(tmp_path)
    append = "root=LABEL=ginit-root entrypoint=\"/bin/busybox sh /hello.sh 'two words' x\""
    with boot(artifacts, tmp_path, append, mac="52:54:00:00:03:01", disks=[disk]) as vm:
        vm.expect_event(step="entrypoint", status="start", timeout=120)
        m = vm.expect(r"ENTRYPOINT argc=(\d+) first=\[(.*)\] marker=(\S+)", timeout=60)
        vm.expect_event(step="entrypoint", status="ok", timeout=30)
        result = vm.expect_event(step="result", status="ok", timeout=30)
        assert vm.wait_exit(timeout=60) == 0
        vm.assert_never(*NEVER)
    assert m.groups() == ("2", "two words", "inside-the-root")
    assert result["entrypoint_rc"] == 0
    # network was not asked for, so it was skipped rather than waited on
    assert not any(e.get("step") == "network" and e.get("status") == "failed" for e in vm.events)


def test_ginit_exec_makes_the_entrypoint_pid_1(artifacts: Artifacts, tmp_path: Path) -> None:
    """pyinit.exec=1: the entrypoint replaces pyinit as PID 1 (switch_root), the way a container
    image booted as a VM runs its own init."""
    disk = make_root_disk(tmp_path)
    script = "#!/bin/busybox sh\necho \"EXEC-INIT pid=$$ argv=$*\"\n/bin/busybox poweroff -f\n"
    staged = tmp_path / "tree" / "init.sh"
    staged.write_text(script)
    staged.chmod(0o755)
    proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "ginit-root", "-d",
              str(tmp_path / "tree"), str(disk), "32M"])
    append = "root=LABEL=ginit-root entrypoint=\"/init.sh one two\" pyinit.exec=1"
    with boot(artifacts, tmp_path, append, mac="52:54:00:00:03:02", disks=[disk]) as vm:
        result = vm.expect_event(step="result", status="ok", timeout=120)
        m = vm.expect(r"EXEC-INIT pid=(\d+) argv=(.*)", timeout=60)
        vm.wait_exit(timeout=60)
        vm.assert_never(*NEVER)
    assert result["handoff"] == "exec"
    assert m.groups() == ("1", "one two")
