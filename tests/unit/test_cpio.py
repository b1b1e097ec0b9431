"""The newc writer: layout rules, reader round trip, and (integration) the real GNU cpio."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyinit import proc
from pyinit_build import cpio

EPOCH = 1_700_000_000


def sample() -> list[cpio.Entry]:
    return [
        cpio.file("usr/bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
        cpio.symlink("bin", "usr/bin"),
        cpio.directory("usr/lib/empty"),
        cpio.chardev("dev/console", 5, 1),
        cpio.file("etc/hostname", b"x", 0o644),
        cpio.Entry("init", stat.S_IFLNK | 0o777, b"/usr/lib/pyinit/pyinit", mtime=EPOCH + 99,
                   uid=1000, gid=1000, ino=4242, nlink=7),
    ]


def test_pack_is_deterministic_and_order_independent() -> None:
    a = cpio.pack(sample(), epoch=EPOCH)
    b = cpio.pack(list(reversed(sample())), epoch=EPOCH)
    assert a == b


def test_layout_sorts_parents_first_and_adds_missing_parents() -> None:
    paths = [e.path for e in cpio.parse(cpio.pack(sample(), epoch=EPOCH))]
    assert paths == ["bin", "dev", "dev/console", "etc", "etc/hostname", "init", "usr",
                     "usr/bin", "usr/bin/hello", "usr/lib", "usr/lib/empty"]


def test_sort_is_by_component_so_parents_precede_children() -> None:
    entries = [cpio.file("a/b", b""), cpio.file("a-b", b""), cpio.file("a.b", b"")]
    paths = [e.path for e in cpio.normalize(entries, epoch=EPOCH)]
    assert paths == ["a", "a/b", "a-b", "a.b"]


def test_normalize_owner_inode_nlink_mtime() -> None:
    entries = {e.path: e for e in cpio.parse(cpio.pack(sample(), epoch=EPOCH))}
    assert [e.ino for e in entries.values()] == list(range(1, len(entries) + 1))
    assert all(e.uid == 0 and e.gid == 0 for e in entries.values())
    assert entries["init"].mtime == EPOCH            # clamped
    assert entries["init"].nlink == 1
    assert entries["usr"].nlink == 4                  # ., .., bin, lib
    assert entries["usr/lib/empty"].nlink == 2
    assert entries["dev/console"].kind == "chardev"
    assert (entries["dev/console"].rdev_major, entries["dev/console"].rdev_minor) == (5, 1)
    assert entries["init"].data == b"/usr/lib/pyinit/pyinit"
    assert entries["usr/bin/hello"].mode == stat.S_IFREG | 0o755


def test_mtime_older_than_epoch_is_kept() -> None:
    (entry,) = cpio.normalize([cpio.Entry("f", stat.S_IFREG | 0o644, b"", mtime=12)], epoch=EPOCH)
    assert entry.mtime == 12


def test_header_and_alignment() -> None:
    data = cpio.pack([cpio.file("abc", b"12345")], epoch=EPOCH)
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    header = data[:cpio.HEADER_LEN]
    assert header[6:14] == b"00000001"                      # ino
    assert header[14:22] == b"000081A4"                     # S_IFREG | 0644
    assert header[54:62] == b"00000005"                     # filesize
    assert header[94:102] == b"00000004"                    # namesize "abc\0"
    name_end = cpio.HEADER_LEN + 4
    assert data[cpio.HEADER_LEN:name_end] == b"abc\0"
    assert data[name_end:name_end + 2] == b"\0\0"            # header+name padded to 116
    assert data[116:121] == b"12345"
    assert data[121:124] == b"\0\0\0"                        # data padded to 124
    assert b"TRAILER!!!\0" in data[-128:]


def test_roundtrip_with_reader() -> None:
    entries = cpio.parse(cpio.pack(sample(), epoch=EPOCH))
    assert cpio.pack(entries, epoch=EPOCH) == cpio.pack(sample(), epoch=EPOCH)


@pytest.mark.parametrize(("entries", "message"), [
    ([cpio.file("a", b""), cpio.file("./a", b"")], "duplicate"),
    ([cpio.file("a", b""), cpio.file("a/b", b"")], "parent a is a file"),
    ([cpio.file("../etc/passwd", b"")], "bad archive path"),
    ([cpio.Entry("d", stat.S_IFDIR | 0o755, b"x")], "only files and symlinks"),
])
def test_rejects_bad_entries(entries: list[cpio.Entry], message: str) -> None:
    with pytest.raises(cpio.CpioError, match=message):
        cpio.pack(entries, epoch=EPOCH)


def test_parse_rejects_bad_magic() -> None:
    with pytest.raises(cpio.CpioError, match="bad magic"):
        cpio.parse(b"070707" + b"0" * 200)


def make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF...")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/link").symlink_to("/nonexistent/target")  # dangling links are stored as-is


def test_entries_from_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    entries = {e.path: e for e in cpio.entries_from_tree(tmp_path)}
    assert set(entries) == {"usr", "usr/bin", "usr/bin/tool", "bin", "etc", "etc/passwd",
                            "etc/link"}
    assert entries["bin"].kind == "symlink" and entries["bin"].data == b"usr/bin"
    assert entries["etc/link"].data == b"/nonexistent/target"
    assert entries["usr/bin/tool"].data == b"\x7fELF..."
    assert stat.S_IMODE(entries["usr/bin/tool"].mode) == 0o755


def test_tree_mtimes_do_not_change_the_archive(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = cpio.pack(cpio.entries_from_tree(tmp_path), epoch=EPOCH)
    os.utime(tmp_path / "etc/passwd", (EPOCH + 500, EPOCH + 500))
    assert cpio.pack(cpio.entries_from_tree(tmp_path), epoch=EPOCH) == first


@pytest.mark.integration
def test_real_cpio_lists_and_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "test.cpio"
    entries = [*sample(), cpio.file("usr/lib/big", bytes(range(256)) * 41),
               cpio.Entry("usr/lib/new", stat.S_IFREG | 0o600, b"n", mtime=EPOCH + 1000)]
    with archive.open("wb") as out:
        cpio.write(entries, out, epoch=EPOCH)
    listing = proc.run(["cpio", "-t", "--quiet", "-F", str(archive)]).stdout.split()
    assert listing == [e.path for e in cpio.parse(archive.read_bytes())]

    dest = tmp_path / "x"
    dest.mkdir()
    proc.run(["cpio", "-i", "--quiet", "--make-directories", "--no-absolute-filenames",
              "--preserve-modification-time", "-F", str(archive)], cwd=dest)
    assert (dest / "usr/bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(dest / "usr/bin/hello", os.X_OK)
    assert (dest / "usr/lib/big").read_bytes() == bytes(range(256)) * 41
    assert os.readlink(dest / "bin") == "usr/bin"
    assert os.readlink(dest / "init") == "/usr/lib/pyinit/pyinit"
    assert (dest / "usr/lib/empty").is_dir()
    assert int((dest / "usr/bin/hello").stat().st_mtime) == 0
    assert int((dest / "usr/lib/new").stat().st_mtime) == EPOCH  # clamped
    if os.geteuid() == 0:
        console = (dest / "dev/console").stat()
        assert stat.S_ISCHR(console.st_mode)
        assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
