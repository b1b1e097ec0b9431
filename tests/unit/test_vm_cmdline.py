"""The QEMU harness without QEMU: exact argv from build_command, and the serial reader, expect(),
timeouts and cleanup against a fake "QEMU" (a small Python script run with sys.executable)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import stat
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pyinit.log import parse_event
from pyinit.units import parse_size
from pyinit_qemu import cli as vm_cli
from pyinit_qemu import vm as vm_mod
from pyinit_qemu.vm import (
    VM,
    Disk,
    ExpectTimeout,
    Ovmf,
    UnexpectedOutput,
    Unsplicer,
    VMConfig,
    VMError,
    build_command,
    clean_line,
    create_disk,
    find_ovmf,
    guest_url,
    kernel_append,
    prepare_uefi_vars,
    resolve_accel,
    resolve_firmware,
)

KERNEL, INITRD = "/k/vmlinuz", "/k/initrd.zst"
BASE = [
    "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "1024", "-smp", "1",
    "-kernel", KERNEL, "-initrd", INITRD, "-append", "console=ttyS0 panic=-1 quiet",
    "-no-reboot", "-display", "none", "-serial", "stdio", "-monitor", "none",
]
NET = ["-netdev", "user,id=n0",
       "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="]


# --------------------------------------------------------------------------------------------
# build_command


def test_default_command() -> None:
    assert build_command(VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet")) == BASE + NET


def test_no_initrd_no_append() -> None:
    argv = build_command(VMConfig(kernel=KERNEL))
    assert argv[:14] == ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m",
                         "1024", "-smp", "1", "-kernel", KERNEL, "-append",
                         "console=ttyS0 panic=-1", "-no-reboot"]
    assert "-initrd" not in argv


def test_hardware_options() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", mac="52:54:00:aa:bb:cc",
                   nic_model="e1000", memory_mb=2048, cpus=2, hostfwd=["tcp:127.0.0.1:2222-:22"],
                   extra_args=["-rtc", "base=utc"], qemu="/opt/qemu/bin/qemu-system-x86_64")
    assert build_command(cfg) == [
        "/opt/qemu/bin/qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "2048",
        "-smp", "2", *BASE[9:],
        "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22",
        "-device", "e1000,netdev=n0,mac=52:54:00:aa:bb:cc,romfile=",
        "-rtc", "base=utc",
    ]


def test_no_nic() -> None:
    argv = build_command(VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", nic_model=None))
    assert argv == [*BASE, "-nic", "none"]


def test_kvm_uses_host_cpu() -> None:
    argv = build_command(VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", accel="kvm"))
    assert argv[:5] == ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host"]


def test_auto_must_be_resolved_first() -> None:
    with pytest.raises(ValueError, match="resolve_accel"):
        build_command(VMConfig(kernel=KERNEL, accel="auto"))


def test_resolve_accel() -> None:
    def broken() -> bool:
        raise AssertionError("must not probe")

    assert resolve_accel("tcg", probe=broken) == "tcg"
    assert resolve_accel("kvm", probe=broken) == "kvm"
    assert resolve_accel("auto", probe=lambda: True) == "kvm"
    assert resolve_accel("auto", probe=lambda: False) == "tcg"
    with pytest.raises(ValueError):
        resolve_accel("hvf", probe=broken)


def test_virtio_disks_with_serial() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet",
                   disks=[Disk("/d/a.raw", serial="SN-A"), Disk("/d/b.qcow2", format="qcow2")])
    assert build_command(cfg) == BASE + NET + [
        "-drive", "file=/d/a.raw,format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,serial=SN-A",
        "-drive", "file=/d/b.qcow2,format=qcow2,if=none,id=d1",
        "-device", "virtio-blk-pci,drive=d1",
    ]


def test_discard_settings() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", disks=[
        Disk("/d/a", discard="unmap"), Disk("/d/b", "nvme", discard="ignore"),
        Disk("/d/c", discard="off")])
    assert build_command(cfg)[len(BASE) + len(NET):] == [
        "-drive", "file=/d/a,format=raw,if=none,id=d0,discard=unmap",
        "-device", "virtio-blk-pci,drive=d0",
        "-drive", "file=/d/b,format=raw,if=none,id=d1,discard=ignore",
        "-device", "nvme,drive=d1,serial=nvme1",
        "-drive", "file=/d/c,format=raw,if=none,id=d2",
        "-device", "virtio-blk-pci,drive=d2,discard=off",
    ]
    with pytest.raises(ValueError, match="discard off needs interface virtio"):
        Disk("/d/d", "ahci", discard="off")


def test_mixed_interfaces_add_each_controller_once() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", disks=[
        Disk("/d/0", "ahci"), Disk("/d/1", "ahci", serial="S1"), Disk("/d/2", "ide"),
        Disk("/d/3", "scsi"), Disk("/d/4", "scsi")])
    assert build_command(cfg)[len(BASE) + len(NET):] == [
        "-drive", "file=/d/0,format=raw,if=none,id=d0",
        "-device", "ahci,id=ahci0",
        "-device", "ide-hd,drive=d0,bus=ahci0.0",
        "-drive", "file=/d/1,format=raw,if=none,id=d1",
        "-device", "ide-hd,drive=d1,bus=ahci0.1,serial=S1",
        "-drive", "file=/d/2,format=raw,if=none,id=d2",
        "-device", "ide-hd,drive=d2",
        "-drive", "file=/d/3,format=raw,if=none,id=d3",
        "-device", "virtio-scsi-pci,id=scsi0",
        "-device", "scsi-hd,drive=d3,bus=scsi0.0",
        "-drive", "file=/d/4,format=raw,if=none,id=d4",
        "-device", "scsi-hd,drive=d4,bus=scsi0.0",
    ]


def test_too_many_ahci_disks() -> None:
    with pytest.raises(ValueError, match="AHCI"):
        build_command(VMConfig(kernel=KERNEL, disks=[Disk(f"/d/{i}", "ahci") for i in range(7)]))


def test_commas_in_option_values_are_doubled() -> None:
    argv = build_command(VMConfig(kernel=KERNEL, disks=[Disk("/d/a,b.raw", serial="x,y")]))
    assert "file=/d/a,,b.raw,format=raw,if=none,id=d0" in argv
    assert "virtio-blk-pci,drive=d0,serial=x,,y" in argv


def test_bad_interface() -> None:
    with pytest.raises(ValueError, match="interface"):
        Disk("/d/a", interface="floppy")  # type: ignore[arg-type]


def test_nvme_and_removable_usb_disks() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", disks=[
        Disk("/d/0", "nvme", serial="big"), Disk("/d/1", "nvme"),
        Disk("/d/2", "usb", serial="stick", removable=True), Disk("/d/3", "usb")])
    assert build_command(cfg)[len(BASE) + len(NET):] == [
        "-drive", "file=/d/0,format=raw,if=none,id=d0", "-device", "nvme,drive=d0,serial=big",
        "-drive", "file=/d/1,format=raw,if=none,id=d1", "-device", "nvme,drive=d1,serial=nvme1",
        "-drive", "file=/d/2,format=raw,if=none,id=d2", "-device", "qemu-xhci,id=xhci0",
        "-device", "usb-storage,drive=d2,bus=xhci0.0,serial=stick,removable=on",
        "-drive", "file=/d/3,format=raw,if=none,id=d3",
        "-device", "usb-storage,drive=d3,bus=xhci0.0",
    ]
    with pytest.raises(ValueError, match="removable"):
        build_command(VMConfig(kernel=KERNEL, disks=[Disk("/d/a", removable=True)]))


# --------------------------------------------------------------------------------------------
# Firmware boot: no -kernel, SeaBIOS or OVMF boots the first disk


FW_HEAD = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "1024", "-smp",
           "1"]
CONSOLE = ["-display", "none", "-serial", "stdio", "-monitor", "none"]
OVMF = Ovmf(Path("/fw/OVMF_CODE_4M.fd"), Path("/fw/OVMF_VARS_4M.fd"))
PFLASH = ["-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd",
          "-drive", "if=pflash,format=raw,unit=1,file=/w/OVMF_VARS.fd"]


def test_bios_disk_boot() -> None:
    cfg = VMConfig(disks=[Disk("/d/golden.raw"), Disk("/d/data.raw", "ahci")], nic_model=None)
    assert build_command(cfg) == [
        *FW_HEAD, "-no-reboot", *CONSOLE, "-nic", "none",
        "-drive", "file=/d/golden.raw,format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,bootindex=0",
        "-drive", "file=/d/data.raw,format=raw,if=none,id=d1",
        "-device", "ahci,id=ahci0",
        "-device", "ide-hd,drive=d1,bus=ahci0.0",
    ]


@pytest.mark.parametrize(("interface", "device"), [
    ("virtio", "virtio-blk-pci,drive=d0,serial=S0,bootindex=0"),
    ("ide", "ide-hd,drive=d0,serial=S0,bootindex=0"),
    ("ahci", "ide-hd,drive=d0,bus=ahci0.0,serial=S0,bootindex=0"),
    ("scsi", "scsi-hd,drive=d0,bus=scsi0.0,serial=S0,bootindex=0"),
])
def test_boot_disk_on_every_interface(interface: str, device: str) -> None:
    cfg = VMConfig(disks=[Disk("/d/0", interface, serial="S0"),  # type: ignore[arg-type]
                          Disk("/d/1", interface)])  # type: ignore[arg-type]
    argv = build_command(cfg)
    assert device in argv
    assert sum("bootindex" in a for a in argv) == 1


def test_uefi_disk_boot() -> None:
    cfg = VMConfig(firmware="uefi", ovmf=OVMF, uefi_vars="/w/OVMF_VARS.fd",
                   disks=[Disk("/d/golden.raw")])
    assert build_command(cfg) == [
        *FW_HEAD, *PFLASH, "-no-reboot", *CONSOLE, *NET,
        "-drive", "file=/d/golden.raw,format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,bootindex=0",
    ]


def test_uefi_with_a_kernel_boots_the_kernel() -> None:
    cfg = VMConfig(kernel=KERNEL, initrd=INITRD, append="quiet", firmware="uefi", ovmf=OVMF,
                   uefi_vars=Path("/w/OVMF_VARS.fd"), disks=[Disk("/d/a.raw")])
    assert build_command(cfg) == [*FW_HEAD, *PFLASH, *BASE[9:], *NET,
                                  "-drive", "file=/d/a.raw,format=raw,if=none,id=d0",
                                  "-device", "virtio-blk-pci,drive=d0"]


CDROM = ["-drive", "file=/i/pyinit,,v1.iso,format=raw,media=cdrom,readonly=on,if=none,id=cd0"]


def test_cdrom_boots_first_through_seabios() -> None:
    cfg = VMConfig(cdrom="/i/pyinit,v1.iso", disks=[Disk("/d/target.raw")])
    assert build_command(cfg) == [
        *FW_HEAD, "-no-reboot", *CONSOLE, *NET,
        *CDROM, "-device", "ide-cd,drive=cd0,bootindex=0",
        "-drive", "file=/d/target.raw,format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0",
    ]


def test_cdrom_boots_first_through_ovmf_next_to_a_usb_stick() -> None:
    cfg = VMConfig(firmware="uefi", ovmf=OVMF, uefi_vars="/w/OVMF_VARS.fd", nic_model=None,
                   cdrom="/i/pyinit,v1.iso", disks=[Disk("/d/stick", "usb", removable=True)])
    argv = build_command(cfg)
    assert argv == [*FW_HEAD, *PFLASH, "-no-reboot", *CONSOLE, "-nic", "none",
                    *CDROM, "-device", "ide-cd,drive=cd0,bootindex=0",
                    "-drive", "file=/d/stick,format=raw,if=none,id=d0",
                    "-device", "qemu-xhci,id=xhci0",
                    "-device", "usb-storage,drive=d0,bus=xhci0.0,removable=on"]
    assert sum("bootindex" in a for a in argv) == 1


@pytest.mark.parametrize("cfg", [
    VMConfig(kernel=KERNEL, cdrom="/i/pyinit,v1.iso", nic_model=None),
    VMConfig(cdrom="/i/pyinit,v1.iso", pxe_tftp="/t", pxe_bootfile="boot.ipxe"),
])
def test_cdrom_is_only_attached_when_a_kernel_or_the_network_boots(cfg: VMConfig) -> None:
    argv = build_command(cfg)
    i = argv.index("-device", argv.index(CDROM[1]))
    assert argv[i:i + 2] == ["-device", "ide-cd,drive=cd0"]
    assert ("-kernel" in argv) == (cfg.kernel is not None)


def test_firmware_alone() -> None:
    cfg = VMConfig(firmware="uefi", ovmf=OVMF, uefi_vars="/w/OVMF_VARS.fd", nic_model=None,
                   memory_mb=512)
    assert build_command(cfg) == [*FW_HEAD[:6], "512", "-smp", "1", *PFLASH, "-no-reboot",
                                  *CONSOLE, "-nic", "none"]


def test_reboot_drops_no_reboot() -> None:
    assert "-no-reboot" not in build_command(VMConfig(kernel=KERNEL, reboot=True))
    argv = build_command(VMConfig(disks=[Disk("/d/a")], reboot=True, nic_model=None))
    assert argv == [*FW_HEAD, *CONSOLE, "-nic", "none",
                    "-drive", "file=/d/a,format=raw,if=none,id=d0",
                    "-device", "virtio-blk-pci,drive=d0,bootindex=0"]


@pytest.mark.parametrize("cfg", [
    VMConfig(initrd=INITRD, disks=[Disk("/d/a")]),
    VMConfig(append="quiet", disks=[Disk("/d/a")]),
])
def test_initrd_or_append_without_kernel(cfg: VMConfig) -> None:
    with pytest.raises(ValueError, match="need a kernel"):
        build_command(cfg)


def test_uefi_must_be_resolved_first() -> None:
    with pytest.raises(ValueError, match="resolve_firmware"):
        build_command(VMConfig(firmware="uefi", disks=[Disk("/d/a")]))
    with pytest.raises(ValueError, match="resolve_firmware"):
        build_command(VMConfig(firmware="uefi", ovmf=OVMF, disks=[Disk("/d/a")]))
    with pytest.raises(ValueError, match="firmware 'coreboot'"):
        build_command(VMConfig(firmware="coreboot", disks=[Disk("/d/a")]))  # type: ignore[arg-type]


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"fd")


def test_find_ovmf_pairs_code_with_its_vars(tmp_path: Path) -> None:
    deb, fed = tmp_path / "OVMF", tmp_path / "edk2"
    with pytest.raises(VMError, match=r"no OVMF firmware .*OVMF_CODE_4M.fd.*apt install ovmf"):
        find_ovmf([deb, fed])
    _touch(deb / "OVMF_CODE_4M.fd", fed / "OVMF_CODE.fd", fed / "OVMF_VARS.fd")
    # The 4 MiB code without its 4 MiB store is no use: the 2 MiB pair is taken.
    assert find_ovmf([deb, fed]) == Ovmf(fed / "OVMF_CODE.fd", fed / "OVMF_VARS.fd")
    _touch(deb / "OVMF_VARS_4M.fd", deb / "OVMF_CODE.fd", deb / "OVMF_VARS.fd")
    assert find_ovmf([deb, fed]) == Ovmf(deb / "OVMF_CODE_4M.fd", deb / "OVMF_VARS_4M.fd")


def test_resolve_firmware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bios = VMConfig(disks=[Disk("/d/a")])
    assert resolve_firmware(bios, tmp_path) is bios
    _touch(tmp_path / "fw" / "OVMF_CODE.fd", tmp_path / "fw" / "OVMF_VARS.fd")
    monkeypatch.setattr(vm_mod, "OVMF_DIRS", (tmp_path / "fw",))
    cfg = resolve_firmware(VMConfig(firmware="uefi"), tmp_path / "w")
    assert cfg.ovmf == Ovmf(tmp_path / "fw" / "OVMF_CODE.fd", tmp_path / "fw" / "OVMF_VARS.fd")
    assert cfg.uefi_vars == tmp_path / "w" / "OVMF_VARS.fd"
    assert not (tmp_path / "w").exists()  # nothing created yet
    given = resolve_firmware(VMConfig(firmware="uefi", ovmf=OVMF, uefi_vars="/keep/v.fd"),
                             tmp_path)
    assert (given.ovmf, given.uefi_vars) == (OVMF, "/keep/v.fd")


def test_prepare_uefi_vars_copies_once_and_never_uses_the_template(tmp_path: Path) -> None:
    template = tmp_path / "fw" / "OVMF_VARS.fd"
    _touch(template)
    template.write_bytes(b"pristine")
    template.chmod(0o444)
    ovmf = Ovmf(tmp_path / "fw" / "OVMF_CODE.fd", template)
    target = tmp_path / "w" / "OVMF_VARS.fd"
    cfg = VMConfig(firmware="uefi", ovmf=ovmf, uefi_vars=target)
    prepare_uefi_vars(cfg)
    assert target.read_bytes() == b"pristine"
    assert os.access(target, os.W_OK)
    target.write_bytes(b"boot entries")
    prepare_uefi_vars(cfg)  # an existing store is kept: NVRAM persists
    assert target.read_bytes() == b"boot entries"
    with pytest.raises(VMError, match="template"):
        prepare_uefi_vars(VMConfig(firmware="uefi", ovmf=ovmf, uefi_vars=template))
    prepare_uefi_vars(VMConfig(uefi_vars=tmp_path / "bios.fd"))  # bios: nothing to do
    assert not (tmp_path / "bios.fd").exists()


@pytest.mark.parametrize(("append", "expected"), [
    ("", "console=ttyS0 panic=-1"),
    ("quiet", "console=ttyS0 panic=-1 quiet"),
    ("  MYURL=http://x  ", "console=ttyS0 panic=-1 MYURL=http://x"),
    ("panic=-1 quiet", "console=ttyS0 panic=-1 quiet"),
    ("console=ttyS0 x -- a b", "panic=-1 console=ttyS0 x -- a b"),
])
def test_kernel_append(append: str, expected: str) -> None:
    assert kernel_append(append) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8080", "http://10.0.2.2:8080"),
    ("http://localhost:8080/base/", "http://10.0.2.2:8080/base/"),
    ("http://127.0.0.1/x?y=1", "http://10.0.2.2/x?y=1"),
    ("http://u:p@127.0.0.1:1/", "http://u:p@10.0.2.2:1/"),
    ("http://[::1]:8080", "http://10.0.2.2:8080"),
    ("http://192.0.2.7:8080", "http://192.0.2.7:8080"),
    ("http://example.org", "http://example.org"),
])
def test_guest_url(url: str, expected: str) -> None:
    assert guest_url(url) == expected


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("1K", 1024), ("512M", 512 << 20), ("2G", 2 << 30), ("1GiB", 1 << 30),
    ("3g", 3 << 30), ("1T", 1 << 40),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1", "2X"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_create_disk_is_sparse(tmp_path: Path) -> None:
    path = create_disk(tmp_path / "sub" / "disk.raw", 1 << 30)
    st = path.stat()
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 < 1 << 20
    with pytest.raises(ValueError):
        create_disk(tmp_path / "zero.raw", 0)


def test_clean_line() -> None:
    assert clean_line(b"\x1bc\x1b[?7l\x1b[2Jhello\r") == "hello"
    assert clean_line(b"\x1b[1;32mOK\x1b[0m\tdone") == "OK\tdone"
    assert clean_line(b"caf\xc3\xa9 \xff") == "caf\u00e9 \ufffd"


# --------------------------------------------------------------------------------------------
# cli


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pyinit")
    vm_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["vm", *argv])


def test_cli_defaults() -> None:
    args = _parse()
    assert args.func is vm_cli.run
    cfg, create = vm_cli.config_from_args(args)
    assert (str(cfg.kernel), str(cfg.initrd)) == ("out/vmlinuz", "out/initramfs.cpio.zst")
    assert cfg.append == "" and cfg.disks == [] and create == []
    assert (cfg.accel, cfg.nic_model, cfg.mac) == ("tcg", "virtio-net-pci", "52:54:00:12:34:56")


def test_cli_server_disks_and_extra_args() -> None:
    args = _parse("--server", "http://127.0.0.1:8080/", "--append", "pyinit.break=network",
                  "--disk", "/tmp/a.raw:2G", "--disk", "/tmp/b:c.raw", "--disk-interface", "ahci",
                  "--nic", "e1000", "--mac", "52:54:00:00:00:01", "--timeout", "0",
                  "--", "-cpu", "max")
    cfg, create = vm_cli.config_from_args(args)
    assert cfg.append == "MYURL=http://10.0.2.2:8080 pyinit.break=network"
    assert cfg.disks == [Disk(Path("/tmp/a.raw"), "ahci"), Disk(Path("/tmp/b:c.raw"), "ahci")]
    assert create == [(Path("/tmp/a.raw"), 2 << 30)]
    assert (cfg.nic_model, cfg.mac, cfg.timeout) == ("e1000", "52:54:00:00:00:01", None)
    assert cfg.extra_args == ["-cpu", "max"]


def test_cli_bootyurl_and_no_nic() -> None:
    cfg, _ = vm_cli.config_from_args(
        _parse("--server", "http://localhost:9000", "--bootyurl", "--nic", "none"))
    assert cfg.append == "BOOTYURL=http://10.0.2.2:9000"
    assert cfg.nic_model is None


def test_cli_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--dry-run", "--kernel", KERNEL, "--initrd", INITRD, "--append", "quiet")
    assert args.func(args) == 0
    assert capsys.readouterr().out.split("\n")[0] == " ".join(BASE + NET).replace(
        "console=ttyS0 panic=-1 quiet", "'console=ttyS0 panic=-1 quiet'")


def test_cli_missing_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--kernel", str(tmp_path / "nope"), "--initrd", str(tmp_path / "nope2"))
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_boot_disk_uefi() -> None:
    cfg, create = vm_cli.config_from_args(
        _parse("--boot", "disk", "--firmware", "uefi", "--disk", "/tmp/g.img", "--reboot"))
    assert (cfg.kernel, cfg.initrd, cfg.append) == (None, None, "")
    assert (cfg.firmware, cfg.reboot, cfg.disks) == ("uefi", True, [Disk(Path("/tmp/g.img"))])
    assert create == []
    cfg, _ = vm_cli.config_from_args(_parse("--firmware", "uefi"))
    assert (str(cfg.kernel), cfg.firmware, cfg.reboot) == ("out/vmlinuz", "uefi", False)


@pytest.mark.parametrize(("argv", "error"), [
    (["--boot", "disk"], "--boot disk needs a --disk to boot from"),
    (["--boot", "disk", "--disk", "/d", "--server", "http://x"],
     "--boot disk has no kernel command line: drop --server"),
    (["--boot", "disk", "--disk", "/d", "--kernel", "k", "--append", "a"],
     "--boot disk has no kernel command line: drop --kernel, --append"),
    (["--boot", "cdrom", "--disk", "/d"], "--boot cdrom needs a --cdrom to boot from"),
    (["--boot", "cdrom", "--cdrom", "/i.iso", "--server", "http://x"],
     "--boot cdrom has no kernel command line: drop --server"),
])
def test_cli_boot_disk_errors(argv: list[str], error: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("--dry-run", *argv)
    assert args.func(args) == 2
    assert capsys.readouterr().err == f"pyinit vm: {error}\n"


def test_cli_boot_cdrom() -> None:
    cfg, create = vm_cli.config_from_args(
        _parse("--boot", "cdrom", "--cdrom", "/i/pyinit.iso", "--disk", "/tmp/d.raw:1G"))
    assert (cfg.kernel, cfg.initrd, cfg.cdrom) == (None, None, Path("/i/pyinit.iso"))
    assert create == [(Path("/tmp/d.raw"), 1 << 30)]
    argv = build_command(cfg)
    assert "ide-cd,drive=cd0,bootindex=0" in argv
    assert "virtio-blk-pci,drive=d0" in argv


def test_cli_dry_run_uefi_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    _touch(tmp_path / "fw" / "OVMF_CODE_4M.fd", tmp_path / "fw" / "OVMF_VARS_4M.fd")
    monkeypatch.setattr(vm_mod, "OVMF_DIRS", (tmp_path / "fw",))
    args = _parse("--dry-run", "--boot", "disk", "--firmware", "uefi", "--disk", "/d/g.img",
                  "--nic", "none", "--workdir", "/w")
    assert args.func(args) == 0
    assert capsys.readouterr().out.split() == [
        *FW_HEAD,
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={tmp_path}/fw/OVMF_CODE_4M.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/w/OVMF_VARS.fd",
        "-no-reboot", *CONSOLE, "-nic", "none",
        "-drive", "file=/d/g.img,format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,bootindex=0"]
    monkeypatch.setattr(vm_mod, "OVMF_DIRS", (tmp_path / "none",))
    assert args.func(args) == 2
    assert "no OVMF firmware" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The serial reader, expect() and cleanup against a fake QEMU


def fake_qemu(tmp_path: Path, body: str) -> str:
    """An executable that ignores QEMU's arguments and runs ``body`` (Python) instead."""
    script = tmp_path / "fake-qemu"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n"
                      "def out(s):\n    sys.stdout.write(s)\n    sys.stdout.flush()\n"
                      + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def fake_vm(tmp_path: Path, body: str, **cfg: Any) -> VM:
    config = VMConfig(kernel=KERNEL, initrd=INITRD, qemu=fake_qemu(tmp_path, body),
                      workdir=tmp_path / "work", **cfg)
    return VM(config)


