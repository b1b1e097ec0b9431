"""ginit's root device: LVM activation, dm-N names, filesystem modules, the not-found message.

blkid and lvm are answered by the recorder; /dev and /sys are trees in tmp_path (plain files stand
in for device nodes: only their existence matters here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pyinit import ginit, lvm, proc
from pyinit.errors import CommandError, ConfigError, MountError
from tests.unit.fakes import FakeClock

from ..conftest import Recorder

LVM = "/usr/sbin/lvm"
BLKID = ["blkid", "-c", "/dev/null"]
ACTIVATE = [LVM, "vgchange", "--sysinit", "--activate", "ay", "--config", lvm.LVM_CONFIG]
ROOT_UUID = "0f3c1d52-7a0e-4b7e-9d0a-6f1e2d3c4b5a"

DISK = """/dev/vda1: PARTUUID="aa-01"
/dev/vda2: UUID="Hx3kPq-1111-2222-3333-4444-5555-666666" TYPE="LVM2_member" PARTUUID="aa-02"
"""
ACTIVE = DISK + f'/dev/mapper/vg0-root: UUID="{ROOT_UUID}" BLOCK_SIZE="512" TYPE="xfs"\n'
VGCHANGE = '  1 logical volume(s) in volume group "vg0" now active\n'


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(dev, sysfs): vda, vda1, vda2 and the devtmpfs node dm-0 for vg0-root."""
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    dev.mkdir()
    for name in ("vda", "vda1", "vda2"):
        (dev / name).write_text("")
    return dev, sysfs


def add_dm(dev: Path, sysfs: Path, kernel: str, name: str, *, mapper: bool = True) -> None:
    """What activating one LV leaves behind: sysfs dm/name, the devtmpfs node, libdm's node and
    lvm's /dev/<vg>/<lv> link."""
    (sysfs / "block" / kernel / "dm").mkdir(parents=True)
    (sysfs / "block" / kernel / "dm" / "name").write_text(name + "\n")
    (dev / kernel).write_text("")
    if mapper:
        (dev / "mapper").mkdir(exist_ok=True)
        (dev / "mapper" / name).write_text("")
        vg, lv = name.split("-", 1)
        (dev / vg).mkdir(exist_ok=True)
        (dev / vg / lv).symlink_to(f"../mapper/{name}")


def answers(*outputs: str) -> Callable[[list[str]], proc.Completed]:
    """A recorder response giving ``outputs`` in turn (the last one repeats)."""
    queue = list(outputs)

    def answer(argv: list[str]) -> proc.Completed:
        text = queue.pop(0) if len(queue) > 1 else queue[0]
        return proc.Completed(tuple(argv), 0, text, "")
    return answer


def resolve(spec: str, roots: tuple[Path, Path], *, lvm_binary: str | None = LVM,
            loaded: list[list[str]] | None = None, timeout: float = 20.0
            ) -> tuple[str, str | None]:
    dev, sysfs = roots
    clock = FakeClock()
    return ginit.resolve_root(spec, timeout, clock=clock, sleep=clock.sleep,
                              lvm_binary=lvm_binary, sysfs=sysfs, dev=dev,
                              load=lambda names: (loaded if loaded is not None else []).append(
                                  list(names)))


# ---- activation ------------------------------------------------------------------------------


def test_lvm_root_is_activated_then_found_by_uuid(recorder: Recorder,
                                                  roots: tuple[Path, Path]) -> None:
    dev, sysfs = roots

    def vgchange(argv: list[str]) -> proc.Completed:
        add_dm(dev, sysfs, "dm-0", "vg0-root")
        return proc.Completed(tuple(argv), 0, VGCHANGE, "")

    recorder.responses.update(blkid=answers(DISK, ACTIVE), **{LVM: vgchange})
    loaded: list[list[str]] = []
    assert resolve(f"UUID={ROOT_UUID}", roots, loaded=loaded) == ("/dev/mapper/vg0-root", "xfs")
    assert recorder.calls == [BLKID, ACTIVATE, BLKID]
    assert loaded == [["dm_mod"]]


