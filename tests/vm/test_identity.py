"""Every machine its own (issue #15): two machines provisioned from one Debian golden image
share none of docs/identity.md's items, and the Debian target's sshd runs with its new keys.

The golden image comes from a real Debian bookworm root (mmdebstrap: systemd, openssh-server,
whose postinst made host keys on the build host) to which the test adds what a root from
another source may carry: a machine-id, a random seed, a DHCP lease, cloud-init's instance data.
`pyinit image` must take them out and say so. pyinit then writes the image onto two machines;
the first kexecs into Debian's own kernel and systemd, where a one-shot unit reports sshd's
state and the host key sshd serves (ssh-keyscan) on the serial console. The host compares the
two disks afterwards (grub-fstest reads the ext4 root without mounting it).
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests

from pyinit import unique
from pyinit_build.cli import build_parser
from pyinit_build.golden import build
from pyinit_qemu.vm import create_disk
from tests import debian_root
from tests.vm.conftest import NEVER, Artifacts, Server, boot

pytestmark = pytest.mark.vm

MACS = ("52:54:00:5e:15:0a", "52:54:00:5e:15:0b")
OLD_MACHINE_ID = "0123456789abcdef0123456789abcdef"
# It reports through the kernel log: serial-getty's vhangup() of ttyS0 would cut off a script
# writing to the tty directly once the login prompt is up.
CHECK = """#!/bin/sh
say() { echo "$*" > /dev/kmsg; }
for i in $(seq 120); do systemctl is-active --quiet ssh.service && break; sleep 1; done
key=$(ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null | ssh-keygen -l -f - | awk '{print $2}')
say "PYINIT-CHECK ssh=$(systemctl is-active ssh.service) hostkey=$key" \
    "machine_id=$(cat /etc/machine-id) hostname=$(hostname)"
# pyinit's first-boot confirmation (docs/lifecycle.md) removes itself once the server has it
for i in $(seq 120); do [ -e /usr/local/sbin/pyinit-firstboot ] || break; sleep 1; done
say "PYINIT-FIRSTBOOT gone=$([ -e /usr/local/sbin/pyinit-firstboot ] && echo no || echo yes)"
systemctl poweroff
"""
UNIT = """[Unit]
Description=pyinit test: report sshd and the machine's identity, then power off
After=ssh.service multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pyinit-check

