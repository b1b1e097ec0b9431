"""pyinit.disks: the inventory read from fake sysfs trees that mirror real layouts (attribute
names as the kernel has them: virtio-blk ``serial`` on the disk, NVMe ``model``/``serial`` on the
controller and ``wwid``/``nsid`` on the namespace, SCSI ``vendor``/``model``/``wwid``/
``vpd_pg80``/``vpd_pg89`` on the SCSI device, the USB ``serial`` on the USB device, ATA
``ata_port/ataN/port_no``), hint parsing and disk selection table by table, udev's names.
No commands are run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pyinit import disks
from pyinit.disks import (
    AmbiguousDiskError,
    Disk,
    Family,
    Hints,
    Holder,
    NoDiskError,
    Usage,
    Use,
    disk_usage,
    inventory,
    inventory_event,
    inventory_lines,
    make_links,
    parse_hints,
    refusals,
    resolve_device,
    select_disk,
    stable_links,
)
from pyinit.errors import ConfigError, DiskError

GIB = 1 << 30
TIB = 1 << 40


# --- a fake machine --------------------------------------------------------------------------

def _write(path: Path, value: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, bytes):
        path.write_bytes(value)
    else:
        path.write_text(value + "\n")


@dataclass
class FakeSys:
    root: Path

    @property
    def sysfs(self) -> Path:
        return self.root / "sys"

    def disk(self, devpath: str, name: str, *, size: int, devnum: str,
             device: str | None = None, attrs: dict[str, str] | None = None,
             device_attrs: dict[str, str | bytes] | None = None, rotational: bool = False,
             removable: bool = False) -> Path:
        """``/sys/devices/<devpath>/block/<name>`` with ``/sys/block/<name>`` linking to it and
        ``device`` linking to ``device`` (a devpath; default: the parent of ``block``)."""
        base = self.sysfs / "devices" / devpath / "block" / name
        _write(base / "size", str(size // 512))
        _write(base / "dev", devnum)
        _write(base / "removable", "1" if removable else "0")
        _write(base / "ro", "0")
        _write(base / "hidden", "0")
        _write(base / "queue" / "rotational", "1" if rotational else "0")
        (base / "holders").mkdir()
        for key, value in (attrs or {}).items():
            _write(base / key, value)
        target = self.sysfs / "devices" / (device or devpath)
        target.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, base), base / "device")
        for key, data in (device_attrs or {}).items():
            _write(target / key, data)
        (self.sysfs / "block").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(base, self.sysfs / "block"), self.sysfs / "block" / name)
        return base

    def partition(self, disk: Path, name: str, number: int, *, size: int, devnum: str) -> Path:
        part = disk / name
        _write(part / "partition", str(number))
        _write(part / "size", str(size // 512))
        _write(part / "dev", devnum)
        (part / "holders").mkdir()
        return part

    def virtual(self, name: str, devnum: str, *, size: int = 0) -> Path:
        base = self.sysfs / "devices" / "virtual" / "block" / name
        _write(base / "size", str(size // 512))
        _write(base / "dev", devnum)
        (base / "holders").mkdir(parents=True)
        (self.sysfs / "block").mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(base, self.sysfs / "block"), self.sysfs / "block" / name)
        return base


def vpd80(serial: str) -> bytes:
    data = serial.encode()
    return bytes([0, 0x80, 0, len(data)]) + data


def _ata_words(text: str, length: int) -> bytes:
    raw = text.ljust(length).encode()
    return bytes(b for i in range(0, length, 2) for b in (raw[i + 1], raw[i]))


def vpd89(model: str, serial: str) -> bytes:
    identify = bytearray(512)
    identify[20:40] = _ata_words(serial.rjust(20), 20)      # words 10-19
    identify[54:94] = _ata_words(model, 40)                  # words 27-46
    body = bytes(56) + identify                              # IDENTIFY data at byte 60
    return bytes([0, 0x89, len(body) >> 8, len(body) & 0xFF]) + body


NVME_MODEL = "Samsung SSD 970 EVO Plus 1TB"
NVME_SIZE = 1000204886016
SATA_SIZE = 2000398934016
MOUNTS = ("proc /proc proc rw 0 0\n"
          "/dev/vdb1 /mnt ext4 rw,relatime 0 0\n"
          "tmpfs /run tmpfs rw 0 0\n")


@pytest.fixture
def machine(tmp_path: Path) -> FakeSys:
    """A server with virtio, NVMe, SATA (held by LVM), a USB stick, a disk with a mounted
    partition, and the things an inventory must leave out."""
    m = FakeSys(tmp_path)
    pci = "pci0000:00"
    m.disk(f"{pci}/0000:00:04.0/virtio1", "vda", size=20 * GIB, devnum="254:0",
           attrs={"serial": "vd-serial-1"}, device_attrs={"vendor": "0x1af4"}, rotational=True)
    vdb = m.disk(f"{pci}/0000:00:05.0/virtio2", "vdb", size=8 * GIB, devnum="254:16",
                 attrs={"serial": "data disk"}, rotational=True)
    m.partition(vdb, "vdb1", 1, size=8 * GIB - (1 << 20), devnum="254:17")
    # NVMe: the namespace under the controller; model/serial on the controller.
    m.disk(f"{pci}/0000:00:03.0/nvme/nvme0", "nvme0n1", size=NVME_SIZE, devnum="259:0",
           attrs={"wwid": "eui.0025388b71b0dd47", "nsid": "1"},
           device_attrs={"model": NVME_MODEL + "        ", "serial": "S4EWNX0R123456      ",
                         "transport": "pcie"})
    # SATA behind AHCI: ataN/hostN/targetH:C:T/H:C:T:L; libata's SCSI model is 16 characters.
    ahci = f"{pci}/0000:00:1f.2"
    sda = m.disk(f"{ahci}/ata1/host0/target0:0:0/0:0:0:0", "sda", size=SATA_SIZE,
                 devnum="8:0", rotational=True,
                 device_attrs={"vendor": "ATA     ", "model": "ST2000DM008-2FR1", "type": "0",
                               "wwid": "naa.5000c500a1b2c3d4",
                               "vpd_pg80": vpd80("            ZFL1ABCD"),
                               "vpd_pg89": vpd89("ST2000DM008-2FR102", "ZFL1ABCD")})
    _write(m.sysfs / "devices" / ahci / "ata1" / "ata_port" / "ata1" / "port_no", "1")
    sda1 = m.partition(sda, "sda1", 1, size=SATA_SIZE - (1 << 20), devnum="8:1")
    dm = m.virtual("dm-0", "253:0", size=100 * GIB)
    _write(dm / "dm" / "name", "vg0-root")
    os.symlink(os.path.relpath(dm, sda1 / "holders"), sda1 / "holders" / "dm-0")
    # The optical drive on the second port: left out.
    m.disk(f"{ahci}/ata2/host1/target1:0:0/1:0:0:0", "sr0", size=GIB, devnum="11:0",
           device_attrs={"vendor": "HL-DT-ST", "model": "DVD+-RW GU90N", "type": "5"},
           removable=True)
    # A USB stick: xHCI, root hub usb1, port 2, interface 1-2:1.0, usb-storage host6.
    xhci = f"{pci}/0000:00:14.0/usb1/1-2"
    m.disk(f"{xhci}/1-2:1.0/host6/target6:0:0/6:0:0:0", "sdb", size=16 * GIB, devnum="8:16",
           removable=True, device_attrs={"vendor": "SanDisk ", "model": "Cruzer Blade    ",
                                         "type": "0"})
    _write(m.sysfs / "devices" / xhci / "serial", "4C530001234567")
    # An empty card reader slot: size 0.
    m.disk(f"{pci}/0000:00:14.0/usb1/1-3/1-3:1.0/host7/target7:0:0/7:0:0:0", "sdc", size=0,
           devnum="8:32", removable=True, device_attrs={"vendor": "Generic-", "type": "0"})
    m.virtual("loop0", "7:0", size=GIB)
    m.virtual("zram0", "252:0", size=4 * GIB)
    (tmp_path / "dev").mkdir()
    return m


def inv(m: FakeSys, mounts: str = MOUNTS, mountinfo: str = "", swaps: str = "") -> list[Disk]:
    return inventory(m.sysfs, m.root / "dev", mounts_text=mounts, mountinfo_text=mountinfo,
                     swaps_text=swaps)


def by_name(found: list[Disk]) -> dict[str, Disk]:
    return {d.name: d for d in found}


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
    assert vdb.partitions == (disks.Partition("vdb1", 1, 8 * GIB - (1 << 20), "254:17"),)


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
    image[disks.ISO9660_MAGIC_OFFSET:disks.ISO9660_MAGIC_OFFSET + 5] = b"CD001"
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


# --- what uses a disk ------------------------------------------------------------------------

PARTS = (disks.Partition("vda1", 1, 0, "254:1"), disks.Partition("vda2", 2, 0, "254:2"))
PLAIN = Family("vda", "254:0", PARTS)
# LVM on MD on vda2: dm-0 is two levels above the disk
STACKED = Family("vda", "254:0", PARTS, (Holder("md127", "vda2", "9:127"),
                                          Holder("dm-0", "md127", "253:0", "vg0-root")))
SWAPS = "Filename Type Size Used Priority\n"
LINKS = {"/dev/disk/by-uuid/x": "/dev/vda1", "/dev/mapper/vg0-root": "/dev/dm-0"}
HELD = (Use("holder", "md127", "vda2", label="md127"),
        Use("holder", "dm-0", "md127", label="dm-0 (vg0-root)"))


def mount(device: str, where: str, *, ro: bool = False, fstype: str = "ext4") -> Use:
    return Use("mount", device, where, read_only=ro, fstype=fstype)


@pytest.mark.parametrize(("family", "mounts", "mountinfo", "swaps", "uses"), [
    (PLAIN, "proc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n", "", "", ()),
    (PLAIN, "/dev/vda1 /mnt ext4 rw,relatime 0 0\n", "", "", (mount("/dev/vda1", "/mnt"),)),
    (PLAIN, "/dev/vda1 /mnt ext4 ro,relatime 0 0\n", "", "",
     (mount("/dev/vda1", "/mnt", ro=True),)),
    (PLAIN, "/dev/vda /mnt/my\\040disk\\011x xfs rw 0 0\n", "", "",       # \040 space, \011 tab
     (mount("/dev/vda", "/mnt/my disk\tx", fstype="xfs"),)),
    (PLAIN, "/dev/vdb1 /mnt ext4 rw 0 0\n/dev/vdaa1 /x ext4 rw 0 0\n", "", "", ()),  # others
    (PLAIN, "/dev/disk/by-uuid/x /a\\040b xfs rw 0 0\n", "", "",          # through a link
     (mount("/dev/disk/by-uuid/x", "/a b", fstype="xfs"),)),
    # /dev/root names no disk: mountinfo's major:minor does; the same mount point only once
    (PLAIN, "/dev/root / ext4 rw 0 0\n/dev/vda2 /boot ext4 rw 0 0\n",
     "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
     "23 22 254:2 / /boot rw,relatime shared:2 - ext4 /dev/vda2 rw\n", "",
     (mount("/dev/vda2", "/boot"), mount("/dev/vda1", "/"))),
    # a bind mount listed in mounts under an alias: found by major:minor, escapes undone
    (PLAIN, "/dev/root /srv/a\\040b ext4 rw 0 0\n",
     "31 22 254:2 /data /srv/a\\040b rw,relatime master:3 - ext4 /dev/root rw\n", "",
     (mount("/dev/vda2", "/srv/a b"),)),
    # read-only per mount (bind -o ro) or per superblock
    (PLAIN, "", "40 1 254:1 / /ro ro,relatime - ext4 /dev/vda1 rw\n"
                "41 1 254:2 / /sb rw,relatime shared:7 - ext4 /dev/vda2 ro,errors=remount-ro\n",
     "", (mount("/dev/vda1", "/ro", ro=True), mount("/dev/vda2", "/sb", ro=True))),
    (PLAIN, "", "42 1 254:16 / /other rw - ext4 /dev/vdb rw\n", "", ()),  # another disk
    (PLAIN, "", "", SWAPS + "/dev/vda2 partition 1048572 0 -2\n/dev/vdb1 partition 1 0 -3\n",
     (Use("swap", "/dev/vda2"),)),
    (PLAIN, "", "", SWAPS + "/swapfile file 1024 0 -2\n", ()),            # a file: not a disk
    # stacked devices: their mounts and swaps are the disk's, and they are listed as holders
    (STACKED, "", "", "", HELD),
    (STACKED, "/dev/mapper/vg0-root / xfs rw 0 0\n", "", SWAPS + "/dev/md127 partition 1 0 -2\n",
     (mount("/dev/mapper/vg0-root", "/", fstype="xfs"), Use("swap", "/dev/md127"), *HELD)),
    (STACKED, "", "50 1 253:0 / /srv rw - xfs /dev/mapper/vg0-root rw\n", "",
     (mount("/dev/dm-0", "/srv", fstype="xfs"), *HELD)),
    # sysfs lists no partitions: the kernel's partition names still count
    (Family("nvme0n1"), "/dev/nvme0n1p2 / ext4 rw 0 0\n", "", "",
     (mount("/dev/nvme0n1p2", "/"),)),
    (Family("nvme0n"), "/dev/nvme0n1p2 / ext4 rw 0 0\n", "", "", ()),
    (Family("loop1"), "/dev/loop10 /a ext4 rw 0 0\n/dev/loop1p1 /b ext4 rw 0 0\n", "", "",
     (mount("/dev/loop1p1", "/b"),)),                                    # loop10 is not loop1's
    (Family("sda"), "/dev/sda12 /a ext4 rw 0 0\n", "", "", (mount("/dev/sda12", "/a"),)),
])
def test_disk_usage(family: Family, mounts: str, mountinfo: str, swaps: str,
                    uses: tuple[Use, ...]) -> None:
    usage = disk_usage(family, mounts=mounts, mountinfo=mountinfo, swaps=swaps,
                       resolve=lambda p: LINKS.get(p, p))
    assert usage.uses == uses


@pytest.mark.parametrize(("uses", "write", "read"), [
    ((), (), ()),
    ((mount("/dev/vda1", "/mnt"),), (mount("/dev/vda1", "/mnt"),), (mount("/dev/vda1", "/mnt"),)),
    ((mount("/dev/vda1", "/mnt", ro=True),), (mount("/dev/vda1", "/mnt", ro=True),), ()),
    ((Use("swap", "/dev/vda2"),), (Use("swap", "/dev/vda2"),), (Use("swap", "/dev/vda2"),)),
    (HELD, HELD, ()),                                      # an idle LV reads the same data
    ((mount("/dev/dm-0", "/", ro=True), *HELD), (mount("/dev/dm-0", "/", ro=True), *HELD), ()),
])
def test_usage_conflicts(uses: tuple[Use, ...], write: tuple[Use, ...],
                         read: tuple[Use, ...]) -> None:
    usage = Usage(uses)
    assert (usage.conflicts("write"), usage.conflicts("read")) == (write, read)


@pytest.mark.parametrize(("use", "sentence", "brief"), [
    (mount("/dev/vda1", "/a b"), "/dev/vda1 is mounted on /a b", "/dev/vda1 on /a b"),
    (Use("swap", "/dev/vda2"), "/dev/vda2 is in use as swap", "/dev/vda2 is swap"),
    (HELD[1], "md127 is held by dm-0 (vg0-root)", "dm-0 (vg0-root)"),
])
def test_use_words(use: Use, sentence: str, brief: str) -> None:
    assert (use.sentence, use.brief) == (sentence, brief)


def test_usage_as_the_inventory_shows_it() -> None:
    usage = Usage((mount("/dev/vda1", "/run/live", ro=True, fstype="iso9660"),
                   Use("swap", "/dev/vda2"), *HELD))
    assert usage.mounted == ("/dev/vda1 on /run/live", "/dev/vda2 is swap")
    assert usage.held == ("md127", "dm-0 (vg0-root)")
    assert usage.iso9660 and not Usage(HELD).iso9660


@pytest.fixture
def stacked(tmp_path: Path) -> FakeSys:
    """vda with two partitions; md127 on vda2 and dm-0 (vg0-root) on md127, linked the way
    sysfs links ``holders/``; ``/sys/class/block`` and ``/sys/dev/block`` as the kernel has
    them."""
    m = FakeSys(tmp_path)
    vda = m.disk("pci0000:00/0000:00:04.0/virtio1", "vda", size=20 * GIB, devnum="254:0")
    m.partition(vda, "vda1", 1, size=GIB, devnum="254:1")
    vda2 = m.partition(vda, "vda2", 2, size=2 * GIB, devnum="254:2")
    md = m.virtual("md127", "9:127", size=2 * GIB)
    dm = m.virtual("dm-0", "253:0", size=2 * GIB)
    _write(dm / "dm" / "name", "vg0-root")
    os.symlink(os.path.relpath(md, vda2 / "holders"), vda2 / "holders" / "md127")
    os.symlink(os.path.relpath(dm, md / "holders"), md / "holders" / "dm-0")
    classes = m.sysfs / "class" / "block"
    numbers = m.sysfs / "dev" / "block"
    classes.mkdir(parents=True)
    numbers.mkdir(parents=True)
    for name, node, devnum in (("vda", vda, "254:0"), ("vda2", vda2, "254:2"),
                               ("md127", md, "9:127"), ("dm-0", dm, "253:0")):
        os.symlink(os.path.relpath(node, classes), classes / name)
        os.symlink(os.path.relpath(node, numbers), numbers / devnum)
    return m


def test_read_family_walks_holders_two_levels_deep(stacked: FakeSys) -> None:
    family = disks.read_family(stacked.sysfs / "block", "vda")
    assert family == Family(
        "vda", "254:0", (disks.Partition("vda1", 1, GIB, "254:1"),
                         disks.Partition("vda2", 2, 2 * GIB, "254:2")),
        (Holder("md127", "vda2", "9:127"), Holder("dm-0", "md127", "253:0", "vg0-root")))
    # a partition has its own family: what is stacked on it
    part = disks.read_family(stacked.sysfs / "class" / "block", "vda2")
    assert [h.label for h in part.holders] == ["md127", "dm-0 (vg0-root)"]
    assert disks.read_family(stacked.sysfs / "block", "nope") == Family("nope")


def test_inventory_lists_nested_holders_and_their_mounts(stacked: FakeSys) -> None:
    (stacked.root / "dev").mkdir()
    vda = by_name(inv(stacked, mounts="/dev/dm-0 / xfs rw 0 0\n"))["vda"]
    assert (vda.holders, vda.mounted) == (("md127", "dm-0 (vg0-root)"), ("/dev/dm-0 on /",))
    assert refusals(vda) == ["mounted: /dev/dm-0 on /", "held by md127, dm-0 (vg0-root)"]
    assert refusals(vda, allow_mounted=True) == []


def test_device_usage_reads_proc_and_sysfs(stacked: FakeSys, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _write(proc / "self" / "mounts", "/dev/root / ext4 rw 0 0")
    _write(proc / "self" / "mountinfo", "22 1 254:1 / / rw - ext4 /dev/root rw")
    _write(proc / "swaps", SWAPS + "/dev/vda2 partition 1 0 -2")
    usage = disks.device_usage("vda", sysfs=stacked.sysfs, proc=proc)
    assert usage.uses == (mount("/dev/vda1", "/"), Use("swap", "/dev/vda2"), *HELD)
    # a partition: only what is on it
    assert disks.device_usage("vda2", sysfs=stacked.sysfs, proc=proc).uses == \
        (Use("swap", "/dev/vda2"), *HELD)
    # no /proc at all: only the holders
    assert disks.device_usage("vda", sysfs=stacked.sysfs, proc=tmp_path / "none").uses == HELD


def test_kernel_name(stacked: FakeSys, tmp_path: Path) -> None:
    link = tmp_path / "by-id-link"
    link.symlink_to("/dev/whatever")
    assert disks.kernel_name(str(link), os.makedev(253, 0), stacked.sysfs) == "dm-0"
    assert disks.kernel_name(str(link), os.makedev(8, 0), stacked.sysfs) == "whatever"


# --- pure helpers ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "safe"), [
    ("Samsung SSD 970 EVO Plus 1TB", "Samsung_SSD_970_EVO_Plus_1TB"),
    ("  QEMU   HARDDISK  ", "QEMU_HARDDISK"),
    ("a/b\\c*d", "a_b_c_d"),
    ("ok#+-.:=@_", "ok#+-.:=@_"),
])
def test_udev_safe(text: str, safe: str) -> None:
    assert disks.udev_safe(text) == safe


@pytest.mark.parametrize(("wwid", "fields"), [
    ("naa.5000C500A1B2C3D4", ("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", None)),
    ("naa.600508b1001c4d5e6f708192a3b4c5d6",
     ("0x600508b1001c4d5e", "0x600508b1001c4d5e6f708192a3b4c5d6", "0x6f708192a3b4c5d6")),
    ("t10.ATA     QEMU HARDDISK                           QM00001", (None, None, None)),
    (None, (None, None, None)),
])
def test_wwn_fields(wwid: str | None, fields: tuple[str | None, ...]) -> None:
    assert disks.wwn_fields(wwid) == fields


@pytest.mark.parametrize(("n", "text"), [
    (512, "512 B"), (20 * GIB, "20 GiB"), (NVME_SIZE, "931.5 GiB"), (2 * TIB, "2 TiB"),
    (1536 << 20, "1.5 GiB"),
])
def test_human_size(n: int, text: str) -> None:
    assert disks.human_size(n) == text


def test_vpd_pages() -> None:
    assert disks.vpd_serial(vpd80("  ZFL1ABCD")) == "ZFL1ABCD"
    assert disks.vpd_serial(b"\x00\x83\x00\x02ab") is None
    assert disks.ata_identity(vpd89("WDC WD40EFRX-68N32N0", "WD-WCC7K1234567")) == (
        "WDC WD40EFRX-68N32N0", "WD-WCC7K1234567")
    assert disks.ata_identity(b"\x00\x89\x00\x00") == (None, None)


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
    info = disks.path_id(components.split("/"), name=components.rsplit("/", 1)[1], nsid="1")
    assert (info.by_path, info.transport) == (by_path, transport)


# --- hints: parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize(("hints", "key", "op", "values"), [
    ({"size": ">= 100GiB"}, "size", ">=", (100 * GIB,)),
    ({"size": "<= 500G"}, "size", "<=", (500 * GIB,)),
    ({"size": "> 1.5T"}, "size", ">", (int(1.5 * TIB),)),
    ({"size": "< 1T"}, "size", "<", (TIB,)),
    ({"size": "!= 8GiB"}, "size", "!=", (8 * GIB,)),
    ({"size": "== 20"}, "size", "==", (20 * GIB,)),
    ({"size": 20}, "size", "==", (20 * GIB,)),                  # ironic: integer GiB
    ({"size": "<or> 20 <or> 40GiB"}, "size", "<or>", (20 * GIB, 40 * GIB)),
    ({"model": "<in> INTEL"}, "model", "<in>", ("intel",)),
    ({"model": "QEMU  HARDDISK"}, "model", "s==", ("qemu harddisk",)),
    ({"model": "s!= foo"}, "model", "s!=", ("foo",)),
    ({"vendor": "s>= a"}, "vendor", "s>=", ("a",)),
    ({"vendor": "s<= z"}, "vendor", "s<=", ("z",)),
    ({"vendor": "s< z"}, "vendor", "s<", ("z",)),
    ({"vendor": "s> a"}, "vendor", "s>", ("a",)),
    ({"serial": "<or> S3Z1 <or> S3Z2"}, "serial", "<or>", ("s3z1", "s3z2")),
    ({"serial": "S3Z"}, "serial", "s==", ("s3z",)),
    ({"name": "/dev/sdb"}, "name", "s==", ("sdb",)),
    ({"name": "sdb"}, "name", "s==", ("sdb",)),
    ({"name": "/dev/disk/by-id/wwn-0x5000"}, "name", "s==", ("disk/by-id/wwn-0x5000",)),
    ({"wwn": "naa.5000C500A1B2C3D4"}, "wwn", "s==", ("0x5000c500a1b2c3d4",)),
    ({"by_path": "/dev/disk/by-path/pci-0000:00:04.0"}, "by_path", "s==",
     ("pci-0000:00:04.0",)),
    ({"by-path": "pci-0000:00:04.0"}, "by_path", "s==", ("pci-0000:00:04.0",)),
    ({"hctl": "0:0:0:0"}, "hctl", "s==", ("0:0:0:0",)),
    ({"tran": "nvme"}, "tran", "s==", ("nvme",)),
])
def test_parse_hints(hints: dict[str, object], key: str, op: str,
                     values: tuple[object, ...]) -> None:
    expr = getattr(parse_hints(hints), key)
    assert (expr.op, expr.values) == (op, values)


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), ("false", False), ("Yes", True), (0, False), (1, True),
])
def test_parse_rotational(value: object, expected: bool) -> None:
    assert parse_hints({"rotational": value}).rotational is expected


def test_no_hints() -> None:
    assert parse_hints(None).empty and parse_hints({}).empty
    assert parse_hints({"serial": None}).empty


@pytest.mark.parametrize(("hints", "field", "fragment"), [
    ({"colour": "red"}, "rootDeviceHints.colour", "unknown hint"),
    ({"size": True}, "rootDeviceHints.size", "must be a size"),
    ({"size": 1.5}, "rootDeviceHints.size", "must be a size"),
    ({"size": "= 100"}, "rootDeviceHints.size", "'=' is ambiguous"),
    ({"size": ">= lots"}, "rootDeviceHints.size", "not a size"),
    ({"size": "s== 10"}, "rootDeviceHints.size", "s== does not apply to a size"),
    ({"size": "<in> 10"}, "rootDeviceHints.size", "<in> does not apply to a size"),
    ({"size": "0"}, "rootDeviceHints.size", "positive"),
    ({"size": ">="}, "rootDeviceHints.size", "needs a value"),
    ({"model": "< 10"}, "rootDeviceHints.model", "< does not apply to a string"),
    ({"model": "<all-in> a"}, "rootDeviceHints.model", "<all-in> does not apply"),
    ({"model": ""}, "rootDeviceHints.model", "is empty"),
    ({"model": "<or> a"}, "rootDeviceHints.model", "two or more values"),
    ({"model": "s== a <or> b"}, "rootDeviceHints.model", "cannot combine s== with <or>"),
    ({"serial": 123}, "rootDeviceHints.serial", "must be a string, got int"),
    ({"rotational": "maybe"}, "rootDeviceHints.rotational", "must be a boolean"),
    ({"rotational": 2}, "rootDeviceHints.rotational", "must be a boolean"),
])
def test_parse_hints_errors(hints: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hints(hints)
    assert err.value.field == field
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_hints_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="rootDeviceHints: must be an object, got list"):
        parse_hints(["serial"])  # type: ignore[arg-type]


# --- selection ---------------------------------------------------------------------------------

def choose(found: list[Disk], hints: dict[str, object] | None = None, **kw: bool | int) -> str:
    return select_disk(found, parse_hints(hints), **kw).name  # type: ignore[arg-type]


@pytest.mark.parametrize(("hints", "chosen"), [
    ({"serial": "S4EWNX0R123456"}, "nvme0n1"),
    ({"serial": "s4ewnx0r123456"}, "nvme0n1"),                   # case-insensitive
    ({"serial": "<in> EWNX"}, "nvme0n1"),
    ({"wwn": "eui.0025388b71b0dd47"}, "nvme0n1"),
    ({"model": "<in> samsung"}, "nvme0n1"),
    ({"size": ">= 900GiB", "rotational": False}, "nvme0n1"),
    ({"size": "<= 100G"}, "vda"),                                # smallest usable match
    ({"size": 20}, "vda"),
    ({"size": "<or> 20 <or> 8"}, "vda"),                         # vdb (8 GiB) is mounted
    ({"name": "/dev/vda"}, "vda"),
    ({"name": "/dev/disk/by-id/virtio-vd-serial-1"}, "vda"),
    ({"by_path": "/dev/disk/by-path/pci-0000:00:04.0"}, "vda"),
    ({"by_path": "virtio-pci-0000:00:04.0"}, "vda"),
    ({"tran": "virtio", "rotational": True}, "vda"),
    ({"vendor": "0x1af4"}, "vda"),
])
def test_select_by_hints(machine: FakeSys, hints: dict[str, object], chosen: str) -> None:
    assert choose(inv(machine), hints) == chosen


def test_default_is_the_smallest_usable_disk(machine: FakeSys) -> None:
    found = inv(machine)
    assert choose(found) == "vda"                    # vdb is smaller but mounted, sdb removable
    assert choose(found, min_size=100 * GIB) == "nvme0n1"    # sda is held by LVM
    assert choose(found, allow_mounted=True) == "vdb"


def test_default_with_nothing_usable_says_why_for_each_disk(machine: FakeSys) -> None:
    with pytest.raises(NoDiskError) as err:
        select_disk(inv(machine), None, min_size=3 * TIB)
    assert str(err.value) == (
        "disk selection: no usable disk: nvme0n1 (931.5 GiB) too small for the image "
        "(931.5 GiB < 3 TiB); sda (1.8 TiB) held by dm-0 (vg0-root), too small for the image "
        "(1.8 TiB < 3 TiB); sdb (16 GiB) removable (usb), too small for the image "
        "(16 GiB < 3 TiB); vda (20 GiB) too small for the image (20 GiB < 3 TiB); "
        "vdb (8 GiB) mounted: /dev/vdb1 on /mnt, too small for the image (8 GiB < 3 TiB)")


def test_no_match_names_every_disk_and_the_failing_hint(machine: FakeSys) -> None:
    with pytest.raises(NoDiskError) as err:
        select_disk(inv(machine), parse_hints({"serial": "X"}))
    assert str(err.value) == (
        "disk selection: no disk matches rootDeviceHints {serial: X}: have "
        "nvme0n1 (931.5 GiB, Samsung SSD 970 EVO Plus 1TB, serial S4EWNX0R123456): serial "
        "S4EWNX0R123456 does not match X; sda (1.8 TiB, ST2000DM008-2FR102, serial ZFL1ABCD): "
        "serial ZFL1ABCD does not match X; sdb (16 GiB, Cruzer Blade, serial 4C530001234567): "
        "serial 4C530001234567 does not match X; vda (20 GiB, serial vd-serial-1): serial "
        "vd-serial-1 does not match X; vdb (8 GiB, serial data disk): serial data disk does "
        "not match X")


def test_size_mismatch_is_shown_human(machine: FakeSys) -> None:
    with pytest.raises(NoDiskError, match=r"vda \(20 GiB, serial vd-serial-1\): size 20 GiB "
                                          r"does not match >= 10T"):
        select_disk(inv(machine), parse_hints({"size": ">= 10T"}))


def test_removable_refused_unless_allowed(machine: FakeSys) -> None:
    found = inv(machine)
    with pytest.raises(NoDiskError, match=r"matches rootDeviceHints \{serial: 4C530001234567\}: "
                                          r"sdb \(16 GiB\) removable \(usb\)$"):
        choose(found, {"serial": "4C530001234567"})
    assert choose(found, {"serial": "4C530001234567"}, allow_removable=True) == "sdb"


def test_mounted_and_held_refused_unless_allowed(machine: FakeSys) -> None:
    found = inv(machine)
    with pytest.raises(NoDiskError, match=r"vdb \(8 GiB\) mounted: /dev/vdb1 on /mnt$"):
        choose(found, {"name": "vdb"})
    with pytest.raises(NoDiskError, match=r"sda \(1.8 TiB\) held by dm-0 \(vg0-root\)$"):
        choose(found, {"wwn": "0x5000c500a1b2c3d4"})
    assert choose(found, {"name": "vdb"}, allow_mounted=True) == "vdb"


def test_boot_medium_and_read_only_refused(machine: FakeSys) -> None:
    found = [replace(d, boot_medium="vda carries an iso9660 file system") if d.name == "vda"
             else replace(d, read_only=d.name == "nvme0n1") for d in inv(machine)]
    with pytest.raises(NoDiskError, match="boot medium: vda carries an iso9660"):
        choose(found, {"name": "vda"})
    with pytest.raises(NoDiskError, match=r"nvme0n1 \(931.5 GiB\) read-only$"):
        choose(found, {"tran": "nvme"})
    assert choose(found, {"name": "vda"}, allow_boot_medium=True) == "vda"
    assert choose(found, {"tran": "nvme"}, allow_read_only=True) == "nvme0n1"


def _twins() -> list[Disk]:
    one = Disk("sda", 500 * GIB, model="CT500MX500SSD1", serial="1234", transport="sata")
    return [one, replace(one, name="sdb", size=600 * GIB), replace(one, name="sdc", serial="9")]


def test_identity_hint_matching_two_disks_is_an_error() -> None:
    with pytest.raises(AmbiguousDiskError) as err:
        select_disk(_twins(), parse_hints({"serial": "1234"}))
    assert str(err.value) == (
        "disk selection: rootDeviceHints {serial: 1234} name one disk but match 2: "
        "sda (500 GiB, CT500MX500SSD1, serial 1234), sdb (600 GiB, CT500MX500SSD1, serial 1234); "
        "add serial or wwn to tell them apart")
    assert [d.name for d in err.value.candidates] == ["sda", "sdb"]


def test_identity_plus_narrowing_hint_is_fine() -> None:
    assert select_disk(_twins(), parse_hints({"serial": "1234", "size": "> 550G"})).name == "sdb"


def test_non_identity_hints_take_the_smallest_then_the_lowest_name() -> None:
    twins = _twins()
    assert select_disk(twins, parse_hints({"model": "ct500mx500ssd1"})).name == "sda"
    same = [replace(d, size=GIB) for d in reversed(twins)]
    assert select_disk(same, parse_hints({"model": "<in> mx500"})).name == "sda"
    natural = [Disk("nvme10n1", GIB, transport="nvme"), Disk("nvme2n1", GIB, transport="nvme")]
    assert select_disk(natural).name == "nvme2n1"


def test_no_disks_at_all() -> None:
    with pytest.raises(NoDiskError, match="no usable disk: no disks found"):
        select_disk([])
    with pytest.raises(NoDiskError, match=r"rootDeviceHints \{size: 20\}: have no disks"):
        select_disk([], parse_hints({"size": 20}))


def test_unknown_attribute_never_matches() -> None:
    with pytest.raises(NoDiskError, match="serial unknown does not match s!= x"):
        select_disk([Disk("vda", GIB)], parse_hints({"serial": "s!= x"}))


# --- reporting -----------------------------------------------------------------------------------

def test_inventory_lines(machine: FakeSys) -> None:
    lines = inventory_lines(inv(machine))
    assert lines[0].split() == ["NAME", "SIZE", "TRAN", "MODEL", "SERIAL", "WWN", "ROT", "RM",
                                "BY-PATH", "STATE"]
    assert len(lines) == 6 and all(len(line) <= 200 for line in lines)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["vda"].endswith("  ok")
    assert rows["vdb"].endswith("mounted: /dev/vdb1 on /mnt")
    assert rows["sdb"].endswith("removable (usb)")
    assert "Samsung SSD 970 EVO Plu~" in rows["nvme0n1"]
    assert inventory_lines([])[-1] == "(no disks)"


def test_inventory_event_is_json(machine: FakeSys) -> None:
    event = json.loads(json.dumps(inventory_event(inv(machine))))
    assert event["count"] == 5
    vdb = next(d for d in event["disks"] if d["name"] == "vdb")
    assert vdb["path"] == "/dev/vdb"
    assert vdb["refused"] == ["mounted: /dev/vdb1 on /mnt"]
    assert vdb["partitions"][0]["name"] == "vdb1"


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


@pytest.mark.parametrize(("path", "device"), [
    ("/dev/disk/by-id/nvme-eui.0025388b71b0dd47", "/dev/nvme0n1"),
    ("/dev/disk/by-id/ata-ST2000DM008-2FR102_ZFL1ABCD-part1", "/dev/sda1"),
    ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/dev/sda"),
    ("/dev/sdb", "/dev/sdb"),
])
def test_resolve_device(machine: FakeSys, path: str, device: str) -> None:
    assert resolve_device(path, inv(machine)) == device


@pytest.mark.parametrize(("path", "message"), [
    ("/dev/disk/by-id/virtio-nope",
     "disk /dev/disk/by-id/virtio-nope: no such disk (known: /dev/disk/by-id/ata-"),
    ("/dev/disk/by-uuid/1234",
     "disk /dev/disk/by-uuid/1234: pyinit resolves only /dev/disk/by-id and /dev/disk/by-path"),
])
def test_resolve_device_errors(machine: FakeSys, path: str, message: str) -> None:
    with pytest.raises(DiskError) as err:
        resolve_device(path, inv(machine))
    assert str(err.value).startswith(message)


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


def test_hints_object_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Hints().serial = None  # type: ignore[misc]


# --- waiting for the disks, choosing the action's disk -----------------------------------------

class Clock:
    """A fake clock; ``sleep`` advances it and runs the scheduled sysfs changes."""

    def __init__(self, changes: dict[float, object] | None = None) -> None:
        self.now = 0.0
        self.changes = dict(changes or {})

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 3)
        for at in sorted(self.changes):
            if at <= self.now:
                self.changes.pop(at)()  # type: ignore[operator]


def test_settle_waits_until_block_is_quiet(machine: FakeSys) -> None:
    late = lambda: machine.disk("pci0000:00/0000:00:06.0/virtio3", "vdc",  # noqa: E731
                                size=GIB, devnum="254:32")
    clock = Clock({0.5: late})
    got = disks.settle(machine.sysfs, timeout=10, quiet=1.0, clock=clock, sleep=clock.sleep)
    assert got.settled and "vdc" in got.names
    assert got.seconds == pytest.approx(1.5, abs=0.05)     # quiet for 1 s after the change


def test_settle_is_bounded_and_names_pending_usb_storage(machine: FakeSys) -> None:
    iface = machine.sysfs / "bus" / "usb" / "devices" / "2-1:1.0"
    _write(iface / "bInterfaceClass", "08")
    (iface / "driver").mkdir()                     # usb-storage bound, SCSI scan not done
    clock = Clock()
    got = disks.settle(machine.sysfs, timeout=3, quiet=1.0, clock=clock, sleep=clock.sleep)
    assert not got.settled and got.pending == ("2-1:1.0",)
    assert got.seconds == pytest.approx(3, abs=0.05)
    _write(iface / "host9" / "target9:0:0" / "9:0:0:0" / "block" / "sdd" / "size", "8")
    clock = Clock()
    assert disks.settle(machine.sysfs, timeout=3, quiet=1.0, clock=clock,
                        sleep=clock.sleep).settled


def test_settle_ignores_usb_storage_without_a_driver(machine: FakeSys) -> None:
    _write(machine.sysfs / "bus" / "usb" / "devices" / "2-1:1.0" / "bInterfaceClass", "08")
    clock = Clock()
    assert disks.settle(machine.sysfs, timeout=3, clock=clock, sleep=clock.sleep).settled


@pytest.mark.parametrize(("device", "hints", "kw", "path", "how"), [
    ("/dev/sdb", None, {}, "/dev/sdb", "named"),           # named: taken as given, even USB
    ("/dev/vdz", None, {}, "/dev/vdz", "named"),           # not listed: the writer checks it
    ("/dev/disk/by-id/virtio-vd-serial-1", None, {}, "/dev/vda",
     "by-id link /dev/disk/by-id/virtio-vd-serial-1"),
    ("/dev/disk/by-path/pci-0000:00:03.0-nvme-1", None, {}, "/dev/nvme0n1",
     "by-path link /dev/disk/by-path/pci-0000:00:03.0-nvme-1"),
    (None, {"serial": "4c530001234567"}, {"allow_removable": True}, "/dev/sdb",
     "rootDeviceHints {serial: 4c530001234567}"),
    (None, {"tran": "nvme"}, {}, "/dev/nvme0n1", "rootDeviceHints {tran: nvme}"),
    (None, None, {}, "/dev/vda", "default rule: smallest usable disk"),
    (None, None, {"min_size": 100 * GIB}, "/dev/nvme0n1",
     "default rule: smallest usable disk of at least 100 GiB"),
    (None, {"serial": "data disk"}, {"capture": True}, "/dev/vdb",   # mounted: fine to read
     "rootDeviceHints {serial: data disk}"),
])
def test_choose(machine: FakeSys, device: str | None, hints: dict[str, object] | None,
                kw: dict[str, object], path: str, how: str) -> None:
    got = disks.choose(inv(machine), device=device,
                       hints=parse_hints(hints) if hints else None, **kw)  # type: ignore[arg-type]
    assert (got.device, got.how) == (path, how)


@pytest.mark.parametrize(("device", "hints", "message"), [
    (None, {"serial": "4c530001234567"},
     "disk selection: no usable disk matches rootDeviceHints {serial: 4c530001234567}: "
     "sdb (16 GiB) removable (usb)"),
    (None, {"serial": "data disk"},
     "disk selection: no usable disk matches rootDeviceHints {serial: data disk}: "
     "vdb (8 GiB) mounted: /dev/vdb1 on /mnt"),
    (None, {"serial": "nope"}, "disk selection: no disk matches rootDeviceHints {serial: nope}"),
    ("/dev/disk/by-id/virtio-nope", None, "disk /dev/disk/by-id/virtio-nope: no such disk"),
])
def test_choose_errors(machine: FakeSys, device: str | None, hints: dict[str, object] | None,
                       message: str) -> None:
    with pytest.raises(DiskError) as err:
        disks.choose(inv(machine), device=device, hints=parse_hints(hints) if hints else None)
    assert str(err.value).startswith(message), str(err.value)


def test_settle_counts_quiet_from_an_unchanged_baseline(machine: FakeSys) -> None:
    """The boot takes /sys/block once the drivers are loaded; seconds later (DHCP, the action)
    the same names mean the disks have been quiet all along: no second wait."""
    clock = Clock()
    clock.now = 5.0
    before = (disks.block_names(machine.sysfs), 2.0)
    got = disks.settle(machine.sysfs, timeout=10, quiet=1.0, baseline=before, clock=clock,
                       sleep=clock.sleep)
    assert got.settled and got.seconds == 0


def test_settle_waits_when_the_baseline_differs(machine: FakeSys) -> None:
    clock = Clock()
    clock.now = 5.0
    stale = (("vda",), 2.0)  # a disk appeared (or went) since: the quiet period starts now
    got = disks.settle(machine.sysfs, timeout=10, quiet=1.0, baseline=stale, clock=clock,
                       sleep=clock.sleep)
    assert got.settled and got.seconds == pytest.approx(1.0, abs=0.15)
