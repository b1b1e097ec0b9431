"""pyinit.lldp: the TLV parser on real and hand-made frames, and the listener on socket pairs.

The listener's sockets here are ``AF_UNIX`` datagram socket pairs handed in through its
``opener`` seam (message boundaries are kept, as on an AF_PACKET socket); the real AF_PACKET
path and a real sender (lldpd) are tests/integration/test_lldp_netns.py.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyinit import log
from pyinit.lldp import (
    LLDP_MULTICAST,
    Listener,
    LldpError,
    Neighbour,
    parse_frame,
    parse_lldpdu,
)

# Captured from Debian's lldpd 1.0.16 in a network namespace (swp7, MAC 0c:42:a1:5e:77:07,
# 192.0.2.7/24; the two IEEE 802.1 TLVs configured as custom TLVs), as an AF_PACKET socket on
# the other end read it (tx-interval 1 s: TTL 4 s).
LLDPD_FRAME = bytes.fromhex(
    "0180c200000e0c42a15e770788cc0207040c42a15e770704050573777037060200040a0e7377697463683031"
    "2e7261636b310c1e44656269616e206c6c64706420312e302e313620696e2061206e65746e730e04009c0080"
    "100c0501c000020702000000020010181102fe800000000000000e42a1fffe5e770702000000020008117261"
    "636b31206e6f646530312065746830fe0900120f030100000000fe0900120f010080000036fe060080c20100"
    "64fe0e0080c203006407766c616e3130300000")
SRC = "0c:42:a1:5e:77:07"


def tlv(kind: int, value: bytes) -> bytes:
    return ((kind << 9) | len(value)).to_bytes(2, "big") + value


def frame(lldpdu: bytes, src: str = SRC) -> bytes:
    return LLDP_MULTICAST + bytes.fromhex(src.replace(":", "")) + b"\x88\xcc" + lldpdu


CHASSIS = tlv(1, b"\x04" + bytes.fromhex("0c42a15e7707"))
PORT = tlv(2, b"\x05swp7")
TTL = tlv(3, b"\x00\x78")
END = tlv(0, b"")


def lldpdu(*extra: bytes, chassis: bytes = CHASSIS, port: bytes = PORT) -> bytes:
    return chassis + port + TTL + b"".join(extra) + END


# ---- the parser ----------------------------------------------------------------------------


def test_lldpd_frame() -> None:
    n = parse_frame(LLDPD_FRAME)
    assert n == Neighbour(
        chassis_id=SRC, chassis_id_subtype="mac", port_id="swp7",
        port_id_subtype="interface name", ttl=4, port_description="rack1 node01 eth0",
        system_name="switch01.rack1", system_description="Debian lldpd 1.0.16 in a netns",
        management_addresses=("192.0.2.7", "fe80::e42:a1ff:fe5e:7707"), port_vlan=100,
        vlans=((100, "vlan100"),), source_mac=SRC)
    assert n.describe() == "switch01.rack1 port swp7 (rack1 node01 eth0), vlan 100"
    assert n.as_dict()["vlans"] == [{"id": 100, "name": "vlan100"}]


@pytest.mark.parametrize(("value", "text", "kind"), [
    (b"\x04" + bytes.fromhex("0c42a15e7707"), SRC, "mac"),
    (b"\x05\x01" + bytes([10, 0, 0, 1]), "10.0.0.1", "network address"),
    (b"\x05\x02" + bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1",
     "network address"),
    (b"\x06Ethernet1/3", "Ethernet1/3", "interface name"),
    (b"\x07SW-A-0042", "SW-A-0042", "local"),
    (b"\x01FOC1234X0AB", "FOC1234X0AB", "chassis component"),
    (b"\x02core-sw1", "core-sw1", "interface alias"),
    (b"\x03slot 2", "slot 2", "port component"),
    (b"\x09\xde\xad", "dead", "reserved 9"),
    (b"\x06sw\x1b[31m\x00\x00", "sw\\x1b[31m", "interface name"),  # escaped, NULs dropped
])
def test_chassis_id_subtypes(value: bytes, text: str, kind: str) -> None:
    n = parse_lldpdu(lldpdu(chassis=tlv(1, value)))
    assert (n.chassis_id, n.chassis_id_subtype) == (text, kind)


@pytest.mark.parametrize(("value", "text", "kind"), [
    (b"\x03" + bytes.fromhex("0c42a15e7708"), "0c:42:a1:5e:77:08", "mac"),
    (b"\x05swp1", "swp1", "interface name"),
    (b"\x07" + b"1/1/3", "1/1/3", "local"),
    (b"\x01uplink", "uplink", "interface alias"),
    (b"\x06\x01\x02\x03", "010203", "agent circuit id"),
    (b"\x04\x01" + bytes([192, 0, 2, 9]), "192.0.2.9", "network address"),
])
def test_port_id_subtypes(value: bytes, text: str, kind: str) -> None:
    n = parse_lldpdu(lldpdu(port=tlv(2, value)))
    assert (n.port_id, n.port_id_subtype) == (text, kind)


def test_vlan_tlvs_and_unknown_organizations() -> None:
    n = parse_lldpdu(lldpdu(
        tlv(127, bytes.fromhex("0080c2") + b"\x01" + (42).to_bytes(2, "big")),
        tlv(127, bytes.fromhex("0080c2") + b"\x03" + (42).to_bytes(2, "big") + b"\x04prod"),
        tlv(127, bytes.fromhex("0080c2") + b"\x03" + (43).to_bytes(2, "big") + b"\x03mgt"),
        tlv(127, bytes.fromhex("00120f") + b"\x04" + (9216).to_bytes(2, "big")),  # 802.3 MTU
        tlv(127, bytes.fromhex("00000c") + b"\x01whatever"),  # Cisco: skipped
        tlv(42, b"reserved type"),  # an unknown TLV type is skipped
    ))
    assert n.port_vlan == 42 and n.vlans == ((42, "prod"), (43, "mgt"))
    pvid0 = parse_lldpdu(lldpdu(tlv(127, bytes.fromhex("0080c2") + b"\x01\x00\x00")))
    assert pvid0.port_vlan is None  # 0: the port does not say


def test_tagged_padded_and_endless_frames() -> None:
    body = lldpdu(tlv(5, b"sw1"))
    tagged = LLDP_MULTICAST + bytes(6) + b"\x81\x00\x00\x64\x88\xcc" + body
    assert parse_frame(tagged).system_name == "sw1"
    padded = frame(body + bytes(60 - 14 - len(body)))  # the NIC's minimum-size padding
    assert parse_frame(padded).system_name == "sw1"
    assert parse_frame(frame(body[:-2])).system_name == "sw1"  # no End TLV: tolerated


@pytest.mark.parametrize(("data", "reason"), [
    (frame(b"\x02"), r"^truncated TLV header at byte 0 of 1$"),
    (frame(CHASSIS + b"\x04\x10abc"),
     r"^TLV type 2 at byte 9: length 16 runs past the end of the LLDPDU \(14 bytes\)$"),
    (frame(CHASSIS + PORT + END), r"^missing mandatory TLV: TTL$"),
    (frame(tlv(5, b"only a name") + END), r"missing mandatory TLV: Chassis ID, Port ID, TTL"),
    (frame(b""), r"missing mandatory TLV"),
    (frame(CHASSIS + CHASSIS + PORT + TTL), r"^more than one Chassis ID TLV$"),
    (frame(CHASSIS + PORT + tlv(3, b"\x00")), r"^TTL TLV of 1 bytes \(must be 2\)$"),
    (frame(tlv(1, b"\x04") + PORT + TTL), r"^Chassis ID TLV too short \(1 bytes"),
    (frame(CHASSIS + tlv(2, b"") + TTL), r"^Port ID TLV too short"),
    (frame(lldpdu(tlv(8, b"\x05\x01\x0a\x00\x00\x01"))), r"Management Address TLV too short"),
    (frame(lldpdu(tlv(8, b"\x20\x01\x0a\x00\x00\x01\x02\x00\x00\x00\x01\x00"))),
     r"Management Address TLV: address length 32 does not fit its 12 bytes"),
    (frame(lldpdu(tlv(127, b"\x00\x80"))), r"organizationally specific TLV too short"),
    (frame(lldpdu(tlv(127, bytes.fromhex("0080c2") + b"\x01\x00"))),
     r"Port VLAN ID TLV of 1 bytes"),
    (frame(lldpdu(tlv(127, bytes.fromhex("0080c2") + b"\x03\x00\x64\x09vlan"))),
     r"VLAN Name TLV: name length runs past the TLV"),
    (frame(lldpdu(tlv(127, bytes(504)) * 3)), r"^oversized LLDPDU: 1540 bytes \(at most 1500\)$"),
    (frame(bytes(range(7, 107))), r"runs past the end|truncated"),  # junk
    (bytes(10), r"^truncated Ethernet header \(10 bytes\)$"),
    (LLDP_MULTICAST + bytes(6) + b"\x08\x00" + lldpdu(), r"not an LLDP frame \(ethertype 0x0800\)"),
])
def test_malformed_frames_raise_one_typed_line(data: bytes, reason: str) -> None:
    with pytest.raises(LldpError, match=reason) as info:
        parse_frame(data)
    assert "\n" not in str(info.value)


# ---- the listener ------------------------------------------------------------------------


class Wire:
    """Socket pairs standing in for each NIC's AF_PACKET socket."""

    def __init__(self) -> None:
        self.ends: dict[str, socket.socket] = {}
        self.opened: list[str] = []
        self.links: list[tuple[str, bool]] = []

    def opener(self, name: str) -> socket.socket:
        if name == "broken0":
            raise OSError(19, "No such device")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ends[name] = theirs
        self.opened.append(name)
        return ours

    def link(self, name: str, up: bool) -> None:
        self.links.append((name, up))

    def send(self, name: str, data: bytes) -> None:
        self.ends[name].send(data)

    def close(self) -> None:
        for end in self.ends.values():
            end.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    buf = io.StringIO()
    monkeypatch.setattr(log, "_console", buf)
    log.configure()
    events: list[dict[str, Any]] = []
    log.clear_sinks()
    log.add_sink(events.append)
    buf.events = events  # type: ignore[attr-defined]
    yield buf
    log.clear_sinks()


