"""The erase action: clean a machine's disks for the next tenant (docs/lifecycle.md, "Clean").

One mode per action (``eraseMode``), applied to every disk the action names (``eraseDevices``),
matches (``rootDeviceHints``: every matching disk) or, without either, to every disk but
removable media and the boot medium:

- ``metadata``: every signature wipefs finds on the disk and its partitions (GPT and its backup,
  the protective MBR, file systems, md superblocks, LVM labels), then the first and last MiB of
  each partition and of the disk zeroed (md 0.90/1.0 superblocks at a partition's end, 1.1/1.2 at
  its start, an LVM label in its first sectors). Seconds; the data in between stays on the disk.
- ``discard``: BLKSECDISCARD over the whole disk where the device takes it, else BLKDISCARD.
  Refused on a device that advertises no discard.
- ``nvme``: NVMe Format NVM with Secure Erase Settings 1 (user data erase) through nvme-cli,
  keeping the namespace's LBA format. Refused on anything but an NVMe namespace.
- ``ata``: ATA Security Erase (enhanced where the drive has it) through hdparm: a temporary user
  password is set, the erase unit command clears it. Refused on a drive without the security
  feature, a frozen drive (the firmware froze it at boot) or a locked one.
- ``zero``: BLKZEROOUT over the whole disk (the kernel's write-zeroes: offloaded to the device
  when it supports it, else the kernel writes zero pages), with progress lines.
- ``auto``: per disk, the strongest of nvme, ata, discard, zero that the disk can do.

Every mode ends with a verification the report names: the data modes read back random 4 KiB
blocks across the disk (plus its first and last) with O_DIRECT, sampled *before* the erase too,
and each must read zero (``zero``) or zero or not the old data (``discard``, ``nvme``, ``ata``:
a crypto erase reads back noise); ``metadata`` checks that wipefs finds no signature left and
that every zeroed region reads back zero. All refusals come before the first disk is touched.

Pure here: the choice of disks (:func:`plan`), the choice of mode (:func:`choose_mode`),
hdparm's security section (:func:`parse_ata_security`), wipefs's listing
(:func:`parse_wipefs`), the sample offsets and the verdict (:func:`sample_offsets`,
:func:`judge`). The rest reads and writes devices.
"""

from __future__ import annotations

import errno
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyinit import proc, syscalls
from pyinit.action import ERASE_MODES, EraseMode
from pyinit.disks.hints import Hints
from pyinit.disks.inventory import Disk, human_size, natural_key
from pyinit.disks.selection import resolve_device
from pyinit.errors import CommandError, DiskError, PyinitError
from pyinit.log import event, get_logger
from pyinit.sysfs import read_attr
from pyinit.units import GIB, MIB

Mode = EraseMode  # the action's eraseMode (pyinit.action)
MODES = ERASE_MODES
Method = Literal["metadata", "discard", "nvme", "ata", "zero"]

BLOCK = 4096                 # a verification sample
SAMPLES = 64                 # random samples per disk, besides the first and last block
CHUNK = GIB                  # one discard/zero-out call (a progress line between calls)
EDGE = MIB                   # what metadata zeroes at each end of a disk and a partition
ATA_PASSWORD = "pyinit"      # set for the erase unit command, which clears it again
NVME_TIMEOUT_MS = 4 * 3600 * 1000
PROGRESS_SECONDS = 5.0

log = get_logger("pyinit.erase")


