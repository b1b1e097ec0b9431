"""``pyinit image --sign-key``: detached OpenPGP signatures over what the builder wrote, made
with the caller's gpg (docs/image.md "Signing"): ``<file>.sig`` for each image file as served
(the compressed copy pyinit streams, the raw image, any conversion) and ``<SHA256SUMS>.gpg``
for the checksum file, the names pyinit's writer looks for by default (docs/security.md)."""

from __future__ import annotations

from pathlib import Path

from pyinit import proc
from pyinit.errors import CommandError
from pyinit_build.errors import BuildError


def _gpg(homedir: Path | None) -> list[str]:
    return ["gpg", "--batch", "--no-tty", *(["--homedir", str(homedir)] if homedir else [])]


def signing_key(key: str, *, homedir: Path | None = None) -> str:
    """The fingerprint of ``key``'s secret (signing) key; BuildError before the build when
    the keyring has none."""
    done = proc.run([*_gpg(homedir), "--with-colons", "--list-secret-keys", key], check=False)
    fprs = [ln.split(":")[9] for ln in done.stdout.splitlines() if ln.startswith("fpr:")]
    if done.rc != 0 or not fprs:
        where = f" in {homedir}" if homedir else " ($GNUPGHOME or ~/.gnupg)"
        raise BuildError("sign-key", f"--sign-key {key}: no secret key{where}")
    return fprs[0]


def sign(path: Path, key: str, *, homedir: Path | None = None, suffix: str = ".sig") -> Path:
    """``path`` + ``suffix``: a binary detached signature by ``key`` (``gpg --detach-sign``)."""
    out = path.with_name(path.name + suffix)
    try:
        proc.run([*_gpg(homedir), "--yes", "--local-user", key, "--detach-sign",
                  "--output", str(out), str(path)])
    except CommandError as exc:
        raise BuildError("sign-key", f"signing {path.name} with {key}: {exc}") from exc
    return out


def sign_outputs(output: Path, files: list[str], key: str, *,
                 homedir: Path | None = None) -> list[Path]:
    """Sign each of ``files`` (names beside ``output``) as ``.sig`` and the checksum file
    ``<output>.SHA256SUMS`` as ``.gpg``."""
    made = [sign(output.with_name(name), key, homedir=homedir) for name in files]
    sums = output.with_name(output.name + ".SHA256SUMS")
    if sums.exists():
        made.append(sign(sums, key, homedir=homedir, suffix=".gpg"))
    return made
