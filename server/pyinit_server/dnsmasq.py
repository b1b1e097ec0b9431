"""``pyinit dnsmasq``: a dnsmasq configuration that network-boots machines into ``pyinit serve``.

The chain on a real network: the NIC's PXE ROM asks DHCP for a boot file, gets iPXE
(``undionly.kpxe`` for BIOS, ``ipxe.efi`` for x86-64 UEFI) over dnsmasq's TFTP, iPXE asks DHCP
again, this time sending option 175 and the user class ``iPXE``, and gets the HTTP URL of the
server's ``/boot.ipxe``, which chains to ``/{mac}.ipxe`` (kernel + initramfs). dnsmasq tells the
two requests apart by tag: ``ipxe`` (option 175 or user class iPXE) and the client architecture
(option 93: 0 BIOS, 7 and 9 x86-64 UEFI, 11 arm64 UEFI).

Two modes:

* ``full``: dnsmasq is the network's DHCP server (hands out addresses from ``--range``) and
  points PXE clients at the boot files with ``dhcp-boot``.
* ``proxy``: another DHCP server hands out addresses; dnsmasq only answers PXE clients
  (proxy-DHCP, ``dhcp-range=NET,proxy``) with ``pxe-service`` entries, one per architecture.

:func:`render` is pure: a validated :class:`DnsmasqSpec` in, the text of the file out. Every
input is checked in :func:`make_spec`, which raises :class:`~pyinit.errors.ConfigError` naming
the command line option. Syntax needs dnsmasq 2.76 or later (2.76 swapped the numbers of
``x86-64_EFI`` and ``BC_EFI`` and added ``ARM64_EFI``); Debian 12 ships 2.89/2.90.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pyinit.errors import ConfigError
from pyinit_server.machines import normalize_mac

Mode = Literal["proxy", "full"]
MODES: tuple[Mode, ...] = ("proxy", "full")
DEFAULT_TFTP_ROOT = Path("/usr/lib/ipxe")  # Debian's ipxe package
BIOS_FILE = "undionly.kpxe"  # iPXE on top of the NIC's own PXE stack (UNDI): any BIOS NIC
EFI64_FILE = "ipxe.efi"  # iPXE with its own drivers, x86-64 UEFI
DEFAULT_LEASE = "1h"
MIN_LEASE_SECONDS = 120  # dnsmasq raises shorter leases to 2 minutes

_IFNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")  # Linux IFNAMSIZ - 1, no '/', ':' or blanks
_LEASE = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# a relative path whose components do not start with '.' (so no '..')
_FILE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*(/[A-Za-z0-9_+-][A-Za-z0-9_.+-]*)*$")
# characters that would end or split a dnsmasq value: ',' separates fields, '#' starts a
# comment, quotes and blanks are parsed by dnsmasq itself
_URL_FORBIDDEN = set(',#"\'\\ \t\n')


@dataclass(frozen=True)
class DnsmasqSpec:
    """Everything the configuration depends on, already validated (see :func:`make_spec`)."""

    mode: Mode
    server_url: str  # pyinit serve's base URL as machines see it, no trailing slash
    interface: str
    tftp_root: Path
    subnet: IPv4Network | None = None  # proxy: required; full: optional (netmask, checks)
    range: tuple[IPv4Address, IPv4Address] | None = None  # full mode only
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    lease_time: str = DEFAULT_LEASE
    hosts: tuple[tuple[str, IPv4Address], ...] = ()  # (MAC with colons, address)
    efi_arm64: str | None = None  # arm64 iPXE file name in tftp_root, when there is one

    @property
    def boot_url(self) -> str:
        return f"{self.server_url}/boot.ipxe"


def _ip(option: str, text: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ConfigError(option, f"{text!r} is not an IPv4 address") from None


def _lease_seconds(text: str) -> int | None:
    if text == "infinite":
        return None
    m = _LEASE.match(text)
    if not m:
        raise ConfigError("--lease-time",
                          f"{text!r} is not a duration (e.g. 45m, 12h, 1d or infinite)")
    return int(m.group(1)) * _UNIT[m.group(2)]


def server_url(text: str) -> str:
    """The base URL of ``pyinit serve``: http(s), a host, no query; trailing slash dropped."""
    if any(c in _URL_FORBIDDEN for c in text):
        raise ConfigError("--server-url",
                          f"{text!r} contains a blank, comma, quote or '#' (not allowed in "
                          "a dnsmasq value)")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ConfigError("--server-url", f"{text!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ConfigError("--server-url", f"{text!r} has no host")
    if parts.query or parts.fragment:
        raise ConfigError("--server-url", f"{text!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("--server-url", f"{text!r} has an invalid port") from None
    return text.rstrip("/")


def make_spec(*, mode: str, server_url_text: str, interface: str,
              tftp_root: Path = DEFAULT_TFTP_ROOT, subnet: str | None = None,
              dhcp_range: str | None = None, router: str | None = None,
              dns: str | None = None, lease_time: str = DEFAULT_LEASE,
              hosts: tuple[str, ...] = (), efi_arm64: str | None = None) -> DnsmasqSpec:
    """Validate command line values into a :class:`DnsmasqSpec`. Pure.

    Raises :class:`ConfigError` whose field is the option at fault (``--range: ...``).
    """
    if mode not in MODES:
        raise ConfigError("--mode", f"{mode!r} is not one of {', '.join(MODES)}")
    url = server_url(server_url_text)
    if not _IFNAME.match(interface) or interface in (".", ".."):
        raise ConfigError("--interface", f"{interface!r} is not a network interface name "
                                         "(1-15 characters: letters, digits, _ . - @)")
    if not tftp_root.is_absolute() or any(c in _URL_FORBIDDEN for c in str(tftp_root)):
        raise ConfigError("--tftp-root", f"{str(tftp_root)!r} must be an absolute path "
                                         "without blanks, commas, quotes or '#'")
    net: IPv4Network | None = None
    if subnet is not None:
        try:
            net = IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise ConfigError("--subnet", f"{subnet!r} is not an IPv4 network in CIDR form "
                                          f"({exc})") from None
        if net.prefixlen > 30:
            raise ConfigError("--subnet", f"{subnet} is too small for DHCP (/30 at most)")
    seconds = _lease_seconds(lease_time)
    if seconds is not None and seconds < MIN_LEASE_SECONDS:
        raise ConfigError("--lease-time", f"{lease_time} is shorter than dnsmasq's minimum "
                                          "of 2 minutes")

    rng: tuple[IPv4Address, IPv4Address] | None = None
    if mode == "proxy":
        if net is None:
            raise ConfigError("--subnet", "required in proxy mode (the network the other "
                                          "DHCP server serves, e.g. 10.1.0.0/24)")
        for option, value in (("--range", dhcp_range), ("--router", router), ("--dns", dns)):
            if value is not None:
                raise ConfigError(option, "only in full mode: in proxy mode the other DHCP "
                                          "server hands out addresses and options")
        if hosts:
            raise ConfigError("--host", "only in full mode (proxy mode gives no addresses)")
    else:
        if dhcp_range is None:
            raise ConfigError("--range", "required in full mode (FIRST,LAST, e.g. "
                                         "10.1.0.100,10.1.0.200)")
        pieces = dhcp_range.split(",")
        if len(pieces) != 2:
            raise ConfigError("--range", f"{dhcp_range!r} is not FIRST,LAST")
        first, last = (_ip("--range", p) for p in pieces)
        if first > last:
            raise ConfigError("--range", f"{first} comes after {last}")
        if net is not None:
            for address in (first, last):
                if address not in net:
                    raise ConfigError("--range", f"{address} is outside --subnet {net}")
                if address in (net.network_address, net.broadcast_address):
                    raise ConfigError("--range", f"{address} is the network or broadcast "
                                                 f"address of {net}")
        elif IPv4Network(f"{first}/24", strict=False) != IPv4Network(f"{last}/24",
                                                                      strict=False):
            # without --subnet dnsmasq takes the netmask from the interface; a range across
            # /24s is legal but usually a typo, so ask for the subnet to be spelled out
            raise ConfigError("--range", f"{first}..{last} spans several /24 networks: give "
                                         "--subnet")
        rng = (first, last)
    gw = _ip("--router", router) if router is not None else None
    if gw is not None and net is not None and gw not in net:
        raise ConfigError("--router", f"{gw} is outside --subnet {net}")
    servers = tuple(_ip("--dns", d) for d in dns.split(",")) if dns is not None else ()

    static: list[tuple[str, IPv4Address]] = []
    seen: set[str] = set()
    for entry in hosts:
        mac_text, sep, addr_text = entry.partition(",")
        mac = normalize_mac(mac_text)
        if not sep or mac is None:
            raise ConfigError("--host", f"{entry!r} is not MAC,ADDRESS "
                                        "(e.g. 52:54:00:12:34:56,10.1.0.20)")
        address = _ip("--host", addr_text)
        if net is not None and address not in net:
            raise ConfigError("--host", f"{address} ({mac_text}) is outside --subnet {net}")
        if mac in seen:
            raise ConfigError("--host", f"{mac_text} is given twice")
        seen.add(mac)
        static.append((mac.replace("-", ":"), address))
    if efi_arm64 is not None and not _FILE.match(efi_arm64):
        raise ConfigError("--efi-arm64", f"{efi_arm64!r} is not a file name under --tftp-root")
    return DnsmasqSpec(mode="proxy" if mode == "proxy" else "full", server_url=url,
                       interface=interface, tftp_root=tftp_root, subnet=net, range=rng,
                       router=gw, dns=servers, lease_time=lease_time, hosts=tuple(static),
                       efi_arm64=efi_arm64)


def command_line(spec: DnsmasqSpec) -> str:
    """The ``pyinit dnsmasq`` command that regenerates ``spec``'s file. Pure."""
    argv = ["pyinit", "dnsmasq", "--mode", spec.mode, "--interface", spec.interface]
    if spec.subnet is not None:
        argv += ["--subnet", str(spec.subnet)]
    if spec.range is not None:
        argv += ["--range", f"{spec.range[0]},{spec.range[1]}"]
    if spec.router is not None:
        argv += ["--router", str(spec.router)]
    if spec.dns:
        argv += ["--dns", ",".join(map(str, spec.dns))]
    if spec.mode == "full" and spec.lease_time != DEFAULT_LEASE:
        argv += ["--lease-time", spec.lease_time]
    for mac, address in spec.hosts:
        argv += ["--host", f"{mac},{address}"]
    if spec.tftp_root != DEFAULT_TFTP_ROOT:
        argv += ["--tftp-root", str(spec.tftp_root)]
    if spec.efi_arm64:
        argv += ["--efi-arm64", spec.efi_arm64]
    return shlex.join([*argv, "--server-url", spec.server_url])