GUEST = """
out("SeaBIOS junk\\x1bc\\x1b[2J\\r\\n")
out("Linux version 6.1\\r\\n")
out('PYINIT-EVENT {"step": "network", "status": "start"}\\r\\n')
out('PYINIT-EVENT {"step": "network", "status": "ok", "elapsed": 2.1}\\r\\n')
out("pyinit: RESULT ok bytes=42\\r\\n")
out("no newline at the end")
sys.exit(3)
"""


def test_expect_lines_events_and_exit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyinit_qemu")
    with fake_vm(tmp_path, GUEST) as vm:
        assert vm.expect(r"Linux version (\S+)", timeout=10).group(1) == "6.1"
        ev = vm.expect_event(step="network", status="ok", timeout=10)
        assert ev == {"step": "network", "status": "ok", "elapsed": 2.1}
        assert vm.expect(r"RESULT ok bytes=(\d+)", timeout=10).group(1) == "42"
        assert vm.expect("no newline", timeout=10)
        assert vm.wait_exit(timeout=10) == 3
        assert vm.lines == ["SeaBIOS junk", "Linux version 6.1",
                            'PYINIT-EVENT {"step": "network", "status": "start"}',
                            'PYINIT-EVENT {"step": "network", "status": "ok", "elapsed": 2.1}',
                            "pyinit: RESULT ok bytes=42", "no newline at the end"]
        assert [e["status"] for e in vm.events] == ["start", "ok"]
        vm.assert_never("Traceback", r"Kernel panic")
    work = tmp_path / "work"
    assert (work / "serial.log").read_text().splitlines() == vm.lines
    command = (work / "command.txt").read_text().strip()
    assert command.startswith(str(tmp_path / "fake-qemu") + " -accel tcg ")
    messages = [r.getMessage() for r in caplog.records]
    assert f"+ {command}" in messages
    assert "vm: Linux version 6.1" in messages
    assert any(r.name == "pyinit_qemu.serial" for r in caplog.records)


