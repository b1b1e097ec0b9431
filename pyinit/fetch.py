"""Fetch this machine's action from the provisioning server, by MAC, with bounded retries.

``MYURL``   → ``GET {MYURL}/{mac}``
``BOOTYURL`` → ``GET {BOOTYURL}/{mac}.bty`` (exactly as plunder serves BOOTy's configs)

The MAC is lower-case with dashes. With ``pyinit.token=`` the request carries
``Authorization: Bearer <token>`` (the server does not need it to read an action, but a server
that does may ask; requests drops the header on a redirect to another host).

The MAC is lower-case with dashes. Connection failures, timeouts, 408, 429 and 5xx are retried with
jittered exponential backoff for a bounded total time; any other 4xx (e.g. 404, no action for this
machine) and a malformed answer are fatal at once. So is a TLS failure (a certificate that does
not verify against ``pyinit.ca=``, see :mod:`pyinit.tls`): one line naming the URL, the reason and
what was trusted.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from pyinit import macaddr, tls
from pyinit.action import Action, parse_action_json
from pyinit.cmdline import BootParams
from pyinit.errors import ConfigError, FetchError, unreachable_reason
from pyinit.log import get_logger

log = get_logger("pyinit.fetch")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
USER_AGENT = "pyinit (BOOTy-compatible)"


def action_url(params: BootParams, mac: str) -> str:
    """The URL of this machine's action. ``MYURL`` wins when both are given."""
    if params.myurl:
        return f"{params.myurl}/{macaddr.dashes(mac)}"
    if params.bootyurl:
        return f"{params.bootyurl}/{macaddr.dashes(mac)}.bty"
    raise ConfigError("MYURL", "neither MYURL= nor BOOTYURL= is set")


def server_base(params: BootParams) -> str:
    base = params.myurl or params.bootyurl
    if not base:
        raise ConfigError("MYURL", "neither MYURL= nor BOOTYURL= is set")
    return base


def auth_headers(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or nothing without a token. Pure."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def same_origin(url: str, base: str) -> bool:
    """Whether ``url`` goes to the same scheme, host and port as ``base``: only then may it
    carry the server's token (an upload URL can point to any object store). Pure."""
    a, b = urlsplit(url), urlsplit(base)
    try:
        return (a.scheme.lower(), a.hostname, a.port or None) == (
            b.scheme.lower(), b.hostname, b.port or None) and bool(a.hostname)
    except ValueError:  # a port that is not a number
        return False


def backoff(*, initial: float = 0.5, factor: float = 2.0, cap: float = 10.0,
            rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Delays for retry N: "equal jitter" exponential backoff, forever. Pure given ``rng``."""
    ceiling = initial
    while True:
        yield ceiling / 2 + rng() * ceiling / 2
        ceiling = min(ceiling * factor, cap)


def retry(func: Callable[[], Any], *, what: str, total: float,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
          delays: Iterator[float] | None = None) -> Any:
    """Call ``func`` until it succeeds, raises a non-retryable error, or ``total`` seconds pass."""
    deadline = clock() + total
    waits = delays if delays is not None else backoff()
    attempt = 0
    while True:
        attempt += 1
        try:
            return func()
        except FetchError as exc:
            if not exc.retryable:
                raise
            delay = next(waits)
            left = deadline - clock()
            if left <= 0:
                raise FetchError(exc.url, f"{exc.reason} (gave up after {attempt} attempts, "
                                 f"{total:.0f} s)") from exc
            delay = min(delay, left)
            log.warning(f"{what}: {exc.reason}; retry {attempt} in {delay:.1f} s")
            sleep(delay)


def get(session: requests.Session, url: str, *, timeout: float = 10.0,
        token: str | None = None) -> requests.Response:
    """One GET classified into success, retryable FetchError and fatal FetchError."""
    try:
        resp = session.get(url, timeout=timeout,
                           headers={"User-Agent": USER_AGENT, **auth_headers(token)})
    except requests.exceptions.SSLError as exc:  # before ConnectionError: a subclass of it
        raise tls_failure(url, exc, session.verify) from exc
    except requests.exceptions.InvalidURL as exc:
        raise FetchError(url, f"invalid URL: {exc}", retryable=False) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        why = unreachable_reason(exc, urlsplit(url).hostname)
        raise FetchError(url, f"unreachable: {why}", retryable=True) from exc
    why = server_reason(resp) if resp.status_code >= 400 else ""
    if resp.status_code in RETRYABLE_STATUS:
        raise FetchError(url, f"HTTP {resp.status_code}{why}", retryable=True,
                         status=resp.status_code)
    if resp.status_code == 404:
        raise FetchError(url, "HTTP 404: the server has no action for this machine",
                         status=404)
    if resp.status_code >= 400:
        raise FetchError(url, f"HTTP {resp.status_code}{why}", status=resp.status_code)
    return resp


def tls_failure(url: str, exc: BaseException, verify: object) -> FetchError:
    """The one-line error for a TLS failure, naming the reason and what was trusted. Not
    retryable (a certificate that does not verify will not on the 30th try either) unless the
    server merely closed the connection during the handshake."""
    return FetchError(url, f"TLS error: {tls.tls_reason(exc)} (trusting the "
                           f"{tls.describe(verify)})", retryable=tls.is_transient(exc))


def server_reason(resp: requests.Response) -> str:
    """``": <error>"`` from a JSON error body (``{"error": "machines/x.yaml:3: ..."}``, what
    ``pyinit serve`` answers), so the console names the operator's broken file; else ``""``."""
    try:
        body = resp.json() if len(resp.content) <= 4096 else None
    except ValueError:
        return ""
    text = body.get("error") if isinstance(body, dict) else None
    return f": {' '.join(str(text).split())[:200]}" if text else ""


@dataclass(frozen=True)
class Fetched:
    url: str
    action: Action
    attempts_seconds: float
    sha256: str = ""  # of the action as served: the server's deploy-once check compares it


def fetch_action(params: BootParams, mac: str, *, session: requests.Session,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> Fetched:
    url = action_url(params, mac)
    start = clock()
    resp = retry(lambda: get(session, url, token=params.token), what=f"GET {url}",
                 total=params.fetch_timeout, clock=clock, sleep=sleep)
    action = parse_action_json(resp.content, base_url=server_base(params))
    return Fetched(url, action, clock() - start, hashlib.sha256(resp.content).hexdigest())
