"""The boot configuration of a mounted root: the thin I/O layer over the pure parsers.

:func:`find_boot_entry` reads what the target's bootloader would boot: grub.cfg's default entry,
else the newest BLS entry (:func:`parse_bls`), else ``/boot/vmlinuz*``
(:func:`find_plain_kernels`), and rewrites its paths to where they exist in the root
(:func:`locate`; a separate /boot partition lacks the ``/boot`` prefix). Paths are resolved as
a chroot sees them (:func:`resolve_in`), also for :mod:`pyinit.kexec` and
:mod:`pyinit.switchroot`; the entry returned names the files its links lead to (grub.cfg's
``/vmlinuz``, which the distribution repoints at each kernel upgrade, becomes
``/boot/vmlinuz-<release>``), and the log says which kernel release that is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pyinit import bzimage, rootpath
from pyinit.bootcfg.bls import parse_bls_entry, version_key
from pyinit.bootcfg.entry import BootEntry
from pyinit.bootcfg.grub import parse_grub_cfg, parse_grubenv
from pyinit.errors import HandoffError
from pyinit.log import get_logger

log = get_logger("pyinit.bootcfg")

GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub/grub.cfg", "/grub2/grub.cfg")
GRUBENVS = ("/boot/grub/grubenv", "/boot/grub2/grubenv", "/grub/grubenv", "/grub2/grubenv")
BLS_DIRS = ("/boot/loader/entries", "/loader/entries")
LOOKED_AT = "/boot/grub/grub.cfg, /boot/loader/entries, /boot/vmlinuz*"


# ---- paths inside the target ----------------------------------------------------------------


def resolve_in(root: Path, path: str) -> Path:
    """``root/path`` as a chroot would see it (:func:`pyinit.rootpath.resolve`)."""
    try:
        return rootpath.resolve(root, path)
    except rootpath.SymlinkLoop as exc:
        raise HandoffError(str(exc)) from exc


def locate(root: Path, path: str) -> str | None:
    """The in-root path under which ``path`` exists as a file: ``path`` itself, else
    ``/boot/path`` (GRUB and BLS paths are relative to the filesystem holding them, which lacks
    the ``/boot`` prefix when /boot is a separate partition)."""
    path = "/" + path.lstrip("/")
    for candidate in (path, "/boot" + path):
        if resolve_in(root, candidate).is_file():
            return candidate
    return None


def followed(root: Path, entry: BootEntry) -> BootEntry:
    """``entry`` with its kernel and initrds named by the files their paths lead to inside
    ``root`` (``/vmlinuz`` → ``/boot/vmlinuz-6.1.0-57-cloud-amd64``)."""
    def real(path: str) -> str:
        return "/" + resolve_in(root, path).relative_to(root).as_posix()
    return replace(entry, kernel=real(entry.kernel), initrds=tuple(map(real, entry.initrds)))


def _links(before: BootEntry, after: BootEntry) -> str:
    pairs = zip((before.kernel, *before.initrds), (after.kernel, *after.initrds), strict=True)
    return ", ".join(a if a == b else f"{a} -> {b}" for a, b in pairs)


# ---- Boot Loader Specification entries ------------------------------------------------------

_MACHINE_ID = re.compile(r"^[0-9a-f]{32}-")


def parse_bls(root: Path, env: Mapping[str, str] | None = None) -> list[BootEntry]:
    """The BLS entries under ``root`` (``/boot/loader/entries`` or, for a mounted /boot,
    ``/loader/entries``), newest version first (``version`` key, else the file name without
    its machine-id); grubenv's ``saved_entry`` naming one of them puts it first instead."""
    found: list[tuple[tuple[tuple[int, int, str], ...], str, BootEntry]] = []
    for rel in BLS_DIRS:
        directory = resolve_in(root, rel)
        if not directory.is_dir():
            continue
        for conf in sorted(directory.glob("*.conf")):
            try:
                text = conf.read_text(errors="replace")
            except OSError as exc:
                log.warning(f"handoff: {conf}: {exc}")
                continue
            entry = parse_bls_entry(text, conf.stem, env, source=f"{rel}/{conf.name}")
            if entry is None:
                continue
            version = next((line.split(None, 1)[1] for line in text.splitlines()
                            if line.startswith("version ") and len(line.split(None, 1)) > 1),
                           _MACHINE_ID.sub("", conf.stem))
            found.append((version_key(version.strip()), conf.stem, entry))
        if found:
            break
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    entries = [e for _, _, e in found]
    saved = (env or {}).get("saved_entry")
    for i, e in enumerate(entries):
        if saved and e.menu_path == saved:
            entries.insert(0, entries.pop(i))
            break
    return entries


