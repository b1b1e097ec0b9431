"""The boot entries in an OVMF variable store file (``OVMF_VARS.fd``), read on the host after
QEMU exited: what the firmware will see at its next boot, independent of anything the guest
printed.

The layout is edk2's (``MdeModulePkg/Include/Guid/VariableFormat.h``): a firmware volume
header, a variable store header, then authenticated variable headers (60 bytes: StartId 0x55AA,
State, Attributes, counters, NameSize, DataSize, VendorGuid), each followed by its UCS-2 name and
its data, 4-byte aligned. A variable is live while its State is ``VAR_ADDED`` (0x3F), or
``VAR_ADDED & VAR_IN_DELETED_TRANSITION`` (0x3E) when no added copy follows it. ``Boot####``
data is an ``EFI_LOAD_OPTION`` (UEFI 2.10, 3.1.3): attributes, the device path's length, the
UCS-2 description.

virt-firmware (PyPI) reads these stores too; it would bring cryptography and pefile into the
test environment for this one read, so the few struct layouts are here.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
_STORE_GUIDS = {uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792"),   # authenticated
                uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")}   # plain
_FV = struct.Struct("<16s16sQ4sIHH")
_STORE = struct.Struct("<16sIBBHI")
_VAR = struct.Struct("<HBBIQ16sIII16s")
_ADDED, _ADDED_IN_TRANSITION = 0x3F, 0x3E


@dataclass(frozen=True)
class BootVariables:
    order: tuple[str, ...]
    labels: dict[str, str]  # "0004" -> description

    def ours(self, prefix: str = "pyinit ") -> dict[str, str]:
        return {n: label for n, label in self.labels.items() if label.startswith(prefix)}


def variables(path: Path) -> dict[tuple[uuid.UUID, str], bytes]:
    """The live variables of the store in ``path``: (vendor GUID, name) -> data."""
    raw = path.read_bytes()
    _zero, _fs, _length, sig, _attrs, header_length, _sum = _FV.unpack_from(raw)
    if sig != b"_FVH":
        raise ValueError(f"{path}: not a firmware volume (signature {sig!r})")
    guid, size, _fmt, _state, _r, _r1 = _STORE.unpack_from(raw, header_length)
    if uuid.UUID(bytes_le=guid) not in _STORE_GUIDS:
        raise ValueError(f"{path}: no variable store at byte {header_length}")
    end = header_length + size
    pos = header_length + _STORE.size
    live: dict[tuple[uuid.UUID, str], bytes] = {}
    transition: dict[tuple[uuid.UUID, str], bytes] = {}
    while pos + _VAR.size <= end:
        start, state, _r, _a, _count, _time, _key, name_size, data_size, vendor = \
            _VAR.unpack_from(raw, pos)
        if start != 0x55AA:
            break
        name_at = pos + _VAR.size
        name = raw[name_at:name_at + name_size].decode("utf-16-le").rstrip("\0")
        data = raw[name_at + name_size:name_at + name_size + data_size]
        key = (uuid.UUID(bytes_le=vendor), name)
        if state == _ADDED:
            live[key] = data
        elif state == _ADDED_IN_TRANSITION:
            transition[key] = data
        pos = (name_at + name_size + data_size + 3) & ~3
    return {**transition, **live}


def boot_variables(path: Path) -> BootVariables:
    """BootOrder and every Boot#### entry's description in the store at ``path``."""
    found = variables(path)
    order_raw = found.get((GLOBAL_VARIABLE, "BootOrder"), b"")
    order = tuple(f"{n:04X}" for n in struct.unpack(f"<{len(order_raw) // 2}H", order_raw))
    labels = {}
    for (vendor, name), data in found.items():
        if vendor == GLOBAL_VARIABLE and re.fullmatch(r"Boot[0-9A-F]{4}", name):
            text = data[6:].decode("utf-16-le", "replace")
            labels[name[4:]] = text.split("\0", 1)[0]
    return BootVariables(order, dict(sorted(labels.items())))
