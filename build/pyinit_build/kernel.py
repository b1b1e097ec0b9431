"""The Debian kernel: resolve, download once, extract once, depmod once.

``linux-image-amd64`` is the generic flavour (the ``-cloud`` flavour lacks e1000 and AHCI). It is a
metapackage; ``apt-cache depends`` names the versioned package, ``apt-get download`` fetches it from
whatever mirror the host's apt sources name, ``dpkg-deb -x`` unpacks it. Everything lands in a
cache directory and is reused: a second call runs ``apt-cache`` only (local, no network).
The package ships no ``modules.dep``; ``depmod -b`` writes it into the extracted tree.
"""

from __future__ import annotations

import fcntl
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pyinit import proc
from pyinit_build.errors import BuildError

METAPACKAGE = "linux-image-amd64"
_EXTRACTED_MARK = ".pyinit-extracted"


@dataclass(frozen=True)
class Kernel:
    release: str        # 6.1.0-56-amd64 (the directory under lib/modules)
    package: str        # linux-image-6.1.0-56-amd64
    version: str        # 6.1.192-2
    deb: Path
    root: Path          # the extracted package
    vmlinuz: Path
    modules_dir: Path   # root/lib/modules/<release>, with modules.dep
    config: Path


def parse_depends(text: str, metapackage: str = METAPACKAGE) -> str:
    """The versioned package from ``apt-cache depends <metapackage>`` output (pure)."""
    for line in text.splitlines():
        match = re.match(r"\s*\|?Depends:\s*(linux-image-\S+)", line)
        if match and match.group(1) != metapackage:
            return match.group(1).strip("<>")
    raise BuildError("kernel", f"apt-cache depends {metapackage}: no linux-image dependency")


def _cached_deb(cache_dir: Path, package: str) -> Path | None:
    debs = sorted(cache_dir.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def _deb_field(deb: Path, name: str) -> str:
    return proc.run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def download(package: str, cache_dir: Path) -> Path:
    """``apt-get download`` ``package`` into ``cache_dir`` unless a .deb of it is already there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    deb = _cached_deb(cache_dir, package)
    if deb is None:
        # As root, apt warns that the download is "unsandboxed"; harmless.
        proc.run(["apt-get", "download", package], cwd=cache_dir)
        deb = _cached_deb(cache_dir, package)
        if deb is None:
            raise BuildError("kernel", f"apt-get download {package} left no .deb in {cache_dir}")
    return deb


def extract(deb: Path, cache_dir: Path) -> Path:
    """``dpkg-deb -x`` once into ``cache_dir/<deb stem>``; a marker file makes it idempotent."""
    root = cache_dir / deb.name.removesuffix(".deb")
    if (root / _EXTRACTED_MARK).exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    partial.mkdir(parents=True)
    proc.run(["dpkg-deb", "-x", str(deb), str(partial)])
    (partial / _EXTRACTED_MARK).write_text(f"{deb.name}\n")
    partial.rename(root)
    return root


def _release(root: Path) -> str:
    releases = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir()) \
        if (root / "lib/modules").is_dir() else []
    if len(releases) != 1:
        raise BuildError("kernel", f"expected one release under {root}/lib/modules, "
                                   f"found {releases or 'none'}")
    return releases[0]


def fetch(cache_dir: Path, *, kernel_deb: Path | None = None,
          metapackage: str = METAPACKAGE) -> Kernel:
    """The kernel, from ``kernel_deb`` when given, else the current ``metapackage`` target."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builds share the cache
        return _fetch_locked(cache_dir, kernel_deb, metapackage)


def _fetch_locked(cache_dir: Path, kernel_deb: Path | None, metapackage: str) -> Kernel:
    if kernel_deb is None:
        package = parse_depends(proc.run(["apt-cache", "depends", metapackage]).stdout,
                                metapackage)
        deb = download(package, cache_dir)
    else:
        deb = kernel_deb.resolve()
        if not deb.is_file():
            raise BuildError("kernel", f"{deb}: no such file")
    root = extract(deb, cache_dir)
    release = _release(root)
    modules_dir = root / "lib/modules" / release
    if not (modules_dir / "modules.dep").exists():
        proc.run(["depmod", "-b", str(root), release])
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    config = root / "boot" / f"config-{release}"
    for needed in (vmlinuz, config):
        if not needed.is_file():
            raise BuildError("kernel", f"{deb.name} has no {needed.relative_to(root)}")
    meta_file = root / ".pyinit-package"
    if meta_file.exists():
        package, version = meta_file.read_text().split()
    else:
        package, version = _deb_field(deb, "Package"), _deb_field(deb, "Version")
        meta_file.write_text(f"{package} {version}\n")
    return Kernel(release=release, package=package, version=version, deb=deb, root=root,
                  vmlinuz=vmlinuz, modules_dir=modules_dir, config=config)
