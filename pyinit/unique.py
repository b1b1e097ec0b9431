"""What must be unique per machine (issue #15, docs/identity.md): the catalogue, and what the
configure step does about each item in a written target.

One golden image goes onto many machines. Whatever the root was built with — SSH host keys,
machine-id, random seed, DHCP client identifiers, cloud-init's instance data — would otherwise
be shared by the whole fleet. :data:`ITEMS` lists them once; ``pyinit image`` removes them from
the golden image (:mod:`pyinit_build.golden.identity`, what it does per item is
:attr:`Item.image`) and :func:`refresh` makes fresh ones in each machine's target
(:attr:`Item.configure`): new SSH host keys with the target's own ``ssh-keygen`` (the
initramfs's when the target has none), a new machine-id and random seed, and every lease or
cached identity removed so the target derives fresh ones on its first boot.

The catalogue and the small transformations (fingerprints, HostKey lines, iSCSI names) are
pure; :func:`refresh` is the I/O over a mounted target. Paths are resolved as the target sees
them (:mod:`pyinit.rootpath`), so a symlink in the image never leads outside it.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pyinit import proc, rootpath
from pyinit.errors import CommandError, PyinitError

ImageOp = Literal["remove", "empty", "reset", "keep"]
ConfigureOp = Literal["generate", "write", "remove"]
Kind = Literal["any", "file", "dir"]


@dataclass(frozen=True)
class Item:
    """One thing that must differ between machines, with the paths that hold it.

    ``paths`` are globs relative to the root with wildcards in the last component only;
    ``kind`` narrows what matches (``file``: regular files only, so Debian's
    ``/var/lib/dbus/machine-id -> /etc/machine-id`` link stays)."""

    name: str
    what: str
    paths: tuple[str, ...]
    image: ImageOp
    configure: ConfigureOp
    kind: Kind = "any"


HOST_KEY_PATHS = ("etc/ssh/ssh_host_*_key", "etc/ssh/ssh_host_*_key.pub",
                  "etc/ssh/ssh_host_*_key-cert.pub")
ITEMS: tuple[Item, ...] = (
    Item("ssh-host-keys", "OpenSSH host keys", HOST_KEY_PATHS, "remove", "generate"),
    Item("machine-id", "systemd/D-Bus machine ID", ("etc/machine-id",), "empty", "write"),
    Item("dbus-machine-id", "D-Bus's own copy of the machine ID",
         ("var/lib/dbus/machine-id",), "remove", "remove", kind="file"),
    Item("random-seed", "saved kernel random seed",
         ("var/lib/systemd/random-seed", "var/lib/urandom/random-seed",
          "var/lib/random-seed"), "remove", "write"),
    Item("credential-secret", "systemd's host credential encryption key",
         ("var/lib/systemd/credential.secret",), "remove", "remove"),
    Item("dhcp-leases", "DHCP/DHCPv6 leases and client identifiers (DUIDs)",
         ("var/lib/dhcp/*.leases", "var/lib/dhcp/*.lease", "var/lib/dhclient/*",
          "var/lib/NetworkManager/*.lease", "var/lib/NetworkManager/secret_key",
          "var/lib/dhcpcd/*", "etc/dhcpcd.duid", "etc/dhcpcd.secret",
          "var/lib/systemd/network/*", "var/lib/wicked/duid.xml", "var/lib/wicked/iaid.xml",
          "var/lib/wicked/lease-*"), "remove", "remove"),
    Item("cloud-init", "cloud-init instance data (it would believe it already ran here)",
         ("var/lib/cloud/instance", "var/lib/cloud/instances", "var/lib/cloud/data",
          "var/lib/cloud/sem", "var/log/cloud-init.log", "var/log/cloud-init-output.log"),
         "remove", "remove"),
    Item("journal", "systemd journal files (named by the old machine ID)",
         ("var/log/journal/*",), "remove", "remove", kind="dir"),
    Item("persistent-net-rules", "udev rules pinning the build host's NIC names to its MACs",
         ("etc/udev/rules.d/70-persistent-net.rules",), "remove", "remove"),
    Item("lvm-devices", "LVM devices file (lists the build host's disks; RHEL 9 ignores others)",
         ("etc/lvm/devices/system.devices",), "remove", "remove"),
    Item("iscsi-initiator", "iSCSI initiator name", ("etc/iscsi/initiatorname.iscsi",),
         "reset", "write"),
    Item("tls-snakeoil", "ssl-cert's self-signed TLS key and certificate",
         ("etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem"),
         "keep", "generate"),
)

#: Secrets pyinit does not touch, but says it saw: removing them could break what the operator
#: meant to ship (a deploy key, a domain join), and keeping them shares them with every machine.
SHARED_SECRETS: tuple[tuple[str, str], ...] = (
    ("root/.ssh/id_*", "a private SSH key of root's"),
    ("home/*/.ssh/id_*", "a user's private SSH key"),
    ("etc/krb5.keytab", "a Kerberos host keytab"),
    ("etc/salt/pki/minion/minion.pem", "a Salt minion key"),
    ("etc/salt/minion_id", "a Salt minion ID"),
    ("etc/puppetlabs/puppet/ssl", "Puppet agent certificates"),
    ("var/lib/puppet/ssl", "Puppet agent certificates"),
    ("etc/chef/client.pem", "a Chef client key"),
    ("var/lib/tailscale/tailscaled.state", "a Tailscale node key"),
    ("etc/pki/tls/private/localhost.key", "mod_ssl's TLS key"),
)

DEFAULT_KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # what Debian's and RHEL's packages make
_KEY_TYPE = re.compile(r"ssh_host_([a-z0-9]+)_key$")
_IQN_DEFAULT = "iqn.2005-03.org.open-iscsi"
MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
RANDOM_SEED_BYTES = 512  # what systemd-random-seed saves


class UniqueError(PyinitError):
    """A per-machine item could not be made fresh in the target."""

    def __init__(self, item: str, reason: str) -> None:
        self.item = item
        self.reason = reason
        super().__init__(f"{item}: {reason}")


# --- pure helpers --------------------------------------------------------------------------------

def glob(pattern: str, listdir: Callable[[str], list[str]],
         kind_of: Callable[[str], str]) -> list[str]:
    """The paths (relative to the root, sorted) matching ``pattern``, wildcards allowed in any
    component; ``listdir(rel)`` lists a directory's names ([] when it is none), ``kind_of(rel)``
    says ``file``/``dir``/``symlink``/``other`` without following a final symlink. Pure
    over the two callbacks."""
    current = [""]
    for part in PurePosixPath(pattern).parts:
        nxt = []
        for base in current:
            if any(c in part for c in "*?["):
                nxt += [f"{base}/{n}".lstrip("/") for n in sorted(listdir(base))
                        if fnmatch.fnmatchcase(n, part)]
            else:
                nxt.append(f"{base}/{part}".lstrip("/"))
        current = nxt
    return [rel for rel in current if kind_of(rel) != "missing"]


def select(paths: Iterable[str], kind: Kind, kind_of: Callable[[str], str]) -> list[str]:
    """``paths`` narrowed to ``kind`` (``any``: everything). Pure over ``kind_of``."""
    return [p for p in paths if kind == "any" or kind_of(p) == kind]


def fingerprint(public_key: str) -> str:
    """OpenSSH's SHA256 fingerprint (``ssh-keygen -l``) of a one-line public key. Pure."""
    fields = public_key.split()
    if len(fields) < 2:
        raise ValueError("not an OpenSSH public key line")
    blob = base64.b64decode(fields[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def host_keys(sshd_configs: Iterable[str]) -> list[tuple[str, str]]:
    """(type, path) of the host keys sshd will load: its ``HostKey`` lines when there are any
    (type from the file name, ed25519 when the name says nothing), else OpenSSH's defaults.
    ``Include`` is not followed: pass the included files' text too. Pure."""
    listed: list[tuple[str, str]] = []
    for text in sshd_configs:
        for raw in text.splitlines():
            words = raw.split("#", 1)[0].split()
            if len(words) >= 2 and words[0].lower() == "hostkey":
                path = words[1].strip('"')
                found = _KEY_TYPE.search(PurePosixPath(path).name)
                kind = found.group(1) if found else "ed25519"
                if kind == "dsa" or (kind, path) in listed:
                    continue  # OpenSSH >= 7 no longer accepts DSA host keys
                listed.append((kind, path))
    return listed or [(t, f"/etc/ssh/ssh_host_{t}_key") for t in DEFAULT_KEY_TYPES]


def iscsi_name(existing: str, token: str) -> str:
    """A fresh ``initiatorname.iscsi``: the image's IQN prefix (up to its last ``:``) with a
    new per-machine suffix. Pure."""
    prefix = _IQN_DEFAULT
    for raw in existing.splitlines():
        key, _, value = raw.strip().partition("=")
        if key == "InitiatorName" and value.startswith("iqn.") and ":" in value:
            prefix = value.rsplit(":", 1)[0]
    return f"InitiatorName={prefix}:{token}\n"


def new_machine_id() -> str:
    """A fresh machine ID as systemd writes one: 32 lower-case hex digits, version-4 UUID."""
    return uuid.uuid4().hex


# --- the configure step --------------------------------------------------------------------------

@dataclass(frozen=True)
class HostKey:
    type: str
    path: str          # in the target, "/etc/ssh/ssh_host_ed25519_key"
    fingerprint: str   # "SHA256:..."
    public: str        # the .pub line, for known_hosts

    def event(self) -> dict[str, str]:
        return {"type": self.type, "path": self.path, "fingerprint": self.fingerprint,
                "public": self.public}


@dataclass
class Refreshed:
    """What :func:`refresh` did in one target."""

    removed: dict[str, list[str]] = field(default_factory=dict)  # item -> paths in the target
    written: list[str] = field(default_factory=list)             # item names
    host_keys: list[HostKey] = field(default_factory=list)
    keygen: str = ""                                             # "target" / "initramfs" / ""
    machine_id: str = ""
    shared_secrets: list[str] = field(default_factory=list)      # lines for the console
    notes: list[str] = field(default_factory=list)               # warnings

    def summary(self) -> str:
        parts = []
        if self.host_keys:
            n = len(self.host_keys)
            parts.append(f"{n} SSH host key{'s' if n != 1 else ''} from the {self.keygen}'s "
                         "ssh-keygen")
        if self.machine_id:
            parts.append(f"machine-id {self.machine_id}")
        parts += [name for name in self.written if name not in ("machine-id",)]
        if self.removed:
            parts.append("removed " + ", ".join(f"{k} ({len(v)})"
                                                for k, v in sorted(self.removed.items())))
        return "; ".join(parts) or "nothing to do"

    def event(self) -> dict[str, object]:
        return {"host_keys": [k.event() for k in self.host_keys], "keygen": self.keygen,
                "machine_id": self.machine_id, "written": self.written,
                "removed": self.removed, "shared_secrets": self.shared_secrets}


def _resolve(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    try:
        return rootpath.resolve(root, rel, follow_last=follow_last)
    except rootpath.SymlinkLoop as exc:
        raise UniqueError(rel, "too many levels of symbolic links") from exc


def _listdir(root: Path) -> Callable[[str], list[str]]:
    def listdir(rel: str) -> list[str]:
        where = _resolve(root, rel or "/")
        return [c.name for c in where.iterdir()] if where.is_dir() else []
    return listdir


def _kind_of(root: Path) -> Callable[[str], str]:
    def kind_of(rel: str) -> str:
        parent = _resolve(root, str(PurePosixPath(rel).parent))
        path = parent / PurePosixPath(rel).name
        if path.is_symlink():
            return "symlink"
        if not path.exists():
            return "missing"
        return "dir" if path.is_dir() else "file" if path.is_file() else "other"
    return kind_of


def find(root: Path, patterns: Iterable[str], kind: Kind = "any") -> list[str]:
    """Paths (relative, as the target names them) matching ``patterns`` in ``root``; every
    directory on the way is resolved inside the target, a match itself is never followed."""
    listdir, kind_of = _listdir(root), _kind_of(root)
    return [rel for pattern in patterns
            for rel in select(glob(pattern, listdir, kind_of), kind, kind_of)]


def _remove(root: Path, rel: str) -> None:
    parent = _resolve(root, str(PurePosixPath(rel).parent) or "/")
    path = parent / PurePosixPath(rel).name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _is_empty(root: Path, rel: str) -> bool:
    path = _resolve(root, rel, follow_last=False)
    return path.is_file() and not path.is_symlink() and path.stat().st_size == 0


def _exists(root: Path, *rels: str) -> bool:
    return any(_resolve(root, rel).exists() for rel in rels)


_SSHD = ("usr/sbin/sshd", "sbin/sshd")
_SYSTEMD = ("usr/lib/systemd/systemd", "lib/systemd/systemd")
_SSH_KEYGEN = ("usr/bin/ssh-keygen", "bin/ssh-keygen")
_MAKE_SSL_CERT = ("usr/sbin/make-ssl-cert", "sbin/make-ssl-cert")
_SELINUX = "security.selinux"

Writer = Callable[[Path, str, "str | bytes", int], Path]
Runner = Callable[..., proc.Completed]


def _sshd_configs(root: Path) -> list[str]:
    texts = []
    main = _resolve(root, "etc/ssh/sshd_config")
    if main.is_file():
        texts.append(main.read_text(errors="replace"))
    drop_in = _resolve(root, "etc/ssh/sshd_config.d")
    if drop_in.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(drop_in.glob("*.conf"))
                  if p.is_file()]
    return texts


def _keygen(root: Path, kind: str, path: str, comment: str, run: Runner,
            initramfs_keygen: str | None, label: bytes | None) -> str:
    """Make one host key pair; returns where ssh-keygen came from. ``label``: the SELinux label
    the image's keys had (sshd_key_t on an enforcing target), given to the new files."""
    argv = ["-q", "-t", kind, "-N", "", "-C", comment]
    for rel in (path, path + ".pub"):  # ssh-keygen would ask before overwriting
        _remove(root, rel.lstrip("/"))
    where = _keygen_run(root, argv, path, run, initramfs_keygen)
    if label is not None:
        for rel in (path, path + ".pub"):
            with contextlib.suppress(OSError):
                os.setxattr(_resolve(root, rel, follow_last=False), _SELINUX, label,
                            follow_symlinks=False)
    return where


def _label(root: Path, rel: str) -> bytes | None:
    try:
        return os.getxattr(_resolve(root, rel, follow_last=False), _SELINUX,
                           follow_symlinks=False)
    except OSError:
        return None


def _keygen_run(root: Path, argv: list[str], path: str, run: Runner,
                initramfs_keygen: str | None) -> str:
    if _exists(root, *_SSH_KEYGEN):
        try:
            run(["ssh-keygen", *argv, "-f", path], chroot=root, timeout=300)
            return "target"
        except CommandError as exc:
            if exc.rc not in (126, 127) or initramfs_keygen is None:
                raise
    if initramfs_keygen is None:
        raise UniqueError("ssh-host-keys", "the target has an SSH server but neither it nor "
                                           "the initramfs has ssh-keygen")
    _resolve(root, str(PurePosixPath(path).parent)).mkdir(parents=True, exist_ok=True)
    run([initramfs_keygen, *argv, "-f", str(_resolve(root, path, follow_last=False))],
        timeout=300)
    return "initramfs"


def refresh(root: Path, *, hostname: str | None, write: Writer,
            run: Runner = proc.run, urandom: Callable[[int], bytes] = os.urandom,
            initramfs_keygen: str | None = None) -> Refreshed:
    """Make the written target at ``root`` (mounted, ``/dev`` bound in for ssh-keygen) its own
    machine: remove every catalogue item configure removes or regenerates, then write a fresh
    machine-id (where the target has one or runs systemd), random seed (systemd), iSCSI
    initiator name, SSH host keys (where it has an SSH server) and the snakeoil TLS pair
    (where ssl-cert made one). ``write`` is :func:`pyinit.identity.write_file`."""
    out = Refreshed()
    had_machine_id = _exists(root, "etc/machine-id")
    had_iscsi = _resolve(root, "etc/iscsi/initiatorname.iscsi")
    iscsi_text = had_iscsi.read_text(errors="replace") if had_iscsi.is_file() else None
    snakeoil = _resolve(root, "etc/ssl/private/ssl-cert-snakeoil.key").exists()
    key_label = next((label for rel in find(root, HOST_KEY_PATHS)
                      if (label := _label(root, rel)) is not None), None)
    for item in ITEMS:
        if item.configure == "generate" and item.name != "ssh-host-keys":
            continue  # regenerated in place by its own tool below
        for rel in find(root, item.paths, item.kind):
            carried = not (item.configure == "write" and _is_empty(root, rel))
            _remove(root, rel)
            if carried:  # an empty machine-id is how a clean image leaves it: nothing to say
                out.removed.setdefault(item.name, []).append("/" + rel)
    for pattern, what in SHARED_SECRETS:
        out.shared_secrets += [f"/{rel}: {what}" for rel in find(root, (pattern,))]

    systemd = _exists(root, *_SYSTEMD)
    if had_machine_id or systemd:
        out.machine_id = new_machine_id()
        write(root, "etc/machine-id", out.machine_id + "\n", 0o444)
        out.written.append("machine-id")
    if systemd:
        write(root, "var/lib/systemd/random-seed", urandom(RANDOM_SEED_BYTES), 0o600)
        out.written.append("random-seed")
    if iscsi_text is not None:
        write(root, "etc/iscsi/initiatorname.iscsi",
              iscsi_name(iscsi_text, urandom(6).hex()), 0o600)
        out.written.append("iscsi-initiator")

    if _exists(root, *_SSHD) or _resolve(root, "etc/ssh/sshd_config").is_file():
        comment = f"root@{hostname or 'localhost'}"
        for kind, path in host_keys(_sshd_configs(root)):
            out.keygen = _keygen(root, kind, path, comment, run, initramfs_keygen, key_label)
            pub = _resolve(root, path + ".pub").read_text().strip()
            out.host_keys.append(HostKey(kind, path, fingerprint(pub), pub))
    if snakeoil:
        if _exists(root, *_MAKE_SSL_CERT):
            try:
                run(["make-ssl-cert", "generate-default-snakeoil", "--force-overwrite"],
                    chroot=root, timeout=300)
                out.written.append("tls-snakeoil")
            except CommandError as exc:
                out.notes.append(f"the snakeoil TLS key came with the image and could not be "
                                 f"made anew ({exc}); every machine shares it")
        else:
            out.notes.append("the snakeoil TLS key came with the image and the target has no "
                             "make-ssl-cert; every machine shares it")
    return out
