"""A small busybox root filesystem: the target system of `make demo` and the golden-image tests.

``/sbin/marker`` prints :data:`MARKER` plus what it sees of its root (hostname, its root
filesystem type, a file an upper OCI layer rewrote, whether a whited-out file is gone, fstab
lines by UUID); ``/sbin/init`` runs the busybox-style ``/etc/init.d/rcS`` (each
``/etc/init.d/S??*`` in order: the host name, the network pyinit configured with busybox's
``ifup``, and whatever pyinit or a test adds, such as the first-boot confirmation of
docs/lifecycle.md), then the marker, and powers off. Built from the host's static busybox.
"""

from __future__ import annotations

import os
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
MARKER = "PYINIT-TARGET-MARKER"
EPOCH = 1700000000
APPLETS = ("sh", "cat", "echo", "ls", "mount", "grep", "poweroff", "reboot", "sync", "uname",
           "hostname", "sleep", "awk", "head", "df", "stat",
           # what a busybox system's start-up and pyinit's first-boot confirmation use
           "ip", "ifup", "ifdown", "run-parts", "wget", "cut", "sed", "rm")
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
grep -q ' /run ' /proc/mounts || mount -t tmpfs run /run
/etc/init.d/rcS
/sbin/marker
sync
poweroff -f
"""
RCS_SCRIPT = """#!/bin/sh
# busybox-style start-up: each /etc/init.d/S??* in order
for script in /etc/init.d/S??*; do
    [ -x "$script" ] && "$script" start
done
"""
HOSTNAME_SCRIPT = """#!/bin/sh
[ "$1" = stop ] || hostname -F /etc/hostname
"""
NETWORK_SCRIPT = """#!/bin/sh
# the network pyinit wrote (/etc/network/interfaces.d/pyinit), with busybox's ifup
case "$1" in stop) ifdown -a ;; *) ifup -a ;; esac
"""


def files() -> dict[str, tuple[int, bytes | None, str | None]]:
    """path -> (mode, content or None for a directory, symlink target)."""
    files: dict[str, tuple[int, bytes | None, str | None]] = {}
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "root", "tmp", "boot", "var",
              "usr", "usr/sbin", "etc/init.d"):
        files[d] = (0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755, None, None)
    files["bin/busybox"] = (0o755, BUSYBOX.read_bytes(), None)
    for applet in APPLETS:
        files[f"bin/{applet}"] = (0o777, b"", "busybox")
    files["sbin/marker"] = (0o755, MARKER_SCRIPT.encode(), None)
    files["sbin/init"] = (0o755, INIT_SCRIPT.encode(), None)
    files["etc/init.d/rcS"] = (0o755, RCS_SCRIPT.encode(), None)
    files["etc/init.d/S01hostname"] = (0o755, HOSTNAME_SCRIPT.encode(), None)
    files["etc/init.d/S10network"] = (0o755, NETWORK_SCRIPT.encode(), None)
    files["var/run"] = (0o777, b"", "../run")  # busybox's ifup keeps its state there
    files["etc/hostname"] = (0o644, b"rootfs\n", None)
    files["etc/passwd"] = (0o644, b"root:x:0:0:root:/root:/bin/sh\n", None)
    files["etc/group"] = (0o644, b"root:x:0:\nshadow:x:42:\n", None)
    files["etc/shadow"] = (0o640, b"root:*:19000:0:99999:7:::\n", None)
    files["etc/layer"] = (0o644, b"base\n", None)
    # ifupdown's layout (busybox has ifup/ifdown): pyinit writes the machine's network here.
    files["etc/network"] = (0o755, None, None)
    files["etc/network/interfaces.d"] = (0o755, None, None)
    # source-directory: busybox's ifup reads "source" lines without wildcards
    files["etc/network/interfaces"] = (0o644, b"auto lo\niface lo inet loopback\n\n"
                                       b"source-directory /etc/network/interfaces.d\n", None)
    for hook in ("if-pre-up.d", "if-up.d", "if-down.d", "if-post-down.d"):  # ifup runs them
        files[f"etc/network/{hook}"] = (0o755, None, None)
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
