"""Root device hints: the ``rootDeviceHints`` of ironic(-python-agent), parsed and matched.

Same names, same operators (``s==``, ``<in>``, ``<or>``, ``>=``…) and the same case-insensitive
comparison as ironic, with two pyinit differences: ``size`` takes units (``">= 100GiB"``; a bare
number is GiB as in ironic), and when several disks match, an identity hint (serial, wwn, name,
by_path, hctl) is an error (it was meant to name one disk) while the other hints pick the
*smallest* match (ironic takes the first in device order, which changes between boots): see
:func:`pyinit.disks.selection.select_disk`. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pyinit.disks.inventory import Disk, human_size
from pyinit.errors import ConfigError
from pyinit.units import parse_size

GIB = 1 << 30

HintName = Literal["size", "model", "vendor", "serial", "wwn", "wwn_with_extension",
                   "wwn_vendor_extension", "name", "rotational", "hctl", "by_path", "tran"]
STRING_HINTS = ("model", "vendor", "serial", "wwn", "wwn_with_extension",
                "wwn_vendor_extension", "name", "hctl", "by_path", "tran")
IDENTITY_HINTS = frozenset({"serial", "wwn", "wwn_with_extension", "name", "by_path", "hctl"})
STRING_OPS = ("s==", "s!=", "s<=", "s>=", "s<", "s>", "<in>", "<or>")
SIZE_OPS = ("==", "!=", "<=", ">=", "<", ">", "<or>")
_OP_RE = re.compile(r"^\s*(s==|s!=|s<=|s>=|s<|s>|<in>|<or>|<all-in>|==|!=|<=|>=|<|>|=)\s*")
_ALIASES = {"by-path": "by_path", "byPath": "by_path", "wwnWithExtension": "wwn_with_extension",
            "wwnVendorExtension": "wwn_vendor_extension"}


@dataclass(frozen=True)
class Expr:
    """One hint: an operator and its value(s). Strings are compared normalised (lower case,
    whitespace runs made one space); sizes in bytes."""

    op: str
    values: tuple[str | int, ...]
    text: str                          # as written, for messages

    def matches(self, value: str | int | None) -> bool:
        if value is None:
            return False
        if isinstance(value, str):
            value = _norm(value)
        if self.op == "<or>":
            return value in self.values
        want = self.values[0]
        if self.op == "<in>":
            return isinstance(value, str) and isinstance(want, str) and want in value
        op = self.op.removeprefix("s")
        a: Any = value
        b: Any = want
        return bool({"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                     ">=": a >= b}[op])


@dataclass(frozen=True)
class Hints:
    """Validated ``rootDeviceHints``: every field None means "no hints"."""

    size: Expr | None = None
    model: Expr | None = None
    vendor: Expr | None = None
    serial: Expr | None = None
    wwn: Expr | None = None
    wwn_with_extension: Expr | None = None
    wwn_vendor_extension: Expr | None = None
    name: Expr | None = None
    hctl: Expr | None = None
    by_path: Expr | None = None
    tran: Expr | None = None
    rotational: bool | None = None

    def given(self) -> dict[str, Expr | bool]:
        return {k: v for k, v in _fields_of(self).items() if v is not None}

    @property
    def empty(self) -> bool:
        return not self.given()

    @property
    def identity(self) -> bool:
        return any(k in IDENTITY_HINTS for k in self.given())

    def describe(self) -> str:
        """``{serial: S3Z, size: >= 100GiB}``: how messages show the hints."""
        items = [f"{k}: {str(v).lower() if isinstance(v, bool) else v.text}"
                 for k, v in self.given().items()]
        return "{" + ", ".join(items) + "}"

    def mismatch(self, disk: Disk) -> str | None:
        """The first hint ``disk`` fails, as ``serial abc does not match S3Z``; None if all
        match."""
        for key, expr in self.given().items():
            if isinstance(expr, bool):
                if disk.rotational != expr:
                    return f"rotational is {str(disk.rotational).lower()}"
                continue
            values = _disk_values(disk, key)
            if not any(expr.matches(v) for v in values):
                shown = values[0] if values and values[0] is not None else "unknown"
                if key == "size" and isinstance(shown, int):
                    shown = human_size(shown)
                return f"{key} {shown} does not match {expr.text}"
        return None


def _fields_of(hints: Hints) -> dict[str, Expr | bool | None]:
    return {f: getattr(hints, f) for f in Hints.__dataclass_fields__}


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _dev_name(value: str) -> str:
    """``/dev/sdb`` and ``sdb`` are the same name; by-id/by-path paths keep their directory
    (``disk/by-id/…``) so they are matched against the disk's stable names."""
    return value.strip().removeprefix("/dev/")


def _disk_values(disk: Disk, key: str) -> list[str | int | None]:
    if key == "size":
        return [disk.size]
    if key == "name":
        return [disk.name, *(f"disk/by-id/{n}" for n in disk.by_id),
                *(f"disk/by-path/{n}" for n in (disk.by_path, *disk.by_path_compat) if n)]
    if key == "by_path":
        return [disk.by_path, *disk.by_path_compat]
    if key == "tran":
        return [disk.transport]
    value = getattr(disk, key)
    return [value]


