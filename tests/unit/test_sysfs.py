"""pyinit.sysfs.read_attr: the one reader of small kernel text files."""

from __future__ import annotations

from pathlib import Path

from pyinit.sysfs import read_attr


def test_read_attr_strips_whitespace_and_the_nuls_drivers_leave(tmp_path: Path) -> None:
    (tmp_path / "model").write_bytes(b"QEMU HARDDISK   \n")
    (tmp_path / "serial").write_bytes(b"S4EWNX0R123456\x00\x00\n")
    (tmp_path / "vendor").write_bytes(b"caf\xc3\xa9 \xff\n")
    assert read_attr(tmp_path / "model") == "QEMU HARDDISK"
    assert read_attr(tmp_path / "serial") == "S4EWNX0R123456"
    assert read_attr(tmp_path / "vendor") == "caf\u00e9 \ufffd"


def test_read_attr_is_none_when_missing_empty_or_unreadable(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"\n")
    (tmp_path / "dir").mkdir()
    assert read_attr(tmp_path / "empty") is None
    assert read_attr(tmp_path / "missing") is None
    assert read_attr(tmp_path / "dir") is None  # IsADirectoryError, like EINVAL: an OSError
