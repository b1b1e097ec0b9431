"""How the golden image's grub.cfg names its kernel (issue #15): the distribution family, the
links linux-update-symlinks keeps, the choice, the facts read from a tree, and the grub.cfg."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit_build.golden import grub
from pyinit_build.golden import kernelboot as kb
from pyinit_build.golden.tree import Tree

EPOCH = 1_700_000_000
KERNEL = "/boot/vmlinuz-6.1.0-56-cloud-amd64"
INITRD = "/boot/initrd.img-6.1.0-56-cloud-amd64"
OLD_KERNEL = "/boot/vmlinuz-6.1.0-50-cloud-amd64"
OLD_INITRD = "/boot/initrd.img-6.1.0-50-cloud-amd64"
TITLE = "golden"


@pytest.mark.parametrize(("os_release", "family"), [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "debian"),
    ("ID=ubuntu\nID_LIKE=debian\n", "debian"),
    ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "debian"),
    ("ID=fedora\nVERSION_ID=39\n", "redhat"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "redhat"),
    ('ID="almalinux"\n', "redhat"),
    ("ID=alpine\n", "other"),
    ("ID=arch\n", "other"),
    ("garbage without equals\n", "other"),
    (None, "other"),
])
def test_family(os_release: str | None, family: str) -> None:
    assert kb.family(os_release) == family


@pytest.mark.parametrize(("conf", "directory"), [
    (None, "/"),  # Debian: no /etc/kernel-img.conf, linux-base's defaults
    ("do_symlinks = yes\ndo_bootloader = no\n", "/"),
    # Ubuntu's file
    ("# Kernel image management overrides\ndo_symlinks = yes\ndo_bootloader = no\n"
     "do_initrd = yes\nlink_in_boot = yes\n", "/boot"),
    ("image_dest = /boot/   # where the links go\n", "/boot"),
    ("Image_Dest=/boot extra words\n", "/boot"),
    ("do_symlinks = No\n", None),
    ("do_symlinks = maybe\n", "/"),  # an invalid value is ignored, as linux-base does
    ("link_in_boot = yes\ndo_symlinks = 0\n", None),
    ("not a setting\n", "/"),
])
def test_link_dir(conf: str | None, directory: str | None) -> None:
    assert kb.link_dir(conf) == directory


LINKS = {"/vmlinuz": KERNEL, "/initrd.img": INITRD, "/vmlinuz.old": OLD_KERNEL,
         "/initrd.img.old": OLD_INITRD}
DEBIAN = kb.Facts("debian", "/", True, LINKS)


def test_debian_links_pointing_at_the_chosen_kernel_are_used_with_the_previous_kernel() -> None:
    boot = kb.choose(DEBIAN, KERNEL, INITRD, title=TITLE)
    assert boot.boot == "stable-links" and boot.warning is None
    assert boot.entries == (kb.MenuEntry(TITLE, "/vmlinuz", "/initrd.img"),
                            kb.MenuEntry(f"{TITLE} (previous kernel)", "/vmlinuz.old",
                                         "/initrd.img.old"))
    assert boot.line == (f"kernel boot: stable-links (/vmlinuz -> {KERNEL}, kept current by "
                         "linux-update-symlinks; previous kernel through /vmlinuz.old)")


def test_ubuntu_links_in_boot_without_old_links() -> None:
    facts = kb.Facts("debian", "/boot", True, {"/boot/vmlinuz": KERNEL, "/boot/initrd.img": INITRD})
    boot = kb.choose(facts, KERNEL, INITRD, title=TITLE)
    assert boot.boot == "stable-links"
    assert boot.entries == (kb.MenuEntry(TITLE, "/boot/vmlinuz", "/boot/initrd.img"),)
    assert "previous" not in boot.line


def test_old_kernel_without_an_old_initrd_and_a_kernel_without_initrd() -> None:
    facts = kb.Facts("debian", "/", True, {"/vmlinuz": KERNEL, "/vmlinuz.old": OLD_KERNEL})
    boot = kb.choose(facts, KERNEL, None, title=TITLE)
    assert boot.entries == (kb.MenuEntry(TITLE, "/vmlinuz", None),
                            kb.MenuEntry(f"{TITLE} (previous kernel)", "/vmlinuz.old", None))


@pytest.mark.parametrize(("facts", "kernel", "initrd", "why"), [
    # --kernel/--kernel-deb installed another kernel than the one the links name
    (DEBIAN, "/boot/vmlinuz-6.1.0-57-cloud-amd64", None,
     f"/vmlinuz points at {KERNEL}, not at the chosen kernel"),
    (DEBIAN, KERNEL, "/boot/initrd.img-custom",
     f"/initrd.img points at {INITRD}, not at /boot/initrd.img-custom"),
    (kb.Facts("debian", "/", True, {"/vmlinuz": KERNEL}), KERNEL, INITRD,
     "no /initrd.img link in the root"),
    (kb.Facts("debian", "/", True, {}), KERNEL, INITRD, "no /vmlinuz link in the root"),
    (kb.Facts("debian", "/", False, LINKS), KERNEL, INITRD,
     "no /usr/bin/linux-update-symlinks in the root (package linux-base)"),
    (kb.Facts("debian", None, True, LINKS), KERNEL, INITRD,
     "do_symlinks = no in /etc/kernel-img.conf"),
    # links in / but linux-update-symlinks keeps them in /boot: nothing updates those
    (kb.Facts("debian", "/boot", True, LINKS), KERNEL, INITRD,
     "no /boot/vmlinuz link in the root"),
    (kb.Facts("redhat", "/", False, {}, bls=True), KERNEL, INITRD,
     "the root boots through BLS entries (/boot/loader/entries), which need GRUB's blscfg: "
     "only its own distribution's GRUB has it"),
    (kb.Facts("redhat", "/", False, {}), KERNEL, INITRD,
     "no kernel links this distribution keeps current are known"),
    # links alone, without a distribution known to maintain them, are not trusted
    (kb.Facts("other", "/", True, LINKS), KERNEL, INITRD,
     "no kernel links this distribution keeps current are known"),
])
def test_versioned_with_a_warning_that_says_why(facts: kb.Facts, kernel: str, initrd: str | None,
                                                why: str) -> None:
    boot = kb.choose(facts, kernel, initrd, title=TITLE)
    assert boot.boot == "versioned"
    assert boot.entries == (kb.MenuEntry(TITLE, kernel, initrd),)
    assert boot.line == f"kernel boot: versioned ({kernel})"
    assert boot.warning == (f"grub.cfg names {kernel}: kernel upgrades inside the target will "
                            f"not be booted until its own tooling rewrites grub.cfg ({why})")


def _debian_tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "work")
    t.write_file("/usr/lib/os-release", b"ID=debian\n", mtime=EPOCH)
    t.mkdir("/etc", mtime=EPOCH)
    t.symlink("/etc/os-release", "../usr/lib/os-release", mtime=EPOCH)
    t.write_file("/usr/bin/linux-update-symlinks", b"#!/usr/bin/perl\n", mode=0o755,
                 mtime=EPOCH)
    for path in (KERNEL, INITRD, OLD_KERNEL, OLD_INITRD):
        t.write_file(path, b"x", mtime=EPOCH)
    t.symlink("/vmlinuz", KERNEL.lstrip("/"), mtime=EPOCH)  # relative, as linux-update-symlinks
    t.symlink("/initrd.img", INITRD.lstrip("/"), mtime=EPOCH)
    t.symlink("/vmlinuz.old", OLD_KERNEL, mtime=EPOCH)  # absolute: resolved inside the tree
    t.symlink("/initrd.img.old", OLD_INITRD, mtime=EPOCH)
    return t


def test_read_facts_of_a_debian_tree(tmp_path: Path) -> None:
    t = _debian_tree(tmp_path)
    assert kb.read_facts(t) == DEBIAN
    t.write_file("/etc/kernel-img.conf", b"link_in_boot = yes\n", mtime=EPOCH)
    t.symlink("/boot/vmlinuz", "vmlinuz-6.1.0-56-cloud-amd64", mtime=EPOCH)
    t.symlink("/boot/initrd.img.old", "missing", mtime=EPOCH)  # dangling: not a link to use
    assert kb.read_facts(t) == kb.Facts("debian", "/boot", True, {"/boot/vmlinuz": KERNEL})


def test_read_facts_of_a_bls_tree(tmp_path: Path) -> None:
    t = Tree(tmp_path / "work")
    t.write_file("/etc/os-release", b'ID="rocky"\nID_LIKE="rhel centos fedora"\n', mtime=EPOCH)
    t.write_file("/vmlinuz", b"a regular file, not a link", mtime=EPOCH)
    assert kb.read_facts(t) == kb.Facts("redhat", "/", False, {}, bls=False)
    t.write_file("/boot/loader/entries/abc-5.14.0-362.el9.x86_64.conf", b"title x\n",
                 mtime=EPOCH)
    assert kb.read_facts(t).bls


def test_grub_cfg_with_the_previous_kernel() -> None:
    boot = kb.choose(DEBIAN, KERNEL, INITRD, title=TITLE)
    entries = [grub.BootEntry("u-u-i-d", e.kernel, e.initrd, "root=UUID=u-u-i-d ro",
                              title=e.title, serial=None) for e in boot.entries]
    assert grub.grub_cfg(*entries) == """\
# Written by pyinit image.
set timeout=1
set default=0
menuentry 'golden' {
    search --no-floppy --fs-uuid --set=root u-u-i-d
    echo 'Loading /vmlinuz'
    linux /vmlinuz root=UUID=u-u-i-d ro
    initrd /initrd.img
}
menuentry 'golden (previous kernel)' {
    search --no-floppy --fs-uuid --set=root u-u-i-d
    echo 'Loading /vmlinuz.old'
    linux /vmlinuz.old root=UUID=u-u-i-d ro
    initrd /initrd.img.old
}
"""
