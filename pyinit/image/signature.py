"""Detached OpenPGP signatures of images and of their checksum files, checked with gpgv against
the keyring (:mod:`pyinit.keyring`). docs/security.md "The signature chain".

* :func:`plan` — which signatures a write needs (pure): with a keyring, every image is covered,
  by a signed checksum file (``checksumURL`` + ``checksumSignatureURL``, by default
  ``<checksumURL>.gpg``) or by its own signature (``signatureURL``, by default
  ``<sourceImage>.sig``); the action chooses which, never whether.
* :func:`parse_status` — gpgv's ``--status-fd`` lines → a :class:`Verdict` (pure); gpgv's exit
  code is not enough: a good signature by an expired key exits 0.
* :func:`precheck` — before the disk is touched: the signature run over no data. A signature that
  is no OpenPGP data, made by a key not in the keyring, or by an expired or revoked key fails
  here; a good one says BADSIG (the data is missing) and passes on to the stream.
* :class:`StreamVerifier` — gpgv fed the image as served while it streams (a pipeline consumer);
  restarted when the stream restarts. The held-back head is written only after it said
  VALIDSIG.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyinit import proc
from pyinit.errors import CommandError, FetchError, SignatureError
from pyinit.log import get_logger

log = get_logger("pyinit.image")

GPGV = "gpgv"
STATUS_PREFIX = "[GNUPG:] "
FINISH_TIMEOUT = 120.0  # gpgv has all the data once stdin closes: it only has to hash the rest
Kind = Literal["good", "bad", "no_pubkey", "expired_key", "expired_sig", "revoked", "nodata",
               "error"]


@dataclass(frozen=True)
class Plan:
    """The signatures a write needs: the checksum file's (checked before streaming) and the
    image's own (checked with the stream). Both None: no keyring, nothing to check."""

    sums_signature: str | None = None
    image_signature: str | None = None


def plan(*, keyring: str | None, url: str, checksum_url: str | None,
         signature_url: str | None, checksum_signature_url: str | None,
         conventional: bool = True) -> Plan:
    """Which signature URLs to fetch. Pure.

    With a keyring: a ``checksum_url`` is trusted only signed (its signature defaults to
    ``<checksum_url>.gpg``) and then covers the image; else the image's own signature is
    needed (default ``<url>.sig``). ``signature_url`` is checked whenever given. An inline
    ``checksum`` is the server's word: it does not count. ``conventional``: False for a source
    whose URL has no signature beside it by convention (an OCI registry's blob): then
    ``signature_url`` is needed. Without a keyring, a signature URL is refused
    (SignatureError): whoever set it expects a check that cannot happen."""
    if keyring is None:
        given = signature_url or checksum_signature_url
        if given:
            field = "signatureURL" if signature_url else "checksumSignatureURL"
            raise SignatureError(url, f"{field} is set but no keyring is configured (pyinit "
                                 f"initramfs --keyring, or pyinit.keyring=): refusing to write "
                                 f"an image whose signature nobody can check")
        return Plan()
    sums = (checksum_signature_url or f"{checksum_url}.gpg") if checksum_url else None
    image = signature_url
    if image is None and sums is None:
        if not conventional or not url.startswith(("http://", "https://")):
            raise SignatureError(url, "a keyring is configured and this source has no "
                                 "signature URL by convention: give signatureURL")
        image = f"{url}.sig"
    return Plan(sums, image)


