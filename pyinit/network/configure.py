"""The network step: the links made, the NIC chosen and brought up, then a static address,
IPv6, or DHCP (a race on every NIC with carrier when none is named)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinit import macaddr
from pyinit.cmdline import BondConfig, VlanConfig
from pyinit.errors import NetworkError
from pyinit.log import get_logger
from pyinit.network.dhcp4 import (
    DhcpThread,
    LeaseApplier,
    LeaseCallback,
    apply_address,
    race_dhcp,
    write_resolv_conf,
)
from pyinit.network.ipv6 import IPV6_MODES, Dhcp6Thread, configure_ipv6
from pyinit.network.links import (
    Nic,
    choose_nic,
    create_links,
    describe_nics,
    list_links,
    list_nics,
    load_link_modules,
    one_line,
    quiet_pyroute2,
    set_link_up,
    wait_for_carrier,
)
from pyinit.network.result import NetworkResult

log = get_logger("pyinit.network")


@dataclass(frozen=True)
class StaticIP:
    """A static configuration (the kernel's ``ip=client::gw:netmask:host:dev:off`` form)."""

    address: str
    prefixlen: int
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    hostname: str | None = None
    device: str | None = None


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
    nics: Callable[[Path], Sequence[Nic]] = list_nics,
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
    ``nics`` lists the NICs to choose from (default: the physical ones in ``sysfs``); once
    ``vlan=``/``bond=`` made links, every Ethernet link counts. ``load_modules`` loads
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
    quiet_pyroute2()
    from pyinit.netlink import IPRoute

    with IPRoute() as ipr:
        created = create_links(ipr, vlans, bonds, timeout=carrier_timeout, sysfs=sysfs)
    device = device or (static.device if static else None) or (created[-1] if created else None)
    want_mac = (macaddr.parse(bootif, field="BOOTIF", hwtype=True) if bootif and not device
                else None)
    race = static is None and not device and want_mac is None and ipv6 is None
    # vlan= and bond= links are virtual (no device in sysfs): once made, every link counts
    listing = list_links if created else nics

    def wanted(nic: Nic) -> bool:
        if device:
            return nic.name == device
        if want_mac is not None:
            return nic.mac == want_mac
        return True  # every NIC ``listing`` lists

    with IPRoute() as ipr:
        try:
            nic, raised = wait_for_carrier(
                wanted, timeout=carrier_timeout, link_up=lambda n: set_link_up(ipr, n),
                sysfs=sysfs, nics=listing)
        except NetworkError:
            found = listing(sysfs)
            if want_mac and not any(n.mac == want_mac for n in found):
                choose_nic(found, want_mac)  # raises, naming the MAC
            if device and not any(n.name == device for n in found):
                raise NetworkError(f"no NIC named {device} (seen: {describe_nics(found)})"
                                   ) from None
            raise
        seen = tuple(listing(sysfs))
        if not race:
            for other in raised:  # leave alone the NICs we did not choose
                if other.name != nic.name:
                    set_link_up(ipr, other, up=False)
    log.info(f"network: {nic.name} {nic.mac} carrier up ({time.monotonic() - t0:.1f} s)")

    if static is not None:
        try:
            asyncio.run(apply_address(nic.name, static.address, static.prefixlen,
                                      static.gateway))
        except Exception as exc:  # NetlinkError: one line for the operator, not a traceback
            raise NetworkError(f"cannot apply {static.address}/{static.prefixlen}: "
                               f"{one_line(exc)}", interface=nic.name) from exc
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
        return [n.name for n in listing(sysfs) if wanted(n) and n.carrier]

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
                set_link_up(ipr, other, up=False)
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
