"""What a test needs from the host, in one place, so that a broken set-up can never pass.

Under ``make test`` (which exports ``PYINIT_STRICT=1``) a missing tool, a missing Debian
package or not being root is a **failure** naming what to install: the README's set-up installs
everything the suite uses, so a skip there would hide a broken machine behind a green run. A
developer's own ``pytest`` run outside make skips instead.

Genuine limits of the host's kernel or container (no partition scanning on loop devices, no
device-mapper, a capability the container withholds) skip in both, and each names the VM test
that proves the same thing in a real kernel (:func:`host_limit`).
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

SEARCH = "/usr/sbin:/usr/bin:/sbin:/bin"

# the Debian package of each tool the tests call (the Makefile's APT_PACKAGES installs them)
PACKAGES = {
    "ssh-keygen": "openssh-client", "wget": "wget", "busybox": "busybox-static",
    "bash": "bash",
    "losetup": "mount", "mount": "mount", "umount": "mount", "blockdev": "util-linux",
    "lsblk": "util-linux", "setpriv": "util-linux", "sfdisk": "fdisk", "mke2fs": "e2fsprogs",
    "resize2fs": "e2fsprogs", "e2fsck": "e2fsprogs", "mkfs.xfs": "xfsprogs",
    "xfs_growfs": "xfsprogs", "xfs_repair": "xfsprogs", "pvs": "lvm2", "pvck": "lvm2",
    "lvm": "lvm2", "dmsetup": "dmsetup", "mkfs.vfat": "dosfstools", "mcopy": "mtools",
    "grub-mkimage": "grub-common", "ip": "iproute2", "dnsmasq": "dnsmasq-base",
    "curl": "curl", "nginx": "nginx-light", "lldpd": "lldpd", "lldpcli": "lldpd",
    "xorriso": "xorriso", "faketime": "faketime", "mmdebstrap": "mmdebstrap",
    "zstd": "zstd", "cpio": "cpio", "mkfs.ext4": "e2fsprogs", "dumpe2fs": "e2fsprogs",
    "xfs_db": "xfsprogs",
    "docker-registry": "docker-registry", "htpasswd": "apache2-utils", "openssl": "openssl",
    "gpg": "gpg", "gpgv": "gpgv",
}


def strict() -> bool:
    """True under ``make test``: what the set-up should have provided must be there."""
    return os.environ.get("PYINIT_STRICT") == "1"


def _missing(message: str) -> NoReturn:
    if strict():
        pytest.fail(f"{message} (make test: the set-up provides it, so this is a broken "
                    "machine, not a skip)", pytrace=False)
    pytest.skip(message)


def fail_or_skip(message: str) -> NoReturn:
    """Something the set-up makes (a cached kernel package, a build): fail under make test."""
    _missing(message)


def need(*tools: str) -> None:
    """Every tool on the PATH commands get (``SEARCH``), else fail (make test) or skip."""
    missing = [t for t in tools if shutil.which(t, path=SEARCH) is None]
    if missing:
        packages = sorted({PACKAGES.get(t, "?") for t in missing})
        _missing(f"missing {', '.join(missing)} (Debian: apt-get install {' '.join(packages)})")


def need_file(path: os.PathLike[str] | str, package: str) -> None:
    """A file a Debian package installs (``/usr/lib/ipxe/undionly.kpxe``)."""
    if not os.path.isfile(path):
        _missing(f"missing {path} (Debian: apt-get install {package})")


def need_root(what: str) -> None:
    """Root, for ``what`` (loop devices, mounts, network namespaces)."""
    if os.geteuid() != 0:
        _missing(f"{what} need root")


def host_limit(reason: str, *, covered_by: str) -> NoReturn:
    """Skip for a limit of this host's kernel or container, naming the VM test that covers the
    same behaviour in a real kernel."""
    pytest.skip(f"{reason}; covered in a VM by {covered_by}")
