"""What must be unique per machine (pyinit.unique) and the golden image's cleaning
(pyinit_build.golden.identity), on temporary roots and trees."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import identity, proc, unique
from pyinit.errors import CommandError
from pyinit_build.golden import identity as golden_identity
from pyinit_build.golden import tree


def put(root: Path, rel: str, data: str = "x\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    return path


def debian_like(root: Path) -> Path:
    """A root as a Debian build leaves it: host keys, a machine-id, a seed, leases, cloud-init
    state, a journal, an iSCSI name, and an SSH server."""
    for kind in unique.DEFAULT_KEY_TYPES:
        put(root, f"etc/ssh/ssh_host_{kind}_key", "PRIVATE\n")
        put(root, f"etc/ssh/ssh_host_{kind}_key.pub", f"ssh-{kind} AAAA build@host\n")
    put(root, "etc/ssh/sshd_config", "PermitRootLogin no\n")
    put(root, "usr/sbin/sshd", "")
    put(root, "usr/lib/systemd/systemd", "")
    put(root, "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus").mkdir(parents=True)
    os.symlink("/etc/machine-id", root / "var/lib/dbus/machine-id")
    put(root, "var/lib/systemd/random-seed", "S" * 512)
    put(root, "var/lib/dhcp/dhclient.eth0.leases", "lease {}\n")
    put(root, "var/lib/dhcp/dhclient6.eth0.leases", "default-duid \"\\000\\001\";\n")
    put(root, "var/lib/cloud/instances/i-123/sem/config", "")
    os.symlink("/var/lib/cloud/instances/i-123", root / "var/lib/cloud/instance")
    put(root, "var/log/journal/0123456789abcdef0123456789abcdef/system.journal", "J")
    put(root, "etc/iscsi/initiatorname.iscsi",
        "## DO NOT EDIT\nInitiatorName=iqn.1993-08.org.debian:01:5f2b8d1c9a7e\n")
    put(root, "root/.ssh/id_ed25519", "PRIVATE\n")
    put(root, "home/ops/.ssh/id_rsa", "PRIVATE\n")
    return root


def fake_keygen(calls: list[list[str]]) -> Any:
    """ssh-keygen run through chroot: records the call and writes the pair where it would."""
    def run(argv: list[str], *, chroot: Path | None = None, **_: Any) -> proc.Completed:
        calls.append([*argv, f"chroot={chroot}"])
        assert chroot is not None and argv[0] == "ssh-keygen"
        path = chroot / argv[argv.index("-f") + 1].lstrip("/")
        kind = argv[argv.index("-t") + 1]
        assert not path.exists(), "ssh-keygen would ask before overwriting"
        path.write_text("NEW PRIVATE\n")
        blob = base64.b64encode(f"ssh-{kind}".encode() + os.urandom(32)).decode()
        path.with_name(path.name + ".pub").write_text(f"ssh-{kind} {blob} fresh\n")
        return proc.Completed(argv, 0, "", "")
    return run


# --- pure parts ---------------------------------------------------------------------------------

def test_host_keys_follow_hostkey_lines_else_the_defaults() -> None:
    assert unique.host_keys(["PermitRootLogin no\n"]) == [
        (t, f"/etc/ssh/ssh_host_{t}_key") for t in ("rsa", "ecdsa", "ed25519")]
    text = ("HostKey /etc/ssh/ssh_host_ed25519_key\n# HostKey /etc/ssh/ssh_host_rsa_key\n"
            "hostkey \"/etc/ssh/ssh_host_dsa_key\"\nHostKey /srv/keys/host\n")
    assert unique.host_keys([text, "HostKey /etc/ssh/ssh_host_ed25519_key\n"]) == [
        ("ed25519", "/etc/ssh/ssh_host_ed25519_key"), ("ed25519", "/srv/keys/host")]


def test_iscsi_name_keeps_the_prefix_and_makes_a_new_suffix() -> None:
    old = "## comment\nInitiatorName=iqn.1994-05.com.redhat:abcdef\n"
    assert unique.iscsi_name(old, "123456") == "InitiatorName=iqn.1994-05.com.redhat:123456\n"
    assert unique.iscsi_name("GenerateName=yes\n", "9") == \
        "InitiatorName=iqn.2005-03.org.open-iscsi:9\n"


def test_machine_ids_are_systemd_shaped_and_differ() -> None:
    a, b = unique.new_machine_id(), unique.new_machine_id()
    assert unique.MACHINE_ID_RE.match(a) and unique.MACHINE_ID_RE.match(b) and a != b


def test_glob_matches_wildcards_in_any_component(tmp_path: Path) -> None:
    put(tmp_path, "home/a/.ssh/id_rsa")
    put(tmp_path, "home/b/.ssh/id_ed25519.pub")
    put(tmp_path, "home/b/.ssh/authorized_keys")
    assert unique.find(tmp_path, ["home/*/.ssh/id_*"]) == ["home/a/.ssh/id_rsa",
                                                           "home/b/.ssh/id_ed25519.pub"]
    assert unique.find(tmp_path, ["nothing/*/here"]) == []


# --- the configure step ------------------------------------------------------------------------

def test_refresh_makes_a_debian_root_its_own(tmp_path: Path) -> None:
    root = debian_like(tmp_path / "root")
    calls: list[list[str]] = []
    put(root, "usr/bin/ssh-keygen", "")
    fresh = unique.refresh(root, hostname="node-a", write=identity.write_file,
                           run=fake_keygen(calls), initramfs_keygen=None)
    assert [c[c.index("-t") + 1] for c in calls] == ["rsa", "ecdsa", "ed25519"]
    assert all(c[-1] == f"chroot={root}" and "root@node-a" in c for c in calls)
    assert fresh.keygen == "target" and len(fresh.host_keys) == 3
    for key in fresh.host_keys:
        pub = (root / key.path.lstrip("/")).with_name(Path(key.path).name + ".pub").read_text()
        assert key.fingerprint == unique.fingerprint(pub) and key.public == pub.strip()
        assert "build@host" not in pub
    machine_id = (root / "etc/machine-id").read_text()
    assert machine_id == fresh.machine_id + "\n" and machine_id.startswith(fresh.machine_id)
    assert fresh.machine_id != "0123456789abcdef0123456789abcdef"
    assert (root / "etc/machine-id").stat().st_mode & 0o777 == 0o444
    seed = root / "var/lib/systemd/random-seed"
    assert seed.stat().st_size == 512 and seed.read_bytes() != b"S" * 512
    assert seed.stat().st_mode & 0o777 == 0o600
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"  # a link stays
    assert not list((root / "var/lib/dhcp").iterdir())
    assert not (root / "var/lib/cloud/instances").exists()
    assert not os.path.lexists(root / "var/lib/cloud/instance")
    assert not list((root / "var/log/journal").iterdir())
    iscsi = (root / "etc/iscsi/initiatorname.iscsi").read_text()
    assert iscsi.startswith("InitiatorName=iqn.1993-08.org.debian:01:") and "5f2b8d" not in iscsi
    assert sorted(fresh.removed) == ["cloud-init", "dhcp-leases", "iscsi-initiator", "journal",
                                     "machine-id", "random-seed", "ssh-host-keys"]
    assert fresh.shared_secrets == ["/root/.ssh/id_ed25519: a private SSH key of root's",
                                    "/home/ops/.ssh/id_rsa: a user's private SSH key"]
    event = fresh.event()
    assert event["machine_id"] == fresh.machine_id and len(event["host_keys"]) == 3  # type: ignore
    assert "3 SSH host keys from the target's ssh-keygen" in fresh.summary()


def test_refresh_says_nothing_of_the_empty_machine_id_a_clean_image_has(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "etc/machine-id", "")
    fresh = unique.refresh(root, hostname=None, write=identity.write_file)
    assert fresh.removed == {} and fresh.written == ["machine-id"]
    assert (root / "etc/machine-id").read_text() == fresh.machine_id + "\n"


def test_refresh_without_any_keygen_says_so(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "usr/sbin/sshd", "")
    with pytest.raises(unique.UniqueError, match="neither it nor the initramfs has ssh-keygen"):
        unique.refresh(root, hostname=None, write=identity.write_file, initramfs_keygen=None)


def test_refresh_falls_back_when_the_targets_keygen_cannot_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "usr/sbin/sshd", "")
    put(root, "usr/bin/ssh-keygen", "")
    seen: list[str] = []

    def run(argv: list[str], *, chroot: Path | None = None, **_: Any) -> proc.Completed:
        seen.append("chroot" if chroot else argv[0])
        if chroot is not None:
            raise CommandError(argv, 127, "ssh-keygen: not found")
        path = Path(argv[argv.index("-f") + 1])
        path.write_text("K\n")
        path.with_name(path.name + ".pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 x\n")
        return proc.Completed(argv, 0, "", "")

    fresh = unique.refresh(root, hostname="h", write=identity.write_file, run=run,
                           initramfs_keygen="/usr/bin/ssh-keygen")
    assert seen == ["chroot", "/usr/bin/ssh-keygen"] * 3 and fresh.keygen == "initramfs"


def test_refresh_never_leaves_the_target(tmp_path: Path) -> None:
    """An absolute symlink in the image is the target's path, not the installer's."""
    outside = put(tmp_path / "host", "leases/dhclient.leases", "the installer's own\n")
    root = tmp_path / "root"
    (root / "var/lib").mkdir(parents=True)
    os.symlink(str(outside.parent), root / "var/lib/dhcp")  # /host/... inside the target: absent
    unique.refresh(root, hostname=None, write=identity.write_file)
    assert outside.read_text() == "the installer's own\n"


# --- the golden image ---------------------------------------------------------------------------

def load(tmp_path: Path, root: Path) -> tree.Tree:
    return tree.load_dir(root, tmp_path / "work")


def test_golden_clean_removes_empties_resets_and_reports(tmp_path: Path) -> None:
    root = debian_like(tmp_path / "root")
    put(root, "usr/lib/open-iscsi/startup-checks.sh", "#!/bin/sh\n")
    put(root, "etc/ssl/private/ssl-cert-snakeoil.key", "PRIVATE\n")
    t = load(tmp_path, root)
    cleaned = golden_identity.clean(t, mtime=7)
    assert not golden_identity.find(t, "etc/ssh/ssh_host_*")
    machine_id = t.get("/etc/machine-id")
    assert machine_id is not None and machine_id.size == 0 and machine_id.kind == "file"
    assert t.get("/var/lib/dbus/machine-id") is not None  # Debian's link to /etc/machine-id
    for gone in ("/var/lib/systemd/random-seed", "/var/lib/dhcp/dhclient.eth0.leases",
                 "/var/lib/cloud/instances", "/var/lib/cloud/instance",
                 "/var/log/journal/0123456789abcdef0123456789abcdef"):
        assert t.get(gone) is None, gone
    assert t.read_bytes("/etc/iscsi/initiatorname.iscsi") == b"GenerateName=yes\n"
    assert t.get("/etc/ssl/private/ssl-cert-snakeoil.key") is not None
    assert cleaned.emptied == ["/etc/machine-id"]
    assert len(cleaned.removed["ssh-host-keys"]) == 6
    lines = cleaned.lines()
    assert any(line.startswith("image: per-machine identity: removed ssh-host-keys (/etc/ssh/")
               for line in lines)
    assert "image: per-machine identity: emptied /etc/machine-id (each machine makes its own)" \
        in lines
    assert any("kept tls-snakeoil" in line for line in lines)
    assert sum("image: warning: the rootfs carries" in line for line in lines) == 2
    assert cleaned.manifest()["emptied"] == ["/etc/machine-id"]
    # Cleaning a clean tree does (and says) nothing more.
    again = golden_identity.clean(t, mtime=7)
    assert not again.removed and not again.emptied and again.reset == cleaned.reset


def test_golden_clean_removes_the_iscsi_name_where_nothing_regenerates_it(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    put(root, "etc/iscsi/initiatorname.iscsi", "InitiatorName=iqn.1994-05.com.redhat:abc\n")
    t = load(tmp_path, root)
    cleaned = golden_identity.clean(t, mtime=0)
    assert t.get("/etc/iscsi/initiatorname.iscsi") is None
    assert cleaned.removed == {"iscsi-initiator": ["/etc/iscsi/initiatorname.iscsi"]}


def test_new_host_keys_get_the_selinux_label_the_images_keys_had(tmp_path: Path) -> None:
    """On an enforcing target sshd reads only sshd_key_t files; the installer has no policy."""
    root = debian_like(tmp_path / "root")
    put(root, "usr/bin/ssh-keygen", "")
    label = b"system_u:object_r:sshd_key_t:s0"
    try:
        os.setxattr(root / "etc/ssh/ssh_host_rsa_key", "security.selinux", label)
    except OSError as exc:  # a filesystem without security xattrs: nothing to prove here
        pytest.skip(f"security.selinux cannot be set in {tmp_path}: {exc}")
    unique.refresh(root, hostname="node-a", write=identity.write_file, run=fake_keygen([]))
    for kind in unique.DEFAULT_KEY_TYPES:
        for name in (f"ssh_host_{kind}_key", f"ssh_host_{kind}_key.pub"):
            assert os.getxattr(root / "etc/ssh" / name, "security.selinux") == label, name
