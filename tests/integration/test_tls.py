"""Issue #6, HTTPS: ``pyinit serve`` with a certificate made by the real openssl, and pyinit's
runtime (fetch, image write, events) verifying it against the CA from ``pyinit.ca=``.

Real peers only: the server in-process on 127.0.0.1, requests/urllib3/OpenSSL on the client
side, raw sockets for the misbehaving client, and the ``pyinit serve`` CLI in a subprocess for the
start-up errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pyinit import tls
from pyinit.cmdline import parse_cmdline
from pyinit.errors import FetchError
from pyinit.events import ServerSink
from pyinit.fetch import fetch_action
from pyinit.image.write import WriteRequest, write_image
from tests.hostreq import fail_or_skip
from tests.serverkit import ObservedServer
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:00:06:01"
TOKEN = "s3cret-token"
IMAGE_SIZE = 6 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    (root / "machines").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz").write_bytes(b"kernel")
    rnd = os.urandom(IMAGE_SIZE // 2)
    (root / "images" / "disk.img").write_bytes(rnd + bytes(IMAGE_SIZE // 4) + rnd[:IMAGE_SIZE // 4])
    return root


@pytest.fixture
def server(root: Path, tls_files: TLSFiles) -> Iterator[ObservedServer]:  # noqa: F811
    srv = ObservedServer(root, token=TOKEN, tls_cert=tls_files.cert, tls_key=tls_files.key)
    srv.handshake_timeout = 1.0
    with srv:
        (root / "machines" / "52-54-00-00-06-01.json").write_text(json.dumps({
            "action": "writeImage", "sourceImage": f"{srv.url}/images/disk.img",
            "destinationDevice": "/dev/vda"}))
        yield srv


def session_for(cmdline: str, tmp_path: Path) -> tuple[requests.Session, object]:
    """What init.py does: parse the command line, point the session at the resolved CA."""
    params = parse_cmdline(cmdline)
    session = requests.Session()
    tls.configure(session, params, root=tmp_path / "initramfs")
    return session, params


def test_fetch_write_and_events_over_https_with_the_inline_ca(
        server: ObservedServer, tls_files: TLSFiles, tmp_path: Path) -> None:  # noqa: F811
    assert server.url.startswith("https://127.0.0.1:")
    session, params = session_for(f"MYURL={server.url} pyinit.ca={tls_files.inline()} "
                                  f"pyinit.token={TOKEN}", tmp_path)
    # the inline CA was written where init puts it, and is what the session trusts
    assert session.verify == str(tmp_path / "initramfs/run/pyinit/ca.pem")
    fetched = fetch_action(params, MAC, session=session)  # type: ignore[arg-type]
    assert fetched.action.source_image == f"{server.url}/images/disk.img"

    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(IMAGE_SIZE))
    res = write_image(WriteRequest(url=fetched.action.source_image, device=str(disk)),
                      session=session, allow_regular_file=True, direct=False)
    want = hashlib.sha256((server.root / "images/disk.img").read_bytes()).hexdigest()
    assert res.sha256 == want
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == want

    sink = ServerSink(f"{server.url}/events/52-54-00-00-06-01", token=TOKEN, session=session)
    sink({"step": "tls", "status": "ok"})  # type: ignore[arg-type]
    assert server.wait_event(MAC, step="tls", timeout=10)["status"] == "ok"


def test_a_baked_in_ca_is_used_without_pyinit_ca(server: ObservedServer,
                                                 tls_files: TLSFiles,  # noqa: F811
                                                 tmp_path: Path) -> None:
    baked = tmp_path / "initramfs/etc/pyinit/ca.pem"
    baked.parent.mkdir(parents=True)
    baked.write_bytes(tls_files.ca.read_bytes())
    session, params = session_for(f"MYURL={server.url}", tmp_path)
    assert session.verify == str(baked)
    assert fetch_action(params, MAC, session=session).url.endswith("/52-54-00-00-06-01")  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["default bundle", "other CA"])
def test_an_unverifiable_certificate_is_one_line_and_not_retried(
        server: ObservedServer, tls_files: TLSFiles, tmp_path: Path,  # noqa: F811
        which: str) -> None:
    ca = "" if which == "default bundle" else f" pyinit.ca={tls_files.inline(tls_files.other_ca)}"
    session, params = session_for(f"MYURL={server.url}{ca} pyinit.fetch_timeout=60", tmp_path)
    sleeps: list[float] = []
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_action(params, MAC, session=session, sleep=sleeps.append)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5
    assert sleeps == []  # no retry storm: a bad certificate is fatal at once
    err = info.value
    assert not err.retryable
    line = str(err)
    assert "\n" not in line and len(line) < 300, line
    assert line.startswith(f"{server.url}/52-54-00-00-06-01: TLS error: certificate verify "
                           "failed: unable to get local issuer certificate"), line
    assert ("default CA bundle (certifi)" if which == "default bundle"
            else "CA from pyinit.ca= (inline)") in line
    # the image writer says the same, and leaves the disk as it was
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x55" * (1 << 20))
    with pytest.raises(FetchError, match="certificate verify failed") as info2:
        write_image(WriteRequest(url=f"{server.url}/images/disk.img",
                                 device=str(tmp_path / "disk.raw")), session=session,
                    allow_regular_file=True, direct=False)
    assert "\n" not in str(info2.value)
    assert disk.read_bytes() == b"\x55" * (1 << 20)


def test_plain_http_on_the_https_port_is_named(server: ObservedServer,
                                               tls_files: TLSFiles, tmp_path: Path) -> None:  # noqa: F811
    assert server.http_url is not None
    plain_as_https = server.http_url.replace("http://", "https://")
    session, params = session_for(f"MYURL={plain_as_https} pyinit.ca={tls_files.inline()}",
                                  tmp_path)
    with pytest.raises(FetchError, match=r"TLS error: .*wrong version number") as info:
        fetch_action(params, MAC, session=session, sleep=lambda _: None)  # type: ignore[arg-type]
    assert not info.value.retryable


def test_a_silent_client_does_not_block_others(server: ObservedServer,
                                               tls_files: TLSFiles) -> None:  # noqa: F811
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        started = time.monotonic()
        resp = requests.get(f"{server.url}/52-54-00-00-06-01", verify=str(tls_files.ca),
                            timeout=5)
        assert resp.status_code == 200
        assert time.monotonic() - started < 0.9  # well inside the 1 s handshake timeout
        # and the silent ones are dropped once the handshake timeout passes
        silent[0].settimeout(5)
        t0 = time.monotonic()
        assert silent[0].recv(1) == b""
        assert 0.3 < time.monotonic() - t0 < 3
    finally:
        for s in silent:
            s.close()


def test_the_plain_listener_serves_ipxe_and_refuses_writes(server: ObservedServer) -> None:
    plain = server.http_url
    assert plain is not None and plain != server.url
    script = requests.get(f"{plain}/52-54-00-00-06-01.ipxe", timeout=5).text
    assert f"kernel {plain}/boot/vmlinuz " in script  # iPXE itself stays on HTTP
    assert f"BOOTYURL={server.url} " in script  # pyinit goes to HTTPS
    assert requests.get(f"{plain}/boot/vmlinuz", timeout=5).content == b"kernel"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path, body in (("POST", "/events/52-54-00-00-06-01", b"{}"),
                               ("PUT", "/images/x.img", b"data"),
                               ("POST", "/image", b"--x--")):
        resp = requests.request(method, f"{plain}{path}", data=body, headers=auth, timeout=5)
        assert resp.status_code == 403, (method, path)
        assert resp.json()["error"] == f"this server takes writes over HTTPS only: use {server.url}"
    assert not (server.root / "images/x.img").exists()
    assert server.events(MAC) == []


def test_public_url_keeps_working_with_tls(root: Path, tls_files: TLSFiles) -> None:  # noqa: F811
    with ObservedServer(root, tls_cert=tls_files.cert, tls_key=tls_files.key,
                            public_url="http://boot.example:8080") as srv:
        (root / "machines" / "default.json").write_text('{"action": "writeImage", '
                                                        '"sourceImage": "x", '
                                                        '"destinationDevice": "/dev/vda"}')
        script = requests.get(f"{srv.http_url}/52-54-00-00-06-09.ipxe", timeout=5).text
        assert "kernel http://boot.example:8080/boot/vmlinuz " in script
        assert f"BOOTYURL=https://boot.example:{srv.port} " in script
    with ObservedServer(root, tls_cert=tls_files.cert, tls_key=tls_files.key,
                            public_tls_url="https://prov.example/") as srv:
        script = requests.get(f"{srv.http_url}/52-54-00-00-06-09.ipxe", timeout=5).text
        assert "BOOTYURL=https://prov.example " in script


def test_range_requests_over_tls(server: ObservedServer, tls_files: TLSFiles) -> None:  # noqa: F811
    """sendfile() falls back to send() on an SSLSocket: ranges and whole files still exact."""
    data = (server.root / "images/disk.img").read_bytes()
    url = f"{server.url}/images/disk.img"
    ca = str(tls_files.ca)
    whole = requests.get(url, verify=ca, timeout=10)
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(url, verify=ca, timeout=10, headers={"Range": "bytes=1000000-3999999"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000000-3999999/{len(data)}"
    assert part.content == data[1000000:4000000]
    tail = requests.get(url, verify=ca, timeout=10, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_only_tls_1_2_and_later(server: ObservedServer, tls_files: TLSFiles) -> None:  # noqa: F811
    ctx = ssl.create_default_context(cafile=str(tls_files.ca))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", server.port)) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1"):
        pass


def test_https_only_server(root: Path, tls_files: TLSFiles) -> None:  # noqa: F811
    with ObservedServer(root, port=None, tls_cert=tls_files.cert,
                            tls_key=tls_files.key) as srv:
        assert srv.http_url is None
        resp = requests.put(f"{srv.url}/images/up.img", data=b"x" * 1000,
                            headers={"Authorization": f"Bearer {srv.token}"},
                            verify=str(tls_files.ca), timeout=5)
        assert resp.status_code == 201


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "--tls-cert {d}/nope.pem: No such file or directory"),
    ("garbage", "--tls-cert {d}/garbage.pem: no PEM '-----BEGIN ...CERTIFICATE-----' block"),
    ("mismatch", "--tls-key {other_key} does not belong to --tls-cert {cert}"),
    ("key is a cert", "--tls-key {cert}: no PEM '-----BEGIN ...PRIVATE KEY-----' block"),
])
def test_bad_certificate_or_key_stops_serve_with_one_line(
        tls_files: TLSFiles, tmp_path: Path, root: Path, case: str,  # noqa: F811
        message: str) -> None:
    d = tmp_path
    (d / "garbage.pem").write_text("hello, not PEM at all\n")
    cert, key = {
        "missing": (d / "nope.pem", tls_files.key),
        "garbage": (d / "garbage.pem", tls_files.key),
        "mismatch": (tls_files.cert, tls_files.other_key),
        "key is a cert": (tls_files.cert, tls_files.cert),
    }[case]
    want = message.format(d=d, cert=tls_files.cert, other_key=tls_files.other_key)
    with pytest.raises(ValueError) as info:
        ObservedServer(root, tls_cert=cert, tls_key=key)
    assert str(info.value).startswith(want), str(info.value)
    done = subprocess.run([sys.executable, "-m", "pyinit_build.cli", "serve", "--root", str(root),
                           "--port", "0", "--tls-port", "0", "--tls-cert", str(cert),
                           "--tls-key", str(key)], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [f"pyinit serve: {info.value}"]


def test_garbage_pem_body_is_named(tls_files: TLSFiles, tmp_path: Path, root: Path) -> None:  # noqa: F811
    """A file that looks like PEM but whose body is not a certificate: OpenSSL's reason."""
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=r"^--tls-cert .*bad.pem / --tls-key .*: cannot load: "
                                         r"PEM lib \(a PEM block that does not decode\)$"):
        ObservedServer(root, tls_cert=bad, tls_key=tls_files.key)


