"""pyinit.efiboot: efibootmgr's output, the ESP and its loader, which entries go, the order —
pure — and :func:`efiboot.make_entry` against a disk image file and a fake NVRAM that answers
efibootmgr's command lines as efibootmgr 17 does (the listings are copied from a real run
under OVMF: tests/vm/test_uefi_boot_entry.py boots the real thing). No real command runs: the
recorder answers, and the test asserts the exact argv lists."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pyinit import efiboot, init, log, proc
from pyinit.action import parse_action
from pyinit.efiboot import BootEntryError, BootVars, Entry
from pyinit.errors import CommandError, ConfigError
from pyinit.parttable import parse
from tests.conftest import Recorder

from .test_parttable import ESP, LINUX, GptPart, gpt_disk, mbr_sector, three_part_gpt

# efibootmgr 17 (Debian bookworm) in pyinit's initramfs under OVMF 2022.11, a real run
LISTING = (
    "Timeout: 0 seconds\n"
    "BootOrder: 0002,0000\n"
    "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/"
    "FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n"
    "Boot0002* pyinit vda\tHD(2,GPT,7703627d-e08e-4426-af9d-b333252f2950,0x1000,0x20000)/"
    "File(\\EFI\\BOOT\\BOOTX64.EFI)\n")
SHORT = "Timeout: 0 seconds\nBootOrder: 0001,0000\nBoot0000* UiApp\nBoot0001* pyinit vda\n"
PXE_PATH = ("PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/"
            "IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)N.....YM....R,Y.")


# --- parsing ---------------------------------------------------------------------------------

def test_parse_the_verbose_listing() -> None:
    found = efiboot.parse_efibootmgr(LISTING)
    assert found.order == ("0002", "0000") and found.current is None
    assert [(e.name, e.label, e.active, e.ours) for e in found.entries] == [
        ("Boot0000", "UiApp", True, False), ("Boot0002", "pyinit vda", True, True)]
    assert found.entries[1].path == ("HD(2,GPT,7703627d-e08e-4426-af9d-b333252f2950,0x1000,"
                                     "0x20000)/File(\\EFI\\BOOT\\BOOTX64.EFI)")
    assert not any(e.network for e in found.entries)


def test_parse_the_short_listing_inactive_entries_and_boot_current() -> None:
    text = ("BootCurrent: 0003\nBootNext: 0001\n" + SHORT
            + "Boot0003* UEFI PXEv4 (MAC:525400123456)\t" + PXE_PATH + "\n"
            + "Boot000A  Disabled thing \n"
            + "efibootmgr: ** Warning ** : Boot0001 has same label pyinit vda\n")
    found = efiboot.parse_efibootmgr(text)
    assert found.current == "0003" and found.order == ("0001", "0000")
    assert [(e.number, e.label, e.active, e.path != "") for e in found.entries] == [
        ("0000", "UiApp", True, False), ("0001", "pyinit vda", True, False),
        ("0003", "UEFI PXEv4 (MAC:525400123456)", True, True),
        ("000A", "Disabled thing", False, False)]
    assert found.get("0003") is not None and found.get("0003").network  # type: ignore[union-attr]
    assert found.get(None) is None and found.get("0009") is None


@pytest.mark.parametrize(("path", "network"), [
    (PXE_PATH, True),
    ("PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv6([::]:<->[::]:,0,0)", True),
    ("PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP)/Uri()", True),
    ("HD(1,GPT,aacb3bf8-968a-48e6-b658-e3f16a2bbdee,0x800,0x800)/File(\\x.efi)", False),
    ("PciRoot(0x0)/Pci(0x4,0x0)", False),
    ("", False),
])
def test_network_entries_are_known_by_their_device_path(path: str, network: bool) -> None:
    assert Entry("0001", "x", path=path).network is network


def test_no_boot_order_and_nothing_at_all() -> None:
    assert efiboot.parse_efibootmgr("No BootOrder is set; firmware will attempt recovery\n"
                                    "Boot0000* UiApp\n").order == ()
    assert efiboot.parse_efibootmgr("") == BootVars()


def test_a_boot_order_that_does_not_parse_is_one_line() -> None:
    with pytest.raises(BootEntryError, match=r"^efibootmgr printed a BootOrder that does not "
                                             r"parse: '0001,zz'$"):
        efiboot.parse_efibootmgr("BootOrder: 0001,zz\n")


# --- the ESP and its loader ----------------------------------------------------------------

def test_find_esp_on_gpt_and_mbr() -> None:
    esp = efiboot.find_esp(parse(bytes(three_part_gpt())))
    assert esp is not None and esp.number == 1 and esp.type == ESP
    mbr = mbr_sector([(0, 0x83, 2048, 4096), (0, 0xEF, 8192, 2048)])
    esp = efiboot.find_esp(parse(bytes(mbr)))
    assert esp is not None and esp.number == 2
    assert efiboot.find_esp(parse(bytes(mbr_sector([(0x80, 0x83, 2048, 4096)])))) is None
    assert efiboot.find_esp(None) is None


@pytest.mark.parametrize(("files", "arch", "loader"), [
    # the distribution's shim beats its GRUB and the removable path (Debian's ESP)
    (["EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi", "EFI/debian/shimx64.efi",
      "EFI/debian/mmx64.efi", "EFI/debian/grub.cfg"], "x64", "\\EFI\\debian\\shimx64.efi"),
    (["EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi"], "x64", "\\EFI\\debian\\grubx64.efi"),
    (["EFI/systemd/systemd-bootx64.efi", "EFI/BOOT/BOOTX64.EFI"], "x64",
     "\\EFI\\systemd\\systemd-bootx64.efi"),
    (["EFI/Microsoft/Boot/bootmgfw.efi", "EFI/Boot/bootx64.efi"], "x64",
     "\\EFI\\Microsoft\\Boot\\bootmgfw.efi"),
    # what `pyinit image` writes: the removable-media path only
    (["EFI/BOOT/BOOTX64.EFI"], "x64", "\\EFI\\BOOT\\BOOTX64.EFI"),
    # FAT is case-insensitive; the stored case is kept
    (["efi/boot/bootx64.efi"], "x64", "\\efi\\boot\\bootx64.efi"),
    (["EFI/ubuntu/SHIMX64.EFI", "EFI/debian/shimx64.efi"], "x64", "\\EFI\\debian\\shimx64.efi"),
    (["EFI/BOOT/BOOTAA64.EFI", "EFI/debian/grubaa64.efi", "EFI/BOOT/BOOTX64.EFI"], "aa64",
     "\\EFI\\debian\\grubaa64.efi"),
    (["EFI/BOOT/BOOTX64.EFI"], "aa64", None),
    (["EFI/debian/grub.cfg", "EFI/BOOT/fbx64.efi", "startup.nsh", "EFI/debian/x/grubx64.efi"],
     "x64", None),
    ([], "x64", None),
])
def test_choose_loader(files: list[str], arch: str, loader: str | None) -> None:
    assert efiboot.choose_loader(files, arch) == loader


@pytest.mark.parametrize(("machine", "size", "arch"), [
    ("x86_64", "64", "x64"), ("x86_64", None, "x64"), ("x86_64", "32\n", "ia32"),
    ("aarch64", "64", "aa64"), ("riscv64", None, "riscv64"),
])
def test_efi_arch(machine: str, size: str | None, arch: str) -> None:
    assert efiboot.efi_arch(machine, size) == arch


def test_an_unknown_architecture_is_one_line() -> None:
    with pytest.raises(BootEntryError, match=r"^no UEFI loader names known for the "
                                             r"architecture 's390x'$"):
        efiboot.efi_arch("s390x")


@pytest.mark.parametrize(("url", "label"), [
    ("http://10.0.2.2:8080/images/golden.img.zst", "pyinit golden.img.zst"),
    ("http://srv/images/debian%2012.img.zst?token=x#frag", "pyinit debian 12.img.zst"),
    ("http://srv/images/d\u00e9bian.img", "pyinit d?bian.img"),
    ("http://srv/", "pyinit image"),
    ("http://srv/" + "a" * 100, "pyinit " + "a" * 57),
])
def test_entry_label(url: str, label: str) -> None:
    assert efiboot.entry_label(url) == label
    assert len(label) <= efiboot.LABEL_MAX and label.startswith(efiboot.LABEL_PREFIX)


# --- what goes, in which order ---------------------------------------------------------------

def test_stale_entries_are_pyinits_other_than_the_new_one() -> None:
    found = BootVars(entries=(Entry("0000", "UiApp"), Entry("0001", "pyinit old.img"),
                              Entry("0002", "debian"), Entry("0003", "pyinit"),
                              Entry("0004", "pyinitx"), Entry("0005", "pyinit new.img"),
                              Entry("0006", "PYINIT shouting")))
    assert [e.number for e in efiboot.stale_entries(found, "0005")] == ["0001"]


@pytest.mark.parametrize(("order", "removed", "after", "wanted"), [
    (("0005", "0001", "0000"), ("0001",), None, ("0005", "0000")),
    (("0001", "0000"), (), None, ("0005", "0001", "0000")),
    # PXE first (deploy once): the new entry right after it, the rest in place
    (("0005", "0000", "0003", "0001"), ("0001",), "0003", ("0003", "0005", "0000")),
    (("0005",), (), "0003", ("0003", "0005")),
    ((), (), None, ("0005",)),
])
def test_plan_order(order: tuple[str, ...], removed: tuple[str, ...], after: str | None,
                    wanted: tuple[str, ...]) -> None:
    assert efiboot.plan_order(order, "0005", removed=removed, after=after) == wanted


# --- make_entry against a fake NVRAM -------------------------------------------------------

@dataclass
class Nvram:
    """The firmware's Boot#### variables as efibootmgr 17 shows and changes them: --create takes
    the lowest free number and puts it first, --delete-bootnum drops the entry from BootOrder
    too. ``fail``: an option (``--create``…) that exits 5 as read-only NVRAM makes it."""

    entries: dict[str, tuple[str, str]] = field(default_factory=dict)  # number -> label, path
    order: list[str] = field(default_factory=list)
    current: str | None = None
    fail: str | None = None
    keep_order: tuple[str, ...] | None = None  # a firmware that puts BootOrder back
    why: str = "Read-only file system"  # strerror of the failing write

    _FAILED = {"--create": (5, "Could not prepare Boot variable"),
               "--bootnum": (15, "Could not delete variable"),
               "--bootorder": (7, "Could not set BootOrder")}

    def listing(self) -> str:
        lines = [f"BootCurrent: {self.current}"] if self.current else []
        lines += ["Timeout: 0 seconds", f"BootOrder: {','.join(self.order)}"]
        lines += [f"Boot{n}* {label}\t{path}" for n, (label, path) in sorted(self.entries.items())]
        return "\n".join(lines) + "\n"

    def __call__(self, argv: list[str]) -> proc.Completed:
        opt = argv[1]
        if opt == self.fail:
            rc, what = self._FAILED[opt]
            raise CommandError(argv, rc, f"{what}: {self.why}")
        if opt == "--create":
            a = dict(zip(argv[2::2], argv[3::2], strict=True))
            num = next(f"{i:04X}" for i in range(1 << 16) if f"{i:04X}" not in self.entries)
            self.entries[num] = (a["--label"], f"HD({a['--part']},GPT,ee1)/File({a['--loader']})")
            self.order.insert(0, num)
        elif opt == "--bootnum" and argv[3:4] == ["--delete-bootnum"]:
            del self.entries[argv[2]]
            self.order.remove(argv[2])
        elif opt == "--bootorder":
            self.order = list(self.keep_order or argv[2].split(","))
        return proc.Completed(tuple(argv), 0, self.listing(), "")


MACHINE_NVRAM = {"0000": ("UiApp", "FvVol(7cb8)/FvFile(462c)"),
                 "0001": ("UEFI QEMU HARDDISK QM00001 ", "PciRoot(0x0)/Pci(0x1,0x1)/Ata(0,0,0)"),
                 "0002": ("EFI Internal Shell", "FvVol(7cb8)/FvFile(7c04)")}


@dataclass
class Rig:
    tmp: Path
    recorder: Recorder
    console: io.StringIO
    nvram: Nvram
    disk: Path
    sysfs: Path
    events: list[dict[str, object]]
    files: list[str] = field(default_factory=lambda: ["EFI/BOOT/BOOTX64.EFI"])
    mounted: list[Path] = field(default_factory=list)

    def make(self, *, required: bool = False, **kw: object) -> efiboot.Outcome:
        args: dict[str, object] = {"esp_files": self.esp_files, "efivarfs": self.mounted.append,
                                   **kw}
        return efiboot.make_entry(str(self.disk), label="pyinit golden.img.zst",
                                  required=required, sysfs=self.sysfs, machine="x86_64",
                                  **args)  # type: ignore[arg-type]

    def esp_files(self, disk: str, number: int) -> list[str]:
        assert (disk, number) == (str(self.disk), 1)
        return self.files

    def argv(self) -> list[list[str]]:
        return [c[1:] for c in self.recorder.calls]


@pytest.fixture
def rig(tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    console = io.StringIO()
    monkeypatch.setattr(log, "_console", console)
    log.configure()
    events: list[dict[str, object]] = []
    log.clear_sinks()
    log.add_sink(events.append)
    disk = tmp_path / "vda"
    disk.write_bytes(bytes(three_part_gpt()))
    sysfs = tmp_path / "sys"
    (sysfs / "firmware" / "efi" / "efivars").mkdir(parents=True)
    (sysfs / "firmware" / "efi" / "fw_platform_size").write_text("64\n")
    nvram = Nvram(dict(MACHINE_NVRAM), ["0001", "0000", "0002"])
    recorder.responses["efibootmgr"] = nvram
    try:
        yield Rig(tmp_path, recorder, console, nvram, disk, sysfs, events)
    finally:
        log.clear_sinks()


CREATE = ["--create", "--disk", "DISK", "--part", "1", "--label", "pyinit golden.img.zst",
          "--loader", "\\EFI\\BOOT\\BOOTX64.EFI"]


def _argv(rig: Rig, *calls: list[str]) -> list[list[str]]:
    return [[str(rig.disk) if a == "DISK" else a for a in c] for c in calls]


def test_first_entry_on_a_fresh_machine(rig: Rig) -> None:
    out = rig.make()
    assert rig.argv() == _argv(rig, ["-v"], CREATE, ["-v"])  # no second write: --create ordered
    assert rig.mounted == [rig.sysfs]
    assert out.status == "created" and out.summary == "Boot0003" and out.warnings == ()
    assert rig.nvram.order == ["0003", "0001", "0000", "0002"]
    text = rig.console.getvalue()
    assert "WARNING" not in text
    assert (f"pyinit: bootentry: {rig.disk}1 (partition 1) is the EFI system partition; loader "
            "\\EFI\\BOOT\\BOOTX64.EFI (the removable-media path: no distribution loader)") in text
    assert ("pyinit: bootentry: created Boot0003 'pyinit golden.img.zst': "
            "HD(1,GPT,ee1)/File(\\EFI\\BOOT\\BOOTX64.EFI)") in text
    assert "pyinit: bootentry: BootOrder 0003,0001,0000,0002 (Boot0003 first)" in text
    [ev] = [e for e in rig.events if e["step"] == "bootentry"]
    assert ev["status"] == "created" and ev["number"] == "0003" and ev["removed"] == []
    assert ev["boot_order"] == ["0003", "0001", "0000", "0002"] and ev["partition"] == 1
    assert ev["after"] is None and ev["loader"] == "\\EFI\\BOOT\\BOOTX64.EFI"


def test_a_second_provisioning_removes_the_stale_entry(rig: Rig) -> None:
    rig.nvram.entries.update({"0003": ("pyinit golden.img.zst", "HD(1,GPT,ee1)/File(\\x)"),
                              "0005": ("pyinit older.img", "HD(2,MBR,0x1,0x800,0x800)/File(\\y)")})
    rig.nvram.order = ["0003", "0001", "0000", "0005", "0002"]
    out = rig.make()
    assert rig.argv() == _argv(rig, ["-v"], CREATE, ["-v"],
                               ["--bootnum", "0003", "--delete-bootnum"],
                               ["--bootnum", "0005", "--delete-bootnum"], ["-v"])
    assert out.summary == "Boot0004"
    assert rig.nvram.order == ["0004", "0001", "0000", "0002"]
    assert sorted(rig.nvram.entries) == ["0000", "0001", "0002", "0004"]
    text = rig.console.getvalue()
    assert "pyinit: bootentry: removed Boot0003 'pyinit golden.img.zst' (an earlier pyinit " \
           "entry)" in text
    assert "pyinit: bootentry: removed Boot0005 'pyinit older.img' (an earlier pyinit entry)" \
           in text
    [ev] = [e for e in rig.events if e["step"] == "bootentry"]
    assert ev["removed"] == ["Boot0003 'pyinit golden.img.zst'", "Boot0005 'pyinit older.img'"]


def test_a_machine_that_pxe_boots_first_keeps_doing_so(rig: Rig) -> None:
    rig.nvram.entries["0004"] = ("UEFI PXEv4 (MAC:525400123456)", PXE_PATH)
    rig.nvram.order = ["0004", "0001", "0000", "0002"]
    rig.nvram.current = "0004"
    out = rig.make()
    assert rig.argv() == _argv(rig, ["-v"], CREATE, ["-v"],
                               ["--bootorder", "0004,0003,0001,0000,0002"], ["-v"])
    assert out.summary == "Boot0003" and rig.nvram.order[:2] == ["0004", "0003"]
    assert ("pyinit: bootentry: BootOrder 0004,0003,0001,0000,0002 (Boot0003 after Boot0004 "
            "'UEFI PXEv4 (MAC:525400123456)', the network entry this boot came from)"
            ) in rig.console.getvalue()


def test_a_boot_from_a_disk_entry_puts_the_new_entry_first(rig: Rig) -> None:
    rig.nvram.current = "0001"  # booted from the (old) disk, not the network
    rig.make()
    assert rig.nvram.order == ["0003", "0001", "0000", "0002"]
    assert ["--bootorder"] not in [c[:1] for c in rig.argv()]


def test_the_distributions_loader_is_preferred(rig: Rig) -> None:
    rig.files = ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/fbx64.efi", "EFI/debian/shimx64.efi",
                 "EFI/debian/grubx64.efi"]
    rig.make()
    assert rig.argv()[1][-1] == "\\EFI\\debian\\shimx64.efi"
    assert "loader \\EFI\\debian\\shimx64.efi (the distribution's loader)" in \
        rig.console.getvalue()


def test_legacy_bios_is_one_info_line_and_nothing_run(rig: Rig) -> None:
    (rig.sysfs / "firmware" / "efi" / "efivars").rmdir()
    (rig.sysfs / "firmware" / "efi" / "fw_platform_size").unlink()
    (rig.sysfs / "firmware" / "efi").rmdir()
    out = rig.make()
    assert out.status == "skipped" and out.summary == "none (legacy BIOS)"
    assert rig.recorder.calls == [] and rig.mounted == []
    lines = rig.console.getvalue().splitlines()
    assert lines[0] == ("pyinit: bootentry: the machine booted by legacy BIOS (no "
                        "/sys/firmware/efi): no UEFI boot entry made")
    assert "WARNING" not in rig.console.getvalue()
    assert [(e["status"], e["reason"]) for e in rig.events] == [("skipped", "legacy BIOS")]
    with pytest.raises(BootEntryError, match=r"^the machine booted by legacy BIOS \(no "
                                             r"/sys/firmware/efi\) \(uefiBootEntry: true\)$"):
        rig.make(required=True)


def _warning(rig: Rig) -> str:
    [line] = [s.removeprefix("pyinit: WARNING: ") for s in rig.console.getvalue().splitlines()
              if s.startswith("pyinit: WARNING: ")]
    return line


def test_no_esp_is_one_warning(rig: Rig) -> None:
    per_mib = (1 << 20) // 512
    rig.disk.write_bytes(bytes(gpt_disk(8 * per_mib, [GptPart(per_mib, 4 * per_mib, "root",
                                                              LINUX)])))
    out = rig.make()
    assert (out.status, out.summary) == ("skipped", "none (no ESP)")
    assert rig.recorder.calls == []
    assert _warning(rig) == (f"bootentry: {rig.disk} has no EFI system partition (GPT disk: a "
                             "BIOS-only image?): no UEFI boot entry made")
    rig.disk.write_bytes(bytes(mbr_sector([(0x80, 0x83, 2048, 4096)])) + bytes(4 << 20))
    with pytest.raises(BootEntryError, match=r"has no EFI system partition \(MBR disk: a "
                                             r"BIOS-only image\?\) \(uefiBootEntry: true\)$"):
        rig.make(required=True)
    rig.disk.write_bytes(bytes(1 << 20))
    rig.console.truncate(0)
    rig.console.seek(0)
    rig.make()
    assert _warning(rig) == (f"bootentry: {rig.disk} has no EFI system partition (no partition "
                             "table: a BIOS-only image?): no UEFI boot entry made")


def test_an_esp_without_a_loader_is_one_warning(rig: Rig) -> None:
    rig.files = ["EFI/debian/grub.cfg"]
    out = rig.make()
    assert out.summary == "none (no loader)" and rig.recorder.calls == []
    assert _warning(rig) == (
        f"bootentry: the EFI system partition {rig.disk}1 has no loader (looked for "
        "\\EFI\\<vendor>\\shimx64.efi, grubx64.efi, systemd-bootx64.efi, "
        "\\EFI\\Microsoft\\Boot\\bootmgfw.efi, \\EFI\\BOOT\\BOOTX64.EFI): no UEFI boot entry made")


def test_an_esp_that_cannot_be_mounted_is_one_warning(rig: Rig) -> None:
    from pyinit.errors import MountError

    def unreadable(disk: str, number: int) -> list[str]:
        raise MountError("/run/pyinit/esp", f"mount -t vfat -o ro {disk}1 /run/pyinit/esp: "
                                            "Invalid argument")
    out = rig.make(esp_files=unreadable)
    assert out.summary == "none (ESP unreadable)"
    assert _warning(rig) == (
        f"bootentry: the EFI system partition {rig.disk}1 cannot be read (mount "
        f"/run/pyinit/esp: mount -t vfat -o ro {rig.disk}1 /run/pyinit/esp: Invalid argument): "
        "no UEFI boot entry made")


def test_read_only_nvram_is_one_warning_or_with_true_the_failure(rig: Rig) -> None:
    rig.nvram.fail = "--create"
    out = rig.make()
    assert out.summary == "none (efibootmgr failed)"
    assert rig.argv() == _argv(rig, ["-v"], CREATE)
    assert _warning(rig) == ("bootentry: cannot create the entry (command efibootmgr exited 5: "
                             "Could not prepare Boot variable: Read-only file system): no UEFI "
                             "boot entry made")
    [ev] = [e for e in rig.events if e["step"] == "bootentry"]
    assert ev["status"] == "skipped" and ev["reason"] == "efibootmgr failed"
    with pytest.raises(BootEntryError, match=r"^cannot create the entry \(command efibootmgr "
                                             r"exited 5: Could not prepare Boot variable: "
                                             r"Read-only file system\) \(uefiBootEntry: true\)$"):
        rig.make(required=True)


def test_no_efibootmgr_in_the_initramfs_is_one_warning(rig: Rig) -> None:
    def missing(argv: list[str]) -> proc.Completed:
        raise CommandError(argv, 127, "efibootmgr: not found")
    rig.recorder.responses["efibootmgr"] = missing
    rig.make()
    assert _warning(rig) == ("bootentry: cannot create the entry (command efibootmgr exited "
                             "127: efibootmgr: not found): no UEFI boot entry made")


def test_a_stale_entry_that_cannot_be_deleted_is_a_warning_the_entry_stays(rig: Rig) -> None:
    rig.nvram.entries["0003"] = ("pyinit golden.img.zst", "HD(1,GPT,ee1)/File(\\x)")
    rig.nvram.order = ["0003", "0001"]
    rig.nvram.fail = "--bootnum"
    out = rig.make()
    assert (out.status, out.summary) == ("created", "Boot0004")
    assert rig.nvram.order == ["0004", "0003", "0001"]
    assert _warning(rig) == ("bootentry: Boot0003 'pyinit golden.img.zst' (an earlier pyinit "
                             "entry) not removed: command efibootmgr exited 15: Could not delete "
                             "variable: Read-only file system")
    assert out.warnings == (_warning(rig).removeprefix("bootentry: "),)


def test_a_firmware_that_puts_bootorder_back_is_a_warning(rig: Rig) -> None:
    rig.nvram.entries["0004"] = ("UEFI PXEv4 (MAC:525400123456)", PXE_PATH)
    rig.nvram.order = ["0004", "0001"]
    rig.nvram.current = "0004"
    rig.nvram.keep_order = ("0001", "0004", "0003")
    rig.make()
    assert _warning(rig) == "bootentry: BootOrder reads 0001,0004,0003 after setting 0004,0003,0001"
    with pytest.raises(BootEntryError, match=r"BootOrder reads .* \(uefiBootEntry: true\)$"):
        rig.make(required=True)


def test_create_that_lists_no_new_entry_is_one_warning(rig: Rig) -> None:
    def forgetful(argv: list[str]) -> proc.Completed:
        return proc.Completed(tuple(argv), 0, rig.nvram.listing(), "")
    rig.recorder.responses["efibootmgr"] = forgetful
    out = rig.make()
    assert out.summary == "none (efibootmgr failed)"
    assert _warning(rig) == ("bootentry: efibootmgr --create exited 0 but lists 0 new entries "
                             "labelled 'pyinit golden.img.zst': no UEFI boot entry made")


# --- the action field and the step -----------------------------------------------------------

def test_the_action_field() -> None:
    base = {"action": "writeImage", "sourceImage": "http://srv/images/a.img"}
    assert parse_action(base).uefi_boot_entry is None
    assert parse_action({**base, "uefiBootEntry": True}).uefi_boot_entry is True
    assert parse_action({**base, "uefiBootEntry": False}).uefi_boot_entry is False
    assert parse_action({**base, "uefiBootEntry": None}).uefi_boot_entry is None
    with pytest.raises(ConfigError, match=r"^uefiBootEntry: must be a boolean, got str 'yes'$"):
        parse_action({**base, "uefiBootEntry": "yes"})


def _ctx(**fields: object) -> init.Context:
    ctx = init.Context()
    ctx.action = parse_action({"action": "writeImage",
                               "sourceImage": "http://srv/images/golden.img.zst", **fields})
    ctx.device = "/dev/vda"
    return ctx


def test_the_step(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []

    def make_entry(disk: str, **kw: object) -> efiboot.Outcome:
        seen.append({"disk": disk, **kw})
        return efiboot.Outcome("created", "Boot0003", number="0003")
    monkeypatch.setattr(efiboot, "make_entry", make_entry)
    ctx = _ctx()
    init.step_bootentry(ctx)
    assert seen == [{"disk": "/dev/vda", "label": "pyinit golden.img.zst", "required": False,
                     "sysfs": init.SYSFS}]
    assert ctx.summary == {"boot_entry": "Boot0003"}
    init.step_bootentry(_ctx(uefiBootEntry=True))
    assert seen[-1]["required"] is True
    ctx = _ctx(uefiBootEntry=False)
    init.step_bootentry(ctx)
    assert len(seen) == 2 and ctx.summary == {}
    assert ("pyinit: bootentry: uefiBootEntry false: the firmware's boot entries are left as "
            "they are") in rig.console.getvalue()
    for ctx in (_ctx(dryRun=True), init.Context()):
        init.step_bootentry(ctx)
    assert len(seen) == 2
    assert [name for name, _ in init.STEPS].index("bootentry") == \
        [name for name, _ in init.STEPS].index("configure") + 1


def test_the_step_on_a_bios_machine_runs_nothing(rig: Rig) -> None:
    ctx = _ctx()
    init.step_bootentry(ctx)  # init.SYSFS is an empty tree in unit tests
    assert ctx.summary == {"boot_entry": "none (legacy BIOS)"} and rig.recorder.calls == []
    assert json.loads(json.dumps(rig.events[-1]))["reason"] == "legacy BIOS"


def test_a_raid1_root_gets_an_entry_per_member_disk(rig: Rig,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """#17: one entry per member (the first member's first in BootOrder, labelled as a single
    disk's; the others name their disk); an earlier run's entry goes, this run's stay."""
    from pyinit import raid
    from pyinit.disks.inventory import Disk

    second = rig.tmp / "vdb"
    second.write_bytes(rig.disk.read_bytes())
    monkeypatch.setattr(init, "SYSFS", rig.sysfs)
    monkeypatch.setattr(efiboot, "list_esp", lambda disk, number: rig.files)
    monkeypatch.setattr(efiboot, "mount_efivarfs", rig.mounted.append)
    rig.nvram.entries["0003"] = ("pyinit golden.img.zst", "HD(1,GPT,ee1)/File(\\x)")
    rig.nvram.order = ["0003", "0001", "0000", "0002"]
    ctx = _ctx(raid={"level": 1, "devices": ["/dev/vda", "/dev/vdb"]})
    ctx.device = str(rig.disk)
    ctx.raid_members = raid.Members((Disk("vda", 1 << 30), Disk("vdb", 1 << 30)), "test")
    monkeypatch.setattr(raid.Members, "paths", property(lambda self: (str(rig.disk),
                                                                       str(second))))
    init.step_bootentry(ctx)
    # vdb's entry first (0004), the earlier run's 0003 deleted, then vda's (0003 again: the
    # lowest free number), which keeps vdb's
    assert ctx.summary == {"boot_entry": "Boot0003,Boot0004"}
    assert ["--bootnum", "0003", "--delete-bootnum"] in rig.argv()
    assert ["--bootnum", "0004", "--delete-bootnum"] not in rig.argv()
    assert rig.nvram.entries["0004"][0] == "pyinit golden.img.zst (vdb)"
    assert rig.nvram.entries["0003"][0] == "pyinit golden.img.zst"
    assert rig.nvram.order == ["0003", "0004", "0001", "0000", "0002"]
    creates = [c for c in rig.argv() if c[0] == "--create"]
    assert [c[2] for c in creates] == [str(second), str(rig.disk)]
    assert efiboot.entry_label("http://s/" + "a" * 100, "/dev/nvme1n1") == \
        "pyinit " + "a" * 47 + " (nvme1n1)"
