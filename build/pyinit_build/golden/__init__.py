"""``pyinit image``: golden disk images from a root filesystem, without root or loop devices.

The pieces, each testable alone:

- :mod:`.tree` — the root filesystem as data (:class:`~.tree.Tree` of :class:`~.tree.Entry`),
  loaded from a directory, a tarball, an OCI image layout or a ``docker save`` archive.
- :mod:`.fs` — filesystems written from a tree into a plain file: ext4 (``mke2fs -d`` then a
  ``debugfs`` script for ownership, modes, device nodes and times), XFS (a protofile) and FAT
  (``mkfs.fat`` + mtools).
- :mod:`.lvm` — an LVM2 physical volume with one linear LV, metadata written as bytes.
- :mod:`.grub` — GRUB for BIOS (boot.img + core.img patched in place, as ``grub-bios-setup``
  does) and UEFI (``BOOTX64.EFI``), and the grub.cfg.
- :mod:`.kernelboot` — how grub.cfg names the kernel (the distribution's stable links, or the
  versioned path with a warning), so kernel upgrades inside the target keep booting (pure choice).
- :mod:`.layout` — the partition plan (pure) and the sparse assembly of the disk.
- :mod:`.build` — the whole build: atomic output, manifest, conversions, compressed copy.
"""
