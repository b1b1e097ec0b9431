"""LLDP: which switch, port and VLAN each NIC is cabled to, heard without slowing the boot.

A switch sends an LLDP frame (ethertype 0x88cc, to 01:80:c2:00:00:0e) on every port every 30 s
by default. :class:`Listener` opens one ``AF_PACKET`` socket per NIC, bound to that ethertype
on that interface, in one daemon thread started once the network is up; the first valid frame
of a NIC is enough (its neighbour becomes one ``lldp neighbour`` event), and the thread ends
when every NIC was heard, after ``timeout`` seconds, or when :meth:`Listener.stop` is called
before the hand-off. NICs that are down (the DHCP race puts the losers back down) are brought
up for the window and put down again afterwards, as ironic-python-agent does.

:func:`parse_frame` is a pure TLV parser (IEEE 802.1AB-2016, clause 8, and the IEEE 802.1
organizationally specific TLVs of Annex D). A frame that does not parse raises
:class:`LldpError`, which the listener turns into one warning line, rate-limited per NIC, and
goes on listening. Written by hand because no maintained library parses LLDPDUs for us
(scapy's contrib layer is a dependency of several megabytes for ~150 lines).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinit import log
from pyinit.errors import PyinitError

logger = log.get_logger("pyinit.lldp")

ETH_P_LLDP = 0x88CC
ETH_P_8021Q = 0x8100
LLDP_MULTICAST = bytes.fromhex("0180c200000e")  # nearest bridge
MAX_LLDPDU = 1500  # an LLDPDU fills at most one untagged Ethernet payload
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
PACKET_OUTGOING = 4

# TLV types (802.1AB clause 8.4)
END, CHASSIS_ID, PORT_ID, TTL, PORT_DESCRIPTION, SYSTEM_NAME, SYSTEM_DESCRIPTION = range(7)
SYSTEM_CAPABILITIES, MANAGEMENT_ADDRESS, ORG_SPECIFIC = 7, 8, 127
TLV_NAMES = {CHASSIS_ID: "Chassis ID", PORT_ID: "Port ID", TTL: "TTL",
             PORT_DESCRIPTION: "Port Description", SYSTEM_NAME: "System Name",
             SYSTEM_DESCRIPTION: "System Description", MANAGEMENT_ADDRESS: "Management Address"}
MANDATORY = (CHASSIS_ID, PORT_ID, TTL)

CHASSIS_SUBTYPES = {1: "chassis component", 2: "interface alias", 3: "port component",
                    4: "mac", 5: "network address", 6: "interface name", 7: "local"}
PORT_SUBTYPES = {1: "interface alias", 2: "port component", 3: "mac", 4: "network address",
                 5: "interface name", 6: "agent circuit id", 7: "local"}
_TEXT_SUBTYPES = {"chassis component", "interface alias", "port component", "interface name",
                  "local"}

OUI_IEEE_8021 = bytes.fromhex("0080c2")
DOT1_PORT_VLAN_ID, DOT1_VLAN_NAME = 1, 3
IANA_IPV4, IANA_IPV6, IANA_ALL802 = 1, 2, 6


class LldpError(PyinitError):
    """A frame that is not a valid LLDPDU; ``str()`` says why in one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Neighbour:
    """What one LLDPDU says about the other end of the cable."""

    chassis_id: str
    chassis_id_subtype: str
    port_id: str
    port_id_subtype: str
    ttl: int  # seconds; 0: the neighbour is shutting LLDP down on this port
    port_description: str | None = None
    system_name: str | None = None
    system_description: str | None = None
    management_addresses: tuple[str, ...] = ()
    port_vlan: int | None = None  # IEEE 802.1 Port VLAN ID (PVID); None when not sent or 0
    vlans: tuple[tuple[int, str], ...] = ()  # IEEE 802.1 VLAN Name TLVs: (VID, name)
    source_mac: str = ""  # the Ethernet source of the frame (the switch port's MAC)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["management_addresses"] = list(self.management_addresses)
        out["vlans"] = [{"id": vid, "name": name} for vid, name in self.vlans]
        return out

    def describe(self) -> str:
        """``switch01 port swp1 (uplink to rack 1), vlan 100``: the console line."""
        who = self.system_name or f"chassis {self.chassis_id}"
        port = f"port {self.port_id}"
        if self.port_description and self.port_description != self.port_id:
            port += f" ({self.port_description})"
        vlan = f", vlan {self.port_vlan}" if self.port_vlan is not None else ""
        return f"{who} {port}{vlan}"


