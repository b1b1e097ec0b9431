"""The network step: pick the NIC, wait for carrier, get an address (DHCP or static).

The NIC is the one ``ip=…:dev`` names, else the one ``BOOTIF`` names (a MAC). Without either,
every physical NIC is brought up and DHCP runs on each one that has carrier, in parallel
(:func:`race_dhcp`): the first lease wins, its NIC's MAC identifies the machine, and the other
clients are stopped before they configure anything. ``vlan=`` and ``bond=`` links
(:func:`create_links`) are made first, and the top one is the NIC. Links are brought up and
addresses and routes applied with pyroute2 (netlink); DNS servers go to a resolv.conf path.

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

from pyinit import macaddr
from pyinit.cmdline import BondConfig, VlanConfig
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
    speed: int | None = None  # Mbit/s; None when the link is down or the driver does not say
    operstate: str | None = None  # up, down, dormant, unknown …

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
    """The configured interface. ``raced``: the NICs DHCP ran on in parallel (empty when one NIC
    was named); ``nics``: the sysfs scan when the NIC was chosen, for the inventory."""

    interface: str
    mac: str
    address: str
    prefixlen: int
    gateway: str | None
    dns: tuple[str, ...]
    source: str  # "dhcp" | "static" | "slaac" | "dhcpv6"
    server: str | None
    search: tuple[str, ...] = ()
    hostname: str | None = None
    lease_time: int | None = None
    elapsed: float = 0.0
    raced: tuple[str, ...] = ()
    nics: tuple[Nic, ...] = field(default=(), compare=False, repr=False)
    # The running DHCP client (source "dhcp"): keep it, stop() it before handing over the machine.
    dhcp: DhcpThread | None = field(default=None, compare=False, repr=False)
    # IPv6 (``ip=auto6|dhcp6`` or an IPv6 server URL): the global address ("slaac" or "dhcpv6"
    # in ``source``; ``address`` is the same address then), and the DHCPv6 client, if any.
    address6: str | None = None
    prefixlen6: int | None = None
    dhcp6: Dhcp6Thread | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for events and logs), without the DHCP thread."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("dhcp", "dhcp6", "nics")}
        out["dns"] = list(self.dns)
        out["raced"] = list(self.raced)
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
    speed = _read_int(path / "speed")  # EINVAL while down; -1 (SPEED_UNKNOWN) for virtio
    return Nic(name=path.name, mac=mac, carrier=carrier, ifindex=_read_int(path / "ifindex") or 0,
               up=bool(flags & IFF_UP), driver=driver, physical=device.exists(),
               speed=speed if speed is not None and speed > 0 else None,
               operstate=_read(path / "operstate"))


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
    """The NIC ``bootif`` names (any MAC spelling ``macaddr.parse`` takes), else the first one with
    carrier. Pure."""
    if bootif:
        mac = macaddr.parse(bootif, field="BOOTIF", hwtype=True)
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


_NIC_COLUMNS = ("NAME", "MAC", "DRIVER", "CARRIER", "SPEED", "STATE")


def nic_inventory_lines(nics: Sequence[Nic]) -> list[str]:
    """A one-screen table of the NICs, one per line, for the console. Pure."""
    rows = [_NIC_COLUMNS]
    for n in nics:
        carrier = {True: "yes", False: "no", None: "-"}[n.carrier]
        speed = f"{n.speed}Mb/s" if n.speed else "-"
        rows.append((n.name, n.mac, n.driver or "-", carrier, speed, n.operstate or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_NIC_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    if not nics:
        lines.append("(no NICs)")
    return lines


def nic_inventory_event(nics: Sequence[Nic]) -> dict[str, Any]:
    """The fields of the ``nics`` inventory event for the server. Pure."""
    keys = ("name", "mac", "driver", "carrier", "speed", "operstate", "physical")
    return {"count": len(nics), "nics": [{k: getattr(n, k) for k in keys} for n in nics]}


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
    from pyinit.netlink import AsyncIPRoute, NetlinkError

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
                from pyinit.netlink import RTNH_F_ONLINK

                await ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index,
                                flags=RTNH_F_ONLINK)


async def remove_address(ifname: str, address: str, prefixlen: int) -> None:
    """Take ``address`` off ``ifname`` (the kernel drops the routes through it). Idempotent."""
    from pyinit.netlink import AsyncIPRoute, NetlinkError

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
            log.error(f"network: DHCP client on {self.interface} died: {_one_line(exc)}")
            with self._lock:
                self._error = self._error or exc
            self._bound.set()
        finally:
            self._ready.set()

    async def _run(self) -> None:
        from pyinit.netlink import AsyncDHCPClient, ClientConfig, Hook, Trigger

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
    """pyroute2's logger at WARNING unless we are debugging (its package __init__, which
    pyinit.netlink does not run, would set level 0 and undo ``pyinit.log.configure``)."""

    logger = logging.getLogger("pyroute2")
    if logger.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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


# ---------------------------------------------------------------------------------------------
# vlan= and bond= links


BOND_MODE_ACTIVE_BACKUP = 1


def load_link_modules(names: Sequence[str]) -> list[str]:
    """Load the ``8021q``/``bonding`` modules (staged ``@`` in the module list: on demand only)
    when they are modules here. There is no modprobe for the kernel's own request_module().
    A failure is only logged: creating the link then fails with its own line."""
    from pyinit import kmod
    from pyinit.errors import PyinitError

    try:
        return kmod.load(names, optional=frozenset(names))
    except PyinitError as exc:  # no modules.dep (a --no-modules build, or a test host)
        log.debug(f"network: modules {' '.join(names)} not loaded: {exc}")
        return []


def create_links(ipr: Any, vlans: Sequence[VlanConfig], bonds: Sequence[BondConfig], *,
                 timeout: float, sysfs: Path = Path("/sys"),
                 sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Create the ``bond=`` links (slaves enslaved, bond up), then the ``vlan=`` links (parent
    up), with pyroute2; their names, in creation order (the last is the top of the stack).

    Waits up to ``timeout`` s for each lower link to appear (drivers probe late); an
    existing link of the same name is reused (idempotent). Bonds first, so ``vlan=`` can sit
    on a bond. Needs the ``bonding`` and ``8021q`` modules (or built-ins).
    """
    from pyinit.netlink import NetlinkError

    deadline = time.monotonic() + timeout

    def index(name: str, why: str) -> int:
        while True:
            found = ipr.link_lookup(ifname=name)
            if found:
                return int(found[0])
            if time.monotonic() >= deadline:
                seen = describe_nics(list_nics(sysfs, include_virtual=True))
                raise NetworkError(f"{why} {name} does not exist after {timeout:g} s "
                                   f"(seen: {seen})")
            sleep(0.1)

    def add(name: str, **kwargs: Any) -> int:
        if not ipr.link_lookup(ifname=name):
            try:
                ipr.link("add", ifname=name, **kwargs)
            except NetlinkError as exc:  # EOPNOTSUPP: no bonding/8021q module
                raise NetworkError(f"cannot create {kwargs['kind']} link {name}: "
                                   f"{_one_line(exc)}") from exc
        return index(name, "created link")

    made: list[str] = []
    for bond in bonds:
        slaves = [index(s, f"{bond.name} slave") for s in bond.slaves]
        extra = {"mtu": bond.mtu} if bond.mtu else {}
        options = {"bond_mode": BOND_MODE_ACTIVE_BACKUP, "bond_miimon": bond.miimon,
                   "bond_updelay": bond.updelay, "bond_downdelay": bond.downdelay}
        master = add(bond.name, kind="bond")
        # Set, not only at creation: loading bonding.ko makes a bond0 of its own (max_bonds=1,
        # balance-rr), and the mode can only change while the bond is down.
        ipr.link("set", index=master, state="down")
        try:
            ipr.link("set", index=master, kind="bond", **options)
        except NetlinkError as exc:
            raise NetworkError(f"cannot make {bond.name} active-backup: {_one_line(exc)}"
                               ) from exc
        for slave in slaves:  # a slave must be down to be enslaved
            ipr.link("set", index=slave, state="down")
            ipr.link("set", index=slave, master=master)
        for slave in slaves:
            ipr.link("set", index=slave, state="up")
        ipr.link("set", index=master, state="up", **extra)
        # What the kernel made of it (bonding's sysfs), not what was asked for.
        bonding = sysfs / "class" / "net" / bond.name / "bonding"
        mode = (_read(bonding / "mode") or "?").split()[0]
        if mode not in ("active-backup", "?"):
            raise NetworkError(f"bond {bond.name} is in mode {mode}, not active-backup (an "
                               "existing bond of that name?)")
        log.info(f"network: bond {bond.name} ({mode}, miimon {_read(bonding / 'miimon') or '?'}"
                 f" ms) over {','.join(bond.slaves)}; active "
                 f"{_read(bonding / 'active_slave') or '-'}")
        made.append(bond.name)
    for vlan in vlans:
        parent = index(vlan.parent, f"{vlan.name} parent")
        ipr.link("set", index=parent, state="up")
        link = add(vlan.name, kind="vlan", link=parent, vlan_id=vlan.vid)
        ipr.link("set", index=link, state="up")
        log.info(f"network: vlan {vlan.name} (id {vlan.vid}) on {vlan.parent}")
        made.append(vlan.name)
    return made