def test_cursor_advances_past_matches(tmp_path: Path) -> None:
    with fake_vm(tmp_path, "out('A\\nB\\nA2\\n')\ntime.sleep(30)\n") as vm:
        vm.expect("B", timeout=10)
        assert vm.expect("A", timeout=10).string == "A2"  # not the first A: it is behind us
        with pytest.raises(ExpectTimeout, match=r"timed out after 0.3 s waiting for /B/"):
            vm.expect("B", timeout=0.3)


def test_expect_event_fields_and_any(tmp_path: Path) -> None:
    body = """
out('PYINIT-EVENT {"step": "image", "status": "progress", "bytes": 1}\\n')
out('PYINIT-EVENT not json\\n')
out('PYINIT-EVENT {"step": "image", "status": "progress", "bytes": 2}\\n')
time.sleep(30)
"""
    with fake_vm(tmp_path, body) as vm:
        assert vm.expect_event(bytes=2, timeout=10)["bytes"] == 2
        assert len(vm.events) == 2
        with pytest.raises(ExpectTimeout, match="event step='image'"):
            vm.expect_event("image", timeout=0.2)


def test_timeout_message_has_the_tail(tmp_path: Path) -> None:
    body = "for i in range(50):\n    out(f'line {i}\\n')\ntime.sleep(30)\n"
    with fake_vm(tmp_path, body) as vm:
        vm.expect("line 49", timeout=10)
        started = time.monotonic()
        with pytest.raises(ExpectTimeout) as err:
            vm.expect("never", timeout=0.5)
        assert time.monotonic() - started < 5
    text = str(err.value)
    assert "waiting for /never/" in text and str(tmp_path / "work" / "serial.log") in text
    assert "line 49" in text and "line 20" in text and "line 19" not in text
    assert not err.value.exited


