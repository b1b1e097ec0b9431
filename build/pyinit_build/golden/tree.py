"""The root filesystem as data: what goes into the image, independent of where it came from.

A :class:`Tree` maps absolute paths (``/``, ``/etc``, ``/etc/hostname``) to :class:`Entry`
records carrying type, mode, owner, mtime, symlink/hardlink target, device numbers and xattrs.
File contents stay on the host's disk (``Entry.source``); nothing here needs root: ownership and
modes live in the entries and are applied by the filesystem writers (:mod:`.fs`), not by chown.

Loaders: :func:`load_dir`, :func:`apply_tar` (plain tarballs and OCI layers with whiteouts),
:func:`load_oci` (OCI image layouts and ``docker save`` archives), and :func:`load_rootfs`, which
picks one. Customisation: :func:`set_hostname`, :func:`set_root_password_hash`,
:func:`add_ssh_keys`. :func:`find_kernel` locates the kernel and initrd inside the tree.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

import zstandard

from pyinit import bzimage
from pyinit.errors import ConfigError
from pyinit.image.formats import SNIFF_BYTES, sniff
from pyinit_build.errors import BuildError

log = logging.getLogger("pyinit_build.golden.tree")

Kind = Literal["dir", "file", "symlink", "hardlink", "chardev", "blockdev", "fifo"]

CHUNK = 1 << 20
BLOCK = 4096
_T = TypeVar("_T")


@dataclass(frozen=True)
class Entry:
    """One path of the tree.

    A ``hardlink`` shares the inode of ``target``, always a ``file`` entry whose path sorts
    first in its link group; its mode, owner, mtime and xattrs mirror that file's.
    """

    path: str  # absolute and normalised: "/" or "/etc/hostname" (no trailing slash, no "..")
    kind: Kind
    mode: int = 0o755  # permission bits only, including suid/sgid/sticky (& 0o7777)
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0  # bytes, for kind == "file"
    source: Path | None = None  # host file with the content, for kind == "file"
    target: str = ""  # symlink: the link text; hardlink: the absolute tree path it links to
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for chardev/blockdev
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted by name
    sha256: str = ""  # hex digest of the content, for kind == "file"


def _sort_key(path: str) -> tuple[str, ...]:
    return () if path == "/" else tuple(path[1:].split("/"))


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def _check_path(path: str) -> None:
    if path == "/":
        return
    parts = path.split("/")
    if parts[0] or any(p in ("", ".", "..") for p in parts[1:]):
        raise BuildError("rootfs", f"{path!r}: not a normalised absolute path")


def _new_blob(workdir: Path, reader: IO[bytes]) -> tuple[Path, str, int]:
    """Copy ``reader`` into a new file in ``workdir``; return (path, sha256 hex, size)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="blob-", dir=workdir)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return Path(name), digest.hexdigest(), size


