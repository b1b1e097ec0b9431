"""The reference list of server controllers and the coverage check (pure)."""

from __future__ import annotations

import pytest

from pyinit import kmod
from pyinit_build import coverage
from pyinit_build.errors import BuildError

HEADER = "kind,bus,vendor,device,subvendor,subdevice,class,driver,name\n"
ALIASES = kmod.parse_modules_alias("""\
alias pci:v000014E4d0000165Fsv*sd*bc*sc*i* tg3
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v00008086d00000A54sv*sd*bc*sc*i* nvme
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip62in* uas
alias pci:v00001000d00000097sv*sd*bc*sc*i* mpt3sas
""")


def rows(*lines: str) -> list[coverage.Controller]:
    return coverage.parse_reference(HEADER + "".join(f"{line}\n" for line in lines), "t.csv")


def test_modalias_is_what_the_kernel_writes() -> None:
    tg3, stick = rows("net,pci,14e4,165F,1028,08fd,020000,tg3,BCM5720",
                      "storage,usb,0781,5581,,,080650,usb-storage,stick")
    assert tg3.modalias == "pci:v000014E4d0000165Fsv00001028sd000008FDbc02sc00i00"
    assert tg3.ids == "14e4:165f"
    assert stick.modalias == "usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00"
    assert stick.driver == "usb_storage"  # module_name spelling


def test_check_matches_with_class_and_subsystem() -> None:
    listed = rows("net,pci,14e4,165f,1028,08fd,020000,tg3,BCM5720",
                  "storage,pci,144d,a824,1028,2040,010802,nvme,PM1733 (by class)",
                  "storage,pci,144d,a824,1028,2041,010400,nvme,wrong class: no match",
                  "storage,usb,0bda,9210,,,080662,uas,UAS enclosure",
                  "storage,pci,1000,005d,1000,9361,010400,megaraid_sas,not in the table",
                  "storage,pci,8086,0a54,1028,1fe1,010802,ahci,wrong driver named")
    got = coverage.check(listed, ALIASES)
    assert [c.name for c in got.covered] == ["BCM5720", "PM1733 (by class)", "UAS enclosure"]
    assert [(c.name, m) for c, m in got.missing] == [
        ("wrong class: no match", ()), ("not in the table", ()),
        ("wrong driver named", ("nvme",))]
    assert got.percent == 50.0
    assert got.summary() == "3/6 reference controllers (50.0 %)"
    assert got.manifest()["missing"][1] == "1000:005d megaraid_sas (not in the table)"


@pytest.mark.parametrize(("line", "message"), [
    ("net,pci,14e4,165,1028,08fd,020000,tg3,x", r"t.csv:2: device '165' is not 4 hex digits"),
    ("net,pci,14e4,165f,1028,08fd,0200,tg3,x", r"t.csv:2: class '0200' is not 6 hex digits"),
    ("nic,pci,14e4,165f,1028,08fd,020000,tg3,x", r"t.csv:2: kind must be one of net, storage"),
    ("net,isa,14e4,165f,1028,08fd,020000,tg3,x", r"bus one of pci, usb"),
    ("net,pci,14e4,165f,,08fd,020000,tg3,x", r"t.csv:2: subvendor '' is not 4 hex digits"),
    ("storage,usb,0781,5581,1,2,080650,usb_storage,x", r"a USB row has no subsystem IDs"),
    ("net,pci,14e4,165f,1028,08fd,020000,,x", r"driver and name must not be empty"),
    ("net,pci,14e4,165f,1028,08fd,020000,tg3", r"t.csv:2: 8 fields, expected 9"),
])
def test_bad_rows_name_file_line_and_field(line: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        rows(line)


def test_duplicates_and_header() -> None:
    with pytest.raises(BuildError, match=r"t.csv:3: 14e4:165f is listed twice"):
        rows("net,pci,14e4,165f,1028,08fd,020000,tg3,a", "net,pci,14e4,165F,1028,08FD,020000,tg3,b")
    with pytest.raises(BuildError, match=r"t.csv:1: header must be kind,bus"):
        coverage.parse_reference("vendor,device\n", "t.csv")
    with pytest.raises(BuildError, match="no rows"):
        coverage.parse_reference("# only a comment\n", "t.csv")


def test_the_project_list_parses_and_is_big_enough() -> None:
    ref = coverage.reference()
    assert len(ref) >= 60
    kinds = {c.kind for c in ref}
    assert kinds == {"net", "storage"}
    # every driver the issue names as a must is in the list
    must = {"igb", "igc", "ixgbe", "i40e", "ice", "e1000e", "bnxt_en", "tg3", "bnx2x", "qede",
            "mlx4_core", "mlx5_core", "sfc", "be2net", "ena", "vmxnet3", "virtio_pci", "nvme",
            "vmd", "ahci", "megaraid_sas", "mpt3sas", "mpi3mr", "smartpqi", "hpsa", "aacraid",
            "vmw_pvscsi", "usb_storage", "uas"}
    assert must <= {c.driver for c in ref}
    assert next(iter(coverage.by_driver(ref))) == ref[0].driver
