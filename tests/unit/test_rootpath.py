"""Paths inside a target root: symlinks followed as a chroot would, never out of the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit import rootpath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "boot").mkdir(parents=True)
    (r / "boot" / "vmlinuz-6.1").write_text("k")
    (r / "vmlinuz").symlink_to("/boot/vmlinuz-6.1")  # absolute: the target's /boot
    (r / "up").symlink_to("../../../../etc")  # .. stops at the root
    (r / "loop").symlink_to("loop")
    (r / "dangling").symlink_to("/nowhere")
    return r


def test_absolute_links_stay_inside(root: Path) -> None:
    assert rootpath.resolve(root, "/vmlinuz") == root / "boot" / "vmlinuz-6.1"
    assert rootpath.resolve(root, "vmlinuz", follow_last=False) == root / "vmlinuz"


def test_dotdot_stops_at_the_root(root: Path) -> None:
    assert rootpath.resolve(root, "/up/passwd") == root / "etc" / "passwd"
    assert rootpath.resolve(root, "/../../boot/./vmlinuz-6.1") == root / "boot" / "vmlinuz-6.1"


def test_dangling_and_loops(root: Path) -> None:
    assert rootpath.resolve(root, "/dangling") == root / "nowhere"
    with pytest.raises(rootpath.SymlinkLoop, match="too many levels"):
        rootpath.resolve(root, "/loop/x")