def _parse_size_value(field_name: str, text: str) -> int:
    text = text.strip()
    try:
        bare = re.fullmatch(r"\d+(\.\d+)?", text)       # ironic: a bare number is GiB
        value = int(float(text) * GIB) if bare else parse_size(text)
    except ValueError as exc:
        raise ConfigError(field_name, f"{exc}; a bare number is GiB") from exc
    if value <= 0:
        raise ConfigError(field_name, f"must be a positive size, got {text!r}")
    return value


def _parse_expr(field_name: str, key: str, raw: str | int) -> Expr:
    text = str(raw).strip()
    if not text:
        raise ConfigError(field_name, "is empty")
    allowed = SIZE_OPS if key == "size" else STRING_OPS
    m = _OP_RE.match(text)
    op = m.group(1) if m else ("==" if key == "size" else "s==")
    rest = text[m.end():] if m else text
    if op == "=":
        raise ConfigError(field_name, f"operator '=' is ambiguous (in oslo specs it means >=); "
                                      f"use == or >=: {text!r}")
    if op not in allowed:
        kind = "a size" if key == "size" else "a string"
        raise ConfigError(field_name, f"operator {op} does not apply to {kind} "
                                      f"(use one of {' '.join(allowed)}): {text!r}")
    if op == "<or>" or "<or>" in rest:
        if m and op != "<or>":
            raise ConfigError(field_name, f"cannot combine {op} with <or>: {text!r}")
        op = "<or>"
        pieces = [p.strip() for p in rest.split("<or>")]
        if not all(pieces) or len(pieces) < 2:
            raise ConfigError(field_name, f"<or> needs two or more values "
                                          f"(<or> a <or> b): {text!r}")
    else:
        pieces = [rest.strip()]
        if not pieces[0]:
            raise ConfigError(field_name, f"operator {op} needs a value: {text!r}")
    values: tuple[str | int, ...]
    if key == "size":
        values = tuple(_parse_size_value(field_name, p) for p in pieces)
    else:
        if key == "name":
            pieces = [_dev_name(p) for p in pieces]
        elif key == "by_path":
            pieces = [p.removeprefix("/dev/disk/by-path/") for p in pieces]
        elif key in ("wwn", "wwn_with_extension", "wwn_vendor_extension"):
            pieces = [f"0x{p[4:]}" if p.lower().startswith("naa.") else p for p in pieces]
        values = tuple(_norm(p) for p in pieces)
    return Expr(op, values, text)


_TRUE = ("true", "yes", "on", "1", "y", "t")
_FALSE = ("false", "no", "off", "0", "n", "f")


def parse_hints(data: Mapping[str, Any] | None, *, field_name: str = "rootDeviceHints"
                ) -> Hints:
    """The action's ``rootDeviceHints`` object -> :class:`Hints`. Pure. A ConfigError names
    the hint (``rootDeviceHints.size``) for an unknown hint, a wrong type, an operator that
    does not apply or a bad size."""
    if data is None:
        return Hints()
    if not isinstance(data, Mapping):
        raise ConfigError(field_name, f"must be an object, got {type(data).__name__}")
    valid = set(Hints.__dataclass_fields__)
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _ALIASES.get(raw_key, raw_key)
        name = f"{field_name}.{raw_key}"
        if key not in valid:
            raise ConfigError(name, f"unknown hint (valid: {', '.join(sorted(valid))})")
        if value is None:
            continue
        if key == "rotational":
            if isinstance(value, bool):
                values[key] = value
            elif isinstance(value, int) and value in (0, 1):
                values[key] = bool(value)
            elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                values[key] = value.strip().lower() in _TRUE
            else:
                raise ConfigError(name, f"must be a boolean, got {type(value).__name__} "
                                        f"{value!r}")
        elif key == "size":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ConfigError(name, f"must be a size (integer GiB or a string like "
                                        f"\">= 100GiB\"), got {type(value).__name__} {value!r}")
            values[key] = _parse_expr(name, key, value)
        else:
            if not isinstance(value, str):
                raise ConfigError(name, f"must be a string, got {type(value).__name__} "
                                        f"{value!r}")
            values[key] = _parse_expr(name, key, value)
    return Hints(**values)


def suggest(disks: Sequence[Mapping[str, Any]]) -> list[dict[str, str] | None]:
    """For each disk of a stored inventory (the ``disks inventory`` event's ``disks``), the
    shortest ``rootDeviceHints`` naming it alone: its serial, else its WWN, else its by-path
    name, whichever no other disk shares (two disks with one serial: multipath, or a cloning
    accident). None when nothing names it alone. Pure."""
    out: list[dict[str, str] | None] = []
    for disk in disks:
        pick = None
        for key in ("serial", "wwn", "by_path"):
            value = disk.get(key)
            if isinstance(value, str) and value and \
                    sum(1 for d in disks if d.get(key) == value) == 1:
                pick = {key: value}
                break
        out.append(pick)
    return out