# ---------------------------------------------------------------------------------------------
# The step


def configure(
    *,
    bootif: str | None,
    static: StaticIP | None,
    device: str | None = None,
    vlans: Sequence[VlanConfig] = (),
    bonds: Sequence[BondConfig] = (),
    carrier_timeout: float = 15,
    lease_timeout: float = 30,
    resolv_conf: Path | None = Path("/etc/resolv.conf"),
    sysfs: Path = Path("/sys"),
    include_virtual: bool = False,
    dhcp_factory: Callable[..., DhcpThread] = DhcpThread,
    load_modules: Callable[[Sequence[str]], object] | None = None,
    ipv6: str | None = None,
    procfs: Path = Path("/proc"),
    dhcp6_factory: Callable[..., Dhcp6Thread] | None = None,
) -> NetworkResult:
    """Bring the chosen NIC up and configure it; :class:`NetworkError` when that cannot be done
    within ``carrier_timeout`` + ``lease_timeout`` seconds.

    ``vlans``/``bonds`` are created first. NIC choice: ``device`` (or ``static.device``) by
    name, else the last created link, else the NIC whose MAC is ``bootif``. Otherwise, with
    ``static``, the first NIC with carrier; without it, DHCP races on every NIC with carrier
    (:func:`race_dhcp`) and the winner is the NIC. NICs brought up only to look for carrier
    and not chosen are put back down. ``resolv_conf=None`` leaves DNS alone.
    ``include_virtual`` lets veth pairs count as NICs (tests). ``load_modules`` loads
    ``8021q``/``bonding`` first (default :func:`load_link_modules`).

    ``ipv6`` (``auto6`` or ``dhcp6``, without ``static``): IPv6 instead of DHCPv4 on the NIC
    chosen as for a static ``ip=`` (no race), see :func:`configure_ipv6`.
    """
    if ipv6 is not None and ipv6 not in IPV6_MODES:
        raise ValueError(f"ipv6 must be one of {IPV6_MODES}, not {ipv6!r}")
    t0 = time.monotonic()
    needed = (["8021q"] if vlans else []) + (["bonding"] if bonds else [])
    if needed:
        (load_modules or load_link_modules)(needed)
    _quiet_pyroute2()
    from pyinit.netlink import IPRoute

    with IPRoute() as ipr:
        created = create_links(ipr, vlans, bonds, timeout=carrier_timeout, sysfs=sysfs)
    device = device or (static.device if static else None) or (created[-1] if created else None)
    want_mac = (macaddr.parse(bootif, field="BOOTIF", hwtype=True) if bootif and not device
                else None)
    race = static is None and not device and want_mac is None and ipv6 is None
    scan_virtual = include_virtual or bool(created)

    def wanted(nic: Nic) -> bool:
        if device:
            return nic.name == device
        if want_mac is not None:
            return nic.mac == want_mac
        return nic.physical or include_virtual

    with IPRoute() as ipr:
        try:
            nic, raised = wait_for_carrier(
                wanted, timeout=carrier_timeout, link_up=lambda n: _set_link_up(ipr, n),
                sysfs=sysfs, include_virtual=scan_virtual)
        except NetworkError:
            nics = list_nics(sysfs, include_virtual=scan_virtual)
            if want_mac and not any(n.mac == want_mac for n in nics):
                choose_nic(nics, want_mac)  # raises, naming the MAC
            if device and not any(n.name == device for n in nics):
                raise NetworkError(f"no NIC named {device} (seen: {describe_nics(nics)})"
                                   ) from None
            raise
        seen = tuple(list_nics(sysfs, include_virtual=scan_virtual))
        if not race:
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
            server=None, hostname=static.hostname, elapsed=round(time.monotonic() - t0, 3),
            nics=seen)

    if ipv6 is not None:
        return configure_ipv6(nic, mode=ipv6, timeout=lease_timeout, resolv_conf=resolv_conf,
                              procfs=procfs, dhcp6_factory=dhcp6_factory or Dhcp6Thread,
                              t0=t0, nics=seen)

    def start(name: str, on_change: LeaseCallback) -> DhcpThread:
        thread: DhcpThread = dhcp_factory(name, on_change=on_change)
        return thread.start()

    def late_carriers() -> list[str]:  # NICs whose carrier came after the race began
        return [n.name for n in list_nics(sysfs, include_virtual=scan_virtual)
                if wanted(n) and n.carrier]

    first = [n.name for n in seen if wanted(n) and n.carrier] if race else [nic.name]
    dhcp, lease, started = race_dhcp(
        first, timeout=lease_timeout, start=start,
        apply=lambda name: LeaseApplier(name, resolv_conf),
        more=late_carriers if race else tuple)
    winner = next((n for n in seen if n.name == dhcp.interface), nic)
    losers = [name for name in started if name != winner.name]
    if race:
        # The losers never got an address (FirstLease); the links we raised only to look for
        # carrier go back down, so the handed-over system finds them as firmware left them.
        put_down = [n for n in raised if n.name != winner.name]
        with IPRoute() as ipr:
            for other in put_down:
                _set_link_up(ipr, other, up=False)
        log.info(f"network: first lease on {winner.name} (raced on {', '.join(first)}"
                 f"{'; stopped ' + ', '.join(losers) if losers else ''}"
                 f"{'; down again: ' + ', '.join(n.name for n in put_down) if put_down else ''})")
    log.info(f"network: lease {lease.address}/{lease.prefixlen} via {lease.gateway or '-'} "
             f"dns {' '.join(lease.dns) or '-'} from {lease.server or '?'} "
             f"({dhcp.bound_after or 0.0:.1f} s)")
    return NetworkResult(
        interface=winner.name, mac=winner.mac, address=lease.address, prefixlen=lease.prefixlen,
        gateway=lease.gateway, dns=lease.dns, source="dhcp", server=lease.server,
        search=(lease.domain,) if lease.domain else (), hostname=lease.hostname,
        lease_time=lease.lease_time, elapsed=round(time.monotonic() - t0, 3),
        raced=tuple(started) if race else (),
        nics=seen, dhcp=dhcp)


