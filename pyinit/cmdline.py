"""Kernel command line → frozen :class:`BootParams`. Pure: no I/O.

Tokenising follows the kernel's own rules (``lib/cmdline.c``, ``next_arg``): whitespace
separates arguments except inside double quotes, quotes are removed, ``key="a b"`` and ``"key=a
b"`` both give ``a b``, and a value may itself contain ``=`` (``root=UUID=…``). Everything after
a lone ``--`` is for init, not for us. Unknown keys and junk tokens are ignored (as ginit does);
a *known* key with a bad value is a :class:`ConfigError` naming it.

The kernel hands unknown ``KEY=value`` arguments to init's environment, so
``MYURL``/``BOOTYURL`` are also taken from ``env`` when the command line does not carry them.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pyinit import inline, keyring, macaddr
from pyinit.errors import ConfigError

FailurePolicy = Literal["shell", "reboot", "poweroff"]
FAILURE_POLICIES: tuple[FailurePolicy, ...] = ("shell", "reboot", "poweroff")
DEFAULT_POLICY: FailurePolicy = "shell"

_TOKEN_RE = re.compile(r"^[\x21\x23-\x7e]{1,256}$")
_TOKEN_ARG_RE = re.compile(r'(pyinit\.token=)(?:"[^"]*"|[^\s"])*')


@dataclass(frozen=True)
class IpConfig:
    """What ``ip=`` asked for. ``mode`` is ``dhcp``, ``static`` or ``off``."""

    mode: Literal["dhcp", "static", "off"] = "dhcp"
    device: str | None = None
    address: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    hostname: str | None = None
    dns: tuple[str, ...] = ()
    ipv6: Literal["auto6", "dhcp6"] | None = None  # dracut's ip=auto6 / ip=dhcp6 (mode dhcp)


@dataclass(frozen=True)
class VlanConfig:
    """``vlan=<name>:<parent>`` (dracut): an 802.1Q link ``name`` with VLAN id ``vid`` on
    ``parent``."""

    name: str
    vid: int
    parent: str


BOND_MODES = {"active-backup": "active-backup", "1": "active-backup"}
BOND_OPTIONS = ("mode", "miimon", "updelay", "downdelay")


@dataclass(frozen=True)
class BondConfig:
    """``bond=<name>[:<slaves>[:<options>[:<mtu>]]]`` (dracut); only active-backup."""

    name: str = "bond0"
    slaves: tuple[str, ...] = ("eth0", "eth1")
    mode: str = "active-backup"
    miimon: int = 100
    updelay: int = 0
    downdelay: int = 0
    mtu: int | None = None


@dataclass(frozen=True)
class BootParams:
    myurl: str | None = None
    bootyurl: str | None = None
    root: str | None = None
    rootfstype: str | None = None
    entrypoint: tuple[str, ...] = ()
    bootif: str | None = None  # MAC, lower-case, colon separated
    ip: IpConfig | None = None  # None: no ip= given (DHCP when provisioning, else no network)
    consoles: tuple[str, ...] = ()
    on_failure: FailurePolicy = DEFAULT_POLICY
    break_before: frozenset[str] = frozenset()
    debug: bool = False
    exec_entrypoint: bool = False
    modules: Literal["auto", "all"] = "auto"
    carrier_timeout: float = 15.0
    dhcp_timeout: float = 45.0
    fetch_timeout: float = 120.0
    disk_timeout: float = 10.0
    lldp_seconds: float = 60.0
    init_args: tuple[str, ...] = ()
    # the bearer token for the server's write endpoints; kept out of repr, never logged
    token: str | None = field(default=None, repr=False)
    # pyinit.ca=: the CA to verify an https:// server against: a PEM file inside the
    # initramfs (ca_path), or the certificate(s) given inline, as PEM text (ca_pem)
    ca_path: str | None = None
    ca_pem: str | None = field(default=None, repr=False)
    # pyinit.keyring=: the OpenPGP keyring images must be signed by (docs/security.md "The
    # signature chain"): a file in the initramfs (keyring_path), or given inline (the checked
    # binary keyring: keyring_inline)
    keyring_path: str | None = None
    keyring_inline: bytes | None = field(default=None, repr=False)
    vlans: tuple[VlanConfig, ...] = ()  # vlan= (may repeat)
    bonds: tuple[BondConfig, ...] = ()  # bond= (may repeat)

    @property
    def ipv6(self) -> Literal["auto6", "dhcp6"] | None:
        """How to get IPv6 instead of DHCPv4: ``ip=auto6|dhcp6``, else ``auto6`` (SLAAC, then
        DHCPv6 if the RA says managed) when the server URL's host is an IPv6 literal and no
        static ``ip=`` is given; None for IPv4."""
        if self.ip is not None and self.ip.mode != "dhcp":
            return None
        if self.ip is not None and self.ip.ipv6:
            return self.ip.ipv6
        url = self.myurl or self.bootyurl
        return "auto6" if url and url_ipv6_host(url) else None

    @property
    def mode(self) -> Literal["provision", "ginit", "none"]:
        if self.myurl or self.bootyurl:
            return "provision"
        if self.root and self.entrypoint:
            return "ginit"
        return "none"


def tokenize(text: str) -> list[str]:
    """Split a command line like the kernel does: quotes group, and are then removed."""
    tokens: list[str] = []
    cur: list[str] = []
    in_quote = False
    started = False
    for ch in text:
        if ch == '"':
            in_quote = not in_quote
            started = True
            continue
        if ch.isspace() and not in_quote:
            if started:
                tokens.append("".join(cur))
                cur, started = [], False
            continue
        cur.append(ch)
        started = True
    if started:
        tokens.append("".join(cur))
    return tokens


def split_args(text: str) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(key, value-or-None) pairs for the kernel part, and the init args after ``--``."""
    pairs: list[tuple[str, str | None]] = []
    tokens = tokenize(text)
    init_args: list[str] = []
    for i, tok in enumerate(tokens):
        if tok == "--":
            init_args = tokens[i + 1:]
            break
        key, sep, value = tok.partition("=")
        pairs.append((key, value if sep else None))
    return pairs, init_args


