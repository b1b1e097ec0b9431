"""ELF64 parsing and the library closure: real host files, and synthetic images in a fake root."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from pyinit import elf

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
INTERP = "/lib64/ld-linux-x86-64.so.2"


def host_file(path: str) -> Path:
    if not os.path.exists(path):
        pytest.skip(f"{path} not on this host")
    return Path(path)


# --- real files from the (Debian amd64) host ---------------------------------------------------

def test_parse_dynamic_executable() -> None:
    info = elf.read_info(host_file("/bin/ls"))
    assert info is not None
    assert info.interp == INTERP
    assert "libc.so.6" in info.needed
    assert info.machine == 62 and info.soname is None


def test_parse_static_busybox_has_no_interp() -> None:
    info = elf.read_info(host_file("/bin/busybox"))
    assert info is not None
    assert info.interp is None and info.needed == ()


def test_parse_shared_object() -> None:
    info = elf.read_info(host_file("/usr/lib/x86_64-linux-gnu/libz.so.1"))
    assert info is not None
    assert info.interp is None
    assert info.soname == "libz.so.1"
    assert info.needed == ("libc.so.6",)


def test_not_elf() -> None:
    assert elf.read_info(host_file("/etc/hostname")) is None
    with pytest.raises(elf.ElfError):
        elf.parse(b"#!/bin/sh\n" + b"\0" * 64)


def test_closure_of_ls_keeps_symlinks() -> None:
    host_file("/bin/ls")
    paths = elf.closure(["/bin/ls"])
    assert LIBC in paths or os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6") in paths
    assert os.path.realpath(INTERP) in paths
    # every symlink crossed on the way to the interpreter is kept: /lib64 (merged /usr) and
    # the ld-linux-x86-64.so.2 link itself.
    real_lib64 = os.path.realpath("/lib64")
    assert f"{real_lib64}/ld-linux-x86-64.so.2" in paths
    if os.path.islink("/lib64"):
        assert "/lib64" in paths
    assert all(os.path.lexists(p) for p in paths)


def test_closure_of_static_binary_is_itself() -> None:
    host_file("/bin/busybox")
    assert elf.closure(["/bin/busybox"]) == {os.path.realpath("/bin/busybox")} | (
        {"/bin"} if os.path.islink("/bin") else set())


# --- synthetic ELF images ------------------------------------------------------------------------

def make_elf(*, interp: str | None = None, needed: tuple[str, ...] = (), runpath: str | None = None,
             rpath: str | None = None, soname: str | None = None, machine: int = 62) -> bytes:
    """A minimal ELF64 image: header, PT_LOAD over the whole file, PT_INTERP, PT_DYNAMIC."""
    strtab = b"\0"
    offsets: dict[str, int] = {}
    for s in (*needed, runpath, rpath, soname):
        if s is not None and s not in offsets:
            offsets[s] = len(strtab)
            strtab += s.encode() + b"\0"
    dyn = [(1, offsets[n]) for n in needed]
    if runpath is not None:
        dyn.append((29, offsets[runpath]))
    if rpath is not None:
        dyn.append((15, offsets[rpath]))
    if soname is not None:
        dyn.append((14, offsets[soname]))
    phnum = 3
    base = 64 + 56 * phnum
    interp_bytes = (interp or "").encode() + b"\0"
    strtab_off = base + len(interp_bytes)
    dyn_off = (strtab_off + len(strtab) + 7) & ~7
    dyn += [(5, strtab_off), (10, len(strtab)), (0, 0)]
    dyn_bytes = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    size = dyn_off + len(dyn_bytes)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 3, machine, 1, 0, 64, 0, 0, 64, 56, phnum,
                         64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 3 if interp else 6, 4, base, base, base,
                         len(interp_bytes), len(interp_bytes), 1)
    phdrs += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn_bytes),
                         len(dyn_bytes), 8)
    body = header + phdrs + interp_bytes + strtab
    return body + b"\0" * (dyn_off - len(body)) + dyn_bytes


def test_parse_synthetic() -> None:
    info = elf.parse(make_elf(interp="/lib/ld.so", needed=("liba.so.1", "libb.so.2"),
                              runpath="$ORIGIN/../lib:/opt/lib", soname="libx.so.1"))
    assert info.interp == "/lib/ld.so"
    assert info.needed == ("liba.so.1", "libb.so.2")
    assert info.runpath == ("$ORIGIN/../lib", "/opt/lib")
    assert info.rpath == ()
    assert info.soname == "libx.so.1"


def put(root: Path, path: str, data: bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def link(root: Path, path: str, target: str) -> None:
    where = root / path.lstrip("/")
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(target)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """Merged-/usr layout with absolute and relative links, $ORIGIN, RPATH vs RUNPATH."""
    r = tmp_path
    link(r, "/lib", "usr/lib")
    link(r, "/lib64", "usr/lib64")
    put(r, "/usr/lib/x86_64-linux-gnu/ld-2.so", make_elf(soname="ld.so"))
    link(r, "/usr/lib64/ld.so", "/lib/x86_64-linux-gnu/ld-2.so")          # absolute target
    put(r, "/usr/lib/x86_64-linux-gnu/libc.so.6", make_elf(soname="libc.so.6"))
    put(r, "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2", make_elf(needed=("libc.so.6",)))
    link(r, "/usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2")      # relative target
    put(r, "/opt/app/lib/libbar.so", make_elf(needed=("libfoo.so.1",)))
    put(r, "/opt/app/bin/app", make_elf(interp="/lib64/ld.so",
                                        needed=("libbar.so", "libc.so.6"),
                                        runpath="$ORIGIN/../lib"))
    # An i386 library with the right name in an earlier directory must be skipped.
    put(r, "/usr/lib/libc.so.6", make_elf(machine=3))
    return r


def test_resolve_links(fake_root: Path) -> None:
    real, links = elf.resolve_links("/lib64/ld.so", root=str(fake_root))
    assert real == "/usr/lib/x86_64-linux-gnu/ld-2.so"
    assert links == ["/lib64", "/usr/lib64/ld.so", "/lib"]


def test_closure_in_fake_root(fake_root: Path) -> None:
    paths = elf.closure(["/opt/app/bin/app"], ["/usr/lib", "/lib/x86_64-linux-gnu"],
                        root=str(fake_root))
    assert paths == {
        "/opt/app/bin/app", "/opt/app/lib/libbar.so",
        "/lib64", "/usr/lib64/ld.so", "/lib", "/usr/lib/x86_64-linux-gnu/ld-2.so",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2",
    }


def test_rpath_ignored_when_runpath_present(fake_root: Path) -> None:
    put(fake_root, "/srv/a/libq.so", make_elf())
    put(fake_root, "/srv/b/libq.so", make_elf())
    put(fake_root, "/srv/bin/both", make_elf(needed=("libq.so",), rpath="/srv/a",
                                             runpath="/srv/b"))
    put(fake_root, "/srv/bin/old", make_elf(needed=("libq.so",), rpath="/srv/a"))
    assert "/srv/b/libq.so" in elf.closure(["/srv/bin/both"], [], root=str(fake_root))
    assert "/srv/a/libq.so" in elf.closure(["/srv/bin/old"], [], root=str(fake_root))


def test_missing_library_names_it(fake_root: Path) -> None:
    put(fake_root, "/srv/bin/broken", make_elf(needed=("libnope.so.9",)))
    with pytest.raises(elf.LibraryNotFound, match=r"libnope\.so\.9 \(needed by /srv/bin/broken"):
        elf.closure(["/srv/bin/broken"], ["/usr/lib"], root=str(fake_root))
