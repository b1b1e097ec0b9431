"""Boot Loader Specification entries (``/boot/loader/entries/*.conf``, Fedora/RHEL): one entry
file (:func:`parse_bls_entry`), and the version order entries and kernels are sorted in
(:func:`version_key`). Pure; :func:`pyinit.bootcfg.find.parse_bls` reads the directory.

No library parses BLS entries for us (hand-written, like the grub.cfg parser).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pyinit.bootcfg.entry import BootEntry


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key comparing like rpmvercmp: digit runs numerically, and newer than letters."""
    return tuple((1, int(s), "") if s.isdigit() else (0, 0, s)
                 for s in re.findall(r"\d+|[A-Za-z]+", version))


def parse_bls_entry(text: str, name: str, env: Mapping[str, str] | None = None,
                    source: str = "") -> BootEntry | None:
    """One BLS ``.conf`` file (``linux``, repeatable ``initrd`` and ``options``); ``$var`` in
    ``options`` comes from grubenv (older Fedora: ``options $kernelopts``). None without a
    ``linux`` key (an ``efi`` entry). Pure."""
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *value = line.split(None, 1)
        keys.setdefault(key, []).append(value[0].strip() if value else "")
    if not keys.get("linux"):
        return None
    variables = dict(env or {})
    unknown: list[str] = []

    def expand(value: str) -> str:
        def sub(m: re.Match[str]) -> str:
            var = m[1] or m[2]
            if var in variables:
                return variables[var]
            unknown.append(var)
            return ""
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)

    initrds = tuple(p for v in keys.get("initrd", []) for p in expand(v).split())
    cmdline = " ".join(" ".join(expand(v).split()) for v in keys.get("options", [])).strip()
    notes = ("unknown variable(s) dropped: " + ", ".join(f"${u}" for u in sorted(set(unknown))),
             ) if unknown else ()
    return BootEntry(kernel=keys["linux"][0], initrds=initrds, cmdline=" ".join(cmdline.split()),
                     title=(keys.get("title") or [name])[0], source=source, menu_path=name,
                     notes=notes)
