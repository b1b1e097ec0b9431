"""The DHCPv6 wire format (pyinit.dhcp6), table-tested against bytes written out by hand from
RFC 8415 §§ 8, 21 (message header, option TLVs, IA_NA, IAADDR, status code, DUID-LL)."""

from __future__ import annotations

import pytest

from pyinit import dhcp6
from pyinit.dhcp6 import Dhcp6Error, Lease6

MAC = "52:54:00:12:34:56"
DUID = bytes.fromhex("0003 0001 525400123456")  # DUID-LL: type 3, hw type 1, MAC
SERVER_DUID = bytes.fromhex("0001 0001 2b2c2d2e aabbccddeeff")  # a DUID-LLT
IAID = 0x00123456
XID = 0xABCDEF


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def test_duid_and_iaid_come_from_the_mac() -> None:
    assert dhcp6.duid_ll(MAC) == DUID
    assert dhcp6.duid_ll("52-54-00-12-34-56") == DUID
    assert dhcp6.iaid_for(MAC) == IAID


@pytest.mark.parametrize(("built", "wire"), [
    (dhcp6.option(8, b"\x00\x00"), "0008 0002 0000"),
    (dhcp6.option(14), "000e 0000"),
    (dhcp6.ia_na(IAID), "0003 000c 00123456 00000000 00000000"),
    (dhcp6.ia_na(IAID, 10, 20, [("fd00:77::100", 300, 600)]),
     "0003 0028 00123456 0000000a 00000014"
     " 0005 0018 fd000077000000000000000000000100 0000012c 00000258"),
    (dhcp6.encode(dhcp6.SOLICIT, XID, [dhcp6.option(1, DUID)]),
     "01 abcdef 0001 000a 0003 0001 525400123456"),
    (dhcp6.encode(dhcp6.RENEW, 1, []), "05 000001"),
])
def test_encode(built: bytes, wire: str) -> None:
    assert built == h(wire)


def test_encode_refuses_a_transaction_id_wider_than_24_bits() -> None:
    with pytest.raises(ValueError, match="24 bits"):
        dhcp6.encode(dhcp6.SOLICIT, 1 << 24, [])




def _reply(*parts: str, msg: str = "07", xid: str = "abcdef") -> bytes:
    client = "0001 000a 0003 0001 525400123456"
    server = "0002 000e 0001 0001 2b2c2d2e aabbccddeeff"
    return h(" ".join([msg, xid, client, server, *parts]))


IA_ONE = ("0003 0028 00123456 00000e10 00001518"
          " 0005 0018 fd000077000000000000000000000142 00001c20 00002a30")


def test_parse_reply_reads_address_lifetimes_dns_and_domains() -> None:
    packet = _reply(IA_ONE, "0017 0010 fd000077000000000000000000000001",
                    "0018 000d 036c6162 076578616d706c65 00")
    lease = dhcp6.parse_reply(packet, xid=XID, client_id=DUID, iaid=IAID, expect=dhcp6.REPLY)
    assert lease == Lease6(address="fd00:77::142", preferred=7200, valid=10800, t1=3600,
                           t2=5400, server_id=SERVER_DUID, dns=("fd00:77::1",),
                           domains=("lab.example",))
    assert dhcp6.renew_times(lease) == (3600.0, 5400.0)


@pytest.mark.parametrize(("packet", "kwargs", "why"), [
    (_reply(IA_ONE, msg="02"), {}, "ADVERTISE, not REPLY"),
    (_reply(IA_ONE, xid="000001"), {}, "transaction 0x000001, not ours"),
    (_reply(IA_ONE), {"client_id": b"\x00\x03other"}, "client identifier is not ours"),
    (h("07 abcdef 0001 000a 0003 0001 525400123456 " + IA_ONE), {}, "no server identifier"),
    (_reply("000d 000c 0002 6e6f2061646472657373"), {}, "status NoAddrsAvail: no address"),
    (_reply("0003 0012 00123456 00000000 00000000 000d 0002 0002"), {},
     "IA_NA status NoAddrsAvail"),
    (_reply(IA_ONE), {"iaid": 7}, "no address in an IA_NA for our IAID"),
    # valid lifetime 0: §21.6 says discard the address
    (_reply("0003 0028 00123456 00000000 00000000"
            " 0005 0018 fd000077000000000000000000000142 00000000 00000000"), {},
     "no address in an IA_NA"),
    (_reply("0003 0028 00123456"), {}, "claims 40 bytes"),
    (h("07 ab"), {}, "too short"),
    (_reply("00"), {}, "truncated option header"),
])
def test_parse_reply_rejects(packet: bytes, kwargs: dict[str, object], why: str) -> None:
    args: dict[str, object] = {"xid": XID, "client_id": DUID, "iaid": IAID,
                               "expect": dhcp6.REPLY, **kwargs}
    with pytest.raises(Dhcp6Error, match=why):
        dhcp6.parse_reply(packet, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("pref", "valid", "t1", "t2", "expected"), [
    (7200, 10800, 0, 0, (3600.0, 5760.0)),  # server left T1/T2 to the client: 0.5, 0.8
    (7200, 10800, 100, 200, (100.0, 200.0)),
    (dhcp6.INFINITY, dhcp6.INFINITY, 0, 0, (float("inf"), float("inf"))),
    (600, 600, dhcp6.INFINITY, dhcp6.INFINITY, (float("inf"), float("inf"))),
])
def test_renew_times(pref: int, valid: int, t1: int, t2: int,
                     expected: tuple[float, float]) -> None:
    lease = Lease6(address="fd00::1", preferred=pref, valid=valid, t1=t1, t2=t2,
                   server_id=b"x")
    assert dhcp6.renew_times(lease) == expected
