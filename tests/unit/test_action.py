from __future__ import annotations

import json
from typing import Any

import pytest

from pyinit.action import Action, parse_action, parse_action_json
from pyinit.errors import ConfigError

# What plunder serves for BOOTy (field names from plunder-app/BOOTy pkg/plunderclient/types).
PLUNDER_WRITE = {
    "action": "writeImage", "compressed": True, "sourceImage": "http://10.0.2.2:3000/images/u.img.gz",
    "destinationDevice": "/dev/sda", "growDisk": False, "growPartition": 1,
    "lvmRootName": "/dev/ubuntu-vg/root", "address": "192.168.0.10/24",
    "gateway": "192.168.0.1", "nameserver": "8.8.8.8", "dryRun": False,
    "dropToShell": False, "wipeDevice": False,
}
PLUNDER_READ = {
    "action": "readImage", "compressed": True, "sourceDevice": "/dev/sda",
    "desintationAddress": "http://10.0.2.2:3000/image", "growDisk": False, "growPartition": 0,
    "lvmRootName": "", "dryRun": False, "dropToShell": False, "wipeDevice": False,
}


def test_plunder_write_action() -> None:
    act = parse_action(PLUNDER_WRITE)
    assert act.action == "writeImage"
    assert act.source_image == "http://10.0.2.2:3000/images/u.img.gz"
    assert act.destination_device == "/dev/sda"
    assert act.grow_partition == 1
    assert act.compressed is True
    assert act.finish == "reboot"


def test_plunder_read_action_with_boot_spelling() -> None:
    act = parse_action(PLUNDER_READ)
    assert act.destination_address == "http://10.0.2.2:3000/image"
    assert act.grow_partition is None  # Go's zero value means "not set"


def test_correct_spelling_is_accepted_too() -> None:
    data = dict(PLUNDER_READ)
    data["destinationAddress"] = data.pop("desintationAddress")
    assert parse_action(data).destination_address == "http://10.0.2.2:3000/image"


def test_relative_image_url_resolves_against_the_server() -> None:
    act = parse_action({"action": "writeImage", "sourceImage": "images/a.img",
                        "destinationDevice": "/dev/vda"}, base_url="http://10.0.2.2:8/m")
    assert act.source_image == "http://10.0.2.2:8/m/images/a.img"


def test_grow_partition_last_and_finish_extension() -> None:
    act = parse_action({"action": "writeImage", "sourceImage": "http://h/a",
                        "destinationDevice": "/dev/nvme0n1", "growPartition": "last",
                        "finish": "poweroff"})
    assert act == Action(action="writeImage", source_image="http://h/a",
                         destination_device="/dev/nvme0n1", grow_partition="last",
                         finish="poweroff")


def test_null_fields_mean_unset() -> None:
    data = dict(PLUNDER_WRITE, lvmRootName=None)
    assert parse_action(data).lvm_root_name is None


