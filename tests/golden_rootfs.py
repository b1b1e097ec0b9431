"""Small root filesystems for golden-image tests, in the shapes operators hand to `pyinit image`.

- :func:`busybox_dir`: a directory (what a debootstrap or a build produces);
- :func:`container_tarball`: a ``docker export``-style tarball (./-prefixed names, /.dockerenv,
  an empty /dev, no /boot);
- :func:`oci_layout`: an OCI image layout with two layers, the second deleting a file (whiteout)
  and replacing a directory (opaque whiteout), as image builders produce them.

All hold the busybox system of :mod:`pyinit_build.golden.busybox` and its ``/sbin/marker``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

from pyinit_build.golden.busybox import EPOCH, MARKER, busybox_rootfs, files

__all__ = ["EPOCH", "MARKER", "busybox_dir", "container_tarball", "copy_boot", "oci_layout"]

busybox_dir = busybox_rootfs


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
    members = files()
    members[".dockerenv"] = (0o755, b"", None)
    dest.write_bytes(_tar_bytes(dict(sorted(members.items())), prefix="./"))
    return dest


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(dest: Path) -> Path:
    """An OCI image layout: layer 1 the busybox system plus /etc/gone and /opt/old; layer 2
    whites out /etc/gone, makes /opt opaque (only /opt/new survives), rewrites /etc/layer."""
    base = files()
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
