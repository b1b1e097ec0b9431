"""A Debian bookworm root for the VM tests that boot a real Debian system (issue #15): systemd,
openssh-server, initramfs-tools and a cloud kernel that is *not* the newest one, so a test can
upgrade it with the newest kernel package the way an operator would (``dpkg -i`` in the target).

Built once per run with mmdebstrap from the host's apt sources (~40 s) into ``cache`` under a
lock, so the two xdist workers share one tarball. The kernels are chosen at run time from what
the host's apt knows: the newest ``linux-image-<abi>-cloud-amd64`` (what the cloud metapackage
depends on) and the newest older ABI of the same series.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit_build import kernel
from pyinit_build.golden import debian

METAPACKAGE = "linux-image-cloud-amd64"
PACKAGES = ("initramfs-tools", "systemd-sysv", "openssh-server", "mdadm")
_CLOUD = re.compile(r"^linux-image-(\d+\.\d+\.\d+)-(\d+)-cloud-amd64$")


@dataclass(frozen=True)
class DebianRoot:
    tarball: Path
    old_kernel: str     # the package in the root: "linux-image-6.1.0-50-cloud-amd64"
    new_kernel: str     # the upgrade: "linux-image-6.1.0-57-cloud-amd64"
    new_deb: Path       # its .deb, downloaded on the host

    @staticmethod
    def release(package: str) -> str:
        return package.removeprefix("linux-image-")


def older_abi(newest: str, names: list[str]) -> str:
    """The newest package in ``names`` of ``newest``'s series with a lower ABI number. Pure."""
    match = _CLOUD.match(newest)
    if match is None:
        raise ValueError(f"{newest}: not a linux-image-<version>-<abi>-cloud-amd64 package")
    series, abi = match.group(1), int(match.group(2))
    older = [(int(m.group(2)), n) for n in names
             if (m := _CLOUD.match(n)) and m.group(1) == series and int(m.group(2)) < abi]
    if not older:
        raise ValueError(f"the host's apt knows no {series} cloud kernel older than {newest}")
    return max(older)[1]


def kernel_pair() -> tuple[str, str]:
    """(older, newest) cloud kernel packages the host's apt can download."""
    newest = kernel.parse_depends(proc.run(["apt-cache", "depends", METAPACKAGE]).stdout,
                                  METAPACKAGE)
    listed = proc.run(["apt-cache", "search", "--names-only",
                       r"^linux-image-[0-9.]+-[0-9]+-cloud-amd64$"]).stdout
    names = [line.split(" - ", 1)[0].strip() for line in listed.splitlines()]
    return older_abi(newest, names), newest


def bookworm(cache: Path) -> DebianRoot:
    """The root tarball and the kernel packages, built or downloaded once into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".debian.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old, new = kernel_pair()
        include = (old, *PACKAGES)
        key = hashlib.sha256(",".join(include).encode()).hexdigest()[:12]
        tarball = cache / f"bookworm-{key}.tar"
        if not tarball.exists():
            # mmdebstrap picks its output format from the name: keep the .tar suffix
            partial = tarball.with_name(f".partial-{tarball.name}")
            partial.unlink(missing_ok=True)
            debian.bootstrap("bookworm", partial, include=include)
            partial.rename(tarball)
        deb = kernel.download(new, cache / "debs")
    return DebianRoot(tarball, old, new, deb)