@pytest.mark.parametrize(("patch", "field", "needle"), [
    ({"action": "formatEverything"}, "action", "unknown action"),
    ({"action": None}, "action", "missing"),
    ({"compressed": "yes"}, "compressed", "boolean"),
    ({"growPartition": True}, "growPartition", "integer"),
    ({"growPartition": "first"}, "growPartition", "last"),
    ({"growPartition": 999}, "growPartition", "out of range"),
    ({"sourceImage": 42}, "sourceImage", "string"),
    ({"sourceImage": ""}, "sourceImage", "required"),
    ({"sourceImage": "ftp://h/x"}, "sourceImage", "http"),
    ({"destinationDevice": "sda"}, "destinationDevice", "/dev"),
    ({"destinationDevice": "/dev/../etc/passwd"}, "destinationDevice", "/dev"),
    ({"rootDeviceHints": {"serial": "S1"}}, "rootDeviceHints", "not both"),
    ({"rootDeviceHints": {"serail": "S1"}, "destinationDevice": None},
     "rootDeviceHints.serail", "unknown hint"),
    ({"rootDeviceHints": {"size": ">= lots"}, "destinationDevice": None},
     "rootDeviceHints.size", "GiB"),
    ({"rootDeviceHints": {"serial": 1234}, "destinationDevice": None},
     "rootDeviceHints.serial", "must be a string"),
    ({"rootDeviceHints": {}, "destinationDevice": None}, "rootDeviceHints", "empty"),
    ({"rootDeviceHints": "serial=S1", "destinationDevice": None}, "rootDeviceHints",
     "an object"),
    ({"allowRemovable": "yes"}, "allowRemovable", "boolean"),
    ({"finish": "explode"}, "finish", "reboot"),
    ({"sourceImg": "http://h/x"}, "sourceImg", "unknown field"),
    ({"checksum": "md5:abc"}, "checksum", "sha256:<hex>"),
    ({"checksum": "sha256:xyz"}, "checksum", "64 hex digits"),
    ({"checksum": "sha512:" + "a" * 64}, "checksum", "128 hex digits"),
    ({"checksum": "sha256:" + "a" * 64, "checksumURL": "SHA256SUMS"}, "checksumURL", "not both"),
    ({"size": 0}, "size", "positive"),
    ({"size": "1G"}, "size", "integer"),
    ({"verify": "partial"}, "verify", "none, full"),
    ({"compression": "lz4"}, "compression", "zstd"),
    ({"uploadMethod": "ftp"}, "uploadMethod", "multipart"),
    ({"hostname": "web_01"}, "hostname", "not a valid host name"),
    ({"hostname": "-web"}, "hostname", "not a valid host name"),
    ({"sshKeys": "ssh-ed25519 AAAA"}, "sshKeys", "a list"),
    ({"sshKeys": ["AAAA"]}, "sshKeys[0]", "authorized_keys"),
    ({"sshKeys": [7]}, "sshKeys[0]", "authorized_keys"),
    ({"network": "bonded"}, "network", "dhcp, static, none"),
    ({"address": "192.168.0.10"}, "address", "address/prefix"),
    ({"address": "192.168.0.300/24"}, "address", "address/prefix"),
    ({"gateway": "router"}, "gateway", "not an IP"),
    ({"nameserver": "8.8.8.8, dns.example"}, "nameserver", "not an IP"),
    ({"rootPartition": "first"}, "rootPartition", "auto"),
    ({"rootPartition": 0}, "rootPartition", "out of range"),
    ({"cloudInit": "yes"}, "cloudInit", "boolean"),
])
def test_bad_actions_name_the_field(patch: dict[str, Any], field: str, needle: str) -> None:
    data = dict(PLUNDER_WRITE, **patch)
    with pytest.raises(ConfigError, match=needle) as info:
        parse_action(data)
    assert info.value.field == field


def test_read_action_requires_its_fields() -> None:
    with pytest.raises(ConfigError, match="desintationAddress"):
        parse_action({"action": "readImage", "sourceDevice": "/dev/sda"})
    with pytest.raises(ConfigError, match="required for readImage") as info:
        parse_action({"action": "readImage", "desintationAddress": "http://h/up"})
    assert info.value.field == "sourceDevice"  # no default disk to capture


