"""ELF64 dynamic-linking metadata and the shared-library closure of a set of binaries.

Parsed by hand with ``struct`` from the program headers, exactly what the dynamic loader reads:
``PT_INTERP`` and the ``PT_DYNAMIC`` entries ``DT_NEEDED``, ``DT_RPATH``, ``DT_RUNPATH``,
``DT_SONAME`` (strings in ``DT_STRTAB``, mapped through the ``PT_LOAD`` segments). Running ``ldd``
would execute the binary's interpreter on the host; reading headers does not.

``closure`` resolves libraries the way glibc's loader does (RPATH unless RUNPATH, then RUNPATH,
then the default directories, ``$ORIGIN`` expanded, objects of another machine skipped) and keeps
every symlink on the way (``/lib64``, ``/lib64/ld-linux-x86-64.so.2``) so the copy in the initramfs
resolves the same names.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29

DEFAULT_SEARCH_DIRS: tuple[str, ...] = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib",
    "/usr/lib",
)
_MAX_SYMLINKS = 40


class ElfError(ValueError):
    """Not an ELF64 little-endian file, or a malformed one."""


class LibraryNotFound(LookupError):
    def __init__(self, name: str, needed_by: str) -> None:
        self.name = name
        self.needed_by = needed_by
        super().__init__(f"{name} (needed by {needed_by}) not found")


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    elf_type: int
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None


def is_elf(head: bytes) -> bool:
    return head[:4] == ELF_MAGIC


def _check_header(data: bytes) -> None:
    """Raise :class:`ElfError` unless ``data`` starts an ELF64 little-endian image."""
    if not is_elf(data) or len(data) < 64:
        raise ElfError("not an ELF file")
    if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise ElfError(f"unsupported ELF class/encoding {data[4]}/{data[5]}")


def section(data: bytes, wanted: str) -> bytes:
    """The raw bytes of the section named ``wanted`` (``b""`` if there is none), from the
    section headers: what a relocatable object such as a kernel module has (pure)."""
    _check_header(data)
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    if shoff == 0 or shnum == 0:
        return b""

    def header(i: int) -> tuple[int, int, int]:
        off = shoff + i * shentsize
        if off + 64 > len(data):
            raise ElfError("section header table truncated")
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, off)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off:str_off + str_size]
    for i in range(shnum):
        name, offset, size = header(i)
        end = names.find(b"\0", name)
        if names[name:end] == wanted.encode():
            if offset + size > len(data):
                raise ElfError(f"{wanted} section truncated")
            return data[offset:offset + size]
    return b""


def parse(data: bytes) -> ElfInfo:
    """The dynamic-linking metadata of an ELF64 little-endian image (pure)."""
    _check_header(data)
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    e_phoff, = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp: str | None = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if off + 56 > len(data):
            raise ElfError("program header table truncated")
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, off)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].split(b"\0", 1)[0].decode()

    needed: list[int] = []
    rpath: list[int] = []
    runpath: list[int] = []
    soname: int | None = None
    strtab_vaddr = strsz = None
    if dynamic is not None:
        d_off, d_size = dynamic
        for pos in range(d_off, min(d_off + d_size, len(data) - 15), 16):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(val)
            elif tag == DT_RPATH:
                rpath.append(val)
            elif tag == DT_RUNPATH:
                runpath.append(val)
            elif tag == DT_SONAME:
                soname = val
            elif tag == DT_STRTAB:
                strtab_vaddr = val
            elif tag == DT_STRSZ:
                strsz = val

    def string(index: int) -> str:
        if strtab_vaddr is None:
            raise ElfError("dynamic section without DT_STRTAB")
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab_vaddr < vaddr + filesz:
                start = offset + (strtab_vaddr - vaddr) + index
                end = data.find(b"\0", start, None if strsz is None else start + strsz)
                if end < 0:
                    raise ElfError("unterminated string in DT_STRTAB")
                return data[start:end].decode()
        raise ElfError("DT_STRTAB outside every PT_LOAD segment")

    def paths(indexes: list[int]) -> tuple[str, ...]:
        return tuple(p for i in indexes for p in string(i).split(":") if p)

    return ElfInfo(
        machine=e_machine, elf_type=e_type, interp=interp,
        needed=tuple(string(i) for i in needed), rpath=paths(rpath), runpath=paths(runpath),
        soname=None if soname is None else string(soname),
    )


def read_info(path: Path) -> ElfInfo | None:
    """``parse`` of a file, or None when it is not ELF (scripts, data)."""
    with open(path, "rb") as fh:
        if not is_elf(fh.read(4)):
            return None
        fh.seek(0)
        return parse(fh.read())


def resolve_links(path: str, *, root: str = "/") -> tuple[str, list[str]]:
    """Resolve ``path`` inside ``root`` component by component, like the kernel.

    Returns the real path and every symlink crossed, in order, each named by its own real parent
    directory (``/lib64`` then ``/usr/lib64/ld-linux-x86-64.so.2`` ...). Absolute targets resolve
    inside ``root``. Missing components are kept as they are (the caller checks existence).
    """
    pending = list(reversed(path.split("/")))
    current: list[str] = []
    links: list[str] = []
    hops = 0
    while pending:
        comp = pending.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if current:
                current.pop()
            continue
        candidate = "/" + "/".join([*current, comp])
        host = os.path.join(root, candidate.lstrip("/"))
        if os.path.islink(host):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise OSError(40, f"too many levels of symbolic links: {path}")
            links.append(candidate)
            target = os.readlink(host)
            if target.startswith("/"):
                current = []
            pending.extend(reversed(target.split("/")))
        else:
            current.append(comp)
    return "/" + "/".join(current), links


def _expand(entry: str, origin: str) -> str:
    for token in ("${ORIGIN}", "$ORIGIN"):
        entry = entry.replace(token, origin)
    return entry


def _search_order(info: ElfInfo, origin: str, search_dirs: Sequence[str]) -> list[str]:
    dirs = [] if info.runpath else list(info.rpath)
    dirs += info.runpath
    return [_expand(d, origin) for d in dirs] + list(search_dirs)


def closure(paths: Iterable[str | Path], search_dirs: Sequence[str] = DEFAULT_SEARCH_DIRS, *,
            root: str = "/") -> set[str]:
    """Every host path needed to run ``paths``: the files, their libraries, and all symlinks.

    Paths are absolute inside ``root`` (normally the host's ``/``). Non-ELF inputs are included
    as they are. A library that cannot be found raises :class:`LibraryNotFound`.
    """
    result: set[str] = set()
    queue: list[str] = [str(p) for p in paths]
    seen_real: set[str] = set()

    def host(p: str) -> str:
        return os.path.join(root, p.lstrip("/"))

    def add(p: str) -> str:
        real, links = resolve_links(p, root=root)
        result.update(links)
        result.add(real)
        return real

    while queue:
        path = queue.pop()
        real = add(path)
        if real in seen_real:
            continue
        seen_real.add(real)
        if not os.path.isfile(host(real)):
            raise FileNotFoundError(path)
        info = read_info(Path(host(real)))
        if info is None:
            continue
        if info.interp:
            queue.append(info.interp)
        # glibc's $ORIGIN: for the program, the directory of its real path (/proc/self/exe);
        # for a shared object, the directory of the name it was opened under.
        origin = os.path.dirname(real if info.interp else path)
        for name in info.needed:
            if "/" in name:
                queue.append(name)
                continue
            for directory in _search_order(info, origin, search_dirs):
                candidate = os.path.join(directory, name)
                found = host(resolve_links(candidate, root=root)[0])
                if not os.path.isfile(found) or _machine(Path(found)) != info.machine:
                    continue  # absent, or e.g. an i386 library in /usr/lib
                queue.append(candidate)
                break
            else:
                raise LibraryNotFound(name, path)
    return result


def _machine(path: Path) -> int | None:
    with open(path, "rb") as fh:
        head = fh.read(20)
    if not is_elf(head) or len(head) < 20:
        return None
    return int(struct.unpack_from("<H", head, 18)[0])


def is_elf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return is_elf(fh.read(4))
    except OSError:
        return False