def test_handshake_runs_outside_the_accept_loop(server: ObservedServer,
                                                tls_files: TLSFiles) -> None:  # noqa: F811
    """Many concurrent HTTPS clients while a silent one holds its connection open."""
    silent = socket.create_connection(("127.0.0.1", server.port))
    codes: list[int] = []

    def get() -> None:
        codes.append(requests.get(f"{server.url}/52-54-00-00-06-01", verify=str(tls_files.ca),
                                  timeout=5).status_code)
    try:
        threads = [threading.Thread(target=get) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert codes == [200] * 8
    finally:
        silent.close()


# -- pyinit initramfs --ca ---------------------------------------------------------------------


def test_read_ca_keeps_only_certificates(tls_files: TLSFiles, tmp_path: Path) -> None:  # noqa: F811
    from pyinit_build.initramfs import read_ca

    bundle = tmp_path / "bundle.pem"
    bundle.write_text("# site CAs\n" + tls_files.ca.read_text() + "junk\r\n"
                      + tls_files.other_ca.read_text().replace("\n", "\r\n"))
    data = read_ca(bundle)
    assert data.count(b"-----BEGIN CERTIFICATE-----") == 2 and b"junk" not in data
    assert b"\r" not in data
    ssl.create_default_context(cadata=data.decode())  # OpenSSL reads the result


@pytest.mark.parametrize(("case", "needle"), [
    ("missing", "No such file or directory"),
    ("key", "no PEM '-----BEGIN CERTIFICATE-----' block (a private key or a DER file?"),
    ("der", "no PEM '-----BEGIN CERTIFICATE-----' block"),
    ("bad body", "certificate 1 of 1 does not parse"),
])
def test_initramfs_ca_refuses_what_is_not_a_certificate(tls_files: TLSFiles,  # noqa: F811
                                                        tmp_path: Path, case: str,
                                                        needle: str) -> None:
    path = tmp_path / f"{case}.pem"
    if case == "key":
        path.write_bytes(tls_files.key.read_bytes())
    elif case == "der":
        path.write_bytes(ssl.PEM_cert_to_DER_cert(tls_files.ca.read_text()))
    elif case == "bad body":
        path.write_text("-----BEGIN CERTIFICATE-----\nQUJDRA==\n-----END CERTIFICATE-----\n")
    done = subprocess.run([sys.executable, "-m", "pyinit_build.cli", "initramfs", "--out",
                           str(tmp_path / "out"), "--ca", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("E ")]
    assert len(errors) == 1 and needle in errors[0], done.stderr
    assert f"initramfs: ca: --ca {path}" in errors[0]
    assert not (tmp_path / "out").exists()  # failed before any work


def test_initramfs_bakes_the_ca(tls_files: TLSFiles, tmp_path: Path) -> None:  # noqa: F811
    """A real build (kernel and freeze from the cache) with --ca: the cpio holds the CA as
    /etc/pyinit/ca.pem, byte for byte the certificate given."""
    from pyinit_build import initramfs

    if not (REPO / ".cache" / "kernel").is_dir():
        fail_or_skip("no cached kernel package: run `make initramfs` first")
    # a test-only build: the drivers it lists and a fast zstd level (the CA is what is tested)
    result = initramfs.build(initramfs.BuildConfig(out_dir=tmp_path / "out", ca=tls_files.ca,
                                                   source_date_epoch=1_700_000_000,
                                                   drivers="listed", zstd_level=3))
    listing = subprocess.run(f"zstd -dc {result.initramfs} | cpio -i --to-stdout "
                             "etc/pyinit/ca.pem", shell=True, capture_output=True, timeout=120,
                             check=True).stdout
    assert listing == tls_files.ca.read_bytes()
    assert result.manifest["ca_sha256"] == hashlib.sha256(listing).hexdigest()
