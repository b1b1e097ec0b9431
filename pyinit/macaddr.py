"""MAC addresses: the one parser behind ``BOOTIF=``, the action URL, capture names and the server.

Accepted: hex octets separated by ``:`` or ``-`` (one kind throughout), any case, with
surrounding blanks; with ``hwtype=True`` also pxelinux/iPXE's ``01-aa-bb-…`` (hardware type 1,
Ethernet) as ``BOOTIF=`` carries it. Ethernet has 6 octets; ``max_octets=20`` admits the 20-octet
InfiniBand link-layer addresses a NIC may report (they name a capture or an action URL just as
well). The output is lower case with the separator asked for. Pure.
"""

from __future__ import annotations

import re

from pyinit.errors import ConfigError

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2})*$")
_HWTYPE_RE = re.compile(r"^01-[0-9a-f]{2}(?:-[0-9a-f]{2}){5}$")


def normalize(text: str, *, sep: str = "-", max_octets: int = 6,
              hwtype: bool = False) -> str | None:
    """``52:54:00:AB:cd:EF`` -> ``52-54-00-ab-cd-ef`` (``sep``); None if not a MAC."""
    value = text.strip().lower()
    if hwtype and _HWTYPE_RE.match(value):
        value = value[3:]
    if not _MAC_RE.match(value):
        return None
    octets = re.split("[:-]", value)
    if not 6 <= len(octets) <= max_octets:
        return None
    return sep.join(octets)


def parse(text: str, *, field: str = "mac", sep: str = ":", max_octets: int = 6,
          hwtype: bool = False) -> str:
    """:func:`normalize`, raising :class:`ConfigError` naming ``field`` for anything else."""
    mac = normalize(text, sep=sep, max_octets=max_octets, hwtype=hwtype)
    if mac is None:
        raise ConfigError(field, f"not a MAC address: {text!r}")
    return mac


def dashes(mac: str) -> str:
    """The spelling of URLs and file names (``52-54-00-ab-cd-ef``), as BOOTy and plunder use
    it; any link-layer length a NIC reports (up to InfiniBand's 20 octets)."""
    return parse(mac, sep="-", max_octets=20)
