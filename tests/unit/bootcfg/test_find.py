"""pyinit.bootcfg.find: the boot entry of a root in tmp_path (grub.cfg, BLS entries,
/boot/vmlinuz*), paths resolved inside the root."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pyinit.bootcfg.find import find_boot_entry, parse_bls, resolve_in
from pyinit.errors import HandoffError

from ..fakes import write
from .test_grub import DEBIAN_CFG, UUID

MID = "6f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"


def bls(version: str, extra: str = "") -> str:
    return (f"title Fedora Linux ({version}) 39\nversion {version}\nlinux /vmlinuz-{version}\n"
            f"initrd /initramfs-{version}.img\noptions root=UUID={UUID} ro rhgb\n{extra}")


def test_bls_newest_first(tmp_path: Path) -> None:
    d = "/boot/loader/entries"
    write(tmp_path, f"{d}/{MID}-6.5.6-300.fc39.x86_64.conf", bls("6.5.6-300.fc39.x86_64"))
    write(tmp_path, f"{d}/{MID}-6.10.2-200.fc39.x86_64.conf",
          bls("6.10.2-200.fc39.x86_64", "initrd /extra.img\noptions $tuned_params\n"))
    write(tmp_path, f"{d}/{MID}-0-rescue.conf", f"title Rescue\nlinux /vmlinuz-0-rescue-{MID}\n"
          f"options root=UUID={UUID} ro\n")
    write(tmp_path, f"{d}/efi.conf", "title Shell\nefi /shellx64.efi\n")
    entries = parse_bls(tmp_path)
    assert [(e.kernel, e.initrds, e.cmdline) for e in entries] == [
        ("/vmlinuz-6.10.2-200.fc39.x86_64",
         ("/initramfs-6.10.2-200.fc39.x86_64.img", "/extra.img"), f"root=UUID={UUID} ro rhgb"),
        ("/vmlinuz-6.5.6-300.fc39.x86_64", ("/initramfs-6.5.6-300.fc39.x86_64.img",),
         f"root=UUID={UUID} ro rhgb"),
        (f"/vmlinuz-0-rescue-{MID}", (), f"root=UUID={UUID} ro"),
    ]
    assert entries[0].notes == ("unknown variable(s) dropped: $tuned_params",)
    saved = parse_bls(tmp_path, {"saved_entry": f"{MID}-6.5.6-300.fc39.x86_64"})
    assert saved[0].kernel == "/vmlinuz-6.5.6-300.fc39.x86_64"


def test_find_boot_entry_grub_separate_boot_partition(tmp_path: Path) -> None:
    """A mounted /boot partition: grub.cfg at /grub/grub.cfg, paths without /boot."""
    write(tmp_path, "/grub/grub.cfg", "menuentry 'x' {\n linux /vmlinuz-6.1 root=/dev/vda3\n"
          " initrd /initrd.img-6.1\n}\n")
    write(tmp_path, "/vmlinuz-6.1")
    write(tmp_path, "/initrd.img-6.1")
    entry = find_boot_entry(tmp_path)
    assert (entry.kernel, entry.initrds, entry.source) == ("/vmlinuz-6.1", ("/initrd.img-6.1",),
                                                           "/grub/grub.cfg")


def test_find_boot_entry_debian(tmp_path: Path) -> None:
    write(tmp_path, "/boot/grub/grub.cfg", DEBIAN_CFG)
    write(tmp_path, "/boot/vmlinuz-6.1.0-9-amd64")
    write(tmp_path, "/boot/intel-ucode.img")
    write(tmp_path, "/boot/initrd.img-6.1.0-9-amd64")
    entry = find_boot_entry(tmp_path)
    assert entry.menu_path == "0" and entry.source == "/boot/grub/grub.cfg"
    assert entry.initrds == ("/boot/intel-ucode.img", "/boot/initrd.img-6.1.0-9-amd64")


def test_find_boot_entry_falls_back_to_vmlinuz_links(tmp_path: Path) -> None:
    write(tmp_path, "/boot/vmlinuz-6.1.0-9-amd64")
    write(tmp_path, "/boot/initrd.img-6.1.0-9-amd64")
    write(tmp_path, "/boot/vmlinuz-5.10.0-21-amd64")
    (tmp_path / "boot/vmlinuz").symlink_to("/boot/vmlinuz-6.1.0-9-amd64")  # absolute: in root
    (tmp_path / "boot/initrd.img").symlink_to("initrd.img-6.1.0-9-amd64")
    write(tmp_path, "/etc/kernel/cmdline", f"root=UUID={UUID} ro\n")
    entry = find_boot_entry(tmp_path)  # the entry names the files the links lead to
    assert (entry.kernel, entry.initrds, entry.cmdline, entry.source) == (
        "/boot/vmlinuz-6.1.0-9-amd64", ("/boot/initrd.img-6.1.0-9-amd64",),
        f"root=UUID={UUID} ro", "/boot/vmlinuz")
    (tmp_path / "boot/vmlinuz").unlink()
    entry = find_boot_entry(tmp_path)
    assert (entry.kernel, entry.initrds) == ("/boot/vmlinuz-6.1.0-9-amd64",
                                             ("/boot/initrd.img-6.1.0-9-amd64",))


def bzimage(release: str) -> bytes:
    """Enough of a bzImage for its release string: the setup header and kernel_version."""
    img = bytearray(0x1000)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x20E, 0x300)
    text = f"{release} (debian-kernel@lists.debian.org) #1 SMP\0".encode()
    img[0x500:0x500 + len(text)] = text
    return bytes(img)


GOLDEN_CFG = f"""menuentry 'pyinit golden image' {{
    search --no-floppy --fs-uuid --set=root {UUID}
    linux /vmlinuz root=UUID={UUID} ro init=/sbin/marker
    initrd /initrd.img
}}
menuentry 'pyinit golden image (previous kernel)' {{
    search --no-floppy --fs-uuid --set=root {UUID}
    linux /vmlinuz.old root=UUID={UUID} ro init=/sbin/marker
    initrd /initrd.img.old
}}
"""


def test_grub_cfg_naming_vmlinuz_boots_the_kernel_the_link_points_at(tmp_path: Path) -> None:
    """A golden image's grub.cfg names Debian's /vmlinuz (issue #15): after a kernel upgrade
    inside the target, linux-update-symlinks points it at the new kernel, and so does kexec."""
    write(tmp_path, "/boot/grub/grub.cfg", GOLDEN_CFG)
    for release in ("6.1.0-50-cloud-amd64", "6.1.0-57-cloud-amd64"):
        write(tmp_path, f"/boot/vmlinuz-{release}", bzimage(release))
        write(tmp_path, f"/boot/initrd.img-{release}")
    links = {"vmlinuz": "boot/vmlinuz-6.1.0-57-cloud-amd64",
             "initrd.img": "boot/initrd.img-6.1.0-57-cloud-amd64",
             "vmlinuz.old": "/boot/vmlinuz-6.1.0-50-cloud-amd64",  # absolute: inside the root
             "initrd.img.old": "boot/initrd.img-6.1.0-50-cloud-amd64"}
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    with capture_logs() as logs:
        entry = find_boot_entry(tmp_path)
    assert (entry.kernel, entry.initrds, entry.cmdline, entry.title) == (
        "/boot/vmlinuz-6.1.0-57-cloud-amd64", ("/boot/initrd.img-6.1.0-57-cloud-amd64",),
        f"root=UUID={UUID} ro init=/sbin/marker", "pyinit golden image")
    assert [e["event"] for e in logs] == [
        f"handoff: boot entry 'pyinit golden image': /vmlinuz (/initrd.img) from "
        f"/boot/grub/grub.cfg: root=UUID={UUID} ro init=/sbin/marker",
        "handoff: kernel 6.1.0-57-cloud-amd64: /vmlinuz -> /boot/vmlinuz-6.1.0-57-cloud-amd64, "
        "/initrd.img -> /boot/initrd.img-6.1.0-57-cloud-amd64"]
    # the old kernel purged: linux-update-symlinks points both links at the one left
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / f"boot/{name}-6.1.0-50-cloud-amd64").unlink()
        (tmp_path / f"{name}.old").unlink()
        (tmp_path / f"{name}.old").symlink_to(links[name])
    assert find_boot_entry(tmp_path).kernel == "/boot/vmlinuz-6.1.0-57-cloud-amd64"
    # a kernel file that is not a bzImage still boots; the log says its release is unknown
    write(tmp_path, "/boot/vmlinuz-6.1.0-57-cloud-amd64", b"not a bzImage")
    with capture_logs() as logs:
        find_boot_entry(tmp_path)
    assert logs[-1]["event"].startswith("handoff: kernel unknown: /vmlinuz -> ")


def test_find_boot_entry_missing_kernel_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path, "/boot/grub/grub.cfg", DEBIAN_CFG)
    with pytest.raises(HandoffError) as err:
        find_boot_entry(tmp_path)
    assert str(err.value) == (
        f"kexec: no kernel found in {tmp_path} (looked at /boot/grub/grub.cfg, "
        "/boot/loader/entries, /boot/vmlinuz*); /boot/grub/grub.cfg: kernel "
        f"/boot/vmlinuz-6.1.0-9-amd64 not in {tmp_path}")


def test_resolve_in_stays_inside_root(tmp_path: Path) -> None:
    write(tmp_path, "/lib/systemd/systemd")
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("../lib/systemd/systemd")
    (tmp_path / "bin").symlink_to("/usr/bin")
    assert resolve_in(tmp_path, "/sbin/init") == tmp_path / "lib/systemd/systemd"
    assert resolve_in(tmp_path, "/bin/sh") == tmp_path / "usr/bin/sh"
    assert resolve_in(tmp_path, "/../../etc") == tmp_path / "etc"
