"""Throwaway TLS material made with the real ``openssl`` CLI: a CA, a server certificate it signed
(EC P-256, SAN IP:127.0.0.1 and IP:10.0.2.2, QEMU slirp's address of the host), and a second,
unrelated CA for the "wrong CA" cases. Reused by the integration and VM tests.

Certificates are backdated by a day (with ``faketime`` when installed) so that a guest whose
clock lags the host a little does not see a certificate that is not yet valid.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SANS = ("IP:127.0.0.1", "IP:10.0.2.2")


@dataclass(frozen=True)
class TLSFiles:
    ca: Path          # PEM CA certificate
    ca_key: Path
    cert: Path        # server certificate, signed by ca
    key: Path         # its key
    other_ca: Path    # a CA that did not sign cert
    other_cert: Path  # a certificate signed by other_ca (for "key does not match")
    other_key: Path

    def inline(self, ca: Path | None = None) -> str:
        """``base64:<DER>`` for ``pyinit.ca=``."""
        return inline_ca(ca or self.ca)


def inline_ca(pem: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(pem.read_text())
    return "base64:" + base64.b64encode(der).decode()


def _openssl(args: Sequence[str], cwd: Path) -> None:
    prefix = ["faketime", "-1 day"] if shutil.which("faketime") else []
    subprocess.run([*prefix, "openssl", *args], cwd=cwd, check=True, capture_output=True,
                   timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC P-256 CA: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3",
              "-subj", f"/CN=pyinit test {name}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-addext", "subjectKeyIdentifier=hash"], directory)
    return cert, key


def make_server_cert(directory: Path, name: str, ca: Path, ca_key: Path,
                     sans: Sequence[str] = SANS) -> tuple[Path, Path]:
    """An EC P-256 server certificate for ``sans`` signed by ``ca``: (certificate, key)."""
    cert, key, csr = (directory / f"{name}.pem", directory / f"{name}.key",
                      directory / f"{name}.csr")
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
              "-keyout", str(key), "-out", str(csr), "-subj", f"/CN=pyinit test {name}"],
             directory)
    _openssl(["x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
              "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext)],
             directory)
    return cert, key


def make_tls_files(directory: Path) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(directory, "ca")
    cert, key = make_server_cert(directory, "server", ca, ca_key)
    other_ca, other_ca_key = make_ca(directory, "other-ca")
    other_cert, other_key = make_server_cert(directory, "other-server", other_ca, other_ca_key)
    return TLSFiles(ca, ca_key, cert, key, other_ca, other_cert, other_key)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is required for the TLS tests (apt install openssl)")
    return make_tls_files(tmp_path_factory.mktemp("tls"))
