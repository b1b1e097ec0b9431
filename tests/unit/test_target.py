"""mounted_target: what it mounts, in which order, and that everything is unmounted in reverse
order on every way out (body raising, an unmount failing, a mount failing half way).

syscalls.mount/umount are fakes that record; blkid is answered by the recorder; the target is a
directory tree in tmp_path.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc, syscalls, target
from pyinit.errors import MountError

from ..conftest import Recorder

BIND = syscalls.MS_BIND | syscalls.MS_REC
RSLAVE = syscalls.MS_SLAVE | syscalls.MS_REC
DETACH = syscalls.MNT_DETACH


class Fake:
    def __init__(self, *, fail_mount: str | None = None,
                 fail_umount: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_mount = fail_mount
        self.fail_umount = fail_umount

    def mount(self, source: str, dest: str, fstype: str | None, flags: int = 0,
              data: str | None = None) -> None:
        if dest == self.fail_mount:
            raise OSError(errno.ENOENT, "No such file or directory")
        self.calls.append(("mount", source, dest, fstype, flags))

    def umount(self, dest: str, flags: int = 0) -> None:
        self.calls.append(("umount", dest, flags))
        if dest in self.fail_umount:
            raise OSError(errno.EBUSY, "Device or resource busy")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target with /dev, /proc, /sys, /run and a regular /etc/resolv.conf."""
    r = tmp_path / "newroot"
    for d in ("dev", "proc", "sys", "run", "etc"):
        (r / d).mkdir(parents=True)
    (r / "etc" / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    return r


@pytest.fixture
def host_resolv(tmp_path: Path) -> Path:
    p = tmp_path / "host-resolv.conf"
    p.write_text("nameserver 10.0.0.1\n")
    return p


def use(monkeypatch: pytest.MonkeyPatch, fake: Fake) -> Fake:
    monkeypatch.setattr(syscalls, "mount", fake.mount)
    monkeypatch.setattr(syscalls, "umount", fake.umount)
    return fake


def loader() -> tuple[list[list[str]], Any]:
    loaded: list[list[str]] = []
    return loaded, lambda names: loaded.append(list(names))


def test_mounts_binds_and_unmounts_in_reverse(monkeypatch: pytest.MonkeyPatch, root: Path,
                                              host_resolv: Path, tmp_path: Path) -> None:
    fake = use(monkeypatch, Fake())
    mods = tmp_path / "modules"
    mods.mkdir()
    (mods / "modules.alias").write_text("alias fs-ext3 ext4\nalias fs-ext4 ext4\n")
    loaded, load = loader()
    with target.mounted_target("/dev/vda3", root, fstype="ext3", resolv_conf=host_resolv,
                               load=load, modules_dir=mods) as t:
        assert (t.root, t.device, t.fstype, t.read_only) == (root, "/dev/vda3", "ext3", False)
        inside = list(fake.calls)
    assert loaded == [["ext4"]]
    assert inside == [
        ("mount", "/dev/vda3", str(root), "ext3", 0),
        ("mount", "/dev", str(root / "dev"), None, BIND),
        ("mount", "none", str(root / "dev"), None, RSLAVE),
        ("mount", "/proc", str(root / "proc"), None, BIND),
        ("mount", "none", str(root / "proc"), None, RSLAVE),
        ("mount", "/sys", str(root / "sys"), None, BIND),
        ("mount", "none", str(root / "sys"), None, RSLAVE),
        ("mount", "/run", str(root / "run"), None, BIND),
        ("mount", "none", str(root / "run"), None, RSLAVE),
        ("mount", str(host_resolv), str(root / "etc" / "resolv.conf"), None, syscalls.MS_BIND),
    ]
    assert fake.calls[len(inside):] == [
        ("umount", str(root / "etc" / "resolv.conf"), 0),
        ("umount", str(root / "run"), DETACH), ("umount", str(root / "sys"), DETACH),
        ("umount", str(root / "proc"), DETACH), ("umount", str(root / "dev"), DETACH),
        ("umount", str(root), 0)]


def test_body_error_wins_and_everything_is_unmounted(monkeypatch: pytest.MonkeyPatch,
                                                     root: Path) -> None:
    fake = use(monkeypatch, Fake(fail_umount=(str(root / "proc"),)))
    with pytest.raises(RuntimeError, match="body failed"), \
            target.mounted_target("/dev/vda3", root, fstype="ext4", resolv_conf=None,
                                  load=lambda n: None, binds=("/dev", "/proc", "/sys")):
        raise RuntimeError("body failed")
    assert [c[1] for c in fake.calls if c[0] == "umount"] == [
        str(root / "sys"), str(root / "proc"), str(root / "dev"), str(root)]


def test_first_unmount_failure_is_raised_after_unwinding(monkeypatch: pytest.MonkeyPatch,
                                                         root: Path) -> None:
    fake = use(monkeypatch, Fake(fail_umount=(str(root / "sys"), str(root))))
    with pytest.raises(MountError) as info, \
            target.mounted_target("/dev/vda3", root, fstype="ext4", resolv_conf=None,
                                  load=lambda n: None, binds=("/dev", "/sys")):
        pass
    assert str(info.value) == f"mount {root / 'sys'}: umount: Device or resource busy"
    assert [c[1] for c in fake.calls if c[0] == "umount"] == [
        str(root / "sys"), str(root / "dev"), str(root)]


def test_a_failing_mount_unwinds_what_was_mounted(monkeypatch: pytest.MonkeyPatch,
                                                  root: Path) -> None:
    fake = use(monkeypatch, Fake(fail_mount=str(root / "sys")))
    with pytest.raises(MountError) as info, \
            target.mounted_target("/dev/vda3", root, fstype="xfs", resolv_conf=None,
                                  load=lambda n: None):
        pytest.fail("the body must not run")
    assert str(info.value) == (f"mount {root / 'sys'}: mount -o rbind /sys {root / 'sys'}: "
                               "No such file or directory")
    assert fake.calls[-3:] == [("umount", str(root / "proc"), DETACH),
                               ("umount", str(root / "dev"), DETACH), ("umount", str(root), 0)]


def test_missing_directories_and_a_symlinked_resolv_conf_are_left_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, host_resolv: Path) -> None:
    root = tmp_path / "newroot"
    (root / "dev").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "run").symlink_to("/run")  # never follow a target's link onto the host
    (root / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    fake = use(monkeypatch, Fake())
    with target.mounted_target("/dev/vda3", root, fstype="ext4", resolv_conf=host_resolv,
                               load=lambda n: None):
        pass
    assert [c[1:3] for c in fake.calls if c[0] == "mount"] == [
        ("/dev/vda3", str(root)), ("/dev", str(root / "dev")), ("none", str(root / "dev"))]
    assert (root / "etc" / "resolv.conf").is_symlink()
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["resolv.conf"]


def test_read_only_and_type_from_blkid(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                       root: Path) -> None:
    recorder.responses["blkid"] = proc.Completed(
        (), 0, '/dev/mapper/vg0-root: UUID="u" BLOCK_SIZE="512" TYPE="xfs"\n', "")
    fake = use(monkeypatch, Fake())
    loaded, load = loader()
    with target.mounted_target("/dev/mapper/vg0-root", root, binds=(), resolv_conf=None,
                               read_only=True, load=load, modules_dir=root) as t:
        assert (t.fstype, t.read_only) == ("xfs", True)
    assert recorder.calls == [["blkid", "-c", "/dev/null", "/dev/mapper/vg0-root"]]
    assert loaded == [["xfs"]]
    assert fake.calls == [("mount", "/dev/mapper/vg0-root", str(root), "xfs", syscalls.MS_RDONLY),
                          ("umount", str(root), 0)]


def test_unknown_filesystem_type(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                 root: Path) -> None:
    recorder.responses["blkid"] = proc.Completed((), 2, "", "")
    fake = use(monkeypatch, Fake())
    with pytest.raises(MountError, match="cannot tell the filesystem type of /dev/vda9"), \
            target.mounted_target("/dev/vda9", root, load=lambda n: None):
        pass
    assert fake.calls == []
