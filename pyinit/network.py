"""The network step: pick the NIC, wait for carrier, get an address (DHCP or static).

The NIC is the one ``BOOTIF`` names (a MAC), else the first physical NIC, in ifindex order, that
has carrier. Links are brought up and addresses and routes applied with pyroute2 (netlink); DNS
servers go to a resolv.conf path.

DHCP is pyroute2's :class:`~pyroute2.dhcp.client.AsyncDHCPClient`, run by :class:`DhcpThread` in a
background thread with its own asyncio event loop. The loop keeps running after the first lease so
the client renews (T1) and rebinds (T2) for as long as the runtime lives; the client's hooks
re-apply the address (with the lease time as its kernel lifetime, as dhclient and
systemd-networkd do) on every renewal. No signal handlers, no pidfile, and the lease lives in
memory, so neither the signal setup of PID 1 nor a read-only cwd matters.

Everything that touches the system takes its root (``sysfs``) or its peer (``client_factory``)
as a parameter; :func:`choose_nic`, :func:`lease_info` and :func:`render_resolv_conf` are pure.
pyroute2 is imported lazily: :class:`StaticIP` is imported by command-line code that must not pay
for loading netlink and DHCP machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from pyinit.cmdline import parse_mac
from pyinit.errors import NetworkError
from pyinit.log import get_logger

log = get_logger("pyinit.network")

ARPHRD_ETHER = 1
IFF_UP = 0x1
INFINITE_LEASE = -1  # pyroute2 decodes lease time 0xffffffff as -1

# Called from the DHCP thread on every lease event: ("bound" | "renewed" | "rebound" |
# "unbound" | "expired", the lease).
LeaseCallback = Callable[[str, "LeaseInfo"], Awaitable[None]]


@dataclass(frozen=True)
class StaticIP:
    """A static configuration (the kernel's ``ip=client::gw:netmask:host:dev:off`` form)."""

    address: str
    prefixlen: int
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    hostname: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class Nic:
    """One network interface as sysfs shows it."""

    name: str
    mac: str  # lower-case, colon separated
    carrier: bool | None  # None: unknown (the link is down, so the kernel will not say)
    ifindex: int = 0
    up: bool = False  # IFF_UP, administratively up
    driver: str | None = None
    physical: bool = True

    def describe(self) -> str:
        carrier = {True: "carrier", False: "no carrier", None: "down"}[self.carrier]
        driver = f" ({self.driver})" if self.driver else ""
        return f"{self.name} {self.mac}{driver} {carrier}"


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


@dataclass(frozen=True)
class NetworkResult:
    interface: str
    mac: str
    address: str
    prefixlen: int
    gateway: str | None
    dns: tuple[str, ...]
    source: str  # "dhcp" | "static"
    server: str | None
    search: tuple[str, ...] = ()
    hostname: str | None = None
    lease_time: int | None = None
    elapsed: float = 0.0
    # The running DHCP client (source "dhcp"): keep it, stop() it before handing over the machine.
    dhcp: DhcpThread | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for events and logs), without the DHCP thread."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "dhcp"}
        out["dns"] = list(self.dns)
        out["search"] = list(self.search)
        return out


# ---------------------------------------------------------------------------------------------
# NIC discovery and choice


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # missing file, or EINVAL (carrier of a down link)
        return None


def _read_int(path: Path, base: int = 10) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def read_nic(path: Path) -> Nic | None:
    """The :class:`Nic` for ``<sysfs>/class/net/<name>``, or None for non-Ethernet links."""
    if (_read_int(path / "type") or ARPHRD_ETHER) != ARPHRD_ETHER:
        return None  # loopback (772), InfiniBand (32), tunnels: not for DHCP over Ethernet
    mac = (_read(path / "address") or "").lower()
    if not mac or mac == "00:00:00:00:00:00":
        return None
    carrier_text = _read(path / "carrier")
    carrier = None if carrier_text is None else carrier_text == "1"
    flags = _read_int(path / "flags", 16) or 0
    device = path / "device"
    driver_link = device / "driver"
    driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else None
    return Nic(name=path.name, mac=mac, carrier=carrier, ifindex=_read_int(path / "ifindex") or 0,
               up=bool(flags & IFF_UP), driver=driver, physical=device.exists())


