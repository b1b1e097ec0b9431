"""A minimal stateful DHCPv6 client (RFC 8415): SOLICIT → ADVERTISE → REQUEST → REPLY for one
IA_NA address, then RENEW at T1 for as long as the runtime lives.

Written by hand because no maintained library offers one that fits: pyroute2 has a DHCPv4 client
only, and Debian's busybox-static (the one the initramfs stages) has ``udhcpc`` but not
``udhcpc6``. The client does exactly what the network step needs and nothing else: no prefix
delegation, no temporary addresses (IA_TA), no reconfigure, no authentication, and the first
usable ADVERTISE wins (no one-second collection of competing servers).

The wire format (:func:`encode`, :func:`decode`, the option builders and :func:`parse_reply`) is
pure and table-tested against hand-checked bytes. :class:`Dhcp6Client` owns the UDP socket
(port 546, bound to the interface with ``SO_BINDTODEVICE``) and sends to
``All_DHCP_Relay_Agents_and_Servers`` (``ff02::1:2``, port 547) through that interface.
The identity is a DUID-LL (type 3) from the NIC's MAC, so the same machine always presents the
same client identifier, and the IAID is the MAC's last four bytes.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyinit.errors import NetworkError
from pyinit.log import get_logger

log = get_logger("pyinit.dhcp6")

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = "ff02::1:2"

# Message types (RFC 8415 §7.3)
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY = 1, 2, 3, 4, 5, 6, 7
# Options (RFC 8415 §21, RFC 3646)
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 5, 6
OPT_ELAPSED_TIME, OPT_STATUS_CODE = 8, 13
OPT_DNS_SERVERS, OPT_DOMAIN_LIST = 23, 24
# Status codes (§21.13)
STATUS_SUCCESS, STATUS_NOADDRSAVAIL = 0, 2
STATUS_NAMES = {0: "Success", 1: "UnspecFail", 2: "NoAddrsAvail", 3: "NoBinding",
                4: "NotOnLink", 5: "UseMulticast", 6: "NoPrefixAvail"}
INFINITY = 0xFFFFFFFF

MESSAGE_NAMES = {SOLICIT: "SOLICIT", ADVERTISE: "ADVERTISE", REQUEST: "REQUEST",
                 CONFIRM: "CONFIRM", RENEW: "RENEW", REBIND: "REBIND", REPLY: "REPLY"}


class Dhcp6Error(ValueError):
    """A packet that is not a well-formed DHCPv6 message (dropped, never fatal)."""


# ---------------------------------------------------------------------------------------------
# Wire format (pure)


def option(code: int, data: bytes = b"") -> bytes:
    """One option: code (16 bit), length (16 bit), data."""
    return struct.pack("!HH", code, len(data)) + data


def duid_ll(mac: str) -> bytes:
    """DUID-LL (§11.4): type 3, hardware type 1 (Ethernet), the MAC."""
    return struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", "").replace("-", ""))


def iaid_for(mac: str) -> int:
    """The IAID: the MAC's last four bytes, stable across boots (§12.1)."""
    return int.from_bytes(bytes.fromhex(mac.replace(":", ""))[-4:], "big")


def ia_na(iaid: int, t1: int = 0, t2: int = 0, addresses: Iterable[tuple[str, int, int]] = ()
          ) -> bytes:
    """An IA_NA option; ``addresses`` are (address, preferred, valid) IAADDR sub-options."""
    sub = b"".join(option(OPT_IAADDR, ipaddress.IPv6Address(a).packed
                          + struct.pack("!II", pref, valid))
                   for a, pref, valid in addresses)
    return option(OPT_IA_NA, struct.pack("!III", iaid, t1, t2) + sub)


def encode(msg_type: int, xid: int, options: Iterable[bytes]) -> bytes:
    """A client/server message: type (8 bit), transaction id (24 bit), options."""
    if not 0 <= xid < 1 << 24:
        raise ValueError(f"transaction id {xid:#x} is not 24 bits")
    return bytes([msg_type]) + xid.to_bytes(3, "big") + b"".join(options)


def split_options(data: bytes) -> list[tuple[int, bytes]]:
    """(code, data) for each option in ``data``; :class:`Dhcp6Error` on a truncated one."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 4 > len(data):
            raise Dhcp6Error(f"truncated option header at byte {i}")
        code, length = struct.unpack_from("!HH", data, i)
        if i + 4 + length > len(data):
            raise Dhcp6Error(f"option {code} claims {length} bytes, {len(data) - i - 4} left")
        out.append((code, data[i + 4:i + 4 + length]))
        i += 4 + length
    return out


def decode(packet: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(message type, transaction id, options) of a client/server message."""
    if len(packet) < 4:
        raise Dhcp6Error(f"{len(packet)} bytes is too short for a DHCPv6 message")
    return packet[0], int.from_bytes(packet[1:4], "big"), split_options(packet[4:])


