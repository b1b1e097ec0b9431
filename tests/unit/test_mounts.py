"""The one /proc/self/mounts parser: every octal escape the kernel writes, in every reader."""

from __future__ import annotations

from pathlib import Path

from pyinit import mounts, rootfs, switchroot

TEXT = (
    "proc /proc proc rw,nosuid 0 0\n"
    "/dev/vda1 /mnt/a\\040b ext4 ro,relatime 0 0\n"
    "/dev/vda2 /mnt/tab\\011nl\\012bs\\134 xfs rw 0 0\n"
    "short line\n"
)


def test_parse_unescapes_every_field() -> None:
    got = mounts.parse(TEXT)
    assert [(m.source, m.target, m.fstype) for m in got] == [
        ("proc", "/proc", "proc"), ("/dev/vda1", "/mnt/a b", "ext4"),
        ("/dev/vda2", "/mnt/tab\tnl\nbs\\", "xfs")]
    assert [m.read_only for m in got] == [False, True, False]


def test_every_reader_agrees(tmp_path: Path) -> None:
    path = tmp_path / "mounts"
    path.write_text(TEXT)
    targets = {"/proc", "/mnt/a b", "/mnt/tab\tnl\nbs\\"}
    assert rootfs.mounted_targets(path) == targets  # was: only \040 unescaped
    assert {t for t, _ in switchroot.read_mounts(path)} == targets
    assert mounts.read(tmp_path / "absent") == []
