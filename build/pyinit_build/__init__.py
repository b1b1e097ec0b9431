"""Host side: the initramfs builder (freeze, libraries, busybox, modules, cpio), the CLI."""
