"""The installed system's identity: host name, root's SSH keys, network configuration, and an
optional cloud-init NoCloud seed, written into the mounted target (issue #5).

Everything is rooted at ``root`` (the target's mount point). The renderers are pure and return
``{path relative to root: (content, mode)}``; :func:`apply_identity` is the thin writer.

Which network system to write for is read from the target, never assumed
(:func:`detect_network_system`). The NIC is matched by MAC address wherever the system can do it
(netplan, systemd-networkd, NetworkManager, RHEL ifcfg): the installer's kernel name (``eth0``)
is not the name the target's udev will give it (``enp1s0``). ifupdown cannot match by MAC; see
:func:`ifupdown_name`.

Writes never leave the target: every path is resolved the way the target would see it (a
symlink to ``/usr/lib`` means ``<root>/usr/lib``, ``..`` stops at ``<root>``), a final
component that is a symlink is refused, and files are replaced atomically (temporary file,
fsync, rename). Running it twice gives the same files.

The YAML files (netplan, the seed) are emitted by hand: PyYAML is not in the runtime and the
data has a fixed shape. Every string is double-quoted, which also keeps YAML 1.1 parsers
(netplan's libyaml) from reading a MAC such as ``52:54:00:12:34:56`` as a base-60 number.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pyinit import macaddr, rootpath
from pyinit.action import Action
from pyinit.errors import ConfigError, PyinitError

NetworkSystem = Literal["netplan", "networkd", "networkmanager", "ifupdown", "ifcfg"]
Files = dict[str, tuple[str, int]]  # path relative to the target root -> (content, mode)

# The name pyinit gives the NIC wherever a name is needed and the target renames by MAC:
# outside the kernel's ethN namespace, so a rename can never race with the kernel's names.
NIC_NAME = "pyinit0"
HEADER = "Written by pyinit: the NIC with MAC address {mac}."
_UUID_NAMESPACE = uuid.UUID("6f1c1d0e-8b7a-5c4e-9d2f-3a1b2c3d4e5f")
_SELINUX_XATTR = "security.selinux"


class IdentityError(PyinitError):
    """The target cannot be given its identity (a path escapes it, a file is a symlink)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"target {path}: {reason}")


# --- paths inside the target ------------------------------------------------------------------

def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``path`` as the target sees it, under ``root`` (:func:`pyinit.rootpath.resolve`); with
    ``follow_last=False`` a final symlink is not followed."""
    try:
        return rootpath.resolve(root, path, follow_last=follow_last)
    except rootpath.SymlinkLoop as exc:
        raise IdentityError(exc.path, "too many levels of symbolic links") from exc


def _exists(root: Path, *paths: str) -> bool:
    return any(resolve_in_root(root, p).exists() for p in paths)


def _is_dir(root: Path, *paths: str) -> bool:
    return any(resolve_in_root(root, p).is_dir() for p in paths)


def _read(root: Path, path: str) -> str | None:
    try:
        return resolve_in_root(root, path).read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


# --- which network system ---------------------------------------------------------------------

_NETPLAN = ("usr/sbin/netplan", "usr/bin/netplan", "sbin/netplan")
_NETWORKMANAGER = ("usr/sbin/NetworkManager", "sbin/NetworkManager", "usr/bin/NetworkManager")
_IFUP = ("sbin/ifup", "usr/sbin/ifup")
_NETWORKD = ("usr/lib/systemd/systemd-networkd", "lib/systemd/systemd-networkd")
_UDEVD = ("usr/lib/systemd/systemd-udevd", "lib/systemd/systemd-udevd")
_CLOUD_INIT = ("usr/bin/cloud-init", "etc/cloud/cloud.cfg")


def detect_network_system(root: Path) -> NetworkSystem | None:
    """The network system the target will run, from what is installed in it. First match wins:

    1. ``netplan``: a netplan binary (Ubuntu; Debian 13 cloud). It renders for networkd or
       NetworkManager itself, so it beats both. A bare ``/etc/netplan`` without the binary is a
       leftover and does not count.
    2. ``networkmanager``: the NetworkManager binary (Fedora, RHEL 8/9 — even where
       ``/etc/sysconfig/network-scripts`` still exists —, desktops). Keyfiles work on every
       NetworkManager, whatever its plugins.
    3. ``ifcfg``: ``/etc/sysconfig/network-scripts`` without NetworkManager (legacy initscripts).
    4. ``ifupdown``: an ``ifup`` binary (Debian with ifupdown, busybox). On Debian systemd-networkd
       is installed but disabled beside it, so ifupdown must win over networkd.
    5. ``networkd``: systemd-networkd and ``/etc/systemd/network`` (minimal Debian/Arch).
    6. ``ifupdown``: ``/etc/network/interfaces`` alone (a busybox rootfs without the applet link).

    None when nothing is found: the caller writes no network configuration and says so.
    """
    if _exists(root, *_NETPLAN):
        return "netplan"
    if _exists(root, *_NETWORKMANAGER):
        return "networkmanager"
    if _is_dir(root, "etc/sysconfig/network-scripts"):
        return "ifcfg"
    if _exists(root, *_IFUP):
        return "ifupdown"
    if _exists(root, *_NETWORKD) and _is_dir(root, "etc/systemd/network"):
        return "networkd"
    if _exists(root, "etc/network/interfaces"):
        return "ifupdown"
    return None


# --- what to write -----------------------------------------------------------------------------

@dataclass(frozen=True)
class NetConfig:
    """The target's network configuration for the NIC with ``mac`` (lower case, colons)."""

    mac: str
    mode: Literal["dhcp", "static"]
    address: str | None = None  # CIDR, static only
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()
    hostname: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mac", macaddr.parse(self.mac))
        if self.mode == "static":
            if not self.address or "/" not in self.address:
                raise ConfigError("address", f"static needs address/prefix: {self.address!r}")
            ipaddress.ip_interface(self.address)

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        return ipaddress.ip_interface(self.address) if self.mode == "static" and self.address \
            else None

    def dns(self, version: int) -> list[str]:
        return [s for s in self.nameservers if ipaddress.ip_address(s).version == version]


