"""What the written system would boot, read from its boot configuration.

:func:`pyinit.bootcfg.find.find_boot_entry` looks, in a mounted root, for GRUB's ``grub.cfg``
(default entry, submenus, ``search --set=root``, ``(hd0,gpt2)``/``($root)`` prefixes), then Boot
Loader Specification entries (``/boot/loader/entries/*.conf``, Fedora/RHEL), then the
``/boot/vmlinuz`` links or the newest ``/boot/vmlinuz-*`` (Debian, no bootloader config). The
parsers are pure functions on text; only :mod:`~pyinit.bootcfg.find` reads the root. The
hand-off itself is :mod:`pyinit.kexec` (and :mod:`pyinit.switchroot` for switch_root).

:mod:`pyinit.bootcfg.entry`
    :class:`~pyinit.bootcfg.entry.BootEntry`, what every parser returns.
:mod:`pyinit.bootcfg.grub`
    grub.cfg (a lexer and a small interpreter) and grubenv. Pure.
:mod:`pyinit.bootcfg.bls`
    One BLS entry file, and the version order of entries and kernels. Pure.
:mod:`pyinit.bootcfg.find`
    The thin I/O layer: the files of a mounted root, paths resolved as a chroot sees them, the
    choice of one entry whose kernel and initrds exist.
"""
