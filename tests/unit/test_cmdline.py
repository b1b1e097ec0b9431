from __future__ import annotations

import base64
import ssl
from typing import Any

import pytest

from pyinit import macaddr
from pyinit.cmdline import (
    BondConfig,
    BootParams,
    IpConfig,
    VlanConfig,
    failure_policy,
    parse_bond,
    parse_cmdline,
    parse_ip,
    parse_vlan,
    tokenize,
    url_ipv6_host,
)
from pyinit.errors import ConfigError

# Real-world command lines: pxelinux/iPXE, Debian's grub, dracut-style, BOOTy/plunder, ginit.
REAL_WORLD = [
    (
        "BOOT_IMAGE=/vmlinuz-6.1.0-56-amd64 root=UUID=0b1c6a8e-1f7e-4d1e-9b1a-3c2d1e0f9a8b ro "
        "quiet",
        dict(root="UUID=0b1c6a8e-1f7e-4d1e-9b1a-3c2d1e0f9a8b", mode="none"),
    ),
    (
        "initrd=initramfs.cpio.zst console=tty0 console=ttyS0,115200n8 "
        "BOOTYURL=http://10.0.2.2:3000 BOOTIF=01-52-54-00-12-34-56",
        dict(bootyurl="http://10.0.2.2:3000", bootif="52:54:00:12:34:56",
             consoles=("tty0", "ttyS0,115200n8"), mode="provision"),
    ),
    (
        "console=ttyS0 MYURL=http://192.168.1.1:8080/machines/ ip=dhcp pyinit.on_failure=poweroff",
        dict(myurl="http://192.168.1.1:8080/machines", on_failure="poweroff",
             ip=IpConfig(mode="dhcp")),
    ),
    (
        'root=/dev/vda entrypoint="/docker-entrypoint.sh nginx -g \'daemon off;\'" console=ttyS0',
        dict(root="/dev/vda", mode="ginit",
             entrypoint=("/docker-entrypoint.sh", "nginx", "-g", "daemon off;")),
    ),
    (
        '"entrypoint=/bin/echo hello world" root=LABEL=rootfs rootfstype=ext4',
        dict(entrypoint=("/bin/echo", "hello", "world"), root="LABEL=rootfs", rootfstype="ext4"),
    ),
    (
        "quiet splash vt.handoff=7 ==junk= = 'stray nomodeset -- single extra",
        dict(init_args=("single", "extra"), mode="none"),
    ),
    (
        "MYURL=http://h:1 pyinit.break=network,action pyinit.debug pyinit.exec=0",
        dict(break_before=frozenset({"network", "action"}), debug=True, exec_entrypoint=False),
    ),
    (
        "ip=10.0.0.5::10.0.0.1:255.255.255.0:node5:eth0:off:10.0.0.53 MYURL=https://prov.lan",
        dict(ip=IpConfig(mode="static", device="eth0", address="10.0.0.5", prefixlen=24,
                         gateway="10.0.0.1", hostname="node5", dns=("10.0.0.53",)),
             myurl="https://prov.lan"),
    ),
    (
        "MYURL=http://a:1 BOOTYURL=http://b:2 pyinit.dhcp_timeout=5 pyinit.fetch_timeout=7.5",
        dict(myurl="http://a:1", bootyurl="http://b:2", dhcp_timeout=5.0, fetch_timeout=7.5),
    ),
]


@pytest.mark.parametrize(("line", "expected"), REAL_WORLD)
def test_real_world_command_lines(line: str, expected: dict[str, object]) -> None:
    params = parse_cmdline(line, {})
    for key, value in expected.items():
        assert getattr(params, key) == value, key


def test_environment_supplies_urls_the_kernel_passed_to_init() -> None:
    params = parse_cmdline("console=ttyS0", {"BOOTYURL": "http://10.0.2.2:9/"})
    assert params.bootyurl == "http://10.0.2.2:9"
    assert params.mode == "provision"


def test_command_line_wins_over_environment() -> None:
    params = parse_cmdline("MYURL=http://a:1", {"MYURL": "http://b:2"})
    assert params.myurl == "http://a:1"


def test_defaults() -> None:
    params = parse_cmdline("", {})
    assert params == BootParams()
    assert params.on_failure == "shell"
    assert params.ip is None  # no ip=: DHCP when provisioning, no network in ginit mode


