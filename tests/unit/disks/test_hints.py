"""pyinit.disks.hints: rootDeviceHints parsed table by table."""

from __future__ import annotations

import pytest

from pyinit.disks.hints import Hints, parse_hints
from pyinit.errors import ConfigError

from .fakes import GIB, TIB

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


def test_hints_object_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Hints().serial = None  # type: ignore[misc]