def test_qemu_exiting_first_fails_at_once(tmp_path: Path) -> None:
    body = "out('booting\\n')\nsys.stderr.write('qemu: could not open disk\\n')\nsys.exit(1)\n"
    with fake_vm(tmp_path, body) as vm:
        started = time.monotonic()
        with pytest.raises(ExpectTimeout) as err:
            vm.expect("login:", timeout=60)
        assert time.monotonic() - started < 10
        assert err.value.exited
        assert "QEMU exited (status 1)" in str(err.value)
        assert "could not open disk" in str(err.value)
        assert "booting" in err.value.tail
        assert vm.stderr == ["qemu: could not open disk"]


def test_fail_on_stops_waiting(tmp_path: Path) -> None:
    body = "out('Traceback (most recent call last):\\n')\ntime.sleep(30)\n"
    with fake_vm(tmp_path, body) as vm, pytest.raises(UnexpectedOutput, match="Traceback"):
        vm.expect_event("result", "ok", timeout=30, fail_on=r"Traceback|Kernel panic")


def test_assert_never(tmp_path: Path) -> None:
    body = "out('a\\nb\\nKernel panic - not syncing: Attempted to kill init!\\nc\\n')\n"
    with fake_vm(tmp_path, body) as vm:
        vm.wait_exit(timeout=10)
        vm.assert_never("Traceback")
        with pytest.raises(AssertionError, match="serial line 3 matches /Kernel panic/"):
            vm.assert_never("Traceback", "Kernel panic")


