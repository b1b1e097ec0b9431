"""``pyinit iso``: boot media without PXE — the kernel, the initramfs and a baked kernel command
line on one hybrid ISO, for a BMC's virtual media, a CD, or ``dd`` to a USB stick.

Steps, in order (each one logged):

1. preflight: every missing host tool and GRUB platform file named at once, before any work;
2. command line: composed from ``--cmdline``/``--url``/``--ip``/``--token``/``--append`` and
   checked with the runtime's own parser (:func:`pyinit.cmdline.parse_cmdline`), as the kernel
   will hand it to ``/init`` after GRUB's quoting; a line the boot would refuse fails here;
3. GRUB: ``grub-mkimage`` builds the El Torito BIOS image (``i386-pc-eltorito``: cdboot.img +
   core.img) and ``BOOTX64.EFI``, the latter inside a small FAT12 image (the El Torito EFI image);
   both carry every module the boot needs and an early config that finds the ISO by its file
   system UUID and reads ``/boot/grub/grub.cfg`` from it;
4. xorriso writes the ISO 9660 (Rock Ridge) file system, both El Torito entries and the
   system area for USB sticks: GRUB's ``boot_hybrid.img`` as MBR boot code (BIOS; it loads
   core.img out of the El Torito image, patched by ``--grub2-boot-info``) and a GPT whose EFI
   system partition is the EFI image itself (UEFI), behind a protective MBR. Written to a
   temporary file and renamed.

Why not ``grub-mkrescue`` (which runs the same xorriso): it copies every GRUB module, locale
and font of both platforms (+15 MB) and an HFS+ tree for Macs, and makes its EFI image with
``mformat``, whose volume serial changes on every run, so two builds never compare equal. The
two images here come from the golden-image builder's helpers (:func:`grub.mkimage`,
:func:`fs.make_vfat`), the layout options are grub-mkrescue's, minus HFS+.

Reproducible: the ISO's dates (and so GRUB's view of its UUID, ``2024-01-01-00-00-00-00``, and
the GPT's GUIDs) come from SOURCE_DATE_EPOCH (the last commit's time by default), file dates are
clamped to it, the FAT image is ``mkfs.fat --invariant`` with a fixed serial: the same inputs
give the same bytes.

The token (``pyinit.token=``) is masked in every log line and in the summary; it is in the ISO
in clear, so the ISO is written mode 0600 when it carries one.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyinit import proc
from pyinit.cmdline import BootParams, mask_secrets, parse_cmdline, tokenize
from pyinit.errors import ConfigError
from pyinit.units import MIB
from pyinit_build import initramfs, preflight
from pyinit_build.errors import BuildError, PreflightError
from pyinit_build.golden import fs, grub

log = logging.getLogger("pyinit_build.iso")

DEFAULT_SERIAL = "ttyS0,115200"
DEFAULT_VOLUME_ID = "PYINIT"
ISO_MODULES = ("iso9660",)  # + grub.MODULES: the ISO's own file system
# Paths inside the ISO.
KERNEL_PATH = "boot/vmlinuz"
INITRD_PATH = "boot/initramfs.cpio.zst"
GRUB_CFG_PATH = "boot/grub/grub.cfg"
BIOS_IMAGE_PATH = "boot/grub/i386-pc/eltorito.img"
EFI_IMAGE_PATH = "boot/grub/efi.img"
# GRUB platform files the build reads, with their packages (checked with the tools).
GRUB_FILES = (("i386-pc/cdboot.img", "grub-pc-bin"), ("i386-pc/boot_hybrid.img", "grub-pc-bin"),
              ("x86_64-efi/linux.mod", "grub-efi-amd64-bin"))
_VOLUME_ID_RE = re.compile(r"^[A-Z0-9_]{1,32}$")
_SERIAL_RE = re.compile(r"^ttyS\d+(,\d+)?$")


@dataclass(frozen=True)
class IsoSpec:
    output: Path
    kernel: Path
    initrd: Path
    cmdline: str                        # the operator's part, as composed by compose()
    serial: str = DEFAULT_SERIAL        # the serial console: GRUB's menu and console=
    timeout: int = 1                    # GRUB's menu timeout in seconds
    volume_id: str = DEFAULT_VOLUME_ID
    source_date_epoch: int | None = None
    repo: Path | None = initramfs.REPO  # for the default epoch: the last commit's time


@dataclass(frozen=True)
class IsoResult:
    path: Path
    size: int
    sha256: str
    cmdline: str                        # what the kernel gets, token masked
    uuid: str                           # the ISO 9660 UUID GRUB searches for
    seconds: float


# --- the command line (pure) -------------------------------------------------------------------

def compose(cmdline: str = "", *, url: str | None = None, ip: str | None = None,
            token: str | None = None, append: Sequence[str] = ()) -> str:
    """``--cmdline`` followed by ``MYURL=``, ``ip=``, ``pyinit.token=`` and ``--append`` (the
    kernel's last value of a key wins, so the separate flags override ``--cmdline``). A value
    that is empty or holds a space is quoted, so the parser sees (and names) all of it. Pure."""
    words = [cmdline.strip()]
    for key, value in (("MYURL", url), ("ip", ip), ("pyinit.token", token)):
        if value is not None:
            plain = value and not any(c.isspace() or c == '"' for c in value)
            words.append(f"{key}={value}" if plain else f'{key}="{value}"')
    words += [a.strip() for a in append]
    return " ".join(w for w in words if w)


def consoles(serial: str) -> tuple[str, str]:
    """``console=tty0 console=<serial>``: the kernel writes to both, the serial one (last) is
    /dev/console for /init, as a BMC's serial-over-LAN needs. Pure."""
    return ("console=tty0", f"console={serial}")


def kernel_args(cmdline: str, serial: str = DEFAULT_SERIAL) -> list[str]:
    """The kernel's arguments as GRUB's ``linux`` line will pass them: the consoles first (unless
    given), then ``cmdline`` split as the kernel splits it (quotes group, then go). Pure.

    GRUB puts a backslash before every ``'``, ``"`` and ``\\`` it passes on
    (``grub_create_loader_cmdline``), which the kernel does not remove: such an argument cannot
    reach /init unchanged and is refused here (its value masked when it is the token)."""
    args = tokenize(cmdline)  # the kernel's quotes are gone: " cannot remain
    for arg in args:
        if "'" in arg or "\\" in arg:
            raise BuildError("cmdline", f"{mask_secrets(arg)}: GRUB passes ' and \\ to the "
                                        "kernel with a backslash added; leave them out")
    return [c for c in consoles(serial) if c not in args] + args


def kernel_view(args: Sequence[str]) -> str:
    """The command line the kernel receives from GRUB: an argument with a space in double
    quotes (``"entrypoint=/bin/sh -c x"``, which the kernel and pyinit read as one). Pure."""
    return " ".join(f'"{a}"' if any(c.isspace() for c in a) else a for a in args)


_GRUB_PLAIN = re.compile(r"^[A-Za-z0-9_.,:/=@%+\-]+$")


def grub_word(arg: str) -> str:
    """``arg`` as one word of GRUB's script language: single-quoted unless plain (inside single
    quotes nothing is special: ``$``, ``;``, spaces). ``'`` cannot occur (kernel_args). Pure."""
    return arg if _GRUB_PLAIN.match(arg) else f"'{arg}'"


def validate(args: Sequence[str]) -> BootParams:
    """The runtime's own parse of what the kernel will pass to /init; BuildError with the
    parser's one line (never the token) when the boot would refuse it."""
    try:
        params = parse_cmdline(kernel_view(args))
    except ConfigError as exc:
        raise BuildError("cmdline", str(exc)) from exc
    if params.mode == "none" and not params.break_before:  # pyinit.init.step_rootfs's rule
        raise BuildError("cmdline", "nothing to do: give MYURL= or BOOTYURL= (provision), or "
                                    "root= and entrypoint= (ginit)")
    return params


# --- the ISO's dates and system area (pure) ---------------------------------------------------

def modification_date(epoch: int) -> str:
    """xorriso's ``--modification-date``: ``YYYYMMDDhhmmsscc`` in UTC. Pure."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d%H%M%S") + "00"


def iso_uuid(epoch: int) -> str:
    """What GRUB calls the ISO's UUID: its modification date, ``2024-01-01-00-00-00-00``."""
    d = modification_date(epoch)
    return "-".join([d[:4], *(d[i:i + 2] for i in range(4, 16, 2))])


def xorriso_argv(staging: Path, out: Path, *, epoch: int, volume_id: str,
                 grub_lib: Path | None = None) -> list[str]:
    """The hybrid ISO's xorriso command (grub-mkrescue's options without HFS+). Pure."""
    grub_lib = grub.GRUB_LIB if grub_lib is None else grub_lib
    return ["xorriso", "-as", "mkisofs", "-quiet",
            f"--modification-date={modification_date(epoch)}",
            "-volid", volume_id, "-rational-rock",
            # BIOS: El Torito from a CD; boot_hybrid.img in the MBR from a USB stick
            "-b", BIOS_IMAGE_PATH, "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
            "--grub2-boot-info", "--grub2-mbr", str(grub_lib / "i386-pc" / "boot_hybrid.img"),
            # UEFI: the El Torito EFI image, also the GPT's EFI system partition
            "--efi-boot", EFI_IMAGE_PATH, "-efi-boot-part", "--efi-boot-image",
            "--protective-msdos-label",
            "-o", str(out), str(staging)]


# --- the build ----------------------------------------------------------------------------------

def check_tools(*, path: str | None = None, grub_lib: Path | None = None) -> None:
    """One PreflightError naming every missing tool and GRUB platform file with its package."""
    grub_lib = grub.GRUB_LIB if grub_lib is None else grub_lib
    absent = preflight.missing(preflight.ISO_TOOLS, path=path)
    absent += [(str(grub_lib / name), f"apt install {package}")
               for name, package in GRUB_FILES if not (grub_lib / name).is_file()]
    if absent:
        raise PreflightError(absent)


def _input(path: Path, what: str) -> Path:
    if not path.is_file():
        why = "not a file" if path.exists() else "no such file"
        hint = " (build it: pyinit initramfs)" if path.parent == initramfs.default_out() else ""
        raise BuildError(what, f"{path}: {why}{hint}")
    return path


def build_iso(spec: IsoSpec, *, tool_path: str | None = None) -> IsoResult:
    """Check everything, then write ``spec.output`` (temporary file, then rename)."""
    started = time.monotonic()
    check_tools(path=tool_path)
    if not _SERIAL_RE.match(spec.serial):
        raise BuildError("serial", f"{spec.serial!r}: expected ttyS<N>[,<speed>]")
    args = kernel_args(spec.cmdline, spec.serial)
    params = validate(args)
    if not _VOLUME_ID_RE.match(spec.volume_id):
        raise BuildError("volume-id", f"{spec.volume_id!r}: 1 to 32 of A-Z 0-9 _")
    if not 0 <= spec.timeout <= 3600:
        raise BuildError("timeout", f"{spec.timeout}: expected 0 to 3600 seconds")
    kernel = _input(spec.kernel, "kernel")
    initrd = _input(spec.initrd, "initrd")
    out = spec.output
    if out.is_dir():
        raise BuildError("output", f"{out}: is a directory")
    view = mask_secrets(kernel_view(args))
    epoch = initramfs.source_date_epoch(spec.repo, spec.source_date_epoch)
    uuid = iso_uuid(epoch)
    entry = grub.BootEntry(uuid, "/" + KERNEL_PATH, "/" + INITRD_PATH,
                           " ".join(grub_word(a) for a in args), title="pyinit",
                           serial=spec.serial, timeout=spec.timeout,
                           comment="Written by pyinit iso. Rebuild the ISO to change it.")
    grub_cfg = grub.grub_cfg(entry)
    log.info("iso: command line: %s", view)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyinit-iso-") as tmp:
        work, staging = Path(tmp) / "work", Path(tmp) / "iso"
        work.mkdir()
        for rel in (KERNEL_PATH, GRUB_CFG_PATH, BIOS_IMAGE_PATH):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel, staging / KERNEL_PATH)
        shutil.copyfile(initrd, staging / INITRD_PATH)
        (staging / GRUB_CFG_PATH).write_text(grub_cfg)

        log.info("iso: GRUB images (BIOS El Torito, UEFI BOOTX64.EFI)")
        early = work / "early.cfg"
        early.write_text(grub.early_config(uuid))
        grub.mkimage("i386-pc-eltorito", staging / BIOS_IMAGE_PATH, early, modules=ISO_MODULES)
        efi = work / "BOOTX64.EFI"
        grub.mkimage("x86_64-efi", efi, early, modules=ISO_MODULES)
        fat_size = -(-(efi.stat().st_size + 256 * 1024) // MIB) * MIB
        fs.make_vfat({"/EFI/BOOT/BOOTX64.EFI": efi}, staging / EFI_IMAGE_PATH, size=fat_size,
                     volume_id=epoch & 0xFFFFFFFF, label="PYINIT EFI", epoch=epoch, bits=12)

        log.info("iso: xorriso")
        for path in [*staging.rglob("*"), staging]:  # xorriso leaves the root's date alone
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        try:
            proc.run(xorriso_argv(staging, tmp_out, epoch=epoch, volume_id=spec.volume_id),
                     env={"SOURCE_DATE_EPOCH": str(epoch)})
            tmp_out.chmod(0o600 if params.token is not None else 0o644)
            sha = _sha256(tmp_out)
            tmp_out.replace(out)
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            raise
    result = IsoResult(out, out.stat().st_size, sha, view, uuid, time.monotonic() - started)
    log.info("iso: %s: %d bytes, sha256 %s; %.1f s", out, result.size, sha, result.seconds)
    return result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- CLI -----------------------------------------------------------------------------------------

def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``iso`` subcommand to an argparse subparsers object."""
    out_dir = initramfs.default_out()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "iso", help="a hybrid boot ISO (BIOS+UEFI, CD or USB stick) with a baked command line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a hybrid ISO that boots pyinit without PXE: from a BMC's virtual\n"
                    "media, a CD, or written to a USB stick with dd; through BIOS (El Torito,\n"
                    "MBR) and UEFI (El Torito EFI image, GPT EFI system partition). GRUB boots\n"
                    "the kernel and initramfs with the command line baked in, on the serial\n"
                    "console and the screen, after a 1 s menu.\n\n"
                    "The command line is checked with pyinit's own parser first: a line the\n"
                    "boot would refuse writes no ISO. The token is masked in every log line\n"
                    "(the ISO holds it: mode 0600). Same inputs and SOURCE_DATE_EPOCH give the\n"
                    "same bytes. Reference: docs/iso.md.",
        epilog="example:\n  pyinit iso --out pyinit.iso --url http://10.0.0.1:8080 "
               "--ip dhcp --token-file token\n  dd if=pyinit.iso of=/dev/sdX bs=4M "
               "oflag=direct   # a USB stick")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.iso", help="the ISO to write")
    p.add_argument("--kernel", type=Path, default=out_dir / "vmlinuz",
                   help="kernel image (default: %(default)s)")
    p.add_argument("--initrd", type=Path, default=out_dir / "initramfs.cpio.zst",
                   help="initramfs (default: %(default)s)")
    p.add_argument("--cmdline", default="", metavar="TEXT",
                   help="the kernel command line to bake in, e.g. 'MYURL=http://10.0.0.1:8080 "
                        "ip=dhcp pyinit.on_failure=reboot' (docs/cmdline.md)")
    p.add_argument("--url", metavar="URL", help="the provisioning server: adds MYURL=URL")
    p.add_argument("--ip", metavar="SPEC", help="adds ip=SPEC (dhcp, or "
                   "client::gateway:netmask:hostname:interface:none)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN", help="adds pyinit.token=TOKEN (never logged; "
                       "prefer --token-file: a command line is visible to other users)")
    token.add_argument("--token-file", type=Path, metavar="FILE",
                       help="adds pyinit.token= with the first line of FILE")
    p.add_argument("--append", action="append", default=[], metavar="ARGS",
                   help="more kernel arguments, after the others (repeatable)")
    p.add_argument("--serial", default=DEFAULT_SERIAL, metavar="ttySN,SPEED",
                   help="serial console for GRUB's menu and console= (default: %(default)s; "
                        "many BMCs' serial-over-LAN is ttyS1)")
    p.add_argument("--timeout", type=int, default=1, metavar="SECONDS",
                   help="GRUB menu timeout (default: %(default)s)")
    p.add_argument("--volume-id", default=DEFAULT_VOLUME_ID, metavar="LABEL",
                   help="ISO volume label (default: %(default)s)")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="the ISO's dates (default: $SOURCE_DATE_EPOCH, else the last commit time)")
    p.set_defaults(func=_main)
    return p


def read_token_file(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise BuildError("token", f"--token-file {path}: {exc.strerror or exc}") from exc
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def _main(args: argparse.Namespace) -> int:
    token = read_token_file(args.token_file) if args.token_file else args.token
    spec = IsoSpec(output=args.out, kernel=args.kernel, initrd=args.initrd,
                   cmdline=compose(args.cmdline, url=args.url, ip=args.ip, token=token,
                                   append=args.append),
                   serial=args.serial, timeout=args.timeout, volume_id=args.volume_id,
                   source_date_epoch=args.source_date_epoch)
    result = build_iso(spec)
    print(f"{result.path}: {result.size} bytes ({result.size / MIB:.1f} MiB), "
          f"sha256 {result.sha256}")
    print(f"kernel command line: {result.cmdline}")
    return 0
