"""UEFI boot entries after a write (issue #16; docs/lifecycle.md, "UEFI boot entries").

On a machine that booted by UEFI, once a ``writeImage`` has written, grown and configured its
disk, the ``bootentry`` step makes a ``Boot####`` entry for the loader on that disk's EFI system
partition and puts it first in ``BootOrder`` — right after the network entry this boot came
from when the machine PXE-boots first (deploy once needs the PXE boot to stay first) — then
removes the entries that earlier pyinit runs made. Those are known by their label: **every
entry whose description starts with** :data:`LABEL_PREFIX` (``"pyinit "``) **is pyinit's**,
whichever disk it points at; no other entry (the firmware's own, an installer's ``debian``, a
PXE entry) is ever touched.

The variables are read and written by Debian's ``efibootmgr`` through efivarfs (mounted here
when it is not), every call through :func:`pyinit.proc.run`: libefiboot builds the entry's
device path from sysfs and the disk's partition table, which no maintained Python library does.
The entry is created before the stale ones are deleted, so the machine never has fewer entries
than it had, and the new one gets a new number.

Pure: :func:`parse_efibootmgr`, :func:`find_esp`, :func:`choose_loader`, :func:`entry_label`,
:func:`stale_entries`, :func:`plan_order`, :func:`efi_arch`. :func:`make_entry` does the work:
it reads the disk, mounts the ESP read-only to look for the loader, and runs efibootmgr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pyinit import parttable, proc, rootfs
from pyinit.errors import DiskError, PyinitError
from pyinit.log import event, get_logger
from pyinit.sysfs import read_attr

log = get_logger("pyinit.efiboot")

LABEL_PREFIX = "pyinit "  # the rule: an entry whose label starts with this is pyinit's
LABEL_MAX = 64            # characters; firmware menus show about as many
ESP_GPT_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
ESP_MBR_TYPE = "0xef"
EFIBOOTMGR = "efibootmgr"
EFIBOOTMGR_TIMEOUT = 60.0  # seconds per call: NVRAM writes on real firmware can be slow
ESP_MOUNT = Path("/run/pyinit/esp")

# The architecture suffix of UEFI loader names (UEFI 2.10, 3.5.1.1: BOOTX64.EFI, shimaa64.efi)
# for the kernel's machine names; 32-bit UEFI under a 64-bit x86 kernel is "ia32".
_ARCH = {"x86_64": "x64", "i686": "ia32", "i386": "ia32", "aarch64": "aa64", "armv7l": "arm",
         "riscv64": "riscv64", "loongarch64": "loongarch64"}
# A device path that boots from the network: PXE (MAC()/IPv4()/IPv6()) or HTTP boot (Uri()).
_NETWORK = re.compile(r"(?:^|/)(?:MAC|IPv4|IPv6|Uri)\(")
_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})([* ]) (.*)$")
_HEX4 = re.compile(r"^[0-9A-Fa-f]{4}$")

Level = Literal["info", "warning"]


class BootEntryError(PyinitError):
    """No entry could be made as planned; with ``uefiBootEntry: true`` the step fails with it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# --- efibootmgr's output (pure) ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    number: str      # four upper-case hex digits: "0004" is Boot0004
    label: str
    active: bool = True
    path: str = ""   # the device path as ``efibootmgr -v`` prints it ("" without -v)

    @property
    def name(self) -> str:
        return f"Boot{self.number}"

    @property
    def ours(self) -> bool:
        """Made by pyinit: its label starts with :data:`LABEL_PREFIX`."""
        return self.label.startswith(LABEL_PREFIX)

    @property
    def network(self) -> bool:
        """A PXE or HTTP boot entry (its device path has MAC(), IPv4(), IPv6() or Uri())."""
        return bool(_NETWORK.search(self.path))

    def describe(self) -> str:
        return f"{self.name} '{self.label}'"


@dataclass(frozen=True)
class BootVars:
    order: tuple[str, ...] = ()
    entries: tuple[Entry, ...] = ()
    current: str | None = None  # BootCurrent: the entry this boot came from, if any

    def get(self, number: str | None) -> Entry | None:
        return next((e for e in self.entries if e.number == number), None)