def test_tokenize_like_the_kernel() -> None:
    assert tokenize('a "b c" d="e f" "g=h i"') == ["a", "b c", "d=e f", "g=h i"]
    assert tokenize('  x=""  ') == ["x="]
    assert tokenize('unterminated "quote here') == ["unterminated", "quote here"]


@pytest.mark.parametrize(("value", "mac"), [
    ("01-52-54-00-12-34-56", "52:54:00:12:34:56"),
    ("52:54:00:AB:cd:EF", "52:54:00:ab:cd:ef"),
    ("52-54-00-12-34-56", "52:54:00:12:34:56"),
])
def test_bootif_spellings(value: str, mac: str) -> None:
    assert parse_cmdline(f"BOOTIF={value} MYURL=http://s").bootif == mac


@pytest.mark.parametrize("bad", ["01-52-54", "zz:54:00:12:34:56", "52:54-00:12:34:56",
                                 "01:52:54:00:12:34:56:78"])
def test_bad_bootif_is_an_error_naming_the_field(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^BOOTIF: not a MAC address"):
        parse_cmdline(f"BOOTIF={bad} MYURL=http://s")


@pytest.mark.parametrize(("text", "kwargs", "out"), [
    ("52:54:00:AB:cd:EF", {}, "52-54-00-ab-cd-ef"),
    ("52-54-00-ab-cd-ef", {"sep": ":"}, "52:54:00:ab:cd:ef"),
    ("01-52-54-00-ab-cd-ef", {}, None),                      # hardware type only for BOOTIF
    ("01-52-54-00-ab-cd-ef", {"hwtype": True}, "52-54-00-ab-cd-ef"),
    ("52:54:00:ab:cd", {}, None),                            # 5 octets
    ("52:54:00:ab:cd:ef:00:11", {}, None),                   # 8 octets: not Ethernet
    ("52:54:00:ab:cd:ef:00:11", {"max_octets": 20}, "52-54-00-ab-cd-ef-00-11"),
    (":".join(["a0"] * 20), {"max_octets": 20}, "-".join(["a0"] * 20)),  # InfiniBand
    (":".join(["a0"] * 21), {"max_octets": 20}, None),
    ("52:54-00:ab:cd:ef", {}, None),                         # mixed separators
    ("5254.00ab.cdef", {}, None),
])
def test_macaddr_normalize(text: str, kwargs: dict[str, Any], out: str | None) -> None:
    assert macaddr.normalize(text, **kwargs) == out


def test_macaddr_parse_and_dashes() -> None:
    assert macaddr.parse("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    assert macaddr.dashes(":".join(["0f"] * 20)) == "-".join(["0f"] * 20)
    with pytest.raises(ConfigError, match=r"^mac: not a MAC address: 'nope'$"):
        macaddr.parse("nope")


@pytest.mark.parametrize(("value", "expected"), [
    ("dhcp", IpConfig(mode="dhcp")),
    ("on", IpConfig(mode="dhcp")),
    ("off", IpConfig(mode="off")),
    ("::::node:eth1:dhcp", IpConfig(mode="dhcp", device="eth1", hostname="node")),
    ("192.168.1.9:192.168.1.1:192.168.1.254:255.255.255.0::enp1s0:none",
     IpConfig(mode="static", device="enp1s0", address="192.168.1.9", prefixlen=24,
              gateway="192.168.1.254")),
    ("10.1.2.3::0.0.0.0:16", IpConfig(mode="static", address="10.1.2.3", prefixlen=16)),
])
def test_parse_ip(value: str, expected: IpConfig) -> None:
    assert parse_ip(value) == expected


@pytest.mark.parametrize(("value", "needle"), [
    ("10.0.0.5::10.0.0.1:255.0.255.0", "bad netmask"),
    ("10.0.0.5::10.0.0.1:255.255.255.300", "bad netmask"),
    ("10.0.0.999::10.0.0.1:24", "bad client address"),
    ("10.0.0.5::10.9.0.1:255.255.255.0", "outside"),
    ("bogus", "unrecognised"),
    (":::255.255.255.0", "without a client address"),
])
def test_bad_ip_is_an_error(value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_ip(value)


@pytest.mark.parametrize(("line", "field"), [
    ("MYURL=ftp://x/y", "MYURL"),
    ("BOOTYURL=notaurl", "BOOTYURL"),
    ("pyinit.on_failure=explode", "pyinit.on_failure"),
    ("pyinit.dhcp_timeout=soon", "pyinit.dhcp_timeout"),
    ("pyinit.fetch_timeout=-3", "pyinit.fetch_timeout"),
    ('entrypoint="/bin/sh -c \'unbalanced"', "entrypoint"),
    ("BOOTIF=01-aa", "BOOTIF"),
])
def test_known_keys_with_bad_values_name_the_key(line: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cmdline(line, {})
    assert info.value.field == field


def test_failure_policy_survives_a_broken_command_line() -> None:
    line = "MYURL=ftp://broken pyinit.on_failure=poweroff"
    with pytest.raises(ConfigError):
        parse_cmdline(line, {})
    assert failure_policy(line) == "poweroff"
    assert failure_policy("pyinit.on_failure=nonsense") == "shell"


# -- pyinit.ca= (issue #6) -------------------------------------------------------------------

# A self-signed EC P-256 certificate made once with `openssl req -x509` (only parsed here).
UNIT_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBiDCCAS+gAwIBAgIUROIZl7KXC8RjCgrEbDS2NweBLy8wCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOcHlpbml0IHVuaXQgQ0EwIBcNMjYxMTIzMTg1NzQ0WhgPMjEy
NjEwMzAxODU3NDRaMBkxFzAVBgNVBAMMDnB5aW5pdCB1bml0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEbBrYjRJoLZ3LqgQvhuNcWBaiCEdht0XWZnDyRx/B
WGWgLEU4kmAmvjZXWxMuCPA3WJUG6MIU2OxXp8KJuXQc6aNTMFEwHQYDVR0OBBYE
FJ2IbMMrBQkGeUFOSsh+3TUMj1DtMB8GA1UdIwQYMBaAFJ2IbMMrBQkGeUFOSsh+
3TUMj1DtMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgXP3u7SFx
qsdJy4E62WOfaBEx1eveBJwWIIbXNaePb/oCIDrZsvZllFYur54R8Y5G5qmCm/aR
FIwYCEI2hWF5zA8/
-----END CERTIFICATE-----
"""
UNIT_CA_DER = ssl.PEM_cert_to_DER_cert(UNIT_CA_PEM)
B64_DER = base64.b64encode(UNIT_CA_DER).decode()


@pytest.mark.parametrize(("value", "path", "der"), [
    ("/etc/pyinit/ca.pem", "/etc/pyinit/ca.pem", None),
    ("/run/extra/site-ca.pem", "/run/extra/site-ca.pem", None),
    (f"base64:{B64_DER}", None, UNIT_CA_DER),
    (f"base64:{B64_DER.rstrip('=')}", None, UNIT_CA_DER),  # padding is optional
    (f"base64:{base64.b64encode(UNIT_CA_PEM.encode()).decode()}", None, UNIT_CA_DER),  # a PEM
])
def test_pyinit_ca_forms(value: str, path: str | None, der: bytes | None) -> None:
    params = parse_cmdline(f"MYURL=https://10.0.2.2:8443 pyinit.ca={value}", {})
    assert params.ca_path == path
    if der is None:
        assert params.ca_pem is None
    else:
        assert params.ca_pem is not None
        assert ssl.PEM_cert_to_DER_cert(params.ca_pem) == der
    assert "MII" not in repr(params)  # the (long) inline CA is kept out of repr


@pytest.mark.parametrize(("value", "needle"), [
    ("ca.pem", "expected a path (/etc/pyinit/ca.pem) or base64:"),
    ("", "expected a path"),
    ("base64:", "the 0 decoded bytes are not an X.509 certificate"),
    ("base64:!!not-base64!!", "not valid base64"),
    ("base64:" + base64.b64encode(b"garbage" * 20).decode(), "140 decoded bytes are not an X.509"),
    ("base64:" + B64_DER[:200], "150 decoded bytes are not an X.509"),  # cut short
    ("base64:" + base64.b64encode(b"-----BEGIN CERTIFICATE-----\nAAAA\n").decode(),
     "are not an X.509 certificate"),
])
def test_bad_pyinit_ca_is_one_line_naming_the_key(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cmdline(f"MYURL=https://h pyinit.ca={value}", {})
    assert info.value.field == "pyinit.ca"
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_no_pyinit_ca_by_default() -> None:
    params = parse_cmdline("MYURL=https://h", {})
    assert params.ca_path is None and params.ca_pem is None


# --- vlan= and bond= (dracut syntax) -----------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("eth0.100:eth0", VlanConfig("eth0.100", 100, "eth0")),
    ("eth0.0100:eth0", VlanConfig("eth0.0100", 100, "eth0")),
    ("vlan100:eth0", VlanConfig("vlan100", 100, "eth0")),
    ("vlan0005:enp3s0f1", VlanConfig("vlan0005", 5, "enp3s0f1")),
    ("bond0.4094:bond0", VlanConfig("bond0.4094", 4094, "bond0")),
])
def test_parse_vlan(value: str, expected: VlanConfig) -> None:
    assert parse_vlan(value) == expected


@pytest.mark.parametrize(("value", "needle"), [
    ("eth0.100", "expected <vlanname>:<phys>"),
    ("eth0.100:", "expected <vlanname>:<phys>"),
    (":eth0", "expected <vlanname>:<phys>"),
    ("eth0.100:eth0:x", "expected <vlanname>:<phys>"),
    ("myvlan:eth0", "no VLAN id in the name 'myvlan'"),
    ("eth0.0:eth0", "VLAN id 0 in 'eth0.0' is outside 1..4094"),
    ("vlan4095:eth0", "VLAN id 4095"),
    ("eth0.100:eth/0", "bad parent interface"),
    ("averyveryverylongname.100:eth0", "bad VLAN name"),
])
def test_bad_vlan_is_a_config_error_naming_vlan(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cmdline(f"vlan={value}")
    assert str(err.value).startswith("vlan: ") and needle in str(err.value), str(err.value)


@pytest.mark.parametrize(("value", "expected"), [
    ("", BondConfig()),
    ("bond1", BondConfig(name="bond1")),
    ("bond0:eth0,eth1:mode=active-backup,miimon=100",
     BondConfig(name="bond0", slaves=("eth0", "eth1"), miimon=100)),
    ("bond0:enp1s0,enp2s0:mode=1,miimon=50,updelay=200,downdelay=0:9000",
     BondConfig(slaves=("enp1s0", "enp2s0"), miimon=50, updelay=200, mtu=9000)),
    ("bond0:ens3", BondConfig(slaves=("ens3",))),
])
def test_parse_bond(value: str, expected: BondConfig) -> None:
    assert parse_bond(value) == expected


@pytest.mark.parametrize(("value", "needle"), [
    ("bond0:eth0,eth1:mode=balance-rr", "mode 'balance-rr' is not supported (only "
                                        "active-backup)"),
    ("bond0:eth0,eth1:mode=802.3ad", "not supported"),
    ("bond0:eth0,eth1:lacp_rate=fast", "unknown option 'lacp_rate=fast'"),
    ("bond0:eth0,eth1:miimon=fast", "miimon='fast' is not a number"),
    ("bond0:eth0,eth0", "repeat a name"),
    ("bond0:bond0,eth1", "repeat a name"),
    ("bond0:eth0:miimon=100:12", "bad MTU '12'"),
    ("bond0:eth0:::", "expected <name>"),
])
def test_bad_bond_is_a_config_error_naming_bond(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cmdline(f"bond={value}")
    assert str(err.value).startswith("bond: ") and needle in str(err.value), str(err.value)


def test_vlan_and_bond_repeat_and_stack() -> None:
    p = parse_cmdline("bond=bond0:eth0,eth1 vlan=bond0.7:bond0 vlan=vlan8:eth2 ip=bond0.7:dhcp")
    assert p.bonds == (BondConfig(),)
    assert p.vlans == (VlanConfig("bond0.7", 7, "bond0"), VlanConfig("vlan8", 8, "eth2"))
    assert p.ip == IpConfig(mode="dhcp", device="bond0.7")
    assert parse_cmdline("ip=dhcp").vlans == () and parse_cmdline("").bonds == ()


@pytest.mark.parametrize(("line", "needle"), [
    ("vlan=eth0.5:eth0 vlan=eth0.5:eth1", "vlan: 'eth0.5' is defined twice"),
    ("bond=bond0:eth0 bond=bond1:eth0,eth1", "bond: eth0 is a slave of two bonds"),
])
def test_link_definitions_must_not_clash(line: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_cmdline(line)


@pytest.mark.parametrize(("value", "expected"), [
    ("eth0.100:dhcp", IpConfig(mode="dhcp", device="eth0.100")),
    ("bond0:on", IpConfig(mode="dhcp", device="bond0")),
    ("eth1:off", IpConfig(mode="off", device="eth1")),
])
def test_dracut_ip_interface_form(value: str, expected: IpConfig) -> None:
    assert parse_ip(value) == expected


def test_dracut_ip_interface_form_bad_name() -> None:
    with pytest.raises(ConfigError, match=r"^ip: bad interface 'eth/0'"):
        parse_ip("eth/0:dhcp")


# IPv6: ip=auto6|dhcp6 (dracut) and a server URL whose host is an IPv6 literal


@pytest.mark.parametrize(("value", "expected"), [
    ("dhcp6", IpConfig(mode="dhcp", ipv6="dhcp6")),
    ("auto6", IpConfig(mode="dhcp", ipv6="auto6")),
    ("AUTO6", IpConfig(mode="dhcp", ipv6="auto6")),
    ("eth0:dhcp6", IpConfig(mode="dhcp", device="eth0", ipv6="dhcp6")),
    ("::::node:eth1:auto6", IpConfig(mode="dhcp", device="eth1", hostname="node",
                                     ipv6="auto6")),
    ("dhcp", IpConfig(mode="dhcp")),
])
def test_parse_ip_v6_autoconf(value: str, expected: IpConfig) -> None:
    assert parse_ip(value) == expected


@pytest.mark.parametrize(("line", "myurl", "ipv6"), [
    ("MYURL=http://[fd00::1]:8080", "http://[fd00::1]:8080", "auto6"),
    ("MYURL=https://[FD00:0::1]/", "https://[FD00:0::1]", "auto6"),
    ("BOOTYURL=http://[fec0::2]:9000/cfg", None, "auto6"),
    ("MYURL=http://[fe80::1%25eth0]:80", "http://[fe80::1%25eth0]:80", "auto6"),
    ("MYURL=http://[fd00::1]:8080 ip=dhcp6", "http://[fd00::1]:8080", "dhcp6"),
    ("MYURL=http://[fd00::1]:8080 ip=dhcp", "http://[fd00::1]:8080", "auto6"),
    # a static ip= or ip=off wins: the operator configured the network themselves
    ("MYURL=http://[fd00::1] ip=10.0.0.5::10.0.0.1:24", "http://[fd00::1]", None),
    ("MYURL=http://[fd00::1] ip=off", "http://[fd00::1]", None),
    ("MYURL=http://10.0.2.2:8080", "http://10.0.2.2:8080", None),
    ("MYURL=http://server.example:8080", "http://server.example:8080", None),
    ("MYURL=http://10.0.2.2:8080 ip=auto6", "http://10.0.2.2:8080", "auto6"),
    ("root=/dev/sda1 entrypoint=/sbin/init", None, None),
])
def test_ipv6_mode_from_url_and_ip(line: str, myurl: str | None, ipv6: str | None) -> None:
    params = parse_cmdline(line)
    assert params.myurl == myurl
    assert params.ipv6 == ipv6


@pytest.mark.parametrize(("url", "host"), [
    ("http://[fd00::1]:8080", "fd00::1"),
    ("http://[FD00:0:0::1]/x", "fd00::1"),
    ("https://user@[::1]:443", "::1"),
    ("http://[fe80::1%25eth0]", "fe80::1"),
    ("http://10.0.0.1:80", None),
    ("http://fd00::1/", None),  # not bracketed: not a literal a URL can carry
    ("http://host/[fd00::1]", None),
])
def test_url_ipv6_host(url: str, host: str | None) -> None:
    assert url_ipv6_host(url) == host


@pytest.mark.parametrize("line", ["MYURL=http://[fd00::zz]:80", "BOOTYURL=http://[10.0.0.1]/",
                                  "MYURL=http://[]:80"])
def test_bad_ipv6_literal_names_the_key(line: str) -> None:
    with pytest.raises(ConfigError, match=r"is not an IPv6 address") as info:
        parse_cmdline(line)
    assert info.value.field in ("MYURL", "BOOTYURL")