# ---------------------------------------------------------------------------------------------
# IPv6: SLAAC by the kernel, DHCPv6 (pyinit.dhcp6) when the RA says managed or SLAAC gives nothing

IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IF_RA_RCVD = 0x20  # IFLA_INET6_FLAGS: a router advertisement arrived
IF_RA_MANAGED = 0x40  # … with the M flag: addresses come from DHCPv6
IF_RA_OTHERCONF = 0x80
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_SITE = 200  # fec0::/10 site-local: deprecated (RFC 3879), but QEMU slirp's prefix
ROUTABLE_SCOPES = (RT_SCOPE_UNIVERSE, RT_SCOPE_SITE)
RT_SCOPE_LINK = 253
SLAAC_GRACE = 8.0  # s without a global address before DHCPv6 is tried anyway (RS at 0 s, 4 s)
IPV6_MODES = ("auto6", "dhcp6")


@dataclass(frozen=True)
class Addr6:
    """One IPv6 address on the NIC, as netlink reports it."""

    address: str
    prefixlen: int
    scope: int
    flags: int

    @property
    def ready(self) -> bool:
        """Usable as a source: DAD finished (not tentative) and did not fail."""
        return not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


@dataclass(frozen=True)
class V6State:
    """What the kernel says about IPv6 on the NIC at one moment."""

    addresses: tuple[Addr6, ...] = ()
    ra_flags: int = 0  # IFLA_INET6_FLAGS
    gateway: str | None = None  # the default route's router (from the RA)

    @property
    def ra_received(self) -> bool:
        return bool(self.ra_flags & IF_RA_RCVD)

    @property
    def managed(self) -> bool:
        return bool(self.ra_flags & IF_RA_MANAGED)

    @property
    def link_local_ready(self) -> bool:
        """A DHCPv6 client needs a link-local source address that passed DAD."""
        return any(a.scope == RT_SCOPE_LINK and a.ready for a in self.addresses)


