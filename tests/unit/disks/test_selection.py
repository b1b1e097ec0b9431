"""pyinit.disks.selection: the action's disk chosen from the fake machine's inventory (hints,
the default rule, stable names), and the one line that says why none fits."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pyinit.disks import selection
from pyinit.disks.hints import parse_hints
from pyinit.disks.inventory import Disk
from pyinit.disks.selection import AmbiguousDiskError, NoDiskError, resolve_device, select_disk
from pyinit.errors import DiskError

from .fakes import GIB, TIB, FakeSys, inv

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
    got = selection.choose(inv(machine), device=device,
                           hints=parse_hints(hints) if hints else None,
                           **kw)  # type: ignore[arg-type]
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
        selection.choose(inv(machine), device=device, hints=parse_hints(hints) if hints else None)
    assert str(err.value).startswith(message), str(err.value)
