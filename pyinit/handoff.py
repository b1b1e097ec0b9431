"""Hand off to the operating system on disk without going through the firmware again.

* :func:`find_boot_entry` reads what the target's bootloader would boot: GRUB's ``grub.cfg``
  (default entry, submenus, ``search --set=root``, ``(hd0,gpt2)``/``($root)`` prefixes), then
  Boot Loader Specification entries (``/boot/loader/entries/*.conf``, Fedora/RHEL), then the
  ``/boot/vmlinuz`` links or the newest ``/boot/vmlinuz-*`` (Debian, no bootloader config).
  The parsers are pure functions on text; only the ``find_*`` functions read the mounted target.
* :func:`kexec` loads that kernel with kexec_file_load(2) and jumps into it. Everything that can
  fail (missing files, lockdown, signature policy, unknown image format) fails in
  :func:`kexec_load`, before anything is unmounted, so the caller can still apply its failure
  policy with the written disk intact; :func:`kexec_reboot` is the point of no return.
* :func:`switch_root` makes a program in a mounted root PID 1 (``pyinit.exec=1``: the
  entrypoint itself, see :func:`exec_entrypoint`).

No library parses grub.cfg or BLS entries for us (GRUB's own parser is C inside GRUB), hence the
small hand-written lexer below: it understands quoting, ``$var``/``${var}``, ``;``, braces and
if/else chains well enough for what ``grub-mkconfig`` and image builders write; it does not
evaluate conditions or run functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from pyinit import elf, mounts, policy, proc, rootpath, syscalls
from pyinit.errors import PyinitError
from pyinit.log import console, get_logger

log = get_logger("pyinit.handoff")

GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub/grub.cfg", "/grub2/grub.cfg")
GRUBENVS = ("/boot/grub/grubenv", "/boot/grub2/grubenv", "/grub/grubenv", "/grub2/grubenv")
BLS_DIRS = ("/boot/loader/entries", "/loader/entries")
LOOKED_AT = "/boot/grub/grub.cfg, /boot/loader/entries, /boot/vmlinuz*"
BUSYBOX = Path("/bin/busybox")
PSEUDO_MOUNTS = ("/dev", "/proc", "/sys", "/run")  # moved into the new root, as util-linux does


class HandoffError(PyinitError):
    """kexec or switch_root cannot proceed; ``str()`` is the one line for the operator."""


@dataclass(frozen=True)
class BootEntry:
    """A kernel to boot: paths as the boot configuration names them (inside the target root,
    e.g. ``/boot/vmlinuz-6.1.0-9-amd64``; :func:`find_boot_entry` rewrites them to the path
    that exists in the mounted root), and the kernel command line."""

    kernel: str
    initrds: tuple[str, ...] = ()
    cmdline: str = ""
    title: str = ""
    source: str = ""  # "/boot/grub/grub.cfg", "/boot/loader/entries/x.conf", "/boot/vmlinuz"
    menu_path: str = ""  # GRUB: "0", "1>0"; BLS: the entry's file stem
    default: bool = False  # GRUB: the entry ``set default=`` selects
    notes: tuple[str, ...] = ()  # what the parser had to guess or drop

    def describe(self) -> str:
        initrds = " + ".join(self.initrds) or "no initrd"
        return f"{self.kernel} ({initrds}) from {self.source}: {self.cmdline}"


# ---- paths inside the target ----------------------------------------------------------------


def resolve_in(root: Path, path: str) -> Path:
    """``root/path`` as a chroot would see it (:func:`pyinit.rootpath.resolve`)."""
    try:
        return rootpath.resolve(root, path)
    except rootpath.SymlinkLoop as exc:
        raise HandoffError(str(exc)) from exc


def locate(root: Path, path: str) -> str | None:
    """The in-root path under which ``path`` exists as a file: ``path`` itself, else
    ``/boot/path`` (GRUB and BLS paths are relative to the filesystem holding them, which lacks
    the ``/boot`` prefix when /boot is a separate partition)."""
    path = "/" + path.lstrip("/")
    for candidate in (path, "/boot" + path):
        if resolve_in(root, candidate).is_file():
            return candidate
    return None


# ---- GRUB -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Word:
    parts: tuple[tuple[int, str], ...]  # (_LIT, text), (_VAR or _QVAR, variable name)
    brace: str = ""  # "{" or "}" when the word is an unquoted brace


_LIT, _VAR, _QVAR = 0, 1, 2  # literal text, $var, "$var" (no word splitting)


_Command = list[_Word]
_NAME = re.compile(r"[A-Za-z0-9_?#]")


def _lex(text: str) -> list[_Command]:
    """grub.cfg → commands of words. Quotes: '…' literal, "…" with $ expansion and \\ escapes;
    ``#`` starts a comment at a word start; newline and ``;`` end a command."""
    commands: list[_Command] = []
    words: list[_Word] = []
    parts: list[tuple[int, str]] = []
    lit: list[str] = []
    in_word = quoted = False
    i, n = 0, len(text)

    def flush_lit() -> None:
        if lit:
            parts.append((_LIT, "".join(lit)))
            lit.clear()

    def end_word() -> None:
        nonlocal in_word, quoted
        flush_lit()
        if in_word:
            raw = "".join(t for _, t in parts)
            brace = raw if not quoted and raw in ("{", "}") and len(parts) == 1 else ""
            words.append(_Word(tuple(parts), brace))
        parts.clear()
        in_word = quoted = False

    def end_command() -> None:
        end_word()
        if words:
            commands.append(list(words))
            words.clear()

    def read_var(j: int, kind: int) -> int:
        """Parse ``$name``/``${name}`` at text[j] == '$'; returns the index after it."""
        if j + 1 < n and text[j + 1] == "{":
            close = text.find("}", j + 2)
            if close < 0:
                lit.append(text[j:])
                return n
            flush_lit()
            parts.append((kind, text[j + 2:close]))
            return close + 1
        k = j + 1
        while k < n and _NAME.match(text[k]):
            k += 1
        if k == j + 1:
            lit.append("$")
            return j + 1
        flush_lit()
        parts.append((kind, text[j + 1:k]))
        return k

    while i < n:
        ch = text[i]
        if ch in " \t\r":
            end_word()
            i += 1
        elif ch in "\n;":
            end_command()
            i += 1
        elif ch == "#" and not in_word:
            while i < n and text[i] != "\n":
                i += 1
        elif ch == "'":
            close = text.find("'", i + 1)
            close = n if close < 0 else close
            lit.append(text[i + 1:close])
            in_word = quoted = True
            i = close + 1
        elif ch == '"':
            in_word = quoted = True
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$\n':
                    if text[i + 1] != "\n":
                        lit.append(text[i + 1])
                    i += 2
                elif text[i] == "$":
                    i = read_var(i, _QVAR)
                else:
                    lit.append(text[i])
                    i += 1
            i += 1
        elif ch == "\\" and i + 1 < n:
            if text[i + 1] != "\n":
                lit.append(text[i + 1])
                in_word = True
            i += 2
        elif ch == "$":
            in_word = True
            i = read_var(i, _VAR)
        elif ch in "{}" and not in_word:
            end_word()
            lit.append(ch)
            in_word = True
            end_word()
            i += 1
        else:
            lit.append(ch)
            in_word = True
            i += 1
    end_command()
    return commands