def _netmask_to_prefix(mask: str) -> int:
    if mask.isdigit() and int(mask) <= 32:
        return int(mask)
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError as exc:
        raise ConfigError("ip", f"bad netmask {mask!r}") from exc


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ConfigError("ip", f"bad {what} {value!r}") from exc


def parse_ip(value: str) -> IpConfig:
    """``ip=dhcp|on|any|off|none`` or the kernel's
    ``client:server:gw:netmask:hostname:device:autoconf:dns0:dns1`` form."""
    v = value.strip()
    if v.lower() in IPV6_AUTOCONF:
        return IpConfig(mode="dhcp", ipv6=IPV6_AUTOCONF[v.lower()])
    if v.lower() in ("dhcp", "on", "any", "both", "bootp", "rarp"):
        return IpConfig(mode="dhcp")
    if v.lower() in ("off", "none"):
        return IpConfig(mode="off")
    parts = v.split(":")
    if len(parts) < 2:
        raise ConfigError("ip", f"unrecognised value {value!r}")
    if len(parts) == 2 and parts[1].lower() in ("dhcp", "on", "any", "off", "none",
                                                *IPV6_AUTOCONF):
        # dracut's ip=<interface>:<autoconf> (ip=eth0.100:dhcp for a vlan= link)
        _ifname(parts[0], "ip", "interface")
        return IpConfig(mode="off" if parts[1].lower() in ("off", "none") else "dhcp",
                        device=parts[0], ipv6=IPV6_AUTOCONF.get(parts[1].lower()))
    parts += [""] * (9 - len(parts))
    client, _server, gw, mask, host, dev, autoconf, dns0, dns1 = parts[:9]
    device = dev or None
    if autoconf.lower() in ("dhcp", "on", "any", "both", *IPV6_AUTOCONF) and not client:
        return IpConfig(mode="dhcp", device=device, hostname=host or None,
                        ipv6=IPV6_AUTOCONF.get(autoconf.lower()))
    if autoconf.lower() in ("off", "none") and not client:
        return IpConfig(mode="off", device=device)
    if not client:
        raise ConfigError("ip", f"static form without a client address: {value!r}")
    address = _ip(client, "client address")
    prefixlen = _netmask_to_prefix(mask) if mask else 24
    gateway = _ip(gw, "gateway") if gw else None
    if gateway and gateway != "0.0.0.0":
        net = ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)
        if ipaddress.ip_address(gateway) not in net:
            raise ConfigError("ip", f"gateway {gateway} is outside {net}")
    dns = tuple(_ip(d, "dns server") for d in (dns0, dns1) if d)
    return IpConfig(mode="static", device=device, address=address, prefixlen=prefixlen,
                    gateway=gateway if gateway != "0.0.0.0" else None, hostname=host or None,
                    dns=dns)


