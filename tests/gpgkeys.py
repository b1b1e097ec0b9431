"""OpenPGP keys for the signature tests, made by the real gpg in a temporary GNUPGHOME:
``good`` and ``other`` (ed25519, no expiry), ``expired`` (made under faketime in 2025 with a
one-day expiry, its signatures made that day), ``revoked`` (its revocation imported), ``old``
(made in 2025, no expiry; ``sign(..., expiring=True)`` makes a signature that expired the day
after it was made).
Signatures are detached, binary (``.sig``) or armoured."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostreq import need

PAST = "2025-01-01 00:00:00"  # the expired key's life: one day from here
NAMES = ("good", "other", "expired", "revoked", "old")


def gpg(home: Path, *args: str, faketime: str | None = None,
        input: bytes | None = None) -> bytes:
    prefix = ["faketime", faketime] if faketime else []
    done = subprocess.run([*prefix, "gpg", "--homedir", str(home), "--batch", "--yes",
                           "--no-tty", *args], check=True, capture_output=True, input=input)
    return done.stdout


@dataclass(frozen=True)
class Keys:
    home: Path

    def uid(self, name: str) -> str:
        return f"{name}@pyinit.test"

    def fingerprint(self, name: str) -> str:
        out = gpg(self.home, "--with-colons", "--list-keys", self.uid(name)).decode()
        return next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))

    def keyid(self, name: str) -> str:
        return self.fingerprint(name)[-16:]

    def export(self, *names: str, armor: bool = False) -> bytes:
        if names == ("revoked",):  # the public key with its revocation (see make_keys)
            return gpg(self.home / "revoked-home", "--export", *(["--armor"] if armor else []),
                       self.uid("revoked"))
        return gpg(self.home, "--export", "--export-options", "export-minimal",
                   *(["--armor"] if armor else []), *(self.uid(n) for n in names))

    def keyring(self, path: Path, *names: str) -> Path:
        path.write_bytes(self.export(*names))
        return path

    def inline(self, *names: str) -> str:
        """``pyinit.keyring=`` for these keys."""
        return "base64:" + base64.b64encode(self.export(*names)).decode()

    def sign(self, data: bytes, name: str, *, armor: bool = False,
             expiring: bool = False) -> bytes:
        # the expired key's signature is made while the key was still valid
        when = "2025-01-01 06:00:00" if name == "expired" or expiring else None
        return gpg(self.home, "--local-user", self.uid(name), "--detach-sign",
                   *(["--armor"] if armor else []),
                   *(["--default-sig-expire", "1d"] if expiring else []),
                   "--output", "-", input=data, faketime=when)


    def sign_file(self, path: Path, name: str) -> bytes:
        """A binary detached signature of the file at ``path`` (read by gpg, not into memory)."""
        return gpg(self.home, "--local-user", self.uid(name), "--detach-sign", "--output", "-",
                   str(path))


def make_keys(home: Path) -> Keys:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = Keys(home)
    for name in ("good", "other", "revoked"):
        gpg(home, "--passphrase", "", "--quick-gen-key", keys.uid(name), "ed25519", "sign",
            "never")
    gpg(home, "--passphrase", "", "--quick-gen-key", keys.uid("expired"), "ed25519", "sign",
        "1d", faketime=PAST)
    gpg(home, "--passphrase", "", "--quick-gen-key", keys.uid("old"), "ed25519", "sign",
        "never", faketime=PAST)
    # "revoked": signed with by the home's copy, which does not know; its public key with the
    # revocation imported lives in a second home (what a keyring would carry after it)
    fpr = keys.fingerprint("revoked")
    rev = home / "openpgp-revocs.d" / f"{fpr}.rev"
    other = home / "revoked-home"
    other.mkdir(mode=0o700)
    gpg(other, "--import", input=gpg(home, "--export", keys.uid("revoked")))
    # the stored certificate's armour is commented out with ":" so it is not imported by
    # accident; uncommented, importing it revokes the key
    gpg(other, "--import", input=rev.read_bytes().replace(b":-----BEGIN", b"-----BEGIN"))
    return keys


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """The keys, once per session; every test that takes them also runs gpgv (a failure under
    ``make test`` when gpg, gpgv or faketime is missing, a skip outside it)."""
    need("gpg", "gpgv", "faketime")
    return make_keys(tmp_path_factory.mktemp("gnupg"))
