"""Boot QEMU (TCG), stream the serial console, expect lines and events.

Modelled on u-root's vmtest: ``-kernel/-initrd`` with ``-no-reboot`` and ``panic=-1`` (so a guest
poweroff, reboot or panic all make QEMU exit), every serial line in the test log with a ``vm:``
prefix, ``expect()`` with a timeout per expectation plus one for the whole VM, the exact QEMU
command line printed, and QEMU always killed and reaped.

Without a kernel (``VMConfig.kernel=None``) the firmware boots the first disk, as on a real
machine: SeaBIOS (``firmware="bios"``) or OVMF (``firmware="uefi"``: the code image read-only
and a private, writable copy of its variable store in pflash). Both print to the serial console.

The NIC uses slirp (user networking) unless ``VMConfig.tap`` names a TAP device; with
``VMConfig.netns`` QEMU runs inside that network namespace (``ip netns exec``), so a test can put
the VM on a bridge next to a real dnsmasq without touching the host's network.

The serial console goes to QEMU's stdout with ``-display none -serial stdio -monitor none``.
``-nographic`` is deliberately not used: it makes SeaBIOS write escape sequences and
``Booting from ROM..`` (without a newline) onto the serial line, glued to the guest's first line.

:func:`build_command` is pure; :class:`VM` runs QEMU directly with :mod:`subprocess` (host-side
test code, not :func:`pyinit.proc.run`: QEMU is a long-lived child whose output is streamed).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pyinit.log import EVENT_PREFIX, find_event, parse_event

log = logging.getLogger("pyinit_qemu")
serial_log = logging.getLogger("pyinit_qemu.serial")

QEMU = "qemu-system-x86_64"
DEFAULT_MAC = "52:54:00:12:34:56"
#: In QEMU's user networking (slirp) the guest reaches the host's 127.0.0.1 at this address.
SLIRP_HOST = "10.0.2.2"
#: Added in front of the caller's kernel command line (unless already present).
CONSOLE_ARGS = ("console=ttyS0", "panic=-1")
TCG_CPU = "qemu64,+rdrand"
DEFAULT_EXPECT_TIMEOUT = 120.0
DEFAULT_VM_TIMEOUT = 600.0
TAIL_LINES = 30

Interface = Literal["virtio", "ide", "ahci", "scsi", "nvme", "usb", "megasas", "megasas-gen2",
                    "lsi", "mptsas", "pvscsi"]
# SCSI disks and the host bus adapter QEMU puts them behind (one adapter per kind and VM):
# virtio-scsi, and the emulated server HBAs of the hardware matrix (megaraid_sas, sym53c8xx,
# mptsas, vmw_pvscsi in the guest).
SCSI_HBAS: dict[str, str] = {"scsi": "virtio-scsi-pci", "megasas": "megasas",
                             "megasas-gen2": "megasas-gen2", "lsi": "lsi53c895a",
                             "mptsas": "mptsas1068", "pvscsi": "pvscsi"}
INTERFACES: tuple[str, ...] = ("virtio", "ide", "ahci", "nvme", "usb", *SCSI_HBAS)
AHCI_PORTS = 6
Accel = Literal["tcg", "kvm", "auto"]
Firmware = Literal["bios", "uefi"]
FIRMWARES: tuple[str, ...] = ("bios", "uefi")
#: Where distributions install OVMF (Debian/Ubuntu, Fedora).
OVMF_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/edk2/ovmf"))
#: (code, variable store template) pairs that belong together, preferred first. Code and store
#: fill one flash together (4 MiB or 2 MiB); a store from the other pair still boots, but OVMF
#: never writes it (tried: NVRAM silently not persisted).
OVMF_PAIRS = (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd"))
#: The name of the VM's own copy of the variable store in its workdir.
UEFI_VARS_NAME = "OVMF_VARS.fd"

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Configuration and the pure command line


@dataclass(frozen=True)
class Disk:
    """One disk: a host file attached through ``interface``, optionally with a disk serial.
    ``nvme`` is one NVMe controller per disk; ``usb`` a usb-storage stick on a qemu-xhci
    controller, ``removable`` setting its SCSI removable bit (as real sticks do)."""

    path: Path | str
    interface: Interface = "virtio"
    format: str = "raw"
    serial: str | None = None
    removable: bool = False
    #: What a guest's discard does: None, QEMU's default (virtio advertises discard, the host
    #: ignores it); "unmap": the host punches the file; "ignore": advertised and ignored, said
    #: outright (a device that keeps its data after a discard); "off": not advertised at all
    #: (virtio only).
    discard: Literal["unmap", "ignore", "off"] | None = None

    def __post_init__(self) -> None:
        if self.interface not in INTERFACES:
            raise ValueError(f"disk {self.path}: interface {self.interface!r} is not one of "
                             f"{', '.join(INTERFACES)}")
        if self.discard == "off" and self.interface != "virtio":
            raise ValueError(f"disk {self.path}: discard off needs interface virtio")


@dataclass(frozen=True)
class Ovmf:
    """An OVMF build: the code image (mapped read-only) and the template of its variable store."""

    code: Path
    vars_template: Path


def find_ovmf(dirs: Sequence[Path] | None = None) -> Ovmf:
    """The first installed OVMF code image with its matching variable store (in ``dirs``,
    default :data:`OVMF_DIRS`)."""
    dirs = OVMF_DIRS if dirs is None else dirs
    for d in dirs:
        for code, template in OVMF_PAIRS:
            if (d / code).is_file() and (d / template).is_file():
                return Ovmf(d / code, d / template)
    looked = ", ".join(str(d / code) for d in dirs for code, _ in OVMF_PAIRS)
    raise VMError(f"no OVMF firmware (looked for {looked}); install it: apt install ovmf")


@dataclass
class VMConfig:
    """What to boot and with which hardware. ``accel="auto"`` uses KVM only if a probe boots.

    With ``kernel=None`` the firmware boots the ``cdrom``, else the first disk (``bootindex``);
    ``initrd`` and ``append`` then must be empty. For ``firmware="uefi"``,
    :func:`resolve_firmware` (run by :class:`VM`) fills in ``ovmf`` and ``uefi_vars``.
    """

    kernel: Path | str | None = None
    initrd: Path | str | None = None
    append: str = ""
    firmware: Firmware = "bios"
    #: OVMF images for ``firmware="uefi"``; None: :func:`find_ovmf`.
    ovmf: Ovmf | None = None
    #: The VM's writable UEFI variable store; None: ``OVMF_VARS.fd`` in the workdir. Created
    #: from ``ovmf.vars_template`` when missing; an existing file is used as it is, so boot
    #: entries persist across VMs that share it. Never the system's template itself.
    uefi_vars: Path | str | None = None
    #: False: ``-no-reboot`` (a guest reboot ends QEMU). True: the guest reboots, e.g. from an
    #: installer into the disk it wrote.
    reboot: bool = False
    disks: list[Disk] = field(default_factory=list)
    mac: str = DEFAULT_MAC
    #: QEMU NIC model (``virtio-net-pci``, ``e1000``, ...); None: no NIC at all.
    nic_model: str | None = "virtio-net-pci"
    memory_mb: int = 1024
    cpus: int = 1
    accel: Accel = "tcg"
    #: Whole-VM timeout in seconds: QEMU is killed when it expires (None: no limit).
    timeout: float | None = DEFAULT_VM_TIMEOUT
    #: serial.log and command.txt go here; None: a temporary directory, removed after a clean
    #: ``with`` block and kept (and logged) when the block raised.
    workdir: Path | str | None = None
    extra_args: list[str] = field(default_factory=list)
    #: slirp host forwards, QEMU syntax: ``tcp:127.0.0.1:2222-:22``.
    hostfwd: list[str] = field(default_factory=list)
    #: Network boot (no kernel): slirp's TFTP serves this directory and its DHCP offers
    #: ``pxe_bootfile`` (e.g. an iPXE script); the NIC keeps QEMU's iPXE ROM and boots first.
    pxe_tftp: Path | str | None = None
    pxe_bootfile: str | None = None
    #: Instead of slirp: this existing TAP device (``-netdev tap,ifname=...,script=no``), e.g.
    #: one enslaved to a bridge where a real DHCP/TFTP server (dnsmasq) answers.
    tap: str | None = None
    #: Run QEMU inside this network namespace (``ip netns exec NS qemu ...``): where ``tap``
    #: lives, so a test's network never touches the host's.
    netns: str | None = None
    #: Network boot from whatever DHCP server is on ``tap``: the NIC keeps QEMU's iPXE ROM and
    #: boots first (``pxe_tftp`` implies this for slirp).
    net_boot: bool = False
    #: An ISO in a CD-ROM drive (read-only, IDE): without a kernel or network boot, the
    #: firmware boots it (``bootindex=0``; the disks get none), as a BMC's virtual media.
    cdrom: Path | str | None = None
    qemu: str = QEMU


def kernel_append(append: str) -> str:
    """The kernel command line: :data:`CONSOLE_ARGS` first (so the caller's ``--`` stays last)."""
    words = append.split()
    extra = [arg for arg in CONSOLE_ARGS if arg not in words]
    return " ".join([*extra, append.strip()]).strip()


def _opt(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` option syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def build_command(cfg: VMConfig) -> list[str]:
    """The QEMU argv for ``cfg``. Pure: no I/O (resolve ``accel="auto"`` with
    :func:`resolve_accel` and, for UEFI, the firmware files with :func:`resolve_firmware`)."""
    if cfg.accel not in ("tcg", "kvm"):
        raise ValueError(f"accel {cfg.accel!r}: resolve it with resolve_accel() first")
    if cfg.firmware not in FIRMWARES:
        raise ValueError(f"firmware {cfg.firmware!r} is not one of {', '.join(FIRMWARES)}")
    if cfg.kernel is None and (cfg.initrd is not None or cfg.append.strip()):
        raise ValueError("initrd and append need a kernel (without one the firmware boots the "
                         "first disk)")
    argv = [] if cfg.netns is None else ["ip", "netns", "exec", cfg.netns]
    argv += [cfg.qemu, "-accel", cfg.accel]
    if cfg.accel == "kvm":
        argv += ["-cpu", "host"]
    else:
        # A plain x86-64 with RDRAND, as real servers have: the kernel's CRNG is ready at once
        # instead of ~2 s into boot (Python's first os.urandom() would block on it). Not "max":
        # TCG emulates its extra features slower than the baseline code paths glibc, zstd and
        # the kernel choose without them (pyinit's boot to the action: 11.3 s with max against
        # 9.9 s, four boots each, QEMU 7.2).
        argv += ["-cpu", TCG_CPU]
    argv += ["-m", str(cfg.memory_mb), "-smp", str(cfg.cpus)]
    if cfg.firmware == "uefi":
        if cfg.ovmf is None or cfg.uefi_vars is None:
            raise ValueError("firmware uefi: set ovmf and uefi_vars with resolve_firmware() "
                             "first")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,"
                           f"file={_opt(str(cfg.ovmf.code))}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={_opt(str(cfg.uefi_vars))}"]
    if cfg.kernel is not None:
        argv += ["-kernel", str(cfg.kernel)]
        if cfg.initrd is not None:
            argv += ["-initrd", str(cfg.initrd)]
        argv += ["-append", kernel_append(cfg.append)]
    if not cfg.reboot:
        argv += ["-no-reboot"]
    argv += ["-display", "none", "-serial", "stdio", "-monitor", "none"]
    pxe = cfg.pxe_tftp is not None or cfg.net_boot
    if pxe and (cfg.kernel is not None or not cfg.nic_model
                or (cfg.pxe_tftp is not None and not cfg.pxe_bootfile)):
        raise ValueError("network boot needs kernel=None, a NIC and pxe_bootfile")
    if cfg.tap is not None and (cfg.pxe_tftp is not None or cfg.hostfwd):
        raise ValueError(f"tap {cfg.tap}: pxe_tftp and hostfwd are slirp options")
    if cfg.net_boot and cfg.tap is None:
        raise ValueError("net_boot needs a tap device (slirp network boot: pxe_tftp)")
    if cfg.nic_model:
        if cfg.tap is not None:
            netdev = f"tap,id=n0,ifname={_opt(cfg.tap)},script=no,downscript=no"
        else:
            netdev = "user,id=n0" + "".join(f",hostfwd={_opt(f)}" for f in cfg.hostfwd)
        if cfg.pxe_tftp is not None:
            netdev += f",tftp={_opt(str(cfg.pxe_tftp))},bootfile={_opt(str(cfg.pxe_bootfile))}"
        if pxe:
            nic = f"{cfg.nic_model},netdev=n0,mac={cfg.mac},bootindex=0"  # QEMU's iPXE ROM
        else:
            # romfile= : no iPXE option ROM: nothing network-boots, whether QEMU loads the
            # kernel itself or the firmware boots a disk.
            nic = f"{cfg.nic_model},netdev=n0,mac={cfg.mac},romfile="
        argv += ["-netdev", netdev, "-device", nic]
    else:
        argv += ["-nic", "none"]
    boot_cdrom = cfg.cdrom is not None and cfg.kernel is None and not pxe
    if cfg.cdrom is not None:
        argv += ["-drive", f"file={_opt(str(cfg.cdrom))},format=raw,media=cdrom,readonly=on,"
                           "if=none,id=cd0",
                 "-device", "ide-cd,drive=cd0" + (",bootindex=0" if boot_cdrom else "")]
    argv += _disk_args(cfg.disks, boot_first=cfg.kernel is None and not pxe and not boot_cdrom)
    argv += [str(a) for a in cfg.extra_args]
    return argv


def _disk_args(disks: Sequence[Disk], *, boot_first: bool = False) -> list[str]:
    """``-drive``/``-device`` pairs; ``boot_first``: the first disk gets ``bootindex=0``."""
    argv: list[str] = []
    ahci_ports = 0
    have_xhci = False
    hbas: set[str] = set()
    for i, disk in enumerate(disks):
        drive = f"d{i}"
        host_discard = f",discard={disk.discard}" if disk.discard in ("unmap", "ignore") else ""
        argv += ["-drive", f"file={_opt(str(disk.path))},format={disk.format},if=none,id={drive}"
                 f"{host_discard}"]
        props = f",serial={_opt(disk.serial)}" if disk.serial else ""
        if disk.discard == "off":
            props += ",discard=off"
        if boot_first and i == 0:
            props += ",bootindex=0"
        if disk.removable and disk.interface not in ("usb", *SCSI_HBAS):
            raise ValueError(f"disk {disk.path}: removable needs interface usb or a SCSI one")
        if disk.removable:
            props += ",removable=on"
        if disk.interface == "virtio":
            device = f"virtio-blk-pci,drive={drive}{props}"
        elif disk.interface == "nvme":
            serial = "" if disk.serial else f",serial=nvme{i}"  # QEMU's NVMe requires one
            device = f"nvme,drive={drive}{serial}{props}"
        elif disk.interface == "usb":
            if not have_xhci:
                argv += ["-device", "qemu-xhci,id=xhci0"]
                have_xhci = True
            device = f"usb-storage,drive={drive},bus=xhci0.0{props}"
        elif disk.interface == "ide":
            device = f"ide-hd,drive={drive}{props}"  # QEMU picks the next free IDE slot
        elif disk.interface == "ahci":
            if ahci_ports == 0:
                argv += ["-device", "ahci,id=ahci0"]
            if ahci_ports >= AHCI_PORTS:
                raise ValueError(f"more than {AHCI_PORTS} AHCI disks")
            device = f"ide-hd,drive={drive},bus=ahci0.{ahci_ports}{props}"
            ahci_ports += 1
        else:
            hba = "scsi0" if disk.interface == "scsi" else disk.interface.replace("-", "")
            if hba not in hbas:
                argv += ["-device", f"{SCSI_HBAS[disk.interface]},id={hba}"]
                hbas.add(hba)
            device = f"scsi-hd,drive={drive},bus={hba}.0{props}"
        argv += ["-device", device]
    return argv


def resolve_firmware(cfg: VMConfig, workdir: Path | str) -> VMConfig:
    """``cfg`` with, for UEFI, the OVMF images found and the variable store placed in
    ``workdir`` (unless given). Touches no file; :func:`prepare_uefi_vars` creates the store."""
    if cfg.firmware != "uefi":
        return cfg
    ovmf = cfg.ovmf if cfg.ovmf is not None else find_ovmf()
    uefi_vars = cfg.uefi_vars if cfg.uefi_vars is not None else Path(workdir, UEFI_VARS_NAME)
    return replace(cfg, ovmf=ovmf, uefi_vars=uefi_vars)


def prepare_uefi_vars(cfg: VMConfig) -> None:
    """Create ``cfg.uefi_vars`` as a copy of the OVMF template, unless it exists already."""
    if cfg.firmware != "uefi" or cfg.ovmf is None or cfg.uefi_vars is None:
        return
    target = Path(cfg.uefi_vars)
    template = cfg.ovmf.vars_template
    if target.resolve() == template.resolve():
        raise VMError(f"uefi_vars {target} is the system's OVMF template: give the VM a copy")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)  # not copy2: the copy must be writable, whatever the mode
    log.info("UEFI variable store %s (from %s)", target, template)


def create_disk(path: Path | str, size_bytes: int) -> Path:
    """A sparse raw disk image of ``size_bytes`` (zeros), replacing any file at ``path``."""
    if size_bytes <= 0:
        raise ValueError(f"disk size must be positive, not {size_bytes}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        f.truncate(size_bytes)
    return p


def guest_url(url: str) -> str:
    """``url`` as the guest sees it: the host's loopback is :data:`SLIRP_HOST` under slirp."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1", "::"):
        return url
    netloc = SLIRP_HOST if parts.port is None else f"{SLIRP_HOST}:{parts.port}"
    if parts.username:
        cred = parts.username + (f":{parts.password}" if parts.password else "")
        netloc = f"{cred}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------
# Accelerator


# A boot sector that writes 0x2a to QEMU's isa-debug-exit port: QEMU exits (0x2a << 1) | 1 = 85.
_PROBE_SECTOR = bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"
_PROBE_EXIT = 85


def _probe_run(argv: list[str], timeout: float) -> int | None:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):  # run() kills and reaps QEMU on timeout
        return None
    return done.returncode


def probe_accel(accel: str, *, qemu: str = QEMU, kernel: Path | str | None = None,
                timeout: float = 2.0, kernel_timeout: float = 15.0) -> bool:
    """True if ``accel`` really runs guests here, within bounded time.

    Nested KVM can offer a ``/dev/kvm`` that runs real-mode code slowly and then never gets a
    Linux kernel past decompression. So: a 512-byte boot sector must exit QEMU (through
    ``isa-debug-exit``) within ``timeout`` seconds, then, if ``kernel`` is given, that kernel
    without an initramfs must reach its "no root" panic (``panic=-1`` + ``-no-reboot``: QEMU
    exits) within ``kernel_timeout`` seconds.
    """
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if shutil.which(qemu) is None:
        return False
    base = [qemu, "-accel", accel, "-display", "none", "-monitor", "none", "-nic", "none",
            "-no-reboot", "-m", "256"]
    with tempfile.TemporaryDirectory(prefix="pyinit-accel-") as tmp:
        disk = Path(tmp, "probe.img")
        disk.write_bytes(_PROBE_SECTOR)
        argv = [*base, "-serial", "none", "-drive", f"file={_opt(str(disk))},format=raw,if=ide",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        if _probe_run(argv, timeout) != _PROBE_EXIT:
            return False
    if kernel is None:
        return True
    argv = [*base, "-serial", "none", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 root=/dev/pyinit-probe-none"]
    return _probe_run(argv, kernel_timeout) == 0


@functools.cache
def kvm_works(qemu: str = QEMU, kernel: str | None = None) -> bool:
    """Whether KVM really works on this host (probed once per process and kernel)."""
    started = time.monotonic()
    ok = probe_accel("kvm", qemu=qemu, kernel=kernel)
    log.info("KVM probe (%.1f s): %s", time.monotonic() - started,
             "works" if ok else "not usable, using TCG")
    return ok


def resolve_accel(accel: str, *, probe: Callable[[], bool] = kvm_works) -> Literal["tcg", "kvm"]:
    """``auto`` -> ``kvm`` if ``probe()`` says KVM works, else ``tcg``."""
    if accel == "auto":
        return "kvm" if probe() else "tcg"
    if accel in ("tcg", "kvm"):
        return "kvm" if accel == "kvm" else "tcg"
    raise ValueError(f"accel {accel!r} is not one of tcg, kvm, auto")


# --------------------------------------------------------------------------------------------
# Running QEMU


class VMError(Exception):
    """The VM did not do what the test expected."""


class ExpectTimeout(VMError):
    """An expectation was not met in time, or QEMU exited first. Carries the serial tail."""

    def __init__(self, message: str, tail: Sequence[str] = (), *, exited: bool = False) -> None:
        self.reason = message
        self.tail = list(tail)
        self.exited = exited
        text = message
        if self.tail:
            text += f"\n--- last {len(self.tail)} serial lines ---\n" + "\n".join(self.tail)
        super().__init__(text)


class UnexpectedOutput(VMError):
    """A ``fail_on`` pattern appeared before the expected one."""


_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[()][0-9A-Za-z]"
                      r"|[@-~])")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_LINE = 64 * 1024


def clean_line(raw: bytes) -> str:
    """A serial line as text: UTF-8 (lenient), without ``\\r``, escape sequences or controls."""
    text = raw.decode("utf-8", errors="replace")
    return _CTRL_RE.sub("", _ANSI_RE.sub("", text))


_KMSG_RE = re.compile(r"\[\s*\d+\.\d{6}\] ")  # a kernel message's timestamp on the console


class Unsplicer:
    """Serial lines with the kernel's console messages taken back out of pyinit's event lines.

    printk writes to the UART directly while a process's write to the console tty drains in
    chunks, so a kernel message can land inside an event line: after its JSON (``...}[ 15.6]
    sd 3:0:0:0: ...``) or in the middle of it, where the kernel message's own newline splits
    the event over two lines. Each is given back as the event line and the kernel line."""

    MAX_PARTS = 4  # lines an event may be spread over before it is given up as broken

    def __init__(self) -> None:
        self._head = ""  # an event's text so far, waiting for the rest of its line
        self._parts = 0

    def feed(self, line: str) -> list[str]:
        """The lines that ``line`` completes, in console order."""
        out: list[str] = []
        if self._head:
            joined = self._head + line
            if find_event(joined) is not None:
                self._head, self._parts = "", 0
                return self._split_tail(joined)
            cut = self._kernel_cut(joined)
            self._parts += 1
            if cut is not None and self._parts < self.MAX_PARTS:
                self._head, kmsg = joined[:cut], joined[cut:]
                return [kmsg]
            out.append(self._head)  # never completed: given back as it came
            self._head, self._parts = "", 0
        if EVENT_PREFIX in line and find_event(line) is None:
            cut = self._kernel_cut(line)
            if cut is not None:
                self._head, self._parts = line[:cut], 1
                return [*out, line[cut:]]
        return out + self._split_tail(line)

    def flush(self) -> list[str]:
        """What is still held back (at the end of the output)."""
        head, self._head, self._parts = self._head, "", 0
        return [head] if head else []

    @staticmethod
    def _kernel_cut(line: str) -> int | None:
        """Where the last kernel message after the event prefix starts, or None."""
        start = line.find(EVENT_PREFIX)
        cuts = [m.start() for m in _KMSG_RE.finditer(line, start + len(EVENT_PREFIX))]
        return cuts[-1] if cuts else None

    @staticmethod
    def _split_tail(line: str) -> list[str]:
        found = find_event(line)
        if found is None or not line[found[1]:].strip():
            return [line]
        return [line[:found[1]], line[found[1]:]]


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn making QEMU receive SIGTERM when the test process dies (Linux only)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:  # runs in the forked child: one resolved libc call, nothing else
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


_PREEXEC = _pdeathsig()
_live: weakref.WeakSet[VM] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for vm in list(_live):
        with contextlib.suppress(Exception):
            vm.kill()


Pattern = str | re.Pattern[str]


def _compile(pattern: Pattern) -> re.Pattern[str]:
    return re.compile(pattern) if isinstance(pattern, str) else pattern


class VM:
    """A running QEMU. Use as a context manager; ``__exit__`` always kills and reaps QEMU.

    ``expect``/``expect_event`` search serial lines from a cursor that advances past the match;
    ``lines``/``events`` hold everything seen so far. ``on_output`` receives raw serial bytes as
    they arrive (the CLI streams them); ``interactive`` hands QEMU this process's stdin.

    QEMU gets SIGTERM if the process that started it dies; start VMs from a thread that outlives
    them (the test's own thread).
    """

    def __init__(self, cfg: VMConfig, *, on_output: Callable[[bytes], None] | None = None,
                 interactive: bool = False) -> None:
        kernel = None if cfg.kernel is None else str(cfg.kernel)
        self._own_workdir = cfg.workdir is None
        self.workdir = (Path(cfg.workdir) if cfg.workdir is not None
                        else Path(tempfile.mkdtemp(prefix="pyinit-vm-")))
        try:
            cfg = resolve_firmware(cfg, self.workdir)
            self.cfg = replace(cfg, accel=resolve_accel(
                cfg.accel, probe=lambda: kvm_works(cfg.qemu, kernel)))
            self.argv = build_command(self.cfg)
        except BaseException:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.serial_path = self.workdir / "serial.log"
        self._on_output = on_output
        self._interactive = interactive
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._unsplicer = Unsplicer()  # used by the reader thread only
        self._stderr: list[str] = []
        self._cursor = 0
        self._eof = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._watchdog: threading.Timer | None = None
        self._serial_file: IO[str] | None = None
        self._kill_lock = threading.Lock()
        self._started = 0.0
        self.timed_out = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> VM:
        if self._proc is not None:
            raise VMError("VM already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        prepare_uefi_vars(self.cfg)
        command = shlex.join(self.argv)
        (self.workdir / "command.txt").write_text(command + "\n")
        log.info("+ %s", command)
        log.info("VM workdir %s (serial.log, command.txt)", self.workdir)
        self._serial_file = open(self.serial_path, "a", encoding="utf-8")  # noqa: SIM115
        self._started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=None if self._interactive else subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=_PREEXEC)  # a single prctl() call, see _pdeathsig
        except OSError as exc:
            self._serial_file.close()
            self._serial_file = None
            raise VMError(f"cannot start {self.argv[0]}: {exc}") from exc
        _live.add(self)
        for name, target in (("serial", self._read_serial), ("stderr", self._read_stderr)):
            t = threading.Thread(target=target, name=f"vm-{name}-{self._proc.pid}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.cfg.timeout is not None:
            self._watchdog = threading.Timer(self.cfg.timeout, self._on_vm_timeout)
            self._watchdog.daemon = True
            self._watchdog.start()
        return self

    def __enter__(self) -> VM:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
        if not self._own_workdir:
            return
        if exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log.error("keeping VM workdir %s (serial.log, command.txt)", self.workdir)

    def kill(self, grace: float = 5.0) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL after ``grace`` s), reap it, finish the serial log.

        SIGTERM first: QEMU then restores the terminal it may have put in raw mode.
        """
        with self._kill_lock:
            if self._watchdog is not None:
                self._watchdog.cancel()
            proc = self._proc
            if proc is not None and proc.poll() is None:
                log.info("killing QEMU (pid %d)", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(timeout=5)
            if proc is not None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            for stream in (proc.stdout, proc.stderr) if proc is not None else ():
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if self._serial_file is not None:
                with contextlib.suppress(OSError):
                    self._serial_file.close()
                self._serial_file = None
            _live.discard(self)

    def _on_vm_timeout(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.timed_out = True
        log.error("whole-VM timeout (%s s) expired: killing QEMU", self.cfg.timeout)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    # -- readers -----------------------------------------------------------------------------

    def _read_serial(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                if self._on_output is not None:
                    try:
                        self._on_output(chunk)
                    except Exception as exc:  # a broken sink must not stop the reader
                        log.debug("serial output sink failed: %s", exc)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    self._add_line(raw)
                if len(pending) > _MAX_LINE:
                    self._add_line(pending)
                    pending = b""
            if pending:
                self._add_line(pending)
            for line in self._unsplicer.flush():
                self._add_clean(line)
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _add_line(self, raw: bytes) -> None:
        for line in self._unsplicer.feed(clean_line(raw)):
            self._add_clean(line)

    def _add_clean(self, line: str) -> None:
        serial_log.info("vm: %s", line)
        ev = parse_event(line)
        with self._cond:
            if self._serial_file is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._serial_file.write(line + "\n")
                    self._serial_file.flush()
            self._lines.append(line)
            if ev is not None:
                self._events.append(ev)
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in self._proc.stderr:
                line = clean_line(raw.rstrip(b"\n"))
                self._stderr.append(line)
                log.warning("qemu: %s", line)

    # -- observing ---------------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        """Every serial line so far (``\\r`` and escape sequences stripped)."""
        with self._cond:
            return list(self._lines)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every ``PYINIT-EVENT`` seen so far, parsed."""
        with self._cond:
            return list(self._events)

    @property
    def stderr(self) -> list[str]:
        """QEMU's own stderr lines (errors about its command line, disks, ...)."""
        return list(self._stderr)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def elapsed(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self._started if self._started else 0.0

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        with self._cond:
            return self._lines[-n:]

    def expect(self, pattern: Pattern, timeout: float = DEFAULT_EXPECT_TIMEOUT, *,
               fail_on: Pattern | None = None) -> re.Match[str]:
        """The first match of ``pattern`` (``re.search``) in a line after the cursor.

        Raises :class:`ExpectTimeout` after ``timeout`` seconds or when QEMU exits first, and
        :class:`UnexpectedOutput` at once if a line matching ``fail_on`` comes first.
        """
        rx = _compile(pattern)
        return self._wait(rx.search, timeout, f"/{rx.pattern}/", fail_on)

    def expect_event(self, step: str | None = None, status: str | None = None,
                     timeout: float = DEFAULT_EXPECT_TIMEOUT, *, fail_on: Pattern | None = None,
                     **fields: Any) -> dict[str, Any]:
        """The next ``PYINIT-EVENT`` after the cursor whose step, status and ``fields`` match."""
        want = dict(fields)
        if step is not None:
            want["step"] = step
        if status is not None:
            want["status"] = status

        def check(line: str) -> dict[str, Any] | None:
            ev = parse_event(line)
            if ev is not None and all(ev.get(k) == v for k, v in want.items()):
                return ev
            return None

        what = "event " + (", ".join(f"{k}={v!r}" for k, v in want.items()) or "(any)")
        return self._wait(check, timeout, what, fail_on)

    def _wait(self, check: Callable[[str], _T | None], timeout: float, what: str,
              fail_on: Pattern | None) -> _T:
        bad = _compile(fail_on) if fail_on is not None else None
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self._lines):
                    line = self._lines[self._cursor]
                    self._cursor += 1
                    result = check(line)
                    if result is not None:
                        return result
                    if bad is not None and bad.search(line):
                        raise UnexpectedOutput(
                            f"serial line matches /{bad.pattern}/ while waiting for {what}: "
                            f"{line}\n--- last serial lines ---\n"
                            + "\n".join(self._lines[-TAIL_LINES:]))
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpectTimeout(
                        f"timed out after {timeout:g} s waiting for {what} "
                        f"(serial log: {self.serial_path})", self._lines[-TAIL_LINES:])
                self._cond.wait(left)
        raise self._exited_error(f"waiting for {what}")

    def _exited_error(self, doing: str) -> ExpectTimeout:
        rc = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self._proc.wait(timeout=5)
        if self.timed_out:
            why = f"whole-VM timeout ({self.cfg.timeout:g} s) expired and QEMU was killed"
        else:
            why = f"QEMU exited (status {rc})"
        stderr = "".join(f"\nqemu: {s}" for s in self._stderr[-10:])
        return ExpectTimeout(f"{why} {doing} (serial log: {self.serial_path}){stderr}",
                             self.tail(), exited=True)

    def wait_exit(self, timeout: float | None = DEFAULT_EXPECT_TIMEOUT) -> int:
        """QEMU's exit status once it exits (guest poweroff, reboot or panic, with -no-reboot).

        Raises :class:`ExpectTimeout` if it is still running after ``timeout`` seconds (None: no
        limit but the whole-VM one), or if the whole-VM timeout killed it.
        """
        if self._proc is None:
            raise VMError("VM not started")
        try:
            rc = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ExpectTimeout(f"QEMU still running after {timeout} s "
                                f"(serial log: {self.serial_path})", self.tail()) from None
        for t in self._threads:
            t.join(timeout=5)
        if self.timed_out:
            raise self._exited_error("while waiting for it to exit")
        log.info("QEMU exited with status %d after %.1f s", rc, self.elapsed)
        return rc

    def assert_never(self, *patterns: Pattern) -> None:
        """Raise AssertionError if any serial line so far matches any of ``patterns``."""
        rxs = [_compile(p) for p in patterns]
        lines = self.lines
        for i, line in enumerate(lines):
            for rx in rxs:
                if rx.search(line):
                    context = "\n".join(lines[max(0, i - 5):i + 6])
                    raise AssertionError(f"serial line {i + 1} matches /{rx.pattern}/: {line}\n"
                                         f"--- context ---\n{context}")

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console (not available in interactive mode)."""
        if self._proc is None or self._proc.stdin is None:
            raise VMError("no serial input: VM not started or interactive")
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