def wait_open(wire: Wire, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(wire.opened) < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_listener_hears_each_nic_once_and_raises_down_links(wire: Wire,
                                                            console: io.StringIO) -> None:
    heard: list[tuple[str, str | None]] = []
    listener = Listener(["eth0", "eth1", "broken0"], down=["eth1", "broken0", "other"],
                        timeout=10, emit=lambda nic, n: heard.append((nic, n.system_name)),
                        opener=wire.opener, link=wire.link).start()
    wait_open(wire, 2)
    wire.send("eth0", LLDPD_FRAME)
    wire.send("eth0", LLDPD_FRAME)  # the second frame of a NIC is not read: it is done
    wire.send("eth1", frame(lldpdu(tlv(5, b"sw2"))))
    listener.join(5)
    assert not listener.is_alive()
    assert sorted(heard) == [("eth0", "switch01.rack1"), ("eth1", "sw2")]
    # raised for the window, down again after; never a link it was not told about
    assert wire.links == [("eth1", True), ("broken0", True), ("eth1", False),
                          ("broken0", False)]
    text = console.getvalue()
    assert "pyinit: WARNING: lldp: broken0: cannot listen: No such device\n" in text
    done = [e for e in console.events if e["step"] == "lldp"]  # type: ignore[attr-defined]
    assert [(e["status"], e["heard"], e["silent"]) for e in done] == [
        ("done", ["eth0", "eth1"], [])]


def test_malformed_frames_are_one_rate_limited_warning(wire: Wire, console: io.StringIO) -> None:
    clock = [0.0]
    heard: list[Neighbour] = []
    listener = Listener(["eth0"], timeout=1e9, emit=lambda nic, n: heard.append(n),
                        opener=wire.opener, link=wire.link, clock=lambda: clock[0]).start()
    wait_open(wire, 1)
    bad = frame(CHASSIS + b"\x04\x10abc")
    for _ in range(3):
        wire.send("eth0", bad)
    wire.send("eth0", frame(bytes(1600)))
    deadline = time.monotonic() + 5
    while listener.malformed.get("eth0", 0) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    clock[0] = 31.0  # the next warning may be printed, with the count of the held ones
    wire.send("eth0", bad)
    wire.send("eth0", LLDPD_FRAME)  # and the good frame is still heard
    listener.join(5)
    assert [n.system_name for n in heard] == ["switch01.rack1"]
    warnings = [line for line in console.getvalue().splitlines() if "WARNING" in line]
    line = (f"pyinit: WARNING: lldp: eth0: ignored a malformed LLDP frame from {SRC}: "
            "TLV type 2 at byte 9: length 16 runs past the end of the LLDPDU (14 bytes)")
    assert warnings == [line, line + " (3 more since the last warning)"]
    assert listener.malformed == {"eth0": 5}
    assert "Traceback" not in console.getvalue()


def test_listener_gives_up_after_its_window(wire: Wire, console: io.StringIO) -> None:
    listener = Listener(["eth0"], timeout=0.2, opener=wire.opener, link=wire.link).start()
    listener.join(5)
    assert not listener.is_alive() and listener.heard == {}
    assert "lldp: nothing heard on eth0 within 0 s" in console.getvalue()
    (done,) = console.events  # type: ignore[attr-defined]
    assert (done["step"], done["status"], done["silent"]) == ("lldp", "done", ["eth0"])


def test_stop_ends_the_window_at_once(wire: Wire, console: io.StringIO) -> None:
    listener = Listener(["eth0"], down=["eth0"], timeout=600, opener=wire.opener,
                        link=wire.link).start()
    wait_open(wire, 1)
    t0 = time.monotonic()
    listener.stop()
    assert time.monotonic() - t0 < 1.0 and not listener.is_alive()
    assert wire.links == [("eth0", True), ("eth0", False)]
    listener.stop()  # twice is harmless: the wake-up pipe is closed, never written again


def test_default_emit_is_a_console_line_and_an_event(wire: Wire, console: io.StringIO) -> None:
    listener = Listener(["eth0"], timeout=10, opener=wire.opener, link=wire.link).start()
    wait_open(wire, 1)
    wire.send("eth0", LLDPD_FRAME)
    listener.join(5)
    assert ("pyinit: lldp: eth0: switch01.rack1 port swp7 (rack1 node01 eth0), vlan 100"
            in console.getvalue())
    ev = console.events[0]  # type: ignore[attr-defined]
    assert (ev["step"], ev["status"], ev["interface"], ev["port_id"], ev["port_vlan"]) == (
        "lldp", "neighbour", "eth0", "swp7", 100)
