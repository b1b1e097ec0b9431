from __future__ import annotations

from pathlib import Path

from pyinit import coldplug, kmod

ALIASES = """# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias scsi:t-0x00* sd_mod
alias scsi:t-0x0e* sd_mod
alias fs-ext4 ext4
alias ext3 ext4
alias crypto-crc32c crc32c_generic
alias devname:loop-control loop
alias char-major-10-237 loop
garbage line
"""


def table() -> kmod.AliasTable:
    return kmod.parse_modules_alias(ALIASES)


def test_parse_and_classify() -> None:
    t = table()
    assert len(t.entries) == 12
    assert t.device_drivers() == {"virtio_pci", "virtio_net", "virtio_blk", "e1000", "ahci",
                                  "sd_mod"}
    assert {"ext4", "crc32c_generic", "loop"} <= t.modules() - t.device_drivers()


def test_match_by_bus_in_first_match_order() -> None:
    t = table()
    seen = ["virtio:d00000002v00001AF4", "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
            "virtio:d00000001v00001AF4", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
            "scsi:t-0x00", "acpi:PNP0A03:", "fs-ext4"]
    assert kmod.match_aliases(seen, t) == ["virtio_blk", "virtio_pci", "virtio_net", "ahci",
                                          "sd_mod"]
    assert kmod.match_aliases(["pci:v0000ABCDd00000001sv0sd0bc02sc00i00"], t) == []


def fake_sysfs(root: Path, aliases: dict[str, str]) -> Path:
    for rel, alias in aliases.items():
        d = root / "devices" / rel
        d.mkdir(parents=True)
        (d / "modalias").write_text(alias + "\n")
    return root


def test_coldplug_rescans_until_nothing_new(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {
        "pci0000:00/0000:00:03.0": "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"})
    calls: list[list[str]] = []

    def load(names: list[str]) -> list[str]:
        calls.append(names)
        if names == ["virtio_pci"]:  # the bus driver's probe creates its children's devices
            fake_sysfs(tmp_path, {"pci0000:00/0000:00:03.0/virtio0": "virtio:d00000001v00001AF4"})
        return names

    plugger = coldplug.Plugger(table(), load=load)
    assert coldplug.coldplug(plugger, sysfs=sysfs) == ["virtio_pci", "virtio_net"]
    assert calls == [["virtio_pci"], ["virtio_net"]]
    # Hotplug of an already-handled alias loads nothing again.
    assert plugger.plug(["virtio:d00000001v00001AF4"]) == []


def test_a_failing_driver_does_not_stop_the_others(tmp_path: Path) -> None:
    def load(names: list[str]) -> list[str]:
        if "e1000" in names:
            raise kmod.ModuleLoadError("e1000", "/lib/modules/x/e1000.ko", 8)
        return names

    plugger = coldplug.Plugger(table(), load=load)
    assert plugger.plug(["pci:v00008086d0000100Esv0sd0bc02sc00i00"]) == []
    assert plugger.plug(["scsi:t-0x00"]) == ["sd_mod"]
    assert plugger.failures and "e1000" in plugger.failures[0]


def test_scan_modaliases_reads_sysfs(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {"a": "pci:x", "a/b": "virtio:y", "c": "pci:x"})
    (tmp_path / "devices" / "d").mkdir()
    (tmp_path / "devices" / "d" / "modalias").write_text("\n")
    assert coldplug.scan_modaliases(sysfs) == ["pci:x", "virtio:y"]
