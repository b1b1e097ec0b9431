from __future__ import annotations

from pathlib import Path

import pytest

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


# --- network first, the rest in the background; controllers without a driver -----------------

def pci_device(sysfs: Path, slot: str, vendor: str, device: str, cls: str, alias: str,
               driver: str | None = None, children: dict[str, str] | None = None) -> Path:
    """A PCI function as the kernel lays it out: the real directory under devices/, a link
    under bus/pci/devices, its driver link when bound, child devices below it."""
    real = sysfs / "devices/pci0000:00" / slot
    real.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device), ("class", cls),
                        ("modalias", alias)):
        (real / name).write_text(value + "\n")
    if driver:
        (sysfs / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        (real / "driver").symlink_to(sysfs / "bus/pci/drivers" / driver)
    for rel, child_alias in (children or {}).items():
        (real / rel).mkdir(parents=True)
        (real / rel / "modalias").write_text(child_alias + "\n")
    (sysfs / "bus/pci/devices").mkdir(parents=True, exist_ok=True)
    (sysfs / "bus/pci/devices" / slot).symlink_to(real)
    return real


VIRTIO_NET = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
AHCI = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
BCM57416 = "pci:v000014E4d000016D8sv00001028sd00001FEBbc02sc00i00"
BCM57810 = "pci:v000014E4d0000168Esv0000103Csd00001798bc02sc00i00"


def lab(tmp_path: Path) -> Path:
    sysfs = tmp_path / "sys"
    pci_device(sysfs, "0000:00:03.0", "0x1af4", "0x1000", "0x020000", VIRTIO_NET,
               children={"virtio0": "virtio:d00000001v00001AF4"})
    pci_device(sysfs, "0000:00:1f.2", "0x8086", "0x2922", "0x010601", AHCI, driver="ahci")
    pci_device(sysfs, "0000:3b:00.0", "0x14e4", "0x16d8", "0x020000", BCM57416)
    pci_device(sysfs, "0000:00:02.0", "0x1234", "0x1111", "0x030000", "pci:v00001234d00001111")
    return sysfs


def test_network_modaliases_are_the_nics_and_their_children(tmp_path: Path) -> None:
    sysfs = lab(tmp_path)
    assert coldplug.network_modaliases(sysfs) == sorted(
        [VIRTIO_NET, "virtio:d00000001v00001AF4", BCM57416])
    devices = coldplug.pci_devices(sysfs)
    assert [(d.slot, d.kind, d.driver) for d in devices] == [
        ("0000:00:03.0", "network controller", None),
        ("0000:00:1f.2", "storage controller", "ahci"),
        ("0000:3b:00.0", "network controller", None)]   # the VGA device is neither
    assert coldplug.coldplug(coldplug.Plugger(table(), load=lambda n: n), sysfs=sysfs,
                             scan=coldplug.network_modaliases) == ["virtio_pci", "virtio_net"]


def test_background_loads_the_rest_then_says_done(tmp_path: Path) -> None:
    sysfs = lab(tmp_path)
    loaded: list[list[str]] = []
    plugger = coldplug.Plugger(table(), load=lambda n: loaded.append(n) or n)
    plugger.plug(coldplug.network_modaliases(sysfs))
    after: list[Path] = []
    bg = coldplug.Background(plugger, sysfs=sysfs, then=lambda _p, s: after.append(s))
    bg.start()
    assert bg.wait(5.0)
    assert bg.loaded == ["ahci"] and bg.finished_at is not None
    assert loaded == [["virtio_pci", "virtio_net"], ["ahci"]]
    bg.thread.join(5.0)
    assert after == [sysfs]  # then the uevent listener (here: a stand-in) takes over


FW_LOG = [
    "6,1234,5000000,-;bnx2x 0000:3b:00.1: Direct firmware load for "
    "bnx2x/bnx2x-e2-7.13.21.0.fw failed with error -2",
    "3,1235,5000001,-;bnx2x 0000:3b:00.1: Direct firmware load for "
    "bnx2x/bnx2x-e2-7.13.21.0.fw failed with error -2",
    "6,1236,5000002,-;tg3 0000:04:00.0 eth0: Tigon3 [partno(BCM95720)]",
]


@pytest.mark.parametrize(("pci_class", "kind"), [
    (0x020000, "network controller"), (0x028000, "network controller"),
    (0x010802, "storage controller"), (0x010700, "storage controller"),
    (0x0C0400, "storage controller"),   # Fibre Channel HBA
    (0x0C0330, None), (0x030000, None), (0x060400, None)])
def test_kind_by_class(pci_class: int, kind: str | None) -> None:
    assert coldplug.PciDevice("0000:00:01.0", 1, 2, pci_class, "pci:x", None).kind == kind


def test_firmware_failures_by_slot() -> None:
    assert coldplug.firmware_failures(FW_LOG) == {
        "0000:3b:00.1": ["bnx2x/bnx2x-e2-7.13.21.0.fw (error -2)"]}


def test_no_driver_lines(tmp_path: Path) -> None:
    staged = kmod.parse_modules_alias(ALIASES + "alias pci:v000014E4d0000168Esv*sd*bc*sc*i* "
                                                "bnx2x\n")
    kernel = kmod.parse_modules_alias("alias pci:v000014E4d000016D8sv*sd*bc*sc*i* bnxt_en\n")
    devices = [
        coldplug.PciDevice("0000:3b:00.0", 0x14E4, 0x16D8, 0x020000, BCM57416, None),
        coldplug.PciDevice("0000:3b:00.1", 0x14E4, 0x168E, 0x020000, BCM57810, None),
        coldplug.PciDevice("0000:5e:00.0", 0x1D6A, 0x0001, 0x010802,
                           "pci:v00001D6Ad00000001sv0sd0bc01sc08i03", None),
        coldplug.PciDevice("0000:00:1f.2", 0x8086, 0x2922, 0x010601, AHCI, "ahci"),
    ]
    lines = coldplug.no_driver_lines(devices, staged=staged, kernel=kernel, loaded=["bnx2x"],
                                     firmware=coldplug.firmware_failures(FW_LOG))
    assert [line for line, _ in lines] == [
        "modules: no driver for 0000:3b:00.0 [14e4:16d8] (network controller): the kernel has "
        "bnxt_en, not in this initramfs (build it with --drivers broad)",
        "modules: no driver for 0000:3b:00.1 [14e4:168e] (network controller): bnx2x is here "
        "but did not bind: firmware bnx2x/bnx2x-e2-7.13.21.0.fw (error -2) failed to load",
        "modules: no driver for 0000:5e:00.0 [1d6a:0001] (storage controller): no driver for "
        "it in this initramfs nor in the kernel"]
    fields = lines[1][1]
    assert fields["matched"] == ["bnx2x"] and fields["class"] == "020000"
    assert lines[0][1]["kernel_has"] == ["bnxt_en"]
    # without the kernel's table (an old initramfs) nothing is claimed about the kernel
    assert coldplug.no_driver_lines(devices[:1], staged=staged)[0][0].endswith(
        "no driver for it in this initramfs")


def test_wait_bound_rereads_until_bound(tmp_path: Path) -> None:
    sysfs = lab(tmp_path)
    dev = next(d for d in coldplug.pci_devices(sysfs) if d.slot == "0000:3b:00.0")
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
        if now[0] > 0.2:  # the async probe finishes
            real = sysfs / "devices/pci0000:00/0000:3b:00.0"
            if not (real / "driver").exists():
                (sysfs / "bus/pci/drivers/bnxt_en").mkdir(parents=True)
                (real / "driver").symlink_to(sysfs / "bus/pci/drivers/bnxt_en")

    got = coldplug.wait_bound([dev], sysfs, 2.0, clock=lambda: now[0], sleep=sleep)
    assert got[0].driver == "bnxt_en" and now[0] < 1.0
    assert coldplug.wait_bound([], sysfs, 2.0) == []


def test_kernel_log_of_a_missing_device_is_empty(tmp_path: Path) -> None:
    assert coldplug.read_kernel_log(tmp_path / "no-kmsg") == []


def test_a_controller_added_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The uevent listener's ``add``: a late NIC gets its driver; a late storage controller
    nothing matches gets the one line and event; other devices and other actions nothing."""
    sysfs = tmp_path / "sys"
    late_nic = pci_device(sysfs, "0000:00:07.0", "0x8086", "0x100e", "0x020000",
                          "pci:v00008086d0000100Esv0sd0bc02sc00i00")
    late_hba = pci_device(sysfs, "0000:00:08.0", "0x9005", "0x028f", "0x010700",
                          "pci:v00009005d0000028Fsv0000103Csd00000600bc01sc07i00")
    events: list[tuple[str, str, dict[str, object]]] = []
    monkeypatch.setattr(coldplug, "event",
                        lambda step, status, **f: events.append((step, status, f)))
    plugger = coldplug.Plugger(table(), load=lambda n: n)
    assert coldplug.on_add(plugger, "pci:v00008086d0000100Esv0sd0bc02sc00i00", "pci",
                           late_nic) == ["e1000"]
    assert events == []
    assert coldplug.on_add(plugger, "pci:v00009005d0000028Fsv0000103Csd00000600bc01sc07i00",
                           "pci", late_hba) == []
    assert [(s, st, f["slot"], f["hint"]) for s, st, f in events] == [
        ("modules", "no-driver", "0000:00:08.0", "no driver for it in this initramfs")]
    assert coldplug.on_add(plugger, None, "pci", late_hba) == []
    assert coldplug.on_add(plugger, "input:b0011v0001", "input", tmp_path) == []
    assert len(events) == 1