def test_wait_exit_timeout(tmp_path: Path) -> None:
    with fake_vm(tmp_path, "time.sleep(30)\n") as vm, pytest.raises(ExpectTimeout,
                                                                    match="still running"):
        vm.wait_exit(timeout=0.2)


def test_whole_vm_timeout_kills_qemu(tmp_path: Path) -> None:
    with fake_vm(tmp_path, "out('up\\n')\ntime.sleep(60)\n", timeout=0.5) as vm:
        started = time.monotonic()
        with pytest.raises(ExpectTimeout, match=r"whole-VM timeout \(0.5 s\)"):
            vm.expect("never", timeout=30)
        assert time.monotonic() - started < 10
        assert vm.timed_out
        assert vm.returncode is not None
        with pytest.raises(ExpectTimeout, match="whole-VM timeout"):
            vm.wait_exit(timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_exit_kills_and_reaps_even_on_keyboard_interrupt(tmp_path: Path) -> None:
    vm = fake_vm(tmp_path, "out('up\\n')\ntime.sleep(60)\n")
    with pytest.raises(KeyboardInterrupt), vm:
        vm.expect("up", timeout=10)
        raise KeyboardInterrupt
    assert vm.returncode is not None  # reaped: poll() has the status
    assert vm.pid is not None and not _alive(vm.pid)


def test_kill_is_idempotent_and_qemu_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    body = ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "out('up\\n')\ntime.sleep(60)\n")
    vm = fake_vm(tmp_path, body).start()
    vm.expect("up", timeout=10)
    vm.kill(grace=0.2)
    vm.kill()
    assert vm.returncode == -9


