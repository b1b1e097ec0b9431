"""DHCPv4: pyroute2's client on a NIC, its leases applied, and the race of several NICs.

DHCP is pyroute2's :class:`~pyroute2.dhcp.client.AsyncDHCPClient`, run by :class:`DhcpThread` in a
background thread with its own asyncio event loop. The loop keeps running after the first lease so
the client renews (T1) and rebinds (T2) for as long as the runtime lives; the client's hooks
re-apply the address (with the lease time as its kernel lifetime, as dhclient and
systemd-networkd do) on every renewal (:class:`LeaseApplier`). No signal handlers, no pidfile,
and the lease lives in memory, so neither the signal setup of PID 1 nor a read-only cwd matters.

Without a named NIC, DHCP runs on every NIC with carrier at once (:func:`race_dhcp`): the first
lease wins (:class:`FirstLease`) and the other clients are stopped before they configure
anything. DNS servers go to a resolv.conf path (:func:`write_resolv_conf`, which the static and
IPv6 configurations use too). :func:`lease_info` and :func:`render_resolv_conf` are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pyinit.errors import NetworkError
from pyinit.log import get_logger
from pyinit.network.links import ifindex, one_line, quiet_pyroute2
from pyinit.sysfs import read_attr

log = get_logger("pyinit.network")


INFINITE_LEASE = -1  # pyroute2 decodes lease time 0xffffffff as -1

# Called from the DHCP thread on every lease event: ("bound" | "renewed" | "rebound" |
# "unbound" | "expired", the lease).
LeaseCallback = Callable[[str, "LeaseInfo"], Awaitable[None]]


@dataclass(frozen=True)
class LeaseInfo:
    """What the runtime needs from a DHCP lease (a plain, thread-safe copy)."""

    address: str
    prefixlen: int
    gateway: str | None  # the Router option (3), never the server's address
    dns: tuple[str, ...]
    server: str | None  # the Server Identifier option (54)
    domain: str | None = None
    lease_time: int | None = None  # seconds; None = infinite
    mtu: int | None = None
    hostname: str | None = None


# ---------------------------------------------------------------------------------------------
# resolv.conf


def render_resolv_conf(dns: Iterable[str], search: Iterable[str] = ()) -> str:
    """resolv.conf text. Pure. (glibc and musl read at most three nameservers.)"""
    lines = ["# written by pyinit"]
    domains = [d for d in search if d]
    if domains:
        lines.append("search " + " ".join(domains))
    lines += [f"nameserver {server}" for server in dns]
    return "\n".join(lines) + "\n"


def write_resolv_conf(path: Path, dns: Sequence[str], search: Sequence[str] = ()) -> bool:
    """Atomically (re)write ``path``; False (and nothing written) when there is no DNS server
    or the content is already there."""
    if not dns:
        return False
    text = render_resolv_conf(dns, search)
    if read_attr(path) == text.strip():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# ---------------------------------------------------------------------------------------------
# Leases and applying them (netlink)


def lease_info(lease: Any) -> LeaseInfo:
    """A :class:`LeaseInfo` from a pyroute2 ``Lease`` (only its ``ack`` dict is read). Pure."""
    ack: dict[str, Any] = lease.ack
    opts: dict[str, Any] = ack.get("options", {})
    mask = opts.get("subnet_mask")
    prefixlen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if mask else 32
    routers = [r for r in opts.get("router") or () if r and r != "0.0.0.0"]
    lease_time = opts.get("lease_time")
    return LeaseInfo(
        address=str(ack["yiaddr"]),
        prefixlen=prefixlen,
        gateway=routers[0] if routers else None,
        dns=tuple(opts.get("name_server") or ()),
        server=opts.get("server_id"),
        domain=opts.get("domain_name") or None,
        lease_time=None if lease_time in (None, INFINITE_LEASE) else int(lease_time),
        mtu=opts.get("interface_mtu"),
        hostname=opts.get("host_name") or None,
    )


async def apply_address(ifname: str, address: str, prefixlen: int, gateway: str | None, *,
                        lifetime: int | None = None) -> None:
    """Put ``address/prefixlen`` on ``ifname`` (kernel lifetime ``lifetime`` s, or forever) and
    the default route via ``gateway``. Idempotent (``replace``)."""
    from pyinit.netlink import AsyncIPRoute, NetlinkError

    async with AsyncIPRoute() as ipr:
        index = await ifindex(ipr, ifname)
        lft: dict[str, int] = {}
        if lifetime is not None:
            lft = {"valid_lft": lifetime, "preferred_lft": lifetime}
        await ipr.addr("replace", index=index, address=address, prefixlen=prefixlen,
                       broadcast=True, **lft)
        if gateway:
            try:
                await ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
            except NetlinkError as exc:
                if exc.code != errno.ENETUNREACH:
                    raise
                # A router outside the leased subnet (RFC 3442 setups): reach it on-link.
                from pyinit.netlink import RTNH_F_ONLINK

                await ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                                flags=RTNH_F_ONLINK)


async def remove_address(ifname: str, address: str, prefixlen: int) -> None:
    """Take ``address`` off ``ifname`` (the kernel drops the routes through it). Idempotent."""
    from pyinit.netlink import AsyncIPRoute, NetlinkError

    async with AsyncIPRoute() as ipr:
        try:
            await ipr.addr("del", index=await ifindex(ipr, ifname), address=address,
                           prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENODEV):
                raise


class LeaseApplier:
    """The :data:`LeaseCallback` that ``configure`` gives :class:`DhcpThread`: applies every
    (re)newed lease to the interface and resolv.conf, removes a lost one."""

    def __init__(self, ifname: str, resolv_conf: Path | None) -> None:
        self.ifname = ifname
        self.resolv_conf = resolv_conf

    async def __call__(self, event: str, lease: LeaseInfo) -> None:
        if event in ("unbound", "expired"):
            log.warning(f"network: lease {lease.address}/{lease.prefixlen} {event}, removing it")
            await remove_address(self.ifname, lease.address, lease.prefixlen)
            return
        await apply_address(self.ifname, lease.address, lease.prefixlen, lease.gateway,
                            lifetime=lease.lease_time)
        if self.resolv_conf is not None:
            search = (lease.domain,) if lease.domain else ()
            write_resolv_conf(self.resolv_conf, lease.dns, search)
        if event != "bound":
            log.info(f"network: lease {lease.address} {event} ({_lease_time(lease.lease_time)})")


def _lease_time(seconds: int | None) -> str:
    return "infinite" if seconds is None else f"{seconds} s"


# ---------------------------------------------------------------------------------------------
# The DHCP client thread


@cache
def _memory_lease_type() -> type:
    from pyinit.netlink import Lease

    class MemoryLease(Lease):  # type: ignore[misc]
        """A lease that is never written anywhere: the client keeps it, we copy it out."""

        def dump(self) -> None:
            pass

        @classmethod
        def load(cls, interface: str) -> None:
            return None

    return MemoryLease


class DhcpThread:
    """pyroute2's DHCP client on ``interface``, in a daemon thread with its own event loop.

    ``start()``, then ``wait_bound(timeout)`` (the first lease, after ``on_change`` applied it),
    and the client keeps renewing until ``stop()``. ``client_factory`` builds the client from a
    ``pyroute2.dhcp.client.ClientConfig`` (tests pass a fake); it is called inside the loop.
    """

    EVENTS = ("bound", "renewed", "rebound", "unbound", "expired")

    def __init__(self, interface: str, *, on_change: LeaseCallback | None = None,
                 client_factory: Callable[[Any], Any] | None = None,
                 vendor_id: str | None = "pyinit", host_name: str | None = None,
                 release_on_stop: bool = False) -> None:
        self.interface = interface
        self._on_change = on_change
        self._client_factory = client_factory
        self._vendor_id = vendor_id
        self._host_name = host_name
        self._release = release_on_stop
        self._thread = threading.Thread(target=self._main, name=f"dhcp-{interface}",
                                        daemon=True)
        self._ready = threading.Event()  # the loop runs (or the thread died before it did)
        self._bound = threading.Event()  # first lease applied, or a fatal error
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._client: Any = None
        self._lease: LeaseInfo | None = None
        self._error: BaseException | None = None
        self._counts = dict.fromkeys(self.EVENTS, 0)
        self._started = 0.0
        self.bound_after: float | None = None  # seconds from start() to the first lease

    # -- public API (any thread)

    def start(self) -> DhcpThread:
        self._started = time.monotonic()
        self._thread.start()
        self._ready.wait(10)
        return self

    def wait_bound(self, timeout: float) -> LeaseInfo:
        """The first lease, once applied. :class:`NetworkError` after ``timeout`` seconds, or as
        soon as the client fails."""
        if not self._bound.wait(timeout):
            raise NetworkError(f"no DHCP lease within {timeout:g} s (client {self.state})",
                               interface=self.interface)
        with self._lock:
            if self._error is not None:
                raise NetworkError(f"DHCP client failed: {one_line(self._error)}",
                                   interface=self.interface) from self._error
            assert self._lease is not None
            return self._lease

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the client (no DHCPRELEASE unless ``release_on_stop``) and join the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            # RuntimeError: the loop closed between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """The client died or could not apply its first lease (``wait_bound`` would raise)."""
        with self._lock:
            return self._error is not None

    @property
    def lease(self) -> LeaseInfo | None:
        with self._lock:
            return self._lease

    @property
    def state(self) -> str:
        """The client's state machine state (``SELECTING``, ``BOUND``, ``RENEWING`` …)."""
        client = self._client
        state = getattr(client, "state", None)
        return str(getattr(state, "name", state)) if client is not None else "not started"

    def count(self, event: str) -> int:
        """How many times ``event`` (``bound``, ``renewed``, ``rebound`` …) happened."""
        with self._lock:
            return self._counts[event]

    # -- the thread

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported through wait_bound()
            log.error(f"network: DHCP client on {self.interface} died: {one_line(exc)}")
            with self._lock:
                self._error = self._error or exc
            self._bound.set()
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from pyinit.netlink import AsyncDHCPClient, ClientConfig, Hook, Trigger

        quiet_pyroute2()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        hooks = [Hook(func=self._hook(str(trigger)), triggers={trigger})
                 for trigger in (Trigger(event) for event in self.EVENTS)]
        config = ClientConfig(
            interface=self.interface,
            lease_type=_memory_lease_type(),
            hooks=hooks,
            write_pidfile=False,
            handle_signals=False,
            release=self._release,
            hook_timeout=10.0,
            vendor_id=self._vendor_id,
            host_name=self._host_name,
        )
        factory = self._client_factory or AsyncDHCPClient
        try:
            async with factory(config) as client:
                self._client = client
                self._ready.set()
                await client.bootstrap()
                await self._stopping.wait()
        finally:
            self._ready.set()

    def _hook(self, event: str) -> Callable[..., Awaitable[None]]:
        async def hook(lease: Any) -> None:
            await self._on_event(event, lease)

        hook.__name__ = f"pyinit_{event}"
        return hook

    async def _on_event(self, event: str, lease: Any) -> None:
        try:
            info = lease_info(lease)
            if self._on_change is not None:
                await self._on_change(event, info)
        except Exception as exc:
            log.error(f"network: applying DHCP {event} failed: {one_line(exc)}")
            if event == "bound" and not self._bound.is_set():
                with self._lock:
                    self._error = exc
                self._bound.set()
            return
        with self._lock:
            self._counts[event] += 1
            self._lease = None if event in ("unbound", "expired") else info
        if event == "bound" and not self._bound.is_set():
            self.bound_after = time.monotonic() - self._started
            self._bound.set()