# --- which disks (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class EraseError(PyinitError):
    """The erase as a whole: nothing to erase, a refusal, disks that failed. One line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"erase: {reason}")


@dataclass(frozen=True)
class Plan:
    disks: tuple[Disk, ...]
    skipped: tuple[str, ...] = ()          # "sdb (16 GiB): removable (usb)", for the console
    how: str = "every disk"


def _refusal(disk: Disk, *, allow_removable: bool, allow_boot_medium: bool) -> str | None:
    if disk.boot_medium and not allow_boot_medium:
        return f"boot medium: {disk.boot_medium} (allowBootMedium)"
    if disk.removable and not allow_removable:
        return "removable" + (f" ({disk.transport})" if disk.transport else "") + \
            " (allowRemovable)"
    return None


def _in_use(disk: Disk) -> str | None:
    if disk.mounted:
        return "in use: " + ", ".join(disk.mounted) + ": unmount it first"
    if disk.holders:
        return ("in use: held by " + ", ".join(disk.holders)
                + " (LVM/MD/device-mapper): stop it first")
    if disk.read_only:
        return "read-only"
    return None


def plan(disks: Sequence[Disk], *, devices: Sequence[str] = (), hints: Hints | None = None,
         allow_removable: bool = False, allow_boot_medium: bool = False) -> Plan:
    """The disks to erase. Pure.

    Named devices (``eraseDevices``, by path or /dev/disk link) and hints (every disk matching
    all of them) are erased as asked: a removable disk or the boot medium among them is refused
    unless allowed. Without either, every disk; removable media and the boot medium are left
    out with a line unless allowed. A disk in use (mounted, swap, held by LVM/MD) or read-only
    refuses the whole action: an erase reported as done must have erased what it said.
    """
    chosen: list[Disk] = []
    skipped: list[str] = []
    by_path = {d.path: d for d in disks}
    if devices:
        for name in devices:
            path = resolve_device(name, disks)
            if path not in by_path:
                raise DiskError(name, "no such disk (have: "
                                + (", ".join(d.summary() for d in disks) or "no disks") + ")")
            chosen.append(by_path[path])
        how = "eraseDevices " + ", ".join(devices)
    elif hints is not None and not hints.empty:
        chosen = [d for d in disks if hints.mismatch(d) is None]
        how = f"rootDeviceHints {hints.describe()}"
        if not chosen:
            have = "; ".join(f"{d.summary()}: {hints.mismatch(d)}" for d in disks)
            raise EraseError(f"no disk matches rootDeviceHints {hints.describe()}: "
                            f"have {have or 'no disks'}")
    else:
        how = "every disk"
        for disk in disks:
            why = _refusal(disk, allow_removable=allow_removable,
                           allow_boot_medium=allow_boot_medium)
            if why:
                skipped.append(f"{disk.summary()}: {why}")
            else:
                chosen.append(disk)
        if not chosen:
            raise EraseError("no disk to erase" + (": left out " + "; ".join(skipped)
                                                            if skipped else ""))
    refused = []
    for disk in chosen:
        why = _in_use(disk)
        if why is None and how != "every disk":
            why = _refusal(disk, allow_removable=allow_removable,
                           allow_boot_medium=allow_boot_medium)
        if why:
            refused.append(f"{disk.name} {why}")
    if refused:
        raise EraseError("refused, nothing erased: " + "; ".join(refused))
    unique = {d.path: d for d in chosen}
    return Plan(tuple(sorted(unique.values(), key=lambda d: natural_key(d.name))),
                tuple(skipped), how)


# --- which mode per disk (pure) ---------------------------------------------------------------


_ERASE_TIME_RE = re.compile(r">?(\d+)min for (ENHANCED )?SECURITY ERASE UNIT")


@dataclass(frozen=True)
class AtaSecurity:
    """hdparm -I's "Security:" section."""

    supported: bool
    enabled: bool = False
    locked: bool = False
    frozen: bool = False
    enhanced: bool = False           # "supported: enhanced erase"
    minutes: int | None = None       # the drive's own estimate for the erase it would run


def parse_ata_security(text: str) -> AtaSecurity | None:
    """The Security section of ``hdparm -I``; None when there is none (not an ATA drive, or a
    SAT bridge that hides it). Pure."""
    lines = text.splitlines()
    try:
        start = next(i for i, s in enumerate(lines) if s.strip() == "Security:")
    except StopIteration:
        return None
    flags: dict[str, bool] = {}
    normal = enhanced_minutes = None
    for raw in lines[start + 1:]:
        if raw and not raw[0].isspace():
            break
        s = raw.strip()
        times = _ERASE_TIME_RE.findall(s)
        if times:
            for minutes, kind in times:
                if kind:
                    enhanced_minutes = int(minutes)
                else:
                    normal = int(minutes)
            continue
        words = s.split()
        if not words:
            continue
        negated = words[0] == "not"
        flags[" ".join(words[1:] if negated else words)] = not negated
    enhanced = flags.get("supported: enhanced erase", False)
    estimate = enhanced_minutes if enhanced and enhanced_minutes else normal
    return AtaSecurity(supported=flags.get("supported", False), enabled=flags.get("enabled",
                                                                                 False),
                       locked=flags.get("locked", False), frozen=flags.get("frozen", False),
                       enhanced=enhanced, minutes=estimate)


