"""The NICs and the links the network step makes: Ethernet links as sysfs shows them, the NIC
``BOOTIF`` names, waiting (bounded) for carrier, the ``vlan=`` and ``bond=`` links (pyroute2),
and the NIC inventory for the console and the server.

:func:`choose_nic` and the inventory lines and event are pure; the readers take ``sysfs``. Also
the small helpers every network module shares (:func:`one_line`,
:func:`set_link_up`, :func:`ifindex`, :func:`quiet_pyroute2`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinit import macaddr
from pyinit.cmdline import BondConfig, VlanConfig
from pyinit.errors import NetworkError
from pyinit.log import get_logger
from pyinit.sysfs import read_attr

log = get_logger("pyinit.network")


ARPHRD_ETHER = 1
IFF_UP = 0x1


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


# ---------------------------------------------------------------------------------------------
# NIC discovery and choice


def _read_int(path: Path, base: int = 10) -> int | None:
    text = read_attr(path)
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
    mac = (read_attr(path / "address") or "").lower()
    if not mac or mac == "00:00:00:00:00:00":
        return None
    carrier_text = read_attr(path / "carrier")
    carrier = None if carrier_text is None else carrier_text == "1"
    flags = _read_int(path / "flags", 16) or 0
    device = path / "device"
    driver_link = device / "driver"
    driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else None
    speed = _read_int(path / "speed")  # EINVAL while down; -1 (SPEED_UNKNOWN) for virtio
    return Nic(name=path.name, mac=mac, carrier=carrier, ifindex=_read_int(path / "ifindex") or 0,
               up=bool(flags & IFF_UP), driver=driver, physical=device.exists(),
               speed=speed if speed is not None and speed > 0 else None,
               operstate=read_attr(path / "operstate"))


def list_links(sysfs: Path = Path("/sys")) -> list[Nic]:
    """Every Ethernet link in ifindex order: the NICs, and the virtual links (veth, vlan, bond)
    too. Never ``lo``."""
    net = sysfs / "class" / "net"
    try:
        entries = sorted(net.iterdir())
    except OSError:
        return []
    nics = [nic for entry in entries if entry.name != "lo" and (nic := read_nic(entry))]
    return sorted(nics, key=lambda n: (n.ifindex, n.name))


def list_nics(sysfs: Path = Path("/sys")) -> list[Nic]:
    """The physical Ethernet NICs (a ``device`` link) in ifindex order."""
    return [n for n in list_links(sysfs) if n.physical]


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
    nics: Callable[[Path], Sequence[Nic]] = list_nics,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 0.1,
) -> tuple[Nic, list[Nic]]:
    """Bring every wanted NIC up and poll sysfs until one has carrier, bounded by ``timeout``.

    ``nics`` lists the NICs of ``sysfs`` (the physical ones by default). Rescans on every round,
    so a NIC whose driver probes late is still found. Returns the first
    wanted NIC (ifindex order) with carrier and the NICs that ``link_up`` was called for.
    Raises :class:`NetworkError` listing every NIC seen when the time is up.
    """
    deadline = clock() + timeout
    raised: list[Nic] = []
    while True:
        found = nics(sysfs)
        candidates = [n for n in found if wanted(n)]
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
            raise NetworkError(f"{which} within {timeout:g} s (seen: {describe_nics(found)})")
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
# Helpers every network module uses


async def ifindex(ipr: Any, ifname: str) -> int:
    """``ifname``'s index, looked up over netlink; :class:`NetworkError` when it is gone."""
    found = await ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkError("interface disappeared", interface=ifname)
    return int(found[0])


def set_link_up(ipr: Any, nic: Nic, up: bool = True) -> None:
    """Set ``nic`` administratively up (or down) over netlink."""
    ipr.link("set", index=nic.ifindex, state="up" if up else "down")


def quiet_pyroute2() -> None:
    """pyroute2's logger at WARNING unless we are debugging (its package __init__, which
    pyinit.netlink does not run, would set level 0 and undo ``pyinit.log.configure``)."""
    logger = logging.getLogger("pyroute2")
    if logger.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: an exception in a one-line message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
                seen = describe_nics(list_links(sysfs))
                raise NetworkError(f"{why} {name} does not exist after {timeout:g} s "
                                   f"(seen: {seen})")
            sleep(0.1)

    def add(name: str, **kwargs: Any) -> int:
        if not ipr.link_lookup(ifname=name):
            try:
                ipr.link("add", ifname=name, **kwargs)
            except NetlinkError as exc:  # EOPNOTSUPP: no bonding/8021q module
                raise NetworkError(f"cannot create {kwargs['kind']} link {name}: "
                                   f"{one_line(exc)}") from exc
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
            raise NetworkError(f"cannot make {bond.name} active-backup: {one_line(exc)}"
                               ) from exc
        for slave in slaves:  # a slave must be down to be enslaved
            ipr.link("set", index=slave, state="down")
            ipr.link("set", index=slave, master=master)
        for slave in slaves:
            ipr.link("set", index=slave, state="up")
        ipr.link("set", index=master, state="up", **extra)
        # What the kernel made of it (bonding's sysfs), not what was asked for.
        bonding = sysfs / "class" / "net" / bond.name / "bonding"
        mode = (read_attr(bonding / "mode") or "?").split()[0]
        if mode not in ("active-backup", "?"):
            raise NetworkError(f"bond {bond.name} is in mode {mode}, not active-backup (an "
                               "existing bond of that name?)")
        log.info(f"network: bond {bond.name} ({mode}, miimon {read_attr(bonding / 'miimon') or '?'}"
                 f" ms) over {','.join(bond.slaves)}; active "
                 f"{read_attr(bonding / 'active_slave') or '-'}")
        made.append(bond.name)
    for vlan in vlans:
        parent = index(vlan.parent, f"{vlan.name} parent")
        ipr.link("set", index=parent, state="up")
        link = add(vlan.name, kind="vlan", link=parent, vlan_id=vlan.vid)
        ipr.link("set", index=link, state="up")
        log.info(f"network: vlan {vlan.name} (id {vlan.vid}) on {vlan.parent}")
        made.append(vlan.name)
    return made