@dataclass(frozen=True)
class Lease6:
    """What the client got: one address from an IA_NA, and what it needs to renew it."""

    address: str
    preferred: int  # seconds; INFINITY = forever
    valid: int
    t1: int
    t2: int
    server_id: bytes
    dns: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    server: str | None = None  # the link-local address the answer came from


def _status(data: bytes) -> tuple[int, str]:
    if len(data) < 2:
        raise Dhcp6Error("status code option shorter than 2 bytes")
    return struct.unpack_from("!H", data)[0], data[2:].decode("utf-8", "replace")


def _domains(data: bytes) -> tuple[str, ...]:
    """RFC 1035 names, uncompressed, one after another (§10 of RFC 8415)."""
    names: list[str] = []
    labels: list[str] = []
    i = 0
    while i < len(data):
        n = data[i]
        if n == 0:
            if labels:
                names.append(".".join(labels))
            labels = []
            i += 1
            continue
        if i + 1 + n > len(data):
            raise Dhcp6Error("truncated domain name")
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return tuple(names)


def parse_reply(packet: bytes, *, xid: int, client_id: bytes, iaid: int,
                expect: int) -> Lease6:
    """The lease in an ADVERTISE or REPLY (``expect``) for our transaction, client id and IAID.

    :class:`Dhcp6Error` for anything else, with the reason (another transaction, a status code
    that is not Success in the message or the IA, no address)."""
    msg_type, got_xid, opts = decode(packet)
    if msg_type != expect:
        raise Dhcp6Error(f"{MESSAGE_NAMES.get(msg_type, msg_type)}, not "
                         f"{MESSAGE_NAMES.get(expect, expect)}")
    if got_xid != xid:
        raise Dhcp6Error(f"transaction {got_xid:#08x}, not ours ({xid:#08x})")
    by_code: dict[int, list[bytes]] = {}
    for code, data in opts:
        by_code.setdefault(code, []).append(data)
    if by_code.get(OPT_CLIENTID, [b""])[0] != client_id:
        raise Dhcp6Error("client identifier is not ours")
    server_id = by_code.get(OPT_SERVERID, [b""])[0]
    if not server_id:
        raise Dhcp6Error("no server identifier")
    if OPT_STATUS_CODE in by_code:
        code, text = _status(by_code[OPT_STATUS_CODE][0])
        if code != STATUS_SUCCESS:
            raise Dhcp6Error(f"status {STATUS_NAMES.get(code, code)}: {text}".rstrip(": "))
    lease: Lease6 | None = None
    for data in by_code.get(OPT_IA_NA, []):
        if len(data) < 12:
            raise Dhcp6Error("IA_NA shorter than 12 bytes")
        got_iaid, t1, t2 = struct.unpack_from("!III", data)
        if got_iaid != iaid:
            continue
        for code, sub in split_options(data[12:]):
            if code == OPT_STATUS_CODE:
                status, text = _status(sub)
                if status != STATUS_SUCCESS:
                    raise Dhcp6Error(f"IA_NA status {STATUS_NAMES.get(status, status)}: "
                                     f"{text}".rstrip(": "))
            elif code == OPT_IAADDR and lease is None:
                if len(sub) < 24:
                    raise Dhcp6Error("IAADDR shorter than 24 bytes")
                pref, valid = struct.unpack_from("!II", sub, 16)
                if valid == 0 or pref > valid:  # §21.6: discard
                    continue
                lease = Lease6(address=str(ipaddress.IPv6Address(sub[:16])), preferred=pref,
                               valid=valid, t1=t1, t2=t2, server_id=server_id)
    if lease is None:
        raise Dhcp6Error("no address in an IA_NA for our IAID")
    dns: list[str] = []
    for data in by_code.get(OPT_DNS_SERVERS, []):
        dns += [str(ipaddress.IPv6Address(data[i:i + 16])) for i in range(0, len(data) - 15, 16)]
    domains: tuple[str, ...] = ()
    for data in by_code.get(OPT_DOMAIN_LIST, []):
        domains += _domains(data)
    return Lease6(**{**lease.__dict__, "dns": tuple(dns), "domains": domains})


def renew_times(lease: Lease6) -> tuple[float, float]:
    """(T1, T2) in seconds; when the server leaves them 0, 0.5 and 0.8 of the preferred
    lifetime (§21.4). ``inf`` for an infinite lease. Pure."""
    base = lease.preferred if lease.preferred != INFINITY else None
    t1 = lease.t1 or (base * 0.5 if base else 0)
    t2 = lease.t2 or (base * 0.8 if base else 0)
    return (float("inf") if t1 in (0, INFINITY) else float(t1),
            float("inf") if t2 in (0, INFINITY) else float(t2))


# ---------------------------------------------------------------------------------------------
# The client (socket)


SOL_TIMEOUT, SOL_MAX_RT = 1.0, 30.0  # §7.6
REQ_TIMEOUT, REQ_MAX_RC = 1.0, 10
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

ApplyLease = Callable[[str, Lease6], None]  # ("bound" | "renewed", lease)


