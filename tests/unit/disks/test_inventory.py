"""pyinit.disks.inventory: the inventory read from the fake sysfs trees (fakes.py), udev's
names computed from it, and the /dev/disk links made from them. No commands are run."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from pyinit.disks.inventory import (
    ISO9660_MAGIC_OFFSET,
    Disk,
    ata_identity,
    human_size,
    inventory,
    make_links,
    path_id,
    stable_links,
    udev_safe,
    vpd_serial,
    wwn_fields,
)
from pyinit.disks.selection import refusals
from pyinit.disks.usage import Partition
from pyinit.errors import DiskError

from .fakes import GIB, NVME_MODEL, NVME_SIZE, TIB, FakeSys, by_name, inv, vpd80, vpd89

# --- inventory ---------------------------------------------------------------------------------

def test_inventory_finds_disks_and_leaves_out_the_rest(machine: FakeSys) -> None:
    assert [d.name for d in inv(machine)] == ["nvme0n1", "sda", "sdb", "vda", "vdb"]


@pytest.mark.parametrize(("name", "expected"), [
    ("vda", dict(size=20 * GIB, serial="vd-serial-1", vendor="0x1af4", model=None,
                 transport="virtio", by_path="pci-0000:00:04.0",
                 by_path_compat=("virtio-pci-0000:00:04.0",), rotational=True, removable=False,
                 hctl=None, wwn=None, by_id=("virtio-vd-serial-1",), devnum="254:0")),
    ("nvme0n1", dict(size=NVME_SIZE, model=NVME_MODEL, serial="S4EWNX0R123456",
                     wwn="eui.0025388b71b0dd47", transport="nvme",
                     by_path="pci-0000:00:03.0-nvme-1", rotational=False, removable=False,
                     by_id=("nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456",
                            "nvme-eui.0025388b71b0dd47"))),
    ("sda", dict(model="ST2000DM008-2FR102", vendor="ATA", serial="ZFL1ABCD",
                 wwn="0x5000c500a1b2c3d4", wwn_with_extension="0x5000c500a1b2c3d4",
                 transport="sata", hctl="0:0:0:0", by_path="pci-0000:00:1f.2-ata-1.0",
                 by_path_compat=("pci-0000:00:1f.2-ata-1",), rotational=True,
                 by_id=("ata-ST2000DM008-2FR102_ZFL1ABCD", "wwn-0x5000c500a1b2c3d4"),
                 holders=("dm-0 (vg0-root)",), mounted=())),
    ("sdb", dict(vendor="SanDisk", model="Cruzer Blade", serial="4C530001234567",
                 transport="usb", removable=True, hctl="6:0:0:0",
                 by_path="pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0",
                 by_id=("usb-SanDisk_Cruzer_Blade_4C530001234567-0:0",))),
    ("vdb", dict(serial="data disk", by_id=("virtio-data_disk",),
                 mounted=("/dev/vdb1 on /mnt",), boot_medium=None)),
])
def test_inventory_attributes(machine: FakeSys, name: str, expected: dict[str, object]) -> None:
    disk = by_name(inv(machine))[name]
    assert {k: getattr(disk, k) for k in expected} == expected


def test_partitions_are_listed(machine: FakeSys) -> None:
    vdb = by_name(inv(machine))["vdb"]
    assert vdb.partitions == (Partition("vdb1", 1, 8 * GIB - (1 << 20), "254:17"),)


def test_root_found_by_device_number_and_swap(machine: FakeSys) -> None:
    """``/dev/root`` in /proc/mounts names no disk; mountinfo's major:minor does."""
    mountinfo = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
    swaps = "Filename Type Size Used Priority\n/dev/nvme0n1 partition 100 0 -2\n"
    found = by_name(inv(machine, mounts="/dev/root / ext4 rw 0 0\n", mountinfo=mountinfo,
                        swaps=swaps))
    assert found["vda"].mounted == ("/dev/vda on /",)
    assert found["nvme0n1"].mounted == ("/dev/nvme0n1 is swap",)
    assert found["vdb"].mounted == ()


