"""Filesystems written from a :class:`~.tree.Tree` into a plain file, as an ordinary user.

- ext4: the tree is staged into a directory and copied by ``mke2fs -d``; a ``debugfs`` script
  then sets what an unprivileged copy cannot carry: modes, owners, times, device nodes, fifos
  and xattrs (:func:`debugfs_script`).
- XFS: ``mkfs.xfs -p`` with a protofile (:func:`xfs_protofile`) under a frozen clock, then an
  ``xfs_db`` script for the times and the modes a protofile cannot express
  (:func:`xfs_db_script`).
- FAT, for the EFI system partition: ``mkfs.fat --invariant`` and mtools (:func:`make_vfat`).

Same tree, size, UUID, label and epoch → same bytes. Every time in the image is the entry's
mtime clamped to ``[0, epoch]``. The scripts, the protofile and the size estimate are pure
functions; only the ``make_*`` functions run commands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit.errors import CommandError
from pyinit.units import MIB
from pyinit_build.errors import BuildError
from pyinit_build.golden.tree import Entry, Tree

log = logging.getLogger("pyinit_build.golden.fs")

STEP = "filesystem"

# File-type bits of st_mode, per Entry.kind (a hardlink takes its target's).
S_IFMT = {"dir": 0o040000, "file": 0o100000, "symlink": 0o120000, "chardev": 0o020000,
          "blockdev": 0o060000, "fifo": 0o010000}
_SPECIAL = ("chardev", "blockdev", "fifo")

EXT4_LABEL_MAX = 16
XFS_LABEL_MAX = 12
FAT_LABEL_MAX = 11
XFS_MIN = 300 * MIB
FAT32_MIN = 64 * MIB


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _mib(n: int) -> int:
    return _ceil(n, MIB)


def _clamp_time(mtime: int, epoch: int) -> int:
    return max(0, min(mtime, epoch))


def _too_small(fstype: str, size: int, tree: Tree) -> BuildError:
    return BuildError(STEP, f"{fstype} of {size // MIB} MiB is too small for the rootfs "
                            f"({_mib(tree.content_size())} MiB of content) — give a larger "
                            "--size or omit it")


def _check_label(label: str, limit: int, fstype: str) -> None:
    if len(label.encode()) > limit:
        raise BuildError(STEP, f"{fstype} label {label!r} is longer than {limit} bytes")
    if not label.isprintable():
        raise BuildError(STEP, f"{fstype} label {label!r} contains control characters")


def _resolve(entry: Entry, by_path: Mapping[str, Entry]) -> Entry:
    """The entry whose inode ``entry`` names: itself, or the end of its hardlink chain."""
    seen = {entry.path}
    while entry.kind == "hardlink":
        target = by_path.get(entry.target)
        if target is None or target.path in seen:
            raise BuildError(STEP, f"{entry.path}: hard link to missing {entry.target}")
        seen.add(target.path)
        entry = target
    return entry


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _write_text(path: Path, text: str) -> None:
    # Names that are not UTF-8 travel through str as surrogate escapes (os.fsdecode).
    path.write_bytes(text.encode("utf-8", "surrogateescape"))


@contextlib.contextmanager
def _output(out: Path, size: int) -> Iterator[None]:
    """A fresh sparse ``out`` of ``size`` bytes, removed again if the block fails."""
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size)
    try:
        yield
    except BaseException:
        out.unlink(missing_ok=True)
        raise


# --- ext4 --------------------------------------------------------------------------------------

EXT4_BLOCK = 4096
EXT4_INODE_SIZE = 256
EXT4_INODE_RATIO = 16384  # bytes per inode, the ext4 default
EXT4_BLOCKS_PER_GROUP = 8 * EXT4_BLOCK
EXT4_DESC_PER_BLOCK = EXT4_BLOCK // 64  # 64-bit group descriptors
EXT4_FIRST_INO = 11  # inodes 1-10 are reserved, 11 is lost+found
EXT4_MIN = 8 * MIB  # below 2048 blocks mke2fs makes no journal
_DIR_BLOCK_USABLE = EXT4_BLOCK - 12  # metadata_csum tail
_FAST_SYMLINK_MAX = 59  # targets up to this length live in the inode
_INODE_XATTR_SPACE = EXT4_INODE_SIZE - 128 - 32 - 8  # after i_extra_isize, header, end marker

# Our own mke2fs.conf, so the host's /etc/mke2fs.conf cannot change the bytes: one inode ratio for
# every size (the size-based usage types must exist, or mke2fs warns). The features are e2fsprogs
# 1.47's ext4 minus orphan_file and metadata_csum_seed, which GRUB 2.06 cannot read.
MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 5.0
	lazy_itable_init = false

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
	floppy = {
		inode_ratio = 16384
	}
	small = {
		inode_ratio = 16384
	}
	big = {
		inode_ratio = 16384
	}
	huge = {
		inode_ratio = 16384
	}
"""

