"""The network step: pick the NIC, wait for carrier, get an address (DHCP, static or IPv6).

The NIC is the one ``ip=…:dev`` names, else the one ``BOOTIF`` names (a MAC). Without either,
every physical NIC is brought up and DHCP runs on each one that has carrier, in parallel: the
first lease wins, its NIC's MAC identifies the machine, and the other clients are stopped before
they configure anything. ``vlan=`` and ``bond=`` links are made first, and the top one is the
NIC. Links are brought up and addresses and routes applied with pyroute2 (netlink); DNS servers
go to a resolv.conf path. The modules, lowest first:

:mod:`pyinit.network.links`
    The NICs as sysfs shows them, the choice by ``BOOTIF``, waiting for carrier, the ``vlan=``
    and ``bond=`` links, the NIC inventory lines and event.
:mod:`pyinit.network.dhcp4`
    DHCPv4: pyroute2's client in a thread of its own (renewals for as long as the runtime
    lives), each lease applied to the interface and resolv.conf, the race of several NICs
    (the first lease wins).
:mod:`pyinit.network.ipv6`
    SLAAC by the kernel, DHCPv6 (:mod:`pyinit.dhcp6`) when the router says so or SLAAC gives
    nothing.
:mod:`pyinit.network.result`
    :class:`~pyinit.network.result.NetworkResult`, what the step hands the boot.
:mod:`pyinit.network.configure`
    :func:`~pyinit.network.configure.configure`, the step itself, tying the others together.

Everything that touches the system takes its root (``sysfs``, ``procfs``) or its peer
(``dhcp_factory``, ``client_factory``) as a parameter. pyroute2 is imported lazily: command-line
code that needs only :class:`~pyinit.network.configure.StaticIP` must not pay for loading
netlink and DHCP machinery.
"""
