"""The one seam through which every external command runs.

``run(argv, ...)`` takes argv lists only (never a shell string), logs ``+ shlex.join(argv)``,
rebuilds the environment (PyInstaller sets LD_LIBRARY_PATH to its bundle; commands and chroots
must not inherit it) and raises :class:`CommandError` on failure.

``spawn(argv)`` is the same seam for the one kind of command ``run`` cannot serve: a child fed
on its stdin while the caller goes on (gpgv verifying an image as it streams). Same logging,
environment and PID bookkeeping; the caller writes, then :meth:`Spawned.finish`.

Tests replace the module-level runner (``set_runner``) and spawner (``set_spawner``) so no unit
test runs a real command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit.errors import CommandError

log = logging.getLogger("pyinit.proc")

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables PyInstaller's bootloader sets or rewrites for the frozen process only.
_FROZEN_ONLY = ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONHOME", "PYTHONPATH", "_MEIPASS2",
                "_PYI_APPLICATION_HOME_DIR", "_PYI_ARCHIVE_FILE", "_PYI_PARENT_PROCESS_LEVEL")


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str


def clean_env(extra: Mapping[str, str] | None = None,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: the parent's minus what the frozen bundle injected.

    PyInstaller keeps the caller's original value in ``<NAME>_ORIG``; restore it when present.
    """
    src = dict(os.environ if base is None else base)
    env = {k: v for k, v in src.items() if k not in _FROZEN_ONLY and not k.endswith("_ORIG")}
    for name in ("LD_LIBRARY_PATH", "LD_PRELOAD"):
        orig = src.get(f"{name}_ORIG")
        if orig:
            env[name] = orig
    env.setdefault("PATH", SAFE_PATH)
    if extra:
        env.update(extra)
    return env


Runner = Callable[..., Completed]

# PIDs of children that a caller of run() will wait for itself. PID 1's orphan reaper must leave
# them alone, or subprocess would lose their exit status (a failed command would read as 0).
# spawn_lock makes "fork the child, register its PID" one step as the reaper sees it: the reaper
# holds it while it picks a zombie, so it can never see a run() child before it is registered.
_own_pids: set[int] = set()
spawn_lock = threading.Lock()


def own_pids() -> frozenset[int]:
    return frozenset(_own_pids)


def _real_run(argv: Sequence[str], *, chroot: Path | None = None, timeout: float | None = None,
              check: bool = True, input: str | None = None, env: Mapping[str, str] | None = None,
              cwd: Path | None = None, capture: bool = True) -> Completed:
    args = [str(a) for a in argv]
    if chroot is not None:
        args = ["chroot", str(chroot), *args]
    log.info("+ %s", shlex.join(args))
    pipe = subprocess.PIPE if capture else None
    try:
        with spawn_lock:
            child = subprocess.Popen(
                args, stdin=subprocess.PIPE if input is not None else None, stdout=pipe,
                stderr=pipe, env=clean_env(env), cwd=cwd, text=True,
            )
            _own_pids.add(child.pid)
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: not found") from exc
    try:
        out, err = child.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        child.kill()
        _, err = child.communicate()
        raise CommandError(args, None, (err or "")[-2000:]) from exc
    finally:
        _own_pids.discard(child.pid)
    done = Completed(tuple(args), child.returncode, out or "", err or "")
    if check and child.returncode != 0:
        raise CommandError(args, child.returncode, done.stderr[-2000:])
    return done


_runner: Runner = _real_run


def set_runner(runner: Runner | None) -> Runner:
    """Replace the runner (tests); ``None`` restores the real one. Returns the previous one."""
    global _runner
    previous = _runner
    _runner = runner if runner is not None else _real_run
    return previous


def run(argv: Sequence[str], *, chroot: Path | None = None, timeout: float | None = None,
        check: bool = True, input: str | None = None, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, capture: bool = True) -> Completed:
    """Run one external command. See the module docstring."""
    return _runner(argv, chroot=chroot, timeout=timeout, check=check, input=input, env=env,
                   cwd=cwd, capture=capture)


class Spawned:
    """A child started by :func:`spawn`: bytes go to its stdin with :meth:`write` (False once
    it stopped reading), :meth:`finish` closes stdin and collects its output, :meth:`kill`
    ends it early. Its stdout and stderr are small (status lines): they are read at the end."""

    def __init__(self, argv: Sequence[str], child: subprocess.Popen[bytes]) -> None:
        self.argv = tuple(argv)
        self.child = child
        self.open = True

    def write(self, data: bytes) -> bool:
        if not self.open:
            return False
        assert self.child.stdin is not None
        try:
            self.child.stdin.write(data)
        except (BrokenPipeError, ValueError):  # it exited (or stopped reading): see finish()
            self.open = False
        return self.open

    def finish(self, timeout: float | None = None) -> Completed:
        try:
            out, err = self.child.communicate(timeout=timeout)
        except (BrokenPipeError, ValueError):  # stdin already broken: just collect
            out = self.child.stdout.read() if self.child.stdout else b""
            err = self.child.stderr.read() if self.child.stderr else b""
            self.child.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise CommandError(self.argv, None, "") from exc
        finally:
            _own_pids.discard(self.child.pid)
        return Completed(self.argv, self.child.returncode, out.decode(errors="replace"),
                         err.decode(errors="replace"))

    def kill(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
        for f in (self.child.stdin, self.child.stdout, self.child.stderr):
            with contextlib.suppress(OSError, ValueError):
                if f is not None:
                    f.close()
        self.child.wait()
        _own_pids.discard(self.child.pid)


def _real_spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Spawned:
    args = [str(a) for a in argv]
    log.info("+ %s", shlex.join(args))
    try:
        with spawn_lock:
            child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=clean_env(env))
            _own_pids.add(child.pid)
    except FileNotFoundError as exc:
        raise CommandError(args, 127, f"{args[0]}: not found") from exc
    return Spawned(args, child)


Spawner = Callable[..., Spawned]
_spawner: Spawner = _real_spawn


def set_spawner(spawner: Spawner | None) -> Spawner:
    """Replace the spawner (tests); ``None`` restores the real one. Returns the previous one."""
    global _spawner
    previous = _spawner
    _spawner = spawner if spawner is not None else _real_spawn
    return previous


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Spawned:
    """Start one external command to be fed on its stdin. See the module docstring."""
    return _spawner(argv, env=env)