def list_nics(sysfs: Path = Path("/sys"), *, include_virtual: bool = False) -> list[Nic]:
    """Ethernet NICs in ifindex order: physical ones only (a ``device`` link), unless
    ``include_virtual`` (tests use veth pairs). Never ``lo``."""
    net = sysfs / "class" / "net"
    try:
        entries = sorted(net.iterdir())
    except OSError:
        return []
    nics = [nic for entry in entries if entry.name != "lo" and (nic := read_nic(entry))]
    nics = [n for n in nics if n.physical or include_virtual]
    return sorted(nics, key=lambda n: (n.ifindex, n.name))


def describe_nics(nics: Iterable[Nic]) -> str:
    text = ", ".join(n.describe() for n in nics)
    return text or "none"


def choose_nic(nics: Sequence[Nic], bootif: str | None) -> Nic:
    """The NIC ``bootif`` names (any MAC spelling ``parse_mac`` takes), else the first one with
    carrier. Pure."""
    if bootif:
        mac = parse_mac(bootif)
        for nic in nics:
            if nic.mac == mac:
                return nic
        raise NetworkError(f"BOOTIF {mac} matches no NIC (seen: {describe_nics(nics)})")
    for nic in nics:
        if nic.carrier:
            return nic
    if not nics:
        raise NetworkError("no physical NIC found")
    raise NetworkError(f"no NIC has carrier (seen: {describe_nics(nics)})")


def wait_for_carrier(
    wanted: Callable[[Nic], bool],
    *,
    timeout: float,
    link_up: Callable[[Nic], None],
    sysfs: Path = Path("/sys"),
    include_virtual: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 0.1,
) -> tuple[Nic, list[Nic]]:
    """Bring every wanted NIC up and poll sysfs until one has carrier, bounded by ``timeout``.

    Rescans on every round, so a NIC whose driver probes late is still found. Returns the first
    wanted NIC (ifindex order) with carrier and the NICs that ``link_up`` was called for.
    Raises :class:`NetworkError` listing every NIC seen when the time is up.
    """
    deadline = clock() + timeout
    raised: list[Nic] = []
    while True:
        nics = list_nics(sysfs, include_virtual=include_virtual)
        candidates = [n for n in nics if wanted(n)]
        for nic in candidates:
            if not nic.up and all(r.name != nic.name for r in raised):
                link_up(nic)
                raised.append(nic)
        for nic in candidates:
            if nic.carrier:
                return nic, raised
        now = clock()
        if now >= deadline:
            which = "no wanted NIC" if not candidates else "no carrier"
            raise NetworkError(f"{which} within {timeout:g} s (seen: {describe_nics(nics)})")
        sleep(max(0.0, min(interval, deadline - now)))


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
    if _read(path) == text.strip():
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
    from pyroute2 import AsyncIPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    async with AsyncIPRoute() as ipr:
        index = await _ifindex(ipr, ifname)
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
                from pyroute2.netlink.rtnl.rtmsg import RTNH_F_ONLINK

                await ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                                flags=RTNH_F_ONLINK)


async def remove_address(ifname: str, address: str, prefixlen: int) -> None:
    """Take ``address`` off ``ifname`` (the kernel drops the routes through it). Idempotent."""
    from pyroute2 import AsyncIPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    async with AsyncIPRoute() as ipr:
        try:
            await ipr.addr("del", index=await _ifindex(ipr, ifname), address=address,
                           prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENODEV):
                raise


async def _ifindex(ipr: Any, ifname: str) -> int:
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkError("interface disappeared", interface=ifname)
    return int(found[0])