def _common_head(spec: DnsmasqSpec) -> list[str]:
    return [
        f"# dnsmasq configuration for pyinit network boot ({spec.mode} mode).",
        f"# Generated by: {command_line(spec)}",
        "# Needs dnsmasq 2.76 or later (Debian 12: 2.89/2.90). Check it with",
        "#   dnsmasq --test --conf-file=THIS_FILE",
        "# Chain: NIC ROM -> DHCP -> TFTP iPXE -> iPXE DHCP (option 175) -> "
        f"{spec.boot_url} -> /MAC.ipxe -> kernel + initramfs -> pyinit.",
        "",
        "# No DNS service: dnsmasq only does DHCP and TFTP here.",
        "port=0",
        "# Listen on this interface only, and bind to it rather than to the wildcard address,",
        "# so that another DHCP or DNS daemon on other interfaces of this host keeps working.",
        f"interface={spec.interface}",
        "bind-interfaces",
        "",
    ]


def _tags(spec: DnsmasqSpec) -> list[str]:
    lines = [
        "# Tag the second request, made by iPXE itself: it sends option 175 (its features)",
        "# and the user class \"iPXE\". Untagged clients are NIC ROMs that must first get iPXE.",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
    ]
    if spec.mode == "full":
        lines += [
            "# Client architecture (option 93, RFC 4578): 0 BIOS, 7 and 9 x86-64 UEFI"
            + (", 11 arm64 UEFI." if spec.efi_arm64 else "."),
            "dhcp-match=set:bios,option:client-arch,0",
            "dhcp-match=set:efi64,option:client-arch,7",
            "dhcp-match=set:efi64,option:client-arch,9",
        ]
        if spec.efi_arm64:
            lines.append("dhcp-match=set:efiarm64,option:client-arch,11")
    return [*lines, ""]


