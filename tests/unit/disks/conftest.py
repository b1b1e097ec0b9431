"""The disk tests' machines: ``machine``, a server with one disk of every kind and the things an
inventory leaves out; ``stacked``, a disk under MD and LVM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .fakes import GIB, NVME_MODEL, NVME_SIZE, SATA_SIZE, FakeSys, vpd80, vpd89, write_attr


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
    write_attr(m.sysfs / "devices" / ahci / "ata1" / "ata_port" / "ata1" / "port_no", "1")
    sda1 = m.partition(sda, "sda1", 1, size=SATA_SIZE - (1 << 20), devnum="8:1")
    dm = m.virtual("dm-0", "253:0", size=100 * GIB)
    write_attr(dm / "dm" / "name", "vg0-root")
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
    write_attr(m.sysfs / "devices" / xhci / "serial", "4C530001234567")
    # An empty card reader slot: size 0.
    m.disk(f"{pci}/0000:00:14.0/usb1/1-3/1-3:1.0/host7/target7:0:0/7:0:0:0", "sdc", size=0,
           devnum="8:32", removable=True, device_attrs={"vendor": "Generic-", "type": "0"})
    m.virtual("loop0", "7:0", size=GIB)
    m.virtual("zram0", "252:0", size=4 * GIB)
    (tmp_path / "dev").mkdir()
    return m


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
    write_attr(dm / "dm" / "name", "vg0-root")
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
