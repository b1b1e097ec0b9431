"""Push a disk image to an OCI registry the way ``oras push`` pushes a file (docs/image.md
"OCI registry"): the file as it is (compressed as served) as the one layer, the OCI empty
config, and an image manifest with ``artifactType`` application/vnd.pyinit.disk.v1 and the
layer titled with the file's name. The blob goes up in chunks (POST, PATCH per 64 MiB, PUT
``?digest=``): an image is GBs, and a chunk in memory can be sent again after a 401 (an
expired token) where a streamed file could not. Credentials come from the environment
(``PYINIT_REGISTRY_USER``/``PYINIT_REGISTRY_PASSWORD``), never from argv."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

from pyinit.fetch import USER_AGENT
from pyinit.oci.parse import (
    EMPTY_CONFIG,
    OCI_MANIFEST,
    PYINIT_ARTIFACT,
    PYINIT_LAYER,
    Credentials,
    Reference,
    parse_reference,
)
from pyinit.oci.registry import RegistryAuth
from pyinit_build.errors import BuildError

CHUNK = 64 * 1024 * 1024
EMPTY = b"{}"
USER_ENV, PASSWORD_ENV = "PYINIT_REGISTRY_USER", "PYINIT_REGISTRY_PASSWORD"


@dataclass(frozen=True)
class Pushed:
    ref: Reference
    manifest_digest: str
    layer_digest: str
    size: int

    def pinned(self) -> str:
        """The reference pinned to what was pushed: ``oci://reg/repo@sha256:…``."""
        return f"oci://{self.ref.registry}/{self.ref.repository}@{self.manifest_digest}"


def credentials_from_env(env: Mapping[str, str] = os.environ) -> Credentials | None:
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if not user and not password:
        return None
    if not user or not password:
        raise BuildError("push", f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    return Credentials(user, password)


def manifest(layer_digest: str, size: int, title: str) -> bytes:
    """The image manifest oras 1.x writes for one file with an artifact type (image-spec
    1.1: the empty config, ``artifactType``). Pure."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": PYINIT_ARTIFACT,
        "config": {"mediaType": EMPTY_CONFIG, "digest": _sha256(EMPTY), "size": len(EMPTY),
                   "data": "e30="},
        "layers": [{"mediaType": PYINIT_LAYER, "digest": layer_digest, "size": size,
                    "annotations": {"org.opencontainers.image.title": title}}],
    }
    return json.dumps(doc, indent=2).encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class _Client:
    def __init__(self, session: requests.Session, ref: Reference, auth: RegistryAuth,
                 plain_http: bool) -> None:
        self.session, self.ref, self.auth, self.plain = session, ref, auth, plain_http
        self.base = ref.base(plain_http=plain_http)

    def call(self, method: str, url: str, *, ok: tuple[int, ...], data: bytes = b"",
             headers: Mapping[str, str] | None = None,
             params: Mapping[str, str] | None = None) -> requests.Response:
        try:
            resp = self.session.request(method, url, data=data, params=params, auth=self.auth,
                                        headers={"User-Agent": USER_AGENT, **(headers or {})},
                                        timeout=(10, 300))
        except requests.RequestException as exc:
            raise BuildError("push", f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code not in ok:
            why = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
            raise BuildError("push", f"{method} {url}: HTTP {resp.status_code} {why}".strip())
        return resp

    def location(self, resp: requests.Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise BuildError("push", f"{resp.request.method} {resp.url}: no Location header")
        return urljoin(self.base + "/", loc)

    def has_blob(self, digest: str) -> bool:
        url = self.ref.blob_url(digest, plain_http=self.plain)
        return self.call("HEAD", url, ok=(200, 404)).status_code == 200

    def upload(self, digest: str, read: Callable[[], bytes], size: int) -> None:
        """POST an upload session, PATCH every chunk ``read`` returns, PUT ``?digest=``."""
        start = f"{self.base}/v2/{self.ref.repository}/blobs/uploads/"
        loc = self.location(self.call("POST", start, ok=(202,)))
        offset = 0
        while chunk := read():
            end = offset + len(chunk) - 1
            resp = self.call("PATCH", loc, data=chunk, ok=(202,), headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}", "Content-Length": str(len(chunk))})
            loc, offset = self.location(resp), end + 1
        if offset != size:
            raise BuildError("push", f"read {offset} bytes, expected {size}: the file changed")
        self.call("PUT", loc, params={"digest": digest}, ok=(201,))


def push(path: Path, ref: Reference, *, session: requests.Session,
         credentials: Credentials | None = None, plain_http: bool = False,
         chunk: int = CHUNK, progress: Callable[[str], None] = print) -> Pushed:
    """Push ``path`` as a one-layer artifact to ``ref`` (a tag); returns the digests."""
    if ref.tag is None or ref.digest is not None:
        raise BuildError("push", f"{ref}: push to a tag (oci://registry/repo:tag)")
    size = path.stat().st_size
    digest = file_digest(path)
    auth = RegistryAuth(session, ref, credentials=credentials, actions="pull,push")
    client = _Client(session, ref, auth, plain_http)
    if client.has_blob(digest):
        progress(f"push: {path.name}: {digest} is already in {ref.repository}")
    else:
        progress(f"push: {path.name} ({size} bytes) as {digest}")
        with path.open("rb") as f:
            client.upload(digest, lambda: f.read(chunk), size)
    config = _sha256(EMPTY)
    if not client.has_blob(config):
        parts = iter([EMPTY])
        client.upload(config, lambda: next(parts, b""), len(EMPTY))
    body = manifest(digest, size, path.name)
    url = ref.manifest_url(plain_http=plain_http)
    resp = client.call("PUT", url, data=body, ok=(201,),
                       headers={"Content-Type": OCI_MANIFEST})
    pushed = _sha256(body)
    served = resp.headers.get("Docker-Content-Digest")
    if served and served != pushed:
        raise BuildError("push", f"the registry stored the manifest as {served}, "
                                 f"pyinit computed {pushed}")
    return Pushed(ref, pushed, digest, size)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plain-http", action="store_true",
                   help="talk plain HTTP to the registry (default https; the CA bundle is "
                        "requests': REQUESTS_CA_BUNDLE)")


def parse_ref(value: str) -> Reference:
    try:
        return parse_reference(value)
    except ValueError as exc:
        raise BuildError("push", str(exc)) from exc


def push_and_report(path: Path, target: str, args: argparse.Namespace) -> dict[str, Any]:
    ref = parse_ref(target)
    with requests.Session() as session:
        pushed = push(path, ref, session=session, credentials=credentials_from_env(),
                      plain_http=args.plain_http)
    print(f"pushed {path.name} to {ref}: manifest {pushed.manifest_digest} "
          f"(pin it: {pushed.pinned()})")
    return {"pushed": str(ref), "manifest_digest": pushed.manifest_digest,
            "layer_digest": pushed.layer_digest, "pinned": pushed.pinned()}


def register(subparsers: Any) -> argparse.ArgumentParser:
    """``pyinit push FILE oci://…``: push an image file that is already built."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "push", help="push a disk image file to an OCI registry (as oras push does)",
        description="Push FILE (a raw or compressed disk image, as it is) to an OCI registry "
                    "as a one-layer artifact pyinit's sourceImage oci://… reads. Credentials: "
                    f"${USER_ENV} and ${PASSWORD_ENV}. Prints the manifest digest.")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("target", metavar="oci://REGISTRY[:PORT]/REPO:TAG")
    add_arguments(p)
    p.set_defaults(func=lambda args: (push_and_report(args.file, args.target, args), 0)[1])
    return p
