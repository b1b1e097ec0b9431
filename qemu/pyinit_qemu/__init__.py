"""QEMU harness: boot a kernel + initramfs, or a disk through SeaBIOS/OVMF, under TCG; read the
serial console, expect lines."""

from pyinit.units import parse_size
from pyinit_qemu.vm import (
    DEFAULT_MAC,
    SLIRP_HOST,
    VM,
    Disk,
    ExpectTimeout,
    Ovmf,
    UnexpectedOutput,
    VMConfig,
    VMError,
    build_command,
    create_disk,
    find_ovmf,
    guest_url,
    kernel_append,
    kvm_works,
    resolve_accel,
)

__all__ = [
    "DEFAULT_MAC",
    "SLIRP_HOST",
    "VM",
    "Disk",
    "ExpectTimeout",
    "Ovmf",
    "UnexpectedOutput",
    "VMConfig",
    "VMError",
    "build_command",
    "create_disk",
    "find_ovmf",
    "guest_url",
    "kernel_append",
    "kvm_works",
    "parse_size",
    "resolve_accel",
]
