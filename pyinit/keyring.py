"""The trust root of signed images: an OpenPGP keyring as gpgv reads it (binary packets), baked
into the initramfs (``pyinit initramfs --keyring``) or given on the command line
(``pyinit.keyring=``). docs/security.md "The signature chain".

Pure but for :func:`resolve`: armour is removed and the packets are walked here (RFC 4880 §4.2
headers only, no cryptography), so a keyring that is not one fails at build time or when the
command line is parsed, with one line, rather than as gpgv's ``NO_PUBKEY`` on every image.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from pyinit import inline

BAKED = Path("/etc/pyinit/keyring.gpg")  # pyinit initramfs --keyring puts it here
INLINE = Path("/run/pyinit/keyring.gpg")  # pyinit.keyring=base64:… is written here for gpgv
ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_RE = re.compile(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY "
                       rb"BLOCK-----", re.S)
TAG_PUBLIC_KEY, TAG_SECRET_KEY = 6, 5
TAG_NAMES = {1: "an encrypted session key", 2: "a signature", 3: "a symmetric session key",
             5: "a secret key", 7: "a secret subkey", 8: "compressed data",
             11: "literal data"}


def dearmor(data: bytes) -> bytes:
    """The binary packets of an ASCII-armoured public key block (several blocks are joined);
    binary input comes back as it is. Raises ValueError. Pure."""
    if ARMOR_BEGIN not in data:
        return data
    out = b""
    for m in _ARMOR_RE.finditer(data):
        body = m.group(1).replace(b"\r", b"")
        # armour headers (Version: …) end at the first empty line, if there are any
        if b"\n\n" in body and b":" in body.split(b"\n\n", 1)[0]:
            body = body.split(b"\n\n", 1)[1]
        lines = [ln.strip() for ln in body.split(b"\n") if ln.strip()]
        lines = [ln for ln in lines if not (ln.startswith(b"=") and len(ln) == 5)]  # CRC24
        try:
            out += base64.b64decode(b"".join(lines), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"armoured key block is not valid base64: {exc}") from exc
    if not out:
        raise ValueError("armoured key block without an END line")
    return out


def packets(data: bytes) -> list[tuple[int, int]]:
    """``(tag, length)`` of each OpenPGP packet in ``data`` (old and new format headers,
    RFC 4880 §4.2). Raises ValueError at the first byte that is no packet header or a packet
    running past the end. Pure."""
    out: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        ctb = data[pos]
        if not ctb & 0x80:
            raise ValueError(f"byte {pos} (0x{ctb:02x}) is not an OpenPGP packet header")
        if ctb & 0x40:  # new format
            tag = ctb & 0x3F
            if pos + 2 > end:
                raise ValueError(f"packet header at byte {pos} is cut off")
            first = data[pos + 1]
            if first < 192:
                length, hdr = first, 2
            elif first < 224:
                if pos + 3 > end:
                    raise ValueError(f"packet header at byte {pos} is cut off")
                length, hdr = ((first - 192) << 8) + data[pos + 2] + 192, 3
            elif first == 255:
                if pos + 6 > end:
                    raise ValueError(f"packet header at byte {pos} is cut off")
                length, hdr = int.from_bytes(data[pos + 2:pos + 6], "big"), 6
            else:
                raise ValueError(f"partial-length packet at byte {pos}: not a keyring")
        else:  # old format
            tag, kind = (ctb >> 2) & 0x0F, ctb & 3
            if kind == 3:
                raise ValueError(f"indeterminate-length packet at byte {pos}: not a keyring")
            size = (1, 2, 4)[kind]
            if pos + 1 + size > end:
                raise ValueError(f"packet header at byte {pos} is cut off")
            length, hdr = int.from_bytes(data[pos + 1:pos + 1 + size], "big"), 1 + size
        if pos + hdr + length > end:
            raise ValueError(f"packet at byte {pos} ({length} bytes) runs past the end "
                             f"({end} bytes): cut short?")
        out.append((tag, length))
        pos += hdr + length
    return out


def check_keyring(data: bytes) -> tuple[bytes, int]:
    """``(binary keyring, number of public keys)`` for armoured or binary OpenPGP public keys
    (``gpg --export``). Raises ValueError naming what is wrong: not OpenPGP, cut short, a
    secret key, a signature, no public key at all. Pure."""
    binary = dearmor(data)
    if not binary:
        raise ValueError("empty")
    found = packets(binary)
    if found[0][0] != TAG_PUBLIC_KEY:
        what = TAG_NAMES.get(found[0][0], f"packet type {found[0][0]}")
        raise ValueError(f"starts with {what}, not a public key (export one with "
                         f"`gpg --export KEY`)")
    if any(tag in (TAG_SECRET_KEY, 7) for tag, _ in found):
        raise ValueError("holds a secret key: give the public keys only (`gpg --export`)")
    return binary, sum(1 for tag, _ in found if tag == TAG_PUBLIC_KEY)


def parse_inline(value: str) -> tuple[str | None, bytes | None]:
    """``pyinit.keyring=``: ``(path, None)`` for an absolute path in the initramfs, or
    ``(None, keyring)`` for ``base64:<binary or armoured keyring>`` (checked). Raises
    ValueError. Pure."""
    path, raw = inline.path_or_bytes(value, example=str(BAKED), inline="base64 of `gpg --export "
                                     "--export-options export-minimal KEY`")
    if raw is None:
        return path, None
    try:
        binary, _ = check_keyring(raw)
    except ValueError as exc:
        raise ValueError(f"the {len(raw)} decoded bytes are not an OpenPGP keyring: "
                         f"{exc}") from exc
    return None, binary


def resolve(path: str | None, inline: bytes | None, *, baked: Path = BAKED,
            run: Path = INLINE) -> Path | None:
    """The keyring file gpgv is given, or None when no keyring is configured.

    The baked keyring is the trust root: a command line that names another one while a
    keyring is baked is refused (ValueError), because the command line comes from whoever
    serves PXE — the party a signature protects against. An inline keyring is written to
    ``run``; a path is checked like a baked one."""
    if (path or inline) and baked.exists():
        raise ValueError(f"this initramfs has a baked keyring ({baked}): it is the trust "
                         f"root and the command line may not replace it")
    if inline is not None:
        run.parent.mkdir(parents=True, exist_ok=True)
        run.write_bytes(inline)
        return run
    chosen = Path(path) if path else baked if baked.exists() else None
    if chosen is None:
        return None
    try:
        check_keyring(chosen.read_bytes())
    except OSError as exc:
        raise ValueError(f"{chosen}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{chosen} is not an OpenPGP keyring: {exc}") from exc
    return chosen
