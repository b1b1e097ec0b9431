"""The newc ("070701") cpio the kernel unpacks as its initramfs, written reproducibly.

Written by hand: the format is a 110-byte ASCII header per entry, and no maintained Python library
writes it with the guarantees a reproducible initramfs needs. Those guarantees:

* paths sorted, every parent directory before its children (missing parents are added);
* uid/gid 0, device numbers 0, inode numbers renumbered from 1 in output order;
* nlink 1 for non-directories (the kernel treats nlink > 1 as a hard link candidate),
  2 + subdirectories for directories;
* mtimes clamped to ``SOURCE_DATE_EPOCH``.

``layout`` is pure (entries -> byte chunks). ``entries_from_tree`` reads a staging directory,
``write`` streams to a file, ``parse`` reads an archive back (for tests and inspection).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")


class CpioError(ValueError):
    """A malformed archive or entry."""


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is relative ("usr/bin/sh"), ``mode`` includes the file type.

    ``data`` is the content of a regular file or the target of a symlink.
    """

    path: str
    mode: int
    data: bytes = b""
    mtime: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    ino: int = 0

    @property
    def kind(self) -> str:
        return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo",
                stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(self.mode), "unknown")


def directory(path: str, perm: int = 0o755) -> Entry:
    return Entry(path, stat.S_IFDIR | perm)


def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _norm(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise CpioError(f"bad archive path {path!r}")
    return "/".join(parts)


def normalize(entries: Iterable[Entry], *, epoch: int) -> list[Entry]:
    """Sorted, parents first, missing parents added, ids/inodes/nlink/mtime made reproducible."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = _norm(entry.path)
        if path in by_path:
            raise CpioError(f"duplicate archive path {path!r}")
        if stat.S_IFMT(entry.mode) not in (stat.S_IFREG, stat.S_IFLNK) and entry.data:
            raise CpioError(f"{path}: only files and symlinks carry data")
        by_path[path] = replace(entry, path=path)
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                by_path[parent] = directory(parent)
            elif by_path[parent].kind != "dir":
                raise CpioError(f"{path}: parent {parent} is a {by_path[parent].kind}")
    subdirs: dict[str, int] = {}
    for path, entry in by_path.items():
        if entry.kind == "dir" and "/" in path:
            parent = path.rsplit("/", 1)[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
    out = []
    for ino, path in enumerate(sorted(by_path, key=lambda p: p.split("/")), 1):
        entry = by_path[path]
        nlink = 2 + subdirs.get(path, 0) if entry.kind == "dir" else 1
        out.append(replace(entry, uid=0, gid=0, ino=ino, nlink=nlink,
                           mtime=max(0, min(entry.mtime, epoch))))
    return out


def _header(entry: Entry, name: bytes) -> bytes:
    values = (entry.ino, entry.mode, entry.uid, entry.gid, entry.nlink, entry.mtime,
              len(entry.data), 0, 0, entry.rdev_major, entry.rdev_minor, len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % v for v in values)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _member(entry: Entry) -> bytes:
    name = entry.path.encode()
    head = _header(entry, name) + name + b"\0"
    return head + _pad(len(head)) + entry.data + _pad(len(entry.data))


def layout(entries: Iterable[Entry], *, epoch: int) -> Iterator[bytes]:
    """The archive as byte chunks: normalized members, then ``TRAILER!!!``. No I/O."""
    for entry in normalize(entries, epoch=epoch):
        yield _member(entry)
    yield _member(Entry(TRAILER, 0, nlink=1))


def pack(entries: Iterable[Entry], *, epoch: int) -> bytes:
    return b"".join(layout(entries, epoch=epoch))


def write(entries: Iterable[Entry], out: BinaryIO, *, epoch: int) -> int:
    """Stream the archive to ``out``; return the number of bytes written."""
    total = 0
    for chunk in layout(entries, epoch=epoch):
        out.write(chunk)
        total += len(chunk)
    return total


def entries_from_tree(root: Path) -> list[Entry]:
    """Every file, directory, symlink and device node under ``root`` (not ``root`` itself).

    Symlinks are stored, never followed. Hard links become independent copies.
    """
    out: list[Entry] = []

    def walk(directory_: Path, prefix: str) -> None:
        with os.scandir(directory_) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = f"{prefix}{child.name}"
            st = child.stat(follow_symlinks=False)
            mode, mtime = st.st_mode, int(st.st_mtime)
            if stat.S_ISLNK(mode):
                out.append(Entry(rel, mode, os.readlink(child.path).encode(), mtime))
            elif stat.S_ISDIR(mode):
                out.append(Entry(rel, mode, mtime=mtime))
                walk(Path(child.path), rel + "/")
            elif stat.S_ISREG(mode):
                out.append(Entry(rel, mode, Path(child.path).read_bytes(), mtime))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                out.append(Entry(rel, mode, mtime=mtime, rdev_major=os.major(st.st_rdev),
                                 rdev_minor=os.minor(st.st_rdev)))
            else:
                out.append(Entry(rel, mode, mtime=mtime))

    walk(root, "")
    return out


def parse(data: bytes) -> list[Entry]:
    """Read a newc archive (up to ``TRAILER!!!``) back into entries."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise CpioError(f"bad magic at offset {pos}: {data[pos:pos + 6]!r}")
        head = data[pos + 6:pos + HEADER_LEN]
        if len(head) != HEADER_LEN - 6:
            raise CpioError(f"truncated header at offset {pos}")
        fields = dict(zip(_FIELDS, (int(head[i:i + 8], 16) for i in range(0, 104, 8)),
                          strict=True))
        name_start = pos + HEADER_LEN
        name_end = name_start + fields["namesize"]
        name = data[name_start:name_end - 1].decode()
        data_start = name_end + (-name_end % 4)
        data_end = data_start + fields["filesize"]
        if data_end > len(data):
            raise CpioError(f"{name}: truncated data")
        pos = data_end + (-data_end % 4)
        if name == TRAILER:
            return entries
        entries.append(Entry(name, fields["mode"], data[data_start:data_end], fields["mtime"],
                             fields["rdevmajor"], fields["rdevminor"], fields["uid"],
                             fields["gid"], fields["nlink"], fields["ino"]))