def _tftp(spec: DnsmasqSpec) -> list[str]:
    return [
        "# Serve the iPXE binaries over TFTP (UDP port 69) from this directory only.",
        "enable-tftp",
        f"tftp-root={spec.tftp_root}",
        "",
        "# Log every DHCP exchange with its options and tags (journalctl -u dnsmasq).",
        "log-dhcp",
    ]


def _full(spec: DnsmasqSpec) -> list[str]:
    assert spec.range is not None
    first, last = spec.range
    mask = f",{spec.subnet.netmask}" if spec.subnet is not None else ""
    lines = [
        f"# Hand out addresses {first}-{last} for {spec.lease_time}"
        + (f" (netmask of {spec.subnet})." if spec.subnet else
           " (netmask: the interface's)."),
        f"dhcp-range={first},{last}{mask},{spec.lease_time}",
    ]
    if spec.router is not None:
        lines += ["# Default gateway for the clients.",
                  f"dhcp-option=option:router,{spec.router}"]
    else:
        lines += ["# No --router: dnsmasq would offer its own address as the gateway; send none.",
                  "dhcp-option=option:router"]
    if spec.dns:
        lines += ["# DNS servers for the clients (dnsmasq itself does not answer DNS).",
                  "dhcp-option=option:dns-server," + ",".join(map(str, spec.dns))]
    else:
        lines += ["# No --dns: send no DNS servers (dnsmasq would offer itself, and port=0).",
                  "dhcp-option=option:dns-server"]
    for mac, address in spec.hosts:
        lines.append(f"dhcp-host={mac},{address}  # fixed address (--host)")
    lines += ["", *_tags(spec),
              "# Boot files. The next-server (siaddr) is this host, whose TFTP serves them.",
              f"dhcp-boot=tag:!ipxe,tag:bios,{BIOS_FILE}",
              f"dhcp-boot=tag:!ipxe,tag:efi64,{EFI64_FILE}"]
    if spec.efi_arm64:
        lines.append(f"dhcp-boot=tag:!ipxe,tag:efiarm64,{spec.efi_arm64}")
    lines += ["# iPXE (any architecture) chains to pyinit serve over HTTP.",
              f"dhcp-boot=tag:ipxe,{spec.boot_url}",
              ""]
    return lines