@dataclass
class _Menu:
    title: str
    ident: str
    body: list[_Command] = field(default_factory=list)
    children: list[_Menu] | None = None  # a submenu


_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_DEVICE_PREFIX = re.compile(r"^\([^)]*\)")
_LINUX = ("linux", "linuxefi", "linux16")
_INITRD = ("initrd", "initrdefi", "initrd16")
# grub-mkconfig sets menuentry_id_option="--id" when GRUB has feature_menuentry_id, which every
# GRUB since 2.00 has; the chain-aware assignment rule below keeps that first branch.


class _Expander:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.vars: dict[str, str] = dict(env)
        self.unknown: list[str] = []

    def __call__(self, word: _Word) -> str:
        return " ".join(self.split(word))

    def split(self, word: _Word) -> list[str]:
        """The arguments ``word`` expands to: an unquoted ``$var`` is split on whitespace, as
        GRUB does; a word that expands to nothing unquoted disappears."""
        out: list[str] = []
        cur: list[str] = []
        keep = False
        for kind, text in word.parts:
            if kind == _LIT:
                cur.append(text)
                keep = True
            elif text not in self.vars:
                self.unknown.append(text)
            elif kind == _QVAR:
                cur.append(self.vars[text])
                keep = True
            else:
                value = self.vars[text]
                pieces = value.split()
                if not pieces:
                    continue
                if value[:1].isspace() and (cur or keep):
                    out.append("".join(cur))
                    cur, keep = [], False
                cur.append(pieces[0])
                keep = True
                for piece in pieces[1:]:
                    out.append("".join(cur))
                    cur = [piece]
                if value[-1:].isspace():
                    out.append("".join(cur))
                    cur, keep = [], False
        if cur or keep:
            out.append("".join(cur))
        return out


def _menu_args(words: list[str]) -> tuple[str, str]:
    """(title, id) from the words after ``menuentry``/``submenu``."""
    title = ident = ""
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("--class", "--users", "--hotkey", "--id", "--source"):
            if word == "--id" and i + 1 < len(words):
                ident = words[i + 1]
            i += 2
            continue
        if not word.startswith("--") and not title:
            title = word
        i += 1
    return title, ident