IPV6_AUTOCONF: dict[str, Literal["auto6", "dhcp6"]] = {"auto6": "auto6", "dhcp6": "dhcp6"}


def url_ipv6_host(url: str, key: str = "MYURL") -> str | None:
    """The IPv6 literal in ``url``'s host (``http://[fd00::1]:8080`` → ``fd00::1``), else None.
    A bracketed host that is not an IPv6 address is a :class:`ConfigError`. Pure."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/@\s]*@)?\[([^\]/\s]*)\]", url.strip())
    if not m:
        return None
    literal = m.group(1)
    try:
        return str(ipaddress.IPv6Address(literal.split("%")[0]))
    except ValueError as exc:
        raise ConfigError(key, f"[{literal}] in {url!r} is not an IPv6 address") from exc


def _url(value: str, key: str) -> str:
    v = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", v):
        raise ConfigError(key, f"not an http(s) URL: {value!r}")
    return v


def _seconds(value: str, key: str) -> float:
    try:
        secs = float(value)
    except ValueError as exc:
        raise ConfigError(key, f"not a number of seconds: {value!r}") from exc
    if not 0 < secs <= 86400:
        raise ConfigError(key, f"out of range (0, 86400]: {value!r}")
    return secs


def _flag(value: str | None) -> bool:
    return value is None or value.strip().lower() in ("1", "yes", "true", "on", "y", "")


def parse_cmdline(text: str, env: Mapping[str, str] | None = None) -> BootParams:
    """Parse ``/proc/cmdline`` (and init's environment) into :class:`BootParams`."""
    pairs, init_args = split_args(text)
    kv: dict[str, str | None] = {}
    consoles: list[str] = []
    breaks: set[str] = set()
    vlans: list[VlanConfig] = []
    bonds: list[BondConfig] = []
    for key, value in pairs:
        if key == "console" and value:
            consoles.append(value)
        elif key == "pyinit.break" and value:
            breaks.update(s.strip() for s in value.split(",") if s.strip())
        elif key == "vlan":
            vlans.append(parse_vlan(value or ""))
        elif key == "bond":
            bonds.append(parse_bond(value or ""))
        else:
            kv[key] = value  # last one wins, as in the kernel
    environ = env or {}
    out: dict[str, object] = {"consoles": tuple(consoles), "break_before": frozenset(breaks),
                              "init_args": tuple(init_args), "vlans": tuple(vlans),
                              "bonds": tuple(bonds)}
    _check_links(vlans, bonds)

    for key in ("MYURL", "BOOTYURL"):
        raw = kv.get(key) or environ.get(key)
        if raw:
            out[key.lower()] = _url(raw, key)
            url_ipv6_host(raw, key)  # a bad [literal] is named here, not by the first fetch
    if kv.get("root"):
        out["root"] = kv["root"]
    if kv.get("rootfstype"):
        out["rootfstype"] = kv["rootfstype"]
    ep = kv.get("entrypoint") or environ.get("entrypoint")
    if ep:
        try:
            argv = shlex.split(ep)
        except ValueError as exc:
            raise ConfigError("entrypoint", f"cannot split {ep!r}: {exc}") from exc
        if argv:
            out["entrypoint"] = tuple(argv)
    if kv.get("BOOTIF"):
        out["bootif"] = macaddr.parse(kv["BOOTIF"] or "", field="BOOTIF", hwtype=True)
    if kv.get("ip"):
        out["ip"] = parse_ip(kv["ip"] or "")
    pol = kv.get("pyinit.on_failure")
    if pol is not None:
        if pol not in FAILURE_POLICIES:
            raise ConfigError("pyinit.on_failure",
                              f"{pol!r} is not one of {', '.join(FAILURE_POLICIES)}")
        out["on_failure"] = pol
    if "pyinit.debug" in kv:
        out["debug"] = _flag(kv["pyinit.debug"])
    mods = kv.get("pyinit.modules")
    if mods is not None:
        if mods not in ("auto", "all"):
            raise ConfigError("pyinit.modules", f"{mods!r} is not one of auto, all")
        out["modules"] = mods
    if "pyinit.exec" in kv:
        out["exec_entrypoint"] = _flag(kv["pyinit.exec"])
    if "pyinit.token" in kv:
        token = kv["pyinit.token"] or ""
        if not _TOKEN_RE.match(token):  # the message must not show the token
            raise ConfigError("pyinit.token", "must be 1 to 256 printable ASCII characters "
                                              "without spaces or quotes")
        out["token"] = token
    if "pyinit.ca" in kv:
        path, pem = parse_ca(kv["pyinit.ca"] or "")
        out["ca_path" if path else "ca_pem"] = path or pem
    if "pyinit.keyring" in kv:
        try:
            kpath, ring = keyring.parse_inline(kv["pyinit.keyring"] or "")
        except ValueError as exc:
            raise ConfigError("pyinit.keyring", str(exc)) from exc
        out["keyring_path" if kpath else "keyring_inline"] = kpath or ring
    for key, attr in (("pyinit.carrier_timeout", "carrier_timeout"),
                      ("pyinit.dhcp_timeout", "dhcp_timeout"),
                      ("pyinit.fetch_timeout", "fetch_timeout"),
                      ("pyinit.disk_timeout", "disk_timeout"),
                      ("pyinit.lldp_seconds", "lldp_seconds")):
        if kv.get(key):
            out[attr] = _seconds(kv[key] or "", key)
    return BootParams(**out)  # type: ignore[arg-type]


_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}$")  # IFNAMSIZ 16, NUL included