def parse_efibootmgr(text: str) -> BootVars:
    """``efibootmgr [-v]`` output -> :class:`BootVars`. Pure.

    Lines are ``BootCurrent: 0001``, ``BootOrder: 0004,0000`` (or ``No BootOrder is set``) and
    ``Boot0004* label<TAB>device path`` (``*``: active; a space: inactive; the tab and the path
    only with ``-v``); others (``Timeout``, ``BootNext``, warnings) are ignored."""
    order: tuple[str, ...] = ()
    current = None
    entries = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == "BootOrder":
            numbers = tuple(n.strip().upper() for n in value.split(",") if n.strip())
            bad = [n for n in numbers if not _HEX4.match(n)]
            if bad:
                raise BootEntryError(f"efibootmgr printed a BootOrder that does not parse: "
                                     f"{value.strip()!r}")
            order = numbers
            continue
        if sep and key == "BootCurrent" and _HEX4.match(value.strip()):
            current = value.strip().upper()
            continue
        m = _ENTRY.match(line)
        if m:
            label, _, path = m.group(3).partition("\t")
            entries.append(Entry(m.group(1).upper(), label.rstrip(), m.group(2) == "*",
                                 path.strip()))
    return BootVars(order, tuple(entries), current)


# --- what to make, what to remove (pure) --------------------------------------------------------

def find_esp(table: parttable.PartitionTable | None) -> parttable.Partition | None:
    """The first EFI system partition by number: GPT type C12A7328-F81F-11D2-BA4B-00A0C93EC93B,
    or MBR type 0xEF. Pure."""
    if table is None:
        return None
    want = ESP_GPT_TYPE if table.kind == "gpt" else ESP_MBR_TYPE
    esps = [p for p in table.partitions if p.type == want and p.kind != "extended"]
    return min(esps, key=lambda p: p.number) if esps else None


def efi_arch(machine: str, fw_platform_size: str | None = None) -> str:
    """The UEFI architecture suffix (``x64``, ``aa64``, ``ia32``…) for the kernel's machine name
    and ``/sys/firmware/efi/fw_platform_size`` (32 on 32-bit UEFI under a 64-bit kernel). Pure."""
    if machine == "x86_64" and (fw_platform_size or "").strip() == "32":
        return "ia32"
    if machine not in _ARCH:
        raise BootEntryError(f"no UEFI loader names known for the architecture {machine!r}")
    return _ARCH[machine]


def loader_candidates(arch: str) -> tuple[str, ...]:
    """What :func:`choose_loader` looks for, in order, as a line can name it. Pure."""
    return (f"\\EFI\\<vendor>\\shim{arch}.efi", f"grub{arch}.efi", f"systemd-boot{arch}.efi",
            "\\EFI\\Microsoft\\Boot\\bootmgfw.efi", f"\\EFI\\BOOT\\BOOT{arch.upper()}.EFI")


def choose_loader(files: Iterable[str], arch: str = "x64") -> str | None:
    """The loader to boot, from the ESP's files (paths relative to its root, ``/``-separated,
    as stored): the distribution's own first — shim (``\\EFI\\debian\\shimx64.efi``), else
    GRUB, else systemd-boot, in the first vendor directory by name that has one — then Windows
    Boot Manager, then the removable-media path ``\\EFI\\BOOT\\BOOTX64.EFI``. None when the ESP
    has none of them. FAT names match without regard to case; the path keeps the stored case.
    Returned in the firmware's form, with backslashes. Pure."""
    found: dict[tuple[str, ...], str] = {}
    for f in sorted(files):
        parts = tuple(p.upper() for p in PurePosixPath(f).parts)
        if parts and parts[0] == "EFI":
            found.setdefault(parts[1:], f)
    vendors = sorted({p[0] for p in found if len(p) == 2 and p[0] != "BOOT"})
    for name in (f"SHIM{arch}.EFI", f"GRUB{arch}.EFI", f"SYSTEMD-BOOT{arch}.EFI"):
        for vendor in vendors:
            if (vendor, name.upper()) in found:
                return _firmware_path(found[(vendor, name.upper())])
    for rest in (("MICROSOFT", "BOOT", "BOOTMGFW.EFI"), ("BOOT", f"BOOT{arch.upper()}.EFI")):
        if rest in found:
            return _firmware_path(found[rest])
    return None


def _firmware_path(path: str) -> str:
    return "\\" + "\\".join(PurePosixPath(path).parts)


def entry_label(image_url: str, disk: str | None = None) -> str:
    """``pyinit <image file name>``, printable ASCII (efibootmgr's default), at most
    :data:`LABEL_MAX` characters: what the firmware's boot menu shows; with ``disk`` (a RAID1
    root's other members) `` (vdb)`` at the end. Pure."""
    name = unquote(PurePosixPath(urlsplit(image_url).path).name) or "image"
    name = "".join(c if " " <= c <= "~" else "?" for c in name).strip() or "image"
    suffix = f" ({PurePosixPath(disk).name})" if disk else ""
    return (LABEL_PREFIX + name)[:LABEL_MAX - len(suffix)] + suffix


def stale_entries(found: BootVars, keep: str) -> tuple[Entry, ...]:
    """pyinit's entries other than ``keep`` (the one just made). Pure."""
    return tuple(e for e in found.entries if e.ours and e.number != keep)


