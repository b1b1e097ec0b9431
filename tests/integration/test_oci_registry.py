"""sourceImage oci:// against a real registry (Debian's docker-registry 2.8, tests/registry.py):
pushed with ``pyinit push`` / :func:`pyinit_build.ocipush.push`, pulled through the real write
pipeline onto a file, anonymously, with htpasswd (Basic) and with a token server (Bearer); a
blob transfer dropped mid-way and resumed with Range (and a token that expired meanwhile); and
the bad inputs: credentials refused, several layers, an unknown media type, a tampered blob, a
tag that does not exist."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
import zstandard

from pyinit.action import parse_action
from pyinit.errors import ChecksumMismatch, FetchError, ImageError
from pyinit.image.write import WriteRequest, WriteResult, write_image
from pyinit.oci.parse import OCI_MANIFEST, PYINIT_ARTIFACT, PYINIT_LAYER, parse_reference
from pyinit.oci.registry import Artifact, pull_request
from pyinit.units import MIB
from pyinit_build import cli, ocipush
from tests.registry import Registry, TokenServer
from tests.tlsfixtures import TLSFiles, tls_files  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

USERS = {"ci": "s3cret-pw"}
DISK = 8 * MIB


def raw_image(size: int = 5 * MIB) -> bytes:
    """Not too compressible (the blob must be big enough to be cut mid-way)."""
    return os.urandom(size // 2) + bytes(size - size // 2)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    raw = raw_image()
    path = tmp_path / "disk.img.zst"
    path.write_bytes(zstandard.ZstdCompressor(level=1).compress(raw))
    return path, raw


def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\xaa" * DISK)
    return path


def pull(source: str, target: Path, *, verify: str | None = None,
         **fields: Any) -> tuple[WriteResult, Artifact]:
    """What the provision step does with an action naming ``source`` (pyinit.init); plain
    HTTP unless ``verify`` names the CA the session trusts (what pyinit.ca= sets)."""
    plain = {"registryPlainHTTP": True} if verify is None else {}
    act = parse_action({"action": "writeImage", "sourceImage": source,
                        "destinationDevice": "/dev/vdb", **plain, **fields})
    assert act.oci is not None
    with requests.Session() as session:
        if verify is not None:  # as pyinit.tls.configure does with pyinit.ca=
            session.verify, session.trust_env = verify, False
        req, art = pull_request(WriteRequest(url=source, device=str(target)), act.oci,
                                session=session, credentials=act.registry_auth,
                                plain_http=act.registry_plain_http)
        return write_image(req, session=session, allow_regular_file=True, max_attempts=3,
                           delays=lambda: iter(lambda: 0.0, None)), art


def push(reg: Registry, path: Path, tag: str, *, auth: bool = False) -> ocipush.Pushed:
    ref = parse_reference(f"oci://{reg.address}/disks/demo:{tag}")
    with requests.Session() as session:
        return ocipush.push(path, ref, session=session, plain_http=True, progress=lambda s: None,
                            credentials=ocipush.Credentials("ci", USERS["ci"]) if auth else None)


@pytest.mark.parametrize("mode", ["anonymous", "htpasswd", "token"])
def test_pull_writes_the_image(mode: str, tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, raw = image
    token = TokenServer(tmp_path, USERS).start() if mode == "token" else None
    try:
        with Registry(tmp_path, users=USERS if mode == "htpasswd" else None,
                      token=token) as reg:
            pushed = push(reg, path, "v1", auth=mode != "anonymous")
            creds = {"registryAuth": {"username": "ci", "password": USERS["ci"]}} \
                if mode != "anonymous" else {}
            target = disk(tmp_path)
            res, art = pull(f"oci://{reg.address}/disks/demo:v1", target, **creds)
    finally:
        if token is not None:
            token.stop()
    assert res.format == "zstd" and res.checksum_verified == "sha256"
    assert res.bytes_written == len(raw) and res.sha256 == pushed.layer_digest[7:]
    assert art.manifest_digest == pushed.manifest_digest
    assert art.layer.digest == pushed.layer_digest and art.layer.title == "disk.img.zst"
    assert target.read_bytes()[:len(raw)] == raw
    if token is not None:  # pull tokens for the pull, pull,push for the push; all for ci
        assert {c["sub"] for c in token.issued} == {"ci"}
        assert ["pull"] in [a["actions"] for c in token.issued for a in c["access"]]


def test_pyinit_push_then_pull_by_tag_and_by_digest(tmp_path: Path, image: tuple[Path, bytes],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, raw = image
    monkeypatch.setenv(ocipush.USER_ENV, "ci")
    monkeypatch.setenv(ocipush.PASSWORD_ENV, USERS["ci"])
    with Registry(tmp_path, users=USERS) as reg:
        assert cli.main(["push", "--plain-http", str(path),
                         f"oci://{reg.address}/disks/demo:v2"]) == 0
        out = capsys.readouterr().out
        digest = out.split("manifest ")[1].split()[0]
        assert f"pin it: oci://{reg.address}/disks/demo@{digest}" in out
        # the manifest as stored: oras's layout for one file with an artifact type
        stored = requests.get(f"{reg.url}/v2/disks/demo/manifests/{digest}",
                              auth=("ci", USERS["ci"]), headers={"Accept": OCI_MANIFEST})
        assert hashlib.sha256(stored.content).hexdigest() == digest[7:]
        doc = json.loads(stored.content)
        assert doc["artifactType"] == PYINIT_ARTIFACT
        assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        [layer] = doc["layers"]
        assert layer["mediaType"] == PYINIT_LAYER and layer["size"] == path.stat().st_size
        assert layer["annotations"] == {"org.opencontainers.image.title": "disk.img.zst"}
        creds = {"registryAuth": {"username": "ci", "password": USERS["ci"]}}
        for source in (f"oci://{reg.address}/disks/demo:v2",
                       f"oci://{reg.address}/disks/demo@{digest}"):
            target = disk(tmp_path)
            _, art = pull(source, target, **creds)
            assert art.manifest_digest == digest
            assert target.read_bytes()[:len(raw)] == raw, source
        # pushing the same file again uploads nothing and gives the same manifest
        assert cli.main(["push", "--plain-http", str(path),
                         f"oci://{reg.address}/disks/demo:v3"]) == 0
        assert f"manifest {digest}" in capsys.readouterr().out


class CuttingProxy:
    """Forwards to the registry; the first blob GET is cut after ``cut`` bytes of the body,
    after waiting ``pause`` seconds (a token may expire meanwhile). Records each request's
    Range and whether it carried Authorization."""

    def __init__(self, upstream: str, *, cut: int, pause: float = 0.0) -> None:
        self.upstream, self.cut, self.pause = upstream, cut, pause
        self.seen: list[tuple[str, str | None, bool, int]] = []  # path, Range, auth, status
        self._cuts = 1
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def forward(self, h: BaseHTTPRequestHandler) -> None:
        skip = {"host", "connection", "content-length"}
        headers = {k: v for k, v in h.headers.items() if k.lower() not in skip}
        up = requests.get(self.upstream + h.path, headers=headers, stream=True,
                          allow_redirects=False, timeout=30)
        self.seen.append((h.path, h.headers.get("Range"), "Authorization" in h.headers,
                          up.status_code))
        cut = "/blobs/" in h.path and up.status_code == 200 and self._cuts > 0
        h.send_response(up.status_code)
        for k, v in up.headers.items():
            if k.lower() not in ("connection", "transfer-encoding"):
                h.send_header(k, v)
        h.send_header("Connection", "close" if cut else "keep-alive")
        h.end_headers()
        sent = 0
        for chunk in up.raw.stream(64 * 1024, decode_content=False):
            if cut and sent + len(chunk) > self.cut:
                h.wfile.write(chunk[:self.cut - sent])
                h.wfile.flush()
                self._cuts -= 1
                time.sleep(self.pause)
                h.close_connection = True
                return
            h.wfile.write(chunk)
            sent += len(chunk)
        up.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def expiring_tokens(tmp_path: Path) -> Iterator[TokenServer]:
    token = TokenServer(tmp_path, USERS).start()
    yield token
    token.stop()


def test_a_dropped_blob_resumes_with_range_and_a_fresh_token(
        tmp_path: Path, image: tuple[Path, bytes], expiring_tokens: TokenServer) -> None:
    path, raw = image
    with Registry(tmp_path, token=expiring_tokens) as reg:
        pushed = push(reg, path, "v1", auth=True)
        # the registry allows 60 s of clock skew past "exp": tokens from now on expire 5 s
        # after they are issued, and the cut connection waits 6 s before it closes
        expiring_tokens.ttl = -55
        # the manifest's token is the next one; the one after (for the resume) finds the
        # token server down (503) once: the write backs off and asks again
        expiring_tokens.unavailable = {expiring_tokens.asked + 2}
        proxy = CuttingProxy(reg.url, cut=path.stat().st_size // 2, pause=6.0)
        try:
            target = disk(tmp_path)
            res, _ = pull(f"oci://{proxy.address}/disks/demo:v1", target,
                          registryAuth={"username": "ci", "password": USERS["ci"]})
        finally:
            proxy.stop()
    assert res.resumes >= 1 and res.restarts == 0
    assert res.sha256 == pushed.layer_digest[7:]
    assert target.read_bytes()[:len(raw)] == raw
    blobs = [s for s in proxy.seen if "/blobs/" in s[0]]
    # the whole blob with the manifest's token (cut), the Range resume with that token, expired
    # by now (401: the token server answers 503), again (401: a fresh token), the same Range
    # with it (206)
    assert [(rng is not None, auth, status) for _, rng, auth, status in blobs][-4:] == [
        (False, True, 200), (True, True, 401), (True, True, 401), (True, True, 206)], blobs
    assert blobs[-1][1] == f"bytes={path.stat().st_size // 2}-"


# ---- bad inputs against the real registry (the same lines as docs/bad-inputs.md O rows) ---


def test_wrong_credentials_are_one_line(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    with Registry(tmp_path, users=USERS) as reg:
        push(reg, image[0], "v1", auth=True)
        target = disk(tmp_path)
        with pytest.raises(ImageError) as info:
            pull(f"oci://{reg.address}/disks/demo:v1", target,
                 registryAuth={"username": "ci", "password": "wrong"})
        with pytest.raises(ImageError) as anon:
            pull(f"oci://{reg.address}/disks/demo:v1", target)
    assert "refused access: HTTP 401 even after basic authentication with registryAuth" in \
        str(info.value)
    assert "asks for Basic credentials (HTTP 401); the action gives no registryAuth" in \
        str(anon.value)
    assert target.read_bytes() == b"\xaa" * DISK


def put_manifest(reg: Registry, tag: str, layers: list[dict[str, Any]]) -> None:
    config = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
              "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                       "layers": layers}).encode()
    resp = requests.put(f"{reg.url}/v2/disks/demo/manifests/{tag}", data=body,
                        headers={"Content-Type": OCI_MANIFEST})
    assert resp.status_code == 201, resp.text


def test_manifests_pyinit_does_not_write_are_refused(tmp_path: Path,
                                                     image: tuple[Path, bytes]) -> None:
    with Registry(tmp_path) as reg:
        pushed = push(reg, image[0], "v1")
        layer = {"mediaType": PYINIT_LAYER, "digest": pushed.layer_digest, "size": pushed.size}
        put_manifest(reg, "two", [layer, layer])
        put_manifest(reg, "tar", [{**layer,
                                   "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}])
        target = disk(tmp_path)
        lines = {}
        for tag in ("two", "tar", "nope"):
            with pytest.raises(ImageError) as info:
                pull(f"oci://{reg.address}/disks/demo:{tag}", target)
            lines[tag] = str(info.value)
    assert "the manifest has 2 layers; a disk image artifact has exactly one" in lines["two"]
    assert "layer media type 'application/vnd.oci.image.layer.v1.tar+gzip' is not a disk " \
        "image" in lines["tar"]
    assert "no manifest nope in disks/demo (HTTP 404" in lines["nope"]
    assert target.read_bytes() == b"\xaa" * DISK


def test_a_tampered_blob_fails_before_the_head_and_wipes(tmp_path: Path,
                                                         image: tuple[Path, bytes]) -> None:
    path, raw = image
    with Registry(tmp_path) as reg:
        pushed = push(reg, path, "v1")
        # a different, valid zstd image of the same size in the registry's storage
        stored = reg.blob_path(pushed.layer_digest)
        other = zstandard.ZstdCompressor(level=1).compress(raw[::-1])
        stored.write_bytes(other)
        target = disk(tmp_path)
        with pytest.raises(ChecksumMismatch) as info:
            pull(f"oci://{reg.address}/disks/demo:v1", target)
    assert f"expected {pushed.layer_digest}" in str(info.value)
    data = target.read_bytes()
    assert data[:MIB] == bytes(MIB) and data[-MIB:] == bytes(MIB)  # never left looking valid


def test_pyinit_image_push_pushes_what_it_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests import golden_rootfs
    from tests.integration.test_golden_build import fake_kernel

    root = golden_rootfs.busybox_dir(tmp_path / "rootfs")
    fake_kernel(root / "boot" / "vmlinuz-6.1.0-fake-amd64")
    (root / "boot" / "initrd.img-6.1.0-fake-amd64").write_bytes(b"initrd\n")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setenv(ocipush.USER_ENV, "ci")
    monkeypatch.setenv(ocipush.PASSWORD_ENV, USERS["ci"])
    out = tmp_path / "out" / "golden.img"
    out.parent.mkdir()
    with Registry(tmp_path, users=USERS) as reg:
        ref = f"oci://{reg.address}/disks/golden:1"
        assert cli.main(["image", str(root), "-o", str(out), "--push", ref,
                         "--plain-http"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["pushed"] == ref
        served = out.with_name(summary["action"]["image"])  # the zstd copy machines get
        assert summary["layer_digest"] == summary["action"]["checksum"]
        target = tmp_path / "disk.raw"
        target.write_bytes(bytes(out.stat().st_size))
        res, art = pull(summary["pinned"], target,
                        registryAuth={"username": "ci", "password": USERS["ci"]})
    assert art.layer.title == served.name and res.format == "zstd"
    assert res.bytes_written == out.stat().st_size
    assert hashlib.sha256(target.read_bytes()).hexdigest() == summary["sha256"]


def test_what_oras_push_stores_is_readable(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    """``oras push reg/disks/demo:oras disk.img.zst`` (oras 1.x, image-spec v1.1 by default):
    the file as a layer of oras's default media type for files, the empty config, oras's
    artifact type and annotations. oras itself is not packaged in Debian: the test uploads the
    same blobs and manifest with requests the way oras-go does (POST, then one PUT
    ``?digest=`` with the whole blob)."""
    path, raw = image
    data = path.read_bytes()
    layer_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty,
                   "size": 2, "data": "e30="},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(data),
                    "annotations": {"org.opencontainers.image.title": "disk.img.zst"}}],
        "annotations": {"org.opencontainers.image.created": "2026-12-08T00:00:00Z"},
    }, indent=2).encode()
    with Registry(tmp_path) as reg:
        for blob, digest in ((data, layer_digest), (b"{}", empty)):
            start = requests.post(f"{reg.url}/v2/disks/demo/blobs/uploads/")
            assert start.status_code == 202, start.text
            up = requests.put(urljoin(reg.url, start.headers["Location"]),
                              params={"digest": digest}, data=blob,
                              headers={"Content-Type": "application/octet-stream"})
            assert up.status_code == 201, up.text
        put = requests.put(f"{reg.url}/v2/disks/demo/manifests/oras", data=body,
                           headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201, put.text
        target = disk(tmp_path)
        res, art = pull(f"oci://{reg.address}/disks/demo:oras", target)
    assert art.layer.media_type == "application/vnd.oci.image.layer.v1.tar"
    assert art.manifest_digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert res.format == "zstd" and target.read_bytes()[:len(raw)] == raw


def test_https_by_default_trusting_the_machines_ca(tmp_path: Path, image: tuple[Path, bytes],
                                                   tls_files: TLSFiles,  # noqa: F811
                                                   ) -> None:
    path, raw = image
    with Registry(tmp_path, users=USERS, tls=tls_files) as reg:
        ref = parse_reference(f"oci://{reg.address}/disks/demo:v1")
        with requests.Session() as session:
            session.verify, session.trust_env = str(tls_files.ca), False
            ocipush.push(path, ref, session=session, progress=lambda s: None,
                         credentials=ocipush.Credentials("ci", USERS["ci"]))
        creds = {"registryAuth": {"username": "ci", "password": USERS["ci"]}}
        target = disk(tmp_path)
        _, art = pull(str(ref), target, verify=str(tls_files.ca), **creds)
        assert art.blob_url.startswith(f"https://{reg.address}/v2/disks/demo/blobs/")
        assert target.read_bytes()[:len(raw)] == raw
        # a machine trusting another CA: one line, nothing written
        other = disk(tmp_path)
        with pytest.raises(FetchError) as info:
            pull(str(ref), other, verify=str(tls_files.other_ca), **creds)
    assert f"https://{reg.address}/v2/disks/demo/manifests/v1: TLS error: certificate " \
        "verify failed" in str(info.value)
    assert other.read_bytes() == b"\xaa" * DISK
