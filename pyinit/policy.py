"""What PID 1 does when it is done or has failed: shell, reboot or poweroff. Plus orphan reaping.

PID 1 never exits: if reboot(2) itself fails, it falls back to a shell, and if there is no shell,
it sleeps forever (the kernel would panic if init exited).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pyinit import mounts, proc, syscalls
from pyinit.log import console, get_logger

log = get_logger("pyinit.policy")

SHELL = "/bin/sh"
_REBOOT_CMDS = {"reboot": syscalls.LINUX_REBOOT_CMD_RESTART,
                "poweroff": syscalls.LINUX_REBOOT_CMD_POWER_OFF}


def unmount_all(mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """Unmount (lazily, deepest first) everything but the kernel's pseudo filesystems."""
    keep = {"/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"}
    targets = [m.target for m in mounts.read(mounts_file)]
    for target in sorted(set(targets) - keep, key=len, reverse=True):
        if target.startswith(("/proc/", "/sys/")):
            continue
        try:
            syscalls.umount(target, syscalls.MNT_DETACH)
        except OSError as exc:
            log.warning(f"umount {target}: {exc}")


def quiesce(mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """sync, unmount everything but the pseudo filesystems, sync: the last thing before
    reboot(2), whether it restarts, powers off or jumps into a kexec-loaded kernel."""
    os.sync()
    unmount_all(mounts_file)
    os.sync()


def power(kind: str, *, announce: bool = True) -> None:
    """sync, unmount and reboot(2). Returns only if reboot(2) failed. ``announce``: print
    ``pyinit: <kind> now`` (the handoff step has said it already)."""
    if announce:
        console(f"pyinit: {kind} now")
    quiesce()
    try:
        syscalls.reboot(_REBOOT_CMDS[kind])
    except OSError as exc:
        log.error(f"{kind} failed: {exc}")


def shell(reason: str = "") -> int:
    """An interactive shell on the console with a controlling tty (setsid -c). Returns its rc."""
    if reason:
        console(f"pyinit: starting a shell ({reason}); `exit` returns to pyinit, "
                f"`reboot` / `poweroff` end the machine")
    if not Path(SHELL).exists():
        log.error(f"no shell at {SHELL}")
        return 127
    try:
        done = proc.run(["setsid", "-c", SHELL, "-l"], check=False, capture=False,
                        env={"PS1": "pyinit# ", "HOME": "/root", "TERM": "linux"})
    except Exception as exc:  # the shell is the last resort: never let it raise
        log.error(f"shell failed: {exc}")
        return 127
    return done.rc


def apply(policy: str, reason: str) -> None:
    """Apply a failure/finish policy. reboot/poweroff return only if the syscall failed."""
    if policy in _REBOOT_CMDS:
        power(policy)
        policy = "shell"  # reboot(2) failed: stay reachable
    if policy == "shell":
        while True:  # `exit` in the shell must not leave the console dead: start another
            rc = shell(reason)
            console(f"pyinit: shell exited ({rc}); starting another (`poweroff` or `reboot` "
                    "to end)")
            time.sleep(1)


def idle_forever(sleep: Callable[[float], None] = time.sleep) -> None:
    while True:
        sleep(3600)


def _reap_orphans() -> None:
    """Reap zombies that are not children some run() call is waiting for. Under
    :data:`proc.spawn_lock`: a child that run() just forked is registered before we look."""
    while True:
        with proc.spawn_lock:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            if info.si_pid in proc.own_pids():
                return  # its spawner will collect it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, os.WNOHANG)


def start_reaper(interval: float = 0.5) -> threading.Thread:
    def loop() -> None:
        while True:
            _reap_orphans()
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="reaper", daemon=True)
    thread.start()
    return thread


def install_signal_handlers() -> None:
    """busybox ``reboot``/``poweroff``/``halt`` (without -f) signal PID 1: honour them."""

    def handler(kind: str) -> Callable[[int, FrameType | None], None]:
        def on_signal(_sig: int, _frame: FrameType | None) -> None:
            power(kind)

        return on_signal

    signal.signal(signal.SIGTERM, handler("reboot"))
    signal.signal(signal.SIGUSR2, handler("poweroff"))
    signal.signal(signal.SIGUSR1, handler("poweroff"))  # halt: a server has nothing to halt to
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-alt-del
