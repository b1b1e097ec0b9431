"""Who may write: the server's secret, per-machine tokens and the operator token.

Secure by default. On first start the server makes a random secret,
``root/.pyinit/secret`` (mode 0600, in a 0700 directory), and, unless the operator gives one
(``--token-file``), an operator token ``root/.pyinit/operator-token`` (0600). From the secret it
derives one token per MAC (:func:`machine_token`: ``m1.`` and an HMAC-SHA256 of the MAC,
base64url): the machine's iPXE script carries it as ``pyinit.token=``, so a PXE-booted machine
needs no configuration. A machine token is good for that MAC's events (``POST /events/<mac>``)
and that MAC's captures (``images/<mac>.*``: ``PUT`` or ``POST /image``) and nothing else; the
operator token covers every write. Nothing is stored per machine: the server recomputes the
token, so replicas that share the secret (copy ``.pyinit/secret``) accept the same tokens.

Running with open writes must be asked for by name (``--allow-unauthenticated-writes``).
Reads stay open: iPXE's ``kernel``/``initrd``/``chain`` cannot send a header. docs/security.md
has the threat model.

:func:`decide` is pure: every write request is one call, its answer a :class:`Denied` or None.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from pyinit import macaddr

STATE_DIR = ".pyinit"
SECRET_FILE = "secret"
OPERATOR_TOKEN_FILE = "operator-token"
MACHINE_PREFIX = "m1."
TOKEN_RE = re.compile(r"^[\x21\x23-\x7e]{1,256}$")  # what pyinit.token= can carry


class AuthError(ValueError):
    """The secret or the operator token cannot be read or made (one line)."""


@dataclass(frozen=True)
class Denied:
    status: int  # 401: no usable credentials; 403: credentials that do not cover this write
    message: str


def machine_token(secret: bytes, mac: str) -> str:
    """The token of ``mac`` (any spelling) under ``secret``. Pure."""
    key = macaddr.normalize(mac)
    if key is None:
        raise ValueError(f"not a MAC address: {mac!r}")
    digest = hmac.new(secret, b"pyinit machine token\0" + key.encode(), hashlib.sha256).digest()
    return MACHINE_PREFIX + base64.urlsafe_b64encode(digest[:24]).decode()


def capture_mac(name: str) -> str | None:
    """The MAC a capture name belongs to (``52-54-00-12-34-56.img.zst`` -> the MAC), or None.
    Pure."""
    stem = name.split(".", 1)[0]
    return macaddr.normalize(stem) if "-" in stem else None


def bearer(header: str | None) -> str | Denied:
    """The token of an ``Authorization`` header, or why there is none. Pure."""
    if not header:
        return Denied(401, "this server requires a token: send 'Authorization: Bearer <token>' "
                           "(pyinit: pyinit.token= on the kernel command line; PXE-booted "
                           "machines get theirs in the iPXE script)")
    scheme, _, given = header.strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return Denied(401, "malformed Authorization header: expected 'Bearer <token>'")
    return given


def decide(header: str | None, *, secret: bytes, operator: str | None, mac: str | None,
           open_writes: bool = False) -> Denied | None:
    """Whether a write for machine ``mac`` (None: a write only the operator may do) is allowed.
    Pure; tokens are compared in constant time."""
    if open_writes:
        return None
    given = bearer(header)
    if isinstance(given, Denied):
        return given
    if operator is not None and hmac.compare_digest(given.encode(), operator.encode()):
        return None
    if given.startswith(MACHINE_PREFIX):
        if mac is None:
            return Denied(403, "a machine token cannot do this: it covers only its own "
                               "events and captures (images/<mac>.*)")
        if hmac.compare_digest(given.encode(), machine_token(secret, mac).encode()):
            return None
        return Denied(403, f"this machine token is not {mac}'s")
    return Denied(403, "wrong token")


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) with ``data``, never replacing an existing one (a second server
    starting at the same moment keeps the first one's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def state_dir(root: Path) -> Path:
    """``root/.pyinit`` (0700), made if missing."""
    path = root / STATE_DIR
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AuthError(f"cannot make {path}: {exc.strerror or exc}") from exc
    return path


def load_secret(root: Path) -> bytes:
    """The server's secret, made on first start (32 random bytes, hex, mode 0600)."""
    path = state_dir(root) / SECRET_FILE
    try:
        _write_private(path, secrets.token_hex(32).encode() + b"\n")
    except FileExistsError:
        pass
    except OSError as exc:
        raise AuthError(f"cannot make {path}: {exc.strerror or exc}") from exc
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise AuthError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(text) < 32:
        raise AuthError(f"{path}: too short to be a secret (remove it to make a new one; "
                        "every machine token changes)")
    if path.stat().st_mode & 0o077:
        raise AuthError(f"{path}: readable by others (chmod 600 it)")
    return text


def load_operator_token(root: Path) -> tuple[str, Path]:
    """The operator token of ``root/.pyinit/operator-token``, made on first start."""
    path = state_dir(root) / OPERATOR_TOKEN_FILE
    try:
        _write_private(path, f"{secrets.token_urlsafe(32)}\n".encode())
    except FileExistsError:
        pass
    except OSError as exc:
        raise AuthError(f"cannot make {path}: {exc.strerror or exc}") from exc
    return read_token_file(path), path


def read_token_file(path: Path) -> str:
    """The first line of ``path``, checked to be a usable token."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise AuthError(f"--token-file {path}: {reason or exc}") from exc
    if not lines or not lines[0].strip():
        raise AuthError(f"--token-file {path}: empty")
    token = lines[0].strip()
    check_token(token)
    return token


def check_token(token: str) -> None:
    if not TOKEN_RE.match(token):
        raise AuthError("a token is 1-256 printable ASCII characters without spaces or quotes")
    if token.startswith(MACHINE_PREFIX):
        raise AuthError(f"an operator token cannot start with {MACHINE_PREFIX!r} "
                        "(that prefix marks machine tokens)")
