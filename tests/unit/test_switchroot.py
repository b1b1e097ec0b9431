"""pyinit.switchroot: switch_root's preconditions and its exec. Syscalls are monkeypatched:
nothing is moved or exec'd."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import switchroot, syscalls
from pyinit.errors import HandoffError

from .fakes import write

# ---- switch_root ---------------------------------------------------------------------------


@pytest.fixture
def pid1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(initramfs, new root, mounts file) with every precondition met."""
    monkeypatch.setattr(switchroot, "_is_pid1", lambda: True)
    initramfs = tmp_path / "initramfs"
    bb = write(initramfs, "/bin/busybox", "#!busybox")
    bb.chmod(0o755)
    (initramfs / "bin/switch_root").symlink_to("busybox")
    write(initramfs, "/init")
    root = tmp_path / "newroot"
    init = write(root, "/lib/systemd/systemd", b"\x7fELF-static")
    init.chmod(0o755)
    (root / "sbin").mkdir()
    (root / "sbin/init").symlink_to("/lib/systemd/systemd")
    mounts = write(tmp_path, "mounts", f"rootfs / rootfs rw 0 0\n/dev/vda2 {root} ext4 rw 0 0\n")
    return initramfs, root, mounts


def check(p: tuple[Path, Path, Path], init: str = "/sbin/init") -> str:
    initramfs, root, mounts = p
    return switchroot.check_switch_root(root, init, initramfs=initramfs,
                                        busybox=Path("/bin/busybox"), mounts_file=mounts)


def test_switch_root_preconditions_met(pid1: tuple[Path, Path, Path]) -> None:
    assert check(pid1) == "/sbin/init"


def test_switch_root_missing_init(pid1: tuple[Path, Path, Path]) -> None:
    with pytest.raises(HandoffError, match=r"^switch_root: init /sbin/nope not found in "):
        check(pid1, "/sbin/nope")


def test_switch_root_dangling_init(pid1: tuple[Path, Path, Path]) -> None:
    (pid1[1] / "lib/systemd/systemd").unlink()
    with pytest.raises(HandoffError, match=r"init /sbin/init in .* is a dangling symlink "
                                           r"\(-> /lib/systemd/systemd, not there\)"):
        check(pid1)


def test_switch_root_init_not_executable(pid1: tuple[Path, Path, Path]) -> None:
    (pid1[1] / "lib/systemd/systemd").chmod(0o644)
    with pytest.raises(HandoffError, match="is not executable"):
        check(pid1)


def test_switch_root_script_interpreter_missing(pid1: tuple[Path, Path, Path]) -> None:
    app = write(pid1[1], "/app/run", "#!/bin/sh\nexec app\n")
    app.chmod(0o755)
    with pytest.raises(HandoffError, match="interpreter of /app/run: /bin/sh not found"):
        check(pid1, "/app/run")


def test_switch_root_bare_name_searched_in_path(pid1: tuple[Path, Path, Path]) -> None:
    app = write(pid1[1], "/usr/bin/app", b"static")
    app.chmod(0o755)
    assert check(pid1, "app") == "/usr/bin/app"


def test_switch_root_root_not_a_mount_point(pid1: tuple[Path, Path, Path]) -> None:
    pid1[2].write_text("rootfs / rootfs rw 0 0\n")
    with pytest.raises(HandoffError, match="is not a mount point"):
        check(pid1)


def test_switch_root_not_pid1(pid1: tuple[Path, Path, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switchroot, "_is_pid1", lambda: False)
    with pytest.raises(HandoffError, match="only PID 1"):
        check(pid1)


def test_switch_root_refuses_a_non_initramfs_root(pid1: tuple[Path, Path, Path]) -> None:
    pid1[2].write_text(f"/dev/sda1 / ext4 rw 0 0\n/dev/vda2 {pid1[1]} ext4 rw 0 0\n")
    with pytest.raises(HandoffError, match="not the initramfs"):
        check(pid1)


def test_switch_root_execs_busybox_with_clean_env(pid1: tuple[Path, Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    initramfs, root, mounts = pid1
    seen: list[Any] = []
    monkeypatch.setattr(switchroot, "_is_mount", lambda p: str(p) in (
        "/dev", "/proc", "/sys", "/run", str(root / "proc")))
    monkeypatch.setattr(syscalls, "mount", lambda *a: seen.append(("mount", *a[:2], a[3])))

    def execve(path: Any, argv: list[str], env: dict[str, str]) -> None:
        seen.append(("execve", str(path), argv, env))
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib/pyinit/_internal")
    with pytest.raises(HandoffError, match="switch_root: exec /bin/busybox"):
        switchroot.switch_root(root, "/sbin/init", ["--log-level=info"], initramfs=initramfs,
                               mounts_file=mounts)
    move = syscalls.MS_MOVE
    assert seen[:3] == [("mount", "/dev", str(root / "dev"), move),
                        ("mount", "/sys", str(root / "sys"), move),
                        ("mount", "/run", str(root / "run"), move)]  # /proc: already bound
    _, path, argv, env = seen[3]
    assert (path, argv) == ("/bin/busybox", ["/bin/busybox", "switch_root", str(root),
                                             "/sbin/init", "--log-level=info"])
    assert "LD_LIBRARY_PATH" not in env
    assert seen[4:] == [("mount", str(root / "run"), "/run", move),  # rolled back in reverse
                        ("mount", str(root / "sys"), "/sys", move),
                        ("mount", str(root / "dev"), "/dev", move)]
