"""RAID1 roots (issue #17): the ``raid`` field, the choice of member disks and its refusals,
the mdadm argv (recorder), mdadm.conf, and the layout copied onto another member, on image
files (tables built in memory: tests/unit/test_parttable.py's builders)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pyinit import parttable, raid
from pyinit.action import Raid, parse_action
from pyinit.disks.hints import parse_hints
from pyinit.disks.inventory import Disk
from pyinit.errors import ConfigError, DiskError
from pyinit.units import GIB

from ..conftest import Recorder
from .test_parttable import ESP, PART_GUIDS, GptPart, gpt_disk, mbr_sector

MIB = 1 << 20
IMG = "http://s/i.img"
VDA = Disk("vda", 20 * GIB, serial="A", model="QEMU")
VDB = Disk("vdb", 20 * GIB, serial="B", model="QEMU")
VDC = Disk("vdc", 40 * GIB, serial="C", model="QEMU")


def act(**raid_field: object) -> object:
    return parse_action({"action": "writeImage", "sourceImage": IMG, "raid": raid_field})


# --- the field -----------------------------------------------------------------------------

def test_raid_field_with_devices_and_with_hints() -> None:
    a = parse_action({"action": "writeImage", "sourceImage": IMG,
                      "raid": {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}})
    assert a.raid == Raid(1, devices=("/dev/vda", "/dev/vdb"))
    assert a.summary() == f"writeImage {IMG} -> RAID1 /dev/md/root over /dev/vda, /dev/vdb"
    b = parse_action({"action": "writeImage", "sourceImage": IMG,
                      "raid": {"level": 1, "rootDeviceHints": {"model": "QEMU"},
                               "name": "md-root"}})
    assert b.raid is not None and b.raid.hints == parse_hints({"model": "QEMU"})
    assert b.raid.name == "md-root" and b.raid.min_disks == 2


@pytest.mark.parametrize(("data", "field", "reason"), [
    ({"level": 5, "devices": ["/dev/vda", "/dev/vdb"]}, "raid.level",
     "RAID5 is not supported (levels: 1)"),
    ({"level": "1", "devices": ["/dev/vda", "/dev/vdb"]}, "raid.level",
     "must be an integer, got '1'"),
    ({"level": 1, "devices": ["/dev/vda"]}, "raid.devices", "RAID1 needs at least 2 disks, got 1"),
    ({"level": 1, "devices": ["/dev/vda", "/dev/vda"]}, "raid.devices", "names a disk twice"),
    ({"level": 1, "devices": ["/dev/vda", "sdb"]}, "raid.devices[1]",
     "not a device path under /dev: 'sdb'"),
    ({"level": 1}, "raid", "give raid.devices or raid.rootDeviceHints (one of them)"),
    ({"level": 1, "devices": ["/dev/vda", "/dev/vdb"], "spare": 1}, "raid.spare",
     "unknown field"),
    ({"level": 1, "rootDeviceHints": {}}, "raid.rootDeviceHints",
     "is empty: give at least one hint"),
    ({"level": 1, "rootDeviceHints": {"colour": "red"}}, "raid.rootDeviceHints.colour", None),
    ({"level": 1, "devices": ["/dev/vda", "/dev/vdb"], "name": "a/b"}, "raid.name", None),
])
def test_raid_field_refusals(data: dict[str, object], field: str, reason: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        act(**data)
    assert info.value.field == field
    if reason is not None:
        assert info.value.reason == reason


def test_raid_beside_a_disk_or_lvm_or_on_another_action_is_refused() -> None:
    two = {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}
    with pytest.raises(ConfigError, match=r"^destinationDevice: give the disks in raid"):
        parse_action({"action": "writeImage", "sourceImage": IMG, "raid": two,
                      "destinationDevice": "/dev/vda"})
    with pytest.raises(ConfigError, match=r"^raid: a RAID1 root on LVM \(lvmRootName\)"):
        parse_action({"action": "writeImage", "sourceImage": IMG, "raid": two,
                      "lvmRootName": "vg/root"})
    with pytest.raises(ConfigError, match=r"^raid: not a field of the erase action"):
        parse_action({"action": "erase", "raid": two})


# --- which disks ---------------------------------------------------------------------------

def test_plan_keeps_the_order_given_and_hints_take_every_match_in_name_order() -> None:
    got = raid.plan(Raid(1, devices=("/dev/vdb", "/dev/vda")), [VDA, VDB])
    assert got.paths == ("/dev/vdb", "/dev/vda") and got.smallest == 20 * GIB
    got = raid.plan(Raid(1, hints=parse_hints({"model": "QEMU", "size": "<= 30"})),
                    [VDB, VDC, VDA])
    assert got.paths == ("/dev/vda", "/dev/vdb")
    assert got.how == "raid.rootDeviceHints {size: <= 30, model: QEMU}"


def test_plan_refusals_name_the_disks() -> None:
    with pytest.raises(raid.RaidError) as info:
        raid.plan(Raid(1, hints=parse_hints({"serial": "A"})), [VDA, VDB])
    assert str(info.value) == ("raid: RAID1 needs at least 2 disks; raid.rootDeviceHints "
                               "{serial: A} gave 1 (vda (20 GiB, QEMU, serial A)); no disk "
                               "touched")
    with pytest.raises(raid.RaidError) as info:
        raid.plan(Raid(1, devices=("/dev/vda", "/dev/vdc")), [VDA, VDC])
    assert str(info.value) == ("raid: disks of very different sizes: vda 20 GiB and vdc 40 GiB "
                               "(more than 10% apart: the mirror is as large as the smallest, "
                               "the rest of the larger disk would be wasted); no disk touched")
    held = Disk("vdb", 20 * GIB, holders=("md127",))
    stick = Disk("sdb", 20 * GIB, removable=True, transport="usb")
    with pytest.raises(raid.RaidError) as info:
        raid.plan(Raid(1, devices=("/dev/vda", "/dev/vdb", "/dev/sdb")), [VDA, held, stick])
    assert str(info.value) == ("raid: refused, no disk touched: vdb held by md127; "
                               "sdb removable (usb)")
    with pytest.raises(DiskError, match=r"^disk /dev/vdx: no such disk \(have: vda"):
        raid.plan(Raid(1, devices=("/dev/vda", "/dev/vdx")), [VDA, VDB])
    small = raid.plan(Raid(1, devices=("/dev/vda", "/dev/vdb")),
                      [VDA, Disk("vdb", 19 * GIB)])  # 5 % apart: fine
    assert small.smallest == 19 * GIB


def test_mirrored_partition() -> None:
    two = {"level": 1, "devices": ["/dev/vda", "/dev/vdb"]}
    base = {"action": "writeImage", "sourceImage": IMG, "raid": two}
    assert raid.mirrored_partition(parse_action(base)) == "last"
    assert raid.mirrored_partition(parse_action({**base, "growPartition": 3})) == 3
    assert raid.mirrored_partition(parse_action({**base, "rootPartition": 2})) == 2


# --- mdadm ---------------------------------------------------------------------------------

def test_mdadm_argv_and_the_array_line(recorder: Recorder) -> None:
    assert raid.create_argv("/dev/md/root", 1, "/dev/vda3", 2, "root") == [
        "mdadm", "--create", "/dev/md/root", "--run", "--level=1", "--metadata=1.0",
        "--raid-devices=2", "--bitmap=internal", "--name=root", "--homehost=any", "/dev/vda3",
        "missing"]
    assert raid.add_argv("/dev/md/root", ["/dev/vdb3", "/dev/vdc3"]) == [
        "mdadm", "--add", "/dev/md/root", "/dev/vdb3", "/dev/vdc3"]
    text = ("mdadm: some note\nARRAY /dev/md/root metadata=1.0 spares=1 name=any:root "
            "UUID=a:b:c:d\n")
    assert raid.parse_array_line(text) == \
        "ARRAY /dev/md/root metadata=1.0 name=any:root UUID=a:b:c:d"
    with pytest.raises(raid.RaidError, match="printed no ARRAY line"):
        raid.parse_array_line("")


def test_mdadm_conf_keeps_settings_and_replaces_arrays() -> None:
    old = ("HOMEHOST <system>\nMAILADDR root\nARRAY /dev/md0 metadata=1.2 UUID=old\n"
           "   devices=/dev/sda1\n\n")
    new = "ARRAY /dev/md/root metadata=1.0 name=any:root UUID=new"
    text = raid.mdadm_conf(old, new)
    assert text == f"HOMEHOST <system>\nMAILADDR root\n\n{raid.MARK}\n{new}\n"
    assert raid.mdadm_conf(text, new) == text  # idempotent
    assert raid.mdadm_conf("", new) == f"{raid.MARK}\n{new}\n"


def test_initramfs_generator_of_the_target(tmp_path: Path) -> None:
    assert raid.initramfs_argv(tmp_path) is None
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/dracut").touch()
    assert raid.initramfs_argv(tmp_path) == ["dracut", "-f", "--regenerate-all"]
    (tmp_path / "usr/sbin").mkdir()
    (tmp_path / "usr/sbin/update-initramfs").touch()
    assert raid.initramfs_argv(tmp_path) == ["update-initramfs", "-u", "-k", "all"]
    with pytest.raises(raid.RaidError, match="the image has no mdadm"):
        raid.require_mdadm(tmp_path)
    (tmp_path / "sbin").symlink_to("usr/sbin")
    (tmp_path / "usr/sbin/mdadm").touch()
    raid.require_mdadm(tmp_path)


def test_configure_target_writes_the_conf_and_regenerates(tmp_path: Path,
                                                         recorder: Recorder) -> None:
    (tmp_path / "etc/mdadm").mkdir(parents=True)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/update-initramfs").touch()
    array = raid.Array("/dev/md/root", "/dev/md127", ("/dev/vda3", "/dev/vdb3"),
                       "ARRAY /dev/md/root metadata=1.0 UUID=x", GIB)
    done = raid.configure_target(tmp_path, array)
    assert done == ("/etc/mdadm/mdadm.conf written; initramfs regenerated "
                    "(update-initramfs -u -k all)")
    assert (tmp_path / "etc/mdadm/mdadm.conf").read_text() == \
        f"{raid.MARK}\nARRAY /dev/md/root metadata=1.0 UUID=x\n"
    assert recorder.calls == [["chroot", str(tmp_path), "update-initramfs", "-u", "-k", "all"]]


# --- the layout on a second member ----------------------------------------------------------

def _src(tmp_path: Path) -> Path:
    """A 16 MiB GPT disk: BIOS boot 1, ESP 2 (with bytes in it), root 3 ending at 12 MiB."""
    disk = gpt_disk(32768, [GptPart(2048, 4095, uuid=PART_GUIDS[0]),
                            GptPart(4096, 8191, type=ESP, uuid=PART_GUIDS[1]),
                            GptPart(8192, 24575, uuid=PART_GUIDS[2])])
    disk[:440] = bytes(range(256)) + bytes(184)  # "boot code"
    disk[4096 * 512:4096 * 512 + 5] = b"ESP!!"
    path = tmp_path / "a.img"
    path.write_bytes(bytes(disk))
    return path


def test_grow_to_smallest_then_clone_onto_a_larger_member(tmp_path: Path) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "b.img"
    dst.write_bytes(b"\xff" * (18 * MIB))  # larger, and full of old junk
    planned, before, how = raid.grow_to_smallest(str(src), "last", 16 * MIB,
                                                 sleep=lambda s: None)
    assert how == "not a block device" and before.kind == "gpt"
    assert planned.number == 3 and planned.old_end == 24576 * 512
    assert planned.new_end == (32768 - 33) * 512  # the smallest member's last usable LBA + 1
    raid.clone(str(src), str(dst), planned, sleep=lambda s: None, rng=random.Random(7))
    a = parttable.parse(src.read_bytes(), disk_size=16 * MIB)
    b = parttable.parse(dst.read_bytes(), disk_size=18 * MIB)
    assert a is not None and b is not None and not a.problems and not b.problems
    assert [(p.number, p.start, p.size, p.type) for p in a.partitions] == \
        [(p.number, p.start, p.size, p.type) for p in b.partitions]
    assert b.disk_id != a.disk_id
    assert {p.uuid for p in a.partitions}.isdisjoint(p.uuid for p in b.partitions)
    assert b.backup_header_offset == 18 * MIB - 512  # at its own end
    head_a, head_b = src.read_bytes(), dst.read_bytes()
    assert head_a[:440] == head_b[:440]  # the boot code
    assert head_a[1 * MIB:planned.start] == head_b[1 * MIB:planned.start]  # BIOS boot, ESP
    # the backup at dst's end describes the same partitions (the kernel falls back to it)
    broken = bytearray(head_b)
    broken[512 + 60] ^= 0xFF  # the primary header fails its CRC
    backup = parttable.parse(bytes(broken), disk_size=18 * MIB)
    assert backup is not None and backup.header_lba == 18 * MIB // 512 - 1
    assert [p.uuid for p in backup.partitions] == [p.uuid for p in b.partitions]


def test_clone_onto_a_member_of_the_same_size_writes_its_backup(tmp_path: Path) -> None:
    src = _src(tmp_path)
    dst = tmp_path / "b.img"
    dst.write_bytes(bytes(16 * MIB))
    planned, _, _ = raid.grow_to_smallest(str(src), "last", 16 * MIB, sleep=lambda s: None)
    raid.clone(str(src), str(dst), planned, sleep=lambda s: None)
    b = parttable.parse(dst.read_bytes(), disk_size=16 * MIB)
    assert b is not None and not b.problems and b.backup_header_offset == 16 * MIB - 512
    assert dst.read_bytes()[-512:][:8] == parttable.GPT_SIGNATURE


def test_clone_mbr_gets_a_new_signature(tmp_path: Path) -> None:
    disk = bytearray(16 * MIB)
    disk[:512] = mbr_sector([(0x80, 0x83, 2048, 8192)], boot_code=b"\xeb\x63GRUB")
    src = tmp_path / "a.img"
    src.write_bytes(bytes(disk))
    dst = tmp_path / "b.img"
    dst.write_bytes(bytes(17 * MIB))
    planned, _, _ = raid.grow_to_smallest(str(src), 1, 16 * MIB, sleep=lambda s: None)
    assert planned.kind == "mbr" and planned.new_end == 16 * MIB
    raid.clone(str(src), str(dst), planned, sleep=lambda s: None)
    a, b = parttable.parse(src.read_bytes()), parttable.parse(dst.read_bytes())
    assert a is not None and b is not None
    assert [(p.start, p.size) for p in b.partitions] == [(1 * MIB, 15 * MIB)]
    assert a.disk_id != b.disk_id and dst.read_bytes()[:6] == b"\xeb\x63GRUB"


def test_grow_to_smallest_refuses_a_root_that_is_not_last(tmp_path: Path) -> None:
    src = _src(tmp_path)
    with pytest.raises(ConfigError, match=r"^growPartition: 2: partition 3 lies after it"):
        raid.grow_to_smallest(str(src), 2, 16 * MIB, sleep=lambda s: None)