def test_mount_through_a_stable_link(machine: FakeSys) -> None:
    dev = machine.root / "dev"
    (dev / "disk" / "by-id").mkdir(parents=True)
    (dev / "vdb1").touch()
    os.symlink("../../vdb1", dev / "disk" / "by-id" / "virtio-x-part1")
    found = by_name(inv(machine, mounts="/dev/disk/by-id/virtio-x-part1 /srv xfs rw 0 0\n"))
    assert found["vdb"].mounted == ("/dev/disk/by-id/virtio-x-part1 on /srv",)


def test_iso9660_medium_is_the_boot_medium(machine: FakeSys) -> None:
    image = bytearray(40000)
    image[ISO9660_MAGIC_OFFSET:ISO9660_MAGIC_OFFSET + 5] = b"CD001"
    (machine.root / "dev" / "sdb").write_bytes(bytes(image))
    (machine.root / "dev" / "vda").write_bytes(bytes(40000))
    found = by_name(inv(machine))
    assert found["sdb"].boot_medium is not None and "iso9660" in found["sdb"].boot_medium
    assert found["vda"].boot_medium is None
    mounted = by_name(inv(machine, mounts="/dev/vda /run/live iso9660 ro 0 0\n"))
    assert mounted["vda"].boot_medium == "an iso9660 file system is mounted from it"


def test_read_only_and_hidden(machine: FakeSys) -> None:
    (machine.sysfs / "block" / "vda" / "ro").write_text("1\n")
    (machine.sysfs / "block" / "vdb" / "hidden").write_text("1\n")
    found = by_name(inv(machine))
    assert found["vda"].read_only
    assert "vdb" not in found


def test_missing_sysfs_is_a_disk_error(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="cannot list block devices"):
        inventory(tmp_path / "nosys", tmp_path, mounts_text="", mountinfo_text="", swaps_text="")


def test_inventory_lists_nested_holders_and_their_mounts(stacked: FakeSys) -> None:
    (stacked.root / "dev").mkdir()
    vda = by_name(inv(stacked, mounts="/dev/dm-0 / xfs rw 0 0\n"))["vda"]
    assert (vda.holders, vda.mounted) == (("md127", "dm-0 (vg0-root)"), ("/dev/dm-0 on /",))
    assert refusals(vda) == ["mounted: /dev/dm-0 on /", "held by md127, dm-0 (vg0-root)"]
    assert refusals(vda, allow_mounted=True) == []


# --- pure helpers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "safe"), [
    ("Samsung SSD 970 EVO Plus 1TB", "Samsung_SSD_970_EVO_Plus_1TB"),
    ("  QEMU   HARDDISK  ", "QEMU_HARDDISK"),
    ("a/b\\c*d", "a_b_c_d"),
    ("ok#+-.:=@_", "ok#+-.:=@_"),
])
def test_udev_safe(text: str, safe: str) -> None:
    assert udev_safe(text) == safe


