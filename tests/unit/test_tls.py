"""pyinit.tls: which CA the session trusts (under a tmp_path root); TLS failures in one line."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import requests
import urllib3.exceptions

from pyinit import tls
from pyinit.cmdline import parse_cmdline
from pyinit.errors import ConfigError
from tests.unit.test_cmdline import B64_DER, UNIT_CA_PEM


@pytest.mark.parametrize(("line", "baked", "want"), [
    ("MYURL=https://h", False, True),
    ("MYURL=https://h", True, "etc/pyinit/ca.pem"),
    (f"MYURL=https://h pyinit.ca=base64:{B64_DER}", True, "run/pyinit/ca.pem"),
    ("MYURL=https://h pyinit.ca=/etc/site.pem", True, "etc/site.pem"),
])
def test_trust_order(tmp_path: Path, line: str, baked: bool, want: str | bool) -> None:
    (tmp_path / "etc/pyinit").mkdir(parents=True)
    (tmp_path / "etc/site.pem").write_text(UNIT_CA_PEM)
    if baked:
        (tmp_path / "etc/pyinit/ca.pem").write_text(UNIT_CA_PEM)
    session = requests.Session()
    tls.configure(session, parse_cmdline(line, {}), root=tmp_path)
    assert session.verify == (want if want is True else str(tmp_path / str(want)))
    assert session.trust_env is (want is True)  # REQUESTS_CA_BUNDLE must not override a CA
    if want == "run/pyinit/ca.pem":
        assert ssl.PEM_cert_to_DER_cert((tmp_path / want).read_text()) == \
            ssl.PEM_cert_to_DER_cert(UNIT_CA_PEM)


def test_a_missing_ca_path_names_pyinit_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^pyinit\.ca: /nope\.pem: no such file in the "
                                          r"initramfs$"):
        tls.trust(parse_cmdline("MYURL=https://h pyinit.ca=/nope.pem", {}), root=tmp_path)


def _wrapped(err: BaseException) -> requests.exceptions.SSLError:
    """What requests raises: SSLError(MaxRetryError(reason=urllib3 SSLError(ssl error)))."""
    inner = urllib3.exceptions.SSLError(err)
    outer = urllib3.exceptions.MaxRetryError(None, "/x", reason=inner)  # type: ignore[arg-type]
    return requests.exceptions.SSLError(outer)


def test_tls_reason_and_transience() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                             "verify failed: unable to get local issuer "
                                             "certificate (_ssl.c:1006)")
    verify.verify_message = "unable to get local issuer certificate"
    exc = _wrapped(verify)
    assert tls.tls_reason(exc) == "certificate verify failed: unable to get local issuer " \
                                  "certificate"
    assert not tls.is_transient(exc)
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert tls.is_transient(_wrapped(eof))
    assert tls.tls_reason(requests.exceptions.SSLError("plain\ntext")) == "plain text"


@pytest.mark.parametrize(("verify", "needle"), [
    (True, "default CA bundle (certifi); give the server's CA with pyinit.ca="),
    ("/run/pyinit/ca.pem", "CA from pyinit.ca= (inline)"),
    ("/etc/pyinit/ca.pem", "baked into the initramfs; pyinit.ca= overrides it"),
    ("/etc/site.pem", "CA /etc/site.pem from pyinit.ca="),
])
def test_describe(verify: object, needle: str) -> None:
    assert needle in tls.describe(verify)