def _proxy(spec: DnsmasqSpec) -> list[str]:
    assert spec.subnet is not None
    csas = [("x86PC", BIOS_FILE), ("x86-64_EFI", EFI64_FILE), ("BC_EFI", EFI64_FILE)]
    if spec.efi_arm64:
        csas.append(("ARM64_EFI", spec.efi_arm64))
    lines = [
        f"# Proxy-DHCP on {spec.subnet}: the existing DHCP server hands out addresses; dnsmasq",
        "# answers only PXE clients (vendor class PXEClient) with the boot information.",
        f"dhcp-range={spec.subnet.network_address},proxy,{spec.subnet.netmask}",
        "",
        *_tags(spec),
        "# Boot the first menu entry for the client's architecture at once: no menu, no wait.",
        'pxe-prompt="pyinit network boot",0',
        "# One entry per architecture (CSA): NIC ROMs get iPXE from this host's TFTP ...",
    ]
    for csa, name in csas:
        lines.append(f'pxe-service=tag:!ipxe,{csa},"pyinit: load iPXE",{name}')
    lines.append("# ... and iPXE gets pyinit serve's chain script over HTTP.")
    for csa, _ in csas:
        lines.append(f'pxe-service=tag:ipxe,{csa},"pyinit: boot.ipxe",{spec.boot_url}')
    return [*lines, ""]