def net_config(action: Action, mac: str) -> NetConfig | None:
    """The action's network fields as a :class:`NetConfig`; None for ``network: none``."""
    if action.network == "none":
        return None
    return NetConfig(mac=mac, mode=action.network, address=action.address,
                     gateway=action.gateway or None, nameservers=action.nameservers,
                     hostname=action.hostname)


def _yaml(value: object, indent: int = 0) -> list[str]:
    """Block-style YAML for dicts of dicts/lists/str/bool/int; strings double-quoted."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list):
                lines.append(f"{pad}{key}:")
                lines += _yaml(item, indent + 2)
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping):
                sub = _yaml(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def netplan_ethernet(net: NetConfig) -> dict[str, object]:
    """The netplan v2 definition of the NIC (also cloud-init's network-config v2)."""
    eth: dict[str, object] = {"match": {"macaddress": net.mac}}
    iface = net.interface
    if iface is None:
        eth["dhcp4"] = True
    else:
        eth["addresses"] = [str(iface)]
        if net.gateway:
            eth["routes"] = [{"to": "default", "via": net.gateway}]
    if net.nameservers:
        eth["nameservers"] = {"addresses": list(net.nameservers)}
    return {"version": 2, "ethernets": {NIC_NAME: eth}}


def render_netplan(net: NetConfig) -> Files:
    body = _yaml({"network": netplan_ethernet(net)})
    text = f"# {HEADER.format(mac=net.mac)}\n" + "\n".join(body) + "\n"
    return {"etc/netplan/50-pyinit.yaml": (text, 0o600)}


def render_networkd(net: NetConfig) -> Files:
    lines = [f"# {HEADER.format(mac=net.mac)}", "[Match]", f"MACAddress={net.mac}",
             "Type=ether", "", "[Network]"]
    iface = net.interface
    if iface is None:
        lines.append("DHCP=ipv4")
    else:
        lines.append(f"Address={iface}")
        if net.gateway:
            lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={server}" for server in net.nameservers]
    return {"etc/systemd/network/10-pyinit.network": ("\n".join(lines) + "\n", 0o644)}


def connection_uuid(mac: str) -> str:
    """NetworkManager's connection UUID: the same for the same MAC, every time."""
    return str(uuid.uuid5(_UUID_NAMESPACE, macaddr.parse(mac)))


def render_networkmanager(net: NetConfig) -> Files:
    """A keyfile. ``autoconnect-priority`` makes it win over profiles the image already has for
    the same device (``Wired connection 1``, ``System eth0``)."""
    iface = net.interface
    sections: dict[int, list[str]] = {4: [], 6: []}
    for version in (4, 6):
        if iface is not None and iface.version == version:
            gateway = f",{net.gateway}" if net.gateway else ""
            sections[version] = ["method=manual", f"address1={iface}{gateway}"]
        elif iface is not None and version == 4:
            sections[version] = ["method=disabled"]
        else:
            sections[version] = ["method=auto"]
        dns = net.dns(version)
        if dns:
            sections[version].append("dns=" + "".join(f"{s};" for s in dns))
    lines = [f"# {HEADER.format(mac=net.mac)}", "[connection]", "id=pyinit",
             f"uuid={connection_uuid(net.mac)}", "type=ethernet", "autoconnect=true",
             "autoconnect-priority=100", "", "[ethernet]", f"mac-address={net.mac}", "",
             "[ipv4]", *sections[4], "", "[ipv6]", *sections[6]]
    path = "etc/NetworkManager/system-connections/pyinit.nmconnection"
    return {path: ("\n".join(lines) + "\n", 0o600)}


def render_ifcfg(net: NetConfig) -> Files:
    """Legacy initscripts. ``DEVICE`` is what initscripts' udev helper renames the NIC with
    ``HWADDR`` to."""
    lines = [f"# {HEADER.format(mac=net.mac)}", f"DEVICE={NIC_NAME}", f"NAME={NIC_NAME}",
             "TYPE=Ethernet", f"HWADDR={net.mac}", "ONBOOT=yes"]
    iface = net.interface
    if iface is None:
        lines.append("BOOTPROTO=dhcp")
    elif iface.version == 4:
        lines += ["BOOTPROTO=none", f"IPADDR={iface.ip}", f"PREFIX={iface.network.prefixlen}"]
        if net.gateway:
            lines.append(f"GATEWAY={net.gateway}")
    else:
        lines += ["BOOTPROTO=none", "IPV6INIT=yes", f"IPV6ADDR={iface}"]
        if net.gateway:
            lines.append(f"IPV6_DEFAULTGW={net.gateway}")
    lines += [f"DNS{i}={server}" for i, server in enumerate(net.nameservers, 1)]
    path = f"etc/sysconfig/network-scripts/ifcfg-{NIC_NAME}"
    return {path: ("\n".join(lines) + "\n", 0o644)}


def ifupdown_name(interface: str, *, udev_links: bool) -> str:
    """ifupdown names interfaces and cannot match a MAC. With systemd-udevd in the target a
    ``.link`` file (:func:`render_link`) names the NIC :data:`NIC_NAME`, and the stanza is for
    that; without it (busybox, sysvinit) the kernel's name stays, and the name the installer saw
    (``interface``) is the best guess: same kernel enumeration, not a guarantee."""
    return NIC_NAME if udev_links else interface


def render_link(net: NetConfig) -> Files:
    """A systemd ``.link`` naming the NIC with the MAC :data:`NIC_NAME` (sorts before
    ``99-default.link``; without ``NamePolicy=`` its ``Name=`` applies)."""
    lines = [f"# {HEADER.format(mac=net.mac)}", "[Match]", f"MACAddress={net.mac}",
             "Type=ether", "", "[Link]", f"Name={NIC_NAME}"]
    return {"etc/systemd/network/10-pyinit.link": ("\n".join(lines) + "\n", 0o644)}


def render_ifupdown(net: NetConfig, name: str) -> Files:
    iface = net.interface
    family = "inet6" if iface is not None and iface.version == 6 else "inet"
    lines = [f"# {HEADER.format(mac=net.mac)}", f"auto {name}"]
    if iface is None:
        lines.append(f"iface {name} inet dhcp")
    else:
        # address + netmask rather than address/prefix: busybox's ifup understands it too.
        mask = iface.netmask if iface.version == 4 else iface.network.prefixlen
        lines += [f"iface {name} {family} static", f"    address {iface.ip}",
                  f"    netmask {mask}"]
        if net.gateway:
            lines.append(f"    gateway {net.gateway}")
    if net.nameservers:
        lines.append("    dns-nameservers " + " ".join(net.nameservers))
    return {"etc/network/interfaces.d/pyinit": ("\n".join(lines) + "\n", 0o644)}


# source-directory, not Debian's "source /etc/network/interfaces.d/*": busybox's ifup reads a
# "source" line's argument as one file name (no wildcards) and fails on the whole file; both
# read source-directory (Debian's ifupdown since 0.7).
_SOURCE_LINE = "source-directory /etc/network/interfaces.d"


def sources_interfaces_d(existing: str | None) -> str:
    """``/etc/network/interfaces`` with a line that sources ``interfaces.d`` (Debian's default
    has one; a busybox rootfs usually does not). Other lines are kept."""
    text = existing or "auto lo\niface lo inet loopback\n"
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and (
                (words[0] == "source" and words[1] in ("/etc/network/interfaces.d/*",
                                                       "interfaces.d/*"))
                or (words[0] == "source-directory"
                    and words[1].rstrip("/") in ("/etc/network/interfaces.d", "interfaces.d"))):
            return text
    if not text.endswith("\n"):
        text += "\n"
    return text + "\n" + _SOURCE_LINE + "\n"


def render_resolv_conf(nameservers: Iterable[str]) -> str:
    return "# Written by pyinit\n" + "".join(f"nameserver {s}\n" for s in nameservers)


def render_network(system: NetworkSystem, net: NetConfig, *, ifupdown_iface: str) -> Files:
    """The files for ``system``; ``ifupdown_iface`` only matters for ifupdown."""
    if system == "netplan":
        return render_netplan(net)
    if system == "networkd":
        return render_networkd(net)
    if system == "networkmanager":
        return render_networkmanager(net)
    if system == "ifcfg":
        return render_ifcfg(net)
    return render_ifupdown(net, ifupdown_iface)


# --- host name, SSH keys, cloud-init ---------------------------------------------------------

def update_hosts(existing: str | None, hostname: str) -> str:
    """``/etc/hosts`` with one ``127.0.1.1`` line for ``hostname`` (Debian's convention; with a
    domain: ``127.0.1.1 host.example.org host``). Other lines are kept; without a file, the
    usual localhost lines are written too."""
    if existing is None:
        existing = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    short = hostname.split(".", 1)[0]
    names = f"{hostname} {short}" if short != hostname else hostname
    ours = f"127.0.1.1\t{names}"
    lines = existing.splitlines()
    out: list[str] = []
    placed = False
    for line in lines:
        if line.split("#", 1)[0].split()[:1] == ["127.0.1.1"]:
            if not placed:
                out.append(ours)
                placed = True
            continue
        out.append(line)
    if not placed:
        # after the 127.0.0.1 line when there is one, else at the end
        at = next((i + 1 for i, line in enumerate(out) if line.split()[:1] == ["127.0.0.1"]),
                  len(out))
        out.insert(at, ours)
    return "\n".join(out) + "\n"


def _key_body(line: str) -> tuple[str, str] | None:
    """(type, base64) of an authorized_keys line, options and comment ignored."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word.startswith(("ssh-", "ecdsa-", "sk-")):
            return word, words[i + 1]
    return None


def merge_authorized_keys(existing: str | None, keys: Iterable[str]) -> str:
    """``existing`` with the ``keys`` that are not in it yet (same type and key material, whatever
    the options or comment) appended. Existing lines are kept as they are."""
    text = existing or ""
    if text and not text.endswith("\n"):
        text += "\n"
    seen = {_key_body(line) or line.strip() for line in text.splitlines()}
    for key in keys:
        ident = _key_body(key) or key.strip()
        if ident not in seen:
            text += key.strip() + "\n"
            seen.add(ident)
    return text


def instance_id(mac: str) -> str:
    return "pyinit-" + macaddr.parse(mac).replace(":", "")


def render_nocloud(mac: str, *, hostname: str | None, ssh_keys: tuple[str, ...],
                   net: NetConfig | None) -> Files:
    """A cloud-init NoCloud seed in ``/var/lib/cloud/seed/nocloud``. ``disable_root: false``
    keeps cloud-init from rewriting root's keys with its "login as the default user" prefix:
    ``sshKeys`` are root's keys; the image's default user gets them too."""
    seed = "var/lib/cloud/seed/nocloud/"
    meta: dict[str, object] = {"instance-id": instance_id(mac)}
    if hostname:
        meta["local-hostname"] = hostname
    user: dict[str, object] = {}
    if ssh_keys:
        user["ssh_authorized_keys"] = list(ssh_keys)
        user["disable_root"] = False
    files: Files = {
        seed + "meta-data": ("\n".join(_yaml(meta)) + "\n", 0o600),
        seed + "user-data": ("\n".join(["#cloud-config", *_yaml(user)]) + "\n", 0o600),
    }
    if net is not None:
        files[seed + "network-config"] = ("\n".join(_yaml(netplan_ethernet(net))) + "\n", 0o600)
    return files


CLOUD_INIT_NETWORK_OFF = "etc/cloud/cloud.cfg.d/99-pyinit-network.cfg"


# --- the writer --------------------------------------------------------------------------------

@dataclass(frozen=True)
class IdentityResult:
    """What :func:`apply_identity` did: files written (``/etc/hostname``, …), symlinks made, the
    network system found, and notes for the operator (one line each)."""

    network_system: NetworkSystem | None
    written: tuple[str, ...] = ()
    linked: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _copy_label(source: Path, dest: Path) -> None:
    """Give ``dest`` the SELinux label of ``source`` (the file it replaces, else its directory):
    the installer runs without a policy, and an unlabelled keyfile or authorized_keys is
    unreadable for NetworkManager or sshd on an enforcing target."""
    try:
        label = os.getxattr(source, _SELINUX_XATTR, follow_symlinks=False)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.setxattr(dest, _SELINUX_XATTR, label, follow_symlinks=False)


def _chown_root(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, 0, 0, follow_symlinks=False)


def _make_dirs(root: Path, path: str, mode: int) -> Path:
    """The directory ``path`` inside the target, created with ``mode`` where missing."""
    target = resolve_in_root(root, path)
    missing: list[Path] = []
    probe = target
    while not probe.exists() and probe != root:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=mode)
        os.chmod(directory, mode)
        _copy_label(directory.parent, directory)
        _chown_root(directory)
    if not target.is_dir():
        raise IdentityError("/" + path, "not a directory")
    return target


# Virtual or tmpfs on the booted target, and bound from the installer while it is mounted
# (pyinit.target): nothing written there would survive, and it would land on the installer.
VOLATILE = frozenset({"dev", "proc", "sys", "run", "tmp"})


def _is_mount_point(path: Path) -> bool:
    """A file or directory bound over the target's (st_dev differs from its directory's)."""
    try:
        return path.lstat().st_dev != path.parent.lstat().st_dev
    except FileNotFoundError:
        return False


def write_file(root: Path, path: str, content: str | bytes, mode: int, *,
               dir_mode: int = 0o755) -> Path:
    """Atomically write ``content`` to ``path`` inside the target, owned by root (when run as
    root), with ``mode``. Refused: a final symlink (it points at something the target manages
    elsewhere, such as ``/run``), a path that resolves into /dev, /proc, /sys, /run or /tmp, and a
    file that is a mount point (the installer's resolv.conf bound over the target's)."""
    where = "/" + path.lstrip("/")
    parent_rel = str(PurePosixPath(path).parent)
    resolved = resolve_in_root(root, parent_rel).relative_to(root).parts
    if resolved and resolved[0] in VOLATILE:
        raise IdentityError(where, f"resolves into /{'/'.join(resolved)}, which does not "
                                   "persist on the target; not writing")
    parent = _make_dirs(root, parent_rel, dir_mode)
    dest = parent / PurePosixPath(path).name
    if dest.is_symlink():
        raise IdentityError(where, f"is a symlink to {os.readlink(dest)}; not following it")
    if _is_mount_point(dest):
        raise IdentityError(where, "is a mount point (bound from the installer); not writing")
    tmp = parent / f".{dest.name}.pyinit-tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), 0, 0)
            os.fsync(f.fileno())
        _copy_label(dest if dest.exists() else parent, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dirfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return dest


def write_symlink(root: Path, path: str, target: str) -> Path:
    """A symlink ``path`` -> ``target`` inside the target (its directory made as for
    :func:`write_file`); an existing symlink there is replaced, anything else refused."""
    parent_rel = str(PurePosixPath(path).parent)
    parent = _make_dirs(root, parent_rel, 0o755)
    dest = parent / PurePosixPath(path).name
    if dest.exists() and not dest.is_symlink():
        raise IdentityError("/" + path.lstrip("/"), "exists and is not a symlink; not replacing")
    tmp = parent / f".{dest.name}.pyinit-tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, dest)
    return dest


def _enable_networkd(root: Path) -> list[str]:
    """``systemctl enable systemd-networkd`` by hand: the symlinks it makes. Debian installs
    networkd disabled; a .network file alone would not bring the NIC up."""
    linked: list[str] = []
    for wants, unit in (("multi-user.target.wants", "systemd-networkd.service"),
                        ("sockets.target.wants", "systemd-networkd.socket")):
        unit_path = next((f"{d}/{unit}" for d in ("usr/lib/systemd/system", "lib/systemd/system")
                          if _exists(root, f"{d}/{unit}")), None)
        link = f"etc/systemd/system/{wants}/{unit}"
        if unit_path is None or resolve_in_root(root, link, follow_last=False).is_symlink():
            continue
        directory = _make_dirs(root, f"etc/systemd/system/{wants}", 0o755)
        (directory / unit).symlink_to("/" + unit_path)
        linked.append("/" + link)
    return linked


def _resolv_conf_managed(root: Path) -> bool:
    """A symlinked /etc/resolv.conf belongs to systemd-resolved, resolvconf or similar."""
    return resolve_in_root(root, "etc/resolv.conf", follow_last=False).is_symlink()


def apply_identity(root: Path, action: Action, *, mac: str, interface: str) -> IdentityResult:
    """Write ``action``'s identity into the target mounted at ``root``.

    ``mac`` is the provisioning NIC's MAC, ``interface`` the kernel name the installer saw (only
    used for ifupdown targets without systemd-udevd). See docs/action.md, "After the write".
    """
    mac = macaddr.parse(mac)
    files: Files = {}
    notes: list[str] = []
    linked: list[str] = []
    net = net_config(action, mac)
    system = detect_network_system(root)

    if action.hostname:
        files["etc/hostname"] = (action.hostname + "\n", 0o644)
        files["etc/hosts"] = (update_hosts(_read(root, "etc/hosts"), action.hostname), 0o644)
    if action.ssh_keys:
        merged = merge_authorized_keys(_read(root, "root/.ssh/authorized_keys"), action.ssh_keys)
        files["root/.ssh/authorized_keys"] = (merged, 0o600)

    has_cloud_init = _exists(root, *_CLOUD_INIT)
    if action.cloud_init:
        files.update(render_nocloud(mac, hostname=action.hostname, ssh_keys=action.ssh_keys,
                                    net=net))
        if not has_cloud_init:
            notes.append("cloudInit: the target has no cloud-init; the seed will not be read")
        if net is not None:
            notes.append("network: written to the cloud-init seed (cloudInit), not the target's "
                         "own files")
    elif net is not None and system is None:
        notes.append("network: no network system found in the target; nothing written")
    elif net is not None and system is not None:
        udev_links = _exists(root, *_UDEVD)
        name = ifupdown_name(interface, udev_links=udev_links)
        files.update(render_network(system, net, ifupdown_iface=name))
        if system == "ifupdown":
            interfaces = _read(root, "etc/network/interfaces")
            updated = sources_interfaces_d(interfaces)
            if updated != interfaces:
                files["etc/network/interfaces"] = (updated, 0o644)
            if udev_links:
                files.update(render_link(net))
        if system == "networkd":
            linked += _enable_networkd(root)
        if (system in ("ifupdown", "networkd") and net.nameservers
                and not _resolv_conf_managed(root)):
            if _is_mount_point(resolve_in_root(root, "etc/resolv.conf")):
                notes.append("resolv.conf: the installer's is bound over the target's; "
                             "not written (nameservers are in the network configuration)")
            else:
                files["etc/resolv.conf"] = (render_resolv_conf(net.nameservers), 0o644)
        if has_cloud_init:
            # Otherwise cloud-init's fallback (DHCP on the first NIC) joins or replaces ours.
            files[CLOUD_INIT_NETWORK_OFF] = ("# Written by pyinit: the network is configured "
                                             "by pyinit.\nnetwork:\n  config: disabled\n", 0o644)

    written: list[str] = []
    for path, (content, mode) in files.items():
        dir_mode = 0o700 if path.startswith("root/.ssh/") else 0o755
        try:
            write_file(root, path, content, mode, dir_mode=dir_mode)
        except OSError as exc:
            raise IdentityError("/" + path, exc.strerror or str(exc)) from exc
        written.append("/" + path)
    if action.ssh_keys:
        ssh_dir = resolve_in_root(root, "root/.ssh")
        os.chmod(ssh_dir, 0o700)
        _chown_root(ssh_dir)
    return IdentityResult(network_system=system, written=tuple(written), linked=tuple(linked),
                          notes=tuple(notes))
