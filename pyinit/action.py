"""The server's JSON → a validated :class:`Action`, before any disk is touched. Pure: no I/O.

The wire format is BOOTy's ``BootyConfig`` (plunder-app/BOOTy ``pkg/plunderclient/types``),
including its misspelt upload field ``desintationAddress`` (the correct spelling is accepted
too), plus pyinit's documented extensions (see docs/action.md). Unknown fields and wrong types
are a :class:`ConfigError` naming the field: a typo in a machine file must not silently do
something else.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

from pyinit.disks.hints import Hints, parse_hints
from pyinit.errors import ConfigError
from pyinit.oci.parse import Credentials, Reference, is_oci, parse_reference

ActionKind = Literal["writeImage", "readImage", "erase", "inspect"]
ACTION_KINDS: tuple[str, ...] = ("writeImage", "readImage", "erase", "inspect")
Finish = Literal["reboot", "poweroff", "shell", "kexec", "switch_root"]
NetworkMode = Literal["dhcp", "static", "none"]
Verify = Literal["none", "full"]
Compression = Literal["zstd", "gzip", "none"]
UploadMethod = Literal["multipart", "put"]
EraseMode = Literal["metadata", "discard", "nvme", "ata", "zero", "auto"]
ERASE_MODES: tuple[str, ...] = ("metadata", "discard", "nvme", "ata", "zero", "auto")
CHECKSUM_ALGOS = {"sha256": 64, "sha512": 128}

# wire name -> (attribute, expected python type(s))
_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "action": ("action", (str,)),
    "compressed": ("compressed", (bool,)),
    "sourceImage": ("source_image", (str,)),
    "destinationDevice": ("destination_device", (str,)),
    "sourceDevice": ("source_device", (str,)),
    "destinationAddress": ("destination_address", (str,)),
    "desintationAddress": ("destination_address", (str,)),  # BOOTy's wire spelling
    "growDisk": ("grow_disk", (bool,)),
    "growPartition": ("grow_partition", (int, str)),
    "lvmRootName": ("lvm_root_name", (str,)),
    "address": ("address", (str,)),
    "gateway": ("gateway", (str,)),
    "nameserver": ("nameserver", (str,)),
    "dryRun": ("dry_run", (bool,)),
    "dropToShell": ("drop_to_shell", (bool,)),
    "wipeDevice": ("wipe_device", (bool,)),
    # pyinit extensions (docs/action.md)
    "finish": ("finish", (str,)),
    "checksum": ("checksum", (str,)),
    "checksumURL": ("checksum_url", (str,)),
    "size": ("size", (int,)),
    "verify": ("verify", (str,)),
    "preserveOnError": ("preserve_on_error", (bool,)),
    "compression": ("compression", (str,)),
    "uploadMethod": ("upload_method", (str,)),
    "rootPartition": ("root_partition", (int, str)),
    "hostname": ("hostname", (str,)),
    "sshKeys": ("ssh_keys", (list,)),
    "network": ("network", (str,)),
    "cloudInit": ("cloud_init", (bool,)),
    "keepIdentity": ("keep_identity", (bool,)),
    "confirmFirstBoot": ("confirm_first_boot", (bool,)),
    "rootDeviceHints": ("root_device_hints", (dict,)),
    "allowRemovable": ("allow_removable", (bool,)),
    # the lifecycle's erase action (issue #16, docs/lifecycle.md "Clean")
    "eraseMode": ("erase_mode", (str,)),
    "eraseDevices": ("erase_devices", (list,)),
    "allowBootMedium": ("allow_boot_medium", (bool,)),
    "uefiBootEntry": ("uefi_boot_entry", (bool,)),
    # images from an OCI registry (issue #17, docs/image.md "OCI registry")
    "registryAuth": ("registry_auth", (dict,)),
    "registryPlainHTTP": ("registry_plain_http", (bool,)),
    # signed images (issue #17, docs/security.md "The signature chain")
    "signatureURL": ("signature_url", (str,)),
    "checksumSignatureURL": ("checksum_signature_url", (str,)),
    # RAID1 roots (issue #17, docs/action.md "raid", docs/grow.md "RAID1 roots")
    "raid": ("raid", (dict,)),
}

_TYPE_NAMES = {bool: "a boolean", str: "a string", int: "an integer", list: "a list",
               dict: "an object"}
RAID_LEVELS = {1: 2}  # level -> the fewest member disks it needs
_RAID_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9._/:+-]+$")


@dataclass(frozen=True)
class Raid:
    """The ``raid`` field: an md RAID1 root mirrored over ``devices`` (paths, in order: the
    image is written to the first) or over every disk ``hints`` match (docs/grow.md)."""

    level: int
    devices: tuple[str, ...] = ()
    hints: Hints | None = None
    name: str = "root"        # /dev/md/<name>, and the array's name in its superblock

    @property
    def min_disks(self) -> int:
        return RAID_LEVELS[self.level]

    def describe(self) -> str:
        which = (", ".join(self.devices) if self.devices
                 else f"rootDeviceHints {self.hints.describe()}" if self.hints else "?")
        return f"RAID{self.level} /dev/md/{self.name} over {which}"


@dataclass(frozen=True)
class Action:
    action: ActionKind
    compressed: bool = False
    source_image: str | None = None
    destination_device: str | None = None
    source_device: str | None = None
    destination_address: str | None = None
    grow_disk: bool = False
    grow_partition: int | Literal["last"] | None = None
    lvm_root_name: str | None = None
    address: str | None = None
    gateway: str | None = None
    nameserver: str | None = None
    dry_run: bool = False
    drop_to_shell: bool = False
    wipe_device: bool = False
    finish: Finish = "reboot"
    checksum: tuple[str, str] | None = None  # (algorithm, lower-case hex)
    checksum_url: str | None = None
    size: int | None = None
    verify: Verify = "none"
    preserve_on_error: bool = False
    compression: Compression | None = None
    upload_method: UploadMethod = "multipart"
    # After the write (issue #5): which partition holds the target's root ("auto": the LV of
    # lvmRootName, else the grown partition, else the one with /etc/os-release), and the
    # machine identity written into it.
    root_partition: int | Literal["auto"] = "auto"
    hostname: str | None = None
    ssh_keys: tuple[str, ...] = ()
    network: NetworkMode = "none"
    nameservers: tuple[str, ...] = ()
    cloud_init: bool = False
    # Per-machine identity (issue #15, docs/identity.md): configure makes fresh SSH host keys,
    # machine-id, random seed ... in every written target unless this is set (restoring a
    # machine's own captured disk onto the same machine).
    keep_identity: bool = False
    # The lifecycle (issue #16, docs/lifecycle.md): a one-shot in the target tells the server
    # the deployed system came up.
    confirm_first_boot: bool = True
    # Which disk (issue #7, docs/disks.md): ironic-style hints instead of a device path, for
    # writeImage (the destination) or readImage (the source). Neither hints nor a device on a
    # writeImage: the default rule (smallest usable disk that fits). Removable disks (USB
    # sticks) are never chosen by hints or the default unless allowRemovable.
    root_device_hints: Hints | None = None
    allow_removable: bool = False
    # erase (issue #16): the mode, and which disks (paths, else every disk rootDeviceHints
    # matches, else every disk but removable media and the boot medium)
    erase_mode: EraseMode = "metadata"
    erase_devices: tuple[str, ...] = ()
    allow_boot_medium: bool = False
    # UEFI boot entries (issue #16, docs/lifecycle.md): unset, an entry for the written disk's
    # loader when the machine booted by UEFI, a warning when none can be made; true, required
    # (the bootentry step fails instead); false, the firmware's variables are left alone.
    uefi_boot_entry: bool | None = None
    # sourceImage oci://… (issue #17): the parsed reference, the registry's credentials (never
    # logged: Credentials hides the password) and plain HTTP to the registry (default https)
    oci: Reference | None = None
    registry_auth: Credentials | None = None
    registry_plain_http: bool = False
    # Signed images (issue #17): the image's detached OpenPGP signature, and the checksum
    # file's. Unset: the conventions <sourceImage>.sig / <checksumURL>.gpg, used only when a
    # keyring is configured (pyinit.image.signature.plan); the action cannot turn checking off.
    signature_url: str | None = None
    checksum_signature_url: str | None = None
    # RAID1 root (issue #17): the image is written to the first member and its root partition
    # mirrored onto the others as an md RAID1 (metadata 1.0); None: one disk.
    raid: Raid | None = None

    @property
    def grows(self) -> bool:
        return self.grow_partition is not None or self.grow_disk

    @property
    def configures(self) -> bool:
        return bool(self.hostname or self.ssh_keys or self.network != "none" or self.cloud_init)

    @property
    def capture_compression(self) -> Compression:
        """readImage: explicit ``compression``, else BOOTy's behaviour (gzip when compressed)."""
        if self.compression is not None:
            return self.compression
        return "gzip" if self.compressed else "none"

    @property
    def disk_wanted(self) -> str:
        """How the action names its disk, for messages: a path, the hints, or the default."""
        device = self.destination_device if self.action == "writeImage" else self.source_device
        if device:
            return device
        if self.root_device_hints is not None:
            return f"rootDeviceHints {self.root_device_hints.describe()}"
        return "the default disk"

    def summary(self) -> str:
        if self.action == "erase":
            which = (", ".join(self.erase_devices) if self.erase_devices
                     else f"rootDeviceHints {self.root_device_hints.describe()}"
                     if self.root_device_hints is not None else "every disk")
            return f"erase ({self.erase_mode}) {which}"
        if self.action == "inspect":
            return "inspect (hardware inventory, then " + self.finish + ")"
        if self.action == "writeImage" and self.raid is not None:
            return f"writeImage {self.source_image} -> {self.raid.describe()}"
        if self.action == "writeImage":
            return f"writeImage {self.source_image} -> {self.disk_wanted}"
        return f"readImage {self.disk_wanted} -> {self.destination_address}"