def test_own_workdir_removed_on_success_kept_on_failure(tmp_path: Path) -> None:
    qemu = fake_qemu(tmp_path, "out('hi\\n')\n")
    with VM(VMConfig(kernel=KERNEL, qemu=qemu)) as vm:
        vm.wait_exit(timeout=10)
        assert (vm.workdir / "serial.log").exists()
    assert not vm.workdir.exists()
    vm = VM(VMConfig(kernel=KERNEL, qemu=qemu))
    try:
        with pytest.raises(RuntimeError), vm:
            raise RuntimeError("test failed")
        assert (vm.workdir / "command.txt").exists()
    finally:
        import shutil
        shutil.rmtree(vm.workdir, ignore_errors=True)


def test_send_and_on_output(tmp_path: Path) -> None:
    chunks: list[bytes] = []
    body = "out('prompt# ')\nline = sys.stdin.readline()\nout(f'got {line}')\n"
    qemu = fake_qemu(tmp_path, body)
    cfg = VMConfig(kernel=KERNEL, qemu=qemu, workdir=tmp_path / "w")
    with VM(cfg, on_output=chunks.append) as vm:
        vm.send("ls /dev\n")
        assert vm.expect("got ls /dev", timeout=10).string == "prompt# got ls /dev"
        vm.wait_exit(timeout=10)
    assert b"".join(chunks) == b"prompt# got ls /dev\n"