@pytest.mark.parametrize(("wwid", "fields"), [
    ("naa.5000C500A1B2C3D4", ("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None)),
    ("naa.600508b1001c4d5e6f708192a3b4c5d6",
     ("0x600508b1001c4d5e", "0x600508b1001c4d5e6f708192a3b4c5d6", "0x6f708192a3b4c5d6")),
    ("t10.ATA     QEMU HARDDISK                           QM00001", (None, None, None)),
    (None, (None, None, None)),
])
def test_wwn_fields(wwid: str | None, fields: tuple[str | None, ...]) -> None:
    assert wwn_fields(wwid) == fields


@pytest.mark.parametrize(("n", "text"), [
    (512, "512 B"), (20 * GIB, "20 GiB"), (NVME_SIZE, "931.5 GiB"), (2 * TIB, "2 TiB"),
    (1536 << 20, "1.5 GiB"),
])
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_vpd_pages() -> None:
    assert vpd_serial(vpd80("  ZFL1ABCD")) == "ZFL1ABCD"
    assert vpd_serial(b"\x00\x83\x00\x02ab") is None
    assert ata_identity(vpd89("WDC WD40EFRX-68N32N0", "WD-WCC7K1234567")) == (
        "WDC WD40EFRX-68N32N0", "WD-WCC7K1234567")
    assert ata_identity(b"\x00\x89\x00\x00") == (None, None)


@pytest.mark.parametrize(("components", "by_path", "transport"), [
    ("pci0000:00/0000:00:04.0/virtio1/block/vda", "pci-0000:00:04.0", "virtio"),
    ("pci0000:00/0000:00:05.0/virtio2/host0/target0:0:0/0:0:0:0/block/sda",
     "pci-0000:00:05.0-scsi-0:0:0:0", "scsi"),
    ("pci0000:00/0000:00:1c.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "pci-0000:3d:00.0-nvme-1",
     "nvme"),
    ("platform/soc/mmc0/mmc_host/mmc0/mmc0:0001/block/mmcblk0", None, "mmc"),
    ("virtual/block/nbd0", None, None),
])
def test_path_id(components: str, by_path: str | None, transport: str | None) -> None:
    info = path_id(components.split("/"), name=components.rsplit("/", 1)[1], nsid="1")
    assert (info.by_path, info.transport) == (by_path, transport)


# --- stable names --------------------------------------------------------------------------------

def test_stable_links(machine: FakeSys) -> None:
    links = stable_links(inv(machine))
    assert links["/dev/disk/by-id/virtio-vd-serial-1"] == "vda"
    assert links["/dev/disk/by-path/virtio-pci-0000:00:04.0"] == "vda"
    assert links["/dev/disk/by-id/virtio-data_disk-part1"] == "vdb1"
    assert links["/dev/disk/by-path/pci-0000:00:05.0-part1"] == "vdb1"
    assert links["/dev/disk/by-id/wwn-0x5000c500a1b2c3d4-part1"] == "sda1"
    assert links["/dev/disk/by-path/pci-0000:00:03.0-nvme-1"] == "nvme0n1"
    assert links["/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001234567-0:0"] == "sdb"
    by_id = ["ata-ST2000DM008-2FR102_ZFL1ABCD", "ata-ST2000DM008-2FR102_ZFL1ABCD-part1",
             "nvme-Samsung_SSD_970_EVO_Plus_1TB_S4EWNX0R123456", "nvme-eui.0025388b71b0dd47",
             "usb-SanDisk_Cruzer_Blade_4C530001234567-0:0", "virtio-data_disk",
             "virtio-data_disk-part1", "virtio-vd-serial-1", "wwn-0x5000c500a1b2c3d4",
             "wwn-0x5000c500a1b2c3d4-part1"]
    by_path = ["pci-0000:00:03.0-nvme-1", "pci-0000:00:04.0", "pci-0000:00:05.0",
               "pci-0000:00:05.0-part1", "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0",
               "pci-0000:00:1f.2-ata-1", "pci-0000:00:1f.2-ata-1-part1",
               "pci-0000:00:1f.2-ata-1.0", "pci-0000:00:1f.2-ata-1.0-part1",
               "virtio-pci-0000:00:04.0", "virtio-pci-0000:00:05.0",
               "virtio-pci-0000:00:05.0-part1"]
    assert list(links) == [f"/dev/disk/by-id/{n}" for n in by_id] + [
        f"/dev/disk/by-path/{n}" for n in by_path]


def test_a_name_two_disks_claim_is_left_out() -> None:
    one = Disk("vda", GIB, serial="same", transport="virtio", by_id=("virtio-same",))
    links = stable_links([one, replace(one, name="vdb")])
    assert "/dev/disk/by-id/virtio-same" not in links


def test_make_links_is_idempotent(machine: FakeSys, tmp_path: Path) -> None:
    dev = tmp_path / "devroot"
    links = stable_links(inv(machine))
    assert len(make_links(links, dev)) == len(links)
    assert make_links(links, dev) == []
    node = dev / "disk" / "by-id" / "virtio-vd-serial-1"
    assert os.readlink(node) == "../../vda"
    node.unlink()
    node.symlink_to("../../vdz")
    assert make_links(links, dev) == ["/dev/disk/by-id/virtio-vd-serial-1"]
    assert os.readlink(node) == "../../vda"
    assert not list((dev / "disk" / "by-id").glob(".*"))


def test_make_links_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "disk" / "by-id").mkdir(parents=True)
    (tmp_path / "disk" / "by-id" / "virtio-x").write_text("not a link")
    with pytest.raises(DiskError, match="exists and is not a symlink"):
        make_links({"/dev/disk/by-id/virtio-x": "vda"}, tmp_path)