def global_address(addresses: Iterable[Addr6], prefer: str | None = None) -> Addr6 | None:
    """The address to use: global (or site-local) scope, DAD done; ``prefer`` (the DHCPv6
    lease) first, then a non-deprecated one, in the kernel's order. Pure."""
    usable = [a for a in addresses if a.scope in ROUTABLE_SCOPES and a.ready
              and not ipaddress.IPv6Address(a.address).is_link_local]
    usable.sort(key=lambda a: (a.address != prefer, bool(a.flags & IFA_F_DEPRECATED)))
    return usable[0] if usable else None


def v6_wants_dhcp(state: V6State, *, mode: str, elapsed: float,
                  grace: float = SLAAC_GRACE) -> bool:
    """Whether to start DHCPv6 now. ``dhcp6``: at once; ``auto6``: when the RA has the M flag,
    or when ``grace`` s passed without a global address (no RA, or an RA whose prefix is not
    for autoconfiguration). Never before the link-local address passed DAD. Pure."""
    if not state.link_local_ready:
        return False
    return mode == "dhcp6" or state.managed or elapsed >= grace


def ipv6_sysctl_fixes(values: dict[str, str]) -> dict[str, str]:
    """The per-interface sysctls (``/proc/sys/net/ipv6/conf/<if>/…``) to change so the kernel
    does SLAAC: IPv6 enabled, router advertisements accepted (``2`` when forwarding is on, which
    makes ``1`` ignore them), autoconf on. The kernel defaults need nothing, and PID 1 in an
    initramfs has no sysctl.d, so this only matters on odd builds. Pure."""
    fixes: dict[str, str] = {}
    if values.get("disable_ipv6", "0") != "0":
        fixes["disable_ipv6"] = "0"
    want_ra = "2" if values.get("forwarding", "0") != "0" else "1"
    if values.get("accept_ra", "1") not in (want_ra, "2"):
        fixes["accept_ra"] = want_ra
    if values.get("autoconf", "1") == "0":
        fixes["autoconf"] = "1"
    return fixes