def _ifname(value: str, key: str, what: str) -> str:
    if not _IFNAME_RE.match(value) or value in (".", ".."):
        raise ConfigError(key, f"bad {what} {value!r} (an interface name of 1 to 15 "
                               "characters)")
    return value


def parse_vlan(value: str) -> VlanConfig:
    """dracut's ``vlan=<vlanname>:<phys>``. The VLAN id comes from the name, in any of the four
    forms dracut accepts: ``vlan0100``, ``vlan100``, ``eth0.0100``, ``eth0.100``. Pure."""
    name, sep, parent = value.strip().partition(":")
    if not sep or not name or not parent or ":" in parent:
        raise ConfigError("vlan", f"expected <vlanname>:<phys> (vlan=eth0.100:eth0), "
                                  f"got {value!r}")
    _ifname(name, "vlan", "VLAN name")
    _ifname(parent, "vlan", "parent interface")
    m = re.fullmatch(r"vlan(\d+)", name) or re.fullmatch(r".+\.(\d+)", name)
    if not m:
        raise ConfigError("vlan", f"no VLAN id in the name {name!r} (use vlan<id> or "
                                  f"<phys>.<id>)")
    vid = int(m.group(1))
    if not 1 <= vid <= 4094:
        raise ConfigError("vlan", f"VLAN id {vid} in {name!r} is outside 1..4094")
    if name == parent:
        raise ConfigError("vlan", f"{name!r} cannot be its own parent")
    return VlanConfig(name=name, vid=vid, parent=parent)


