"""The erase action's pure parts: which disks, which mode, hdparm's security section, wipefs's
listing, the samples and their verdict; and the action fields."""

from __future__ import annotations

import random

import pytest

from pyinit import erase
from pyinit.action import parse_action
from pyinit.disks.hints import parse_hints
from pyinit.disks.inventory import Disk
from pyinit.erase import EraseError
from pyinit.errors import ConfigError, DiskError

GIB = 1 << 30

SDA = Disk("sda", 480 * GIB, model="SSD", serial="S1", transport="sata")
NVME = Disk("nvme0n1", 960 * GIB, model="NVMe", serial="N1", transport="nvme")
STICK = Disk("sdb", 16 * GIB, model="Stick", removable=True, transport="usb")
ISO = Disk("sr0", 1 * GIB, boot_medium="an iso9660 file system is mounted from it",
           read_only=True)


def test_every_disk_leaves_out_removable_media_and_the_boot_medium_with_a_line() -> None:
    p = erase.plan([STICK, SDA, NVME, ISO])
    assert [d.name for d in p.disks] == ["nvme0n1", "sda"]
    assert p.how == "every disk"
    assert p.skipped == ("sdb (16 GiB, Stick): removable (usb) (allowRemovable)",
                         "sr0 (1 GiB): boot medium: an iso9660 file system is mounted from it "
                         "(allowBootMedium)")


def test_allowed_removable_media_is_erased_too() -> None:
    p = erase.plan([STICK, SDA], allow_removable=True)
    assert [d.name for d in p.disks] == ["sda", "sdb"]


def test_nothing_to_erase_says_what_was_left_out() -> None:
    with pytest.raises(EraseError, match=r"^erase: no disk to erase: left out sdb \(16 GiB"):
        erase.plan([STICK])


def test_a_named_removable_disk_is_refused_unless_allowed() -> None:
    with pytest.raises(EraseError, match=r"refused, nothing erased: sdb removable \(usb\)"):
        erase.plan([STICK, SDA], devices=["/dev/sdb"])
    assert [d.name for d in erase.plan([STICK], devices=["/dev/sdb"],
                                       allow_removable=True).disks] == ["sdb"]


def test_a_disk_in_use_refuses_the_whole_erase() -> None:
    held = Disk("sdc", 100 * GIB, holders=("md127",))
    mounted = Disk("sdd", 100 * GIB, mounted=("/dev/sdd1 on /mnt",))
    with pytest.raises(EraseError) as info:
        erase.plan([SDA, held, mounted])
    assert str(info.value) == (
        "erase: refused, nothing erased: sdc in use: held by md127 (LVM/MD/device-mapper): "
        "stop it first; sdd in use: /dev/sdd1 on /mnt: unmount it first")


def test_hints_take_every_matching_disk() -> None:
    other = Disk("sdc", 480 * GIB, model="SSD", serial="S2", transport="sata")
    p = erase.plan([SDA, other, NVME], hints=parse_hints({"model": "SSD"}))
    assert [d.name for d in p.disks] == ["sda", "sdc"]
    with pytest.raises(EraseError, match="no disk matches rootDeviceHints"):
        erase.plan([SDA], hints=parse_hints({"serial": "nope"}))


def test_an_unknown_named_device_names_the_disks() -> None:
    with pytest.raises(DiskError, match=r"^disk /dev/sdz: no such disk \(have: sda \(480 GiB"):
        erase.plan([SDA], devices=["/dev/sdz"])


HDPARM_FROZEN = """
/dev/sda:

ATA device, with non-removable media
\tModel Number:       Samsung SSD 860 EVO 500GB
Security:
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\t\tfrozen
\tnot\texpired: security count
\t\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 8min for ENHANCED SECURITY ERASE UNIT.
Logical Unit WWN Device Identifier: 5002538e4000a1b2
"""


def test_hdparm_security_section() -> None:
    sec = erase.parse_ata_security(HDPARM_FROZEN)
    assert sec == erase.AtaSecurity(supported=True, enabled=False, locked=False, frozen=True,
                                    enhanced=True, minutes=8)
    thawed = erase.parse_ata_security(HDPARM_FROZEN.replace("\t\tfrozen", "\tnot\tfrozen"))
    assert thawed is not None and erase.ata_refusal(thawed) is None
    assert erase.parse_ata_security("/dev/sda:\n\nATA device\n") is None


def test_ata_refusals_are_one_clear_line() -> None:
    sec = erase.parse_ata_security(HDPARM_FROZEN)
    with pytest.raises(DiskError, match=r"^disk /dev/sda: eraseMode ata: the drive is frozen "
                                        r"\(the firmware froze ATA security at boot"):
        erase.choose_mode("ata", SDA, erase.Caps(ata=sec))
    with pytest.raises(DiskError, match="has no ATA security feature set"):
        erase.choose_mode("ata", SDA, erase.Caps(ata=None))


def test_modes_refuse_what_the_disk_cannot_do() -> None:
    with pytest.raises(DiskError, match=r"^disk /dev/sda: eraseMode nvme: not an NVMe namespace$"):
        erase.choose_mode("nvme", SDA, erase.Caps())
    with pytest.raises(DiskError, match=r"eraseMode discard: the device does not support "
                                        r"discard \(queue/discard_max_bytes is 0\)"):
        erase.choose_mode("discard", SDA, erase.Caps(discard=False))
    assert erase.choose_mode("zero", SDA, erase.Caps()) == ("zero", None)
    assert erase.choose_mode("metadata", NVME, erase.Caps(nvme=True)) == ("metadata", None)