# ---- parsing (pure) ----------------------------------------------------------------------


def _mac(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _text(data: bytes) -> str:
    """A TLV's string: UTF-8 (802.1AB allows any octets: undecodable ones are replaced), NUL
    padding dropped, control characters escaped as ``\\xNN`` so that no switch can write
    escape sequences onto a console or a terminal."""
    text = data.rstrip(b"\0").decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _address(family: int, data: bytes) -> str:
    """An IANA address family number and its bytes, as text (hex when unknown)."""
    if family == IANA_IPV4 and len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    if family == IANA_IPV6 and len(data) == 16:
        return str(ipaddress.IPv6Address(data))
    if family == IANA_ALL802 and len(data) == 6:
        return _mac(data)
    return data.hex()


def _identifier(value: bytes, subtypes: dict[int, str], what: str) -> tuple[str, str]:
    """Chassis ID / Port ID TLV value -> (text, subtype name)."""
    if len(value) < 2:
        raise LldpError(f"{what} TLV too short ({len(value)} bytes, needs a subtype and an id)")
    kind = subtypes.get(value[0], f"reserved {value[0]}")
    data = value[1:]
    if kind == "mac":
        return (_mac(data) if len(data) == 6 else data.hex()), kind
    if kind == "network address":
        return _address(data[0], data[1:]), kind
    if kind in _TEXT_SUBTYPES:
        return _text(data), kind
    return data.hex(), kind  # agent circuit id, reserved subtypes: opaque bytes


def _management_address(value: bytes) -> str:
    # address string length (subtype + address), subtype, address, interface numbering
    # subtype (1), interface number (4), OID string length (1), OID
    if len(value) < 9:
        raise LldpError(f"Management Address TLV too short ({len(value)} bytes)")
    length = value[0]
    if length < 2 or length > 32 or 1 + length + 6 > len(value):
        raise LldpError(f"Management Address TLV: address length {length} does not fit "
                        f"its {len(value)} bytes")
    return _address(value[1], value[2:1 + length])


def iter_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, value) pairs of an LLDPDU up to its End TLV (or its end). Pure;
    :class:`LldpError` for a truncated header or a length that runs past the end."""
    tlvs: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise LldpError(f"truncated TLV header at byte {pos} of {len(data)}")
        head = int.from_bytes(data[pos:pos + 2], "big")
        kind, length = head >> 9, head & 0x1FF
        if pos + 2 + length > len(data):
            raise LldpError(f"TLV type {kind} at byte {pos}: length {length} runs past the "
                            f"end of the LLDPDU ({len(data)} bytes)")
        if kind == END:
            break
        tlvs.append((kind, data[pos + 2:pos + 2 + length]))
        pos += 2 + length
    return tlvs


def parse_lldpdu(data: bytes, *, source_mac: str = "") -> Neighbour:
    """An LLDPDU (the Ethernet payload) -> :class:`Neighbour`. Pure. Unknown TLV types and
    organizations are skipped; a structural error, a malformed known TLV, a missing or
    repeated mandatory TLV (Chassis ID, Port ID, TTL) or more than 1500 bytes raise
    :class:`LldpError`."""
    if len(data) > MAX_LLDPDU:
        raise LldpError(f"oversized LLDPDU: {len(data)} bytes (at most {MAX_LLDPDU})")
    fields: dict[str, Any] = {}
    seen: dict[int, int] = {}
    mgmt: list[str] = []
    vlans: list[tuple[int, str]] = []
    for kind, value in iter_tlvs(data):
        seen[kind] = seen.get(kind, 0) + 1
        if kind in MANDATORY and seen[kind] > 1:
            raise LldpError(f"more than one {TLV_NAMES[kind]} TLV")
        if kind == CHASSIS_ID:
            fields["chassis_id"], fields["chassis_id_subtype"] = _identifier(
                value, CHASSIS_SUBTYPES, "Chassis ID")
        elif kind == PORT_ID:
            fields["port_id"], fields["port_id_subtype"] = _identifier(
                value, PORT_SUBTYPES, "Port ID")
        elif kind == TTL:
            if len(value) != 2:
                raise LldpError(f"TTL TLV of {len(value)} bytes (must be 2)")
            fields["ttl"] = int.from_bytes(value, "big")
        elif kind in (PORT_DESCRIPTION, SYSTEM_NAME, SYSTEM_DESCRIPTION):
            key = {PORT_DESCRIPTION: "port_description", SYSTEM_NAME: "system_name",
                   SYSTEM_DESCRIPTION: "system_description"}[kind]
            fields[key] = _text(value) or None
        elif kind == MANAGEMENT_ADDRESS:
            mgmt.append(_management_address(value))
        elif kind == ORG_SPECIFIC:
            if len(value) < 4:
                raise LldpError(f"organizationally specific TLV too short ({len(value)} bytes)")
            if value[:3] == OUI_IEEE_8021:
                _dot1(value[3], value[4:], fields, vlans)
    missing = [TLV_NAMES[k] for k in MANDATORY if k not in seen]
    if missing:
        raise LldpError(f"missing mandatory TLV: {', '.join(missing)}")
    return Neighbour(**fields, management_addresses=tuple(mgmt), vlans=tuple(vlans),
                     source_mac=source_mac)


def _dot1(subtype: int, info: bytes, fields: dict[str, Any],
          vlans: list[tuple[int, str]]) -> None:
    if subtype == DOT1_PORT_VLAN_ID:
        if len(info) != 2:
            raise LldpError(f"Port VLAN ID TLV of {len(info)} bytes (must be 2)")
        pvid = int.from_bytes(info, "big")
        fields["port_vlan"] = pvid or None  # 0: the port does not know or support VLANs
    elif subtype == DOT1_VLAN_NAME:
        if len(info) < 3 or 3 + info[2] > len(info):
            raise LldpError("VLAN Name TLV: name length runs past the TLV")
        vlans.append((int.from_bytes(info[:2], "big") & 0xFFF, _text(info[3:3 + info[2]])))


def parse_frame(frame: bytes) -> Neighbour:
    """A whole Ethernet frame (as an AF_PACKET socket reads it) -> :class:`Neighbour`. Pure.
    One 802.1Q tag is skipped; any other ethertype than 0x88cc is an :class:`LldpError`."""
    if len(frame) < 14:
        raise LldpError(f"truncated Ethernet header ({len(frame)} bytes)")
    ethertype, offset = int.from_bytes(frame[12:14], "big"), 14
    if ethertype == ETH_P_8021Q and len(frame) >= 18:
        ethertype, offset = int.from_bytes(frame[16:18], "big"), 18
    if ethertype != ETH_P_LLDP:
        raise LldpError(f"not an LLDP frame (ethertype 0x{ethertype:04x})")
    return parse_lldpdu(frame[offset:], source_mac=_mac(frame[6:12]))


# ---- the listener --------------------------------------------------------------------------


def open_socket(ifname: str) -> socket.socket:
    """An AF_PACKET socket that receives the LLDP frames of ``ifname`` only, with the LLDP
    multicast address added to the NIC's filter (no promiscuous mode needed)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_LLDP))
    try:
        sock.bind((ifname, ETH_P_LLDP))
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_MULTICAST,
                           len(LLDP_MULTICAST), LLDP_MULTICAST)
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    except BaseException:
        sock.close()
        raise
    return sock