def ata_refusal(sec: AtaSecurity | None) -> str | None:
    """Why ATA Security Erase cannot run on a drive, or None. Pure."""
    if sec is None or not sec.supported:
        return "has no ATA security feature set (hdparm -I shows none)"
    if sec.frozen:
        return ("is frozen (the firmware froze ATA security at boot; a suspend and resume or "
                "a hot re-plug unfreezes it)")
    if sec.locked:
        return "is locked by a security password pyinit does not know"
    if sec.enabled:
        return "has a security password set already; pyinit does not know it"
    return None


@dataclass(frozen=True)
class Caps:
    """What a disk can do, as read from sysfs and hdparm."""

    discard: bool = False            # queue/discard_max_bytes > 0
    nvme: bool = False               # an NVMe namespace (nvmeXnY)
    ata: AtaSecurity | None = None   # hdparm -I, for ATA drives


def choose_mode(mode: Mode, disk: Disk, caps: Caps) -> tuple[Method, str | None]:
    """(method, a line for the console when auto passed something over). Raises DiskError
    when the asked mode cannot run on the disk. Pure."""
    if mode == "nvme" and not caps.nvme:
        raise DiskError(disk.path, "eraseMode nvme: not an NVMe namespace")
    if mode == "ata":
        why = ata_refusal(caps.ata)
        if why:
            raise DiskError(disk.path, f"eraseMode ata: the drive {why}")
    if mode == "discard" and not caps.discard:
        raise DiskError(disk.path, "eraseMode discard: the device does not support discard "
                        "(queue/discard_max_bytes is 0); use eraseMode zero")
    if mode != "auto":
        return mode, None
    if caps.nvme:
        return "nvme", None
    note = None
    if caps.ata is not None and caps.ata.supported:
        why = ata_refusal(caps.ata)
        if why is None:
            return "ata", None
        note = f"{disk.name}: ATA Security Erase passed over: the drive {why}"
    return ("discard" if caps.discard else "zero"), note


# --- verification (pure) ----------------------------------------------------------------------


def sample_offsets(size: int, count: int = SAMPLES, *, rng: random.Random | None = None
                   ) -> list[int]:
    """The first and last 4 KiB block and ``count`` random ones between, sorted. Pure given
    ``rng``."""
    blocks = size // BLOCK
    if blocks <= 0:
        return []
    rng = rng or random.Random(int.from_bytes(os.urandom(8), "little"))
    picks = {0, blocks - 1}
    if blocks > 2:
        picks.update(rng.randrange(1, blocks - 1) for _ in range(min(count, blocks - 2)))
    return sorted(b * BLOCK for b in picks)


@dataclass(frozen=True)
class Verdict:
    sampled: int
    zero: int
    changed: int                     # not zero, but not the old data either
    unchanged: list[int] = field(default_factory=list)   # offsets still holding the old data

    def ok(self, need_zero: bool) -> bool:
        return self.sampled > 0 and (self.zero == self.sampled if need_zero
                                     else not self.unchanged)

    def describe(self) -> str:
        text = f"{self.sampled} sampled 4 KiB blocks read back: {self.zero} zero"
        if self.changed:
            text += f", {self.changed} not the old data"
        if self.unchanged:
            text += f", {len(self.unchanged)} still the old data"
        return text


def judge(offsets: Sequence[int], before: Sequence[bytes], after: Sequence[bytes]) -> Verdict:
    """Compare the samples read before and after an erase. A block that was zero before and is
    zero after counts as zero. Pure."""
    zero = changed = 0
    unchanged = []
    for off, old, new in zip(offsets, before, after, strict=True):
        if not any(new):
            zero += 1
        elif new != old:
            changed += 1
        else:
            unchanged.append(off)
    return Verdict(len(offsets), zero, changed, unchanged)


@dataclass(frozen=True)
class Signature:
    device: str
    type: str
    offset: int


