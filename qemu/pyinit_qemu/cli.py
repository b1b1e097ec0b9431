"""``pyinit vm``: boot a QEMU machine by hand against a provisioning server, or from a disk
through its firmware.

The serial console streams to stdout as it arrives (when stdin is a terminal, typing goes to the
guest's console); the exit status is QEMU's.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from pyinit.units import parse_size
from pyinit_qemu.vm import (
    DEFAULT_MAC,
    DEFAULT_VM_TIMEOUT,
    FIRMWARES,
    INTERFACES,
    VM,
    Disk,
    ExpectTimeout,
    Firmware,
    Interface,
    VMConfig,
    VMError,
    build_command,
    create_disk,
    guest_url,
    kvm_works,
    resolve_accel,
    resolve_firmware,
)

log = logging.getLogger("pyinit_qemu")

DEFAULT_KERNEL = Path("out/vmlinuz")
DEFAULT_INITRD = Path("out/initramfs.cpio.zst")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``vm`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "vm", help="boot a QEMU machine (TCG) with the initramfs or from a disk",
        description="Boot a QEMU machine under TCG, user networking and the serial console on "
                    "stdout: with -kernel/-initrd (default), or with --boot disk through the "
                    "firmware (SeaBIOS, or OVMF with --firmware uefi) from the first --disk. "
                    "With --server the guest fetches its action from that provisioning server "
                    "(the host's 127.0.0.1 is 10.0.2.2 in the guest; the URL is translated). "
                    "Exits with QEMU's status: a guest poweroff, reboot or panic ends QEMU "
                    "(-no-reboot, panic=-1) unless --reboot is given.",
        epilog="examples: pyinit vm --server http://127.0.0.1:8080 --disk /tmp/disk.raw:4G ; "
               "pyinit vm --boot disk --firmware uefi --disk out/golden.img ; "
               "pyinit vm --boot cdrom --cdrom pyinit.iso --disk /tmp/disk.raw:4G")
    p.add_argument("--boot", choices=("kernel", "disk", "cdrom"), default="kernel",
                   help="kernel: QEMU loads --kernel/--initrd; disk: the firmware boots the "
                        "first --disk; cdrom: the firmware boots --cdrom (no kernel command "
                        "line for either) (default: %(default)s)")
    p.add_argument("--cdrom", type=Path, metavar="ISO",
                   help="an ISO in a CD-ROM drive, e.g. from `pyinit iso` (booted with --boot "
                        "cdrom)")
    p.add_argument("--firmware", choices=FIRMWARES, default="bios",
                   help="bios (SeaBIOS) or uefi (OVMF, with a private copy of its variable "
                        "store in the workdir) (default: %(default)s)")
    p.add_argument("--kernel", type=Path,
                   help=f"kernel image, with --boot kernel (default: {DEFAULT_KERNEL})")
    p.add_argument("--initrd", type=Path,
                   help=f"initramfs, with --boot kernel (default: {DEFAULT_INITRD})")
    p.add_argument("--server", metavar="URL",
                   help="provisioning server, passed as MYURL=URL (127.0.0.1/localhost become "
                        "10.0.2.2)")
    p.add_argument("--bootyurl", action="store_true",
                   help="pass the server as BOOTYURL= (GET {URL}/{mac}.bty) instead of MYURL=")
    p.add_argument("--disk", metavar="PATH[:SIZE]", action="append", default=[],
                   help="attach a raw disk; with SIZE (e.g. 4G) a sparse file is created if PATH "
                        "does not exist (repeatable)")
    p.add_argument("--disk-interface", choices=INTERFACES, default="virtio",
                   help="how disks are attached (default: %(default)s)")
    p.add_argument("--mac", default=DEFAULT_MAC, help="NIC MAC address (default: %(default)s)")
    p.add_argument("--nic", default="virtio-net-pci",
                   help="QEMU NIC model, e.g. e1000; 'none' for no NIC (default: %(default)s)")
    p.add_argument("--memory", type=int, default=1024, metavar="MB",
                   help="guest memory in MiB (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=1, help="guest CPUs (default: %(default)s)")
    p.add_argument("--accel", choices=("tcg", "kvm", "auto"), default="tcg",
                   help="accelerator; auto uses KVM only if a probe boot succeeds "
                        "(default: %(default)s)")
    p.add_argument("--append", default="", metavar="EXTRA",
                   help="extra kernel command line (console=ttyS0 panic=-1 are always added)")
    p.add_argument("--reboot", action="store_true",
                   help="let a guest reboot instead of ending QEMU (e.g. into the disk it "
                        "installed)")
    p.add_argument("--timeout", type=float, default=DEFAULT_VM_TIMEOUT, metavar="SECONDS",
                   help="kill QEMU after this long; 0 for no limit (default: %(default)s)")
    p.add_argument("--workdir", type=Path,
                   help="where serial.log and command.txt go (default: a kept temp directory)")
    p.add_argument("--dry-run", action="store_true", help="print the QEMU command and exit")
    p.add_argument("qemu_args", nargs=argparse.REMAINDER, metavar="-- QEMU_ARGS",
                   help="extra arguments for QEMU, after --")
    p.set_defaults(func=run)
    return p


def parse_disk(spec: str, interface: str = "virtio") -> tuple[Disk, int | None]:
    """``PATH[:SIZE]`` -> (Disk, size in bytes or None). Pure."""
    path, size = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            size = parse_size(tail)
            path = head
        except ValueError:
            pass  # a colon that is part of the path
    return Disk(Path(path), interface=cast(Interface, interface)), size


def config_from_args(args: argparse.Namespace) -> tuple[VMConfig, list[tuple[Path, int]]]:
    """The VM configuration and the disks to create (path, size). Pure; ValueError for
    options that contradict each other."""
    append: list[str] = []
    if args.server:
        key = "BOOTYURL" if args.bootyurl else "MYURL"
        append.append(f"{key}={guest_url(args.server.rstrip('/'))}")
    if args.append:
        append.append(args.append)
    disks: list[Disk] = []
    to_create: list[tuple[Path, int]] = []
    for spec in args.disk:
        disk, size = parse_disk(spec, args.disk_interface)
        disks.append(disk)
        if size is not None:
            to_create.append((Path(disk.path), size))
    extra = list(args.qemu_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    kernel: Path | None = args.kernel or DEFAULT_KERNEL
    initrd: Path | None = args.initrd or DEFAULT_INITRD
    if args.boot in ("disk", "cdrom"):
        given = [opt for opt, value in (("--kernel", args.kernel), ("--initrd", args.initrd),
                                        ("--server", args.server), ("--append", args.append))
                 if value]
        if given:
            raise ValueError(f"--boot {args.boot} has no kernel command line: drop "
                             f"{', '.join(given)}")
        if args.boot == "disk" and not disks:
            raise ValueError("--boot disk needs a --disk to boot from")
        if args.boot == "cdrom" and args.cdrom is None:
            raise ValueError("--boot cdrom needs a --cdrom to boot from")
        kernel = initrd = None
    cfg = VMConfig(kernel=kernel, initrd=initrd, append=" ".join(append),
                   firmware=cast(Firmware, args.firmware), reboot=args.reboot,
                   disks=disks, mac=args.mac,
                   nic_model=None if args.nic == "none" else args.nic,
                   memory_mb=args.memory, cpus=args.cpus, accel=args.accel,
                   timeout=args.timeout or None, workdir=args.workdir, extra_args=extra,
                   cdrom=args.cdrom)
    return cfg, to_create


def _write_stdout(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data.replace(b"\r\n", b"\n"))
    out.flush()


def run(args: argparse.Namespace) -> int:
    try:
        cfg, to_create = config_from_args(args)
        if args.dry_run:
            kernel = None if cfg.kernel is None else str(cfg.kernel)
            accel = resolve_accel(cfg.accel, probe=lambda: kvm_works(cfg.qemu, kernel))
            workdir = cfg.workdir if cfg.workdir is not None else Path("<workdir>")
            cfg = resolve_firmware(replace(cfg, accel=accel), workdir)
            print(shlex.join(build_command(cfg)))
            return 0
    except (ValueError, VMError) as exc:
        print(f"pyinit vm: {exc}", file=sys.stderr)
        return 2
    for path in (cfg.kernel, cfg.initrd):
        if path is not None and not Path(path).is_file():
            print(f"pyinit vm: {path} does not exist (build it with `pyinit initramfs`, or pass "
                  "--kernel/--initrd)", file=sys.stderr)
            return 2
    for path, size in to_create:
        if not path.exists():
            create_disk(path, size)
            log.info("created sparse disk %s (%d bytes)", path, size)
    # The console is streamed raw to stdout; don't repeat each line through logging.
    logging.getLogger("pyinit_qemu.serial").setLevel(logging.WARNING)
    interactive = os.isatty(0)
    try:
        vm = VM(cfg, on_output=_write_stdout, interactive=interactive)
        vm.start()
    except (ValueError, VMError) as exc:
        print(f"pyinit vm: {exc}", file=sys.stderr)
        return 2
    try:
        # Past the whole-VM timeout, so that its watchdog (with its clearer message) fires first.
        rc = vm.wait_exit(timeout=cfg.timeout + 30 if cfg.timeout else None)
    except ExpectTimeout as exc:
        print(f"pyinit vm: {exc.reason}", file=sys.stderr)
        rc = 124
    finally:
        vm.kill()
    log.info("serial log: %s", vm.serial_path)
    return rc