[Install]
WantedBy=multi-user.target
"""
# What a root from elsewhere may carry besides the host keys Debian's openssh-server made.
CARRIED = {
    "./etc/machine-id": (0o444, OLD_MACHINE_ID + "\n"),
    "./var/lib/systemd/random-seed": (0o600, "S" * 512),
    "./var/lib/dhcp/dhclient.enp1s0.leases": (0o644, "lease { fixed-address 10.0.2.15; }\n"),
    "./var/lib/cloud/instances/i-build/sem/config_ssh": (0o644, ""),
    "./usr/local/sbin/pyinit-check": (0o755, CHECK),
    "./etc/systemd/system/pyinit-check.service": (0o644, UNIT),
}


def debian_tarball(source: Path, dest: Path) -> Path:
    shutil.copyfile(source, dest)
    with tarfile.open(dest, "a") as tar:
        for name, (mode, text) in CARRIED.items():
            info = tarfile.TarInfo(name)
            info.mode, info.size, info.mtime = mode, len(text), 1_700_000_000
            tar.addfile(info, io.BytesIO(text.encode()))
        info = tarfile.TarInfo("./etc/systemd/system/multi-user.target.wants/"
                               "pyinit-check.service")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/systemd/system/pyinit-check.service"
        tar.addfile(info)
    return dest


def read(disk: Path, part: int, path: str) -> bytes | None:
    """A file of the disk's GPT partition ``part``, read by GRUB's own ext4 code (None: absent)."""
    done = subprocess.run(["grub-fstest", str(disk), "cat", f"(loop0,gpt{part}){path}"],
                          capture_output=True, timeout=60)
    if done.returncode != 0:
        assert b"not found" in done.stderr.lower() or b"no such" in done.stderr.lower(), \
            done.stderr
        return None
    return done.stdout


def listing(disk: Path, part: int, path: str) -> list[str]:
    done = subprocess.run(["grub-fstest", str(disk), "ls", f"(loop0,gpt{part}){path}"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.split() if done.returncode == 0 else []


def identity_of(disk: Path, part: int) -> dict[str, Any]:
    keys = {f"{t}{suffix}": read(disk, part, f"/etc/ssh/ssh_host_{t}_key{suffix}")
            for t in unique.DEFAULT_KEY_TYPES for suffix in ("", ".pub")}
    return {**keys,
            "machine-id": read(disk, part, "/etc/machine-id"),
            "random-seed": read(disk, part, "/var/lib/systemd/random-seed"),
            "iscsi": read(disk, part, "/etc/iscsi/initiatorname.iscsi"),
            "hostname": read(disk, part, "/etc/hostname")}


def test_two_machines_from_one_debian_image_share_no_identity(
        artifacts: Artifacts, tmp_path: Path, server: Server,
        debian_bookworm: debian_root.DebianRoot) -> None:
    tarball = debian_tarball(debian_bookworm.tarball, tmp_path / "bookworm.tar")
    said: list[str] = []
    spec = build.ImageSpec(rootfs=tarball, output=tmp_path / "debian.img", table="gpt",
                           firmware="bios", hostname="golden", headroom=64 * build.MIB)
    manifest = build.build_image(spec, progress=said.append)
    part = manifest.root["partition"]

    # The golden image: the build said what it took out, and none of it is left.
    cleaning = [line for line in said if "per-machine identity" in line]
    assert any("removed ssh-host-keys (/etc/ssh/ssh_host_" in line for line in cleaning), said
    assert "image: per-machine identity: emptied /etc/machine-id (each machine makes its own)" \
        in cleaning
    assert any("removed random-seed" in line for line in cleaning)
    assert any("removed dhcp-leases" in line for line in cleaning)
    assert any("removed cloud-init" in line for line in cleaning)
    golden = identity_of(spec.output, part)
    assert golden["machine-id"] == b"" and golden["random-seed"] is None
    assert all(golden[f"{t}{s}"] is None for t in unique.DEFAULT_KEY_TYPES for s in ("", ".pub"))
    assert "i-build" not in listing(spec.output, part, "/var/lib/cloud/instances")

    image = spec.output.with_name(manifest.action["image"])
    server.image(image.name, image)
    disks = []
    booted: dict[str, str] = {}
    for n, mac in enumerate(MACS):
        disk = create_disk(tmp_path / f"machine-{n}.raw", manifest.virtual_size)
        disks.append(disk)
        server.machine(mac, {"action": "writeImage", "sourceImage": f"images/{image.name}",
                             "destinationDevice": "/dev/vda",
                             "checksum": manifest.action["checksum"],
                             "hostname": f"node-{'ab'[n]}",
                             # the first machine boots Debian and reaches the server from it
                             **({"network": "dhcp"} if n == 0 else {}),
                             "finish": "kexec" if n == 0 else "poweroff"})
        with boot(artifacts, tmp_path / f"vm{n}", f"MYURL={server.guest_url}", mac=mac,
                  disks=[disk], timeout=600) as vm:
            keys = [vm.expect(r"configure: SSH host key (\w+) (SHA256:\S+)", timeout=400)
                    for _ in unique.DEFAULT_KEY_TYPES]
            printed = {m.group(1).lower(): m.group(2) for m in keys}
            vm.expect(r"configure: per-machine identity: 3 SSH host keys from the target's "
                      r"ssh-keygen; machine-id [0-9a-f]{32}", timeout=60)
            result = vm.expect_event(step="result", timeout=120)
            assert result["status"] == "ok", result
            if n == 0:  # Debian's own kernel, initramfs and systemd, sshd with the new keys
                check = vm.expect(r"PYINIT-CHECK (.*)", timeout=400).group(1).split()
                vm.wait_exit(timeout=120)
                booted = dict(word.split("=", 1) for word in check)
                assert booted["ssh"] == "active", check
                assert booted["hostkey"] == printed["ed25519"], (check, printed)
                assert booted["hostname"] == "node-a"
                assert vm.expect(r"PYINIT-FIRSTBOOT gone=(\w+)", timeout=150).group(1) == "yes"
            else:
                vm.wait_exit(timeout=60)
            vm.assert_never(*NEVER)
        events = server.events(mac)
        [ident] = [e for e in events if e.get("step") == "configure"
                   and e.get("status") == "identity"]
        assert {k["type"]: k["fingerprint"] for k in ident["host_keys"]} == printed
        on_disk = identity_of(disk, part)
        for kind in unique.DEFAULT_KEY_TYPES:  # what the console and event said is on the disk
            pub = on_disk[f"{kind}.pub"]
            assert pub is not None and unique.fingerprint(pub.decode()) == printed[kind]
            assert pub.decode().split()[-1] == f"root@node-{'ab'[n]}"
        state = requests.get(f"{server.srv.url}/api/machines/{mac}", timeout=10).json()
        if n == 0:
            assert booted["machine_id"] == ident["machine_id"]
            # docs/lifecycle.md: deployed by pyinit's result, booted on the target's own word
            [first] = [e for e in events if e.get("step") == "firstboot"]
            assert first["status"] == "booted" and first["hostname"] == "node-a"
            assert first["machine_id"] == ident["machine_id"]
            assert state["lifecycle"]["state"] == "booted", state["lifecycle"]
            assert state["lifecycle"]["previous"] == "deployed"
        else:  # powered off after the write: deployed, and nothing claims it booted
            assert state["lifecycle"]["state"] == "deployed", state["lifecycle"]

    # The server kept what each machine reported: known_hosts lines under the names its own
    # machine files give, with exactly the keys on each disk.
    out = io.StringIO()
    args = build_parser().parse_args(["status", "--server", server.srv.url, "--known-hosts"])
    assert args.func(args, out=out) == 0
    want = sorted(f"node-{'ab'[n]} {' '.join(pub.decode().split()[:2])}"
                  for n, disk in enumerate(disks)
                  for pub in (read(disk, part, f"/etc/ssh/ssh_host_{t}_key.pub")
                              for t in unique.DEFAULT_KEY_TYPES) if pub is not None)
    assert sorted(out.getvalue().splitlines()) == want and len(want) == 6

    first, second = identity_of(disks[0], part), identity_of(disks[1], part)
    for item in ("rsa", "ecdsa", "ed25519", "rsa.pub", "ecdsa.pub", "ed25519.pub",
                 "machine-id", "random-seed", "hostname"):
        assert first[item] and second[item], item
        assert first[item] != second[item], f"both machines have the same {item}"
    for ident_ in (first, second):
        assert re.fullmatch(rb"[0-9a-f]{32}\n", ident_["machine-id"] or b"")
        assert ident_["machine-id"] != (OLD_MACHINE_ID + "\n").encode()
    # The first machine's systemd has since saved a seed of its own; the second never booted.
    assert len(second["random-seed"] or b"") == unique.RANDOM_SEED_BYTES
    for disk in disks:
        assert listing(disk, part, "/var/lib/dhcp") == []
        assert "i-build" not in listing(disk, part, "/var/lib/cloud/instances")