# ---- gpgv's status lines ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    keyid: str | None = None  # the signing key's long id (as the signature names it)
    fingerprint: str | None = None  # the primary key's fingerprint (VALIDSIG)
    expired: str | None = None  # when the key or the signature expired (YYYY-MM-DD)

    @property
    def ok(self) -> bool:
        return self.kind == "good"

    def reason(self, signature_url: str, detail: str = "") -> str:
        """The one line for a verdict that is not good. Pure."""
        key = f"key {self.keyid}" if self.keyid else "an unknown key"
        when = f" on {self.expired}" if self.expired else ""
        return {
            "bad": f"bad signature ({signature_url}, {key}): the bytes are not what was signed",
            "no_pubkey": f"signed by {key}, which is not in the keyring ({signature_url})",
            "expired_key": f"signed by {key}, which expired{when} ({signature_url})",
            "expired_sig": f"the signature expired{when} ({signature_url}, {key})",
            "revoked": f"signed by {key}, which is revoked ({signature_url})",
            "nodata": f"{signature_url} is not an OpenPGP signature (gpgv found no signature "
                      f"data)",
            "error": f"gpgv could not check {signature_url}" + (f": {detail}" if detail else ""),
        }.get(self.kind, f"signature {self.kind} ({signature_url})")


def _date(ts: str) -> str | None:
    if not ts.isdigit():
        return ts or None
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%d")


def _one(lines: list[list[str]]) -> Verdict:
    """The verdict of one signature's status lines (from NEWSIG to the next). Pure."""
    kw = {ln[0]: ln[1:] for ln in lines}
    keyid = next((kw[k][0] for k in ("GOODSIG", "BADSIG", "EXPKEYSIG", "EXPSIG", "REVKEYSIG",
                                     "ERRSIG", "NO_PUBKEY") if kw.get(k)), None)
    valid = kw.get("VALIDSIG", [])
    fpr = valid[9] if len(valid) > 9 else valid[0] if valid else None
    expired = _date(kw["KEYEXPIRED"][0]) if kw.get("KEYEXPIRED") else None
    if "REVKEYSIG" in kw or ("BADSIG" in kw and "KEYREVOKED" in kw):
        return Verdict("revoked", keyid, fpr)
    if "EXPKEYSIG" in kw or ("BADSIG" in kw and "KEYEXPIRED" in kw):
        return Verdict("expired_key", keyid, fpr, expired)
    if "EXPSIG" in kw:
        exp = _date(valid[3]) if len(valid) > 3 and valid[3] != "0" else None
        return Verdict("expired_sig", keyid, fpr, exp)
    if "BADSIG" in kw:
        return Verdict("bad", keyid)
    if "GOODSIG" in kw and valid:
        return Verdict("good", keyid, fpr)
    if "NO_PUBKEY" in kw or (kw.get("ERRSIG") and kw["ERRSIG"][5:6] == ["9"]):
        return Verdict("no_pubkey", keyid)
    return Verdict("error", keyid)


def parse_status(text: str) -> Verdict:
    """gpgv's ``--status-fd`` output → one verdict. Pure.

    A file may hold several signatures (key rotation: signed with the old and the new key):
    any BADSIG is bad (the bytes are not what was signed); else one good signature is enough;
    else the first signature's failure. No signature at all: ``nodata``."""
    sigs: list[list[list[str]]] = []
    nodata = False
    for raw in text.splitlines():
        if not raw.startswith(STATUS_PREFIX):
            continue
        words = raw[len(STATUS_PREFIX):].split()
        if not words:
            continue
        if words[0] == "NEWSIG":
            sigs.append([])
        elif words[0] == "NODATA":
            nodata = True
        elif sigs:
            sigs[-1].append(words)
        elif words[0] in ("ERRSIG", "NO_PUBKEY", "BADSIG", "GOODSIG"):
            sigs.append([words])  # gpgv without NEWSIG lines (older versions)
    if not sigs:
        return Verdict("nodata" if nodata else "error")
    verdicts = [_one(s) for s in sigs]
    for kind in ("bad", "good"):
        found = [v for v in verdicts if v.kind == kind]
        if found:
            return found[0]
    return verdicts[0]


def _argv(keyring: Path, sig: Path, data: str = "-") -> list[str]:
    """gpgv's command line: status lines on stdout, the signed data from ``data`` (``-``:
    stdin)."""
    return [GPGV, "--status-fd", "1", "--keyring", str(keyring), str(sig), data]