# ---------------------------------------------------------------------------------------------
# Several NICs: DHCP on all of them, the first lease wins


class FirstLease:
    """Gives each racing DHCP client a :data:`LeaseCallback` that lets only the first ``bound``
    through: that client's lease is applied (and its renewals later), every other client's
    leases are ignored, so a losing NIC never gets an address, a route or resolv.conf."""

    def __init__(self, apply: Callable[[str], LeaseCallback]) -> None:
        self._apply = apply
        self._lock = threading.Lock()
        self.winner: str | None = None
        self.won = threading.Event()  # set once the winner's lease is applied

    def callback(self, ifname: str) -> LeaseCallback:
        apply = self._apply(ifname)

        async def on_change(event: str, lease: LeaseInfo) -> None:
            with self._lock:
                claimed = self.winner is None and event == "bound"
                if claimed:
                    self.winner = ifname
                elif self.winner != ifname:
                    log.debug(f"network: {ifname}: {event} {lease.address} ignored "
                              f"({self.winner or 'no NIC'} won)")
                    return
            try:
                await apply(event, lease)
            except BaseException:
                if claimed:  # let another NIC win
                    with self._lock:
                        self.winner = None
                raise
            if claimed:
                self.won.set()

        return on_change


def race_dhcp(
    first: Sequence[str],
    *,
    timeout: float,
    start: Callable[[str, LeaseCallback], DhcpThread],
    apply: Callable[[str], LeaseCallback],
    more: Callable[[], Iterable[str]] = tuple,
    poll: float = 0.1,
) -> tuple[DhcpThread, LeaseInfo, list[str]]:
    """DHCP on every NIC in ``first`` at once, and on each NIC ``more()`` names later (a NIC
    whose carrier came after the race began), until one lease is applied or ``timeout`` s pass.

    ``start(ifname, on_change)`` returns a started :class:`DhcpThread`: one thread, one event
    loop per NIC, so the winner's client keeps renewing exactly as a lone client does while the
    losers' loops are simply stopped. Returns (the winner's client, its lease, the names of
    every NIC a client ran on, in start order; all but the winner's are stopped).
    :class:`NetworkError` naming every NIC and its client state otherwise; with a single NIC
    the error is the same as a lone client's.
    """
    gate = FirstLease(apply)
    clients: dict[str, DhcpThread] = {}

    def begin(names: Iterable[str]) -> None:
        for name in names:
            if name not in clients:
                log.info(f"network: DHCP on {name}")
                clients[name] = start(name, gate.callback(name))

    deadline = time.monotonic() + timeout
    try:
        begin(first)
        while not gate.won.wait(max(0.0, min(poll, deadline - time.monotonic()))):
            begin(more())
            failed = [c for c in clients.values() if c.failed]
            if time.monotonic() >= deadline or (failed and len(failed) == len(clients)):
                break
        if gate.winner is None or not gate.won.is_set():
            if len(clients) == 1:  # the lone client's own error
                (only,) = clients.values()
                if only.failed:
                    only.wait_bound(0)  # raises, with the cause
                raise NetworkError(f"no DHCP lease within {timeout:g} s (client {only.state})",
                                   interface=only.interface)
            states = ", ".join(f"{n} {c.state}" for n, c in clients.items())
            raise NetworkError(f"no DHCP lease within {timeout:g} s on any NIC ({states})")
        winner = clients[gate.winner]
        lease = winner.wait_bound(max(1.0, deadline - time.monotonic()))
    except BaseException:
        for client in clients.values():
            client.stop()
        raise
    for name, client in clients.items():
        if name != gate.winner:
            client.stop()
    return winner, lease, list(clients)
