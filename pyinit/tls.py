"""Which CA an ``https://`` provisioning server is verified against, and TLS failures in one line.

Order (the first that applies wins):

1. ``pyinit.ca=/path.pem`` — a PEM file inside the initramfs;
2. ``pyinit.ca=base64:…`` — the CA inline on the command line, written to ``/run/pyinit/ca.pem``;
3. ``/etc/pyinit/ca.pem`` — baked in at build time (``pyinit initramfs --ca FILE``);
4. otherwise requests' default: certifi's Mozilla bundle, which PyInstaller's certifi hook puts
   into the frozen bundle (``/usr/lib/pyinit/_internal/certifi/cacert.pem``) — right for a
   server with a public certificate, never for a private provisioning CA.

A CA that is given replaces the default bundle rather than adding to it: a provisioning network
should trust its own CA, not every public one.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import requests

from pyinit.cmdline import BootParams
from pyinit.errors import ConfigError, find_cause

BAKED_CA = "etc/pyinit/ca.pem"     # relative to root: the initramfs builder's --ca
INLINE_CA = "run/pyinit/ca.pem"    # where an inline pyinit.ca= is written


def trust(params: BootParams, *, root: Path = Path("/")) -> str | bool:
    """The value for ``requests.Session.verify``: a CA file path, or True (the default bundle).

    Raises :class:`ConfigError` naming ``pyinit.ca`` when the given path is missing.
    """
    if params.ca_path is not None:
        path = root / params.ca_path.lstrip("/")
        if not path.is_file():
            raise ConfigError("pyinit.ca", f"{params.ca_path}: no such file in the initramfs")
        return str(path)
    if params.ca_pem is not None:
        path = root / INLINE_CA
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(params.ca_pem)
        return str(path)
    baked = root / BAKED_CA
    if baked.is_file():
        return str(baked)
    return True


def configure(session: requests.Session, params: BootParams, *,
              root: Path = Path("/")) -> None:
    """Point ``session`` at the CA of :func:`trust`. With a CA file it also stops requests from
    reading the environment: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` there would silently win
    over ``session.verify`` (psf/requests#3829), and the kernel passes any ``KEY=value`` of its
    command line to init's environment. pyinit uses no proxies or .netrc from it either."""
    session.verify = trust(params, root=root)
    if isinstance(session.verify, str):
        session.trust_env = False


def describe(verify: object) -> str:
    """What a TLS failure was checked against, for its one line. Pure."""
    if isinstance(verify, str):
        if verify.endswith(INLINE_CA):
            return "CA from pyinit.ca= (inline)"
        if verify.endswith(BAKED_CA):
            return f"CA {verify} baked into the initramfs; pyinit.ca= overrides it"
        return f"CA {verify} from pyinit.ca="
    if verify is False:
        return "verification off"
    return "default CA bundle (certifi); give the server's CA with pyinit.ca="


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    return find_cause(exc, ssl.SSLError)


def tls_reason(exc: BaseException) -> str:
    """One line for a TLS failure: ``certificate verify failed: unable to get local issuer
    certificate``, ``IP address mismatch, …``, ``wrong version number`` (plain HTTP on an
    https:// URL). Falls back to the exception's own text."""
    err = _ssl_error(exc)
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {err.verify_message}"
    if err is not None:
        reason = err.reason or (str(err.args[1]) if len(err.args) > 1 else str(err))
        return reason.lower().replace("_", " ") if reason.isupper() else reason
    return " ".join(str(exc).split())[:300]


def is_transient(exc: BaseException) -> bool:
    """Whether a TLS failure may go away on its own: the server closing the connection during
    the handshake (restarting, overloaded, its handshake timeout). A certificate that does not
    verify, or a server that does not speak TLS, will not get better by retrying."""
    err = _ssl_error(exc)
    return isinstance(err, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