def plan_order(order: Sequence[str], new: str, *, removed: Iterable[str] = (),
               after: str | None = None) -> tuple[str, ...]:
    """``BootOrder`` with ``new`` first, or right after ``after`` (the network entry this boot
    came from), without the ``removed`` entries; every other entry keeps its place. Pure."""
    gone = set(removed)
    head = [after] if after is not None and after != new and after not in gone else []
    rest = [n for n in order if n != new and n not in gone and n not in head]
    return (*head, new, *rest)


# --- the work ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What the step did: ``created`` (``number`` is set) or ``skipped`` (``reason`` says why)."""

    status: Literal["created", "skipped"]
    summary: str                    # for the RESULT line: "Boot0005", "none (legacy BIOS)"
    number: str | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)  # the bootentry event's


def efi_booted(sysfs: Path = Path("/sys")) -> bool:
    """Whether this boot came through UEFI (the kernel then has ``/sys/firmware/efi``)."""
    return (sysfs / "firmware" / "efi").is_dir()


def mount_efivarfs(sysfs: Path = Path("/sys")) -> None:
    """efivarfs on ``/sys/firmware/efi/efivars`` unless it is mounted already (the kernel does
    not mount it; the modules step loads the efivarfs module, listed in modules.txt)."""
    target = str(sysfs / "firmware" / "efi" / "efivars")
    rootfs.apply((rootfs.Mount("efivarfs", target, "efivarfs", rootfs.NOSUID_NODEV_NOEXEC),))


def read_table(disk: str) -> parttable.PartitionTable | None:
    """The partition table on ``disk`` (a block device or an image file), as the kernel would
    read it (its logical sector size, its size for the backup GPT)."""
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(disk, f"cannot open: {exc.strerror}") from exc
    from pyinit.grow import table_on

    try:
        return table_on(fd)[0]
    finally:
        os.close(fd)


def list_esp(disk: str, number: int, *, mountpoint: Path = ESP_MOUNT) -> list[str]:
    """The files under ``EFI/`` of the FAT filesystem on partition ``number`` of ``disk``
    (three levels deep, relative to its root, ``/``-separated), once the kernel shows the
    partition, mounted read-only for the look."""
    from pyinit.grow import partition_path, wait_for_partitions
    from pyinit.target import mounted_target

    wait_for_partitions(disk, [number])
    device = partition_path(disk, number)
    out: list[str] = []
    with mounted_target(device, mountpoint, binds=(), resolv_conf=None, read_only=True) as t:
        top = [p for p in t.root.iterdir() if p.name.upper() == "EFI" and p.is_dir()]
        for efi in top:
            for dirpath, dirnames, filenames in os.walk(efi):
                depth = len(Path(dirpath).relative_to(t.root).parts)
                if depth >= 3:
                    dirnames.clear()
                out += [(Path(dirpath) / f).relative_to(t.root).as_posix() for f in filenames]
    return sorted(out)


def efibootmgr(*args: str) -> BootVars:
    """Run efibootmgr with ``args`` (none: ``-v``, the listing) and parse what it prints after."""
    done = proc.run([EFIBOOTMGR, *(args or ("-v",))], timeout=EFIBOOTMGR_TIMEOUT)
    return parse_efibootmgr(done.stdout)


class _Steps:
    """The outcome so far: lines logged, warnings collected (fatal when required)."""

    def __init__(self, required: bool) -> None:
        self.required = required
        self.warnings: list[str] = []

    def skip(self, key: str, why: str, *, level: Level = "warning") -> Outcome:
        """No entry: one line (info or warning), an event; with required, the step fails."""
        if self.required:
            raise BootEntryError(f"{why} (uefiBootEntry: true)")
        line = f"bootentry: {why}: no UEFI boot entry made"
        (log.info if level == "info" else log.warning)(line)
        event("bootentry", "skipped", reason=key, detail=why)
        return Outcome("skipped", f"none ({key})", reason=key)

    def warn(self, why: str) -> None:
        """Made, but not all as planned (an old entry left, the order changed by the firmware)."""
        if self.required:
            raise BootEntryError(f"{why} (uefiBootEntry: true)")
        log.warning(f"bootentry: {why}")
        self.warnings.append(why)


