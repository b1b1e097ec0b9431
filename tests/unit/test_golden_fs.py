"""The filesystem writers without their tools: the debugfs script, the XFS protofile and xfs_db
script, the ext4 size model, error mapping, and the exact commands (through the recorder).

The ext4 geometry figures were measured with e2fsprogs 1.47.0 (``dumpe2fs -h``) using the same
mke2fs.conf and options as :func:`fs.make_ext4`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinit import proc
from pyinit.errors import CommandError
from pyinit.units import MIB
from pyinit_build.errors import BuildError
from pyinit_build.golden import fs
from pyinit_build.golden.tree import Entry, Tree
from tests.conftest import Recorder

EPOCH = 1_700_000_000
UUID = "5e7b0c1d-2a3f-4b5c-8d6e-7f8091a2b3c4"


def entries() -> list[Entry]:
    return [
        Entry("/", "dir", 0o755, mtime=EPOCH - 10),
        Entry("/dev", "dir", 0o755, mtime=EPOCH - 10),
        Entry("/dev/null", "chardev", 0o666, mtime=EPOCH - 10, rdev=(1, 3)),
        Entry("/run", "dir", 0o755, mtime=EPOCH - 10),
        Entry("/run/initctl", "fifo", 0o600, mtime=EPOCH - 10),
        Entry("/tmp", "dir", 0o1777, mtime=EPOCH + 99),
        Entry("/usr", "dir", 0o755, uid=100_000, gid=70_000, mtime=-5),
        Entry("/usr/su", "file", 0o4755, mtime=EPOCH - 1, size=3, source=Path("/src/su"),
              xattrs=(("security.capability", b"\x01\x02"), ("user.x", b"v"))),
        Entry("/usr/su2", "hardlink", 0o4755, mtime=EPOCH - 1, target="/usr/su"),
        Entry("/usr/link", "symlink", 0o777, mtime=EPOCH - 1, target="su"),
    ]


def sif(path: str, mode: str, uid: int, gid: int, t: int) -> list[str]:
    lines = [f'sif "{path}" mode {mode}', f'sif "{path}" uid {uid}', f'sif "{path}" gid {gid}']
    for field in ("atime", "mtime", "ctime", "crtime"):
        lines += [f'sif "{path}" {field} @{t}', f'sif "{path}" {field}_extra 0']
    return lines


# --- debugfs -----------------------------------------------------------------------------------

def test_debugfs_script_exact() -> None:
    script = fs.debugfs_script(entries(), EPOCH)
    assert script.text.splitlines() == [
        'cd "/dev"', 'mknod "null" c 1 3',
        'cd "/run"', 'mknod "initctl" p',
        "cd /",
        *sif("/", "040755", 0, 0, EPOCH - 10),
        *sif("/dev", "040755", 0, 0, EPOCH - 10),
        *sif("/dev/null", "020666", 0, 0, EPOCH - 10),
        *sif("/run", "040755", 0, 0, EPOCH - 10),
        *sif("/run/initctl", "010600", 0, 0, EPOCH - 10),
        *sif("/tmp", "041777", 0, 0, EPOCH),  # clamped to the epoch
        *sif("/usr", "040755", 100_000, 70_000, 0),  # before 1970: clamped to 0
        *sif("/usr/su", "0104755", 0, 0, EPOCH - 1),
        'ea_set -f xattr-000000 "/usr/su" "security.capability"',
        'ea_set -f xattr-000001 "/usr/su" "user.x"',
        # /usr/su2 is a hard link: mke2fs -d made it, it shares /usr/su's inode
        *sif("/usr/link", "0120777", 0, 0, EPOCH - 1),
        *sif("/lost+found", "040700", 0, 0, EPOCH),
    ]
    assert script.values == (("xattr-000000", b"\x01\x02"), ("xattr-000001", b"v"))


def test_debugfs_script_shares_equal_xattr_values() -> None:
    es = [Entry("/", "dir"), Entry("/a", "dir", xattrs=(("user.a", b"same"),)),
          Entry("/b", "dir", xattrs=(("user.b", b"same"),))]
    script = fs.debugfs_script(es, EPOCH)
    assert script.values == (("xattr-000000", b"same"),)
    assert script.text.count("ea_set -f xattr-000000 ") == 2


def test_debugfs_script_keeps_a_tree_lost_and_found() -> None:
    es = [Entry("/", "dir"), Entry("/lost+found", "dir", 0o755, uid=5)]
    text = fs.debugfs_script(es, EPOCH).text
    assert 'sif "/lost+found" mode 040755' in text and 'sif "/lost+found" uid 5' in text
    assert text.count('sif "/lost+found" mode') == 1


def test_debugfs_times_after_2038_carry_epoch_bits() -> None:
    late = 2**32 + 5
    text = fs.debugfs_script([Entry("/", "dir", mtime=late)], 2**33).text
    assert f'sif "/" mtime @{late}\nsif "/" mtime_extra 1\n' in text
    text = fs.debugfs_script([Entry("/", "dir", mtime=2**31)], 2**33).text
    assert 'sif "/" crtime_extra 1\n' in text
    text = fs.debugfs_script([Entry("/", "dir", mtime=2**31 - 1)], 2**33).text
    assert 'sif "/" crtime_extra 0\n' in text


@pytest.mark.parametrize("name", ['plain', 'with space', 'a "quoted" name', '""', "tab\there",
                                  "ünïcödé", "dollar$ and ; semicolon"])
def test_debugfs_quote_round_trips_through_the_libss_parser(name: str) -> None:
    quoted = fs.debugfs_quote(name)
    assert fs._debugfs_words(f"sif {quoted} mode 0100644") == ["sif", name, "mode", "0100644"]


def test_debugfs_script_quotes_odd_names() -> None:
    es = [Entry("/", "dir"), Entry('/a "b" c', "dir")]
    assert 'sif "/a ""b"" c" mode 040755' in fs.debugfs_script(es, EPOCH).text


@pytest.mark.parametrize("path", ["/new\nline", "/carriage\rreturn"])
def test_debugfs_script_refuses_newlines(path: str) -> None:
    with pytest.raises(BuildError, match="debugfs cannot express a name with a newline"):
        fs.debugfs_script([Entry("/", "dir"), Entry(path, "dir")], EPOCH)


def test_debugfs_script_refuses_wide_device_numbers() -> None:
    with pytest.raises(BuildError, match=r"/dev/x: device 1:70000 does not fit"):
        fs.debugfs_script([Entry("/", "dir"), Entry("/dev", "dir"),
                           Entry("/dev/x", "chardev", rdev=(1, 70000))], EPOCH)


def test_debugfs_failure_names_the_command() -> None:
    script = fs.debugfs_script(entries(), EPOCH).text
    banner = "debugfs 1.47.0 (5-Feb-2023)\n"
    assert fs.debugfs_failure(script, banner) is None
    assert fs.debugfs_failure(script, banner + "/usr/su: File not found by ext2_lookup \n") == (
        '/usr/su: File not found by ext2_lookup (in: sif "/usr/su" mode 0104755)')
    assert fs.debugfs_failure(script, "Couldn't parse '@0' for field atime.\n") == (
        "Couldn't parse '@0' for field atime. (in: sif \"/usr\" atime @0)")
    assert fs.debugfs_failure(script, "xattr-000001: No such file or directory\n") == (
        'xattr-000001: No such file or directory (in: ea_set -f xattr-000001 "/usr/su" '
        '"user.x")')
    assert fs.debugfs_failure(script, "sif: invalid field specifier: crtime_extra\n") == (
        'sif: invalid field specifier: crtime_extra (in: sif "/" crtime_extra 0)')
    assert fs.debugfs_failure(script, "something else\n") == "something else"


# --- ext4 sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize(("mib", "blocks", "inodes", "free"), [
    (9, 2304, 576, 1233), (16, 4096, 1024, 2997), (64, 16384, 4096, 15087),
    (128, 32768, 8192, 28135), (129, 32768, 8256, 28131),  # the tail group is dropped
    (200, 51200, 12800, 46242), (1024, 262144, 65536, 249189),
    (4100, 1049600, 262416, 1012631), (20000, 5120000, 1281120, 4995534),
])
def test_ext4_geometry_matches_mke2fs(mib: int, blocks: int, inodes: int, free: int) -> None:
    geo = fs.ext4_geometry(mib * MIB)
    assert (geo.blocks, geo.inodes, geo.blocks - geo.overhead) == (blocks, inodes, free)


def test_ext4_journal_sizes() -> None:
    assert [fs.ext4_journal_blocks(b) for b in (2047, 2048, 32767, 32768, 262144, 2**30)] == [
        0, 1024, 1024, 4096, 8192, 262144]


def test_ext4_min_size_small_tree_is_the_floor(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    t.write_file("/etc/hostname", b"x\n", mtime=EPOCH)
    assert fs.ext4_min_size(t) == 9 * MIB  # the journal (4 MiB) may take half the free blocks


def test_ext4_min_size_follows_content(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(b"")
    t.add(Entry("/big", "file", size=500 * MIB, source=blob))
    size = fs.ext4_min_size(t)
    geo = fs.ext4_geometry(size)
    assert size % MIB == 0 and 500 * MIB < size < 540 * MIB
    assert geo.blocks - geo.overhead >= 500 * MIB // 4096
    smaller = fs.ext4_geometry(size - MIB)
    assert smaller.blocks - smaller.overhead < 500 * MIB // 4096 * 1.01 + 256


def test_ext4_min_size_follows_inodes(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    for i in range(5000):
        t.add(Entry(f"/d{i % 10}/f{i}", "fifo"))
    size = fs.ext4_min_size(t)
    assert fs.ext4_geometry(size).inodes - 11 >= 5010
    assert fs.ext4_geometry(size - MIB).inodes - 11 < 5010


def test_ext4_needs_counts_blocks_of_dirs_symlinks_and_xattrs() -> None:
    es = [Entry("/", "dir"),
          Entry("/fast", "symlink", target="x" * 59), Entry("/slow", "symlink", target="x" * 60),
          Entry("/f", "file", size=4097, source=Path("/s")),
          Entry("/h", "hardlink", target="/f"),
          Entry("/x", "fifo", xattrs=(("security.selinux", b"v" * 100),))]
    assert fs.ext4_needs(es) == (1 + 2 + 1, 4)  # slow symlink, 2 data blocks, xattr block


# --- XFS ---------------------------------------------------------------------------------------

def test_xfs_protofile_exact() -> None:
    es = [*entries(), Entry("/dev/sda", "blockdev", 0o660, gid=6, rdev=(8, 0))]
    es.sort(key=lambda e: tuple(e.path.split("/")))
    proto = fs.xfs_protofile(es, {"/usr/su": "f0000000"})
    assert proto == (
        "/dev/null\n"
        "0 0\n"
        "d--755 0 0\n"
        "  dev d--755 0 0\n"
        "    null c--666 0 0 1 3\n"
        "    sda b--660 0 6 8 0\n"
        "  $\n"
        "  run d--755 0 0\n"
        "    initctl p--600 0 0\n"
        "  $\n"
        "  tmp d--777 0 0\n"  # the sticky bit comes from xfs_db_script
        "  $\n"
        "  usr d--755 100000 70000\n"
        "    link l--777 0 0 su\n"
        "    su -u-755 0 0 f0000000\n"
        "    su2 -u-755 0 0 f0000000\n"  # a hard link becomes a copy
        "  $\n"
        "$\n")


def test_xfs_protofile_mode_strings() -> None:
    es = [Entry("/", "dir", 0o2775, uid=1, gid=2), Entry("/a", "dir", 0o6750)]
    assert fs.xfs_protofile(es, {}).splitlines()[2:4] == ["d-g775 1 2", "  a dug750 0 0"]


@pytest.mark.parametrize(("path", "target", "match"), [
    ("/with space", "", "name containing whitespace"),
    ("/with\ttab", "", "name containing whitespace"),
    ("/:comment", "", "starting with ':'"),
    ("/$", "", "a name '\\$'"),
    ("/trailing\\", "", "ending in a backslash"),
    ("/link", "a target", "symlink target 'a target'"),
    ("/link", ":x", "symlink target ':x'"),
])
def test_xfs_protofile_refuses_what_it_cannot_express(path: str, target: str,
                                                      match: str) -> None:
    kind = "symlink" if target else "dir"
    with pytest.raises(BuildError, match=match):
        fs.xfs_protofile([Entry("/", "dir"), Entry(path, kind, target=target)], {})


def test_xfs_protofile_allows_colons_inside_names() -> None:
    proto = fs.xfs_protofile([Entry("/", "dir"), Entry("/a:b", "dir")], {})
    assert "  a:b d--755 0 0\n" in proto


def test_xfs_protofile_refuses_wide_devices() -> None:
    with pytest.raises(BuildError, match="does not fit XFS's device number"):
        fs.xfs_protofile([Entry("/", "dir"), Entry("/d", "chardev", rdev=(512, 0))], {})


def files_tree(tmp_path: Path, *sizes: int) -> Tree:
    t = Tree(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(b"")
    for i, size in enumerate(sizes):
        t.add(Entry(f"/data/f{i}", "file", size=size, source=blob))
    return t


def test_xfs_min_size_floor(tmp_path: Path) -> None:
    assert fs.xfs_min_size(files_tree(tmp_path, 10 * MIB)) == 300 * MIB


def test_xfs_min_size_a_group_holds_the_largest_file_beside_the_log(tmp_path: Path) -> None:
    size = fs.xfs_min_size(files_tree(tmp_path, 100 * MIB))
    assert size == 4 * (64 + 100) * MIB


def test_xfs_min_size_packs_whole_files(tmp_path: Path) -> None:
    t = files_tree(tmp_path, *[60 * MIB] * 12)
    size = fs.xfs_min_size(t)
    files, shared = [60 * MIB // 4096] * 12, 8
    assert fs._xfs_fits(files, size // 4 // 4096, shared)
    assert size >= 4 * (64 * MIB + 12 * 60 * MIB * 5 // 16)


def test_xfs_fits_first_fit() -> None:
    ag = 64 * MIB // 4096 + 100
    # four groups of ag*0.98 blocks; the third also holds the log
    assert fs._xfs_fits([ag * 98 // 100] * 3, ag, 0)
    assert not fs._xfs_fits([ag * 98 // 100] * 4, ag, 0)


def test_xfs_db_script_exact() -> None:
    es = [Entry("/", "dir", mtime=EPOCH + 5), Entry("/tmp", "dir", 0o1777, mtime=0),
          Entry("/f", "file", 0o644, mtime=EPOCH - 1, source=Path("/s")),
          Entry("/g", "hardlink", target="/f")]
    ns = 10**9
    assert fs.xfs_db_script(es, EPOCH).splitlines() == [
        "path /", "write core.mode 040755",
        *(f"write {f}.sec {(EPOCH + 2**31) * ns}"
          for f in ("core.atime", "core.mtime", "core.ctime", "v3.crtime")),
        "path /tmp", "write core.mode 041777",
        *(f"write {f}.sec {2**31 * ns}"
          for f in ("core.atime", "core.mtime", "core.ctime", "v3.crtime")),
        "path /f", "write core.mode 0100644",
        *(f"write {f}.sec {(EPOCH - 1 + 2**31) * ns}"
          for f in ("core.atime", "core.mtime", "core.ctime", "v3.crtime")),
        "path /g", "write core.mode 0100644",  # the copy of a hard link gets the file's
        *(f"write {f}.sec {(EPOCH - 1 + 2**31) * ns}"
          for f in ("core.atime", "core.mtime", "core.ctime", "v3.crtime")),
    ]


def test_xfs_db_failure_walks_the_output() -> None:
    script = "path /a\nwrite core.mode 040755\npath /b\nwrite core.mode 041777\n"
    ok = "core.mode = 040755\ncore.mode = 041777\n"
    assert fs.xfs_db_failure(script, ok) is None
    assert fs.xfs_db_failure(script, "core.mode = 040755\n/b: No such file or directory\n"
                                     "core.mode = 041777\n") == (
        "/b: No such file or directory (in: path /b)")
    assert fs.xfs_db_failure(script, "core.mode = 040755\nunable to convert value 'x'.\n") == (
        "unable to convert value 'x'. (in: write core.mode 041777)")
    assert fs.xfs_db_failure(script, "core.mode = 040755\n") == (
        "no output (in: write core.mode 041777)")
    assert fs.xfs_db_failure(script, ok + "extra\n") == "unexpected output: extra"
    assert fs.xfs_db_failure(script, "") == "no output (in: write core.mode 040755)"


def test_xfs_short_files() -> None:
    out = ("@0 \ndata offset 0 startblock 24 (0/24) count 19176 flag 0\n"
           "@1 \ndata offset 0 startblock 30 (0/30) count 1 flag 0\n@2 \n")
    files = [("/big", 100 * MIB), ("/small", 4096), ("/gone", 1)]
    assert fs.xfs_short_files(files, out) == ["/big", "/gone"]


# --- the commands ------------------------------------------------------------------------------

def small_tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "blobs")
    t.write_file("/etc/hostname", b"h\n", mtime=EPOCH)
    t.add(Entry("/dev/null", "chardev", 0o666, rdev=(1, 3)))
    return t


def xfs_db_answer(argv: list[str], cwd: Path) -> str:
    """What xfs_db prints for our command files when all goes well."""
    commands = (cwd / argv[3].split()[1]).read_text().splitlines()
    if argv[1] == "-r":  # verify: every file got one full extent
        return "".join(f"{c[5:]} \ndata offset 0 startblock 9 (0/9) count 99 flag 0\n"
                       for c in commands if c.startswith("echo "))
    return "".join(f"{c.split()[1]} = 0\n" for c in commands if c.startswith("write "))


@pytest.fixture
def runner() -> Iterator[list[tuple[list[str], dict[str, Any]]]]:
    """Like ``recorder``, keeping the keyword arguments too (env, cwd, input)."""
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def run(argv: list[str], **kwargs: Any) -> proc.Completed:
        args = [str(a) for a in argv]
        calls.append((args, kwargs))
        out = xfs_db_answer(args, kwargs["cwd"]) if args[0] == "xfs_db" else ""
        return proc.Completed(tuple(args), 0, out, "")

    previous = proc.set_runner(run)
    try:
        yield calls
    finally:
        proc.set_runner(previous)


def test_make_ext4_commands(tmp_path: Path,
                            runner: list[tuple[list[str], dict[str, Any]]]) -> None:
    out, work = tmp_path / "root.img", tmp_path / "work"
    fs.make_ext4(small_tree(tmp_path), out, size=64 * MIB, uuid=UUID, label="root",
                 epoch=EPOCH, workdir=work)
    (mke2fs, kw1), (debugfs, kw2) = runner
    assert mke2fs == [
        "mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-i", "16384",
        "-J", "size=4", "-O", "^metadata_csum_seed,^orphan_file", "-L", "root", "-U", UUID,
        "-E", f"hash_seed={UUID},root_owner=0:0", "-d", str(work / "staging"), str(out)]
    assert debugfs == ["debugfs", "-w", "-f", str((work / "debugfs.cmd").resolve()),
                       str(out.resolve())]
    conf = str((work / "mke2fs.conf").resolve())
    env = {"E2FSPROGS_FAKE_TIME": str(EPOCH), "MKE2FS_CONFIG": conf, "TZ": "UTC"}
    assert kw1["env"] == env and kw2["env"] == env and kw2["cwd"] == work / "xattrs"
    assert (work / "mke2fs.conf").read_text() == fs.MKE2FS_CONF
    assert 'mknod "null" c 1 3' in (work / "debugfs.cmd").read_text()
    assert out.stat().st_size == 64 * MIB
    assert not (work / "staging").exists()


def test_make_ext4_journal_follows_size(tmp_path: Path, recorder: Recorder) -> None:
    fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=200 * MIB, uuid=UUID,
                 label="r", epoch=EPOCH, workdir=tmp_path / "w")
    assert "size=16" in recorder.calls[0]


def failing(stderr: str) -> Any:
    def answer(argv: list[str]) -> proc.Completed:
        raise CommandError(argv, 1, stderr)
    return answer


def test_make_ext4_too_small(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["mke2fs"] = failing(
        '__populate_fs: Could not allocate block in ext2 filesystem while writing file "big"\n'
        "mke2fs: Could not allocate block in ext2 filesystem while populating file system\n")
    with pytest.raises(BuildError, match=r"^filesystem: ext4 of 16 MiB is too small for the "
                                         r"rootfs \(1 MiB of content\) — give a larger --size "
                                         "or omit it$"):
        fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=16 * MIB, uuid=UUID,
                     label="r", epoch=EPOCH, workdir=tmp_path / "w")
    assert not (tmp_path / "r.img").exists()


def test_make_ext4_below_the_floor_runs_nothing(tmp_path: Path, recorder: Recorder) -> None:
    with pytest.raises(BuildError, match="ext4 of 4 MiB is too small"):
        fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=4 * MIB, uuid=UUID,
                     label="r", epoch=EPOCH, workdir=tmp_path / "w")
    assert recorder.calls == []


def test_make_ext4_other_mke2fs_failure(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["mke2fs"] = failing("mke2fs: invalid UUID\n")
    with pytest.raises(BuildError, match=r"^filesystem: mke2fs failed: mke2fs: invalid UUID$"):
        fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=16 * MIB, uuid="x",
                     label="r", epoch=EPOCH, workdir=tmp_path / "w")


def test_make_ext4_debugfs_errors_fail_the_build(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["debugfs"] = proc.Completed(
        ("debugfs",), 0, "", "debugfs 1.47.0 (5-Feb-2023)\n/etc/hostname: File not found by "
                             "ext2_lookup \n")
    with pytest.raises(BuildError, match=r'^filesystem: debugfs: /etc/hostname: File not found '
                                         r'by ext2_lookup \(in: sif "/etc/hostname" mode '
                                         r'0100644\)$'):
        fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=16 * MIB, uuid=UUID,
                     label="r", epoch=EPOCH, workdir=tmp_path / "w")
    assert not (tmp_path / "r.img").exists()


def test_make_ext4_label_limit(tmp_path: Path, recorder: Recorder) -> None:
    with pytest.raises(BuildError, match="longer than 16 bytes"):
        fs.make_ext4(small_tree(tmp_path), tmp_path / "r.img", size=16 * MIB, uuid=UUID,
                     label="seventeen-chars-x", epoch=EPOCH, workdir=tmp_path / "w")
    assert recorder.calls == []


def test_make_xfs_commands(tmp_path: Path,
                           runner: list[tuple[list[str], dict[str, Any]]]) -> None:
    out, work = tmp_path / "root.img", tmp_path / "work"
    fs.make_xfs(small_tree(tmp_path), out, size=300 * MIB, uuid=UUID, label="root",
                epoch=EPOCH, workdir=work)
    (mkfs, kw1), (verify, kw2), (fixup, kw3) = runner
    assert mkfs == [
        "faketime", "-f", "2023-11-14 22:13:20", "mkfs.xfs", "-q",
        "-m", f"crc=1,finobt=1,rmapbt=0,reflink=1,bigtime=1,inobtcount=1,uuid={UUID}",
        "-i", "sparse=1,nrext64=0", "-n", "ftype=1", "-L", "root",
        "-p", str((work / "xfs.proto").resolve()), str(out.resolve())]
    assert kw1["env"] == {"TZ": "UTC"} and kw1["cwd"] == work / "xfs-sources"
    assert verify == ["xfs_db", "-r", "-c", "source xfs-verify.cmd", str(out.resolve())]
    assert fixup == ["xfs_db", "-x", "-c", "source xfs-fixup.cmd", str(out.resolve())]
    assert kw2["cwd"] == kw3["cwd"] == work
    assert (work / "xfs-verify.cmd").read_text() == "echo @0\npath /etc/hostname\nbmap\n"
    assert "  hostname ---644 0 0 f0000000\n" in (work / "xfs.proto").read_text()
    assert not (work / "xfs-sources").exists()


def test_make_xfs_minimum_size(tmp_path: Path, recorder: Recorder) -> None:
    with pytest.raises(BuildError, match=r"^filesystem: XFS needs at least 300 MiB \(xfsprogs "
                                         r"refuses smaller\)$"):
        fs.make_xfs(small_tree(tmp_path), tmp_path / "x.img", size=299 * MIB, uuid=UUID,
                    label="r", epoch=EPOCH, workdir=tmp_path / "w")
    with pytest.raises(BuildError, match="longer than 12 bytes"):
        fs.make_xfs(small_tree(tmp_path), tmp_path / "x.img", size=300 * MIB, uuid=UUID,
                    label="thirteen-char", epoch=EPOCH, workdir=tmp_path / "w")
    assert recorder.calls == []


def test_make_xfs_refuses_files_of_2_gib(tmp_path: Path, recorder: Recorder) -> None:
    t = small_tree(tmp_path)
    t.add(Entry("/huge", "file", size=2**31, source=tmp_path / "nothing"))
    with pytest.raises(BuildError, match=r"/huge: 2048 MiB; mkfs\.xfs 6\.1 protofiles cannot"):
        fs.make_xfs(t, tmp_path / "x.img", size=4096 * MIB, uuid=UUID, label="r",
                    epoch=EPOCH, workdir=tmp_path / "w")
    assert recorder.calls == []


def test_make_xfs_too_small(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["faketime"] = failing(
        "mkfs.xfs: cannot reserve space [28 - No space left on device]\n")
    with pytest.raises(BuildError, match="XFS of 300 MiB is too small for the rootfs"):
        fs.make_xfs(small_tree(tmp_path), tmp_path / "x.img", size=300 * MIB, uuid=UUID,
                    label="r", epoch=EPOCH, workdir=tmp_path / "w")


def test_make_xfs_short_extent_fails(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["xfs_db"] = proc.Completed(("xfs_db",), 0, "@0 \n", "")
    with pytest.raises(BuildError, match="/etc/hostname did not get contiguous space"):
        fs.make_xfs(small_tree(tmp_path), tmp_path / "x.img", size=300 * MIB, uuid=UUID,
                    label="r", epoch=EPOCH, workdir=tmp_path / "w")
    assert not (tmp_path / "x.img").exists()


# --- FAT ---------------------------------------------------------------------------------------

def test_make_vfat_commands(tmp_path: Path,
                            runner: list[tuple[list[str], dict[str, Any]]]) -> None:
    efi = tmp_path / "grubx64.efi"
    efi.write_bytes(b"MZ")
    out = tmp_path / "esp.img"
    fs.make_vfat({"/EFI/BOOT/BOOTX64.EFI": efi, "EFI/BOOT/grub.cfg": b"cfg",
                  "/startup.nsh": b"x"}, out, size=64 * MIB, volume_id=0x5079696E,
                 label="esp", epoch=EPOCH)
    argvs = [argv for argv, _ in runner]
    assert argvs[:2] == [
        ["mkfs.fat", "--invariant", "-F", "32", "-i", "5079696E", "-n", "ESP", str(out)],
        ["mmd", "-i", str(out), "::/EFI", "::/EFI/BOOT"]]
    assert argvs[2] == ["mcopy", "-i", str(out), str(efi), "::/EFI/BOOT/BOOTX64.EFI"]
    assert argvs[3][:2] + argvs[3][4:] == ["mcopy", "-i", "::/EFI/BOOT/grub.cfg"]
    assert argvs[4][4:] == ["::/startup.nsh"]
    for _, kwargs in runner:
        assert kwargs["env"]["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert out.stat().st_size == 64 * MIB


def test_make_vfat_writes_bytes_to_a_temporary_file(tmp_path: Path, recorder: Recorder) -> None:
    seen: list[bytes] = []

    def mcopy(argv: list[str]) -> proc.Completed:
        seen.append(Path(argv[3]).read_bytes())
        return proc.Completed(tuple(argv), 0, "", "")

    recorder.responses["mcopy"] = mcopy
    fs.make_vfat({"/a.cfg": b"content"}, tmp_path / "e.img", size=32 * MIB, volume_id=1,
                 label="E", epoch=EPOCH)
    assert seen == [b"content"]
    assert recorder.calls[0][:4] == ["mkfs.fat", "--invariant", "-F", "16"]
    assert [c[0] for c in recorder.calls] == ["mkfs.fat", "mcopy"]  # no directory to make


@pytest.mark.parametrize(("files", "label", "match"), [
    ({"/a": b""}, "TWELVE-CHARS", "FAT label 'TWELVE-CHARS'"),
    ({"/a": b""}, "A.B", "FAT label 'A.B'"),
    ({"/EFI/x": b"", "/efi/X": b""}, "E", "name the same FAT file"),
    ({"/EFI": b"", "/EFI/x": b""}, "E", "both a file and a directory"),
    ({"/../x": b""}, "E", "not a valid path"),
    ({"/": b""}, "E", "not a valid path"),
])
def test_make_vfat_refuses(tmp_path: Path, recorder: Recorder, files: dict[str, bytes],
                           label: str, match: str) -> None:
    with pytest.raises(BuildError, match=match):
        fs.make_vfat(files, tmp_path / "e.img", size=32 * MIB, volume_id=1, label=label,
                     epoch=EPOCH)
    assert recorder.calls == []


def test_make_vfat_mkfs_failure(tmp_path: Path, recorder: Recorder) -> None:
    recorder.responses["mkfs.fat"] = failing(
        "mkfs.fat: Attempting to create a too small or a too large filesystem\n")
    with pytest.raises(BuildError, match=r"^filesystem: FAT16 of 4 MiB: mkfs.fat failed: "
                                         "mkfs.fat: Attempting to create a too small"):
        fs.make_vfat({"/a": b""}, tmp_path / "e.img", size=4 * MIB, volume_id=1, label="E",
                     epoch=EPOCH)
    assert not (tmp_path / "e.img").exists()