def _set_link_up(ipr: Any, nic: Nic, up: bool = True) -> None:
    ipr.link("set", index=nic.ifindex, state="up" if up else "down")


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
    from pyroute2.dhcp.leases import Lease

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
                raise NetworkError(f"DHCP client failed: {_one_line(self._error)}",
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
            log.error(f"network: DHCP client on {self.interface} died: {_one_line(exc)}")
            with self._lock:
                self._error = self._error or exc
            self._bound.set()
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
        from pyroute2.dhcp.hooks import Hook, Trigger

        _quiet_pyroute2()
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
            log.error(f"network: applying DHCP {event} failed: {_one_line(exc)}")
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


def _quiet_pyroute2() -> None:
    """Importing pyroute2 resets its logger to level 0 (pyroute2/config/log.py), undoing
    ``pyinit.log.configure``; put it back to WARNING unless we are debugging."""
    import pyroute2  # noqa: F401

    logger = logging.getLogger("pyroute2")
    if logger.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# The step


def configure(
    *,
    bootif: str | None,
    static: StaticIP | None,
    device: str | None = None,
    carrier_timeout: float = 15,
    lease_timeout: float = 30,
    resolv_conf: Path | None = Path("/etc/resolv.conf"),
    sysfs: Path = Path("/sys"),
    include_virtual: bool = False,
    dhcp_factory: Callable[..., DhcpThread] = DhcpThread,
) -> NetworkResult:
    """Bring the chosen NIC up and configure it; :class:`NetworkError` when that cannot be done
    within ``carrier_timeout`` + ``lease_timeout`` seconds.

    NIC choice: ``device`` (or ``static.device``) by name, else the NIC whose MAC is ``bootif``,
    else the first NIC with carrier. With ``static`` no DHCP runs. ``resolv_conf=None`` leaves
    DNS alone. ``include_virtual`` lets veth pairs count as NICs (tests).
    """
    t0 = time.monotonic()
    device = device or (static.device if static else None)
    want_mac = parse_mac(bootif) if bootif and not device else None

    def wanted(nic: Nic) -> bool:
        if device:
            return nic.name == device
        return want_mac is None or nic.mac == want_mac

    _quiet_pyroute2()
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        try:
            nic, raised = wait_for_carrier(
                wanted, timeout=carrier_timeout, link_up=lambda n: _set_link_up(ipr, n),
                sysfs=sysfs, include_virtual=include_virtual)
        except NetworkError:
            nics = list_nics(sysfs, include_virtual=include_virtual)
            if want_mac and not any(n.mac == want_mac for n in nics):
                choose_nic(nics, want_mac)  # raises, naming the MAC
            if device and not any(n.name == device for n in nics):
                raise NetworkError(f"no NIC named {device} (seen: {describe_nics(nics)})"
                                   ) from None
            raise
        for other in raised:  # leave alone the NICs we did not choose
            if other.name != nic.name:
                _set_link_up(ipr, other, up=False)
    log.info(f"network: {nic.name} {nic.mac} carrier up ({time.monotonic() - t0:.1f} s)")

    if static is not None:
        try:
            asyncio.run(apply_address(nic.name, static.address, static.prefixlen,
                                      static.gateway))
        except Exception as exc:  # NetlinkError: one line for the operator, not a traceback
            raise NetworkError(f"cannot apply {static.address}/{static.prefixlen}: "
                               f"{_one_line(exc)}", interface=nic.name) from exc
        if resolv_conf is not None:
            write_resolv_conf(resolv_conf, static.dns)
        log.info(f"network: static {static.address}/{static.prefixlen} "
                 f"via {static.gateway or '-'} dns {' '.join(static.dns) or '-'}")
        return NetworkResult(
            interface=nic.name, mac=nic.mac, address=static.address,
            prefixlen=static.prefixlen, gateway=static.gateway, dns=static.dns, source="static",
            server=None, hostname=static.hostname, elapsed=round(time.monotonic() - t0, 3))

    dhcp = dhcp_factory(nic.name, on_change=LeaseApplier(nic.name, resolv_conf))
    dhcp.start()
    try:
        lease = dhcp.wait_bound(lease_timeout)
    except BaseException:
        dhcp.stop()
        raise
    log.info(f"network: lease {lease.address}/{lease.prefixlen} via {lease.gateway or '-'} "
             f"dns {' '.join(lease.dns) or '-'} from {lease.server or '?'} "
             f"({dhcp.bound_after or 0.0:.1f} s)")
    return NetworkResult(
        interface=nic.name, mac=nic.mac, address=lease.address, prefixlen=lease.prefixlen,
        gateway=lease.gateway, dns=lease.dns, source="dhcp", server=lease.server,
        search=(lease.domain,) if lease.domain else (), hostname=lease.hostname,
        lease_time=lease.lease_time, elapsed=round(time.monotonic() - t0, 3), dhcp=dhcp)