def test_auto_picks_the_strongest_the_disk_can_do() -> None:
    frozen = erase.parse_ata_security(HDPARM_FROZEN)
    assert erase.choose_mode("auto", NVME, erase.Caps(nvme=True, discard=True)) == ("nvme", None)
    method, note = erase.choose_mode("auto", SDA, erase.Caps(discard=True, ata=frozen))
    assert method == "discard"
    assert note is not None and note.startswith("sda: ATA Security Erase passed over: the "
                                                "drive is frozen")
    assert erase.choose_mode("auto", Disk("vda", GIB), erase.Caps()) == ("zero", None)


def test_samples_cover_both_ends_and_stay_inside() -> None:
    size = 64 << 20
    offs = erase.sample_offsets(size, 64, rng=random.Random(1))
    assert offs[0] == 0 and offs[-1] == size - 4096
    assert all(o % 4096 == 0 and 0 <= o <= size - 4096 for o in offs)
    assert 60 <= len(offs) <= 66 and offs == sorted(set(offs))
    assert erase.sample_offsets(8192, 64) == [0, 4096]
    assert erase.sample_offsets(100) == []


def test_the_verdict_counts_zero_changed_and_old_blocks() -> None:
    old, zero, noise = b"\x5a" * 4096, bytes(4096), b"\x13" * 4096
    v = erase.judge([0, 4096, 8192], [old, old, old], [zero, noise, old])
    assert (v.sampled, v.zero, v.changed, v.unchanged) == (3, 1, 1, [8192])
    assert not v.ok(need_zero=False) and not v.ok(need_zero=True)
    assert v.describe() == ("3 sampled 4 KiB blocks read back: 1 zero, 1 not the old data, "
                            "1 still the old data")
    crypto = erase.judge([0, 4096], [old, zero], [noise, zero])
    assert crypto.ok(need_zero=False) and not crypto.ok(need_zero=True)
    assert erase.judge([0], [zero], [zero]).ok(need_zero=True)
    assert not erase.judge([], [], []).ok(need_zero=False)  # nothing read proves nothing


def test_wipefs_listing() -> None:
    text = "gpt 0x200\nPMBR 0x1fe\nlinux_raid_member 0x3fffe000\nbad line\n"
    assert erase.parse_wipefs(text, "/dev/vdb") == [
        erase.Signature("/dev/vdb", "gpt", 0x200), erase.Signature("/dev/vdb", "PMBR", 0x1fe),
        erase.Signature("/dev/vdb", "linux_raid_member", 0x3fffe000)]


def test_erase_action_fields() -> None:
    act = parse_action({"action": "erase", "eraseMode": "zero",
                        "eraseDevices": ["/dev/vdb", "/dev/disk/by-id/nvme-x"]})
    assert (act.erase_mode, act.erase_devices, act.finish) == (
        "zero", ("/dev/vdb", "/dev/disk/by-id/nvme-x"), "poweroff")
    assert act.summary() == "erase (zero) /dev/vdb, /dev/disk/by-id/nvme-x"
    default = parse_action({"action": "erase", "finish": "reboot"})
    assert (default.erase_mode, default.erase_devices, default.finish) == (
        "metadata", (), "reboot")
    assert default.summary() == "erase (metadata) every disk"
    hinted = parse_action({"action": "erase", "rootDeviceHints": {"rotational": True}})
    assert hinted.root_device_hints is not None


@pytest.mark.parametrize(("body", "field", "why"), [
    ({"eraseMode": "shred"}, "eraseMode", "'shred' is not one of metadata, discard, nvme, ata, "
                                          "zero, auto"),
    ({"eraseDevices": ["sda"]}, "eraseDevices[0]", "not a device path under /dev: 'sda'"),
    ({"eraseDevices": [3]}, "eraseDevices[0]", "must be a string, got 3"),
    ({"eraseDevices": ["/dev/sda"], "rootDeviceHints": {"size": 10}}, "rootDeviceHints",
     "give eraseDevices or rootDeviceHints, not both"),
    ({"sourceImage": "http://x/img"}, "sourceImage", "not a field of the erase action"),
    ({"destinationDevice": "/dev/sda"}, "destinationDevice", "not a field of the erase action"),
    ({"rootDeviceHints": {}}, "rootDeviceHints", "is empty: give at least one hint, or leave "
                                                 "it out to erase every disk"),
])
def test_bad_erase_actions(body: dict[str, object], field: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_action({"action": "erase", **body})
    assert (info.value.field, info.value.reason) == (field, why)


def test_inspect_action() -> None:
    act = parse_action({"action": "inspect"})
    assert (act.action, act.finish) == ("inspect", "poweroff")
    assert act.summary() == "inspect (hardware inventory, then poweroff)"
    with pytest.raises(ConfigError, match="eraseMode"):
        parse_action({"action": "inspect", "eraseMode": "zero"})
    with pytest.raises(ConfigError) as info:
        parse_action({"action": "nuke"})
    assert info.value.reason == ("unknown action 'nuke' (writeImage, readImage, erase, "
                                 "inspect)")