class Dhcp6Client:
    """One stateful DHCPv6 exchange on ``interface`` (:meth:`acquire`), and a renewal thread
    (:meth:`start_renewing`) that sends RENEW at T1 and calls ``apply("renewed", lease)``."""

    def __init__(self, interface: str, mac: str, *, ifindex: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interface = interface
        self.mac = mac
        self.ifindex = ifindex if ifindex is not None else socket.if_nametoindex(interface)
        self.client_id = duid_ll(mac)
        self.iaid = iaid_for(mac)
        self.clock = clock
        self.lease: Lease6 | None = None
        self.state = "INIT"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.interface.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        sock.bind(("::", CLIENT_PORT))
        return sock

    def _exchange(self, sock: socket.socket, msg_type: int, extra: list[bytes], expect: int,
                  deadline: float, *, max_rt: float = SOL_MAX_RT, max_rc: int = 0) -> Lease6:
        """Send, retransmit with doubling timeouts (§15), return the first good answer."""
        xid = int.from_bytes(os.urandom(3), "big")
        start = self.clock()
        rt = SOL_TIMEOUT if msg_type == SOLICIT else REQ_TIMEOUT
        sent = 0
        last = "no answer"
        while True:
            elapsed = min(0xFFFF, int((self.clock() - start) * 100))  # hundredths
            packet = encode(msg_type, xid, [option(OPT_CLIENTID, self.client_id),
                                            option(OPT_ELAPSED_TIME,
                                                   struct.pack("!H", elapsed)),
                                            option(OPT_ORO, struct.pack("!HH", OPT_DNS_SERVERS,
                                                                        OPT_DOMAIN_LIST)),
                                            *extra])
            sock.sendto(packet, (ALL_SERVERS, SERVER_PORT, 0, self.ifindex))
            sent += 1
            wait_until = min(deadline, self.clock() + rt)
            while (left := wait_until - self.clock()) > 0:
                if self._stop.is_set():
                    raise NetworkError("DHCPv6 client stopped", interface=self.interface)
                ready, _, _ = select.select([sock], [], [], min(left, 0.2))
                if not ready:
                    continue
                data, peer = sock.recvfrom(4096)
                try:
                    lease = parse_reply(data, xid=xid, client_id=self.client_id,
                                        iaid=self.iaid, expect=expect)
                except Dhcp6Error as exc:
                    last = str(exc)
                    log.debug(f"dhcp6: {self.interface}: dropped a packet from {peer[0]}: {exc}")
                    continue
                return Lease6(**{**lease.__dict__, "server": str(peer[0]).split("%")[0]})
            if self.clock() >= deadline or (max_rc and sent >= max_rc):
                raise NetworkError(f"DHCPv6 {MESSAGE_NAMES[msg_type]} got no usable "
                                   f"{MESSAGE_NAMES[expect]} after {sent} tries ({last})",
                                   interface=self.interface)
            rt = min(rt * 2, max_rt)

    def acquire(self, timeout: float) -> Lease6:
        """SOLICIT/ADVERTISE/REQUEST/REPLY within ``timeout`` s; the leased address."""
        deadline = self.clock() + timeout
        with self._socket() as sock:
            self.state = "SOLICITING"
            offer = self._exchange(sock, SOLICIT, [ia_na(self.iaid)], ADVERTISE, deadline)
            log.info(f"dhcp6: {self.interface}: ADVERTISE {offer.address} from "
                     f"{offer.server or '?'}")
            self.state = "REQUESTING"
            lease = self._exchange(
                sock, REQUEST,
                [option(OPT_SERVERID, offer.server_id),
                 ia_na(self.iaid, addresses=[(offer.address, 0, 0)])],
                REPLY, deadline, max_rc=REQ_MAX_RC)
        self.state = "BOUND"
        self.lease = lease
        return lease

    def renew(self, timeout: float) -> Lease6:
        """One RENEW/REPLY for the current lease."""
        assert self.lease is not None
        old = self.lease
        with self._socket() as sock:
            self.state = "RENEWING"
            lease = self._exchange(
                sock, RENEW,
                [option(OPT_SERVERID, old.server_id),
                 ia_na(self.iaid, addresses=[(old.address, old.preferred, old.valid)])],
                REPLY, self.clock() + timeout, max_rt=600)
        self.state = "BOUND"
        self.lease = lease
        return lease

    def start_renewing(self, apply: ApplyLease) -> None:
        """A daemon thread: RENEW at T1 (retried until the valid lifetime runs out)."""
        def loop() -> None:
            while self.lease is not None:
                t1, _t2 = renew_times(self.lease)
                if self._stop.wait(min(t1, 86400.0)):
                    return
                if t1 == float("inf"):
                    continue
                try:
                    apply("renewed", self.renew(timeout=max(10.0, t1 / 2)))
                except Exception as exc:  # the address stays until its valid lifetime ends
                    log.warning(f"dhcp6: {self.interface}: renewal failed: {exc}")
                    if self._stop.wait(10):
                        return

        self._thread = threading.Thread(target=loop, name=f"dhcp6-{self.interface}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