def ensure_ipv6_sysctls(ifname: str, procfs: Path = Path("/proc")) -> dict[str, str]:
    """Apply :func:`ipv6_sysctl_fixes` to ``ifname``; what was changed.
    :class:`NetworkError` when the kernel has no IPv6."""
    conf = procfs / "sys" / "net" / "ipv6" / "conf" / ifname
    if not conf.is_dir():
        raise NetworkError(f"no IPv6 in this kernel ({conf} is missing)", interface=ifname)
    values = {k: _read(conf / k) or "" for k in ("disable_ipv6", "accept_ra", "autoconf",
                                                   "forwarding")}
    fixes = ipv6_sysctl_fixes(values)
    for key, value in fixes.items():
        (conf / key).write_text(value + "\n")
        log.info(f"network: {ifname}: net.ipv6.conf.{ifname}.{key} "
                 f"{values[key] or '?'} -> {value}")
    return fixes


def read_v6_state(ipr: Any, index: int) -> V6State:
    """The NIC's IPv6 addresses, RA flags and default router, over netlink (pyroute2)."""
    import socket

    addrs = []
    for msg in ipr.get_addr(family=socket.AF_INET6, index=index):
        flags = msg.get_attr("IFA_FLAGS")
        addrs.append(Addr6(address=msg.get_attr("IFA_ADDRESS"), prefixlen=msg["prefixlen"],
                           scope=msg["scope"], flags=msg["flags"] if flags is None else flags))
    ra_flags = 0
    for link in ipr.get_links(index):
        spec = link.get_attr("IFLA_AF_SPEC")
        inet6 = spec.get_attr("AF_INET6") if spec is not None else None
        for name, value in (inet6 or {}).get("attrs", ()):
            if name == "IFLA_INET6_FLAGS":
                ra_flags = int(value)
    gateway = None
    for route in ipr.get_routes(family=socket.AF_INET6, table=254):
        if route["dst_len"] == 0 and route.get_attr("RTA_OIF") == index:
            gateway = route.get_attr("RTA_GATEWAY") or gateway
    return V6State(addresses=tuple(addrs), ra_flags=ra_flags, gateway=gateway)