def make_entry(disk: str, *, label: str, required: bool = False, sysfs: Path = Path("/sys"),
               machine: str | None = None, keep: Iterable[str] = (),
               esp_files: Callable[[str, int], list[str]] | None = None,
               efivarfs: Callable[[Path], None] | None = None) -> Outcome:
    """Make the boot entry for ``disk`` (``/dev/<kernel name>``) and order it; see the module
    docstring. Every expected failure is one warning line and a ``skipped`` outcome, or, with
    ``required`` (``uefiBootEntry: true``), a :class:`BootEntryError`. ``esp_files`` and
    ``efivarfs`` default to :func:`list_esp` and :func:`mount_efivarfs`. ``keep``: entries of
    this run not to remove as earlier pyinit entries (a RAID1 root's other disks')."""
    from pyinit.grow import partition_path

    esp_files = esp_files or list_esp
    efivarfs = efivarfs or mount_efivarfs
    steps = _Steps(required)
    if not efi_booted(sysfs):
        return steps.skip("legacy BIOS", "the machine booted by legacy BIOS (no "
                          "/sys/firmware/efi)", level="info")
    try:
        arch = efi_arch(machine or os.uname().machine,
                        read_attr(sysfs / "firmware" / "efi" / "fw_platform_size"))
    except BootEntryError as exc:
        return steps.skip("architecture", str(exc))
    try:
        table = read_table(disk)
    except PyinitError as exc:
        return steps.skip("no ESP", f"the partition table of {disk} cannot be read ({exc})")
    esp = find_esp(table)
    if esp is None:
        kind = f"{table.kind.upper()} disk" if table is not None else "no partition table"
        return steps.skip("no ESP", f"{disk} has no EFI system partition ({kind}: a BIOS-only "
                          "image?)")
    device = partition_path(disk, esp.number)
    try:
        files = esp_files(disk, esp.number)
    except PyinitError as exc:
        return steps.skip("ESP unreadable", f"the EFI system partition {device} cannot be "
                          f"read ({exc})")
    loader = choose_loader(files, arch)
    if loader is None:
        return steps.skip("no loader", f"the EFI system partition {device} has no loader "
                          f"(looked for {', '.join(loader_candidates(arch))})")
    how = ("the removable-media path: no distribution loader"
           if loader.upper().startswith("\\EFI\\BOOT\\") else "the distribution's loader")
    log.info(f"bootentry: {device} (partition {esp.number}) is the EFI system partition; "
             f"loader {loader} ({how})")
    try:
        efivarfs(sysfs)
        before = efibootmgr()
        efibootmgr("--create", "--disk", disk, "--part", str(esp.number), "--label", label,
                   "--loader", loader)
        made = efibootmgr()
    except PyinitError as exc:
        return steps.skip("efibootmgr failed", f"cannot create the entry ({exc})")
    known = {e.number for e in before.entries}
    new = [e for e in made.entries if e.label == label and e.number not in known]
    if len(new) != 1:
        return steps.skip("efibootmgr failed", f"efibootmgr --create exited 0 but lists "
                          f"{len(new)} new entries labelled '{label}'")
    entry = new[0]
    log.info(f"bootentry: created {entry.describe()}: {entry.path or loader}")
    removed = []
    for old in stale_entries(made, entry.number):
        if old.number in keep:
            continue
        try:
            efibootmgr("--bootnum", old.number, "--delete-bootnum")
        except PyinitError as exc:
            steps.warn(f"{old.describe()} (an earlier pyinit entry) not removed: {exc}")
            continue
        removed.append(old)
        log.info(f"bootentry: removed {old.describe()} (an earlier pyinit entry)")
    gone = {e.number for e in removed}
    network = before.get(before.current)
    after = network.number if network is not None and network.network else None
    wanted = plan_order(made.order, entry.number, removed=gone, after=after)
    final: BootVars | None = made  # what --create left: the new entry first, the rest as it was
    try:
        if tuple(n for n in made.order if n not in gone) != wanted:
            efibootmgr("--bootorder", ",".join(wanted))
            final = efibootmgr()
        elif removed:
            final = efibootmgr()
    except PyinitError as exc:
        steps.warn(f"BootOrder not set to {','.join(wanted)}: {exc}")
        final = None
    if final is not None:
        if final.order != wanted:
            steps.warn(f"BootOrder reads {','.join(final.order) or 'nothing'} after setting "
                       f"{','.join(wanted)}")
        left = [e.describe() for e in final.entries if e.number in gone]
        if left:
            steps.warn(f"deleted entries still listed: {', '.join(left)}")
    order = final.order if final is not None else made.order
    where = (f"after {network.describe()}, the network entry this boot came from"
             if network is not None and after is not None else "first")
    if order == wanted:
        log.info(f"bootentry: BootOrder {','.join(order)} ({entry.name} {where})")
    fields = {"number": entry.number, "label": label, "disk": disk, "partition": esp.number,
              "loader": loader, "path": entry.path, "boot_order": list(order),
              "after": after, "removed": [e.describe() for e in removed],
              "warnings": steps.warnings}
    event("bootentry", "created", **fields)
    return Outcome("created", entry.name, number=entry.number,
                   warnings=tuple(steps.warnings), fields=fields)
