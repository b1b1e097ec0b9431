"""QEMU harness: boot a kernel + initramfs under TCG, read the serial console, expect lines."""
