"""``pyinit dnsmasq``: the rendered configuration and every validation error, table-style.

The configuration's behaviour against real dnsmasq is in tests/integration/test_dnsmasq_netns.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyinit.errors import ConfigError
from pyinit_build.cli import main
from pyinit_server.dnsmasq import command_line, make_spec, render

URL = "http://10.1.0.1:8080"
FULL: dict[str, Any] = {"mode": "full", "server_url_text": URL, "interface": "eth1",
                        "subnet": "10.1.0.0/24", "dhcp_range": "10.1.0.100,10.1.0.200"}
PROXY: dict[str, Any] = {"mode": "proxy", "server_url_text": URL, "interface": "eth1",
                         "subnet": "10.1.0.0/24"}


def directives(text: str) -> list[str]:
    """The file without comments and blank lines (trailing comments stripped)."""
    lines = (line.split("  #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_full_mode_directives() -> None:
    assert directives(render(make_spec(**FULL))) == [
        "port=0",
        "interface=eth1",
        "bind-interfaces",
        "dhcp-range=10.1.0.100,10.1.0.200,255.255.255.0,1h",
        "dhcp-option=option:router",
        "dhcp-option=option:dns-server",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe",
        "dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
        "dhcp-boot=tag:ipxe,http://10.1.0.1:8080/boot.ipxe",
        "enable-tftp",
        "tftp-root=/usr/lib/ipxe",
        "log-dhcp",
    ]


def test_proxy_mode_directives() -> None:
    assert directives(render(make_spec(**PROXY))) == [
        "port=0",
        "interface=eth1",
        "bind-interfaces",
        "dhcp-range=10.1.0.0,proxy,255.255.255.0",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        'pxe-prompt="pyinit network boot",0',
        'pxe-service=tag:!ipxe,x86PC,"pyinit: load iPXE",undionly.kpxe',
        'pxe-service=tag:!ipxe,x86-64_EFI,"pyinit: load iPXE",ipxe.efi',
        'pxe-service=tag:!ipxe,BC_EFI,"pyinit: load iPXE",ipxe.efi',
        'pxe-service=tag:ipxe,x86PC,"pyinit: boot.ipxe",http://10.1.0.1:8080/boot.ipxe',
        'pxe-service=tag:ipxe,x86-64_EFI,"pyinit: boot.ipxe",http://10.1.0.1:8080/boot.ipxe',
        'pxe-service=tag:ipxe,BC_EFI,"pyinit: boot.ipxe",http://10.1.0.1:8080/boot.ipxe',
        "enable-tftp",
        "tftp-root=/usr/lib/ipxe",
        "log-dhcp",
    ]


@pytest.mark.parametrize(("extra", "present", "absent"), [
    ({"router": "10.1.0.254"}, ["dhcp-option=option:router,10.1.0.254"],
     ["dhcp-option=option:router"]),
    ({"dns": "10.1.0.53,10.1.0.54"}, ["dhcp-option=option:dns-server,10.1.0.53,10.1.0.54"],
     ["dhcp-option=option:dns-server"]),
    ({"lease_time": "infinite"}, ["dhcp-range=10.1.0.100,10.1.0.200,255.255.255.0,infinite"],
     []),
    ({"subnet": None}, ["dhcp-range=10.1.0.100,10.1.0.200,1h"], []),
    ({"hosts": ("52-54-00-AB-CD-EF,10.1.0.20",)}, ["dhcp-host=52:54:00:ab:cd:ef,10.1.0.20"],
     []),
    ({"tftp_root": Path("/srv/tftp")}, ["tftp-root=/srv/tftp"], ["tftp-root=/usr/lib/ipxe"]),
    ({"efi_arm64": "ipxe-arm64.efi"}, ["dhcp-match=set:efiarm64,option:client-arch,11",
                                       "dhcp-boot=tag:!ipxe,tag:efiarm64,ipxe-arm64.efi"], []),
    ({"server_url_text": "https://boot.example.org/pyinit/"},
     ["dhcp-boot=tag:ipxe,https://boot.example.org/pyinit/boot.ipxe"], []),
])
def test_full_mode_options(extra: dict[str, Any], present: list[str], absent: list[str]) -> None:
    lines = directives(render(make_spec(**{**FULL, **extra})))
    for line in present:
        assert line in lines
    for line in absent:
        assert line not in lines


def test_proxy_arm64_entries() -> None:
    lines = directives(render(make_spec(**PROXY, efi_arm64="ipxe-arm64.efi")))
    assert 'pxe-service=tag:!ipxe,ARM64_EFI,"pyinit: load iPXE",ipxe-arm64.efi' in lines
    assert ('pxe-service=tag:ipxe,ARM64_EFI,"pyinit: boot.ipxe",'
            "http://10.1.0.1:8080/boot.ipxe") in lines


def test_every_directive_is_commented() -> None:
    """Each block of directives is introduced by a comment an operator can read."""
    for spec in (make_spec(**FULL, router="10.1.0.254", efi_arm64="a.efi"),
                 make_spec(**PROXY, efi_arm64="a.efi")):
        lines = ["", *render(spec).splitlines()]
        for i, line in enumerate(lines):
            if not line or line.startswith("#") or "  #" in line:
                continue
            j = i - 1
            while lines[j] and not lines[j].startswith("#"):
                j -= 1
            assert lines[j].startswith("#"), f"no comment above {line!r}"


def test_command_line_regenerates_the_file() -> None:
    spec = make_spec(**FULL, router="10.1.0.254", dns="10.1.0.53", lease_time="12h",
                     hosts=("52:54:00:12:34:56,10.1.0.20",), tftp_root=Path("/srv/tftp"))
    argv = command_line(spec).split()
    assert argv[:2] == ["pyinit", "dnsmasq"]
    assert f"# Generated by: {command_line(spec)}" in render(spec)
    args = dict(zip(argv[2::2], argv[3::2], strict=True))
    again = make_spec(mode=args["--mode"], server_url_text=args["--server-url"],
                      interface=args["--interface"], subnet=args["--subnet"],
                      dhcp_range=args["--range"], router=args["--router"], dns=args["--dns"],
                      lease_time=args["--lease-time"], hosts=(args["--host"],),
                      tftp_root=Path(args["--tftp-root"]))
    assert again == spec


@pytest.mark.parametrize(("extra", "error"), [
    ({"mode": "relay"}, "--mode: 'relay' is not one of proxy, full"),
    ({"server_url_text": "ftp://x/"}, "--server-url: 'ftp://x/' is not an http:// or https:// URL"),
    ({"server_url_text": "10.1.0.1:8080"},
     "--server-url: '10.1.0.1:8080' is not an http:// or https:// URL"),
    ({"server_url_text": "http:///boot"}, "--server-url: 'http:///boot' has no host"),
    ({"server_url_text": "http://a,b/"},
     "--server-url: 'http://a,b/' contains a blank, comma, quote or '#' (not allowed in a "
     "dnsmasq value)"),
    ({"server_url_text": "http://h/?x=1"}, "--server-url: 'http://h/?x=1' must not have a "
                                           "query or fragment"),
    ({"server_url_text": "http://h:99999"}, "--server-url: 'http://h:99999' has an invalid port"),
    ({"interface": "eth0 eth1"}, "--interface: 'eth0 eth1' is not a network interface name "
                                 "(1-15 characters: letters, digits, _ . - @)"),
    ({"interface": "a-very-long-interface"}, "--interface: 'a-very-long-interface' is not a "
     "network interface name (1-15 characters: letters, digits, _ . - @)"),
    ({"interface": ".."}, "--interface: '..' is not a network interface name "
                          "(1-15 characters: letters, digits, _ . - @)"),
    ({"tftp_root": Path("tftp")}, "--tftp-root: 'tftp' must be an absolute path without "
                                  "blanks, commas, quotes or '#'"),
    ({"subnet": "10.1.0.0/33"}, "--subnet: '10.1.0.0/33' is not an IPv4 network in CIDR form "
                                "('33' is not a valid netmask)"),
    ({"subnet": "10.1.0.5/24"}, "--subnet: '10.1.0.5/24' is not an IPv4 network in CIDR form "
                                "(10.1.0.5/24 has host bits set)"),
    ({"subnet": "10.1.0.0/31"}, "--subnet: 10.1.0.0/31 is too small for DHCP (/30 at most)"),
    ({"lease_time": "soon"}, "--lease-time: 'soon' is not a duration (e.g. 45m, 12h, 1d or "
                             "infinite)"),
    ({"lease_time": "60"}, "--lease-time: 60 is shorter than dnsmasq's minimum of 2 minutes"),
    ({"dhcp_range": None}, "--range: required in full mode (FIRST,LAST, e.g. "
                           "10.1.0.100,10.1.0.200)"),
    ({"dhcp_range": "10.1.0.100"}, "--range: '10.1.0.100' is not FIRST,LAST"),
    ({"dhcp_range": "10.1.0.100,x"}, "--range: 'x' is not an IPv4 address"),
    ({"dhcp_range": "10.1.0.200,10.1.0.100"}, "--range: 10.1.0.200 comes after 10.1.0.100"),
    ({"dhcp_range": "10.1.0.100,10.1.1.10"}, "--range: 10.1.1.10 is outside --subnet "
                                             "10.1.0.0/24"),
    ({"dhcp_range": "10.1.0.0,10.1.0.10"}, "--range: 10.1.0.0 is the network or broadcast "
                                           "address of 10.1.0.0/24"),
    ({"subnet": None, "dhcp_range": "10.1.0.100,10.1.1.10"},
     "--range: 10.1.0.100..10.1.1.10 spans several /24 networks: give --subnet"),
    ({"router": "10.2.0.1"}, "--router: 10.2.0.1 is outside --subnet 10.1.0.0/24"),
    ({"router": "gw"}, "--router: 'gw' is not an IPv4 address"),
    ({"dns": "10.1.0.53,"}, "--dns: '' is not an IPv4 address"),
    ({"hosts": ("52:54:00:12:34:56",)}, "--host: '52:54:00:12:34:56' is not MAC,ADDRESS "
                                        "(e.g. 52:54:00:12:34:56,10.1.0.20)"),
    ({"hosts": ("52:54:00:12:34,10.1.0.5",)}, "--host: '52:54:00:12:34,10.1.0.5' is not "
     "MAC,ADDRESS (e.g. 52:54:00:12:34:56,10.1.0.20)"),
    ({"hosts": ("52:54:00:12:34:56,10.9.0.5",)}, "--host: 10.9.0.5 (52:54:00:12:34:56) is "
                                                 "outside --subnet 10.1.0.0/24"),
    ({"hosts": ("52:54:00:12:34:56,10.1.0.5", "52-54-00-12-34-56,10.1.0.6")},
     "--host: 52-54-00-12-34-56 is given twice"),
    ({"efi_arm64": "x y"}, "--efi-arm64: 'x y' is not a file name under --tftp-root"),
    ({"efi_arm64": "../ipxe.efi"}, "--efi-arm64: '../ipxe.efi' is not a file name under "
                                   "--tftp-root"),
])
def test_full_mode_errors(extra: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_spec(**{**FULL, **extra})
    assert str(exc.value) == error


@pytest.mark.parametrize(("extra", "error"), [
    ({"subnet": None}, "--subnet: required in proxy mode (the network the other DHCP server "
                       "serves, e.g. 10.1.0.0/24)"),
    ({"dhcp_range": "10.1.0.100,10.1.0.200"}, "--range: only in full mode: in proxy mode the "
     "other DHCP server hands out addresses and options"),
    ({"router": "10.1.0.1"}, "--router: only in full mode: in proxy mode the other DHCP server "
                             "hands out addresses and options"),
    ({"dns": "10.1.0.1"}, "--dns: only in full mode: in proxy mode the other DHCP server "
                          "hands out addresses and options"),
    ({"hosts": ("52:54:00:12:34:56,10.1.0.5",)},
     "--host: only in full mode (proxy mode gives no addresses)"),
])
def test_proxy_mode_errors(extra: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_spec(**{**PROXY, **extra})
    assert str(exc.value) == error


def test_cli_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pyinit.conf"
    assert main(["dnsmasq", "--mode", "proxy", "--interface", "eth1", "--subnet",
                 "10.1.0.0/24", "--server-url", URL, "--tftp-root", str(tmp_path),
                 "-o", str(out)]) == 0
    assert out.read_text() == render(make_spec(**PROXY, tftp_root=tmp_path))
    err = capsys.readouterr().err
    assert err == (f"pyinit dnsmasq: warning: undionly.kpxe, ipxe.efi not in {tmp_path} "
                   "(apt install ipxe, or point --tftp-root at them)\n")


def test_cli_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dnsmasq", "--mode", "full", "--interface", "eth1", "--range",
                 "10.1.0.9,10.1.0.1", "--server-url", URL]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "pyinit dnsmasq: --range: 10.1.0.9 comes after 10.1.0.1\n"


def test_docs_show_the_current_full_mode_file() -> None:
    """docs/pxe.md promises the generated file "exactly": keep it so."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "pxe.md").read_text()
    spec = make_spec(**FULL, router="10.1.0.254", dns="10.1.0.53")
    assert f"```\n{render(spec)}```" in docs
