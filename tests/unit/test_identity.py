"""pyinit.identity: renderers (exact contents), detection per distro layout, the writer."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from pyinit import identity
from pyinit.action import Action, parse_action
from pyinit.errors import ConfigError
from pyinit.identity import (
    IdentityError,
    NetConfig,
    apply_identity,
    connection_uuid,
    detect_network_system,
    merge_authorized_keys,
    render_ifcfg,
    render_ifupdown,
    render_link,
    render_netplan,
    render_network,
    render_networkd,
    render_networkmanager,
    render_nocloud,
    resolve_in_root,
    sources_interfaces_d,
    update_hosts,
    write_file,
)

MAC = "52:54:00:12:34:56"
HDR = f"# Written by pyinit: the NIC with MAC address {MAC}.\n"
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo two@example"
STATIC = NetConfig(MAC, "static", "192.0.2.10/24", "192.0.2.1", ("192.0.2.53", "2001:db8::53"))
DHCP = NetConfig(MAC, "dhcp")
V6 = NetConfig(MAC, "static", "2001:db8::10/64", "2001:db8::1", ("2001:db8::53",))
UUID = connection_uuid(MAC)
AS_ROOT = os.geteuid() == 0


def act(**fields: Any) -> Action:
    return parse_action({"action": "writeImage", "sourceImage": "http://s/i.img",
                         "destinationDevice": "/dev/vda", **fields})


# --- renderers ---------------------------------------------------------------------------------

NETPLAN_STATIC = HDR + """network:
  version: 2
  ethernets:
    pyinit0:
      match:
        macaddress: "52:54:00:12:34:56"
      addresses:
        - "192.0.2.10/24"
      routes:
        - to: "default"
          via: "192.0.2.1"
      nameservers:
        addresses:
          - "192.0.2.53"
          - "2001:db8::53"
"""
NETPLAN_DHCP = HDR + """network:
  version: 2
  ethernets:
    pyinit0:
      match:
        macaddress: "52:54:00:12:34:56"
      dhcp4: true
"""
NETWORKD_STATIC = HDR + """[Match]
MACAddress=52:54:00:12:34:56
Type=ether

[Network]
Address=192.0.2.10/24
Gateway=192.0.2.1
DNS=192.0.2.53
DNS=2001:db8::53
"""
NETWORKD_DHCP = HDR + """[Match]
MACAddress=52:54:00:12:34:56
Type=ether

[Network]
DHCP=ipv4
"""
NM_HEAD = HDR + f"""[connection]
id=pyinit
uuid={UUID}
type=ethernet
autoconnect=true
autoconnect-priority=100

[ethernet]
mac-address=52:54:00:12:34:56

"""
NM_STATIC = NM_HEAD + """[ipv4]
method=manual
address1=192.0.2.10/24,192.0.2.1
dns=192.0.2.53;

[ipv6]
method=auto
dns=2001:db8::53;
"""
NM_DHCP = NM_HEAD + "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n"
NM_V6 = NM_HEAD + """[ipv4]
method=disabled

[ipv6]
method=manual
address1=2001:db8::10/64,2001:db8::1
dns=2001:db8::53;
"""
IFCFG_HEAD = HDR + """DEVICE=pyinit0
NAME=pyinit0
TYPE=Ethernet
HWADDR=52:54:00:12:34:56
ONBOOT=yes
"""
IFCFG_STATIC = IFCFG_HEAD + """BOOTPROTO=none
IPADDR=192.0.2.10
PREFIX=24
GATEWAY=192.0.2.1
DNS1=192.0.2.53
DNS2=2001:db8::53
"""
IFCFG_DHCP = IFCFG_HEAD + "BOOTPROTO=dhcp\n"
IFCFG_V6 = IFCFG_HEAD + """BOOTPROTO=none
IPV6INIT=yes
IPV6ADDR=2001:db8::10/64
IPV6_DEFAULTGW=2001:db8::1
DNS1=2001:db8::53
"""
IFUPDOWN_STATIC = HDR + """auto pyinit0
iface pyinit0 inet static
    address 192.0.2.10
    netmask 255.255.255.0
    gateway 192.0.2.1
    dns-nameservers 192.0.2.53 2001:db8::53