# mke2fs -d failing for lack of room.
_EXT4_FULL = ("Could not allocate block", "Could not allocate inode", "No space left",
              "No free space in the directory", "journal size too big")


def ext4_journal_blocks(blocks: int) -> int:
    """The journal mke2fs gives a filesystem of ``blocks`` (``ext2fs_default_journal_size``)."""
    for limit, journal in ((2048, 0), (32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192),
                           (4096 * 1024, 16384), (8192 * 1024, 32768), (16384 * 1024, 65536),
                           (32768 * 1024, 131072)):
        if blocks < limit:
            return journal
    return 262144


def _has_super(group: int) -> bool:
    """Groups 0, 1 and the powers of 3, 5 and 7 hold superblock copies (sparse_super)."""
    if group <= 1:
        return True
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


def _backup_groups(groups: int) -> int:
    count = min(groups, 2)
    for base in (3, 5, 7):
        power = base
        while power < groups:
            count += 1
            power *= base
    return count


@dataclass(frozen=True)
class Ext4Geometry:
    """What mke2fs makes of a size with our options (``ext2fs_initialize``)."""

    blocks: int  # after dropping a last group too small for its own metadata
    inodes: int
    overhead: int  # blocks taken before the first file: metadata, journal, /, lost+found


def ext4_geometry(size: int) -> Ext4Geometry:
    """The blocks, inodes and metadata blocks mke2fs gives an ext4 of ``size`` bytes."""
    blocks = size // EXT4_BLOCK
    wanted_inodes = size // EXT4_INODE_RATIO
    per_block = EXT4_BLOCK // EXT4_INODE_SIZE
    while True:
        groups = _ceil(blocks, EXT4_BLOCKS_PER_GROUP)
        desc_blocks = _ceil(groups, EXT4_DESC_PER_BLOCK)
        # Inodes per group fill whole inode-table blocks.
        itable = _ceil(_ceil(wanted_inodes, groups), per_block)
        # Reserved GDT blocks let resize2fs grow the filesystem 1024-fold (up to 2^32 blocks).
        max_blocks = min(blocks * 1024, 0xFFFFFFFF)
        rsv_gdt = min(_ceil(_ceil(max_blocks, EXT4_BLOCKS_PER_GROUP), EXT4_DESC_PER_BLOCK)
                      - desc_blocks, EXT4_BLOCK // 4)
        sb_copy = 1 + desc_blocks + rsv_gdt
        last = 2 + itable + (sb_copy if _has_super(groups - 1) else 0)
        rem = blocks % EXT4_BLOCKS_PER_GROUP
        if groups > 1 and rem and rem < last + 50:
            blocks -= rem  # mke2fs drops a last group that would be nearly all metadata
            continue
        break
    overhead = (groups * (2 + itable) + _backup_groups(groups) * sb_copy
                + ext4_journal_blocks(blocks)
                + 1 + 4 + 1)  # root dir, lost+found (16 KiB), the resize inode's dind block
    return Ext4Geometry(blocks, itable * per_block * groups, overhead)


def _dir_blocks(names: Sequence[str]) -> int:
    used = 24 + sum(8 + (len(n.encode("utf-8", "surrogateescape")) + 3) // 4 * 4 for n in names)
    if used <= _DIR_BLOCK_USABLE:
        return 1
    # Linear directories (ext2fs_link) waste the tail of each block: assume 7/8 full.
    return _ceil(used * 8, _DIR_BLOCK_USABLE * 7)


def _xattr_block(xattrs: Sequence[tuple[str, bytes]]) -> int:
    need = sum(16 + (len(name) + 3) // 4 * 4 + (len(value) + 3) // 4 * 4 for name, value in xattrs)
    return 1 if need > _INODE_XATTR_SPACE else 0


def ext4_needs(entries: Iterable[Entry]) -> tuple[int, int]:
    """(data blocks, inodes) the entries take in ext4 beyond what mke2fs itself creates."""
    items = list(entries)
    children: dict[str, list[str]] = {}
    for e in items:
        if e.path != "/":
            children.setdefault(_parent(e.path), []).append(e.path.rsplit("/", 1)[1])
    blocks = inodes = 0
    for e in items:
        if e.kind == "hardlink":
            continue
        if e.path not in ("/", "/lost+found"):
            inodes += 1
        blocks += _xattr_block(e.xattrs)
        if e.kind == "file":
            data = _ceil(e.size, EXT4_BLOCK)
            # An extent maps up to a group; crossing into the next may split one more. Over
            # four, they need extent-tree blocks of 340 each.
            extents = 2 * _ceil(data, EXT4_BLOCKS_PER_GROUP)
            blocks += data + (_ceil(extents, 340) if extents > 4 else 0)
        elif e.kind == "symlink" and len(e.target.encode("utf-8", "surrogateescape")) \
                > _FAST_SYMLINK_MAX:
            blocks += 1
        elif e.kind == "dir":
            used = _dir_blocks(children.get(e.path, []))
            # / and lost+found already count in the geometry's overhead (1 and 4 blocks).
            blocks += max(0, used - {"/": 1, "/lost+found": 4}.get(e.path, 0))
    return blocks, inodes


def ext4_min_size(tree: Tree) -> int:
    """The smallest ext4 (bytes, whole MiB) :func:`make_ext4` can write ``tree`` into.

    Models mke2fs's layout with our options (4 KiB blocks, an inode per 16 KiB, the default
    journal for the size) plus 1 % + 1 MiB for what the model does not see (extent blocks of
    fragmented files, directory slack). The filesystem is then nearly full: leave headroom.
    """
    data, inodes = ext4_needs(tree.entries())
    data += data // 100 + MIB // EXT4_BLOCK
    size = max(EXT4_MIN, _mib(data * EXT4_BLOCK) * MIB)
    while True:
        geo = ext4_geometry(size)
        journal = ext4_journal_blocks(geo.blocks)
        short_blocks = max(data - (geo.blocks - geo.overhead),
                           # mke2fs refuses a journal over half the free blocks
                           2 * journal - (geo.blocks - geo.overhead + journal))
        short_inodes = inodes - (geo.inodes - EXT4_FIRST_INO)
        if short_blocks <= 0 and short_inodes <= 0:
            return size
        size += max(MIB, _mib(max(short_blocks * EXT4_BLOCK,
                                  short_inodes * EXT4_INODE_RATIO)) * MIB)


def debugfs_quote(text: str) -> str:
    """``text`` as one debugfs (libss) argument: in double quotes, ``"`` doubled."""
    return '"' + text.replace('"', '""') + '"'


def _time_extra(t: int) -> int:
    """The epoch bits of ``*_extra`` for ``t`` (nanoseconds are 0): 0 until 2038."""
    low = (t & 0xFFFFFFFF) - ((t & 0x80000000) << 1)  # t as a signed 32-bit number
    return ((t - low) >> 32) & 3


@dataclass(frozen=True)
class DebugfsScript:
    """A debugfs command file and the xattr values it reads (``ea_set -f <name>``), which the
    caller writes under those names into the directory debugfs runs in."""

    text: str
    values: tuple[tuple[str, bytes], ...]


# debugfs reads its command file with fgets() into BUFSIZ (8192) bytes and cuts lines at '\r'.
_DEBUGFS_LINE_MAX = 8190


def debugfs_script(entries: Iterable[Entry], epoch: int) -> DebugfsScript:
    """The debugfs commands that give an ext4 made by ``mke2fs -d`` the entries' metadata.

    In order: device nodes and fifos (``mknod``; they are not staged), then for every inode but
    hard links (whose file is staged as a hard link, which ``mke2fs -d`` keeps) the mode (type
    bits included), owner, the four times (``min(mtime, epoch)``, ``*_extra`` = epoch bits, no
    nanoseconds) and xattrs (``ea_set -f``). ``/lost+found`` is root 0700 unless in the tree.
    debugfs's ``mknod`` links its name literally into the current directory, so it runs after
    ``cd`` into the parent.
    """
    items = list(entries)
    by_path = {e.path: e for e in items}
    if "/lost+found" not in by_path:
        items.append(Entry("/lost+found", "dir", 0o700, mtime=epoch))
    lines: list[str] = []
    values: dict[bytes, str] = {}

    def add(entry: Entry, *words: str) -> None:
        line = " ".join(words)
        if "\n" in line or "\r" in line:
            raise BuildError(STEP, f"{entry.path!r}: debugfs cannot express a name with a "
                                   "newline or carriage return")
        if len(line.encode("utf-8", "surrogateescape")) > _DEBUGFS_LINE_MAX:
            raise BuildError(STEP, f"{entry.path[:80]}…: path too long for a debugfs command")
        lines.append(line)

    for e in items:
        if e.kind in _SPECIAL:
            add(e, "cd", debugfs_quote(_parent(e.path)))
            name = debugfs_quote(e.path.rsplit("/", 1)[1])
            if e.kind == "fifo":
                add(e, "mknod", name, "p")
                continue
            major, minor = e.rdev
            if not (0 <= major <= 0xFFFF and 0 <= minor <= 0xFFFF):
                raise BuildError(STEP, f"{e.path}: device {major}:{minor} does not fit "
                                       "debugfs's mknod (16-bit major and minor)")
            add(e, "mknod", name, "c" if e.kind == "chardev" else "b", str(major), str(minor))
        elif e.kind == "hardlink" and _resolve(e, by_path).kind != "file":
            raise BuildError(STEP, f"{e.path}: hard link to a {_resolve(e, by_path).kind}")
    if lines:
        lines.append("cd /")
    for e in items:
        if e.kind == "hardlink":
            continue
        p = debugfs_quote(e.path)
        add(e, "sif", p, "mode", f"0{S_IFMT[e.kind] | (e.mode & 0o7777):o}")
        # "uid"/"gid" set both 16-bit halves (i_uid and l_i_uid_high): e2fsprogs 1.47.
        add(e, "sif", p, "uid", str(e.uid))
        add(e, "sif", p, "gid", str(e.gid))
        t = _clamp_time(e.mtime, epoch)
        for field in ("atime", "mtime", "ctime", "crtime"):
            add(e, "sif", p, field, f"@{t}")
            add(e, "sif", p, f"{field}_extra", str(_time_extra(t)))
        for name, value in e.xattrs:
            fname = values.setdefault(value, f"xattr-{len(values):06d}")
            add(e, "ea_set", "-f", fname, p, debugfs_quote(name))
    return DebugfsScript("".join(f"{line}\n" for line in lines),
                         tuple((fname, value) for value, fname in values.items()))


_DEBUGFS_BANNER = re.compile(r"^debugfs \d+\.\d+")


def _debugfs_words(line: str) -> list[str]:
    """Split a line the way libss does (whitespace; double quotes, ``""`` inside them)."""
    words: list[str] = []
    word: list[str] = []
    in_word = quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if quoted:
            if c == '"' and line[i + 1:i + 2] == '"':
                word.append('"')
                i += 1
            elif c == '"':
                quoted = False
            else:
                word.append(c)
        elif c in " \t":
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            in_word = True
            if c == '"':
                quoted = True
            else:
                word.append(c)
        i += 1
    if in_word:
        words.append("".join(word))
    return words


def debugfs_failure(script: str, stderr: str) -> str | None:
    """The first error debugfs reported (it exits 0 regardless), with the command it most
    likely came from, or None. debugfs prints errors to stderr and echoes commands to stdout,
    so the two cannot be interleaved: the command is the first one whose path, value file or
    quoted argument the message names, else the one sharing the longest word with it."""
    errors = [line for line in stderr.splitlines()
              if line.strip() and not _DEBUGFS_BANNER.match(line)]
    if not errors:
        return None
    message = errors[0].strip()
    commands = [(command, _debugfs_words(command)[1:]) for command in script.splitlines()]
    for command, words in commands:
        if any(message.startswith(f"{w}:") or f"'{w}'" in message or f'"{w}"' in message
               for w in words):
            return f"{message} (in: {command})"
    # Else the command with the longest word the message contains (a field name, a value).
    best, longest = None, 2
    for command, words in commands:
        for w in words:
            if len(w) > longest and w in message:
                best, longest = command, len(w)
    return f"{message} (in: {best})" if best else message


def make_ext4(tree: Tree, out: Path, *, size: int, uuid: str, label: str, epoch: int,
              workdir: Path) -> None:
    """Write ``tree`` as an ext4 filesystem of ``size`` bytes to ``out``, as any user.

    ``mke2fs -d`` copies a staged copy of the tree (``workdir/staging``, removed afterwards),
    then :func:`debugfs_script` fixes metadata. :data:`MKE2FS_CONF` replaces the host's
    mke2fs.conf, ``E2FSPROGS_FAKE_TIME`` pins the superblock times and ``-U``/``hash_seed`` the
    identifiers. A size too small for the tree (see :func:`ext4_min_size`) is a BuildError
    saying so; so is any error debugfs reports, naming the command. ``out`` is removed on error.
    """
    _check_label(label, EXT4_LABEL_MAX, "ext4")
    if size % EXT4_BLOCK:
        raise BuildError(STEP, f"ext4 size {size} is not a multiple of {EXT4_BLOCK}")
    if size < EXT4_MIN:
        raise _too_small("ext4", size, tree)
    workdir.mkdir(parents=True, exist_ok=True)
    staging = workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    conf = workdir / "mke2fs.conf"
    conf.write_text(MKE2FS_CONF)
    env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": str(conf.resolve()), "TZ": "UTC"}
    journal = ext4_journal_blocks(ext4_geometry(size).blocks) * EXT4_BLOCK // MIB
    script = debugfs_script(tree.entries(), epoch)
    with _output(out, size):
        try:
            tree.materialize(staging)
            proc.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(EXT4_BLOCK),
                      "-I", str(EXT4_INODE_SIZE), "-i", str(EXT4_INODE_RATIO),
                      "-J", f"size={journal}", "-O", "^metadata_csum_seed,^orphan_file",
                      "-L", label, "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0",
                      "-d", str(staging), str(out)], env=env)
        except CommandError as exc:
            if any(s in exc.stderr_tail for s in _EXT4_FULL):
                raise _too_small("ext4", size, tree) from exc
            raise BuildError(STEP, f"mke2fs failed: {_last_line(exc.stderr_tail)}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        values = workdir / "xattrs"
        shutil.rmtree(values, ignore_errors=True)
        values.mkdir()
        for fname, value in script.values:
            (values / fname).write_bytes(value)
        commands = workdir / "debugfs.cmd"
        _write_text(commands, script.text)
        done = proc.run(["debugfs", "-w", "-f", str(commands.resolve()), str(out.resolve())],
                        env=env, cwd=values, check=False)
        failure = debugfs_failure(script.text, done.stderr)
        if failure or done.rc != 0:
            raise BuildError(STEP, f"debugfs: {failure or _last_line(done.stderr)}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


# --- XFS ---------------------------------------------------------------------------------------

_PROTO_TYPE = {"file": "-", "dir": "d", "symlink": "l", "chardev": "c", "blockdev": "b",
               "fifo": "p"}
_XFS_FULL = ("No space left", "cannot reserve space", "cannot allocate space",
             "error allocating space")
XFS_BLOCK = 4096
XFS_FILE_MAX = (1 << 31) - 1  # mkfs.xfs 6.1 reads each file with one read() into an int size


def _proto_mode(entry: Entry) -> str:
    m = entry.mode
    return (f"{_PROTO_TYPE[entry.kind]}{'u' if m & 0o4000 else '-'}"
            f"{'g' if m & 0o2000 else '-'}{m & 0o777:03o}")


def _check_xfs_name(entry: Entry) -> str:
    name = entry.path.rsplit("/", 1)[1]
    if any(c in name for c in " \t\n"):
        raise BuildError(STEP, f"{entry.path!r}: an XFS protofile cannot express a name "
                               "containing whitespace (use ext4)")
    if name.startswith(":") or name == "$":
        raise BuildError(STEP, f"{entry.path!r}: an XFS protofile cannot express a name "
                               "starting with ':' or a name '$' (use ext4)")
    if entry.path.endswith("\\"):
        raise BuildError(STEP, f"{entry.path!r}: xfs_db cannot address a path ending in a "
                               "backslash (use ext4)")
    return name


def xfs_protofile(entries: Iterable[Entry], sources: Mapping[str, str]) -> str:
    """The ``mkfs.xfs -p`` protofile for the entries.

    ``sources`` maps each regular file's path to the token naming its content (a path without
    whitespace, relative to mkfs.xfs's working directory). Format (xfsprogs ``mkfs/proto.c``):
    a boot-image line and "0 0", the root ``d--755 0 0``, then per child ``name mode uid gid``
    plus the source, the link text or ``major minor``; ``$`` closes a directory.
    What it cannot express, and how :func:`make_xfs` copes: the sticky bit (the mode string has
    only u and g: set by :func:`xfs_db_script`), times (ditto), hard links (each link becomes a
    copy: same content and metadata, its own inode), xattrs (dropped), names with whitespace,
    starting with ':' (a comment) or equal to '$' (BuildError).
    """
    items = list(entries)
    by_path = {e.path: e for e in items}
    children: dict[str, list[Entry]] = {}
    for e in items:
        if e.path == "/":
            continue
        if _parent(e.path) not in by_path and _parent(e.path) != "/":
            raise BuildError(STEP, f"{e.path}: parent directory missing from the tree")
        children.setdefault(_parent(e.path), []).append(e)
    root = by_path.get("/", Entry("/", "dir", 0o755))
    lines = ["/dev/null", "0 0", f"{_proto_mode(root)} {root.uid} {root.gid}"]
    # Depth-first with an explicit stack: (directory, index of its next child).
    stack: list[tuple[str, int]] = [("/", 0)]
    while stack:
        path, i = stack.pop()
        kids = children.get(path, [])
        indent = "  " * len(stack)
        if i == len(kids):
            lines.append(f"{indent}$")
            continue
        stack.append((path, i + 1))
        e = kids[i]
        name = _check_xfs_name(e)
        inode = _resolve(e, by_path)
        words = [f"{indent}  {name}", _proto_mode(inode), str(inode.uid), str(inode.gid)]
        if inode.kind == "file":
            words.append(sources[inode.path])
        elif inode.kind == "symlink":
            if not inode.target or inode.target.startswith(":") or any(
                    c in inode.target for c in " \t\n"):
                raise BuildError(STEP, f"{e.path!r}: an XFS protofile cannot express the "
                                       f"symlink target {inode.target!r} (use ext4)")
            words.append(inode.target)
        elif inode.kind in ("chardev", "blockdev"):
            major, minor = inode.rdev
            if not (0 <= major <= 0x1FF and 0 <= minor <= 0x3FFFF):
                raise BuildError(STEP, f"{e.path}: device {major}:{minor} does not fit XFS's "
                                       "device number (9-bit major, 18-bit minor)")
            words += [str(major), str(minor)]
        lines.append(" ".join(words))
        if inode.kind == "dir":
            if e.kind == "hardlink":
                raise BuildError(STEP, f"{e.path}: hard link to a directory")
            stack.append((e.path, 0))
    return "".join(f"{line}\n" for line in lines)


XFS_LOG = 64 * MIB  # mkfs.xfs 6.1's internal log from 300 MiB to 128 GiB
XFS_AGCOUNT = 4  # mkfs.xfs 6.1's allocation groups below 4 TiB
_XFS_INODE = 512
_XFS_INLINE = 336  # a v5 inode's literal area: short directories and symlinks live there


def _xfs_fits(files: Sequence[int], ag_blocks: int, shared: int) -> bool:
    """Whether first fit, in creation order, places every file (in blocks) whole into one of
    the allocation groups, which also share ``shared`` metadata blocks; one holds the log."""
    free = [ag_blocks * 98 // 100 - shared // XFS_AGCOUNT] * XFS_AGCOUNT
    free[XFS_AGCOUNT // 2] -= XFS_LOG // XFS_BLOCK
    for blocks in files:
        for ag, room in enumerate(free):
            if room >= blocks:
                free[ag] -= blocks
                break
        else:
            return False
    return True


def xfs_min_size(tree: Tree) -> int:
    """A size (bytes, whole MiB, ≥ 300 MiB) :func:`make_xfs` can write ``tree`` into.

    mkfs.xfs 6.1 must find each file one contiguous extent inside one of the four allocation
    groups, one of which holds the 64 MiB log. So each group gets room for the log plus 5/4 of a
    quarter of everything, and the files (hard links are copies) must pack first-fit in creation
    order into groups that share the other blocks (512-byte inodes in chunks of 64, directory
    and long-symlink blocks) and 2 % of metadata. Generous (mkfs.xfs fails once the log's group
    is full), still not XFS's allocator: :func:`make_xfs` checks every file afterwards.
    """
    items = tree.entries()
    by_path = {e.path: e for e in items}
    names: dict[str, int] = {}
    files: list[int] = []
    shared = _ceil(len(items) + 3, 64) * 64 * _XFS_INODE // XFS_BLOCK  # + 3 realtime/root
    for e in items:
        if e.path != "/":
            parent = _parent(e.path)
            names[parent] = names.get(parent, 0) + 12 + len(e.path) - len(parent)
        inode = _resolve(e, by_path)
        if inode.kind == "file":
            files.append(_ceil(inode.size, XFS_BLOCK))
        elif inode.kind == "symlink" and len(inode.target.encode("utf-8", "surrogateescape")) \
                > _XFS_INLINE:
            shared += 1
    shared += sum(_ceil(2 * used, XFS_BLOCK) + 1 for used in names.values() if used > _XFS_INLINE)
    # Directories spread over the groups, and their files follow them: the log's group must
    # hold its share, plus a quarter, or directory updates there fail (ENOSPC in mkfs.xfs).
    ag = max(XFS_MIN // XFS_AGCOUNT // XFS_BLOCK,
             XFS_LOG // XFS_BLOCK + (sum(files) + shared) * 5 // (4 * XFS_AGCOUNT),
             XFS_LOG // XFS_BLOCK + max(files, default=0))
    while not _xfs_fits(files, ag, shared):
        ag += max(MIB // XFS_BLOCK, ag // 50)
    return _mib(ag * XFS_AGCOUNT * XFS_BLOCK) * MIB


def _bigtime(t: int) -> int:
    """An XFS bigtime timestamp: nanoseconds since 1901-12-13 20:45:52 UTC (-2**31 s)."""
    return (t + (1 << 31)) * 1_000_000_000


def xfs_db_script(entries: Iterable[Entry], epoch: int) -> str:
    """``xfs_db -x`` commands setting every inode's full mode (the protofile loses the sticky
    bit, and mkfs adds setgid to directories under setgid ones) and its four times to
    ``min(mtime, epoch)``. The filesystem must have bigtime (raw 64-bit nanosecond values)."""
    items = list(entries)
    by_path = {e.path: e for e in items}
    lines: list[str] = []
    for e in items:
        if e.path != "/":
            _check_xfs_name(e)
        inode = _resolve(e, by_path)
        t = _bigtime(_clamp_time(inode.mtime, epoch))
        lines += [f"path {e.path}",
                  f"write core.mode 0{S_IFMT[inode.kind] | (inode.mode & 0o7777):o}",
                  *(f"write {field}.sec {t}" for field in
                    ("core.atime", "core.mtime", "core.ctime", "v3.crtime"))]
    return "".join(f"{line}\n" for line in lines)


def xfs_db_failure(script: str, stdout: str) -> str | None:
    """The first failing command of an :func:`xfs_db_script` run, with xfs_db's message.

    On success ``path`` prints nothing (on failure ``<path>: <error>``) and each ``write`` one
    ``field = value`` line. xfs_db prints its errors to stdout too, in order, so the output can
    be walked command by command.
    """
    output = [line for line in stdout.splitlines() if line.strip()]
    pos = 0
    for command in script.splitlines():
        line = output[pos] if pos < len(output) else None
        if command.startswith("write "):
            field = command.split()[1]
            if line is None or not line.startswith(f"{field} = "):
                return f"{line or 'no output'} (in: {command})"
            pos += 1
        elif line is not None and line.startswith(f"{command[len('path '):]}: "):
            return f"{line} (in: {command})"  # path_f's "<path>: <strerror>"
    return f"unexpected output: {output[pos]}" if pos < len(output) else None


def xfs_short_files(files: Sequence[tuple[str, int]], stdout: str) -> list[str]:
    """Paths whose extents cover less than their size, from ``xfs_db`` output of
    ``echo @<i>``, ``path``, ``bmap`` per ``(path, size)`` in ``files``."""
    mapped = [0] * len(files)
    current = -1
    for line in stdout.splitlines():
        if line.startswith("@"):
            current = int(line[1:].strip())
        elif line.startswith("data offset") and current >= 0:
            mapped[current] += int(line.split(" count ")[1].split()[0])
    return [path for (path, size), blocks in zip(files, mapped, strict=True)
            if blocks * XFS_BLOCK < size]


def make_xfs(tree: Tree, out: Path, *, size: int, uuid: str, label: str, epoch: int,
             workdir: Path) -> None:
    """Write ``tree`` as an XFS filesystem of ``size`` bytes (≥ 300 MiB) to ``out``, as any user.

    ``mkfs.xfs -p`` runs under ``faketime`` frozen at ``epoch`` (UTC); the feature set is pinned
    to what GRUB 2.06 as shipped by Debian 12 reads (v5 with bigtime and inobtcount; nrext64 off:
    GRUB learnt it only in 2.12). Then :func:`xfs_db_script` sets times and full modes.
    Limitations (see :func:`xfs_protofile`): xattrs are dropped (logged), hard links become
    copies, files must be < 2 GiB, and mkfs.xfs 6.1 writes each file as one extent without
    checking it got that much: every file's extents are verified afterwards, and a short one
    (the allocation group it landed in was too full) fails the build.
    """
    _check_label(label, XFS_LABEL_MAX, "XFS")
    if size < XFS_MIN:
        raise BuildError(STEP, "XFS needs at least 300 MiB (xfsprogs refuses smaller)")
    items = list(tree.entries())
    by_path = {e.path: e for e in items}
    for e in items:
        if e.kind == "file" and e.size > XFS_FILE_MAX:
            raise BuildError(STEP, f"{e.path}: {_mib(e.size)} MiB; mkfs.xfs 6.1 protofiles "
                                   "cannot hold files of 2 GiB or more (use ext4)")
    workdir.mkdir(parents=True, exist_ok=True)
    sources_dir = workdir / "xfs-sources"
    shutil.rmtree(sources_dir, ignore_errors=True)
    sources_dir.mkdir()
    # Content by short relative names (mkfs.xfs runs in sources_dir): host paths may hold spaces.
    sources: dict[str, str] = {}
    for e in items:
        if e.kind == "file":
            token = f"f{len(sources):07d}"
            if e.source is None:
                (sources_dir / token).touch()
            else:
                (sources_dir / token).symlink_to(Path(e.source).absolute())
            sources[e.path] = token
    proto = workdir / "xfs.proto"
    _write_text(proto, xfs_protofile(items, sources))
    dropped = sum(len(e.xattrs) for e in items if e.kind != "hardlink")
    if dropped:
        log.warning("XFS: dropped %d extended attributes (protofiles cannot express them)",
                    dropped)
    copies = sum(1 for e in items if e.kind == "hardlink")
    if copies:
        log.info("XFS: %d hard links written as copies (protofiles have no hard links)", copies)

    script = xfs_db_script(items, epoch)
    _write_text(workdir / "xfs-fixup.cmd", script)
    # Each regular file (hard links are copies, so each path) must be fully mapped.
    files = [(e.path, _resolve(e, by_path).size) for e in items
             if e.kind in ("file", "hardlink") and _resolve(e, by_path).kind == "file"
             and _resolve(e, by_path).size > 0]
    _write_text(workdir / "xfs-verify.cmd",
                "".join(f"echo @{i}\npath {path}\nbmap\n" for i, (path, _) in enumerate(files)))
    frozen = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    with _output(out, size):
        try:
            proc.run(["faketime", "-f", frozen, "mkfs.xfs", "-q",
                      "-m", "crc=1,finobt=1,rmapbt=0,reflink=1,bigtime=1,inobtcount=1,"
                            f"uuid={uuid}",
                      "-i", "sparse=1,nrext64=0", "-n", "ftype=1", "-L", label,
                      "-p", str(proto.resolve()), str(out.resolve())],
                     env={"TZ": "UTC"}, cwd=sources_dir)
        except CommandError as exc:
            if any(s in exc.stderr_tail for s in _XFS_FULL):
                raise _too_small("XFS", size, tree) from exc
            raise BuildError(STEP, f"mkfs.xfs failed: {_last_line(exc.stderr_tail)}") from exc
        finally:
            shutil.rmtree(sources_dir, ignore_errors=True)

        # xfs_db splits its arguments on whitespace: command files by relative name.
        done = proc.run(["xfs_db", "-r", "-c", "source xfs-verify.cmd", str(out.resolve())],
                        cwd=workdir, check=False)
        short = xfs_short_files(files, done.stdout)
        if short:
            raise BuildError(STEP, f"XFS of {size // MIB} MiB: {short[0]} did not get "
                                   "contiguous space (mkfs.xfs 6.1 writes each file as one "
                                   "extent) — give a larger --size or omit it")
        if done.rc != 0:
            raise BuildError(STEP, f"xfs_db: {_last_line(done.stdout + done.stderr)}")
        done = proc.run(["xfs_db", "-x", "-c", "source xfs-fixup.cmd", str(out.resolve())],
                        cwd=workdir, check=False)
        failure = xfs_db_failure(script, done.stdout)
        if failure or done.rc != 0:
            raise BuildError(STEP, f"xfs_db: {failure or _last_line(done.stderr)}")


# --- FAT (EFI system partition) ----------------------------------------------------------------

_FAT_LABEL_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 !#$%&'()-@^_`{}~")


def _fat_path(path: str) -> tuple[str, ...]:
    parts = tuple(p for p in path.split("/") if p)
    if not parts or any(p in (".", "..") or "\\" in p for p in parts):
        raise BuildError(STEP, f"{path!r}: not a valid path on the EFI system partition")
    return parts


def make_vfat(files: Mapping[str, Path | bytes], out: Path, *, size: int, volume_id: int,
              label: str, epoch: int, bits: int | None = None) -> None:
    """Write a FAT filesystem of ``size`` bytes holding ``files`` (``/EFI/BOOT/BOOTX64.EFI`` →
    host file or bytes) to ``out``.

    FAT32 from 64 MiB up, as the UEFI spec asks of an ESP; below that FAT16, which firmware
    reads too (FAT32 needs ≥ 65525 clusters, i.e. > 32 MiB, and mkfs.fat warns under 64 MiB).
    ``bits=12`` for a small image of a few MiB (an El Torito EFI boot image), where FAT16 does
    not fit (mkfs.fat refuses FAT16 under 10 MiB).
    ``--invariant`` plus ``-i``/``-n`` and ``SOURCE_DATE_EPOCH`` for mtools make it
    reproducible. The label is upper-cased (a DOS volume label).
    """
    label = label.upper()
    if len(label) > FAT_LABEL_MAX or not set(label) <= _FAT_LABEL_CHARS:
        raise BuildError(STEP, f"FAT label {label!r}: at most {FAT_LABEL_MAX} of A-Z 0-9 "
                               "space !#$%&'()-@^_`{}~")
    if not 0 <= volume_id <= 0xFFFFFFFF:
        raise BuildError(STEP, f"FAT volume id {volume_id:#x} does not fit 32 bits")
    if size % 512:
        raise BuildError(STEP, f"FAT size {size} is not a multiple of 512")
    targets: dict[tuple[str, ...], Path | bytes] = {}
    seen: dict[str, str] = {}
    for path, content in files.items():
        parts = _fat_path(path)
        folded = "/".join(parts).casefold()  # FAT names are case-insensitive
        if folded in seen:
            raise BuildError(STEP, f"{path!r} and {seen[folded]!r} name the same FAT file")
        seen[folded] = path
        targets[parts] = content
    dirs = sorted({parts[:i] for parts in targets for i in range(1, len(parts))},
                  key=lambda d: (len(d), d))
    for d in dirs:
        if "/".join(d).casefold() in seen:
            raise BuildError(STEP, f"{seen['/'.join(d).casefold()]!r} is both a file and a "
                                   "directory on the EFI system partition")
    if bits is None:
        bits = 32 if size >= FAT32_MIN else 16
    elif bits not in (12, 16, 32):
        raise BuildError(STEP, f"FAT{bits}: expected 12, 16 or 32")
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": os.devnull}
    with _output(out, size), tempfile.TemporaryDirectory(prefix="pyinit-vfat-") as tmp:
        try:
            proc.run(["mkfs.fat", "--invariant", "-F", str(bits), "-i", f"{volume_id:08X}",
                      "-n", label, str(out)], env=env)
        except CommandError as exc:
            raise BuildError(STEP, f"FAT{bits} of {size // MIB} MiB: mkfs.fat failed: "
                                   f"{_last_line(exc.stderr_tail)}") from exc
        # stdin is an empty pipe: a name clash prompt must fail, not wait.
        if dirs:
            proc.run(["mmd", "-i", str(out), *("::/" + "/".join(d) for d in dirs)], env=env,
                     input="")
        for n, (parts, content) in enumerate(sorted(targets.items())):
            if isinstance(content, bytes):
                src = Path(tmp) / f"file{n}"
                src.write_bytes(content)
            else:
                src = content
            proc.run(["mcopy", "-i", str(out), str(src), "::/" + "/".join(parts)], env=env,
                     input="")
