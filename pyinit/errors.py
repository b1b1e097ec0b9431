"""Typed errors that carry their context.

Expected failures end in one clear line (``str(err)``); tracebacks are for bugs.
``retryable`` separates transient failures (worth a backoff and another try) from fatal ones.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


def find_cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` inside ``exc``: requests and urllib3 wrap the socket's
    own error in ``args``, ``reason``, ``__cause__`` and ``__context__``. Pure."""
    todo: list[object] = [exc]
    seen: set[int] = set()
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen or not isinstance(cur, BaseException):
            continue
        seen.add(id(cur))
        if isinstance(cur, kind):
            return cur
        todo += [*cur.args, getattr(cur, "reason", None), cur.__cause__, cur.__context__]
    return None


def unreachable_reason(exc: BaseException, host: str | None = None) -> str:
    """Why a connection failed, in words an operator can act on: ``cannot resolve
    'pxe.example': Name or service not known``, ``connection refused``, ``timed out``,
    ``No route to host``. Pure."""
    gai = find_cause(exc, socket.gaierror)
    if gai is not None:
        what = f" {host!r}" if host else ""
        return f"cannot resolve{what}: {gai.strerror or gai}"
    if find_cause(exc, ConnectionRefusedError) is not None:
        return "connection refused"
    if find_cause(exc, TimeoutError) is not None or "Timeout" in type(exc).__name__:
        return "timed out"
    err = find_cause(exc, OSError)
    if err is not None and err.errno and err.errno != errno.EIO:
        return err.strerror or errno.errorcode.get(err.errno, str(err.errno))
    return type(exc).__name__


class PyinitError(Exception):
    """Base of every expected failure. ``str()`` is the one line an operator reads."""

    retryable: bool = False


class ConfigError(PyinitError):
    """Bad configuration: kernel command line, action JSON, build inputs."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class CommandError(PyinitError):
    """An external command failed (non-zero exit, timeout or missing binary)."""

    def __init__(self, argv: Sequence[str], rc: int | None, stderr_tail: str = "") -> None:
        self.argv = list(argv)
        self.rc = rc
        self.stderr_tail = stderr_tail
        status = "timed out" if rc is None else f"exited {rc}"
        tail = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
        detail = f": {tail[0]}" if tail else ""
        super().__init__(f"command {argv[0] if argv else '?'} {status}{detail}")


class NetworkError(PyinitError):
    """No usable network: no NIC, no carrier, no lease."""

    def __init__(self, reason: str, *, interface: str | None = None) -> None:
        self.interface = interface
        self.reason = reason
        where = f"{interface}: " if interface else ""
        super().__init__(f"network: {where}{reason}")


class FetchError(PyinitError):
    """An HTTP fetch failed. ``retryable`` is True for transient failures."""

    def __init__(self, url: str, reason: str, *, retryable: bool = False,
                 status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retryable = retryable
        self.status = status
        super().__init__(f"{url}: {reason}")


class ImageError(PyinitError):
    """The image cannot be written: bad stream, bad format, truncated."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"image {url}: {reason}")


class ChecksumMismatch(ImageError):
    def __init__(self, url: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(url, f"checksum mismatch: expected {expected}, got {actual}")


class SignatureError(ImageError):
    """An image (or the checksum file vouching for it) is not signed by a key of the keyring:
    a bad, missing, expired or revoked signature. Never retried: the same bytes give the same
    answer. ``url`` is what was signed (the image, or the SUMS file)."""


class DiskError(PyinitError):
    """The disk is missing, not a block device, too small or in use."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"disk {device}: {reason}")


class MountError(PyinitError):
    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"mount {target}: {reason}")


class HandoffError(PyinitError):
    """kexec or switch_root cannot proceed; ``str()`` is the one line for the operator."""