def set_link(ifname: str, up: bool) -> None:
    """Bring ``ifname`` up or down (netlink, pyroute2)."""
    from pyinit.netlink import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if index:
            ipr.link("set", index=index[0], state="up" if up else "down")


def emit_event(interface: str, neighbour: Neighbour) -> None:
    """The default ``emit``: one console line and one ``lldp neighbour`` event."""
    logger.info(f"lldp: {interface}: {neighbour.describe()}")
    log.event("lldp", "neighbour", interface=interface, **neighbour.as_dict())


@dataclass
class _Warnings:
    """At most one warning per NIC every ``every`` seconds; the rest are counted."""

    every: float
    clock: Callable[[], float]
    last: dict[str, float] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)

    def __call__(self, key: str, line: str) -> None:
        now = self.clock()
        if key in self.last and now - self.last[key] < self.every:
            self.held[key] = self.held.get(key, 0) + 1
            return
        more = self.held.pop(key, 0)
        self.last[key] = now
        logger.warning(line + (f" ({more} more since the last warning)" if more else ""))


class Listener:
    """Listen for LLDP on ``interfaces`` in one daemon thread (see the module docstring).

    ``down``: the interfaces to bring up for the window and down again afterwards.
    ``emit(interface, neighbour)`` is called once per NIC, from the thread. ``opener`` and
    ``set_link`` default to this module's :func:`open_socket` and :func:`set_link`, looked
    up when the thread starts."""

    def __init__(self, interfaces: Sequence[str], *, down: Iterable[str] = (),
                 timeout: float = 60.0, emit: Callable[[str, Neighbour], None] | None = None,
                 opener: Callable[[str], socket.socket] | None = None,
                 link: Callable[[str, bool], None] | None = None, warn_every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interfaces = list(dict.fromkeys(interfaces))
        self.down = [name for name in down if name in self.interfaces]
        self.timeout = timeout
        self.emit = emit or emit_event
        self.opener = opener
        self.link = link
        self.clock = clock
        self.heard: dict[str, Neighbour] = {}
        self.malformed: dict[str, int] = {}
        self._warn = _Warnings(warn_every, clock)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # stop() wakes the select() at once
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._thread = threading.Thread(target=self._main, name="lldp", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the window now (before the hand-off); waits up to ``timeout`` seconds."""
        self._stop.set()
        with self._pipe_lock:  # never write to a closed descriptor: its number may be reused
            if self._pipe_open:
                os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        t0 = self.clock()
        raised: list[str] = []
        socks: dict[str, socket.socket] = {}
        try:
            opener = self.opener or open_socket
            link = self.link or set_link
            for name in self.interfaces:
                try:
                    if name in self.down:
                        link(name, True)
                        raised.append(name)
                    socks[name] = opener(name)
                except Exception as exc:  # this NIC only: the others are still heard
                    logger.warning(f"lldp: {name}: cannot listen: {_why(exc)}")
            self._listen(socks, deadline=t0 + self.timeout)
        except Exception as exc:  # a bug: the boot must not notice
            logger.warning(f"lldp: listener stopped: {type(exc).__name__}: {exc}")
        finally:
            for sock in socks.values():
                sock.close()
            for name in raised:
                with contextlib.suppress(Exception):
                    (self.link or set_link)(name, False)
            with self._pipe_lock:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)
            self._report(socks, self.clock() - t0)

    def _listen(self, socks: dict[str, socket.socket], *, deadline: float) -> None:
        open_ = dict(socks)
        while open_ and not self._stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            fds = {sock.fileno(): name for name, sock in open_.items()}
            ready, _, _ = select.select([self._wake_r, *fds], [], [], left)
            for fd in ready:
                name = fds.get(fd, "")
                if name and self._receive(name, open_[name]):
                    del open_[name]

    def _receive(self, name: str, sock: socket.socket) -> bool:
        """Read one frame; True when this NIC is done (heard, or its socket failed)."""
        try:
            frame, addr = sock.recvfrom(65536)
        except OSError as exc:
            logger.warning(f"lldp: {name}: stopped listening: {_why(exc)}")
            return True
        if isinstance(addr, tuple) and len(addr) > 2 and addr[2] == PACKET_OUTGOING:
            return False  # a frame this host sent (another agent on the machine)
        try:
            neighbour = parse_frame(frame)
        except LldpError as exc:
            self.malformed[name] = self.malformed.get(name, 0) + 1
            source = _mac(frame[6:12]) if len(frame) >= 12 else "?"
            self._warn(name, f"lldp: {name}: ignored a malformed LLDP frame from {source}: "
                             f"{exc}")
            return False
        if neighbour.ttl == 0:  # a shutdown LLDPDU: that neighbour is leaving, keep listening
            return False
        self.heard[name] = neighbour
        self.emit(name, neighbour)
        return True

    def _report(self, socks: dict[str, socket.socket], seconds: float) -> None:
        silent = [n for n in socks if n not in self.heard]
        if silent:
            logger.info(f"lldp: nothing heard on {', '.join(silent)} within {seconds:.0f} s")
        log.event("lldp", "done", listened=list(socks), heard=list(self.heard), silent=silent,
                  malformed=sum(self.malformed.values()), seconds=round(seconds, 1))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
