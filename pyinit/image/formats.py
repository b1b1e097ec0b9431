"""Which format an image is, from its first bytes: raw, or a compression the decoders read
(gzip, zstd, xz, bzip2), or a format that is refused rather than written raw (qcow2, vmdk,
vhdx, lz4, lzip, compress, 7z). The one place that knows the magic numbers: the golden-image
builder sniffs its tarballs with it too. Pure."""

from __future__ import annotations

SNIFF_BYTES = 18  # enough for every magic and a whole zstd frame header

FORMATS = ("raw", "gzip", "zstd", "xz", "bzip2")
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
_BZIP2_FIRST = (b"\x31\x41\x59\x26\x53\x59", b"\x17\x72\x45\x38\x50\x90")  # block / end of stream
# Formats that are not raw disk images and that we cannot decode: refused, never written raw.
_REFUSED = ((b"QFI\xfb", "qcow2"), (b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"),
            (b"\x04\x22\x4d\x18", "lz4"), (b"LZIP", "lzip"), (b"\x1f\x9d", "compress"),
            (b"7z\xbc\xaf\x27\x1c", "7z"))


def sniff(head: bytes) -> str:
    """The stream's format from its first bytes (give :data:`SNIFF_BYTES`): one of
    :data:`FORMATS`, or the name of a refused format (``qcow2``, ``lz4``...). Pure."""
    if head.startswith(ZSTD_MAGIC) or (len(head) >= 4 and head[0] & 0xF0 == 0x50
                                       and head[1:4] == b"\x2a\x4d\x18"):  # skippable (pzstd)
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if (head.startswith(BZIP2_MAGIC) and head[3:4] in b"123456789" and len(head) >= 10
            and head[4:10] in _BZIP2_FIRST):
        return "bzip2"
    for magic, name in _REFUSED:
        if head.startswith(magic):
            return name
    return "raw"
