"""pyinit.kexec: the call sequence (load, sync, unmount, reboot) and its failures. Syscalls are
monkeypatched: nothing is loaded or rebooted."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import kexec, policy, syscalls
from pyinit.bootcfg.entry import BootEntry
from pyinit.errors import HandoffError

from .fakes import write


def test_concat_initrds_pads_to_four_bytes(tmp_path: Path) -> None:
    a = write(tmp_path, "a", b"12345")
    b = write(tmp_path, "b", b"abcd")
    out = tmp_path / "out"
    with out.open("wb") as f:
        assert kexec.concat_initrds([a, b], f) == 12
    assert out.read_bytes() == b"12345\0\0\0abcd"


# ---- kexec ---------------------------------------------------------------------------------


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []

    def load(kernel_fd: int, initrd_fd: int, cmdline: str, flags: int = 0) -> None:
        initrd = os.pread(initrd_fd, 100, 0) if initrd_fd >= 0 else None
        log.append(("kexec_file_load", os.pread(kernel_fd, 100, 0), initrd, cmdline, flags))

    monkeypatch.setattr(syscalls, "kexec_file_load", load)
    monkeypatch.setattr(syscalls, "reboot", lambda cmd: log.append(("reboot", cmd)))
    monkeypatch.setattr(syscalls, "umount", lambda t, f=0: log.append(("umount", t)))
    monkeypatch.setattr(os, "sync", lambda: log.append(("sync",)))
    return log


def target(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "target"
    write(root, "/boot/vmlinuz-6.1", b"KERNEL")
    write(root, "/boot/ucode.img", b"UC")
    write(root, "/boot/initrd.img-6.1", b"INITRD")
    mounts = write(tmp_path, "mounts", f"rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n"
                   f"/dev/vda2 {root} ext4 ro 0 0\n")
    return root, mounts


def test_kexec_loads_before_unmounting_and_rebooting(tmp_path: Path,
                                                     calls: list[tuple[Any, ...]]) -> None:
    root, mounts = target(tmp_path)
    entry = BootEntry(kernel="/boot/vmlinuz-6.1", initrds=("/boot/ucode.img",
                                                           "/boot/initrd.img-6.1"),
                      cmdline="root=/dev/vda2  ro")
    kexec.kexec(entry, root, extra_cmdline="console=ttyS0", scratch=tmp_path / "run",
                mounts_file=mounts)
    assert calls == [
        ("kexec_file_load", b"KERNEL", b"UC\0\0INITRD\0\0", "root=/dev/vda2 ro console=ttyS0", 0),
        ("sync",), ("umount", str(root)), ("sync",),
        ("reboot", syscalls.LINUX_REBOOT_CMD_KEXEC),
    ]
    assert list((tmp_path / "run").iterdir()) == []  # the concatenation is already unlinked


def test_kexec_without_initrd(tmp_path: Path, calls: list[tuple[Any, ...]]) -> None:
    root, _ = target(tmp_path)
    kexec.kexec_load(BootEntry(kernel="/boot/vmlinuz-6.1", cmdline="root=/dev/vda2"), root)
    assert calls == [("kexec_file_load", b"KERNEL", None, "root=/dev/vda2",
                      syscalls.KEXEC_FILE_NO_INITRAMFS)]


@pytest.mark.parametrize(("err", "words"), [
    (errno.EPERM, "Operation not permitted — kernel lockdown"),
    (errno.EKEYREJECTED, "signature is not trusted"),
    (errno.ENOEXEC, "not a kernel image"),
    (errno.ENOSYS, "CONFIG_KEXEC_FILE"),
])
def test_kexec_failure_unmounts_nothing(tmp_path: Path, calls: list[tuple[Any, ...]],
                                        monkeypatch: pytest.MonkeyPatch, err: int,
                                        words: str) -> None:
    root, mounts = target(tmp_path)

    def refuse(*_: Any) -> None:
        raise OSError(err, "kexec_file_load")

    monkeypatch.setattr(syscalls, "kexec_file_load", refuse)
    entry = BootEntry(kernel="/boot/vmlinuz-6.1", initrds=("/boot/initrd.img-6.1",))
    with pytest.raises(HandoffError) as exc:
        kexec.kexec(entry, root, mounts_file=mounts)
    assert str(exc.value).startswith("kexec_file_load: ") and words in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1
    assert calls == []  # no sync, no umount, no reboot


def test_kexec_missing_kernel(tmp_path: Path, calls: list[tuple[Any, ...]]) -> None:
    root, mounts = target(tmp_path)
    with pytest.raises(HandoffError, match=r"kexec: .*vmlinuz-9: No such file"):
        kexec.kexec(BootEntry(kernel="/boot/vmlinuz-9"), root, mounts_file=mounts)
    assert calls == []


def test_quiesce_is_powers_sequence(calls: list[tuple[Any, ...]], tmp_path: Path) -> None:
    mounts = write(tmp_path, "m", "rootfs / rootfs rw 0 0\n/dev/vda1 /mnt/a ext4 rw 0 0\n")
    policy.quiesce(mounts)
    assert calls == [("sync",), ("umount", "/mnt/a"), ("sync",)]
