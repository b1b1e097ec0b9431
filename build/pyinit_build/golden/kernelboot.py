"""How a golden image's grub.cfg names its kernel, so that kernel upgrades inside the target
keep booting (issue #15).

``pyinit image`` writes grub.cfg once and the target has no ``update-grub``; a grub.cfg naming
``/boot/vmlinuz-6.1.0-9-amd64`` boots that kernel until someone rewrites it, and purging that
kernel leaves a machine that does not boot. So the build names the kernel through what the
distribution itself keeps current, per family:

* ``stable-links`` (Debian, Ubuntu): ``linux-update-symlinks`` (package ``linux-base``) keeps
  ``vmlinuz``/``initrd.img`` pointing at the newest kernel and ``vmlinuz.old``/``initrd.img.old``
  at the one before, in ``/`` (Debian) or ``/boot`` (``link_in_boot``/``image_dest`` in
  ``/etc/kernel-img.conf``, Ubuntu). Used when those links point at the kernel the build chose
  and the tool is in the root; a second menu entry boots the ``.old`` links.
* ``versioned``: the kernel's own path, as before, with a warning that upgrades inside the
  target are not booted until its own tooling rewrites grub.cfg. This is also what a BLS root
  (Fedora, RHEL: ``/boot/loader/entries``) gets: its entries are read by GRUB's ``blscfg``
  command, which exists only in those distributions' patched GRUB, not in the build host's
  GRUB that ``pyinit image`` installs (and mixing a root's GRUB modules into another GRUB's
  core image is not safe: modules must come from the same build as the core).

:func:`choose` is pure; :func:`read_facts` reads what it needs from the tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pyinit_build.golden import tree

Boot = Literal["stable-links", "versioned"]
Family = Literal["debian", "redhat", "other"]

UPDATER = "/usr/bin/linux-update-symlinks"
KERNEL_IMG_CONF = "/etc/kernel-img.conf"
BLS_DIR = "/boot/loader/entries"
DEBIAN_LIKE = frozenset({"debian", "ubuntu"})
REDHAT_LIKE = frozenset({"fedora", "rhel", "centos", "rocky", "almalinux", "ol"})
#: The links linux-update-symlinks maintains, relative to its directory.
LINKS = ("vmlinuz", "initrd.img", "vmlinuz.old", "initrd.img.old")


def family(os_release: str | None) -> Family:
    """The distribution family from /etc/os-release's ``ID`` and ``ID_LIKE``. Pure."""
    fields: dict[str, str] = {}
    for line in (os_release or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip("\"'")
    ids = {fields.get("ID", "").lower(), *fields.get("ID_LIKE", "").lower().split()}
    if ids & DEBIAN_LIKE:
        return "debian"
    if ids & REDHAT_LIKE:
        return "redhat"
    return "other"


def link_dir(kernel_img_conf: str | None) -> str | None:
    """Where ``linux-update-symlinks`` keeps its links (``/`` or ``/boot``), or None when
    ``do_symlinks = no``; parsed as linux-base's ``read_kernelimg_conf`` does. Pure."""
    do_symlinks, link_in_boot, image_dest = True, False, "/"
    for raw in (kernel_img_conf or "").splitlines():
        match = re.match(r"^\s*(\w+)\s*=\s*(.*)", raw.split("#", 1)[0])
        if match is None:
            continue
        name, value = match.group(1).lower(), match.group(2).strip()
        flag = {"no": False, "false": False, "0": False,
                "yes": True, "true": True, "1": True}.get(value.lower())
        if name == "do_symlinks" and flag is not None:
            do_symlinks = flag
        elif name == "link_in_boot" and flag is not None:
            link_in_boot = flag
        elif name == "image_dest":
            image_dest = value.split()[0] if value else ""
    if not do_symlinks:
        return None
    directory = "/boot" if link_in_boot else ("/" + image_dest.strip("/"))
    return directory


@dataclass(frozen=True)
class Facts:
    """What the choice needs to know about the root."""

    family: Family
    link_dir: str | None = "/"  # None: the root's kernel-img.conf turns the links off
    updater: bool = False  # linux-update-symlinks is in the root
    links: Mapping[str, str] = field(default_factory=dict)  # link path -> the file it reaches
    bls: bool = False  # the root has /boot/loader/entries/*.conf


@dataclass(frozen=True)
class MenuEntry:
    title: str
    kernel: str
    initrd: str | None


@dataclass(frozen=True)
class KernelBoot:
    boot: Boot
    entries: tuple[MenuEntry, ...]  # the first is the default
    line: str  # what the build prints: which, and why
    warning: str | None = None  # printed as a warning when upgrades will not be booted


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def choose(facts: Facts, kernel: str, initrd: str | None, *, title: str) -> KernelBoot:
    """The kernel paths grub.cfg names, for the kernel the build chose (``kernel``, ``initrd``:
    the in-root files). ``facts.links`` maps each link path that exists to the file it resolves
    to. Pure."""
    links = facts.links
    reason = _links_unusable(facts, kernel, initrd)
    if reason is None:
        assert facts.link_dir is not None
        d = facts.link_dir
        current = MenuEntry(title, _join(d, "vmlinuz"),
                            _join(d, "initrd.img") if initrd is not None else None)
        entries = [current]
        old = _join(d, "vmlinuz.old")
        if old in links:
            old_initrd = _join(d, "initrd.img.old")
            entries.append(MenuEntry(f"{title} (previous kernel)", old,
                                     old_initrd if old_initrd in links else None))
        more = f"; previous kernel through {old}" if len(entries) > 1 else ""
        return KernelBoot("stable-links", tuple(entries),
                          f"kernel boot: stable-links ({current.kernel} -> {kernel}, kept "
                          f"current by linux-update-symlinks{more})")
    return KernelBoot(
        "versioned", (MenuEntry(title, kernel, initrd),),
        f"kernel boot: versioned ({kernel})",
        f"grub.cfg names {kernel}: kernel upgrades inside the target will not be booted until "
        f"its own tooling rewrites grub.cfg ({reason})")


def _links_unusable(facts: Facts, kernel: str, initrd: str | None) -> str | None:
    """Why the stable links cannot name ``kernel``, or None when they can."""
    if facts.family == "redhat" and facts.bls:
        return (f"the root boots through BLS entries ({BLS_DIR}), which need GRUB's blscfg: "
                "only its own distribution's GRUB has it")
    if facts.family != "debian":
        return "no kernel links this distribution keeps current are known"
    if facts.link_dir is None:
        return f"do_symlinks = no in {KERNEL_IMG_CONF}"
    if not facts.updater:
        return f"no {UPDATER} in the root (package linux-base)"
    links = facts.links
    vmlinuz = _join(facts.link_dir, "vmlinuz")
    if links.get(vmlinuz) != kernel:
        where = links.get(vmlinuz)
        return (f"{vmlinuz} points at {where}, not at the chosen kernel" if where
                else f"no {vmlinuz} link in the root")
    initrd_link = _join(facts.link_dir, "initrd.img")
    if initrd is not None and links.get(initrd_link) != initrd:
        where = links.get(initrd_link)
        return (f"{initrd_link} points at {where}, not at {initrd}" if where
                else f"no {initrd_link} link in the root")
    return None


def read_facts(t: tree.Tree) -> Facts:
    """:class:`Facts` of the tree: os-release, kernel-img.conf, the links, BLS entries."""
    os_release = t.read_bytes("/etc/os-release") or t.read_bytes("/usr/lib/os-release")
    conf = t.read_bytes(KERNEL_IMG_CONF)
    directory = link_dir(conf.decode(errors="replace") if conf is not None else None)
    links: dict[str, str] = {}
    if directory is not None:
        for name in LINKS:
            path = _join(directory, name)
            entry = t.get(_join(t.resolve(directory), name))
            target = t.file_entry(path)
            if entry is not None and entry.kind == "symlink" and target is not None:
                links[path] = target.path
    bls_dir = t.resolve(BLS_DIR)
    bls = any(c.path.endswith(".conf") for c in t.children(bls_dir))
    return Facts(family(os_release.decode(errors="replace") if os_release else None),
                 directory, t.file_entry(UPDATER) is not None, links, bls)
