"""The golden image's partition plan, sfdisk script, GRUB patching and grub.cfg (pure parts)."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from pyinit.units import MIB
from pyinit_build.errors import BuildError
from pyinit_build.golden import build, grub, layout

SEED = "test-seed"


def test_gpt_both_firmware_layout() -> None:
    plan = layout.plan_disk(table="gpt", bios=True, uefi=True, root_size=100 * MIB, seed=SEED)
    roles = [(p.number, p.role, p.start // MIB, p.size // MIB) for p in plan.partitions]
    # 1 MiB GPT head, BIOS boot, ESP, root; 1 MiB kept free at the end for the backup GPT.
    assert roles == [(1, "bios", 1, 1), (2, "esp", 2, 64), (3, "root", 66, 100)]
    assert plan.size == 167 * MIB
    assert plan.core_area == (2048, 2048)
    assert plan.root.type == layout.GPT_TYPES["root"]
    assert plan.part("esp") is not None and plan.part("esp").type == layout.GPT_TYPES["esp"]


def test_mbr_bios_layout_uses_the_gap_for_core_img() -> None:
    plan = layout.plan_disk(table="mbr", bios=True, uefi=False, root_size=10 * MIB + 1,
                            seed=SEED)
    assert [(p.role, p.start, p.size) for p in plan.partitions] == [("root", MIB, 11 * MIB)]
    assert plan.size == 12 * MIB  # MBR needs no tail
    assert plan.core_area == (1, 2047)
    assert plan.root.uuid == f"{plan.disk_id}-01"  # PARTUUID as blkid reports it for MBR
    assert len(plan.disk_id) == 8


def test_mbr_uefi_has_esp_first_and_lvm_type() -> None:
    plan = layout.plan_disk(table="mbr", bios=True, uefi=True, root_size=MIB, seed=SEED,
                            lvm=True)
    assert [(p.role, p.type) for p in plan.partitions] == [("esp", "ef"), ("root", "8e")]


def test_explicit_disk_size_grows_root_and_rejects_too_small() -> None:
    plan = layout.plan_disk(table="gpt", bios=True, uefi=False, root_size=10 * MIB, seed=SEED,
                            disk_size=1024 * MIB)
    assert plan.root.end == 1023 * MIB and plan.size == 1024 * MIB
    with pytest.raises(BuildError, match="disk size 8 MiB is too small: the partitions need "
                                         "13 MiB"):
        layout.plan_disk(table="gpt", bios=True, uefi=False, root_size=10 * MIB, seed=SEED,
                         disk_size=8 * MIB)
    with pytest.raises(BuildError, match="at least one of BIOS and UEFI"):
        layout.plan_disk(table="gpt", bios=False, uefi=False, root_size=MIB, seed=SEED)


def test_identifiers_are_derived_from_the_seed() -> None:
    a = layout.plan_disk(table="gpt", bios=True, uefi=True, root_size=MIB, seed=SEED)
    b = layout.plan_disk(table="gpt", bios=True, uefi=True, root_size=MIB, seed=SEED)
    c = layout.plan_disk(table="gpt", bios=True, uefi=True, root_size=MIB, seed="other")
    assert a == b
    assert a.disk_id != c.disk_id and a.root.uuid != c.root.uuid
    assert len({a.disk_id, *(p.uuid for p in a.partitions)}) == 4
    assert layout.derive(SEED, "fs-root").version == 4


def test_sfdisk_script() -> None:
    gpt = layout.plan_disk(table="gpt", bios=True, uefi=False, root_size=MIB, seed=SEED)
    lines = layout.sfdisk_script(gpt).splitlines()
    assert lines[:3] == ["label: gpt", f"label-id: {gpt.disk_id}", "unit: sectors"]
    assert lines[3] == (f"start=2048, size=2048, type={layout.GPT_TYPES['bios']}, "
                        f"uuid={gpt.partitions[0].uuid}, name=\"BIOS boot\"")
    mbr = layout.plan_disk(table="mbr", bios=True, uefi=False, root_size=MIB, seed=SEED)
    assert layout.sfdisk_script(mbr).splitlines() == [
        "label: dos", f"label-id: 0x{mbr.disk_id}", "unit: sectors",
        "start=2048, size=2048, type=83, bootable"]


# --- GRUB ----------------------------------------------------------------------------------

def _boot_img() -> bytes:
    img = bytearray(range(256)) * 2
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def test_patch_bios_like_grub_bios_setup() -> None:
    mbr = bytearray(512)
    mbr[0x1B8:0x1BC] = b"SIGN"
    mbr[0x1BE:0x1CE] = b"P" * 16  # a partition entry that must survive
    mbr[510:512] = b"\x55\xaa"
    core = bytearray(3 * 512 + 100)  # 4 sectors once padded
    struct.pack_into("<QHH", core, 500, 2, 0, 0x820)
    new_mbr, new_core = grub.patch_bios(bytes(mbr), _boot_img(), bytes(core), 2048, 2048)
    assert new_mbr[:3] == _boot_img()[:3]
    assert new_mbr[0x03:0x5A] == bytes(0x57)  # the (empty) BPB of the old sector is kept
    assert struct.unpack_from("<Q", new_mbr, 0x5C)[0] == 2048
    assert new_mbr[0x64] == 0xFF and new_mbr[0x66:0x68] == b"\x90\x90"
    assert new_mbr[0x68:0x1B8] == _boot_img()[0x68:0x1B8]
    assert new_mbr[0x1B8:] == bytes(mbr[0x1B8:])
    assert len(new_core) == 4 * 512
    assert struct.unpack_from("<QHH", new_core, 500) == (2049, 3, 0x820)


def test_patch_bios_refuses_a_core_img_that_does_not_fit() -> None:
    with pytest.raises(BuildError, match=r"core\.img needs 5 sectors but only 4"):
        grub.patch_bios(bytes(512), _boot_img(), bytes(5 * 512), 1, 4)


def test_grub_cfg_and_early_config() -> None:
    entry = grub.BootEntry("u-u-i-d", "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1",
                           "root=UUID=u-u-i-d ro console=ttyS0,115200")
    cfg = grub.grub_cfg(entry)
    assert "serial --unit=0 --speed=115200" in cfg
    assert "    search --no-floppy --fs-uuid --set=root u-u-i-d" in cfg
    assert "    linux /boot/vmlinuz-6.1 root=UUID=u-u-i-d ro console=ttyS0,115200" in cfg
    assert "    initrd /boot/initrd.img-6.1" in cfg
    assert grub.early_config("u-u-i-d").splitlines() == [
        "search --no-floppy --fs-uuid --set=root u-u-i-d", "set prefix=($root)/boot/grub"]
    no_serial = grub.grub_cfg(grub.BootEntry("u", "/k", None, "", serial=None))
    assert "serial" not in no_serial and "initrd" not in no_serial
    with pytest.raises(BuildError, match="expected ttyS<N>"):
        grub.grub_cfg(grub.BootEntry("u", "/k", None, "", serial="ttyUSB0"))


# --- options and the kernel header -----------------------------------------------------------

def _bzimage(release: bytes) -> bytes:
    img = bytearray(0x1000)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x20E, 0x300)
    img[0x500:0x500 + len(release)] = release
    return bytes(img)


def test_kernel_release_from_bzimage_header() -> None:
    assert build.kernel_release(_bzimage(b"6.1.0-9-amd64 (debian-kernel@x) #1 SMP\0")) == \
        "6.1.0-9-amd64"
    assert build.kernel_release(b"\0" * 0x1000) is None


@pytest.mark.parametrize(("changes", "message"), [
    ({"filesystem": "btrfs"}, "unknown filesystem 'btrfs' \\(supported: ext4, xfs\\)"),
    ({"table": "apm"}, "unknown partition table"),
    ({"formats": ("vdi",)}, "unknown output format 'vdi'"),
    ({"compress": "lz4"}, "unknown compression 'lz4'"),
    ({"lvm": "root"}, "expected VG/LV"),
    ({"initrds": (Path("/x"),)}, "--initrd needs --kernel"),
    ({"output": Path("g.img.zst")}, "name the raw image"),
])
def test_bad_options_are_refused_before_any_work(changes: dict[str, object],
                                                 message: str) -> None:
    spec = build.ImageSpec(rootfs=Path("/rootfs"), output=Path("g.img"))
    with pytest.raises(BuildError, match=message):
        build.validate(replace(spec, **changes))  # type: ignore[arg-type]
