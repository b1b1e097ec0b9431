"""pyinit.bootcfg.find: the boot entry of a root in tmp_path (grub.cfg, BLS entries,
/boot/vmlinuz*), paths resolved inside the root."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    entry = find_boot_entry(tmp_path)
    assert (entry.kernel, entry.initrds, entry.cmdline) == (
        "/boot/vmlinuz", ("/boot/initrd.img",), f"root=UUID={UUID} ro")
    (tmp_path / "boot/vmlinuz").unlink()
    entry = find_boot_entry(tmp_path)
    assert (entry.kernel, entry.initrds) == ("/boot/vmlinuz-6.1.0-9-amd64",
                                             ("/boot/initrd.img-6.1.0-9-amd64",))


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
