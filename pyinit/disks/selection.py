"""Which disk an action gets: a path as named, a ``/dev/disk/by-…`` name resolved from the
inventory, the disk its hints match, or by default the smallest usable disk; otherwise one line
naming every candidate and why it was refused (:class:`NoDiskError`,
:class:`AmbiguousDiskError`). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyinit.disks.hints import Hints
from pyinit.disks.inventory import Disk, human_size, natural_key, stable_links
from pyinit.errors import DiskError


class NoDiskError(DiskError):
    """No disk matches the hints, or none of the matching ones may be written."""

    def __init__(self, reason: str) -> None:
        super().__init__("selection", reason)


class AmbiguousDiskError(DiskError):
    """An identity hint (serial, wwn, name, by_path, hctl) matches more than one disk."""

    def __init__(self, reason: str, candidates: Sequence[Disk]) -> None:
        self.candidates = tuple(candidates)
        super().__init__("selection", reason)


def refusals(disk: Disk, *, min_size: int | None = None, allow_removable: bool = False,
             allow_mounted: bool = False, allow_boot_medium: bool = False,
             allow_read_only: bool = False) -> list[str]:
    """Why ``disk`` may not be chosen (empty: it may). Pure."""
    why = []
    if disk.read_only and not allow_read_only:
        why.append("read-only")
    if disk.removable and not allow_removable:
        why.append(f"removable ({disk.transport})" if disk.transport == "usb" else "removable")
    if disk.boot_medium and not allow_boot_medium:
        why.append(f"boot medium: {disk.boot_medium}")
    if disk.mounted and not allow_mounted:
        why.append("mounted: " + ", ".join(disk.mounted))
    if disk.holders and not allow_mounted:
        why.append("held by " + ", ".join(disk.holders))
    if min_size is not None and disk.size < min_size:
        why.append(f"too small for the image ({human_size(disk.size)} < {human_size(min_size)})")
    return why


def _list(disks: Iterable[Disk]) -> str:
    return ", ".join(d.summary() for d in disks) or "no disks"


def select_disk(disks: Sequence[Disk], hints: Hints | None = None, *,
                min_size: int | None = None, allow_removable: bool = False,
                allow_mounted: bool = False, allow_boot_medium: bool = False,
                allow_read_only: bool = False) -> Disk:
    """The disk to write. Pure.

    With hints: the disks matching every hint; an identity hint must match exactly one disk
    (among all disks, usable or not: two disks with one serial is multipath or a cloning
    accident, and guessing would be wrong); otherwise the smallest usable match. Without hints:
    the smallest usable disk. Usable: see :func:`refusals`. Ties on size go to the lower name
    (natural order: sda before sdb, nvme2n1 before nvme10n1). Raises :class:`NoDiskError` or
    :class:`AmbiguousDiskError` with one line naming every candidate and why it was refused.
    """
    hints = hints or Hints()
    def why(disk: Disk) -> list[str]:
        return refusals(disk, min_size=min_size, allow_removable=allow_removable,
                        allow_mounted=allow_mounted, allow_boot_medium=allow_boot_medium,
                        allow_read_only=allow_read_only)

    order = sorted(disks, key=lambda d: (d.size, natural_key(d.name)))
    if hints.empty:
        candidates = order
        label = "no usable disk"
    else:
        candidates = [d for d in order if hints.mismatch(d) is None]
        label = f"no usable disk matches rootDeviceHints {hints.describe()}"
        if not candidates:
            have = "; ".join(f"{d.summary()}: {hints.mismatch(d)}"
                             for d in sorted(disks, key=lambda d: natural_key(d.name)))
            raise NoDiskError(f"no disk matches rootDeviceHints {hints.describe()}: have "
                              f"{have or 'no disks'}")
        if hints.identity and len(candidates) > 1:
            raise AmbiguousDiskError(
                f"rootDeviceHints {hints.describe()} name one disk but match "
                f"{len(candidates)}: {_list(candidates)}; add serial or wwn to tell them apart",
                candidates)
    usable = [d for d in candidates if not why(d)]
    if usable:
        return usable[0]
    reasons = "; ".join(f"{d.name} ({human_size(d.size)}) {', '.join(why(d))}"
                        for d in sorted(candidates, key=lambda d: natural_key(d.name)))
    raise NoDiskError(f"{label}: {reasons or 'no disks found'}")


def resolve_device(path: str, disks: Sequence[Disk]) -> str:
    """``/dev/disk/by-id/…`` or ``/dev/disk/by-path/…`` (or ``/dev/sda``) -> ``/dev/<kernel
    name>``, from the inventory, whether or not the links exist. Pure. DiskError when a
    ``/dev/disk/`` name is unknown (naming the ones that exist for the same disk kind)."""
    if not path.startswith("/dev/disk/"):
        return path
    links = stable_links(disks)
    if path in links:
        return f"/dev/{links[path]}"
    kind = path.split("/")[3] if path.count("/") >= 4 else ""
    known = [k for k in links if k.startswith(f"/dev/disk/{kind}/") and "-part" not in k]
    if kind not in ("by-id", "by-path"):
        raise DiskError(path, f"pyinit resolves only /dev/disk/by-id and /dev/disk/by-path "
                              f"without udev, not {kind or 'this'}")
    raise DiskError(path, f"no such disk (known: {', '.join(known) or 'none'})")


@dataclass(frozen=True)
class Choice:
    device: str                     # /dev/<kernel name> (or the path as given)
    how: str                        # for the log: "named", "by-id link", "rootDeviceHints …"
    disk: Disk | None = None        # None: a plain /dev path the inventory does not list


def choose(disks: Sequence[Disk], *, device: str | None, hints: Hints | None,
           min_size: int | None = None, allow_removable: bool = False,
           capture: bool = False) -> Choice:
    """The action's disk. Pure.

    A plain path (``/dev/sda``) is taken as given: the operator named it, and the writer's own
    checks (block device, not mounted, not held) still apply. A ``/dev/disk/by-id`` or
    ``by-path`` name is resolved from the inventory. Hints, or neither (the default rule), go
    through :func:`select_disk`; a capture (``capture``) may read a mounted or read-only disk.
    """
    if device is not None:
        if device.startswith("/dev/disk/"):
            path = resolve_device(device, disks)
            disk = next((d for d in disks if d.path == path), None)
            return Choice(path, f"{device.split('/')[3]} link {device}", disk)
        name = device.removeprefix("/dev/")
        return Choice(device, "named", next((d for d in disks if d.name == name), None))
    disk = select_disk(disks, hints, min_size=min_size, allow_removable=allow_removable,
                       allow_mounted=capture, allow_read_only=capture)
    how = (f"rootDeviceHints {hints.describe()}" if hints is not None and not hints.empty
           else "default rule: smallest usable disk" + (f" of at least {human_size(min_size)}"
                                                         if min_size else ""))
    return Choice(disk.path, how, disk)