class Tree:
    """A mutable set of entries, always containing "/", with parents before children.

    ``workdir`` holds the content this tree creates (one blob file per file entry). Hard-link
    groups are kept canonical (see :class:`Entry`), so equal trees have equal entries whatever
    the order they were loaded in.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._entries: dict[str, Entry] = {"/": Entry("/", "dir", 0o755)}
        self._children: dict[str, set[str]] = {"/": set()}
        self._links: dict[str, set[str]] = {}  # file path -> paths of its hardlink entries

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        return self._entries.get(path)

    def entries(self) -> list[Entry]:
        """Every entry, sorted by path components (parents first, deterministic)."""
        return [self._entries[p] for p in sorted(self._entries, key=_sort_key)]

    def children(self, path: str) -> list[Entry]:
        """The direct children of directory ``path``, sorted; [] if it is not a directory."""
        return [self._entries[p] for p in sorted(self._children.get(path, ()), key=_sort_key)]

    def add(self, entry: Entry) -> None:
        """Add ``entry``, replacing what is at its path.

        A directory replacing a directory keeps its children; anything else replacing a directory
        drops the old subtree. Missing parents become 0o755 root directories with the entry's
        mtime; a parent that exists but is not a directory is an error.
        """
        _check_path(entry.path)
        entry = self._through_parent_symlinks(entry)
        path = entry.path
        if entry.kind == "hardlink":
            self._add_hardlink(entry)
            return
        if entry.kind == "file" and entry.source is None:
            raise BuildError("rootfs", f"{path}: a file entry needs a source")
        if path == "/" and entry.kind != "dir":
            raise BuildError("rootfs", f"/ must be a directory, not a {entry.kind}")
        old = self._entries.get(path)
        if old is not None and old.kind == "dir" and entry.kind == "dir":
            self._entries[path] = entry
            return
        if old is not None:
            self.remove(path)
        self._ensure_parent(path, entry.mtime)
        self._put(entry)

    def _real_path(self, path: str) -> str:
        """``path`` with its parent resolved when the parent is (or goes through) a symlink to
        a directory in the tree: ``/sbin/x`` with ``/sbin -> usr/sbin`` is ``/usr/sbin/x``."""
        if path == "/":
            return path
        parent = _parent(path)
        real = self.resolve(parent)
        target = self._entries.get(real)
        if real != parent and target is not None and target.kind == "dir":
            return _join(real, _basename(path))
        return path

    def _through_parent_symlinks(self, entry: Entry) -> Entry:
        """Place ``entry`` where ``tar -x`` would: through symlinked parent directories (the
        merged-/usr ``/bin``, ``/sbin``, ``/lib`` links of current distributions)."""
        path = self._real_path(entry.path)
        target = self._real_path(entry.target) if entry.kind == "hardlink" else entry.target
        if (path, target) == (entry.path, entry.target):
            return entry
        return dataclasses.replace(entry, path=path, target=target)

    def remove(self, path: str) -> None:
        """Remove ``path`` and its subtree; nothing happens if it is absent.

        Hard links to a removed file keep its content: the first of them becomes the file.
        """
        if path == "/":
            raise BuildError("rootfs", "cannot remove /")
        if path not in self._entries:
            return
        subtree = [path]
        for p in subtree:  # grows while iterating: breadth-first listing of the subtree
            subtree.extend(self._children.get(p, ()))
        for p in reversed(subtree):
            self._drop(p)

    def resolve(self, path: str) -> str:
        """``path`` with every symlink resolved inside the tree, as if chrooted into it.

        Missing components are kept as they are, like ``realpath -m``.
        """
        todo = [p for p in reversed(path.split("/")) if p not in ("", ".")]
        current = "/"
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":
                current = _parent(current)
                continue
            candidate = _join(current, name)
            entry = self._entries.get(candidate)
            if entry is None or entry.kind != "symlink":
                current = candidate
                continue
            hops += 1
            if hops > 40:
                raise BuildError("rootfs", f"{path}: too many levels of symbolic links")
            if entry.target.startswith("/"):
                current = "/"
            todo.extend(p for p in reversed(entry.target.split("/")) if p not in ("", "."))
        return current

    def file_entry(self, path: str) -> Entry | None:
        """The ``file`` entry holding the content at ``path``, following symlinks (inside the
        tree) and hard links; None if there is no regular file there."""
        entry = self._entries.get(self.resolve(path))
        if entry is not None and entry.kind == "hardlink":
            entry = self._entries[entry.target]
        return entry if entry is not None and entry.kind == "file" else None

    def read_bytes(self, path: str) -> bytes | None:
        """The content of the file at ``path`` (see :meth:`file_entry`), or None."""
        entry = self.file_entry(path)
        return entry.source.read_bytes() if entry is not None and entry.source else None

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, uid: int = 0,
                   gid: int = 0, mtime: int) -> Entry:
        """Add a regular file with ``data`` (stored in a new blob in the workdir)."""
        source, sha, size = _new_blob(self.workdir, io.BytesIO(data))
        entry = Entry(path, "file", mode, uid, gid, mtime, size, source, sha256=sha)
        self.add(entry)
        return entry

    def mkdir(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0,
              mtime: int) -> Entry:
        """Add a directory (an existing directory keeps its children)."""
        entry = Entry(path, "dir", mode, uid, gid, mtime)
        self.add(entry)
        return entry

    def symlink(self, path: str, target: str, *, uid: int = 0, gid: int = 0,
                mtime: int) -> Entry:
        """Add a symlink with link text ``target``."""
        entry = Entry(path, "symlink", 0o777, uid, gid, mtime, target=target)
        self.add(entry)
        return entry

    def digest(self) -> str:
        """sha256 over every entry's metadata and content digest (not its host ``source``)."""
        digest = hashlib.sha256()
        for e in self.entries():
            record = [e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.sha256, e.target,
                      list(e.rdev), [[name, value.hex()] for name, value in e.xattrs]]
            digest.update(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        return digest.hexdigest()

    def content_size(self) -> int:
        """Bytes the content needs: file sizes rounded up to 4 KiB, 4 KiB per other entry."""
        return sum(-(-e.size // BLOCK) * BLOCK if e.kind == "file" else BLOCK
                   for e in self._entries.values())

    def newest_mtime(self) -> int:
        return max(e.mtime for e in self._entries.values())

    def clamp_mtimes(self, epoch: int) -> None:
        """Set every mtime newer than ``epoch`` to ``epoch``."""
        for path, entry in self._entries.items():
            if entry.mtime > epoch:
                self._entries[path] = replace(entry, mtime=epoch)

    def materialize(self, staging: Path) -> None:
        """Create the tree in the empty directory ``staging`` as the current user.

        Directories are 0o755 and files 0o644 (0o755 if executable); ownership, real modes,
        device nodes and fifos are left to the filesystem writer, which has the entries. Files
        whose content is a blob of this tree's workdir are hard-linked to it, others are copied
        (so the host's originals are never chmod-ed or touched). Every staged path gets its
        entry's mtime, directories last.
        """
        staging.mkdir(parents=True, exist_ok=True)
        if any(staging.iterdir()):
            raise BuildError("rootfs", f"{staging}: staging directory is not empty")
        workdir = self.workdir.absolute()
        directories: list[tuple[str, int]] = []
        for e in self.entries():
            host = os.path.join(staging, e.path[1:])
            if e.kind == "dir":
                if e.path != "/":
                    os.mkdir(host)
                os.chmod(host, 0o755)
                directories.append((host, e.mtime))
                continue
            if e.kind == "file":
                assert e.source is not None  # add() refuses file entries without a source
                _stage_file(e.source, host, linkable=e.source.absolute().is_relative_to(workdir))
                os.chmod(host, 0o755 if e.mode & 0o111 else 0o644)
            elif e.kind == "symlink":
                os.symlink(e.target, host)
            elif e.kind == "hardlink":
                os.link(os.path.join(staging, e.target[1:]), host)
            else:  # chardev, blockdev, fifo: made by the filesystem writer
                continue
            os.utime(host, (e.mtime, e.mtime), follow_symlinks=False)
        for host, mtime in reversed(directories):
            os.utime(host, (mtime, mtime))

    def _put(self, entry: Entry) -> None:
        self._entries[entry.path] = entry
        self._children[_parent(entry.path)].add(entry.path)
        if entry.kind == "dir":
            self._children[entry.path] = set()

    def _ensure_parent(self, path: str, mtime: int) -> None:
        parent = _parent(path)
        existing = self._entries.get(parent)
        if existing is None:
            self._ensure_parent(parent, mtime)
            self._put(Entry(parent, "dir", 0o755, 0, 0, mtime))
        elif existing.kind != "dir":
            raise BuildError("rootfs", f"{path}: parent {parent} is a {existing.kind}, "
                                       "not a directory")

    def _drop(self, path: str) -> None:
        entry = self._entries.pop(path)
        self._children[_parent(path)].discard(path)
        self._children.pop(path, None)
        if entry.kind == "file":
            links = self._links.pop(path, set())
            if links:  # the first remaining link becomes the file
                first = min(links, key=_sort_key)
                self._entries[first] = replace(entry, path=first)
                for p in links - {first}:
                    self._entries[p] = replace(self._entries[p], target=first)
                if len(links) > 1:
                    self._links[first] = links - {first}
        elif entry.kind == "hardlink":
            group = self._links[entry.target]
            group.discard(path)
            if not group:
                del self._links[entry.target]

    def _link_target(self, entry: Entry) -> Entry:
        target = self._entries.get(entry.target)
        if target is not None and target.kind == "hardlink":
            target = self._entries[target.target]
        if target is None or target.kind != "file":
            raise BuildError("rootfs", f"{entry.path}: hard link target {entry.target} "
                                       "is not a file in the tree")
        return target

    def _add_hardlink(self, entry: Entry) -> None:
        path = entry.path
        if self._link_target(entry).path == path:
            return
        if path in self._entries:
            self.remove(path)
        file = self._link_target(entry)  # again: removing ``path`` may have moved it
        self._ensure_parent(path, entry.mtime)
        links = self._links.pop(file.path, set())
        if _sort_key(path) < _sort_key(file.path):  # the new path becomes the group's file
            links.add(file.path)
            file = replace(file, path=path)
            self._put(file)
        else:
            links.add(path)
            self._put(_link_entry(path, file))
        for p in links:
            self._entries[p] = _link_entry(p, file)
        self._links[file.path] = links


def _link_entry(path: str, file: Entry) -> Entry:
    return Entry(path, "hardlink", file.mode, file.uid, file.gid, file.mtime, target=file.path,
                 xattrs=file.xattrs)


def _stage_file(source: Path, host: str, *, linkable: bool) -> None:
    if linkable:
        try:
            os.link(source, host)
            return
        except OSError:  # another filesystem, or links not allowed: copy instead
            pass
    shutil.copyfile(source, host)


# --- directories ----------------------------------------------------------------------------

def load_dir(path: Path, workdir: Path) -> Tree:
    """Load a directory tree, never following symlinks.

    Files keep their host path as ``source``. Files sharing an inode become one ``file`` (the
    first path in sorted order) and ``hardlink`` entries. Device nodes and fifos are kept,
    sockets skipped with a warning, readable xattrs kept. Ownership is as on disk, except that
    when not running as root, paths owned by the current user become 0:0: such a directory is
    a rootless user's copy of a root filesystem.
    """
    try:
        root = os.lstat(path)
    except OSError as exc:
        raise BuildError("rootfs", f"{path}: {exc.strerror}") from None
    if not stat.S_ISDIR(root.st_mode):
        raise BuildError("rootfs", f"{path}: not a directory")
    found: list[tuple[str, str, os.stat_result]] = []
    pending = [("/", str(path))]
    while pending:
        tree_dir, host_dir = pending.pop()
        try:
            with os.scandir(host_dir) as listing:
                for item in listing:
                    st = item.stat(follow_symlinks=False)
                    child = _join(tree_dir, item.name)
                    found.append((child, item.path, st))
                    if stat.S_ISDIR(st.st_mode):
                        pending.append((child, item.path))
        except OSError as exc:
            raise BuildError("rootfs", f"{host_dir}: {exc.strerror}") from None
    tree = Tree(workdir)
    tree.add(_stat_entry("/", str(path), root))
    first_of_inode: dict[tuple[int, int], str] = {}
    for tree_path, host, st in sorted(found, key=lambda item: _sort_key(item[0])):
        if stat.S_ISSOCK(st.st_mode):
            log.warning("%s: skipping a socket", host)
            continue
        inode = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and inode in first_of_inode:
            tree.add(Entry(tree_path, "hardlink", target=first_of_inode[inode]))
            continue
        entry = _stat_entry(tree_path, host, st)
        if stat.S_ISREG(st.st_mode):
            first_of_inode[inode] = tree_path
            sha, size = _hash_file(host)
            entry = replace(entry, kind="file", size=size, source=Path(host), sha256=sha)
        elif stat.S_ISLNK(st.st_mode):
            entry = replace(entry, kind="symlink", target=os.readlink(host))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry = replace(entry, kind="chardev" if stat.S_ISCHR(st.st_mode) else "blockdev",
                            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        elif stat.S_ISFIFO(st.st_mode):
            entry = replace(entry, kind="fifo")
        tree.add(entry)
    return tree


def _stat_entry(tree_path: str, host: str, st: os.stat_result) -> Entry:
    """An entry with the metadata of ``st``, of kind "dir" until the caller replace()s it."""
    euid = os.geteuid()
    owner = (0, 0) if euid != 0 and st.st_uid == euid else (st.st_uid, st.st_gid)
    return Entry(tree_path, "dir", stat.S_IMODE(st.st_mode), *owner,
                 mtime=st.st_mtime_ns // 1_000_000_000, xattrs=_read_xattrs(host))


def _read_xattrs(host: str) -> tuple[tuple[str, bytes], ...]:
    ignored = (errno.EPERM, errno.ENOTSUP, errno.ENODATA)
    try:
        names = os.listxattr(host, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in ignored:
            return ()
        raise BuildError("rootfs", f"{host}: cannot list xattrs: {exc.strerror}") from None
    found = []
    for name in sorted(names):
        try:
            found.append((name, os.getxattr(host, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno not in ignored:
                raise BuildError("rootfs", f"{host}: cannot read xattr {name}: "
                                           f"{exc.strerror}") from None
    return tuple(found)


def _hash_file(host: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with open(host, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BuildError("rootfs", f"{host}: {exc.strerror}") from None
    return digest.hexdigest(), size


# --- tarballs -------------------------------------------------------------------------------

_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError,
                zstandard.ZstdError)


def _head(f: IO[bytes]) -> bytes:
    peek = getattr(f, "peek", None)
    if peek is not None:
        return bytes(peek(SNIFF_BYTES)[:SNIFF_BYTES])
    position = f.tell()
    head = f.read(SNIFF_BYTES)
    f.seek(position)
    return head


def _decompressed(f: IO[bytes]) -> IO[bytes] | io.BufferedIOBase:
    """``f`` decompressed according to its magic (gzip, bzip2, xz, zstd: the image writer's
    :func:`pyinit.image.formats.sniff`), or ``f`` itself.

    The decompressor never closes ``f``.
    """
    kind = sniff(_head(f))
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(f)
    if kind == "xz":
        return lzma.LZMAFile(f)
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True,
                                                          closefd=False)
    return f


def _open_tar(f: IO[bytes], stack: contextlib.ExitStack, *, seek: bool = False
              ) -> tarfile.TarFile:
    """A TarFile over ``f``, compressed or not, in stream mode (never seeking); with ``seek``,
    an uncompressed ``f`` is opened in random-access mode, which skips contents by seeking."""
    stream = _decompressed(f)
    if stream is not f:
        stack.callback(stream.close)
    if seek and stream is f:
        return stack.enter_context(tarfile.open(fileobj=f, mode="r:"))
    return stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))


@contextlib.contextmanager
def _read_errors(label: str) -> Iterator[None]:
    try:
        yield
    except _READ_ERRORS as exc:
        raise BuildError("rootfs", f"{label}: cannot read the tarball: {exc}") from exc


def _member_path(name: str, label: str) -> str:
    """The tree path of a member name: "./etc//x" -> "/etc/x"; ".." is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildError("rootfs", f"{label}: member {name!r}: '..' is not allowed in a name")
    return "/" + "/".join(parts)


def apply_tar(tree: Tree, source: Path | IO[bytes], workdir: Path, *, layer: bool,
              label: str = "") -> None:
    """Apply a tarball (plain, gzip, bzip2, xz or zstd) to ``tree``, reading it as a stream.

    ``source`` is a path, or a binary file that is seekable or has ``peek`` (a buffered
    reader). File contents go to new blobs in ``workdir``. With ``layer``, the tarball is an
    OCI/Docker layer: ``.wh.NAME`` removes NAME and ``.wh..wh..opq`` empties its directory,
    both only of what lower layers put there, whatever the member order. Without ``layer``,
    ``.wh.`` names are ordinary files. ``label`` names the tarball in errors.
    """
    label = label or str(source if isinstance(source, Path) else getattr(source, "name", "tar"))
    entries: list[Entry] = []
    whiteouts: list[str] = []
    opaque: list[str] = []
    with contextlib.ExitStack() as stack, _read_errors(label):
        f = stack.enter_context(source.open("rb")) if isinstance(source, Path) else source
        archive = _open_tar(f, stack)
        for member in archive:
            path = _member_path(member.name, label)
            name = _basename(path)
            if layer and name.startswith(".wh."):
                if name == ".wh..wh..opq":
                    opaque.append(_parent(path))
                elif not name.startswith(".wh..wh."):  # other .wh..wh. names: aufs metadata
                    whiteouts.append(_join(_parent(path), name[4:]))
                continue
            entry = _member_entry(archive, member, path, label, workdir)
            if entry is not None:
                entries.append(entry)
    for path in whiteouts:
        tree.remove(path)
    for directory in opaque:
        for child in tree.children(directory):
            tree.remove(child.path)
    for entry in entries:
        tree.add(entry)


def _member_entry(archive: tarfile.TarFile, member: tarfile.TarInfo, path: str, label: str,
                  workdir: Path) -> Entry | None:
    xattrs = tuple(sorted((key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"))
                          for key, value in member.pax_headers.items()
                          if key.startswith("SCHILY.xattr.")))
    base = Entry(path, "dir", member.mode & 0o7777, member.uid, member.gid, int(member.mtime),
                 xattrs=xattrs)
    if member.isreg():
        content = archive.extractfile(member)
        assert content is not None  # regular members always have content
        source, sha, size = _new_blob(workdir, content)
        return replace(base, kind="file", size=size, source=source, sha256=sha)
    if member.isdir():
        return base
    if member.issym():
        return replace(base, kind="symlink", target=member.linkname)
    if member.islnk():
        return replace(base, kind="hardlink", target=_member_path(member.linkname, label))
    if member.ischr() or member.isblk():
        return replace(base, kind="chardev" if member.ischr() else "blockdev",
                       rdev=(member.devmajor, member.devminor))
    if member.isfifo():
        return replace(base, kind="fifo")
    log.warning("%s: skipping %s (tar member type %r)", label, member.name, member.type)
    return None


# --- OCI image layouts and docker save archives ---------------------------------------------

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BLOB_NAME = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_LAYER_TYPES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
# Top-level names of an image archive; a tarball with any other name is a root filesystem.
_IMAGE_TOP = re.compile(r"manifest\.json|index\.json|oci-layout|repositories|blobs"
                        r"|[0-9a-f]{64}(?:\.json|\.tar)?")


class _Layout(Protocol):
    label: str

    def has(self, name: str) -> bool: ...

    def open(self, name: str) -> IO[bytes]: ...


class _DirLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def has(self, name: str) -> bool:
        return (self.root / name).is_file()

    def open(self, name: str) -> IO[bytes]:
        try:
            return (self.root / name).open("rb")
        except OSError as exc:
            raise BuildError("rootfs", f"{self.label}: {name}: {exc.strerror}") from None


class _ArchiveLayout:
    def __init__(self, archive: tarfile.TarFile, label: str) -> None:
        self.archive = archive
        self.label = label
        self.members = {_member_path(m.name, label)[1:]: m for m in archive.getmembers()}

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name)
        content = self.archive.extractfile(member) if member is not None else None
        if content is None:
            raise BuildError("rootfs", f"{self.label}: no file {name} in the archive")
        return content


class _Hashing(io.RawIOBase):
    """Reads through ``f``, hashing what passes."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        self.sha256.update(data)
        return len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def load_oci(path: Path, workdir: Path) -> Tree:
    """Load an OCI image layout directory, or an image archive (``docker save``, either the
    legacy manifest.json layout or an OCI layout, possibly compressed).

    The manifest is chosen through index.json (linux/amd64, or the only image), else through
    the legacy manifest.json. Every blob read is checked against its sha256 digest (legacy
    layers against the config's diff_ids).
    """
    if path.is_dir():
        return _load_layout(_DirLayout(path), workdir)
    with contextlib.ExitStack() as stack, _read_errors(str(path)):
        archive = stack.enter_context(tarfile.open(_plain_archive(path, workdir, stack), "r:"))
        return _load_layout(_ArchiveLayout(archive, str(path)), workdir)


def _plain_archive(path: Path, workdir: Path, stack: contextlib.ExitStack) -> Path:
    """``path`` itself if it is an uncompressed tar, else a temporary decompressed copy."""
    with path.open("rb") as f:
        stream = _decompressed(f)
        if stream is f:
            return path
        workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="archive-", suffix=".tar", dir=workdir)
        stack.callback(os.unlink, name)
        with os.fdopen(fd, "wb") as out, stream:
            shutil.copyfileobj(stream, out, CHUNK)
    return Path(name)


def _load_layout(layout: _Layout, workdir: Path) -> Tree:
    if layout.has("index.json"):
        layers = _oci_layers(layout)
    elif layout.has("manifest.json"):
        layers = _docker_layers(layout)
    else:
        raise BuildError("rootfs", f"{layout.label}: no index.json or manifest.json")
    tree = Tree(workdir)
    for name, digest in layers:
        _apply_layer(tree, layout, name, digest, workdir)
    return tree


def _apply_layer(tree: Tree, layout: _Layout, name: str, digest: str, workdir: Path) -> None:
    """Apply one layer, hashing it on the way; a digest mismatch wins over a read error."""
    with layout.open(name) as f:
        hashing = _Hashing(f)
        reader = io.BufferedReader(hashing)  # kept referenced: collecting it closes ``hashing``
        error: BuildError | None = None
        try:
            apply_tar(tree, reader, workdir, layer=True,
                      label=f"{layout.label}: layer {digest}")
        except BuildError as exc:
            error = exc
        hashing.drain()
    _check_digest(layout, name, digest, hashing.sha256.hexdigest())
    if error is not None:
        raise error


def _check_digest(layout: _Layout, name: str, digest: str, actual_hex: str) -> None:
    if digest != f"sha256:{actual_hex}":
        raise BuildError("rootfs", f"{layout.label}: {name}: content does not match digest "
                                   f"{digest} (got sha256:{actual_hex})")


def _json(layout: _Layout, name: str, digest: str | None = None) -> Any:
    with layout.open(name) as f:
        data = f.read()
    if digest is not None:
        _check_digest(layout, name, digest, hashlib.sha256(data).hexdigest())
    try:
        return json.loads(data)
    except ValueError as exc:
        raise BuildError("rootfs", f"{layout.label}: {name}: not JSON: {exc}") from None


def _get(doc: Any, key: str, kind: type[_T], where: str) -> _T:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        raise BuildError("rootfs", f"{where}: missing or malformed {key!r}")
    return value


def _digest(value: object, where: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise BuildError("rootfs", f"{where}: unsupported digest {value!r} "
                                   "(expected sha256:<64 hex digits>)")
    return value


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _platform(descriptor: dict[str, Any]) -> tuple[object, object]:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None, None
    return platform.get("os"), platform.get("architecture")


def _choose(descriptors: list[Any], where: str) -> dict[str, Any]:
    """The linux/amd64 image of an index, or its only image (attestations are not images)."""
    images: dict[object, dict[str, Any]] = {}
    for d in descriptors:
        annotations = d.get("annotations") if isinstance(d, dict) else None
        if not isinstance(d, dict) or _platform(d) == ("unknown", "unknown") or (
                isinstance(annotations, dict)
                and annotations.get("vnd.docker.reference.type") == "attestation-manifest"):
            continue
        images.setdefault(d.get("digest"), d)
    amd64 = [d for d in images.values() if _platform(d) == ("linux", "amd64")]
    if amd64:
        return amd64[0]
    if len(images) == 1:
        return next(iter(images.values()))
    platforms = sorted(f"{os_}/{arch}" for os_, arch in map(_platform, images.values()))
    raise BuildError("rootfs", f"{where}: {len(images)} images and none for linux/amd64 "
                               f"({', '.join(platforms) or 'no platforms'})")


def _oci_layers(layout: _Layout) -> list[tuple[str, str]]:
    """(blob name, digest) of each layer, following index.json to one image manifest."""
    where = f"{layout.label}: index.json"
    doc = _json(layout, "index.json")
    while isinstance(doc, dict) and "manifests" in doc:  # an image index, possibly nested
        descriptor = _choose(_get(doc, "manifests", list, where), where)
        digest = _digest(descriptor.get("digest"), where)
        where = f"{layout.label}: {digest}"
        doc = _json(layout, _blob(digest), digest)
    layers = []
    for descriptor in _get(doc, "layers", list, where):
        digest = _digest(_get(descriptor, "digest", str, where), where)
        media_type = descriptor.get("mediaType", "")
        if media_type and not str(media_type).startswith(_LAYER_TYPES):
            raise BuildError("rootfs", f"{where}: layer {digest}: unsupported media type "
                                       f"{media_type}")
        layers.append((_blob(digest), digest))
    return layers


def _docker_layers(layout: _Layout) -> list[tuple[str, str]]:
    """(member name, digest) of each layer of a legacy ``docker save`` manifest.json.

    Layer files named blobs/sha256/<hex> carry their digest; others are checked against the
    config's rootfs.diff_ids (legacy layers are uncompressed, so the two are the same).
    """
    where = f"{layout.label}: manifest.json"
    doc = _json(layout, "manifest.json")
    if not isinstance(doc, list) or len(doc) != 1:
        count = len(doc) if isinstance(doc, list) else "no"
        raise BuildError("rootfs", f"{where}: expected exactly one image, found {count}")
    names = []
    for name in _get(doc[0], "Layers", list, where):
        if not isinstance(name, str):
            raise BuildError("rootfs", f"{where}: malformed layer name {name!r}")
        names.append(_member_path(name, where)[1:])
    config_name = _member_path(_get(doc[0], "Config", str, where), where)[1:]
    match = _BLOB_NAME.fullmatch(config_name)
    config = _json(layout, config_name, f"sha256:{match[1]}" if match else None)
    config_where = f"{layout.label}: {config_name}"
    diff_ids = _get(_get(config, "rootfs", dict, config_where), "diff_ids", list, config_where)
    if len(diff_ids) != len(names):
        raise BuildError("rootfs", f"{where}: {len(names)} layers but {len(diff_ids)} diff_ids "
                                   f"in {config_name}")
    layers = []
    for name, diff_id in zip(names, diff_ids, strict=True):
        match = _BLOB_NAME.fullmatch(name)
        layers.append((name, f"sha256:{match[1]}" if match else _digest(diff_id, config_where)))
    return layers


def _archive_kind(path: Path) -> Literal["image", "tar"] | None:
    """"image" for an image archive, "tar" for another tarball, None if not a tarball.

    Decided on the first telling member, so a large root filesystem is not read to the end.
    """
    try:
        with path.open("rb") as f, contextlib.ExitStack() as stack:
            for member in _open_tar(f, stack, seek=True):
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                if parts in (["manifest.json"], ["oci-layout"]):
                    return "image"
                if parts and not _IMAGE_TOP.fullmatch(parts[0]):
                    return "tar"
    except _READ_ERRORS:
        return None
    return "tar"


def load_rootfs(source: Path, workdir: Path) -> Tree:
    """Load a root filesystem from a directory, an OCI image layout, an image archive
    (``docker save``) or a tarball (e.g. ``docker export``)."""
    if source.is_dir():
        if (source / "oci-layout").is_file():
            return load_oci(source, workdir)
        return load_dir(source, workdir)
    if not source.exists():
        raise BuildError("rootfs", f"{source}: no such file or directory")
    kind = _archive_kind(source) if source.is_file() else None
    if kind == "image":
        return load_oci(source, workdir)
    if kind == "tar":
        tree = Tree(workdir)
        apply_tar(tree, source, workdir, layer=False)
        return tree
    raise BuildError("rootfs", f"{source}: not a directory, tarball or OCI/docker image archive")


# --- customisation --------------------------------------------------------------------------

_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_CRYPT_HASH = re.compile(r"\$[0-9a-z]+(?:\$[^$:\s]+){2,}")  # $id$salt$hash, $id$param$salt$hash
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
                 "sk-ecdsa-sha2-nistp256@openssh.com")
_DEFAULT_HOSTS = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                  "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters"]


def _text(tree: Tree, path: str) -> str:
    return (tree.read_bytes(path) or b"").decode("utf-8", "surrogateescape")


def _rewrite(tree: Tree, path: str, lines: list[str], *, mode: int, gid: int = 0,
             mtime: int) -> None:
    """Write ``lines`` to ``path``, keeping the mode, owner and xattrs of an existing file."""
    uid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    old = tree.get(path)
    if old is not None and old.kind in ("file", "hardlink"):
        mode, uid, gid, xattrs = old.mode, old.uid, old.gid, old.xattrs
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
    entry = tree.write_file(path, data, mode=mode, uid=uid, gid=gid, mtime=mtime)
    if xattrs:
        tree.add(replace(entry, xattrs=xattrs))


def set_hostname(tree: Tree, name: str, *, mtime: int | None = None) -> None:
    """Write /etc/hostname and a ``127.0.1.1 <name>`` line in /etc/hosts (other lines kept).

    ``mtime`` of changed files defaults to the tree's newest mtime (reproducible).
    """
    labels = name.split(".")
    if len(name) > 64 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise ConfigError("hostname", f"{name!r} is not a valid hostname (RFC 1123: at most 64 "
                                      "characters, dot-separated labels of letters, digits and "
                                      "inner hyphens)")
    when = tree.newest_mtime() if mtime is None else mtime
    _rewrite(tree, "/etc/hostname", [name], mode=0o644, mtime=when)
    existing = tree.read_bytes("/etc/hosts")
    hosts = (existing.decode("utf-8", "surrogateescape").splitlines() if existing is not None
             else list(_DEFAULT_HOSTS))
    line = f"127.0.1.1\t{name}" + (f"\t{labels[0]}" if len(labels) > 1 else "")
    addresses = [h.split()[:1] for h in hosts]
    if ["127.0.1.1"] in addresses:
        hosts[addresses.index(["127.0.1.1"])] = line
    else:
        loopback = [i for i, a in enumerate(addresses) if a == ["127.0.0.1"]]
        hosts.insert(loopback[-1] + 1 if loopback else len(hosts), line)
    _rewrite(tree, "/etc/hosts", hosts, mode=0o644, mtime=when)


def set_root_password_hash(tree: Tree, crypt_hash: str, *, mtime: int | None = None) -> None:
    """Set root's password hash in /etc/shadow (other lines kept; created 0o640 root:shadow
    if missing). ``crypt_hash`` is a crypt(3) hash, or "!"/"*" to lock the account."""
    if crypt_hash not in ("!", "*") and not _CRYPT_HASH.fullmatch(crypt_hash):
        # The value is not echoed: it may be a plain password given by mistake.
        raise ConfigError("root_password_hash", "not a crypt(3) hash ($id$salt$hash, e.g. from "
                                                "`mkpasswd -m yescrypt`) nor '!' or '*'")
    when = tree.newest_mtime() if mtime is None else mtime
    lines = _text(tree, "/etc/shadow").splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = crypt_hash
            lines[i] = ":".join(fields)
            break
    else:
        lines.insert(0, f"root:{crypt_hash}:{when // 86400}:0:99999:7:::")
    _rewrite(tree, "/etc/shadow", lines, mode=0o640, gid=_group_gid(tree, "shadow"), mtime=when)


def _group_gid(tree: Tree, name: str) -> int:
    for line in _text(tree, "/etc/group").splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return 0


def _ssh_key_id(line: str) -> tuple[str, ...]:
    """(type, base64) of an authorized_keys line, skipping any options before the type."""
    tokens = line.split()
    for i, token in enumerate(tokens[:-1]):
        if token in SSH_KEY_TYPES:
            return token, tokens[i + 1]
    return (line.strip(),)


def _check_ssh_key(key: str, field: str) -> str:
    tokens = key.split()
    if len(key.strip().splitlines()) != 1 or len(tokens) < 2 or tokens[0] not in SSH_KEY_TYPES:
        raise ConfigError(field, f"not a one-line public key starting with one of "
                                 f"{', '.join(SSH_KEY_TYPES)}")
    try:
        blob = base64.b64decode(tokens[1], validate=True)
    except binascii.Error:
        raise ConfigError(field, f"{tokens[0]} key data is not base64") from None
    kind = tokens[0].encode()
    if blob[:4 + len(kind)] != struct.pack(">I", len(kind)) + kind:
        raise ConfigError(field, f"key data is not a {tokens[0]} key")
    return key.strip()


def add_ssh_keys(tree: Tree, keys: list[str], *, mtime: int | None = None) -> None:
    """Append public keys (without duplicates) to root's authorized_keys.

    /root may be a symlink inside the tree (e.g. to /var/roothome). .ssh is made 0o700 and
    authorized_keys 0o600, both root-owned.
    """
    checked = [_check_ssh_key(key, f"ssh_keys[{i}]") for i, key in enumerate(keys)]
    when = tree.newest_mtime() if mtime is None else mtime
    home = tree.resolve("/root")
    if home not in tree:
        tree.mkdir(home, mode=0o700, mtime=when)
    ssh_dir = _join(home, ".ssh")
    tree.mkdir(ssh_dir, mode=0o700, mtime=when)
    path = _join(ssh_dir, "authorized_keys")
    lines = _text(tree, path).splitlines()
    present = {_ssh_key_id(line) for line in lines}
    for key in checked:
        if _ssh_key_id(key) not in present:
            lines.append(key)
            present.add(_ssh_key_id(key))
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
    tree.write_file(path, data, mode=0o600, mtime=when)


# --- kernel ---------------------------------------------------------------------------------

def _version_key(version: str) -> tuple[int | str, ...]:
    """Natural order: digit runs compare as numbers (6.1.0-10 > 6.1.0-9)."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", version)))


def _first_file(tree: Tree, *paths: str) -> str | None:
    for path in paths:
        entry = tree.file_entry(path)
        if entry is not None:
            return entry.path
    return None


def _initrd(tree: Tree, version: str, *more: str) -> str | None:
    return _first_file(tree, f"/boot/initrd.img-{version}", f"/boot/initramfs-{version}.img",
                       f"/boot/initramfs-{version}", *more)


def find_kernel(tree: Tree) -> tuple[str, str | None, str]:
    """(kernel path, initrd path or None, version) of the newest kernel in the tree.

    Searched in order: /boot/vmlinuz-<version> (highest version), /boot/vmlinuz, then
    /usr/lib/modules/<version>/vmlinuz. Symlinks are resolved inside the tree; the paths
    returned are those of the ``file`` entries holding the content.
    """
    kernels: dict[str, str] = {}
    for child in tree.children(tree.resolve("/boot")):
        name = _basename(child.path)
        entry = tree.file_entry(child.path)
        if name.startswith("vmlinuz-") and entry is not None:
            kernels[name.removeprefix("vmlinuz-")] = entry.path
    if kernels:
        version = max(kernels, key=_version_key)
        return kernels[version], _initrd(tree, version), version
    entry = tree.file_entry("/boot/vmlinuz")
    if entry is not None and entry.source is not None:
        name = _basename(tree.resolve("/boot/vmlinuz"))
        version = (name.removeprefix("vmlinuz-") if name.startswith("vmlinuz-")
                   else bzimage.read_release(entry.source) or "")
        initrd = _first_file(tree, "/boot/initrd.img") or (
            _initrd(tree, version) if version else None)
        return entry.path, initrd, version
    modules: dict[str, tuple[str, str]] = {}
    for root in ("/usr/lib/modules", "/lib/modules"):
        for child in tree.children(tree.resolve(root)):
            entry = tree.file_entry(_join(child.path, "vmlinuz"))
            if entry is not None:
                modules.setdefault(_basename(child.path), (entry.path, child.path))
    if modules:
        version = max(modules, key=_version_key)
        kernel, directory = modules[version]
        return kernel, _initrd(tree, version, _join(directory, "initramfs.img")), version
    raise BuildError("kernel", "no kernel in the rootfs (/boot/vmlinuz-*) and none given "
                               "with --kernel")