def test_not_started(tmp_path: Path) -> None:
    vm = VM(VMConfig(kernel=KERNEL, workdir=tmp_path))
    with pytest.raises(VMError):
        vm.wait_exit(1)
    with pytest.raises(VMError):
        vm.send("x")
    vm.kill()  # harmless


def test_expect_accepts_compiled_patterns(tmp_path: Path) -> None:
    with fake_vm(tmp_path, "out('Hello\\n')\n") as vm:
        assert vm.expect(re.compile("hello", re.IGNORECASE), timeout=10)


def test_qemu_runs_in_the_callers_directory(tmp_path: Path) -> None:
    """Relative paths (out/vmlinuz, disks) mean what they meant to the caller."""
    with fake_vm(tmp_path, "import os\nout(os.getcwd() + '\\n')\n") as vm:
        assert vm.expect(".", timeout=10).string == os.getcwd()


def test_missing_qemu_binary(tmp_path: Path) -> None:
    vm = VM(VMConfig(kernel=KERNEL, qemu=str(tmp_path / "no-qemu"), workdir=tmp_path / "w"))
    with pytest.raises(VMError, match=r"cannot start .*no-qemu"):
        vm.start()
    assert vm.pid is None
    vm.kill()


def test_uefi_vm_copies_the_vars_into_its_workdir(tmp_path: Path) -> None:
    template = tmp_path / "fw" / "OVMF_VARS.fd"
    _touch(template)
    ovmf = Ovmf(tmp_path / "fw" / "OVMF_CODE.fd", template)
    cfg = VMConfig(firmware="uefi", ovmf=ovmf, disks=[Disk(tmp_path / "g.img")],
                   qemu=fake_qemu(tmp_path, "out('BdsDxe: loading Boot0001\\n')\n"),
                   workdir=tmp_path / "work")
    with VM(cfg) as vm:
        assert vm.cfg.uefi_vars == tmp_path / "work" / "OVMF_VARS.fd"
        vm.expect("BdsDxe", timeout=10)
        vm.wait_exit(timeout=10)
    assert (tmp_path / "work" / "OVMF_VARS.fd").read_bytes() == b"fd"
    command = (tmp_path / "work" / "command.txt").read_text()
    assert f"unit=1,file={tmp_path}/work/OVMF_VARS.fd " in command
    assert "-kernel" not in command and "bootindex=0" in command


def test_bad_config_leaves_no_temp_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match="need a kernel"):
        VM(VMConfig(initrd=INITRD, disks=[Disk("/d/a")]))
    assert list(tmp_path.iterdir()) == []


