"""A golden image holds no machine's identity (issue #15, docs/identity.md).

:func:`clean` applies :data:`pyinit.unique.ITEMS` to the tree before the filesystem is made:
each item's :attr:`~pyinit.unique.Item.image` says what happens — ``remove`` (SSH host keys,
random seeds, leases, cloud-init's instance data, journals), ``empty`` (``/etc/machine-id`` stays
as an empty file: systemd makes a new ID on the first boot, and the configure step writes one on
each machine), ``reset`` (the iSCSI initiator name: ``GenerateName=yes`` where Debian's
open-iscsi regenerates from it, removed elsewhere) or ``keep`` (said, not touched). Secrets
pyinit does not own (:data:`pyinit.unique.SHARED_SECRETS`) are reported and left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinit import unique
from pyinit_build.golden import tree

_DEBIAN_ISCSI = "/usr/lib/open-iscsi/startup-checks.sh"


@dataclass
class Cleaned:
    """What :func:`clean` found and did, item by item (paths as the tree names them)."""

    removed: dict[str, list[str]] = field(default_factory=dict)
    emptied: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)
    shared_secrets: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One console line per thing done, for ``pyinit image``'s progress."""
        out = [f"image: per-machine identity: removed {name} ({', '.join(paths)})"
               for name, paths in sorted(self.removed.items())]
        out += [f"image: per-machine identity: emptied {path} (each machine makes its own)"
                for path in self.emptied]
        out += [f"image: per-machine identity: reset {path} (each machine makes its own)"
                for path in self.reset]
        out += [f"image: per-machine identity: kept {name} ({', '.join(paths)}); the configure "
                "step makes it anew on each machine" for name, paths in sorted(self.kept.items())]
        out += [f"image: warning: the rootfs carries {line}; every machine will share it "
                "(left in place: docs/identity.md)" for line in self.shared_secrets]
        return out

    def manifest(self) -> dict[str, object]:
        return {"removed": self.removed, "emptied": self.emptied, "reset": self.reset,
                "kept": self.kept, "shared_secrets": self.shared_secrets}


def find(t: tree.Tree, pattern: str, kind: unique.Kind = "any") -> list[str]:
    """Tree paths matching one catalogue glob (directories resolved inside the tree)."""
    def real(rel: str) -> str:
        parent, _, name = ("/" + rel).rpartition("/")
        return (t.resolve(parent or "/").rstrip("/") + "/" + name) if rel else "/"

    def listdir(rel: str) -> list[str]:
        return [e.path.rsplit("/", 1)[1] for e in t.children(t.resolve("/" + rel))]

    def kind_of(rel: str) -> str:
        entry = t.get(real(rel))
        if entry is None:
            return "missing"
        return {"hardlink": "file", "file": "file", "dir": "dir",
                "symlink": "symlink"}.get(entry.kind, "other")

    return [real(rel) for rel in unique.select(unique.glob(pattern, listdir, kind_of), kind,
                                               kind_of)]


def clean(t: tree.Tree, *, mtime: int) -> Cleaned:
    """Take every per-machine item out of ``t`` (in place); returns what was there."""
    out = Cleaned()
    for item in unique.ITEMS:
        paths = [p for pattern in item.paths for p in find(t, pattern, item.kind)]
        if item.image == "empty":
            for path in paths:
                entry = t.get(path)
                if entry is not None and entry.kind == "file" and entry.size == 0:
                    continue  # already empty: nothing to say
                t.write_file(path, b"", mode=entry.mode if entry else 0o444, mtime=mtime)
                out.emptied.append(path)
        elif item.image == "reset":
            for path in paths:
                if t.file_entry(_DEBIAN_ISCSI) is not None:
                    t.write_file(path, b"GenerateName=yes\n", mode=0o600, mtime=mtime)
                    out.reset.append(path)
                else:
                    t.remove(path)
                    out.removed.setdefault(item.name, []).append(path)
        elif paths and item.image == "keep":
            out.kept[item.name] = paths
        elif paths:
            for path in paths:
                t.remove(path)
            out.removed[item.name] = paths
    for pattern, what in unique.SHARED_SECRETS:
        out.shared_secrets += [f"{path}: {what}" for path in find(t, pattern)]
    return out