def parse_bond(value: str) -> BondConfig:
    """dracut's ``bond=<bondname>[:<bondslaves>[:<options>[:<mtu>]]]``; a bare ``bond`` is
    ``bond0`` over ``eth0,eth1``. Options are ``mode``, ``miimon``, ``updelay``, ``downdelay``;
    only ``mode=active-backup`` (or ``1``) is supported, and it is the default (dracut's default
    is balance-rr, which a switch must be configured for: failing over is what pyinit needs).
    Pure."""
    parts = value.strip().split(":") if value.strip() else []
    if len(parts) > 4:
        raise ConfigError("bond", f"expected <name>[:<slaves>[:<options>[:<mtu>]]], "
                                  f"got {value!r}")
    parts += [""] * (4 - len(parts))
    name, slaves_text, options, mtu_text = parts
    name = _ifname(name or "bond0", "bond", "bond name")
    slaves = tuple(_ifname(s.strip(), "bond", "slave") for s in slaves_text.split(",")
                   if s.strip()) or ("eth0", "eth1")
    if name in slaves or len(set(slaves)) != len(slaves):
        raise ConfigError("bond", f"slaves {','.join(slaves)} repeat a name or the bond's own")
    fields: dict[str, object] = {}
    for opt in (o.strip() for o in options.split(",") if o.strip()):
        key, sep, val = opt.partition("=")
        if not sep or key not in BOND_OPTIONS:
            raise ConfigError("bond", f"unknown option {opt!r} (known: "
                                      f"{', '.join(BOND_OPTIONS)})")
        if key == "mode":
            if val not in BOND_MODES:
                raise ConfigError("bond", f"mode {val!r} is not supported (only "
                                          "active-backup)")
            continue
        if not val.isdigit() or int(val) > 60000:
            raise ConfigError("bond", f"{key}={val!r} is not a number of milliseconds")
        fields[key] = int(val)
    mtu = None
    if mtu_text:
        if not mtu_text.isdigit() or not 68 <= int(mtu_text) <= 65535:
            raise ConfigError("bond", f"bad MTU {mtu_text!r}")
        mtu = int(mtu_text)
    return BondConfig(name=name, slaves=slaves, mtu=mtu, **fields)  # type: ignore[arg-type]


def _check_links(vlans: list[VlanConfig], bonds: list[BondConfig]) -> None:
    """Names must not clash across ``vlan=`` and ``bond=``, and a slave cannot be in two bonds."""
    seen: set[str] = set()
    for name in [v.name for v in vlans] + [b.name for b in bonds]:
        if name in seen:
            raise ConfigError("vlan" if name in {v.name for v in vlans} else "bond",
                              f"{name!r} is defined twice")
        seen.add(name)
    enslaved: set[str] = set()
    for bond in bonds:
        if enslaved & set(bond.slaves):
            raise ConfigError("bond", f"{', '.join(sorted(enslaved & set(bond.slaves)))} "
                                      "is a slave of two bonds")
        enslaved.update(bond.slaves)


def parse_ca(value: str) -> tuple[str | None, str | None]:
    """``pyinit.ca=``: ``(path, None)`` for an absolute path to a PEM file in the initramfs, or
    ``(None, pem)`` for ``base64:<base64 of a DER certificate, or of a PEM file>``. Pure.

    An inline value must decode to at least one X.509 certificate (checked in memory with
    :mod:`ssl`, whose OpenSSL will later use it): a value cut short by the 2048-byte x86 command
    line, or mangled by a boot loader, fails here with one line rather than as a TLS error.
    """
    try:
        path, raw = inline.path_or_bytes(value, example="/etc/pyinit/ca.pem",
                                         inline="base64 DER certificate")
    except ValueError as exc:
        raise ConfigError("pyinit.ca", str(exc)) from exc
    if raw is None:
        return path, None
    is_pem = raw.lstrip().startswith(b"-----BEGIN")
    try:  # cadata: str is PEM, bytes is DER
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=raw.decode("ascii") if is_pem else raw)
    except (ssl.SSLError, ValueError) as exc:
        why = getattr(exc, "reason", None) or str(exc).split(" (_ssl")[0]
        raise ConfigError("pyinit.ca", f"the {len(raw)} decoded bytes are not an X.509 "
                                       f"certificate ({why})") from exc
    return None, raw.decode("ascii") if is_pem else ssl.DER_cert_to_PEM_cert(raw)


def mask_secrets(text: str) -> str:
    """The command line with the value of ``pyinit.token=`` replaced by ``***``, for logs."""
    return _TOKEN_ARG_RE.sub(r"\1***", text)


def failure_policy(text: str) -> FailurePolicy:
    """The failure policy alone, never raising: used when the full parse itself failed."""
    try:
        pairs, _ = split_args(text)
    except Exception:
        return DEFAULT_POLICY
    policy: FailurePolicy = DEFAULT_POLICY
    for key, value in pairs:
        if key == "pyinit.on_failure" and value in FAILURE_POLICIES:
            policy = value
    return policy