def _stderr_line(done: proc.Completed) -> str:
    lines = [ln.removeprefix("gpgv: ") for ln in done.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {done.rc}"


def _run_files(keyring: Path, signature: bytes, data: bytes) -> proc.Completed:
    with tempfile.TemporaryDirectory(prefix="pyinit-sig-") as tmp:
        sig, signed = Path(tmp) / "signature", Path(tmp) / "data"
        sig.write_bytes(signature)
        signed.write_bytes(data)
        return proc.run(_argv(keyring, sig, str(signed)), check=False)


def check(keyring: Path, signature: bytes, data: bytes, *, url: str,
          signature_url: str) -> Verdict:
    """Verify ``signature`` over ``data`` (a SUMS file: small) with gpgv. Raises
    SignatureError unless good."""
    done = _run_files(keyring, signature, data)
    verdict = parse_status(done.stdout)
    if not verdict.ok:
        raise SignatureError(url, verdict.reason(signature_url, _stderr_line(done)))
    return verdict


def precheck(keyring: Path, signature: bytes, *, url: str, signature_url: str) -> None:
    """The signature over no data, before any disk is touched: everything but the bytes'
    own match is known now. Raises SignatureError for garbage, an unknown, expired or
    revoked key; a BADSIG (the data is missing: expected) passes."""
    done = _run_files(keyring, signature, b"")
    verdict = parse_status(done.stdout)
    if verdict.kind not in ("bad", "good"):
        raise SignatureError(url, verdict.reason(signature_url, _stderr_line(done)))


def fetch_signature(get: Callable[[str], bytes], url: str, signature_url: str) -> bytes:
    """The signature file's bytes; a 404 is a missing signature (one line, never retried)."""
    try:
        data = get(signature_url)
    except FetchError as exc:
        if exc.status == 404:
            raise SignatureError(url, f"no signature: {signature_url} answers HTTP 404 (a "
                                 f"keyring is configured: every image must be signed)") from exc
        raise
    if not data.strip():
        raise SignatureError(url, f"{signature_url} is empty: no signature")
    return data


class StreamVerifier:
    """gpgv over the image as served, fed chunk by chunk from a pipeline stage. One gpgv per
    pass: :meth:`restart` when the stream starts over from byte 0."""

    def __init__(self, keyring: Path, signature: bytes, *, url: str,
                 signature_url: str) -> None:
        self.keyring = keyring
        self.url = url
        self.signature_url = signature_url
        self._dir = tempfile.TemporaryDirectory(prefix="pyinit-sig-")
        self.sig = Path(self._dir.name) / "signature"
        self.sig.write_bytes(signature)
        self.child: proc.Spawned | None = None
        self.fed = 0

    def start(self) -> None:
        self.child = proc.spawn(_argv(self.keyring, self.sig))
        self.fed = 0

    def feed(self, data: bytes) -> None:
        assert self.child is not None
        self.child.write(data)  # a gpgv that quit early says why at finish()
        self.fed += len(data)

    def restart(self) -> None:
        self.close()
        self.start()

    def finish(self) -> Verdict:
        """Close gpgv's input and read its verdict. Raises SignatureError unless good."""
        assert self.child is not None
        child, self.child = self.child, None
        try:
            done = child.finish(FINISH_TIMEOUT)
        except CommandError as exc:
            raise SignatureError(self.url, f"gpgv did not finish within {FINISH_TIMEOUT:g} s "
                                 f"({self.signature_url})") from exc
        finally:
            self._dir.cleanup()
        verdict = parse_status(done.stdout)
        if not verdict.ok:
            raise SignatureError(self.url, verdict.reason(self.signature_url,
                                                          _stderr_line(done)))
        log.info(f"provision: signature of {self.url} verified ({self.fed} bytes): good "
                 f"signature by {verdict.fingerprint}")
        return verdict

    def close(self) -> None:
        """Kill a gpgv still running (an aborted write, a restart)."""
        if self.child is not None:
            self.child.kill()
            self.child = None

    def cleanup(self) -> None:
        self.close()
        self._dir.cleanup()