def _check_type(name: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int in Python; JSON true must not pass as a partition number.
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        want = " or ".join(_TYPE_NAMES[t] for t in types)
        raise ConfigError(name, f"must be {want}, got {type(value).__name__} {value!r}")


def _url(name: str, value: str, base_url: str | None) -> str:
    url = urljoin(base_url + "/", value) if base_url and "://" not in value else value
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(name, f"not an http(s) URL: {value!r}")
    return url


def _device(name: str, value: str) -> str:
    if not _DEVICE_RE.match(value) or "/../" in value or value.endswith("/.."):
        raise ConfigError(name, f"not a device path under /dev: {value!r}")
    return value


def parse_checksum(value: str, *, field: str = "checksum") -> tuple[str, str]:
    """``sha256:<hex>`` / ``sha512:<hex>`` → (algorithm, lower-case hex). Pure."""
    algo, sep, digest = value.strip().partition(":")
    algo = algo.lower()
    if not sep or algo not in CHECKSUM_ALGOS:
        raise ConfigError(field, f"must be sha256:<hex> or sha512:<hex>, got {value!r}")
    digest = digest.lower()
    if len(digest) != CHECKSUM_ALGOS[algo] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ConfigError(field, f"{algo} digest must be {CHECKSUM_ALGOS[algo]} hex digits")
    return algo, digest


def _choice(values: dict[str, Any], attr: str, allowed: tuple[str, ...], *,
            wire: str | None = None) -> None:
    if attr in values and values[attr] not in allowed:
        raise ConfigError(wire or attr, f"{values[attr]!r} is not one of {', '.join(allowed)}")


def _identity(values: dict[str, Any]) -> None:
    """hostname, sshKeys, network/address/gateway/nameserver, rootPartition. Pure."""
    name = values.get("hostname")
    if name is not None and not _HOSTNAME_RE.match(name):
        raise ConfigError("hostname", f"not a valid host name: {name!r}")
    keys = values.get("ssh_keys", [])
    for i, key in enumerate(keys):
        if not isinstance(key, str) or len(key.split()) < 2 or "\n" in key:
            raise ConfigError(f"sshKeys[{i}]", f"not an authorized_keys line: {key!r}")
    values["ssh_keys"] = tuple(k.strip() for k in keys)
    mode = values.setdefault("network", "static" if values.get("address") else "none")
    _choice(values, "network", ("dhcp", "static", "none"))
    if mode == "static":
        address = values.get("address", "")
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError:
            iface = None
        if iface is None or "/" not in address:
            raise ConfigError("address", f"network static needs address/prefix, got {address!r}")
        if values.get("gateway"):
            try:
                ipaddress.ip_address(values["gateway"])
            except ValueError as exc:
                raise ConfigError("gateway", f"not an IP address: {values['gateway']!r}") from exc
    servers = [s for s in re.split(r"[,\s]+", values.get("nameserver", "")) if s]
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError as exc:
            raise ConfigError("nameserver", f"not an IP address: {server!r}") from exc
    values["nameservers"] = tuple(servers)
    rp = values.get("root_partition")
    if isinstance(rp, str) and rp != "auto":
        raise ConfigError("rootPartition", f"must be a partition number or \"auto\", got {rp!r}")
    if isinstance(rp, int) and not 1 <= rp <= 128:
        raise ConfigError("rootPartition", f"partition number out of range: {rp}")


def parse_action(data: Mapping[str, Any], *, base_url: str | None = None) -> Action:
    """Validate a decoded JSON object. Relative image URLs are resolved against ``base_url``."""
    if not isinstance(data, Mapping):
        raise ConfigError("action", f"expected a JSON object, got {type(data).__name__}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _FIELDS:
            raise ConfigError(name, "unknown field")
        attr, types = _FIELDS[name]
        if value is None:
            continue
        _check_type(name, value, types)
        values[attr] = value

    kind = values.get("action")
    if kind is None:
        raise ConfigError("action", "missing")
    if kind not in ACTION_KINDS:
        raise ConfigError("action", f"unknown action {kind!r} ({', '.join(ACTION_KINDS)})")
    if kind in ("erase", "inspect"):
        # nothing to hand off to; rebooting would PXE-boot into the same action again
        values.setdefault("finish", "poweroff")

    gp = values.get("grow_partition")
    if isinstance(gp, str) and gp != "last":
        raise ConfigError("growPartition", f"must be a partition number or \"last\", got {gp!r}")
    if isinstance(gp, int) and not isinstance(gp, bool):
        if gp < 0 or gp > 128:
            raise ConfigError("growPartition", f"partition number out of range: {gp}")
        values["grow_partition"] = gp or None  # BOOTy's Go zero value means "none"

    _choice(values, "finish", ("reboot", "poweroff", "shell", "kexec", "switch_root"))
    _identity(values)
    _choice(values, "verify", ("none", "full"))
    _choice(values, "compression", ("zstd", "gzip", "none"))
    _choice(values, "upload_method", ("multipart", "put"), wire="uploadMethod")
    if "checksum" in values:
        values["checksum"] = parse_checksum(values["checksum"])
        if values.get("checksum_url"):
            raise ConfigError("checksumURL", "give checksum or checksumURL, not both")
    if "size" in values and values["size"] <= 0:
        raise ConfigError("size", f"must be a positive number of bytes, got {values['size']}")
    if values.get("checksum_url"):
        values["checksum_url"] = _url("checksumURL", values["checksum_url"], base_url)
    _signature_urls(values, base_url)

    _registry(values)
    if kind in ("erase", "inspect"):
        return _erase_or_inspect(values, kind)
    if "raid" in values:
        _raid(values, kind)
    else:
        _which_disk(values, kind)
    if kind == "writeImage":
        if not values.get("source_image"):
            raise ConfigError("sourceImage", "required for writeImage")
        if values.get("oci") is None:
            values["source_image"] = _url("sourceImage", values["source_image"], base_url)
    else:
        if not values.get("destination_address"):
            raise ConfigError("desintationAddress", "required for readImage")
        values["destination_address"] = _url("desintationAddress",
                                             values["destination_address"], base_url)
    return Action(**values)


def _registry(values: dict[str, Any]) -> None:
    """sourceImage oci://…, registryAuth, registryPlainHTTP (docs/action.md). Pure.

    The layer's digest is the image's checksum, so checksum/checksumURL are refused with it;
    the registry fields without an oci:// image are a mistake worth naming."""
    source = values.get("source_image")
    if not (isinstance(source, str) and is_oci(source)):
        for attr, wire in (("registry_auth", "registryAuth"),
                           ("registry_plain_http", "registryPlainHTTP")):
            if attr in values:
                raise ConfigError(wire, "only for an oci:// sourceImage")
        return
    try:
        values["oci"] = parse_reference(source)
    except ValueError as exc:
        raise ConfigError("sourceImage", str(exc)) from exc
    for attr, wire in (("checksum", "checksum"), ("checksum_url", "checksumURL")):
        if values.get(attr):
            raise ConfigError(wire, "not with an oci:// sourceImage: the registry's layer "
                                    "digest is the checksum (pin the manifest with @sha256:)")
    creds = values.pop("registry_auth", None)
    if creds is not None:
        unknown = sorted(set(creds) - {"username", "password"})
        if unknown:
            raise ConfigError(f"registryAuth.{unknown[0]}", "unknown field "
                              "(username, password)")
        for key in ("username", "password"):
            if not isinstance(creds.get(key), str) or not creds[key]:
                raise ConfigError(f"registryAuth.{key}", "must be a non-empty string")
        values["registry_auth"] = Credentials(creds["username"], creds["password"])


def _hints(data: Any, otherwise: str) -> Hints:
    """rootDeviceHints parsed, and not empty (``otherwise``: what leaving them out does)."""
    parsed = parse_hints(data)
    if parsed.empty:
        raise ConfigError("rootDeviceHints", f"is empty: give at least one hint, or leave it "
                                             f"out {otherwise}")
    return parsed


_WRITE_ONLY = ("source_image", "destination_device", "source_device", "destination_address",
               "grow_partition", "lvm_root_name", "checksum", "checksum_url", "signature_url",
               "checksum_signature_url", "raid")


def _signature_urls(values: dict[str, Any], base_url: str | None) -> None:
    """signatureURL, checksumSignatureURL: http(s) URLs (relative ones resolved); the
    checksum file's signature needs a checksum file. Pure."""
    for wire, attr in (("signatureURL", "signature_url"),
                       ("checksumSignatureURL", "checksum_signature_url")):
        if values.get(attr):
            values[attr] = _url(wire, values[attr], base_url)
        else:
            values.pop(attr, None)  # "": unset
    if values.get("checksum_signature_url") and not values.get("checksum_url"):
        raise ConfigError("checksumSignatureURL", "needs checksumURL (the file it signs)")


def _erase_or_inspect(values: dict[str, Any], kind: str) -> Action:
    """erase: eraseMode, eraseDevices or rootDeviceHints (not both); inspect: nothing to
    choose. A field of another action (sourceImage, destinationDevice ...) is refused: an
    erase that was meant to be a write must not run. Pure."""
    wire = {attr: name for name, (attr, _) in _FIELDS.items()}
    for attr in _WRITE_ONLY:
        if values.get(attr):
            raise ConfigError(wire[attr], f"not a field of the {kind} action")
    if kind == "inspect":
        for attr in ("erase_mode", "erase_devices", "root_device_hints"):
            if attr in values:
                raise ConfigError(wire[attr], "not a field of the inspect action")
        return Action(**values)
    _choice(values, "erase_mode", ERASE_MODES, wire="eraseMode")
    devices = values.pop("erase_devices", [])
    for i, device in enumerate(devices):
        if not isinstance(device, str):
            raise ConfigError(f"eraseDevices[{i}]", f"must be a string, got {device!r}")
        _device(f"eraseDevices[{i}]", device)
    hints = values.pop("root_device_hints", None)
    if devices and hints is not None:
        raise ConfigError("rootDeviceHints", "give eraseDevices or rootDeviceHints, not both")
    if hints is not None:
        values["root_device_hints"] = _hints(hints, "to erase every disk")
    values["erase_devices"] = tuple(devices)
    return Action(**values)


def _which_disk(values: dict[str, Any], kind: str) -> None:
    """destinationDevice/sourceDevice, rootDeviceHints, allowRemovable. Pure.

    A device path or hints, never both (which would win is a guess). The hints are parsed
    here so a bad one fails before any disk is touched, naming ``rootDeviceHints.<hint>``.
    An empty string is BOOTy's Go zero value: unset. readImage needs one of the two (there is
    no sensible default disk to capture); writeImage without either uses the default rule.
    """
    wire, attr = (("destinationDevice", "destination_device") if kind == "writeImage"
                  else ("sourceDevice", "source_device"))
    device = values.pop(attr, "") or None
    hints = values.pop("root_device_hints", None)
    if device is not None and hints is not None:
        raise ConfigError("rootDeviceHints", f"give {wire} or rootDeviceHints, not both")
    if device is not None:
        values[attr] = _device(wire, device)
    elif hints is not None:
        values["root_device_hints"] = _hints(hints, "for the default disk")
    elif kind == "readImage":
        raise ConfigError(wire, "required for readImage (or rootDeviceHints)")


def _raid(values: dict[str, Any], kind: str) -> None:
    """``raid``: ``{"level": 1, "devices": [...]}`` or ``{"level": 1, "rootDeviceHints":
    {...}}``, optional ``"name"``. Only for writeImage; it names the disks, so
    destinationDevice and rootDeviceHints beside it are refused, and so is lvmRootName (the
    mirrored partition holds the root filesystem itself). Pure."""
    data = values.pop("raid")
    if kind != "writeImage":
        raise ConfigError("raid", f"not a field of the {kind} action")
    for attr, wire in (("destination_device", "destinationDevice"),
                       ("root_device_hints", "rootDeviceHints")):
        if values.get(attr):
            raise ConfigError(wire, "give the disks in raid.devices or raid.rootDeviceHints, "
                                    "not beside raid")
    values.pop("destination_device", None)
    if values.get("lvm_root_name"):
        raise ConfigError("raid", "a RAID1 root on LVM (lvmRootName) is not supported: the "
                                  "mirrored partition must hold the root filesystem itself")
    unknown = sorted(set(data) - {"level", "devices", "rootDeviceHints", "name"})
    if unknown:
        raise ConfigError(f"raid.{unknown[0]}", "unknown field")
    level = data.get("level")
    if isinstance(level, bool) or not isinstance(level, int):
        raise ConfigError("raid.level", f"must be an integer, got {level!r}")
    if level not in RAID_LEVELS:
        raise ConfigError("raid.level", f"RAID{level} is not supported (levels: "
                          + ", ".join(str(n) for n in RAID_LEVELS) + ")")
    name = data.get("name", "root")
    if not isinstance(name, str) or not _RAID_NAME_RE.match(name):
        raise ConfigError("raid.name", f"must be 1-32 letters, digits, '_', '.' or '-', got "
                                       f"{name!r}")
    devices = data.get("devices")
    hints = data.get("rootDeviceHints")
    if (devices is None) == (hints is None):
        raise ConfigError("raid", "give raid.devices or raid.rootDeviceHints (one of them)")
    if devices is not None:
        if not isinstance(devices, list):
            raise ConfigError("raid.devices", f"must be a list, got {devices!r}")
        for i, device in enumerate(devices):
            if not isinstance(device, str):
                raise ConfigError(f"raid.devices[{i}]", f"must be a string, got {device!r}")
            _device(f"raid.devices[{i}]", device)
        if len(set(devices)) != len(devices):
            raise ConfigError("raid.devices", "names a disk twice")
        if len(devices) < RAID_LEVELS[level]:
            raise ConfigError("raid.devices", f"RAID{level} needs at least "
                              f"{RAID_LEVELS[level]} disks, got {len(devices)}")
        values["raid"] = Raid(level, devices=tuple(devices), name=name)
        return
    if not isinstance(hints, dict):
        raise ConfigError("raid.rootDeviceHints", f"must be an object, got {hints!r}")
    parsed = parse_hints(hints, field_name="raid.rootDeviceHints")
    if parsed.empty:
        raise ConfigError("raid.rootDeviceHints", "is empty: give at least one hint")
    values["raid"] = Raid(level, hints=parsed, name=name)


def parse_action_json(body: bytes | str, *, base_url: str | None = None) -> Action:
    """Decode and validate the server's answer; a body that is not JSON is a ConfigError."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        text = body if isinstance(body, str) else body[:200].decode("utf-8", "replace")
        first = text.strip().splitlines()[0][:60] if text.strip() else "<empty>"
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ConfigError("action", f"server answer is not JSON ({why}): {first!r}") from exc
    return parse_action(data, base_url=base_url)