def test_activation_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def runner(argv: Sequence[str], **kwargs: Any) -> proc.Completed:
        seen.append({"argv": list(argv), **kwargs})
        return proc.Completed(tuple(argv), 0, VGCHANGE + VGCHANGE.replace("vg0", "data")
                              .replace("1 logical", "2 logical"), "")

    previous = proc.set_runner(runner)
    try:
        result = lvm.activate(LVM)
    finally:
        proc.set_runner(previous)
    assert seen[0]["argv"] == ACTIVATE
    assert seen[0]["env"] == {"DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
    assert seen[0]["check"] is False and seen[0]["timeout"] == lvm.LVM_TIMEOUT
    assert result.groups == (("vg0", 1), ("data", 2))
    assert result.summary() == "vg0 (1 LV), data (2 LVs)"
    # lvm 2.03 dropped these; passing them would only print warnings
    assert "locking_type" not in lvm.LVM_CONFIG and "use_lvmetad" not in lvm.LVM_CONFIG
    for needed in ("udev_sync = 0", "udev_rules = 0", "monitoring = 0", "backup = 0",
                   "archive = 0", "obtain_device_list_from_udev = 0"):
        assert needed in lvm.LVM_CONFIG


def test_activation_failures_are_summarised(recorder: Recorder) -> None:
    recorder.responses[LVM] = proc.Completed((LVM,), 5, "", "  WARNING: x\n  Couldn't find PV\n")
    assert lvm.activate(LVM).summary() == "vgchange exited 5: Couldn't find PV"

    def hang(argv: list[str]) -> proc.Completed:
        raise CommandError(argv, None, "")

    recorder.responses[LVM] = hang
    assert lvm.activate(LVM).summary() == "vgchange timed out"
    recorder.responses[LVM] = proc.Completed((LVM,), 0, "", "")
    assert lvm.activate(LVM).summary() == "no volume groups found"


def test_a_root_found_at_once_runs_no_lvm(recorder: Recorder, roots: tuple[Path, Path]) -> None:
    recorder.responses["blkid"] = answers('/dev/vda1: LABEL="root" TYPE="ext4"\n')
    loaded: list[list[str]] = []
    assert resolve("LABEL=root", roots, loaded=loaded) == ("/dev/vda1", "ext4")
    assert recorder.calls == [BLKID]
    assert loaded == []


def test_root_by_vg_lv_path_resolves_through_the_link(recorder: Recorder,
                                                      roots: tuple[Path, Path]) -> None:
    dev, sysfs = roots

    def vgchange(argv: list[str]) -> proc.Completed:
        add_dm(dev, sysfs, "dm-0", "vg0-root")
        return proc.Completed(tuple(argv), 0, VGCHANGE, "")

    # blkid names the LV by its kernel name when it probes before libdm's node exists
    recorder.responses.update(blkid=answers(DISK, DISK + '/dev/dm-0: UUID="u" TYPE="ext4"\n'),
                              **{LVM: vgchange})
    assert resolve("/dev/vg0/root", roots) == ("/dev/mapper/vg0-root", "ext4")
    assert recorder.calls == [BLKID, ACTIVATE, BLKID]


def test_activation_runs_again_only_for_a_new_physical_volume(recorder: Recorder,
                                                               roots: tuple[Path, Path]) -> None:
    dev, sysfs = roots
    (dev / "vdb").write_text("")
    late_pv = DISK + '/dev/vdb: TYPE="LVM2_member"\n'
    runs = iter([proc.Completed((), 0, "", ""), proc.Completed((), 0, VGCHANGE, "")])

    def vgchange(argv: list[str]) -> proc.Completed:
        done = next(runs)
        if done.stdout:
            add_dm(dev, sysfs, "dm-0", "vg0-root")
        return done

    # vda2 belongs to another VG with no LVs; the root's PV (vdb) shows up two looks later
    lv = ACTIVE.removeprefix(DISK)
    recorder.responses.update(blkid=answers(DISK, DISK, DISK, late_pv, late_pv + lv),
                              **{LVM: vgchange})
    assert resolve(f"UUID={ROOT_UUID}", roots)[0] == "/dev/mapper/vg0-root"
    assert recorder.calls == [BLKID, ACTIVATE, BLKID, BLKID, BLKID, ACTIVATE, BLKID]


# ---- not found -------------------------------------------------------------------------------


def test_not_found_names_what_lvm_did(recorder: Recorder, roots: tuple[Path, Path]) -> None:
    recorder.responses["blkid"] = answers(DISK)
    with pytest.raises(MountError) as info:
        resolve(f"UUID={ROOT_UUID}", roots, timeout=1)
    assert str(info.value) == (
        f"mount root=UUID={ROOT_UUID}: not found within 1 s (block devices seen: /dev/vda1, "
        "/dev/vda2 (LVM2_member)); LVM: no volume groups found")
    assert recorder.calls.count(ACTIVATE) == 1  # once: no new physical volume appeared


def test_not_found_after_activation_names_the_groups(recorder: Recorder,
                                                    roots: tuple[Path, Path]) -> None:
    dev, sysfs = roots
    add_dm(dev, sysfs, "dm-0", "vg0-root")
    recorder.responses.update(blkid=answers(ACTIVE), **{LVM: proc.Completed((), 0, VGCHANGE, "")})
    with pytest.raises(MountError) as info:
        resolve("LABEL=other", roots, timeout=1)
    assert str(info.value) == (
        "mount root=LABEL=other: not found within 1 s (block devices seen: /dev/mapper/vg0-root "
        "(xfs), /dev/vda1, /dev/vda2 (LVM2_member)); LVM: activated vg0 (1 LV)")


def test_not_found_without_any_physical_volume(recorder: Recorder,
                                               roots: tuple[Path, Path]) -> None:
    recorder.responses["blkid"] = answers('/dev/vda1: TYPE="ext4"\n')
    with pytest.raises(MountError, match=r"\(block devices seen: /dev/vda1 \(ext4\)\); "
                                         r"LVM: no volume groups found \(no physical volumes\)$"):
        resolve("/dev/mapper/vg0-root", roots, timeout=1)


def test_no_lvm_binary_runs_nothing_and_says_so(recorder: Recorder,
                                                roots: tuple[Path, Path]) -> None:
    recorder.responses["blkid"] = answers(DISK)
    loaded: list[list[str]] = []
    with pytest.raises(MountError) as info:
        resolve(f"UUID={ROOT_UUID}", roots, lvm_binary=None, loaded=loaded, timeout=1)
    assert str(info.value).endswith(
        "; LVM physical volume(s) /dev/vda2 found but no lvm in the initramfs")
    assert set(map(tuple, recorder.calls)) == {tuple(BLKID)}
    assert loaded == []


def test_no_lvm_binary_and_no_physical_volume_keeps_the_plain_message(
        recorder: Recorder, roots: tuple[Path, Path]) -> None:
    recorder.responses["blkid"] = answers("")
    with pytest.raises(MountError) as info:
        resolve("LABEL=root", roots, lvm_binary=None, timeout=1)
    assert str(info.value) == "mount root=LABEL=root: not found within 1 s (block devices seen: " \
                              "none)"


def test_find_lvm_looks_on_the_given_path(tmp_path: Path) -> None:
    assert lvm.find_lvm(str(tmp_path)) is None
    (tmp_path / "lvm").write_text("#!/bin/sh\n")
    (tmp_path / "lvm").chmod(0o755)
    assert lvm.find_lvm(str(tmp_path)) == str(tmp_path / "lvm")


# ---- dm names --------------------------------------------------------------------------------


def test_dm_kernel_names_map_to_mapper_names(roots: tuple[Path, Path]) -> None:
    dev, sysfs = roots
    add_dm(dev, sysfs, "dm-0", "vg0-root")
    add_dm(dev, sysfs, "dm-1", "vg0-swap", mapper=False)  # libdm made no node for this one
    assert lvm.dm_name("dm-0", sysfs=sysfs) == "vg0-root"
    assert lvm.dm_name("dm-7", sysfs=sysfs) is None
    assert lvm.dm_name("vda", sysfs=sysfs) is None

    def canon(path: str) -> str:
        return lvm.canonical_device(path, sysfs=sysfs, dev=dev)

    assert canon("/dev/dm-0") == "/dev/mapper/vg0-root"
    assert canon("/dev/vg0/root") == "/dev/mapper/vg0-root"
    assert canon("/dev/mapper/vg0-root") == "/dev/mapper/vg0-root"
    assert canon("/dev/dm-1") == "/dev/dm-1"  # no /dev/mapper node: keep the one that exists
    assert canon("/dev/mapper/vg0-swap") == "/dev/dm-1"
    assert canon("/dev/vda2") == "/dev/vda2"
    assert canon("/dev/sdz") == "/dev/sdz"


# ---- filesystem modules ----------------------------------------------------------------------

ALIASES = """alias fs-ext4 ext4
alias fs-ext3 ext4
alias fs-xfs xfs
alias devname:mapper/control dm_mod
"""


def test_fs_module_comes_from_modules_alias() -> None:
    assert ginit.fs_module("ext3", ALIASES) == "ext4"
    assert ginit.fs_module("xfs", ALIASES) == "xfs"
    assert ginit.fs_module("btrfs", ALIASES) == "btrfs"
    assert ginit.fs_module("xfs", "") == "xfs"


def test_mount_root_loads_the_filesystem_module_first(recorder: Recorder, tmp_path: Path,
                                                      roots: tuple[Path, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    dev, sysfs = roots
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "modules.alias").write_text(ALIASES)
    recorder.responses["blkid"] = answers('/dev/vda1: LABEL="root" TYPE="ext3"\n')
    order: list[Any] = []
    monkeypatch.setattr("pyinit.ginit.syscalls.mount", lambda *a: order.append(("mount", *a)))
    newroot = tmp_path / "newroot"
    got = ginit.mount_root("LABEL=root", newroot, load=lambda names: order.append(list(names)),
                           modules_dir=tmp_path / "modules", sysfs=sysfs, dev=dev)
    assert got == "/dev/vda1"
    assert order == [["ext4"], ("mount", "/dev/vda1", str(newroot), "ext3", 0, None)]


def test_load_modules_tolerates_a_system_without_modules(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    calls: list[tuple[list[str], frozenset[str]]] = []

    def fake_load(names: Sequence[str], *, optional: frozenset[str]) -> list[str]:
        calls.append((list(names), optional))
        raise ConfigError("modules", f"{tmp_path}/modules.dep not found")

    monkeypatch.setattr("pyinit.ginit.kmod.load", fake_load)
    assert ginit.load_modules(["dm_mod"]) == []
    assert calls == [(["dm_mod"], frozenset({"dm_mod"}))]
