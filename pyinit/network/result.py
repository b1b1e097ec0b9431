"""What the network step hands the boot: the configured interface, its addresses, the NICs it saw
and the DHCP client(s) still running."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pyinit.network.links import Nic

if TYPE_CHECKING:  # the clients' modules return this one: no import cycle at run time
    from pyinit.network.dhcp4 import DhcpThread
    from pyinit.network.ipv6 import Dhcp6Thread


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
