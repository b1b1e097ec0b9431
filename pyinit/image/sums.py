"""``SHA256SUMS``/``SHA512SUMS`` files: their lines (GNU and BSD style), the line for an image,
and the algorithm a SUMS file's name implies. Pure."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

DIGEST_SIZES = {"sha256": 64, "sha512": 128}
_GNU_SUM_RE = re.compile(r"^(\\?)([0-9a-fA-F]{64}|[0-9a-fA-F]{128}) [ *](.+)$")
_BSD_SUM_RE = re.compile(r"^(SHA256|SHA512) ?\((.+)\) ?= ?([0-9a-fA-F]+)$", re.IGNORECASE)


def parse_sums(text: str) -> list[tuple[str, str, str]]:
    """``(algorithm, hex, name)`` for each line of a ``SHA256SUMS``/``SHA512SUMS`` file, in GNU
    (``hex  name``, ``hex *name``, ``\\``-escaped names) or BSD (``SHA256 (name) = hex``)
    style. Other lines (comments, PGP armour) are skipped. Pure."""
    out = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if m := _GNU_SUM_RE.match(line):
            digest, name = m.group(2).lower(), m.group(3)
            if m.group(1):
                name = name.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")
            out.append(("sha256" if len(digest) == 64 else "sha512", digest, name))
        elif m := _BSD_SUM_RE.match(line.strip()):
            algo, digest = m.group(1).lower(), m.group(3).lower()
            if len(digest) == DIGEST_SIZES[algo]:
                out.append((algo, digest, m.group(2)))
    return out


def find_checksum(text: str, name: str, *, algo: str | None = None) -> tuple[str, str]:
    """The (algorithm, hex) for file ``name`` in a SUMS file: an exact name first, else a line
    whose path ends in ``/name``. Raises ValueError when there is none or it is ambiguous. Pure."""
    entries = [e for e in parse_sums(text) if algo is None or e[0] == algo]

    def norm(n: str) -> str:
        return n[2:] if n.startswith("./") else n

    for pick in (lambda n: norm(n) == name, lambda n: n.rsplit("/", 1)[-1] == name):
        found = {(a, d) for a, d, n in entries if pick(n)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            raise ValueError(f"{len(found)} different checksums for {name}")
    what = f"{algo} " if algo else ""
    raise ValueError(f"no {what}checksum line for {name}")


def image_name(url: str) -> str:
    """The file name a SUMS file lists for ``url``. Pure."""
    path: str = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1])


def sums_algorithm(url: str) -> str | None:
    """``SHA512SUMS`` → sha512, ``SHA256SUMS``/``*.sha256`` → sha256, else None. Pure."""
    name = image_name(url).upper()
    for algo in ("SHA512", "SHA256"):
        if algo in name:
            return algo.lower()
    return None