"""
IFUPDOWN_DHCP = HDR + "auto eth0\niface eth0 inet dhcp\n"
IFUPDOWN_V6 = HDR + """auto pyinit0
iface pyinit0 inet6 static
    address 2001:db8::10
    netmask 64
    gateway 2001:db8::1
    dns-nameservers 2001:db8::53
"""
NETPLAN = "etc/netplan/50-pyinit.yaml"
NETWORKD = "etc/systemd/network/10-pyinit.network"
NM = "etc/NetworkManager/system-connections/pyinit.nmconnection"
IFCFG = "etc/sysconfig/network-scripts/ifcfg-pyinit0"
IFUPDOWN = "etc/network/interfaces.d/pyinit"


@pytest.mark.parametrize(("render", "net", "path", "content", "mode"), [
    (render_netplan, STATIC, NETPLAN, NETPLAN_STATIC, 0o600),
    (render_netplan, DHCP, NETPLAN, NETPLAN_DHCP, 0o600),
    (render_networkd, STATIC, NETWORKD, NETWORKD_STATIC, 0o644),
    (render_networkd, DHCP, NETWORKD, NETWORKD_DHCP, 0o644),
    (render_networkmanager, STATIC, NM, NM_STATIC, 0o600),
    (render_networkmanager, DHCP, NM, NM_DHCP, 0o600),
    (render_networkmanager, V6, NM, NM_V6, 0o600),
    (render_ifcfg, STATIC, IFCFG, IFCFG_STATIC, 0o644),
    (render_ifcfg, DHCP, IFCFG, IFCFG_DHCP, 0o644),
    (render_ifcfg, V6, IFCFG, IFCFG_V6, 0o644),
    (lambda n: render_ifupdown(n, "pyinit0"), STATIC, IFUPDOWN, IFUPDOWN_STATIC, 0o644),
    (lambda n: render_ifupdown(n, "eth0"), DHCP, IFUPDOWN, IFUPDOWN_DHCP, 0o644),
    (lambda n: render_ifupdown(n, "pyinit0"), V6, IFUPDOWN, IFUPDOWN_V6, 0o644),
])
def test_renderer(render: Any, net: NetConfig, path: str, content: str, mode: int) -> None:
    assert render(net) == {path: (content, mode)}


def test_render_network_dispatches() -> None:
    assert render_network("netplan", DHCP, ifupdown_iface="x") == render_netplan(DHCP)
    assert render_network("networkd", DHCP, ifupdown_iface="x") == render_networkd(DHCP)
    assert render_network("networkmanager", DHCP, ifupdown_iface="x") == \
        render_networkmanager(DHCP)
    assert render_network("ifcfg", DHCP, ifupdown_iface="x") == render_ifcfg(DHCP)
    assert render_network("ifupdown", DHCP, ifupdown_iface="x") == render_ifupdown(DHCP, "x")


def test_link_names_the_nic_by_mac() -> None:
    text = HDR + "[Match]\nMACAddress=52:54:00:12:34:56\nType=ether\n\n[Link]\nName=pyinit0\n"
    assert render_link(DHCP) == {"etc/systemd/network/10-pyinit.link": (text, 0o644)}


def test_netconfig_normalises_mac_and_checks_static() -> None:
    assert NetConfig("52-54-00-AB-CD-EF", "dhcp").mac == "52:54:00:ab:cd:ef"
    with pytest.raises(ConfigError, match="mac"):
        NetConfig("nope", "dhcp")
    with pytest.raises(ConfigError, match="address"):
        NetConfig(MAC, "static", "192.0.2.10")


def test_connection_uuid_is_deterministic_per_mac() -> None:
    assert connection_uuid("52-54-00-12-34-56") == UUID
    assert connection_uuid("52:54:00:12:34:57") != UUID


def test_nocloud_seed() -> None:
    seed = "var/lib/cloud/seed/nocloud/"
    files = render_nocloud(MAC, hostname="web1", ssh_keys=(KEY1,), net=STATIC)
    assert files == {
        seed + "meta-data": ('instance-id: "pyinit-525400123456"\nlocal-hostname: "web1"\n',
                             0o600),
        seed + "user-data": (f'#cloud-config\nssh_authorized_keys:\n  - "{KEY1}"\n'
                             "disable_root: false\n", 0o600),
        seed + "network-config": (
            "\n".join(line[2:] for line in NETPLAN_STATIC.splitlines()[2:]) + "\n", 0o600),
    }
    bare = render_nocloud(MAC, hostname=None, ssh_keys=(), net=None)
    assert bare == {seed + "meta-data": ('instance-id: "pyinit-525400123456"\n', 0o600),
                    seed + "user-data": ("#cloud-config\n", 0o600)}


@pytest.mark.parametrize(("existing", "name", "expected"), [
    (None, "web1", "127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n"
                   "::1\tlocalhost ip6-localhost ip6-loopback\n"),
    ("127.0.0.1 localhost\n127.0.1.1 debian\n10.0.0.5 db\n", "web1.example.org",
     "127.0.0.1 localhost\n127.0.1.1\tweb1.example.org web1\n10.0.0.5 db\n"),
    ("127.0.1.1 a\n# comment\n127.0.1.1 b\n", "web1", "127.0.1.1\tweb1\n# comment\n"),
    ("::1 localhost", "web1", "::1 localhost\n127.0.1.1\tweb1\n"),
])
def test_update_hosts(existing: str | None, name: str, expected: str) -> None:
    assert update_hosts(existing, name) == expected
    assert update_hosts(expected, name) == expected  # idempotent


@pytest.mark.parametrize(("existing", "keys", "expected"), [
    (None, (KEY1,), KEY1 + "\n"),
    (KEY1, (KEY1, KEY2), f"{KEY1}\n{KEY2}\n"),
    # same key material with other options/comment: already there
    ('from="10.0.0.0/8" ' + KEY1.replace("one@example", "other"), (KEY1,),
     'from="10.0.0.0/8" ' + KEY1.replace("one@example", "other") + "\n"),
    ("", (KEY2, KEY2), KEY2 + "\n"),
])
def test_merge_authorized_keys(existing: str | None, keys: tuple[str, ...],
                               expected: str) -> None:
    assert merge_authorized_keys(existing, keys) == expected


@pytest.mark.parametrize(("existing", "expected"), [
    (None, "auto lo\niface lo inet loopback\n\nsource-directory /etc/network/interfaces.d\n"),
    ("auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n", None),
    ("source-directory /etc/network/interfaces.d\n", None),
    ("auto lo\niface lo inet loopback", "auto lo\niface lo inet loopback\n\n"
                                        "source-directory /etc/network/interfaces.d\n"),
])
def test_sources_interfaces_d(existing: str | None, expected: str | None) -> None:
    assert sources_interfaces_d(existing) == (existing if expected is None else expected)


# --- paths inside the target -------------------------------------------------------------------

def test_resolve_in_root_never_leaves_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/abs").symlink_to("/run/x")
    (tmp_path / "etc/up").symlink_to("../../../../../tmp")
    assert resolve_in_root(tmp_path, "/lib/systemd") == tmp_path / "usr/lib/systemd"
    assert resolve_in_root(tmp_path, "etc/abs") == tmp_path / "run/x"
    assert resolve_in_root(tmp_path, "etc/abs", follow_last=False) == tmp_path / "etc/abs"
    assert resolve_in_root(tmp_path, "etc/up/f") == tmp_path / "tmp/f"
    assert resolve_in_root(tmp_path, "../../etc") == tmp_path / "etc"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(IdentityError, match="symbolic links"):
        resolve_in_root(tmp_path, "loop/x")


def test_write_file_refuses_a_final_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "installer-run"
    outside.mkdir()
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").symlink_to(outside / "hostname")
    with pytest.raises(IdentityError, match="symlink"):
        write_file(root, "etc/hostname", "web1\n", 0o644)
    assert list(outside.iterdir()) == []


def test_write_file_through_directory_symlink_stays_inside(tmp_path: Path) -> None:
    host = Path("/pyinit-test-not-on-the-host")
    assert not host.exists()
    root = tmp_path / "target"
    root.mkdir()
    (root / "root").symlink_to(host)  # absolute: means <root>/pyinit-test-… in the target
    write_file(root, "root/.ssh/authorized_keys", KEY1 + "\n", 0o600, dir_mode=0o700)
    assert not host.exists()
    inside = root / host.name / ".ssh"
    assert (inside / "authorized_keys").read_text() == KEY1 + "\n"
    assert stat.S_IMODE(inside.stat().st_mode) == 0o700


def test_write_file_is_atomic_and_sets_mode(tmp_path: Path) -> None:
    write_file(tmp_path, "etc/a/b", "one\n", 0o600)
    write_file(tmp_path, "etc/a/b", "two\n", 0o640)
    path = tmp_path / "etc/a/b"
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "etc/a").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "etc/a").iterdir()) == ["b"]  # no temp left


def test_selinux_label_is_copied_from_the_replaced_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    labels = {str(tmp_path / "etc/hostname"): b"system_u:object_r:hostname_etc_t:s0",
              str(tmp_path / "etc"): b"system_u:object_r:etc_t:s0"}
    set_calls: list[tuple[str, bytes]] = []

    def getxattr(path: Any, name: str, *, follow_symlinks: bool = True) -> bytes:
        assert name == "security.selinux"
        if str(path) not in labels:
            raise OSError(61, "No data available")
        return labels[str(path)]

    def setxattr(path: Any, name: str, value: bytes, *, follow_symlinks: bool = True) -> None:
        set_calls.append((Path(path).name, value))

    monkeypatch.setattr(identity.os, "getxattr", getxattr)
    monkeypatch.setattr(identity.os, "setxattr", setxattr)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("old\n")
    write_file(tmp_path, "etc/hostname", "web1\n", 0o644)
    write_file(tmp_path, "etc/new", "x\n", 0o644)
    assert set_calls == [(".hostname.pyinit-tmp", b"system_u:object_r:hostname_etc_t:s0"),
                         (".new.pyinit-tmp", b"system_u:object_r:etc_t:s0")]


# --- realistic targets -------------------------------------------------------------------------

def _tree(root: Path, *paths: str, links: dict[str, str] | None = None) -> Path:
    """Files (or directories, ending in /) and symlinks of a target."""
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    for rel in paths:
        path = resolve_in_root(root, rel)
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    return root


MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib"}


def ubuntu_server(root: Path) -> Path:
    return _tree(root, "usr/sbin/netplan", "etc/netplan/", "usr/lib/systemd/systemd-networkd",
                 "etc/systemd/network/", "usr/lib/systemd/systemd-udevd", "usr/bin/cloud-init",
                 "etc/cloud/cloud.cfg", "etc/hosts", "usr/lib/systemd/system/"
                 "systemd-networkd.service", links={**MERGED_USR, "etc/resolv.conf":
                                                    "../run/systemd/resolve/stub-resolv.conf"})


def debian_cloud_ifupdown(root: Path) -> Path:
    root = _tree(root, "sbin/ifup", "etc/network/interfaces.d/", "lib/systemd/systemd-networkd",
                 "etc/systemd/network/", "lib/systemd/systemd-udevd", "usr/bin/cloud-init",
                 "etc/cloud/cloud.cfg", "etc/resolv.conf")
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n")
    return root


def debian_trixie_cloud(root: Path) -> Path:
    return _tree(root, "usr/sbin/netplan", "usr/lib/systemd/systemd-networkd",
                 "etc/systemd/network/", "etc/cloud/cloud.cfg", links=MERGED_USR)


def debian_minimal(root: Path) -> Path:
    return _tree(root, "usr/lib/systemd/systemd-networkd", "etc/systemd/network/",
                 "usr/lib/systemd/system/systemd-networkd.service",
                 "usr/lib/systemd/system/systemd-networkd.socket", "etc/resolv.conf",
                 "usr/lib/systemd/systemd-udevd", links=MERGED_USR)


def rhel9(root: Path) -> Path:
    return _tree(root, "usr/sbin/NetworkManager", "etc/NetworkManager/system-connections/",
                 "etc/sysconfig/network-scripts/", "usr/lib/systemd/systemd-udevd",
                 links=MERGED_USR)


def fedora(root: Path) -> Path:
    return _tree(root, "usr/sbin/NetworkManager", "etc/NetworkManager/", links=MERGED_USR)


def centos7_initscripts(root: Path) -> Path:
    return _tree(root, "sbin/ifup", "etc/sysconfig/network-scripts/ifup-eth",
                 "etc/sysconfig/network-scripts/ifcfg-lo")


def busybox(root: Path) -> Path:
    root = _tree(root, "bin/busybox", "etc/network/", links={"sbin/ifup": "../bin/busybox"})
    (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
    return root


def busybox_no_applet_links(root: Path) -> Path:
    return _tree(root, "bin/busybox", "etc/network/interfaces")


def stale_netplan_dir(root: Path) -> Path:
    return _tree(root, "etc/netplan/", "etc/NetworkManager/", "sbin/ifup")


def empty(root: Path) -> Path:
    return root


@pytest.mark.parametrize(("layout", "expected"), [
    (ubuntu_server, "netplan"),
    (debian_cloud_ifupdown, "ifupdown"),
    (debian_trixie_cloud, "netplan"),
    (debian_minimal, "networkd"),
    (rhel9, "networkmanager"),
    (fedora, "networkmanager"),
    (centos7_initscripts, "ifcfg"),
    (busybox, "ifupdown"),
    (busybox_no_applet_links, "ifupdown"),
    (stale_netplan_dir, "ifupdown"),  # directories without binaries do not count
    (empty, None),
])
def test_detect_network_system(tmp_path: Path, layout: Any, expected: str | None) -> None:
    assert detect_network_system(layout(tmp_path)) == expected


def test_detection_does_not_follow_absolute_links_to_the_installer(tmp_path: Path) -> None:
    # The installer itself might have /usr/sbin/NetworkManager: the target's /sbin -> /usr/sbin
    # must be looked up in the target.
    root = _tree(tmp_path / "t", "etc/network/interfaces", links={"sbin": "/usr/sbin"})
    assert detect_network_system(root) == "ifupdown"


STATIC_ACTION = {"hostname": "web1", "sshKeys": [KEY1], "address": "192.0.2.10/24",
                 "gateway": "192.0.2.1", "nameserver": "192.0.2.53"}


def _files(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = (path.read_text(), stat.S_IMODE(path.stat().st_mode))
    return out


def test_ubuntu_server(tmp_path: Path) -> None:
    root = ubuntu_server(tmp_path)
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 ubuntu\n")
    result = apply_identity(root, act(**STATIC_ACTION), mac="52-54-00-12-34-56",
                            interface="eth0")
    assert result.network_system == "netplan"
    assert result.written == ("/etc/hostname", "/etc/hosts", "/root/.ssh/authorized_keys",
                              "/etc/netplan/50-pyinit.yaml", "/etc/cloud/cloud.cfg.d/"
                              "99-pyinit-network.cfg")
    assert result.notes == ()
    assert (root / "etc/hostname").read_text() == "web1\n"
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost\n127.0.1.1\tweb1\n"
    assert (root / "etc/netplan/50-pyinit.yaml").read_text().startswith(HDR + "network:\n")
    assert (root / "etc/cloud/cloud.cfg.d/99-pyinit-network.cfg").read_text().endswith(
        "network:\n  config: disabled\n")
    ssh = root / "root/.ssh"
    assert stat.S_IMODE(ssh.stat().st_mode) == 0o700
    assert stat.S_IMODE((ssh / "authorized_keys").stat().st_mode) == 0o600
    assert (ssh / "authorized_keys").read_text() == KEY1 + "\n"
    if AS_ROOT:
        assert (ssh.stat().st_uid, ssh.stat().st_gid) == (0, 0)
        st = (ssh / "authorized_keys").stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
    # resolv.conf is resolved's symlink: left alone
    assert (root / "etc/resolv.conf").is_symlink()


def test_idempotent(tmp_path: Path) -> None:
    root = debian_cloud_ifupdown(tmp_path)
    action = act(**{**STATIC_ACTION, "sshKeys": [KEY1, KEY2]})
    first = apply_identity(root, action, mac=MAC, interface="eth0")
    before = _files(root)
    second = apply_identity(root, action, mac=MAC, interface="eth0")
    assert _files(root) == before
    assert second.network_system == first.network_system == "ifupdown"
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{KEY1}\n{KEY2}\n"


def test_debian_cloud_ifupdown(tmp_path: Path) -> None:
    root = debian_cloud_ifupdown(tmp_path)
    result = apply_identity(root, act(**STATIC_ACTION), mac=MAC, interface="eth0")
    assert result.network_system == "ifupdown"
    # udev in the target: the .link names the NIC pyinit0, the stanza is for pyinit0
    assert (root / IFUPDOWN).read_text() == IFUPDOWN_STATIC.replace(
        " 2001:db8::53", "")
    assert (root / "etc/systemd/network/10-pyinit.link").read_text() == \
        render_link(DHCP)["etc/systemd/network/10-pyinit.link"][0]
    assert "/etc/network/interfaces" not in result.written  # already sources interfaces.d
    assert (root / "etc/resolv.conf").read_text() == \
        "# Written by pyinit\nnameserver 192.0.2.53\n"
    assert "/etc/cloud/cloud.cfg.d/99-pyinit-network.cfg" in result.written


def test_busybox_uses_the_installer_name_and_sources_interfaces_d(tmp_path: Path) -> None:
    root = busybox(tmp_path)
    result = apply_identity(root, act(network="dhcp"), mac=MAC, interface="eth0")
    assert result.written == ("/etc/network/interfaces.d/pyinit", "/etc/network/interfaces")
    assert (root / IFUPDOWN).read_text() == IFUPDOWN_DHCP
    assert (root / "etc/network/interfaces").read_text() == (  # what busybox's ifup reads
        "auto lo\niface lo inet loopback\n\nsource-directory /etc/network/interfaces.d\n")
    assert not (root / "etc/systemd").exists()


def test_debian_minimal_enables_networkd(tmp_path: Path) -> None:
    root = debian_minimal(tmp_path)
    result = apply_identity(root, act(**STATIC_ACTION), mac=MAC, interface="eth0")
    assert result.network_system == "networkd"
    assert (root / NETWORKD).read_text() == NETWORKD_STATIC.replace("DNS=2001:db8::53\n", "")
    assert result.linked == (
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket")
    link = root / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert os.readlink(link) == "/usr/lib/systemd/system/systemd-networkd.service"
    assert (root / "etc/resolv.conf").read_text().endswith("nameserver 192.0.2.53\n")
    again = apply_identity(root, act(**STATIC_ACTION), mac=MAC, interface="eth0")
    assert again.linked == ()


def test_rhel9_gets_a_root_only_keyfile(tmp_path: Path) -> None:
    root = rhel9(tmp_path)
    result = apply_identity(root, act(network="dhcp"), mac=MAC, interface="eth0")
    assert result.network_system == "networkmanager"
    assert result.written == ("/" + NM,)
    path = root / NM
    assert path.read_text() == NM_DHCP
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if AS_ROOT:
        assert path.stat().st_uid == 0
    assert list((root / "etc/sysconfig/network-scripts").iterdir()) == []


def test_centos7_ifcfg(tmp_path: Path) -> None:
    root = centos7_initscripts(tmp_path)
    result = apply_identity(root, act(network="dhcp"), mac=MAC, interface="eth0")
    assert result.network_system == "ifcfg"
    assert (root / IFCFG).read_text() == IFCFG_DHCP


def test_no_network_system_writes_nothing_and_says_so(tmp_path: Path) -> None:
    result = apply_identity(tmp_path, act(**STATIC_ACTION), mac=MAC, interface="eth0")
    assert result.network_system is None
    assert result.notes == ("network: no network system found in the target; nothing written",)
    assert result.written == ("/etc/hostname", "/etc/hosts", "/root/.ssh/authorized_keys")


def test_network_none_leaves_network_alone(tmp_path: Path) -> None:
    root = ubuntu_server(tmp_path)
    result = apply_identity(root, act(hostname="web1"), mac=MAC, interface="eth0")
    assert result.written == ("/etc/hostname", "/etc/hosts")
    assert not (root / NETPLAN).exists()


def test_cloud_init_puts_the_network_in_the_seed(tmp_path: Path) -> None:
    root = ubuntu_server(tmp_path)
    result = apply_identity(root, act(**STATIC_ACTION, cloudInit=True), mac=MAC,
                            interface="eth0")
    seed = "/var/lib/cloud/seed/nocloud/"
    assert result.written == ("/etc/hostname", "/etc/hosts", "/root/.ssh/authorized_keys",
                              seed + "meta-data", seed + "user-data", seed + "network-config")
    assert result.notes == ("network: written to the cloud-init seed (cloudInit), not the "
                            "target's own files",)
    assert not (root / NETPLAN).exists()
    assert not (root / "etc/cloud/cloud.cfg.d").exists()
    assert (root / seed.lstrip("/") / "network-config").read_text().startswith("version: 2\n")


def test_cloud_init_without_cloud_init_in_the_target_is_noted(tmp_path: Path) -> None:
    root = fedora(tmp_path)
    result = apply_identity(root, act(cloudInit=True), mac=MAC, interface="eth0")
    assert result.notes == ("cloudInit: the target has no cloud-init; the seed will not be read",)


def test_hostname_symlink_out_of_the_target_is_refused(tmp_path: Path) -> None:
    installer = tmp_path / "installer"
    installer.mkdir()
    (installer / "hostname").write_text("installer\n")
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").symlink_to(installer / "hostname")
    with pytest.raises(IdentityError, match="/etc/hostname: is a symlink"):
        apply_identity(root, act(hostname="web1"), mac=MAC, interface="eth0")
    assert (installer / "hostname").read_text() == "installer\n"


def test_paths_resolving_into_run_are_refused(tmp_path: Path) -> None:
    # /root -> /run/root (bound from the installer while the target is mounted)
    root = _tree(tmp_path, "run/", links={"root": "/run/root"})
    with pytest.raises(IdentityError, match="does not persist"):
        apply_identity(root, act(sshKeys=[KEY1]), mac=MAC, interface="eth0")
    assert list((root / "run").iterdir()) == []


def test_bound_resolv_conf_is_not_written(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = debian_minimal(tmp_path)
    real = identity._is_mount_point
    bound = root / "etc/resolv.conf"
    monkeypatch.setattr(identity, "_is_mount_point", lambda p: p == bound or real(p))
    result = apply_identity(root, act(**STATIC_ACTION), mac=MAC, interface="eth0")
    assert "/etc/resolv.conf" not in result.written
    assert result.notes == ("resolv.conf: the installer's is bound over the target's; not "
                            "written (nameservers are in the network configuration)",)
    assert bound.read_text() == ""
    with pytest.raises(IdentityError, match="mount point"):
        write_file(root, "etc/resolv.conf", "x\n", 0o644)
