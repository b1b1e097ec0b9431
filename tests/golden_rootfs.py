"""Small root filesystems for golden-image tests, built from the host's static busybox.

Three shapes of the same system, as operators hand them to `pyinit image`:

- :func:`busybox_dir`: a directory (what a debootstrap or a build produces);
- :func:`container_tarball`: a ``docker export``-style tarball (./-prefixed names, /.dockerenv,
  an empty /dev, no /boot);
- :func:`oci_layout`: an OCI image layout with two layers, the second deleting a file (whiteout)
  and replacing a directory (opaque whiteout), as image builders produce them.

Each has ``/sbin/marker``, which prints :data:`MARKER` plus what it sees of its root (hostname,
its own root filesystem type, a file the upper layer wrote), and ``/sbin/init`` running it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
MARKER = "PYINIT-TARGET-MARKER"
EPOCH = 1700000000
APPLETS = ("sh", "cat", "echo", "ls", "mount", "grep", "poweroff", "reboot", "sync", "uname",
           "hostname", "sleep", "awk", "head", "df", "stat")
MARKER_SCRIPT = f"""#!/bin/sh
# Printed by the golden image's own userspace: the test waits for this line.
root_fs=$(awk '$2 == "/" {{fs=$3}} END {{print fs}}' /proc/self/mounts 2>/dev/null)
host=$(cat /etc/hostname 2>/dev/null)
layer=$(cat /etc/layer 2>/dev/null)
gone=$(test -e /etc/gone && echo present || echo absent)
echo "{MARKER} hostname=$host rootfs=$root_fs layer=$layer gone=$gone \
fstab=$(grep -c UUID= /etc/fstab)"
"""
INIT_SCRIPT = """#!/bin/sh
mount -t proc proc /proc 2>/dev/null
/sbin/marker
sync
poweroff -f
"""


def _files() -> dict[str, tuple[int, bytes | None, str | None]]:
    """path -> (mode, content or None for a directory, symlink target)."""
    files: dict[str, tuple[int, bytes | None, str | None]] = {}
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "root", "tmp", "boot", "var"):
        files[d] = (0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755, None, None)
    files["bin/busybox"] = (0o755, BUSYBOX.read_bytes(), None)
    for applet in APPLETS:
        files[f"bin/{applet}"] = (0o777, b"", "busybox")
    files["sbin/marker"] = (0o755, MARKER_SCRIPT.encode(), None)
    files["sbin/init"] = (0o755, INIT_SCRIPT.encode(), None)
    files["etc/hostname"] = (0o644, b"rootfs\n", None)
    files["etc/passwd"] = (0o644, b"root:x:0:0:root:/root:/bin/sh\n", None)
    files["etc/group"] = (0o644, b"root:x:0:\nshadow:x:42:\n", None)
    files["etc/shadow"] = (0o640, b"root:*:19000:0:99999:7:::\n", None)
    files["etc/layer"] = (0o644, b"base\n", None)
    return files


def busybox_dir(dest: Path) -> Path:
    """A busybox root filesystem in ``dest`` (owned by whoever runs the test)."""
    for rel, (mode, data, link) in sorted(_files().items()):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if link is not None:
            path.symlink_to(link)
        elif data is None:
            path.mkdir(exist_ok=True)
            path.chmod(mode)
        else:
            path.write_bytes(data)
            path.chmod(mode)
    for path in sorted(dest.rglob("*"), reverse=True):
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    return dest


def _tar_bytes(members: dict[str, tuple[int, bytes | None, str | None]], *,
               prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, (mode, data, link) in members.items():
            info = tarfile.TarInfo(prefix + rel)
            info.mode, info.mtime, info.uid, info.gid = mode, EPOCH, 0, 0
            if rel.startswith("etc/shadow"):
                info.gid = 42
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def container_tarball(dest: Path) -> Path:
    """A ``docker export``-style tarball of the busybox system (``./`` names, root-owned)."""
    files = _files()
    files[".dockerenv"] = (0o755, b"", None)
    dest.write_bytes(_tar_bytes(dict(sorted(files.items())), prefix="./"))
    return dest


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(dest: Path) -> Path:
    """An OCI image layout: layer 1 the busybox system plus /etc/gone and /opt/old; layer 2
    whites out /etc/gone, makes /opt opaque (only /opt/new survives), rewrites /etc/layer."""
    base = _files()
    base["etc/gone"] = (0o644, b"deleted by the upper layer\n", None)
    base["opt"] = (0o755, None, None)
    base["opt/old"] = (0o644, b"hidden by the opaque whiteout\n", None)
    upper: dict[str, tuple[int, bytes | None, str | None]] = {
        "etc/.wh.gone": (0o644, b"", None),
        "opt": (0o755, None, None),
        "opt/new": (0o644, b"from the upper layer\n", None),
        "opt/.wh..wh..opq": (0o644, b"", None),  # after its sibling, as some builders write it
        "etc/layer": (0o644, b"upper\n", None),
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = []
    for members in (dict(sorted(base.items())), upper):
        raw = _tar_bytes(members)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **_blob(dest, gzip.compress(raw, mtime=0))})
    config = _blob(dest, json.dumps({"architecture": "amd64", "os": "linux",
                                     "rootfs": {"type": "layers", "diff_ids": []}}).encode())
    manifest = _blob(dest, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": layers}).encode())
    (dest / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
            "platform": {"architecture": "amd64", "os": "linux"}}]}))
    return dest


def copy_boot(rootfs: Path, kernel: Path, initrd: Path) -> None:
    """Install a kernel and initrd into a rootfs directory's /boot, Debian-style."""
    (rootfs / "boot").mkdir(exist_ok=True)
    shutil.copyfile(kernel, rootfs / "boot" / "vmlinuz-6.1.0-test")
    shutil.copyfile(initrd, rootfs / "boot" / "initrd.img-6.1.0-test")
