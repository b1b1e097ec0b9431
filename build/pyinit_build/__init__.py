"""Host-side builder: the initramfs (freeze, libraries, busybox, modules, cpio) and the `pyinit` CLI."""
