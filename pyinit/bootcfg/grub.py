"""GRUB's boot configuration: ``grub.cfg`` entries (:func:`parse_grub_cfg`) and the environment
block (:func:`parse_grubenv`). Pure.

No library parses grub.cfg for us (GRUB's own parser is C inside GRUB), hence the small
hand-written lexer below: it understands quoting, ``$var``/``${var}``, ``;``, braces and
if/else chains well enough for what ``grub-mkconfig`` and image builders write; it does not
evaluate conditions or run functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pyinit.bootcfg.entry import BootEntry


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