async def apply_address6(ifname: str, address: str, *, preferred: int, valid: int) -> None:
    """Put a DHCPv6 address on ``ifname`` as ``/128`` (the on-link prefix comes from the RA, as
    with systemd-networkd and NetworkManager), with the lease's lifetimes. Idempotent."""
    import socket

    from pyinit.dhcp6 import INFINITY
    from pyinit.netlink import AsyncIPRoute

    async with AsyncIPRoute() as ipr:
        lft: dict[str, int] = {}
        if valid != INFINITY:
            lft = {"valid_lft": valid, "preferred_lft": min(preferred, valid)}
        await ipr.addr("replace", index=await _ifindex(ipr, ifname), address=address,
                       prefixlen=128, family=socket.AF_INET6, **lft)


class Dhcp6Thread:
    """:class:`pyinit.dhcp6.Dhcp6Client` in a daemon thread: acquire, apply the address, then
    keep renewing until :meth:`stop`. ``client`` may be a fake with ``acquire``/``stop``."""

    def __init__(self, interface: str, mac: str, *, timeout: float, client: Any = None,
                 apply: Callable[[str, Any], None] | None = None) -> None:
        from pyinit.dhcp6 import Dhcp6Client

        self.interface = interface
        self.client = client if client is not None else Dhcp6Client(interface, mac)
        self.timeout = timeout
        self._apply = apply or self._apply_netlink
        self.lease: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"dhcp6-{interface}",
                                        daemon=True)

    def _apply_netlink(self, event: str, lease: Any) -> None:
        asyncio.run(apply_address6(self.interface, lease.address, preferred=lease.preferred,
                                   valid=lease.valid))
        if event != "bound":
            log.info(f"network: DHCPv6 {lease.address} {event} (valid {lease.valid} s)")

    def start(self) -> Dhcp6Thread:
        log.info(f"network: DHCPv6 on {self.interface}")
        self._thread.start()
        return self

    def _main(self) -> None:
        try:
            lease = self.client.acquire(self.timeout)
            self._apply("bound", lease)
            self.lease = lease
            log.info(f"network: DHCPv6 lease {lease.address} from {lease.server or '?'} "
                     f"(valid {lease.valid} s)")
            self.client.start_renewing(self._apply)
        except BaseException as exc:
            self.error = exc
            log.warning(f"network: DHCPv6 on {self.interface}: {_one_line(exc)}")

    @property
    def state(self) -> str:
        if self.error is not None:
            return f"failed ({self.error})"
        return str(getattr(self.client, "state", "?"))

    def stop(self) -> None:
        self.client.stop()
        self._thread.join(5)


