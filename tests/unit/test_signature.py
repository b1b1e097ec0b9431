"""The pure parts of the signature chain (issue #17): gpgv's status lines → a verdict, which
signatures a write needs, the keyring's packet walk, ``pyinit.keyring=`` and the action's
fields. The status texts are gpgv 2.2.40's own output, captured from real runs (the integration
tests run gpgv itself: tests/integration/test_signature.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pyinit.action import parse_action
from pyinit.cmdline import parse_cmdline
from pyinit.errors import ConfigError, SignatureError
from pyinit.image.signature import Plan, Verdict, parse_status, plan
from pyinit.keyring import check_keyring, dearmor, packets, parse_inline
from tests.conftest import Recorder

FPR = "F4483BBC9C9A112D04CDEBBA7D221BCCD27BF8E7"
P = "[GNUPG:] "

GOOD = f"""{P}NEWSIG good@x
{P}KEY_CONSIDERED {FPR} 0
{P}SIG_ID UWXsvpGjuQLBqkPECUnGLsW89Bg 2026-12-08 1796688462
{P}KEY_CONSIDERED {FPR} 0
{P}GOODSIG 7D221BCCD27BF8E7 Good <good@x>
{P}VALIDSIG {FPR} 2026-12-08 1796688462 0 4 0 22 8 00 {FPR}
"""
BAD = f"""{P}NEWSIG good@x
{P}KEY_CONSIDERED {FPR} 0
{P}KEY_CONSIDERED {FPR} 0
{P}BADSIG 7D221BCCD27BF8E7 Good <good@x>
"""
NO_PUBKEY = f"""{P}NEWSIG good@x
{P}ERRSIG 7D221BCCD27BF8E7 22 8 00 1796688462 9 {FPR}
{P}NO_PUBKEY 7D221BCCD27BF8E7
"""
NODATA = f"{P}NODATA 1\n{P}NODATA 2\n"
EXPIRED = f"""{P}NEWSIG e@x
{P}KEY_CONSIDERED 29D3D834BA6186B183CDE3538B699C158DBBC61B 0
{P}KEYEXPIRED 1735776000
{P}SIG_ID qKMGOSNT+LI+sG+Rifw8CK5WldU 2025-01-01 1735693200
{P}KEY_CONSIDERED 29D3D834BA6186B183CDE3538B699C158DBBC61B 0
{P}EXPKEYSIG 8B699C158DBBC61B Exp <e@x>
{P}VALIDSIG 29D3D834BA6186B183CDE3538B699C158DBBC61B 2025-01-01 1735693200 0 4 0 22 8 00 \
29D3D834BA6186B183CDE3538B699C158DBBC61B
"""
EXPIRED_NO_DATA = f"""{P}NEWSIG e@x
{P}KEY_CONSIDERED 29D3D834BA6186B183CDE3538B699C158DBBC61B 0
{P}KEYEXPIRED 1735776000
{P}KEY_CONSIDERED 29D3D834BA6186B183CDE3538B699C158DBBC61B 0
{P}BADSIG 8B699C158DBBC61B Exp <e@x>
"""
REVOKED = GOOD.replace("GOODSIG", "REVKEYSIG")
EXPSIG = GOOD.replace("GOODSIG", "EXPSIG").replace(" 1796688462 0 4", " 1796688462 1796774862 4")


@pytest.mark.parametrize(("status", "verdict"), [
    (GOOD, Verdict("good", "7D221BCCD27BF8E7", FPR)),
    (BAD, Verdict("bad", "7D221BCCD27BF8E7")),
    (NO_PUBKEY, Verdict("no_pubkey", "7D221BCCD27BF8E7")),
    (NODATA, Verdict("nodata")),
    (EXPIRED, Verdict("expired_key", "8B699C158DBBC61B",
                      "29D3D834BA6186B183CDE3538B699C158DBBC61B", "2025-01-02")),
    (EXPIRED_NO_DATA, Verdict("expired_key", "8B699C158DBBC61B", None, "2025-01-02")),
    (REVOKED, Verdict("revoked", "7D221BCCD27BF8E7", FPR)),
    (EXPSIG, Verdict("expired_sig", "7D221BCCD27BF8E7", FPR, "2026-12-09")),
    ("", Verdict("error")),
    # key rotation: one file, two signatures; one good one is enough, a bad one never passes
    (NO_PUBKEY + GOOD, Verdict("good", "7D221BCCD27BF8E7", FPR)),
    (GOOD + BAD, Verdict("bad", "7D221BCCD27BF8E7")),
], ids=["good", "bad", "no_pubkey", "nodata", "expired", "expired-precheck", "revoked",
        "expsig", "empty", "rotation", "good+bad"])
def test_parse_status(status: str, verdict: Verdict) -> None:
    got = parse_status("gpgv: some text on the same stream\n" + status)
    assert got == verdict
    assert got.ok == (verdict.kind == "good")


def test_reasons_are_one_line_naming_the_key() -> None:
    sig = "http://srv/x.img.sig"
    assert Verdict("no_pubkey", "7D221BCCD27BF8E7").reason(sig) == (
        "signed by key 7D221BCCD27BF8E7, which is not in the keyring (http://srv/x.img.sig)")
    assert Verdict("expired_key", "8B69", expired="2025-01-02").reason(sig) == (
        "signed by key 8B69, which expired on 2025-01-02 (http://srv/x.img.sig)")
    assert Verdict("bad", "7D22").reason(sig) == (
        "bad signature (http://srv/x.img.sig, key 7D22): the bytes are not what was signed")
    assert Verdict("error").reason(sig, "keydb_search failed") == (
        "gpgv could not check http://srv/x.img.sig: keydb_search failed")


IMG = "http://srv/images/x.img.zst"


@pytest.mark.parametrize(("kw", "want"), [
    ({}, Plan(None, IMG + ".sig")),
    ({"signature_url": "http://srv/sigs/x"}, Plan(None, "http://srv/sigs/x")),
    ({"checksum_url": "http://srv/SHA256SUMS"}, Plan("http://srv/SHA256SUMS.gpg", None)),
    ({"checksum_url": "http://srv/SUMS", "checksum_signature_url": "http://srv/SUMS.asc"},
     Plan("http://srv/SUMS.asc", None)),
    ({"checksum_url": "http://srv/SUMS", "signature_url": IMG + ".asc"},
     Plan("http://srv/SUMS.gpg", IMG + ".asc")),
])
def test_plan_with_a_keyring_every_image_is_covered(kw: dict[str, str], want: Plan) -> None:
    args = {"checksum_url": None, "signature_url": None, "checksum_signature_url": None, **kw}
    assert plan(keyring="/etc/pyinit/keyring.gpg", url=IMG, **args) == want


def test_plan_without_a_keyring() -> None:
    none = {"checksum_url": None, "checksum_signature_url": None}
    assert plan(keyring=None, url=IMG, signature_url=None, **none) == Plan()
    with pytest.raises(SignatureError, match="signatureURL is set but no keyring is configured"):
        plan(keyring=None, url=IMG, signature_url=IMG + ".sig", **none)
    # a source without a conventional signature URL (oci://) needs signatureURL
    with pytest.raises(SignatureError, match="give signatureURL"):
        plan(keyring="/k", url="oci://registry/repo:tag", signature_url=None, **none)
    blob = "http://registry/v2/disks/x/blobs/sha256:" + "1" * 64  # what the write streams
    with pytest.raises(SignatureError, match="give signatureURL"):
        plan(keyring="/k", url=blob, signature_url=None, conventional=False, **none)
    assert plan(keyring="/k", url=blob, signature_url="http://srv/x.sig", conventional=False,
                **none) == Plan(None, "http://srv/x.sig")


# ---- the keyring --------------------------------------------------------------------------

# a real `gpg --export --export-options export-minimal` of an ed25519 key (gpg 2.2.40)
KEY = base64.b64decode(
    "mDMEaxdLEBYJKwYBBAHaRw8BAQdAvfT3LyBiYZm5bPYX1+U3ItvV99A3OzEJRyLvkA0JjK+0EGdvb2RAcHlp"
    "bml0LnRlc3SIkAQTFggAOBYhBCWjT4Fik5YNkow8oPJZkQhyVOclBQJrF0sQAhsDBQsJCAcCBhUKCQgLAgQW"
    "AgMBAh4BAheAAAoJEPJZkQhyVOclOJoBAMAis9TiwR1VEPHYNdbSx0GyiqFQ4ybU2k8ChfpxM9slAP9QufCQ"
    "G13E0uQVstwc7+5JIb0a50m36AQRgfk/yR0mAA==")


def test_packets_of_a_real_key() -> None:
    assert [tag for tag, _ in packets(KEY)] == [6, 13, 2]  # public key, user id, self-sig
    assert check_keyring(KEY) == (KEY, 1)
    assert check_keyring(KEY + KEY) == (KEY + KEY, 2)


def armour(data: bytes) -> bytes:
    b64 = base64.b64encode(data).decode()
    lines = "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return (f"-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: test\n\n{lines}\n=AbCd\n"
            f"-----END PGP PUBLIC KEY BLOCK-----\n").encode()


def test_dearmor() -> None:
    assert dearmor(armour(KEY)) == KEY
    assert dearmor(KEY) == KEY
    assert check_keyring(armour(KEY) + b"\n" + armour(KEY))[1] == 2


@pytest.mark.parametrize(("data", "why"), [
    (b"", "empty"),
    (b"not a key", "byte 0 (0x6e) is not an OpenPGP packet header"),
    (KEY[:-10], "runs past the end"),
    (KEY[:1], "cut off"),
    (bytes([0x88, 3]) + b"sig", "starts with a signature, not a public key"),
    (KEY + bytes([0x95, 0, 1, 0]), "holds a secret key"),
    (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----",
     "not valid base64"),
])
def test_not_a_keyring(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_keyring(data)


def test_parse_inline() -> None:
    assert parse_inline("/etc/pyinit/other.gpg") == ("/etc/pyinit/other.gpg", None)
    assert parse_inline("base64:" + base64.b64encode(KEY).decode().rstrip("=")) == (None, KEY)
    assert parse_inline("base64:" + base64.b64encode(armour(KEY)).decode()) == (None, KEY)


def test_cmdline_keyring() -> None:
    inline = "base64:" + base64.b64encode(KEY).decode()
    params = parse_cmdline(f"MYURL=http://srv pyinit.keyring={inline}", {})
    assert params.keyring_inline == KEY and params.keyring_path is None
    assert inline not in repr(params)  # long: kept out of the repr, like pyinit.ca=
    params = parse_cmdline("MYURL=http://srv pyinit.keyring=/etc/pyinit/k.gpg", {})
    assert params.keyring_path == "/etc/pyinit/k.gpg" and params.keyring_inline is None
    assert parse_cmdline("MYURL=http://srv", {}).keyring_inline is None
    with pytest.raises(ConfigError, match=r"^pyinit.keyring: expected a path"):
        parse_cmdline("MYURL=http://srv pyinit.keyring=keyring.gpg", {})
    cut = inline[:119]  # a command line cut short by the boot loader
    with pytest.raises(ConfigError, match=r"^pyinit.keyring: the 84 decoded bytes are not an "
                                          r"OpenPGP keyring: packet at byte 71 \(144 bytes\) runs "
                                          r"past the end \(84 bytes\): cut short\?$"):
        parse_cmdline(f"MYURL=http://srv pyinit.keyring={cut}", {})


# ---- the action ---------------------------------------------------------------------------


def test_action_signature_fields() -> None:
    act = parse_action({"action": "writeImage", "sourceImage": "images/x.img.zst",
                        "destinationDevice": "/dev/vda", "signatureURL": "sigs/x.sig",
                        "checksumURL": "images/SHA256SUMS",
                        "checksumSignatureURL": "images/SHA256SUMS.asc"},
                       base_url="http://srv")
    assert act.signature_url == "http://srv/sigs/x.sig"
    assert act.checksum_signature_url == "http://srv/images/SHA256SUMS.asc"
    plain = parse_action({"action": "writeImage", "sourceImage": "http://srv/x.img",
                          "signatureURL": ""})
    assert plain.signature_url is None and plain.checksum_signature_url is None


@pytest.mark.parametrize(("body", "line"), [
    ({"signatureURL": "ftp://srv/x.sig"}, "signatureURL: not an http(s) URL: 'ftp://srv/x.sig'"),
    ({"signatureURL": False}, "signatureURL: must be a string, got bool False"),
    ({"checksumSignatureURL": "http://srv/S.gpg"},
     "checksumSignatureURL: needs checksumURL (the file it signs)"),
])
def test_action_signature_fields_refused(body: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_action({"action": "writeImage", "sourceImage": "http://srv/x.img", **body})
    assert str(info.value) == line


def test_erase_refuses_a_signature_url() -> None:
    with pytest.raises(ConfigError, match=r"^signatureURL: not a field of the erase action"):
        parse_action({"action": "erase", "signatureURL": "http://srv/x.sig"})


# ---- the commands: one gpgv argv, through proc.run (the recorder) --------------------------


def test_precheck_and_check_run_gpgv_with_status_lines(recorder: Recorder,
                                                      tmp_path: Path) -> None:
    from pyinit import proc
    from pyinit.image.signature import check, precheck

    seen: list[tuple[bytes, bytes]] = []

    def gpgv(argv: list[str]) -> proc.Completed:
        seen.append((Path(argv[5]).read_bytes(), Path(argv[6]).read_bytes()))
        return proc.Completed(tuple(argv), 2, NO_PUBKEY, "gpgv: Can't check signature\n")

    recorder.responses["gpgv"] = gpgv
    ring = tmp_path / "keyring.gpg"
    with pytest.raises(SignatureError) as info:
        precheck(ring, b"SIG", url="http://srv/x.img", signature_url="http://srv/x.img.sig")
    assert str(info.value) == ("image http://srv/x.img: signed by key 7D221BCCD27BF8E7, which "
                               "is not in the keyring (http://srv/x.img.sig)")
    [argv] = recorder.calls
    assert argv[:5] == ["gpgv", "--status-fd", "1", "--keyring", str(ring)]
    assert seen == [(b"SIG", b"")]  # the signature, over no data
    recorder.responses["gpgv"] = lambda argv: proc.Completed(tuple(argv), 0, GOOD, "")
    verdict = check(ring, b"SIG", b"sums\n", url="http://srv/SUMS",
                    signature_url="http://srv/SUMS.gpg")
    assert verdict.fingerprint == FPR
    # gpgv exits 0 for a good signature by an expired key: the status lines decide
    recorder.responses["gpgv"] = lambda argv: proc.Completed(tuple(argv), 0, EXPIRED, "")
    with pytest.raises(SignatureError, match="which expired on 2025-01-02"):
        check(ring, b"SIG", b"sums\n", url="http://srv/SUMS", signature_url="http://srv/S.gpg")


def test_the_streaming_gpgv_is_a_real_command_unit_tests_may_not_start() -> None:
    from pyinit import proc
    from tests.conftest import RealCommandInUnitTest

    with pytest.raises(RealCommandInUnitTest):
        proc.spawn(["gpgv", "--status-fd", "1"])