# Which disk (issue #7): a path, hints, or (writeImage only) the default rule.
@pytest.mark.parametrize(("patch", "device", "hints", "wanted"), [
    ({}, "/dev/sda", None, "/dev/sda"),
    ({"destinationDevice": "/dev/disk/by-id/virtio-big-data"},
     "/dev/disk/by-id/virtio-big-data", None, "/dev/disk/by-id/virtio-big-data"),
    ({"destinationDevice": None, "rootDeviceHints": {"serial": "big-data"}}, None,
     "{serial: big-data}", "rootDeviceHints {serial: big-data}"),
    ({"destinationDevice": "", "rootDeviceHints": {"size": ">= 100GiB", "rotational": False}},
     None, "{size: >= 100GiB, rotational: false}",
     "rootDeviceHints {size: >= 100GiB, rotational: false}"),
    ({"destinationDevice": None}, None, None, "the default disk"),
    ({"destinationDevice": ""}, None, None, "the default disk"),   # BOOTy's Go zero value
    ({"destinationDevice": None, "rootDeviceHints": None}, None, None, "the default disk"),
])
def test_write_disk_by_path_hints_or_default(patch: dict[str, Any], device: str | None,
                                            hints: str | None, wanted: str) -> None:
    act = parse_action(dict(PLUNDER_WRITE, **patch))
    assert act.destination_device == device
    assert (act.root_device_hints.describe() if act.root_device_hints else None) == hints
    assert act.disk_wanted == wanted
    assert act.summary().endswith(f"-> {wanted}")
    assert act.allow_removable is False


def test_read_disk_by_hints_and_allow_removable() -> None:
    data = dict(PLUNDER_READ, sourceDevice=None, rootDeviceHints={"tran": "usb"},
                allowRemovable=True)
    act = parse_action(data)
    assert act.source_device is None and act.allow_removable is True
    assert act.summary() == "readImage rootDeviceHints {tran: usb} -> http://10.0.2.2:3000/image"
    with pytest.raises(ConfigError, match="not both"):
        parse_action(dict(PLUNDER_READ, rootDeviceHints={"tran": "usb"}))


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"{\"action\": ",
                                  b"\xff\xfe garbage"])
def test_non_json_answers_are_config_errors(body: bytes) -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        parse_action_json(body)


def test_json_that_is_not_an_object() -> None:
    with pytest.raises(ConfigError, match="JSON object"):
        parse_action_json(json.dumps([PLUNDER_WRITE]))


def test_extensions_for_the_image_pipeline() -> None:
    digest = "AB" * 32
    act = parse_action(dict(PLUNDER_WRITE, checksum=f"SHA256:{digest}", size=1 << 30,
                            verify="full", preserveOnError=True))
    assert act.checksum == ("sha256", digest.lower())
    assert (act.size, act.verify, act.preserve_on_error) == (1 << 30, "full", True)
    act = parse_action(dict(PLUNDER_WRITE, checksumURL="images/SHA256SUMS"),
                       base_url="http://s:1")
    assert act.checksum_url == "http://s:1/images/SHA256SUMS"


def test_capture_compression_defaults_follow_booty() -> None:
    assert parse_action(PLUNDER_READ).capture_compression == "gzip"
    assert parse_action(dict(PLUNDER_READ, compressed=False)).capture_compression == "none"
    act = parse_action(dict(PLUNDER_READ, compression="zstd", uploadMethod="put"))
    assert (act.capture_compression, act.upload_method) == ("zstd", "put")


def test_identity_and_handoff_fields() -> None:
    act = parse_action(dict(PLUNDER_WRITE, hostname="web01.rack3", finish="kexec",
                            sshKeys=["ssh-ed25519 AAAAC3Nza key@host"],
                            nameserver="192.168.0.1, 9.9.9.9", rootPartition=2,
                            cloudInit=True))
    assert act.network == "static"  # BOOTy's address alone means a static configuration
    assert act.nameservers == ("192.168.0.1", "9.9.9.9")
    assert act.ssh_keys == ("ssh-ed25519 AAAAC3Nza key@host",)
    assert (act.hostname, act.root_partition, act.finish) == ("web01.rack3", 2, "kexec")
    assert act.grows and act.configures
    plain = parse_action({"action": "writeImage", "sourceImage": "http://h/i.img",
                          "destinationDevice": "/dev/vda"})
    assert (plain.network, plain.root_partition, plain.grows, plain.configures) == \
        ("none", "auto", False, False)
    dhcp = parse_action(dict(PLUNDER_WRITE, address=None, network="dhcp", finish="switch_root"))
    assert dhcp.network == "dhcp" and dhcp.configures and dhcp.finish == "switch_root"
