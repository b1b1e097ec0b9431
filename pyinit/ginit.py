"""ginit mode: mount ``root=`` and run ``entrypoint=`` inside it with the console as its terminal.

``root=`` accepts a /dev path, ``UUID=``, ``PARTUUID=`` and ``LABEL=`` (resolved with busybox
``blkid``, no udev needed); the filesystem type comes from ``rootfstype=`` or from blkid.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pyinit import proc, syscalls
from pyinit.errors import ConfigError, MountError
from pyinit.log import get_logger

log = get_logger("pyinit.ginit")

_BLKID_LINE = re.compile(r'^(?P<dev>/dev/[^:]+):(?P<rest>.*)$')
_BLKID_KV = re.compile(r'(\w+)="([^"]*)"')


def parse_blkid(text: str) -> dict[str, dict[str, str]]:
    """``/dev/vda1: UUID="…" TYPE="ext4"`` lines → {device: {UUID: …, TYPE: …}}. Pure."""
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = _BLKID_LINE.match(line.strip())
        if m:
            out[m["dev"]] = dict(_BLKID_KV.findall(m["rest"]))
    return out


def find_device(spec: str, table: dict[str, dict[str, str]]) -> str | None:
    """The device a ``root=`` spec names in a blkid table, or None. Pure."""
    if spec.startswith("/dev/"):
        return spec
    key, sep, want = spec.partition("=")
    if not sep or key not in ("UUID", "PARTUUID", "LABEL"):
        raise ConfigError("root", f"unsupported form {spec!r} (/dev/…, UUID=, PARTUUID=, LABEL=)")
    for dev, tags in sorted(table.items()):
        value = tags.get(key, "")
        if value == want or (key != "LABEL" and value.lower() == want.lower()):
            return dev
    return None


def blkid() -> dict[str, dict[str, str]]:
    return parse_blkid(proc.run(["blkid"], check=False).stdout)


def resolve_root(spec: str, timeout: float = 20.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[str, str | None]:
    """(device, fstype-or-None), waiting (bounded) for the device to appear."""
    deadline = clock() + timeout
    while True:
        table = blkid()
        dev = find_device(spec, table)
        if dev is not None and os.path.exists(dev):
            return dev, table.get(dev, {}).get("TYPE")
        if clock() >= deadline:
            seen = ", ".join(sorted(table)) or "none"
            raise MountError(spec, f"root device not found within {timeout:.0f} s "
                             f"(block devices seen: {seen})")
        sleep(0.25)


def mount_root(spec: str, target: Path, *, fstype: str | None = None) -> str:
    dev, detected = resolve_root(spec)
    fs = fstype or detected
    if not fs:
        raise MountError(str(target), f"cannot tell the filesystem type of {dev}; "
                         "give rootfstype=")
    target.mkdir(parents=True, exist_ok=True)
    try:
        syscalls.mount(dev, str(target), fs, 0, None)
    except OSError as exc:
        raise MountError(str(target), f"mount -t {fs} {dev} {target}: {exc.strerror}") from exc
    log.info(f"entrypoint: mounted {dev} ({fs}) on {target}")
    for sub in ("proc", "sys", "dev"):
        path = target / sub
        if path.is_dir():
            try:
                syscalls.mount(f"/{sub}", str(path), None, syscalls.MS_BIND | syscalls.MS_REC,
                               None)
            except OSError as exc:
                log.warning(f"entrypoint: bind /{sub}: {exc}")
    return dev


def run_entrypoint(root: Path, argv: Sequence[str]) -> int:
    """Run ``argv`` chrooted in ``root`` as a child on the console (new session, console as its
    controlling terminal); returns its exit status."""
    log.info(f"entrypoint: running {' '.join(argv)} in {root}")
    done = proc.run(["setsid", "-c", "chroot", str(root), *argv], check=False, capture=False,
                    env={"HOME": "/root", "TERM": "linux"})
    log.info(f"entrypoint: {argv[0]} exited {done.rc}")
    return done.rc