def _normalize(commands: list[_Command]) -> list[_Command]:
    """Braces as command boundaries: ``{`` ends the command it opens (``menuentry 'x' {``, also
    when it stood alone on the next line), ``}`` is a command of its own."""
    out: list[_Command] = []
    for cmd in commands:
        seg: _Command = []
        for word in cmd:
            if word.brace == "}":
                if seg:
                    out.append(seg)
                out.append([word])
                seg = []
            elif word.brace == "{":
                if not seg and out and out[-1][-1].brace != "{" and out[-1][0].brace != "}":
                    out[-1] = [*out[-1], word]
                else:
                    out.append([*seg, word])
                seg = []
            else:
                seg.append(word)
        if seg:
            out.append(seg)
    return out


def _body(commands: list[_Command], k: int) -> tuple[list[_Command], int]:
    """The commands of a braced body starting at ``commands[k]``, and the index after its
    closing brace."""
    depth = 0
    body: list[_Command] = []
    while k < len(commands):
        cmd = commands[k]
        k += 1
        if cmd[0].brace == "}":
            if depth == 0:
                break
            depth -= 1
        elif cmd[-1].brace == "{":
            depth += 1
        body.append(cmd)
    return body, k


_KEYWORDS = ("if", "elif", "else", "then", "fi", "do", "done", "while", "for", "until")


def parse_grub_cfg(text: str, env: Mapping[str, str] | None = None) -> list[BootEntry]:
    """The bootable menu entries of a grub.cfg, in menu order (submenu entries flattened, their
    ``title`` as ``Submenu>Entry`` and ``menu_path`` as ``1>0``); the one ``set default=``
    selects has ``default=True``. ``env`` is grubenv (``saved_entry``, ``next_entry``,
    ``kernelopts``). Pure.

    Top-level ``set`` assignments are applied in order without evaluating conditions; inside
    one if/elif/else chain the first branch that assigns a variable a non-empty value wins
    (Debian's ``if [ "${next_entry}" ]; then set default="${next_entry}" else set
    default="0"``). Entry bodies are expanded after the whole file, as GRUB runs them."""
    xp = _Expander(env or {})
    xp.vars.setdefault("menuentry_id_option", "--id")
    menu: list[_Menu] = []
    stack: list[list[_Menu]] = [menu]
    chains: list[set[str]] = []  # per open if-chain: names set non-empty by earlier branches
    branch_set: list[set[str]] = []  # ... and by the current branch
    commands = _normalize(_lex(text))
    k = 0
    while k < len(commands):
        cmd = commands[k]
        k += 1
        if cmd[0].brace == "}":
            if len(stack) > 1:
                stack.pop()
            continue
        head = xp(cmd[0])
        if head in _KEYWORDS:
            if head in ("if", "while", "until", "for"):
                chains.append(set())
                branch_set.append(set())
            elif head in ("elif", "else") and chains:
                chains[-1] |= branch_set[-1]
                branch_set[-1] = set()
            elif head in ("fi", "done") and chains:
                chains.pop()
                branch_set.pop()
            if head in ("then", "else", "do") and len(cmd) > 1:
                commands.insert(k, cmd[1:])
            continue
        if head in ("menuentry", "submenu", "function"):
            title, ident = _menu_args([xp(w) for w in cmd[1:] if not w.brace])
            if head == "submenu":
                children: list[_Menu] = []
                stack[-1].append(_Menu(title, ident, children=children))
                stack.append(children)
                continue
            body, k = _body(commands, k)
            if head == "menuentry":
                stack[-1].append(_Menu(title, ident, body=body))
            continue
        name, value = _assignment(cmd, xp)
        if name is None:
            continue
        if chains and name in chains[-1]:
            continue  # an earlier branch of this if-chain already set it
        if chains and value:
            branch_set[-1].add(name)
        if name == "default" and not value:
            continue
        xp.vars[name] = value
    return _entries(menu, xp)


def _assignment(cmd: _Command, xp: _Expander) -> tuple[str | None, str]:
    """(name, value) for ``set a=b``, ``a=b`` and ``search … --set=var`` commands."""
    words = [xp(w) for w in cmd]
    if words[0] == "set" and len(words) >= 2:
        m = _ASSIGN.match(words[1])
        return (m[1], m[2]) if m else (None, "")
    if words[0] == "search":
        for word in words:
            if word.startswith("--set="):
                return word.removeprefix("--set="), words[-1]
            if word in ("--set", "-s"):
                return "root", words[-1]
        return None, ""
    m = _ASSIGN.match(words[0])
    return (m[1], m[2]) if m and len(words) == 1 else (None, "")


