"""Signed images (issue #17) through the real write pipeline and the real gpgv: keys made by the
real gpg (tests/gpgkeys.py), images served by tests.faultserver on 127.0.0.1, written onto a
disk file. Each refusal is checked on the disk's bytes afterwards: untouched when it was refused
before the first byte (precheck, signed SUMS), the first and last MiB zeroed when the stream's
signature failed (the head is never written before gpgv said VALIDSIG)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard

from pyinit.errors import PyinitError, SignatureError
from pyinit.image.write import WriteRequest, WriteResult, write_image
from pyinit.keyring import check_keyring, resolve
from pyinit.units import MIB
from tests.faultserver import Faults, FaultServer
from tests.gpgkeys import Keys, gpg_keys  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

DISK = 12 * MIB
JUNK = b"\xaa"


def raw_image(size: int = 8 * MIB) -> bytes:
    """A recognisable image: a fake MBR signature in its first sector, data throughout."""
    block = hashlib.sha256(b"pyinit").digest() * 128  # 4 KiB
    data = bytearray(block * (size // len(block)))
    data[510:512] = b"\x55\xaa"
    return bytes(data)


RAW = raw_image()
ZST = zstandard.ZstdCompressor(level=1).compress(RAW)


@dataclass
class Rig:
    keys: Keys
    root: Path
    server: FaultServer
    disk: Path
    keyring: Path

    def serve(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.server.url(name)

    def write(self, url: str, *, keyring: Path | str | None = "default",
              **kw: Any) -> WriteResult:
        ring = self.keyring if keyring == "default" else keyring
        req = WriteRequest(url=url, device=str(self.disk),
                           keyring=str(ring) if ring is not None else None, **kw)
        with requests.Session() as session:
            return write_image(req, session=session, allow_regular_file=True, max_attempts=3,
                               delays=lambda: iter(lambda: 0.0, None), progress_interval=60)

    def refused(self, url: str, *needles: str, touched: bool, **kw: Any) -> SignatureError:
        with pytest.raises(SignatureError) as info:
            self.write(url, **kw)
        err = info.value
        line = str(err)
        assert "\n" not in line
        for needle in needles:
            assert needle in line, line
        data = self.disk.read_bytes()
        if touched:  # the stream ran: whatever it wrote, the image's head never landed, and a
            # disk the write changed has both ends wiped (gpgv's verdict may come before the
            # writer's first block: then the disk is as it was)
            assert data[:MIB] != RAW[:MIB]
            if data != JUNK * DISK:
                assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)
        else:
            assert data == JUNK * DISK, "refused before the first byte, yet the disk changed"
        return err


@pytest.fixture
def rig(tmp_path: Path, gpg_keys: Keys) -> Iterator[Rig]:  # noqa: F811
    root = tmp_path / "srv"
    root.mkdir()
    disk = tmp_path / "disk.img"
    disk.write_bytes(JUNK * DISK)
    keyring = gpg_keys.keyring(tmp_path / "keyring.gpg", "good")
    with FaultServer(root) as server:
        yield Rig(gpg_keys, root, server, disk, keyring)


def assert_written(rig: Rig, res: WriteResult) -> None:
    data = rig.disk.read_bytes()
    assert data[:len(RAW)] == RAW
    assert res.signer == rig.keys.fingerprint("good")


# ---- the image's own signature, verified with the stream ------------------------------------


def test_good_signature_writes_and_reports_the_signer(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "good"))
    res = rig.write(url)
    assert_written(rig, res)
    assert res.format == "zstd"


def test_armoured_signature_at_an_explicit_url(rig: Rig) -> None:
    url = rig.serve("x.img", RAW)
    (rig.root / "signatures").mkdir()
    sig = rig.serve("signatures/x.asc", rig.keys.sign(RAW, "good", armor=True))
    assert_written(rig, rig.write(url, signature_url=sig))


def test_signature_over_other_bytes_leaves_the_head_unwritten(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST[:-1] + b"\0", "good"))
    rig.refused(url, "bad signature", rig.keys.keyid("good"), "not what was signed",
                touched=True)


def test_wrong_key_is_refused_before_the_disk(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "other"))
    rig.refused(url, f"signed by key {rig.keys.keyid('other')}, which is not in the keyring",
                touched=False)


def test_missing_signature_is_refused_before_the_disk(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    err = rig.refused(url, "no signature", "x.img.zst.sig answers HTTP 404", touched=False)
    assert err.url == url


def test_expired_key_is_refused_before_the_disk(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "expired"))
    ring = rig.keys.keyring(rig.keyring.with_name("expired.gpg"), "expired")
    rig.refused(url, f"key {rig.keys.keyid('expired')}, which expired on 2025-01-02",
                touched=False, keyring=ring)


def test_revoked_key_is_refused_with_the_stream(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "revoked"))
    ring = rig.keys.keyring(rig.keyring.with_name("revoked.gpg"), "revoked")
    # gpgv tells a revoked key only once the data matched: the head stays unwritten
    rig.refused(url, "which is revoked", touched=True, keyring=ring)


def test_expired_signature_is_refused_with_the_stream(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "old", expiring=True))
    ring = rig.keys.keyring(rig.keyring.with_name("old.gpg"), "old")
    # the key is valid, the signature made in 2025 expired a day later: gpgv tells only once
    # the data matched (and exits 1; an expired key's good signature exits 0: never the code)
    rig.refused(url, "the signature expired on 2025-01-02", rig.keys.keyid("old"),
                touched=True, keyring=ring)


def test_garbage_signature_file(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", b"<html>not found</html>\n")
    rig.refused(url, "is not an OpenPGP signature", touched=False)


def test_a_restarted_stream_restarts_the_verifier(rig: Rig) -> None:
    url = rig.serve("x.img", RAW)
    rig.serve("x.img.sig", rig.keys.sign(RAW, "good"))
    rig.server.set_faults("x.img", Faults(drop_at=[3 * MIB], ignore_range=True))
    res = rig.write(url)
    assert res.restarts == 1
    assert_written(rig, res)


def test_key_rotation_two_keys_in_the_keyring(rig: Rig) -> None:
    ring = rig.keys.keyring(rig.keyring.with_name("both.gpg"), "other", "good")
    url = rig.serve("x.img.zst", ZST)
    rig.serve("x.img.zst.sig", rig.keys.sign(ZST, "good"))
    assert_written(rig, rig.write(url, keyring=ring))


def test_no_keyring_and_a_signature_url_is_refused(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    rig.refused(url, "signatureURL is set but no keyring is configured", touched=False,
                keyring=None, signature_url=url + ".sig")


def test_no_keyring_no_signature_writes_as_before(rig: Rig) -> None:
    res = rig.write(rig.serve("x.img.zst", ZST), keyring=None)
    assert res.signer is None
    assert rig.disk.read_bytes()[:len(RAW)] == RAW


# ---- a signed checksum file, checked before streaming ---------------------------------------


def sums(*pairs: tuple[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in pairs).encode()


def test_signed_sums_good(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    text = sums(("other.img", b"x"), ("x.img.zst", ZST))
    sums_url = rig.serve("SHA256SUMS", text)
    rig.serve("SHA256SUMS.gpg", rig.keys.sign(text, "good"))
    res = rig.write(url, checksum_url=sums_url)  # no x.img.zst.sig needed
    assert res.checksum_verified == "sha256"
    assert_written(rig, res)


def test_signed_sums_bad_is_refused_before_the_disk(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    text = sums(("x.img.zst", ZST))
    sums_url = rig.serve("SHA256SUMS", text)
    rig.serve("SHA256SUMS.gpg", rig.keys.sign(text.replace(b"x.img", b"y.img"), "good"))
    err = rig.refused(url, "bad signature", "SHA256SUMS.gpg", touched=False,
                      checksum_url=sums_url)
    assert err.url == sums_url


def test_unsigned_sums_is_refused(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    sums_url = rig.serve("SHA256SUMS", sums(("x.img.zst", ZST)))
    rig.refused(url, "SHA256SUMS.gpg answers HTTP 404", touched=False, checksum_url=sums_url)


def test_signed_sums_not_listing_the_image(rig: Rig) -> None:
    url = rig.serve("x.img.zst", ZST)
    text = sums(("other.img", ZST))
    sums_url = rig.serve("SHA256SUMS", text)
    rig.serve("SHA256SUMS.gpg", rig.keys.sign(text, "good"))
    with pytest.raises(PyinitError, match=r"no sha256 checksum line for x\.img\.zst"):
        rig.write(url, checksum_url=sums_url)
    assert rig.disk.read_bytes() == JUNK * DISK


def test_signed_sums_wrong_image_bytes_wipes(rig: Rig) -> None:
    """The SUMS file is signed, the image served is another: the checksum the signature
    vouches for catches it at the end, before the head."""
    url = rig.serve("x.img.zst", ZST)
    text = sums(("x.img.zst", ZST + b"\0"))
    sums_url = rig.serve("SHA256SUMS", text)
    rig.serve("SHA256SUMS.gpg", rig.keys.sign(text, "good"))
    with pytest.raises(PyinitError, match="checksum mismatch"):
        rig.write(url, checksum_url=sums_url)
    data = rig.disk.read_bytes()
    assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)


# ---- the keyring ---------------------------------------------------------------------------


def test_keyring_that_does_not_parse(tmp_path: Path, gpg_keys: Keys) -> None:  # noqa: F811
    junk = tmp_path / "keyring.gpg"
    junk.write_bytes(b"this is not a keyring\n")
    with pytest.raises(ValueError, match="is not an OpenPGP keyring: byte 0"):
        resolve(str(junk), None, baked=tmp_path / "none")
    with pytest.raises(ValueError, match="holds a secret key"):
        check_keyring(gpg_keys.export("good") + _secret(gpg_keys))
    # armoured and binary exports of real keys both parse, to the same binary keyring
    armoured = gpg_keys.export("good", "other", armor=True)
    assert check_keyring(armoured) == (gpg_keys.export("good", "other"), 2)


def _secret(keys: Keys) -> bytes:
    from tests.gpgkeys import gpg
    return gpg(keys.home, "--export-secret-keys", keys.uid("other"))


def test_baked_keyring_cannot_be_replaced_from_the_command_line(tmp_path: Path,
                                                               gpg_keys: Keys) -> None:  # noqa: F811
    baked = gpg_keys.keyring(tmp_path / "baked.gpg", "good")
    with pytest.raises(ValueError, match="the command line may not replace it"):
        resolve(None, gpg_keys.export("other"), baked=baked, run=tmp_path / "run.gpg")
    assert resolve(None, None, baked=baked) == baked
    run = resolve(None, gpg_keys.export("other"), baked=tmp_path / "none",
                  run=tmp_path / "run" / "keyring.gpg")
    assert run is not None and run.read_bytes() == gpg_keys.export("other")



# ---- pyinit image --sign-key: what the builder signs is what the writer checks ------------------


def test_image_sign_key_outputs_verify_in_the_writer(rig: Rig) -> None:
    from pyinit_build.errors import BuildError
    from pyinit_build.golden import sign

    out = rig.root / "golden.img"
    out.write_bytes(RAW)
    (rig.root / "golden.img.zst").write_bytes(ZST)
    (rig.root / "golden.img.SHA256SUMS").write_bytes(sums(("golden.img", RAW),
                                                          ("golden.img.zst", ZST)))
    key = rig.keys.uid("good")
    assert sign.signing_key(key, homedir=rig.keys.home) == rig.keys.fingerprint("good")
    made = sign.sign_outputs(out, ["golden.img", "golden.img.zst"], key,
                             homedir=rig.keys.home)
    assert [p.name for p in made] == ["golden.img.sig", "golden.img.zst.sig",
                                      "golden.img.SHA256SUMS.gpg"]
    assert_written(rig, rig.write(rig.server.url("golden.img.zst")))  # its own .sig
    res = rig.write(rig.server.url("golden.img.zst"),
                    checksum_url=rig.server.url("golden.img.SHA256SUMS"))  # the signed SUMS
    assert_written(rig, res)
    assert res.checksum_verified == "sha256"
    with pytest.raises(BuildError, match=r"^sign-key: --sign-key nobody@pyinit\.test: no "
                                         r"secret key in "):
        sign.signing_key("nobody@pyinit.test", homedir=rig.keys.home)


# ---- any source: an image from an OCI registry, its signature from plain HTTP ------------------


def test_oci_image_signed(rig: Rig, tmp_path: Path) -> None:
    """The write request the provision step makes for an ``oci://`` image (its blob URL, the
    registry's auth, the layer digest as checksum), with a keyring: the signature comes from
    ``signatureURL`` over plain HTTP without the registry's credentials; without it there is
    no conventional name to look at. The registry wants htpasswd credentials (Basic)."""
    from pyinit.action import parse_action
    from pyinit.oci.parse import parse_reference
    from pyinit.oci.registry import pull_request
    from pyinit_build import ocipush
    from tests.registry import Registry

    path = tmp_path / "disk.img.zst"
    path.write_bytes(ZST)
    sig = rig.serve("disk.img.zst.sig", rig.keys.sign(ZST, "good"))
    bad = rig.serve("other.sig", rig.keys.sign(ZST + b"\0", "good"))
    users = {"ci": "s3cret-pw"}
    with Registry(tmp_path, users=users) as reg:
        source = f"oci://{reg.address}/disks/demo:v1"
        with requests.Session() as session:
            ocipush.push(path, parse_reference(source), session=session, plain_http=True,
                         progress=lambda s: None,
                         credentials=ocipush.Credentials("ci", users["ci"]))

        def pull(**fields: Any) -> WriteResult:
            act = parse_action({"action": "writeImage", "sourceImage": source,
                                "destinationDevice": "/dev/vdb", "registryPlainHTTP": True,
                                "registryAuth": {"username": "ci", "password": users["ci"]},
                                **fields})
            assert act.oci is not None
            with requests.Session() as session:
                req = WriteRequest(url=source, device=str(rig.disk), keyring=str(rig.keyring),
                                   signature_url=act.signature_url)
                req, _ = pull_request(req, act.oci, session=session,
                                      credentials=act.registry_auth, plain_http=True)
                return write_image(req, session=session, allow_regular_file=True,
                                   max_attempts=3, delays=lambda: iter(lambda: 0.0, None))

        with pytest.raises(SignatureError, match="no signature URL by convention: give "
                                                 "signatureURL"):
            pull()
        assert rig.disk.read_bytes() == JUNK * DISK
        with pytest.raises(SignatureError, match="bad signature"):
            pull(signatureURL=bad)
        assert rig.disk.read_bytes()[:MIB] != RAW[:MIB]
        res = pull(signatureURL=sig)
    assert_written(rig, res)
    assert res.checksum_verified == "sha256"  # the layer digest, as without a keyring
    # each signature fetched once, from the HTTP server (the registry has none)
    assert (rig.server.count("disk.img.zst.sig"), rig.server.count("other.sig")) == (1, 1)


def test_image_sign_key_unknown_fails_before_the_build(tmp_path: Path, gpg_keys: Keys,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from pyinit_build import cli

    (tmp_path / "rootfs").mkdir()
    out = tmp_path / "out" / "golden.img"
    rc = cli.main(["image", str(tmp_path / "rootfs"), "-o", str(out),
                   "--sign-key", "nobody@pyinit.test", "--gpg-homedir", str(gpg_keys.home)])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"pyinit image: error: sign-key: --sign-key nobody@pyinit.test: no "
                       f"secret key in {gpg_keys.home}")
    assert not out.parent.exists()  # nothing was built