def parse_wipefs(text: str, device: str) -> list[Signature]:
    """``wipefs --no-act --noheadings --output TYPE,OFFSET``: one signature per line. Pure."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                offset = int(parts[-1], 0)
            except ValueError:
                continue
            found.append(Signature(device, " ".join(parts[:-1]), offset))
    return found


# --- the devices ------------------------------------------------------------------------------


@dataclass
class Report:
    """What was done to one disk and how it was verified: the console line and the event."""

    disk: str
    size: int
    method: str                      # metadata, discard, nvme, ata, zero
    how: str = ""                    # BLKSECDISCARD, "nvme format --ses=1", ...
    seconds: float = 0.0
    verified: str = ""
    removed: list[str] = field(default_factory=list)  # metadata: the signatures wiped

    def line(self) -> str:
        return (f"{self.disk} ({human_size(self.size)}) {self.method} by {self.how} in "
                f"{self.seconds:.1f} s; verified: {self.verified}")

    def fields(self) -> dict[str, object]:
        return {"disk": self.disk, "size": self.size, "mode": self.method, "how": self.how,
                "seconds": round(self.seconds, 2), "verified": self.verified,
                "removed": self.removed}


def read_caps(disk: Disk, mode: Mode, *, sysfs: Path = Path("/sys")) -> Caps:
    """What the disk can do; hdparm -I only when an ATA erase is asked or may be chosen."""
    queue = sysfs / "block" / disk.name / "queue"
    discard = int(read_attr(queue / "discard_max_bytes") or "0") > 0
    nvme = disk.name.startswith("nvme") and "n" in disk.name[4:]
    ata = None
    if mode == "ata" or (mode == "auto" and not nvme and disk.transport == "sata"):
        done = proc.run(["hdparm", "-I", disk.path], check=False, timeout=60)
        ata = parse_ata_security(done.stdout) if done.rc == 0 else None
    return Caps(discard=discard, nvme=nvme, ata=ata)


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DiskError(path, "is in use (cannot open it exclusively: mounted, swap, "
                            "LVM/MD/device-mapper)") from exc
        raise DiskError(path, f"cannot open: {exc.strerror}") from exc


def read_blocks(path: str, offsets: Sequence[int]) -> list[bytes]:
    """4 KiB at each offset, O_DIRECT (the page cache may still hold what the device erased),
    after dropping the device's buffers."""
    import mmap
    fd = _open(path, os.O_RDONLY)
    try:
        syscalls.blk_flush_buffers(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    fd = _open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    out = []
    try:
        for off in offsets:
            n = os.preadv(fd, [buf], off)
            if n != BLOCK:
                raise DiskError(path, f"short read at byte {off} ({n} of {BLOCK})")
            out.append(bytes(buf))
    except OSError as exc:
        raise DiskError(path, f"read at byte {off} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)
        buf.close()
    return out


class _Progress:
    def __init__(self, disk: str, what: str, size: int) -> None:
        self.disk, self.what, self.size = disk, what, size
        self.start = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS or done >= self.size:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        eta = (self.size - done) / rate if rate else 0
        log.info(f"erase: {self.disk} {self.what} {done // MIB} of {self.size // MIB} MiB "
                 f"({100 * done // self.size}%), ETA {eta:.0f} s")


def _ranges(path: str, size: int, call: Callable[[int, int, int], None], what: str) -> None:
    """``call(fd, offset, length)`` over the whole device, a CHUNK at a time, with progress
    lines; an OSError from it names the ioctl (``what``) and the byte."""
    fd = _open(path, os.O_WRONLY | os.O_EXCL)
    progress = _Progress(os.path.basename(path), what, size)
    pos = 0
    try:
        while pos < size:
            n = min(CHUNK, size - pos)
            call(fd, pos, n)
            pos += n
            progress.tick(pos)
        os.fsync(fd)
    except OSError as exc:
        raise DiskError(path, f"{what} at byte {pos} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _discard(disk: Disk) -> str:
    """BLKSECDISCARD, else (refused at the first call) BLKDISCARD."""
    secure = [True]

    def call(fd: int, pos: int, n: int) -> None:
        if secure[0]:
            try:
                syscalls.blk_discard(fd, pos, n, secure=True)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY) or pos:
                    raise
                secure[0] = False
        syscalls.blk_discard(fd, pos, n)

    _ranges(disk.path, disk.size, call, "discard")
    return "BLKSECDISCARD" if secure[0] else "BLKDISCARD"


def _zero(disk: Disk, sysfs: Path) -> str:
    _ranges(disk.path, disk.size, syscalls.blk_zeroout, "BLKZEROOUT")
    offload = int(read_attr(sysfs / "block" / disk.name / "queue" / "write_zeroes_max_bytes")
                  or "0") > 0
    return "BLKZEROOUT (" + ("offloaded to the device: Write Zeroes" if offload
                             else "the kernel wrote zero pages") + ")"


def _nvme(disk: Disk) -> str:
    argv = ["nvme", "format", disk.path, "--ses=1", "--force",
            f"--timeout={NVME_TIMEOUT_MS}"]
    try:
        proc.run(argv, timeout=NVME_TIMEOUT_MS / 1000 + 60)
    except CommandError as exc:
        raise DiskError(disk.path, f"nvme format failed: {exc}") from exc
    return "nvme format --ses=1 (Format NVM, user data erase)"


def _ata(disk: Disk, sec: AtaSecurity | None) -> str:
    enhanced = bool(sec and sec.enhanced)
    erase = "--security-erase-enhanced" if enhanced else "--security-erase"
    base = ["hdparm", "--user-master", "u"]
    try:
        proc.run([*base, "--security-set-pass", ATA_PASSWORD, disk.path], timeout=60)
    except CommandError as exc:
        raise DiskError(disk.path, f"hdparm --security-set-pass failed: {exc}") from exc
    budget = 60 + 2 * 60 * (sec.minutes if sec and sec.minutes else 240)
    try:
        proc.run([*base, erase, ATA_PASSWORD, disk.path], timeout=budget)
    except CommandError as exc:
        # leave no password behind on a drive the erase did not clear
        proc.run([*base, "--security-disable", ATA_PASSWORD, disk.path], check=False,
                 timeout=60)
        raise DiskError(disk.path, f"ATA security erase failed (password removed again): "
                        f"{exc}") from exc
    return f"ATA SECURITY ERASE UNIT{' (enhanced)' if enhanced else ''} via hdparm"


def partition_spans(disk: Disk, sysfs: Path) -> list[tuple[str, int, int]]:
    """(/dev/name, start, size) in bytes of each partition the kernel knows."""
    spans = []
    for part in disk.partitions:
        start = read_attr(sysfs / "block" / disk.name / part.name / "start")
        if start is not None and start.isdigit():
            spans.append((f"/dev/{part.name}", int(start) * 512, part.size))
    return spans


def list_signatures(path: str) -> list[Signature]:
    done = proc.run(["wipefs", "--no-act", "--noheadings", "--output", "TYPE,OFFSET", path],
                    check=False, timeout=60)
    if done.rc != 0:
        raise DiskError(path, f"wipefs --no-act failed: {done.stderr.strip()[:200]}")
    return parse_wipefs(done.stdout, path)


def _metadata(disk: Disk, sysfs: Path) -> tuple[str, list[str], list[tuple[int, int]]]:
    """wipefs on each partition, then the disk; the first and last MiB of each zeroed. Returns
    (how, the signatures removed, the regions zeroed as (offset, length) on the disk)."""
    found: list[Signature] = []
    parts = partition_spans(disk, sysfs)
    for part in [*(p[0] for p in parts), disk.path]:
        if not os.path.exists(part):
            continue
        found += list_signatures(part)
        try:
            # no --force: wipefs itself refuses a device in use
            proc.run(["wipefs", "--all", part], timeout=120)
        except CommandError as exc:
            raise DiskError(part, f"wipefs --all failed: {exc}") from exc
    regions: list[tuple[int, int]] = []
    spans = [(start, size) for _, start, size in parts] + [(0, disk.size)]
    for start, size in spans:
        head = min(EDGE, size)
        regions.append((start, head))
        if size > EDGE:
            tail = max(start + EDGE, start + size - EDGE)
            regions.append((tail, start + size - tail))
    fd = _open(disk.path, os.O_WRONLY | os.O_EXCL)
    try:
        for start, length in regions:
            syscalls.blk_zeroout(fd, start - start % 512, length + start % 512)
        os.fsync(fd)
    except OSError as exc:
        raise DiskError(disk.path, f"zeroing the metadata regions failed: {exc.strerror}") \
            from exc
    finally:
        os.close(fd)
    removed = [f"{os.path.basename(s.device)}:{s.type}@{s.offset:#x}" for s in found]
    return "wipefs --all, the first and last MiB zeroed", removed, regions


def _reread(path: str) -> None:
    """The kernel drops the partitions the erase removed (EBUSY is logged, not fatal: nothing
    holds an erased disk, and the verification reads the disk itself)."""
    try:
        fd = _open(path, os.O_RDONLY)
    except DiskError:
        return
    try:
        for _ in range(10):
            try:
                syscalls.blk_reread_partitions(fd)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning(f"erase: {path}: re-reading partitions: {exc.strerror}")
                    return
                time.sleep(0.2)
    finally:
        os.close(fd)


def erase_disk(disk: Disk, method: Method, caps: Caps, *, sysfs: Path = Path("/sys"),
               rng: random.Random | None = None) -> Report:
    """Erase one disk with ``method`` and verify it. Raises DiskError with one line."""
    report = Report(disk.name, disk.size, method)
    start = time.monotonic()
    offsets = sample_offsets(disk.size, rng=rng)
    if method == "metadata":
        report.how, report.removed, regions = _metadata(disk, sysfs)
        _reread(disk.path)
        left = list_signatures(disk.path)
        if left:
            raise DiskError(disk.path, "erase metadata: wipefs still finds "
                            + ", ".join(f"{s.type} at {s.offset:#x}" for s in left))
        probes = sorted({o - o % BLOCK for start, length in regions
                         for o in (start, start + length - BLOCK) if length >= BLOCK})
        blocks = read_blocks(disk.path, probes)
        dirty = [o for o, b in zip(probes, blocks, strict=True) if any(b)]
        if dirty:
            raise DiskError(disk.path, f"erase metadata: {len(dirty)} zeroed regions do not "
                            f"read back zero (first at byte {dirty[0]})")
        report.verified = (f"wipefs finds no signature; {len(regions)} zeroed regions read "
                           f"back zero ({len(report.removed)} signatures removed)")
        report.seconds = time.monotonic() - start
        return report
    before = read_blocks(disk.path, offsets)
    if method == "discard":
        report.how = _discard(disk)
    elif method == "zero":
        report.how = _zero(disk, sysfs)
    elif method == "nvme":
        report.how = _nvme(disk)
    else:
        report.how = _ata(disk, caps.ata)
    _reread(disk.path)
    verdict = judge(offsets, before, read_blocks(disk.path, offsets))
    report.seconds = time.monotonic() - start
    report.verified = verdict.describe()
    if not verdict.ok(need_zero=method == "zero"):
        hint = ("the device does not erase on discard; use eraseMode zero"
                if method == "discard" else "the erase did not reach these blocks")
        raise DiskError(disk.path, f"erase {method} by {report.how}: verification failed: "
                        f"{verdict.describe()} ({hint})")
    return report


def erase(target: Plan, mode: Mode, *, sysfs: Path = Path("/sys")) -> list[Report]:
    """Erase every planned disk, in parallel (one thread per disk: the ioctls and the
    commands wait on the devices). Every disk's mode is chosen, and every refusal raised,
    before the first disk is touched. Raises DiskError naming each disk that failed."""
    chosen: list[tuple[Disk, Method, Caps]] = []
    for disk in target.disks:
        caps = read_caps(disk, mode, sysfs=sysfs)
        method, note = choose_mode(mode, disk, caps)
        if note:
            log.info(f"erase: {note}")
        chosen.append((disk, method, caps))
    for disk, method, _ in chosen:
        log.info(f"erase: {disk.summary()}: {method}")
    reports: dict[str, Report] = {}
    failures: dict[str, str] = {}

    def one(disk: Disk, method: Method, caps: Caps) -> None:
        try:
            report = erase_disk(disk, method, caps, sysfs=sysfs)
        except DiskError as exc:
            failures[disk.name] = str(exc)
            event("erase", "failed", disk=disk.name, mode=method, error=str(exc))
            return
        except Exception as exc:  # a bug: still one line per disk, the others go on
            failures[disk.name] = f"{type(exc).__name__}: {exc}"
            return
        reports[disk.name] = report
        log.info(f"erase: {report.line()}")
        event("erase", "disk", **report.fields())

    threads = [threading.Thread(target=one, args=c, name=f"erase-{c[0].name}", daemon=True)
               for c in chosen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        done = ", ".join(sorted(reports)) or "none"
        raise EraseError("; ".join(failures[k] for k in sorted(failures))
                        + f" (erased and verified: {done})")
    return [reports[d.name] for d, _, _ in chosen]