def _quote_arg(arg: str) -> str:
    """Like GRUB's grub_create_loader_cmdline: an argument with a space goes in double quotes."""
    if any(c in arg for c in " \t"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def _grub_path(path: str) -> str:
    return _DEVICE_PREFIX.sub("", path)


def _entry_from_body(item: _Menu, xp: _Expander, title: str, menu_path: str) -> BootEntry | None:
    saved = dict(xp.vars)
    unknown: list[str] = []
    kernel: str | None = None
    args: list[str] = []
    initrds: list[str] = []
    notes: list[str] = []
    try:
        for cmd in item.body:
            if cmd[0].brace:
                continue
            head = xp(cmd[0])
            if head in ("then", "else", "do") and len(cmd) > 1:
                cmd, head = cmd[1:], xp(cmd[1])
            if head in _LINUX and len(cmd) >= 2:
                if kernel is not None:
                    notes.append(f"a second {head} line ignored")
                    continue
                xp.unknown = []
                kernel = _grub_path(xp(cmd[1]))
                args = [a for w in cmd[2:] for a in xp.split(w) if a]
                unknown += xp.unknown
            elif head in _INITRD and len(cmd) >= 2 and not initrds:
                xp.unknown = []
                initrds = [_grub_path(p) for w in cmd[1:] for p in xp.split(w) if p]
                unknown += xp.unknown
            else:
                name, value = _assignment(cmd, xp)
                if name is not None:
                    xp.vars[name] = value
        if unknown:
            notes.append("unknown GRUB variable(s) dropped: "
                         + ", ".join(f"${{{u}}}" for u in sorted(set(unknown))))
    finally:
        xp.vars = saved
    if not kernel:
        return None
    return BootEntry(kernel=kernel, initrds=tuple(initrds),
                     cmdline=" ".join(_quote_arg(a) for a in args), title=title,
                     menu_path=menu_path, notes=tuple(notes))


def _select(menu: list[_Menu], spec: str) -> tuple[str, list[_Menu]] | None:
    """Follow a ``default`` spec (``2``, ``Title``, ``id``, ``1>0``, ``Sub>Title``) to a menu
    item: (menu path, [item]); a submenu resolves to its first entry, as GRUB shows it."""
    level = menu
    path: list[str] = []
    item: _Menu | None = None
    for part in spec.split(">"):
        if item is not None:
            if item.children is None:
                return None
            level = item.children
        idx = next((i for i, m in enumerate(level) if part in (m.title, m.ident)), None)
        if idx is None and part.isdigit() and int(part) < len(level):
            idx = int(part)
        if idx is None:
            return None
        item = level[idx]
        path.append(str(idx))
    while item is not None and item.children:
        item = item.children[0]
        path.append("0")
    if item is None or item.children is not None:
        return None
    return ">".join(path), [item]


def _entries(menu: list[_Menu], xp: _Expander) -> list[BootEntry]:
    out: list[BootEntry] = []

    def walk(items: list[_Menu], prefix: str, titles: str) -> None:
        for i, item in enumerate(items):
            path = f"{prefix}{i}"
            title = f"{titles}{item.title}"
            if item.children is not None:
                walk(item.children, path + ">", title + ">")
                continue
            entry = _entry_from_body(item, xp, title, path)
            if entry is not None:
                out.append(entry)

    walk(menu, "", "")
    if not out:
        return out
    spec = xp.vars.get("default", "0")
    note = ""
    picked = _select(menu, spec)
    chosen = picked[0] if picked else None
    if not any(e.menu_path == chosen for e in out):
        note = (f"default={spec!r} names no bootable entry; using the first one" if picked is None
                else f"default={spec!r} is not a Linux entry; using the first one")
        chosen = out[0].menu_path
    return [replace(e, default=True, notes=(*e.notes, note) if note else e.notes)
            if e.menu_path == chosen else e for e in out]


def parse_grubenv(text: str) -> dict[str, str]:
    """GRUB's environment block (``key=value`` lines, ``#`` padding). Pure."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


# ---- Boot Loader Specification --------------------------------------------------------------

_MACHINE_ID = re.compile(r"^[0-9a-f]{32}-")


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


def parse_bls(root: Path, env: Mapping[str, str] | None = None) -> list[BootEntry]:
    """The BLS entries under ``root`` (``/boot/loader/entries`` or, for a mounted /boot,
    ``/loader/entries``), newest version first (``version`` key, else the file name without
    its machine-id); grubenv's ``saved_entry`` naming one of them puts it first instead."""
    found: list[tuple[tuple[tuple[int, int, str], ...], str, BootEntry]] = []
    for rel in BLS_DIRS:
        directory = resolve_in(root, rel)
        if not directory.is_dir():
            continue
        for conf in sorted(directory.glob("*.conf")):
            try:
                text = conf.read_text(errors="replace")
            except OSError as exc:
                log.warning(f"handoff: {conf}: {exc}")
                continue
            entry = parse_bls_entry(text, conf.stem, env, source=f"{rel}/{conf.name}")
            if entry is None:
                continue
            version = next((line.split(None, 1)[1] for line in text.splitlines()
                            if line.startswith("version ") and len(line.split(None, 1)) > 1),
                           _MACHINE_ID.sub("", conf.stem))
            found.append((version_key(version.strip()), conf.stem, entry))
        if found:
            break
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    entries = [e for _, _, e in found]
    saved = (env or {}).get("saved_entry")
    for i, e in enumerate(entries):
        if saved and e.menu_path == saved:
            entries.insert(0, entries.pop(i))
            break
    return entries


# ---- /boot/vmlinuz* ------------------------------------------------------------------------


def find_plain_kernels(root: Path) -> list[BootEntry]:
    """Kernels without a boot configuration: Debian's ``/boot/vmlinuz`` + ``/boot/initrd.img``
    links (or the older ``/vmlinuz`` ones), then every ``/boot/vmlinuz-<version>`` newest first
    with ``initrd.img-<version>`` or ``initramfs-<version>.img``. The command line comes from
    ``/etc/kernel/cmdline`` when there is one."""
    cmdline_file = resolve_in(root, "/etc/kernel/cmdline")
    cmdline = " ".join(cmdline_file.read_text().split()) if cmdline_file.is_file() else ""
    notes: tuple[str, ...] = () if cmdline else ("no kernel command line found (no boot entry, no "
                                "/etc/kernel/cmdline): give root= in extra_cmdline",)
    out: list[BootEntry] = []
    for base in ("/boot", ""):
        kernel = f"{base}/vmlinuz"
        if resolve_in(root, kernel).is_file():
            initrd = f"{base}/initrd.img"
            initrds: tuple[str, ...] = (initrd,) if resolve_in(root, initrd).is_file() else ()
            out.append(BootEntry(kernel=kernel, initrds=initrds, cmdline=cmdline, title=kernel,
                                 source=kernel, notes=notes))
    boot = resolve_in(root, "/boot")
    versions = sorted((p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*")
                       if p.is_file()), key=version_key, reverse=True) if boot.is_dir() else []
    for version in versions:
        initrds = tuple(f"/boot/{name}" for name in
                        (f"initrd.img-{version}", f"initramfs-{version}.img")
                        if (boot / name).is_file())[:1]
        out.append(BootEntry(kernel=f"/boot/vmlinuz-{version}", initrds=initrds, cmdline=cmdline,
                             title=f"vmlinuz-{version}", source="/boot/vmlinuz-*", notes=notes))
    return out


# ---- choosing one -------------------------------------------------------------------------


def _read(root: Path, rel: str) -> str | None:
    path = resolve_in(root, rel)
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError as exc:
        log.warning(f"handoff: {path}: {exc}")
        return None


def _located(root: Path, entry: BootEntry) -> BootEntry | str:
    """``entry`` with its paths rewritten to where they are in ``root``, or why not."""
    kernel = locate(root, entry.kernel)
    if kernel is None:
        return f"{entry.source}: kernel {entry.kernel} not in {root}"
    initrds = []
    for initrd in entry.initrds:
        where = locate(root, initrd)
        if where is None:
            return f"{entry.source}: initrd {initrd} not in {root}"
        initrds.append(where)
    return replace(entry, kernel=kernel, initrds=tuple(initrds))


def find_boot_entry(root: Path) -> BootEntry:
    """The kernel the target at ``root`` (mounted) would boot: grub.cfg's default entry, else
    the newest BLS entry, else /boot/vmlinuz*. Raises :class:`HandoffError` when none is there.
    """
    env: dict[str, str] = {}
    for rel in GRUBENVS:
        text = _read(root, rel)
        if text is not None:
            env = parse_grubenv(text)
            break
    problems: list[str] = []
    candidates: list[BootEntry] = []
    for rel in GRUB_CFGS:
        text = _read(root, rel)
        if text is None:
            continue
        entries = parse_grub_cfg(text, env)
        entries.sort(key=lambda e: not e.default)  # the default first, the rest in menu order
        candidates += [replace(e, source=rel) for e in entries]
        break
    candidates += parse_bls(root, env)
    candidates += find_plain_kernels(root)
    for entry in candidates:
        located = _located(root, entry)
        if isinstance(located, BootEntry):
            for note in (*problems, *located.notes):
                log.warning(f"handoff: {note}")
            log.info(f"handoff: boot entry {located.title!r}: {located.describe()}")
            return located
        problems.append(located)
    detail = f"; {problems[0]}" if problems else ""
    raise HandoffError(f"kexec: no kernel found in {root} (looked at {LOOKED_AT}){detail}")


# ---- kexec ---------------------------------------------------------------------------------


def concat_initrds(paths: Sequence[Path], out: BinaryIO) -> int:
    """Write ``paths`` one after the other into ``out``, each padded with zeros to a multiple of
    4 bytes as GRUB does (the kernel unpacks concatenated cpio archives, compressed or not,
    and skips the zero padding between them). Returns the bytes written."""
    total = 0
    for path in paths:
        with path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            size = src.tell()
        pad = -size % 4
        out.write(b"\0" * pad)
        total += size + pad
    return total


_KEXEC_HINTS = {
    errno.EPERM: "kernel lockdown (Secure Boot) or kernel.kexec_load_disabled=1? the running "
                 "kernel refuses to load another one",
    errno.EACCES: "refused by the IMA appraisal policy (Secure Boot?)",
    errno.ENOEXEC: "not a kernel image this kernel can load (bzImage for x86_64 expected)",
    errno.ENOSYS: "the running kernel lacks CONFIG_KEXEC_FILE",
    errno.EKEYREJECTED: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.EBADMSG: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.ENOKEY: "its signature is not trusted (CONFIG_KEXEC_SIG_FORCE or lockdown)",
    errno.ENODATA: "it is not signed and the running kernel requires signatures",
    errno.EBUSY: "another kexec load is in progress",
    errno.ENOMEM: "not enough memory for the kernel and initrd",
    errno.EINVAL: "invalid image or command line too long",
    errno.ETXTBSY: "the kernel or initrd file is open for writing",
}


def kexec_load(entry: BootEntry, root: Path, *, extra_cmdline: str = "",
               scratch: Path = Path("/run")) -> str:
    """kexec_file_load(2) ``entry`` (paths inside ``root``); several initrds are concatenated
    into one file in ``scratch`` (tmpfs) first. Touches nothing else: on failure nothing is
    loaded or unmounted. Returns the command line loaded."""
    cmdline = " ".join(f"{entry.cmdline} {extra_cmdline}".split())
    if "root=" not in cmdline:
        log.warning(f"kexec: no root= on the command line {cmdline!r}")
    kernel = resolve_in(root, entry.kernel)
    initrds = [resolve_in(root, p) for p in entry.initrds]
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(kernel, os.O_RDONLY | os.O_CLOEXEC))
            if len(initrds) == 1:
                fds.append(os.open(initrds[0], os.O_RDONLY | os.O_CLOEXEC))
            elif initrds:
                fds.append(_concatenated(initrds, scratch))
        except OSError as exc:
            raise HandoffError(f"kexec: {exc.filename or kernel}: {exc.strerror}") from exc
        initrd_fd = fds[1] if len(fds) > 1 else -1
        flags = 0 if initrd_fd >= 0 else syscalls.KEXEC_FILE_NO_INITRAMFS
        log.info(f"kexec: loading {entry.kernel} ({' + '.join(entry.initrds) or 'no initrd'}) "
                 f"from {root}: {cmdline}")
        try:
            syscalls.kexec_file_load(fds[0], initrd_fd, cmdline, flags)
        except OSError as exc:
            hint = _KEXEC_HINTS.get(exc.errno or 0, "see dmesg")
            raise HandoffError(f"kexec_file_load: {os.strerror(exc.errno or 0)} — {hint} "
                               f"({entry.kernel} in {root})") from exc
    finally:
        for fd in fds:
            os.close(fd)
    return cmdline


