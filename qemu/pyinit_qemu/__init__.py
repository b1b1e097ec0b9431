"""QEMU harness: boot a kernel + initramfs under TCG, read the serial console, expect lines."""

from pyinit_qemu.vm import (
    DEFAULT_MAC,
    SLIRP_HOST,
    VM,
    Disk,
    ExpectTimeout,
    UnexpectedOutput,
    VMConfig,
    VMError,
    build_command,
    create_disk,
    guest_url,
    kernel_append,
    kvm_works,
    parse_size,
    resolve_accel,
)

__all__ = [
    "DEFAULT_MAC",
    "SLIRP_HOST",
    "VM",
    "Disk",
    "ExpectTimeout",
    "UnexpectedOutput",
    "VMConfig",
    "VMError",
    "build_command",
    "create_disk",
    "guest_url",
    "kernel_append",
    "kvm_works",
    "parse_size",
    "resolve_accel",
]