def test_network_boot_keeps_the_ipxe_rom_and_boots_the_nic_first() -> None:
    cfg = VMConfig(kernel=None, disks=[Disk("/d.raw")], pxe_tftp="/srv/tftp",
                   pxe_bootfile="pyinit.ipxe")
    argv = build_command(cfg)
    assert argv[argv.index("-netdev") + 1] == "user,id=n0,tftp=/srv/tftp,bootfile=pyinit.ipxe"
    assert argv[argv.index("-device") + 1] == \
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=0"
    assert "bootindex=0" not in " ".join(a for a in argv if a.startswith("virtio-blk"))
    with pytest.raises(ValueError, match="network boot needs kernel=None"):
        build_command(VMConfig(kernel="/k", pxe_tftp="/srv/tftp", pxe_bootfile="x"))


def test_tap_in_a_netns_network_boots_from_the_real_network() -> None:
    argv = build_command(VMConfig(kernel=None, disks=[Disk("/d.raw")], tap="tap0",
                                  netns="lab-cli", net_boot=True))
    assert argv[:5] == ["ip", "netns", "exec", "lab-cli", "qemu-system-x86_64"]
    assert argv[argv.index("-netdev") + 1] == "tap,id=n0,ifname=tap0,script=no,downscript=no"
    assert argv[argv.index("-device") + 1] == \
        "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=0"
    assert "bootindex=0" not in " ".join(a for a in argv if a.startswith("virtio-blk"))
    # a tap without net_boot: no ROM, as with slirp
    argv = build_command(VMConfig(kernel="/k", tap="tap0"))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-device") + 1].endswith(",romfile=")


@pytest.mark.parametrize(("cfg", "error"), [
    (VMConfig(kernel=None, net_boot=True), "net_boot needs a tap device"),
    (VMConfig(kernel="/k", tap="t", net_boot=True), "network boot needs kernel=None"),
    (VMConfig(kernel=None, tap="t", net_boot=True, nic_model=None), "network boot needs"),
    (VMConfig(kernel="/k", tap="t", hostfwd=["tcp::1-:22"]), "tap t: pxe_tftp and hostfwd"),
    (VMConfig(kernel=None, tap="t", pxe_tftp="/x", pxe_bootfile="b"), "slirp options"),
])
def test_tap_config_errors(cfg: VMConfig, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        build_command(cfg)


def test_server_hbas_one_adapter_per_kind() -> None:
    """The hardware matrix's SCSI host bus adapters: one per kind, each disk on its own."""
    cfg = VMConfig(kernel="k", disks=[Disk("a.raw", interface="megasas"),
                                      Disk("b.raw", interface="lsi", serial="S1"),
                                      Disk("c.raw", interface="mptsas"),
                                      Disk("d.raw", interface="pvscsi"),
                                      Disk("e.raw", interface="megasas"),
                                      Disk("f.raw", interface="megasas-gen2")])
    argv = build_command(cfg)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"][1:]  # after the NIC
    assert devices == [
        "megasas,id=megasas", "scsi-hd,drive=d0,bus=megasas.0",
        "lsi53c895a,id=lsi", "scsi-hd,drive=d1,bus=lsi.0,serial=S1",
        "mptsas1068,id=mptsas", "scsi-hd,drive=d2,bus=mptsas.0",
        "pvscsi,id=pvscsi", "scsi-hd,drive=d3,bus=pvscsi.0",
        "scsi-hd,drive=d4,bus=megasas.0",
        "megasas-gen2,id=megasasgen2", "scsi-hd,drive=d5,bus=megasasgen2.0"]


EVENT = 'PYINIT-EVENT {"step": "hardware", "status": "inventory", "pci": [1, 2], "uptime": 15.6}'
KMSG = "[   15.655886] sd 3:0:0:0: [sdb] 65536 512-byte logical blocks: (33.6 MB/32.0 MiB)"


def _unspliced(lines: list[str]) -> list[str]:
    u = Unsplicer()
    out = [o for line in lines for o in u.feed(line)]
    return out + u.flush()


def test_unsplicer_takes_a_kernel_message_off_the_end_of_an_event_line() -> None:
    """Seen in CI: the kernel's message landed between the event's JSON and its newline."""
    assert _unspliced([EVENT + KMSG, "next"]) == [EVENT, KMSG, "next"]


def test_unsplicer_joins_an_event_the_kernel_split_in_two() -> None:
    cut = EVENT.index('"pci"')
    out = _unspliced([EVENT[:cut] + KMSG, EVENT[cut:], "after"])
    assert out == [KMSG, EVENT, "after"]
    assert parse_event(out[1]) == parse_event(EVENT)


def test_unsplicer_leaves_other_lines_and_broken_events_alone() -> None:
    broken = "PYINIT-EVENT {broken"
    assert _unspliced(["plain", KMSG, EVENT, broken]) == ["plain", KMSG, EVENT, broken]
    # a split event whose rest never comes is given back as it came, kernel line first
    cut = EVENT.index('"pci"')
    lines = [EVENT[:cut] + KMSG] + ["noise"] * 5
    out = _unspliced(lines)
    assert out[0] == KMSG and EVENT[:cut] in out and out.count("noise") == 5
    assert all(parse_event(line) is None for line in out)