def wait_for_ipv6(
    *,
    mode: str,
    timeout: float,
    observe: Callable[[], V6State],
    start_dhcp6: Callable[[], Dhcp6Thread],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 0.1,
    grace: float = SLAAC_GRACE,
) -> tuple[Addr6, str, V6State, Dhcp6Thread | None]:
    """Poll the NIC until it has a global IPv6 address that passed DAD, bounded by ``timeout``.

    The kernel does SLAAC by itself once the link is up; DHCPv6 is started (once) when
    :func:`v6_wants_dhcp` says so, and its address counts once its DAD is done and an RA has
    arrived (the route to use it). Returns
    (the address, ``"slaac"`` or ``"dhcpv6"``, the last state, the DHCPv6 thread or None). A
    DHCPv6 client that has no lease yet when SLAAC wins is stopped. :class:`NetworkError`
    saying what was seen (RA or not, M flag, DHCPv6 state) when the time is up.
    """
    t0 = clock()
    dhcp: Dhcp6Thread | None = None
    while True:
        state = observe()
        lease = dhcp.lease if dhcp is not None else None
        addr = global_address(state.addresses, prefer=lease.address if lease else None)
        source = "dhcpv6" if lease is not None and addr and addr.address == lease.address \
            else "slaac"
        # A DHCPv6 address is a /128: the on-link prefix and the router come from an RA
        # (RFC 5942), so it is usable only once one arrived (ip=dhcp6 can bind before).
        if addr is not None and (source == "slaac" or state.ra_received):
            if dhcp is not None and lease is None:
                dhcp.stop()
                dhcp = None
            return addr, source, state, dhcp
        now = clock()
        if dhcp is None and v6_wants_dhcp(state, mode=mode, elapsed=now - t0, grace=grace):
            dhcp = start_dhcp6()
        if now - t0 >= timeout:
            ra = ("no router advertisement" if not state.ra_received else
                  "RA with M flag" if state.managed else "RA without a usable prefix")
            tentative = [a.address + (" (DAD failed)" if a.flags & IFA_F_DADFAILED else "")
                         for a in state.addresses
                         if a.scope in ROUTABLE_SCOPES and not a.ready]
            if lease is not None:
                ra += f" to route DHCPv6's {lease.address}"
            error = NetworkError(
                f"no global IPv6 address within {timeout:g} s ({ra}; DHCPv6 "
                f"{dhcp.state if dhcp is not None else 'not started'}"
                f"{'; DAD not done: ' + ', '.join(tentative) if tentative else ''})")
            if dhcp is not None:
                dhcp.stop()
            raise error
        sleep(max(0.0, min(interval, t0 + timeout - now)))


def allow_ipv6_connections() -> None:
    """Let requests connect over IPv6. urllib3 decides once, at import, whether the host has
    IPv6 (it binds a socket to ``::1``); PID 1 imports it before ``lo`` is up, so the answer is
    no and every ``http://[addr]/`` URL then fails with "Address family for hostname not
    supported". Once an IPv6 address is configured the answer is known to be yes."""
    import urllib3.util.connection

    urllib3.util.connection.HAS_IPV6 = True


def configure_ipv6(nic: Nic, *, mode: str, timeout: float, resolv_conf: Path | None,
                   procfs: Path = Path("/proc"),
                   dhcp6_factory: Callable[..., Dhcp6Thread] = Dhcp6Thread,
                   t0: float | None = None, nics: tuple[Nic, ...] = ()) -> NetworkResult:
    """IPv6 on the chosen NIC (already up with carrier): sysctls checked, then
    :func:`wait_for_ipv6` over netlink. The MAC identity is the NIC's, as with IPv4."""
    from pyinit.netlink import IPRoute

    t0 = time.monotonic() if t0 is None else t0
    fixed = ensure_ipv6_sysctls(nic.name, procfs)
    with IPRoute() as ipr:
        if fixed:  # the RS went out (or not) when the link came up: make it go out again
            _set_link_up(ipr, nic, up=False)
            _set_link_up(ipr, nic)
        index = nic.ifindex or int(ipr.link_lookup(ifname=nic.name)[0])
        try:
            addr, source, state, dhcp = wait_for_ipv6(
                mode=mode, timeout=timeout, observe=lambda: read_v6_state(ipr, index),
                start_dhcp6=lambda: dhcp6_factory(nic.name, nic.mac, timeout=timeout).start())
        except NetworkError as exc:
            raise NetworkError(exc.reason, interface=nic.name) from None
    lease = dhcp.lease if dhcp is not None else None
    dns: tuple[str, ...] = tuple(lease.dns) if lease is not None else ()
    search: tuple[str, ...] = tuple(lease.domains) if lease is not None else ()
    if resolv_conf is not None:
        write_resolv_conf(resolv_conf, dns, search)
    log.info(f"network: {source} {addr.address}/{addr.prefixlen} via {state.gateway or '-'} "
             f"dns {' '.join(dns) or '-'} ({time.monotonic() - t0:.1f} s)")
    allow_ipv6_connections()
    return NetworkResult(
        interface=nic.name, mac=nic.mac, address=addr.address, prefixlen=addr.prefixlen,
        gateway=state.gateway, dns=dns, source=source,
        server=lease.server if lease is not None else None, search=search,
        lease_time=lease.valid if lease is not None and lease.valid != 0xFFFFFFFF else None,
        elapsed=round(time.monotonic() - t0, 3), nics=nics, address6=addr.address,
        prefixlen6=addr.prefixlen, dhcp6=dhcp)