def _concatenated(paths: Sequence[Path], scratch: Path) -> int:
    """A read-only fd on the concatenation of ``paths`` (the file itself is already unlinked:
    kexec_file_load refuses files open for writing, ETXTBSY)."""
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="kexec-initrd-", dir=scratch)
    try:
        with os.fdopen(fd, "wb") as out:
            size = concat_initrds(paths, out)
        log.info(f"kexec: {len(paths)} initrds concatenated ({size} bytes)")
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.unlink(name)


def kexec_reboot(mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """The point of no return: sync, unmount everything (the target too), reboot(2) into the
    loaded kernel. Returns only by raising, if reboot(2) itself failed. (The handoff step has
    said ``pyinit: kexec now``.)"""
    policy.quiesce(mounts_file)
    try:
        syscalls.reboot(syscalls.LINUX_REBOOT_CMD_KEXEC)
    except OSError as exc:
        raise HandoffError(f"reboot(LINUX_REBOOT_CMD_KEXEC): {exc.strerror} (the kernel was "
                           "loaded; filesystems are already unmounted)") from exc


def kexec(entry: BootEntry, root: Path, *, extra_cmdline: str = "",
          scratch: Path = Path("/run"), mounts_file: Path = Path("/proc/self/mounts")) -> None:
    """:func:`kexec_load` then :func:`kexec_reboot`. Raises :class:`HandoffError`; when it
    comes from the load, nothing has been unmounted."""
    kexec_load(entry, root, extra_cmdline=extra_cmdline, scratch=scratch)
    kexec_reboot(mounts_file)


# ---- switch_root ---------------------------------------------------------------------------


def read_mounts(mounts_file: Path) -> list[tuple[str, str]]:
    """(mount point, fstype) per mount, in mount order."""
    return [(m.target, m.fstype) for m in mounts.parse(mounts_file.read_text())]


def _elf_interpreter(path: Path) -> str | None:
    """PT_INTERP of an ELF64 executable, or None (static, not ELF, unreadable, malformed)."""
    try:
        info = elf.read_info(path)
    except (OSError, elf.ElfError):
        return None
    return info.interp if info is not None else None


def _program(root: Path, name: str, what: str, depth: int = 0) -> str:
    """Check that ``name`` can be exec'd inside ``root``: it exists (symlinks followed inside
    ``root``), is a regular executable file, and so are its ``#!`` or ELF interpreter. A bare
    name is looked up in PATH inside ``root``. Returns the absolute in-root path."""
    if "/" not in name:
        for directory in proc.SAFE_PATH.split(":"):
            if resolve_in(root, f"{directory}/{name}").is_file():
                name = f"{directory}/{name}"
                break
        else:
            raise HandoffError(f"switch_root: {what} {name} not found in PATH inside {root}")
    if not name.startswith("/"):
        raise HandoffError(f"switch_root: {what} {name} must be an absolute path")
    real = resolve_in(root, name)
    if not real.exists():
        link = root / name.lstrip("/")
        if link.is_symlink() or real != link:
            raise HandoffError(f"switch_root: {what} {name} in {root} is a dangling symlink "
                               f"(-> /{real.relative_to(root)}, not there)")
        raise HandoffError(f"switch_root: {what} {name} not found in {root}")
    if not real.is_file():
        raise HandoffError(f"switch_root: {what} {name} in {root} is not a regular file")
    if not os.stat(real).st_mode & 0o111:
        raise HandoffError(f"switch_root: {what} {name} in {root} is not executable")
    if depth < 4:
        with real.open("rb") as f:
            first = f.readline(256)
        interp = None
        if first.startswith(b"#!"):
            words = first[2:].decode(errors="replace").split()
            interp = words[0] if words else None
        else:
            interp = _elf_interpreter(real)
        if interp:
            _program(root, interp, f"interpreter of {name}:", depth + 1)
    return name


def _is_mount(path: Path) -> bool:
    return os.path.ismount(path)


def _is_pid1() -> bool:
    return os.getpid() == 1


def check_switch_root(root: Path, init: str, *, initramfs: Path = Path("/"),
                      busybox: Path = BUSYBOX,
                      mounts_file: Path = Path("/proc/self/mounts")) -> str:
    """Everything that can make a switch_root fail, checked while failing is harmless: we are
    PID 1 on an initramfs (busybox's own sanity checks: ramfs/tmpfs root with a regular
    ``/init``), busybox and its switch_root applet are there, ``root`` is a mount point, and
    ``init`` can be exec'd inside it. Returns init's absolute in-root path."""
    if not _is_pid1():
        raise HandoffError(f"switch_root: only PID 1 can switch root (this is PID {os.getpid()})")
    mounts = read_mounts(mounts_file)
    top = str(root.resolve()) if root.is_absolute() else str(root)
    if top == "/" or top not in {m for m, _ in mounts}:
        raise HandoffError(f"switch_root: {root} is not a mount point (mount the new root "
                           "there first)")
    fstype = next((t for m, t in reversed(mounts) if m == "/"), "")
    if fstype not in ("rootfs", "ramfs", "tmpfs"):
        raise HandoffError(f"switch_root: / is {fstype or 'unknown'}, not the initramfs "
                           "(rootfs/ramfs/tmpfs): refusing to delete its contents")
    if not (initramfs / "init").is_file():
        raise HandoffError(f"switch_root: {initramfs / 'init'} is not a regular file "
                           "(busybox switch_root refuses to run)")
    bb = initramfs / str(busybox).lstrip("/")
    if not bb.is_file() or not os.access(bb, os.X_OK):
        raise HandoffError(f"switch_root: {busybox} missing or not executable")
    if not any((initramfs / d / "switch_root").exists() for d in ("bin", "sbin", "usr/bin",
                                                                  "usr/sbin")):
        raise HandoffError(f"switch_root: {busybox} has no switch_root applet")
    return _program(root, init, "init")


def _move_pseudo(root: Path) -> list[str]:
    """MS_MOVE /dev, /proc, /sys, /run under ``root``, skipping any already mounted there (a
    ginit bind). Returns what moved, for :func:`_move_back`."""
    moved: list[str] = []
    for src in PSEUDO_MOUNTS:
        dst = root / src.lstrip("/")
        if _is_mount(dst) or not _is_mount(Path(src)):
            continue
        try:
            dst.mkdir(mode=0o755, exist_ok=True)
            syscalls.mount(src, str(dst), None, syscalls.MS_MOVE)
        except OSError as exc:
            log.warning(f"switch_root: mount --move {src} {dst}: {exc}")
            continue
        moved.append(src)
    return moved


def _move_back(root: Path, moved: Iterable[str]) -> None:
    for src in moved:
        try:
            syscalls.mount(str(root / src.lstrip("/")), src, None, syscalls.MS_MOVE)
        except OSError as exc:
            log.error(f"switch_root: moving {src} back failed: {exc}")


def _default_signals() -> dict[signal.Signals, Any]:
    """Reset ignored signals to their defaults (SIG_IGN survives execve: Python ignores SIGPIPE
    and SIGXFSZ, pyinit SIGINT). Returns the previous dispositions."""
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGHUP, signal.SIGTTOU, signal.SIGTTIN, signal.SIGTSTP):
        handler = signal.getsignal(sig)
        if handler is signal.SIG_IGN:
            previous[sig] = signal.signal(sig, signal.SIG_DFL)
    return previous


