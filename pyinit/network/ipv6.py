"""IPv6 on the chosen NIC: SLAAC by the kernel, DHCPv6 (:mod:`pyinit.dhcp6`) when the router
advertisement says managed or SLAAC gives nothing (``ip=auto6|dhcp6``, or a server URL whose host
is an IPv6 literal).

:func:`configure_ipv6` checks the sysctls, then :func:`wait_for_ipv6` polls the NIC over netlink
until it has a global address that passed DAD. :func:`global_address`, :func:`v6_wants_dhcp` and
:func:`ipv6_sysctl_fixes` are pure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinit.errors import NetworkError
from pyinit.log import get_logger
from pyinit.network.dhcp4 import write_resolv_conf
from pyinit.network.links import Nic, ifindex, one_line, set_link_up
from pyinit.network.result import NetworkResult
from pyinit.sysfs import read_attr

log = get_logger("pyinit.network")


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
    values = {k: read_attr(conf / k) or "" for k in ("disable_ipv6", "accept_ra", "autoconf",
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
        await ipr.addr("replace", index=await ifindex(ipr, ifname), address=address,
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
            log.warning(f"network: DHCPv6 on {self.interface}: {one_line(exc)}")

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
            set_link_up(ipr, nic, up=False)
            set_link_up(ipr, nic)
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
