"""``pyinit image``: the golden image builder's command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pyinit.units import size_arg
from pyinit_build import ocipush
from pyinit_build.errors import BuildError
from pyinit_build.golden import build, debian, sign


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``image`` subcommand to an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "image", help="build a bootable golden disk image from a root filesystem",
        description="Build a bootable raw disk image from ROOTFS (a directory, a tarball such as "
                    "`docker export` output, an OCI image layout or a `docker save` archive), "
                    "without root or loop devices: GPT or MBR, GRUB for BIOS and/or UEFI, ext4 "
                    "or XFS, optionally on LVM. Writes OUTPUT (sparse raw), a compressed copy, "
                    "optional qemu-img conversions, OUTPUT.SHA256SUMS and the manifest "
                    "OUTPUT.json. Same inputs and SOURCE_DATE_EPOCH give the same bytes.")
    p.add_argument("rootfs", type=Path, metavar="ROOTFS",
                   help="directory, tarball, OCI layout, docker-save archive, or debian:SUITE "
                        "(bootstrapped with mmdebstrap from the host's apt sources; slow)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT",
                   help="the raw image to write, e.g. out/golden.img")
    p.add_argument("--table", choices=("gpt", "mbr"), default="gpt",
                   help="partition table (default: %(default)s)")
    p.add_argument("--firmware", choices=("bios", "uefi", "both"), default="both",
                   help="boot through BIOS (GRUB in the MBR), UEFI (BOOTX64.EFI on an ESP) or "
                        "both (default: %(default)s)")
    p.add_argument("--fs", dest="filesystem", default="ext4", metavar="FS",
                   help=f"root filesystem: {', '.join(build.FILESYSTEMS)} (default: %(default)s)")
    p.add_argument("--lvm", metavar="VG/LV", default=None,
                   help="put the root filesystem on an LVM logical volume, e.g. vg0/root")
    p.add_argument("--size", type=size_arg, default=None,
                   help="disk size, e.g. 2G (default: the content plus headroom)")
    p.add_argument("--headroom", type=size_arg, default=build.ImageSpec.headroom,
                   help="free space added to the content when --size is not given "
                        "(default: 256M)")
    p.add_argument("--kernel", type=Path, default=None,
                   help="kernel to install as /boot/vmlinuz-<release> (default: the rootfs's "
                        "/boot/vmlinuz-*)")
    p.add_argument("--initrd", type=Path, action="append", default=[],
                   help="initrd to install with --kernel; repeat to concatenate (microcode "
                        "first)")
    p.add_argument("--kernel-deb", type=Path, default=None,
                   help="install a Debian linux-image .deb: /boot/vmlinuz-* and its modules")
    p.add_argument("--cmdline", default="",
                   help="extra kernel command line (root=, ro and the console are added)")
    p.add_argument("--serial", default="ttyS0,115200", metavar="TTY[,SPEED]",
                   help="serial console for the kernel and GRUB; 'none' for none "
                        "(default: %(default)s)")
    p.add_argument("--hostname", default=None, help="write /etc/hostname and /etc/hosts")
    p.add_argument("--root-password-hash", default=None, metavar="HASH",
                   help="crypt(3) hash for root in /etc/shadow (e.g. from `openssl passwd -6`)")
    p.add_argument("--ssh-key", action="append", default=[], metavar="KEY|FILE",
                   help="public key (or a file of keys) for /root/.ssh/authorized_keys")
    p.add_argument("--include", action="append", default=None, metavar="PKG",
                   help="packages for a debian:SUITE rootfs (repeatable; default: "
                        f"{' '.join(debian.BOOT_PACKAGES)})")
    p.add_argument("--label", default="root", help="root filesystem label (default: root)")
    p.add_argument("--format", dest="formats", action="append", default=[],
                   metavar="FMT", help=f"also convert to {', '.join(build.FORMATS)} (repeatable)")
    p.add_argument("--compress", default="zstd",
                   help=f"compressed copy: {', '.join(build.COMPRESSIONS)} (default: zstd)")
    p.add_argument("--compress-level", type=int, default=None)
    p.add_argument("--source-date-epoch", type=int, default=None,
                   help="timestamps and derived UUIDs (default: $SOURCE_DATE_EPOCH, else the "
                        "newest mtime in the rootfs)")
    p.add_argument("--uuid", dest="root_uuid", default=None,
                   help="root filesystem UUID (default: derived from the inputs)")
    p.add_argument("--push", default=None, metavar="oci://REGISTRY[:PORT]/REPO:TAG",
                   help="push the image as served (the compressed copy, else the raw file) to "
                        "an OCI registry, as oras push does (credentials: "
                        "$PYINIT_REGISTRY_USER, $PYINIT_REGISTRY_PASSWORD)")
    ocipush.add_arguments(p)
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="sign the outputs with this gpg key (id or fingerprint): OUTPUT.sig, "
                        "<compressed>.sig ... and OUTPUT.SHA256SUMS.gpg, the names pyinit's "
                        "writer looks for when a keyring is configured (docs/image.md)")
    p.add_argument("--gpg-homedir", type=Path, default=None, metavar="DIR",
                   help="the GNUPGHOME holding --sign-key (default: $GNUPGHOME, ~/.gnupg)")
    p.set_defaults(func=_main)
    return p


def _ssh_keys(values: list[str]) -> tuple[str, ...]:
    keys: list[str] = []
    for value in values:
        path = Path(value)
        if not value.startswith(("ssh-", "ecdsa-", "sk-")) and path.is_file():
            keys += [line.strip() for line in path.read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        else:
            keys.append(value.strip())
    return tuple(keys)


def spec_from_args(args: argparse.Namespace) -> build.ImageSpec:
    epoch = args.source_date_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    return build.ImageSpec(
        rootfs=args.rootfs, output=args.output, table=args.table, firmware=args.firmware,
        filesystem=args.filesystem, lvm=args.lvm, size=args.size, headroom=args.headroom,
        kernel=args.kernel, initrds=tuple(args.initrd), kernel_deb=args.kernel_deb,
        cmdline=args.cmdline, serial=None if args.serial == "none" else args.serial,
        hostname=args.hostname, root_password_hash=args.root_password_hash,
        ssh_keys=_ssh_keys(args.ssh_key), label=args.label, formats=tuple(args.formats),
        compress=args.compress, compress_level=args.compress_level, source_date_epoch=epoch,
        root_uuid=args.root_uuid,
        include=tuple(args.include) if args.include else debian.BOOT_PACKAGES)


def _main(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.push:
        ocipush.parse_ref(args.push)  # a bad reference fails before the build
    if build.debian_suite(spec) is None and not spec.rootfs.exists():
        raise BuildError("rootfs", f"{spec.rootfs}: no such file or directory")
    signer = sign.signing_key(args.sign_key, homedir=args.gpg_homedir) \
        if args.sign_key else None  # a wrong key fails before the build, not after it
    manifest = build.build_image(spec, progress=print)
    line: dict[str, Any] = {"image": str(spec.output), "sha256": manifest.sha256,
                            "size": manifest.virtual_size, "action": manifest.action}
    if args.sign_key:  # the signatures stay beside the files: --push sends the image only
        made = sign.sign_outputs(spec.output, [f["path"] for f in manifest.files.values()],
                                 args.sign_key, homedir=args.gpg_homedir)
        line.update(signer=signer, signatures=[p.name for p in made])
    if args.push:
        line.update(ocipush.push_and_report(spec.output.with_name(manifest.action["image"]),
                                            args.push, args))
    print(json.dumps(line))
    return 0