def render(spec: DnsmasqSpec) -> str:
    """The configuration file for ``spec``, commented line by line. Pure."""
    body = _full(spec) if spec.mode == "full" else _proxy(spec)
    return "\n".join([*_common_head(spec), *body, *_tftp(spec)]) + "\n"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``dnsmasq`` subcommand to ``subparsers``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dnsmasq", help="write a dnsmasq configuration for PXE/iPXE boot into pyinit serve",
        description="Write a dnsmasq configuration that network-boots machines into "
                    "pyinit serve: NIC ROMs get iPXE (undionly.kpxe for BIOS, ipxe.efi for "
                    "x86-64 UEFI) over dnsmasq's TFTP, iPXE gets SERVER_URL/boot.ipxe. "
                    "--mode full makes dnsmasq the DHCP server of the network; --mode proxy "
                    "leaves addresses to an existing DHCP server and answers PXE clients only. "
                    "See docs/pxe.md.",
        epilog="example: pyinit dnsmasq --mode full --interface eth1 --subnet 10.1.0.0/24 "
               "--range 10.1.0.100,10.1.0.200 --server-url http://10.1.0.1:8080 "
               "> /etc/dnsmasq.d/pyinit.conf")
    p.add_argument("--mode", choices=MODES, required=True,
                   help="full: dnsmasq hands out addresses; proxy: another server does")
    p.add_argument("--server-url", required=True, metavar="URL",
                   help="pyinit serve's URL as machines see it, e.g. http://10.1.0.1:8080")
    p.add_argument("--interface", required=True, metavar="IFACE",
                   help="the interface on the boot network (dnsmasq binds to it only)")
    p.add_argument("--subnet", metavar="CIDR",
                   help="the boot network, e.g. 10.1.0.0/24 (required with --mode proxy; "
                        "with --mode full it sets the netmask and checks --range)")
    p.add_argument("--range", dest="dhcp_range", metavar="FIRST,LAST",
                   help="full mode: addresses to hand out, e.g. 10.1.0.100,10.1.0.200")
    p.add_argument("--router", metavar="IP", help="full mode: default gateway to hand out")
    p.add_argument("--dns", metavar="IP[,IP...]", help="full mode: DNS servers to hand out")
    p.add_argument("--lease-time", default=DEFAULT_LEASE, metavar="TIME",
                   help="full mode: lease time, e.g. 45m, 12h, infinite (default: %(default)s)")
    p.add_argument("--host", dest="hosts", action="append", default=[], metavar="MAC,IP",
                   help="full mode: a fixed address for one machine (repeatable)")
    p.add_argument("--tftp-root", type=Path, default=DEFAULT_TFTP_ROOT, metavar="DIR",
                   help=f"directory holding {BIOS_FILE} and {EFI64_FILE} "
                        "(default: %(default)s, from Debian's ipxe package)")
    p.add_argument("--efi-arm64", metavar="FILE",
                   help="an arm64 iPXE binary in --tftp-root, to boot arm64 UEFI machines "
                        "too (Debian's ipxe package has none)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write here instead of standard output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        spec = make_spec(mode=args.mode, server_url_text=args.server_url,
                         interface=args.interface, tftp_root=args.tftp_root,
                         subnet=args.subnet, dhcp_range=args.dhcp_range, router=args.router,
                         dns=args.dns, lease_time=args.lease_time, hosts=tuple(args.hosts),
                         efi_arm64=args.efi_arm64)
    except ConfigError as exc:
        print(f"pyinit dnsmasq: {exc}", file=sys.stderr)
        return 2
    wanted = [BIOS_FILE, EFI64_FILE, *([spec.efi_arm64] if spec.efi_arm64 else [])]
    missing = [n for n in wanted if not (spec.tftp_root / n).is_file()]
    if missing:  # a warning: the file may be meant for another host
        print(f"pyinit dnsmasq: warning: {', '.join(missing)} not in {spec.tftp_root} "
              "(apt install ipxe, or point --tftp-root at them)", file=sys.stderr)
    text = render(spec)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text)
        except OSError as exc:
            print(f"pyinit dnsmasq: -o {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0
