"""A small busybox root filesystem: the target system of `make demo` and the golden-image tests.

``/sbin/marker`` prints :data:`MARKER` plus what it sees of its root (hostname, its root
filesystem type, a file an upper OCI layer rewrote, whether a whited-out file is gone, fstab
lines by UUID); ``/sbin/init`` runs it and powers off. Built from the host's static busybox.
"""

from __future__ import annotations

import os
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
net=$(cd /etc/network/interfaces.d 2>/dev/null && echo *)
echo "{MARKER} hostname=$host rootfs=$root_fs layer=$layer gone=$gone \
fstab=$(grep -c UUID= /etc/fstab) net=$net"
"""
INIT_SCRIPT = """#!/bin/sh
echo "PYINIT-TARGET-INIT pid=$$"
mount -t proc proc /proc 2>/dev/null
/sbin/marker
sync
poweroff -f
"""


def files() -> dict[str, tuple[int, bytes | None, str | None]]:
    """path -> (mode, content or None for a directory, symlink target)."""
    files: dict[str, tuple[int, bytes | None, str | None]] = {}
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "root", "tmp", "boot", "var",
              "usr", "usr/sbin"):
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
    # ifupdown's layout (busybox has ifup/ifdown): pyinit writes the machine's network here.
    files["etc/network"] = (0o755, None, None)
    files["etc/network/interfaces.d"] = (0o755, None, None)
    files["etc/network/interfaces"] = (0o644, b"auto lo\niface lo inet loopback\n\n"
                                       b"source /etc/network/interfaces.d/*\n", None)
    return files


def busybox_rootfs(dest: Path) -> Path:
    """A busybox root filesystem in ``dest`` (owned by whoever runs the test)."""
    for rel, (mode, data, link) in sorted(files().items()):
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
