"""pyinit.image.sums: SHA256SUMS/SHA512SUMS files."""

from __future__ import annotations

import pytest

from pyinit.image.sums import find_checksum, image_name, parse_sums, sums_algorithm

SUMS = f"""\
# comment
{'a' * 64}  other.img.zst
{'B' * 64} *disk.img.zst
{'c' * 64}  ./sub/nested.img
-----BEGIN PGP SIGNATURE-----
SHA256 (bsd.img) = {'d' * 64}
SHA512 (big.img) = {'e' * 128}
{'f' * 64}  big.img
"""


def test_parse_sums() -> None:
    entries = parse_sums(SUMS)
    assert ("sha256", "b" * 64, "disk.img.zst") in entries
    assert ("sha256", "d" * 64, "bsd.img") in entries
    assert ("sha512", "e" * 128, "big.img") in entries
    assert len(entries) == 6


def test_find_checksum() -> None:
    assert find_checksum(SUMS, "disk.img.zst") == ("sha256", "b" * 64)
    assert find_checksum(SUMS, "nested.img") == ("sha256", "c" * 64)
    assert find_checksum(SUMS, "bsd.img", algo="sha256") == ("sha256", "d" * 64)
    with pytest.raises(ValueError, match=r"2 different checksums for big\.img"):
        find_checksum(SUMS, "big.img")
    assert find_checksum(SUMS, "big.img", algo="sha512") == ("sha512", "e" * 128)
    with pytest.raises(ValueError, match=r"no sha256 checksum line for missing\.img"):
        find_checksum(SUMS, "missing.img", algo="sha256")


def test_gnu_escaped_names() -> None:
    assert parse_sums(f"\\{'a' * 64}  back\\\\slash\\nnewline") == [
        ("sha256", "a" * 64, "back\\slash\nnewline")]


def test_names_and_algorithms_from_urls() -> None:
    assert image_name("http://h/images/a%20b.img.zst?x=1") == "a b.img.zst"
    assert sums_algorithm("http://h/SHA512SUMS") == "sha512"
    assert sums_algorithm("http://h/a.img.zst.sha256") == "sha256"
    assert sums_algorithm("http://h/CHECKSUMS") is None
