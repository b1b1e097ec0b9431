"""A tiny PXE-flavoured DHCP client for tests: one DISCOVER (or a proxy REQUEST), every answer.

Written by hand on purpose: the test must choose exactly what a NIC ROM or iPXE sends (client
architecture, vendor class ``PXEClient``, option 175, user class ``iPXE``) and see every reply,
including proxy-DHCP offers without an address, which no packaged client reports. Stdlib only.

Run inside a client namespace as ``python -m tests.integration.dhcpclient JSON``; it prints one
JSON line: the list of parsed replies. :func:`build_packet` and :func:`parse_reply` are pure.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
PXE_BOOT_MENU, PXE_BOOT_ITEM = 9, 71
ETH_P_IP = 0x0800  # option 43 sub-options (PXE spec 2.1)


@dataclass
class Reply:
    """One server answer, decoded enough for assertions."""

    msg_type: int
    xid: int
    yiaddr: str
    siaddr: str
    server_id: str
    filename: str  # option 67 if present, else the BOOTP file field
    vendor_class: str
    options: dict[int, str] = field(default_factory=dict)  # code -> hex
    menu: list[tuple[int, str]] = field(default_factory=list)  # PXE boot menu (type, text)


def _opt(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def build_packet(*, mac: str, xid: int, msg_type: int = DISCOVER, arch: int | None = 0,
                 pxe: bool = True, ipxe_175: bool = False, user_class: str | None = None,
                 ciaddr: str = "0.0.0.0", boot_item: int | None = None) -> bytes:
    """A BOOTREQUEST as a PXE ROM (``pxe=True``) or iPXE (``ipxe_175``/``user_class``) sends
    it: broadcast flag set so replies reach a client without an address. Pure."""
    hw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                       socket.inet_aton(ciaddr), bytes(4), bytes(4), bytes(4),
                       hw.ljust(16, b"\0"), b"", b"")
    opts = _opt(53, bytes([msg_type])) + _opt(57, struct.pack("!H", 1472))
    opts += _opt(55, bytes([1, 3, 6, 43, 60, 66, 67, 93, 97, 175]))
    if arch is not None:
        opts += _opt(93, struct.pack("!H", arch)) + _opt(94, bytes([1, 2, 1]))
        opts += _opt(97, b"\0" + bytes(range(16)))  # client GUID, as PXE ROMs send
    if pxe:
        opts += _opt(60, f"PXEClient:Arch:{arch or 0:05d}:UNDI:002001".encode())
    if user_class is not None:
        opts += _opt(77, user_class.encode())  # iPXE sends the bare string, not RFC 3004
    if ipxe_175:
        opts += _opt(175, _opt(0x10, b"\x01") + _opt(0x13, b"\x01"))  # HTTP, PXE extensions
    if boot_item is not None:
        opts += _opt(43, _opt(PXE_BOOT_ITEM, struct.pack("!HH", boot_item, 0)) + b"\xff")
    return head + MAGIC + opts + b"\xff"


def _options(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        size = data[i + 1]
        out[code] = out.get(code, b"") + data[i + 2:i + 2 + size]
        i += 2 + size
    return out


def _menu(vendor: bytes) -> list[tuple[int, str]]:
    raw = _options(vendor).get(PXE_BOOT_MENU, b"")
    items, i = [], 0
    while i + 3 <= len(raw):
        kind, size = struct.unpack("!HB", raw[i:i + 3])
        items.append((kind, raw[i + 3:i + 3 + size].decode(errors="replace")))
        i += 3 + size
    return items


def udp_payload(ip_packet: bytes, *, port: int) -> bytes:
    """The UDP payload of an IPv4 packet to ``port``; empty for anything else. Pure."""
    if len(ip_packet) < 28 or ip_packet[0] >> 4 != 4 or ip_packet[9] != 17:
        return b""
    ihl = (ip_packet[0] & 0x0F) * 4
    dport, length = struct.unpack("!2xHH", ip_packet[ihl:ihl + 6])
    return ip_packet[ihl + 8:ihl + length] if dport == port else b""


def parse_reply(packet: bytes) -> Reply | None:
    """A BOOTREPLY decoded; None for anything else. Pure."""
    if len(packet) < 240 or packet[0] != 2 or packet[236:240] != MAGIC:
        return None
    xid = struct.unpack("!I", packet[4:8])[0]
    opts = _options(packet[240:])
    file_field = packet[108:236].split(b"\0", 1)[0].decode(errors="replace")
    filename = opts[67].rstrip(b"\0").decode() if 67 in opts else file_field
    return Reply(
        msg_type=opts.get(53, b"\0")[0], xid=xid,
        yiaddr=socket.inet_ntoa(packet[16:20]), siaddr=socket.inet_ntoa(packet[20:24]),
        server_id=socket.inet_ntoa(opts[54]) if 54 in opts else "",
        filename=filename, vendor_class=opts.get(60, b"").decode(errors="replace"),
        options={k: v.hex() for k, v in sorted(opts.items())},
        menu=_menu(opts.get(43, b"")))


def exchange(args: dict[str, Any]) -> list[dict[str, Any]]:
    """Inside the client namespace: send one packet, collect replies for ``wait`` seconds."""
    dev = args["device"]
    subprocess.run(["ip", "link", "set", dev, "up"], check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    sock.bind(("0.0.0.0", 68))
    # Receive on a packet socket, as udhcpc does: the kernel does not hand UDP sockets the
    # broadcast replies that arrive on an interface without an IPv4 address.
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    raw.bind((dev, ETH_P_IP))
    xid = int.from_bytes(os.urandom(4), "big")
    packet = build_packet(mac=args["mac"], xid=xid, msg_type=args.get("msg_type", DISCOVER),
                          arch=args.get("arch", 0), pxe=args.get("pxe", True),
                          ipxe_175=args.get("ipxe_175", False),
                          user_class=args.get("user_class"),
                          ciaddr=args.get("ciaddr", "0.0.0.0"),
                          boot_item=args.get("boot_item"))
    dest = (args.get("to", "255.255.255.255"), int(args.get("port", 67)))
    replies: list[dict[str, Any]] = []
    deadline = time.monotonic() + float(args.get("wait", 10))
    tries = 0
    while time.monotonic() < deadline:
        if tries == 0 or (not replies and tries < 4):
            sock.sendto(packet, dest)
            tries += 1
        raw.settimeout(min(1.0, max(0.05, deadline - time.monotonic())))
        try:
            frame = raw.recv(65536)
        except TimeoutError:
            continue
        reply = parse_reply(udp_payload(frame, port=68))
        if reply is not None and reply.xid == xid:
            replies.append(asdict(reply))
            if len(replies) >= int(args.get("want", 99)):
                break
    sock.close()
    raw.close()
    return replies


if __name__ == "__main__":
    print(json.dumps(exchange(json.loads(sys.argv[1]))), flush=True)