# ---- /boot/vmlinuz* ------------------------------------------------------------------------


def find_plain_kernels(root: Path) -> list[BootEntry]:
    """Kernels without a boot configuration: Debian's ``/boot/vmlinuz`` + ``/boot/initrd.img``
    links (or the older ``/vmlinuz`` ones), then every ``/boot/vmlinuz-<version>`` newest first
    with ``initrd.img-<version>`` or ``initramfs-<version>.img``. The command line comes from
    ``/etc/kernel/cmdline`` when there is one."""
    cmdline_file = resolve_in(root, "/etc/kernel/cmdline")
    cmdline = " ".join(cmdline_file.read_text().split()) if cmdline_file.is_file() else ""
    notes: tuple[str, ...] = () if cmdline else ("no kernel command line found (no boot entry, no "
                                "/etc/kernel/cmdline): give root= in extra_cmdline",)
    out: list[BootEntry] = []
    for base in ("/boot", ""):
        kernel = f"{base}/vmlinuz"
        if resolve_in(root, kernel).is_file():
            initrd = f"{base}/initrd.img"
            initrds: tuple[str, ...] = (initrd,) if resolve_in(root, initrd).is_file() else ()
            out.append(BootEntry(kernel=kernel, initrds=initrds, cmdline=cmdline, title=kernel,
                                 source=kernel, notes=notes))
    boot = resolve_in(root, "/boot")
    versions = sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")
                       if p.is_file()), key=version_key, reverse=True) if boot.is_dir() else []
    for version in versions:
        initrds = tuple(f"/boot/{name}" for name in
                        (f"initrd.img-{version}", f"initramfs-{version}.img")
                        if (boot / name).is_file())[:1]
        out.append(BootEntry(kernel=f"/boot/vmlinuz-{version}", initrds=initrds, cmdline=cmdline,
                             title=f"vmlinuz-{version}", source="/boot/vmlinuz-*", notes=notes))
    return out


# ---- choosing one -------------------------------------------------------------------------


def _read(root: Path, rel: str) -> str | None:
    path = resolve_in(root, rel)
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError as exc:
        log.warning(f"handoff: {path}: {exc}")
        return None


def _located(root: Path, entry: BootEntry) -> BootEntry | str:
    """``entry`` with its paths rewritten to where they are in ``root``, or why not."""
    kernel = locate(root, entry.kernel)
    if kernel is None:
        return f"{entry.source}: kernel {entry.kernel} not in {root}"
    initrds = []
    for initrd in entry.initrds:
        where = locate(root, initrd)
        if where is None:
            return f"{entry.source}: initrd {initrd} not in {root}"
        initrds.append(where)
    return replace(entry, kernel=kernel, initrds=tuple(initrds))


def find_boot_entry(root: Path) -> BootEntry:
    """The kernel the target at ``root`` (mounted) would boot: grub.cfg's default entry, else
    the newest BLS entry, else /boot/vmlinuz*, its paths :func:`followed` to the files. Logs the
    entry as configured and the kernel release it leads to. Raises :class:`HandoffError` when
    none is there.
    """
    env: dict[str, str] = {}
    for rel in GRUBENVS:
        text = _read(root, rel)
        if text is not None:
            env = parse_grubenv(text)
            break
    problems: list[str] = []
    candidates: list[BootEntry] = []
    for rel in GRUB_CFGS:
        text = _read(root, rel)
        if text is None:
            continue
        entries = parse_grub_cfg(text, env)
        entries.sort(key=lambda e: not e.default)  # the default first, the rest in menu order
        candidates += [replace(e, source=rel) for e in entries]
        break
    candidates += parse_bls(root, env)
    candidates += find_plain_kernels(root)
    for entry in candidates:
        located = _located(root, entry)
        if isinstance(located, BootEntry):
            for note in (*problems, *located.notes):
                log.warning(f"handoff: {note}")
            log.info(f"handoff: boot entry {located.title!r}: {located.describe()}")
            real = followed(root, located)
            release = bzimage.read_release(resolve_in(root, real.kernel)) or "unknown"
            log.info(f"handoff: kernel {release}: {_links(located, real)}")
            return real
        problems.append(located)
    detail = f"; {problems[0]}" if problems else ""
    raise HandoffError(f"kexec: no kernel found in {root} (looked at {LOOKED_AT}){detail}")