def switch_root(root: Path, init: str = "/sbin/init", argv: Sequence[str] = (), *,
                env: Mapping[str, str] | None = None, controlling_tty: bool = False,
                busybox: Path = BUSYBOX, mounts_file: Path = Path("/proc/self/mounts"),
                initramfs: Path = Path("/")) -> NoReturn:
    """Make ``init`` (a path inside the mounted ``root``) PID 1 with ``argv`` as its arguments.
    PID 1 only. Raises :class:`HandoffError` when something is wrong, before anything changed.

    This execs busybox ``switch_root`` rather than doing it in Python: after the exec nothing
    depends on the initramfs any more, so busybox can delete it (freeing its RAM: pyinit's
    bundle is most of it) and then ``mount --move`` the root, chroot and exec init; Python doing
    the same would be deleting the bundle it still imports from. Everything busybox checks (and
    would die on, panicking the kernel as PID 1) is checked here first, along with init itself
    and its interpreter, inside the target. /dev, /proc, /sys and /run are moved into the root
    first, as util-linux switch_root does (busybox's does not); a mount already there (ginit's
    binds) is kept. ``env`` defaults to :func:`proc.clean_env` (no PyInstaller variables).
    ``controlling_tty``: start a session with stdin (the console) as controlling terminal, as
    ginit's ``setsid -c`` does for a child entrypoint (an init such as systemd sets up its own).
    """
    init = check_switch_root(root, init, initramfs=initramfs, busybox=busybox,
                             mounts_file=mounts_file)
    args = [str(busybox), "switch_root", str(root), init, *argv]
    environment = dict(env) if env is not None else proc.clean_env()
    console(f"pyinit: switch_root into {root}, exec {' '.join([init, *argv])}")
    log.info(f"+ {' '.join(args)}")
    sys.stdout.flush()
    sys.stderr.flush()
    # The point of no return starts here; an execve failure still puts things back.
    moved = _move_pseudo(root)
    previous = _default_signals()
    try:
        if controlling_tty:
            with contextlib.suppress(OSError):  # EPERM: already a session leader
                os.setsid()
            try:
                syscalls.set_controlling_tty(0)
            except OSError as exc:
                log.warning(f"switch_root: no controlling terminal: {exc}")
        os.execve(busybox, args, environment)
    except OSError as exc:
        _move_back(root, reversed(moved))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise HandoffError(f"switch_root: exec {busybox}: {exc.strerror}") from exc


def exec_entrypoint(root: Path, argv: Sequence[str], *, busybox: Path = BUSYBOX,
                    mounts_file: Path = Path("/proc/self/mounts"),
                    initramfs: Path = Path("/")) -> NoReturn:
    """ginit ``pyinit.exec=1``: the entrypoint replaces pyinit as PID 1 inside ``root`` (already
    mounted by :func:`pyinit.ginit.mount_root`), with the console as its controlling terminal
    and the same environment a child entrypoint gets (HOME=/root, TERM=linux, no PyInstaller
    variables). A bare ``argv[0]`` is looked up in PATH inside ``root``."""
    if not argv:
        raise HandoffError("switch_root: empty entrypoint")
    env = proc.clean_env({"HOME": "/root", "TERM": "linux"})
    switch_root(root, argv[0], argv[1:], env=env, controlling_tty=True, busybox=busybox,
                mounts_file=mounts_file, initramfs=initramfs)
